//! Acceptance 1 (issue 7): crash consistency.
//!
//! A workload of checkpoints, CUPs, pool appends and purges runs on a `SimDisk` whose power is
//! cut at a write point; the disk then tears, reorders and loses the unflushed writes. After
//! each cut the store is reopened and must hold exactly some committed checkpoint (the last one
//! that returned, or the one in flight), the matching CUP, and a prefix of the appended pool
//! records that includes every record made durable by `pool_sync` — never a torn state. The
//! recovered store must then keep working (checkpoint, append, reopen).
//!
//! Every write point (each `write` and each `flush` call) of the workload is cut at least once; points are revisited with further
//! seeds until at least `RUNS_MIN` crashes were checked. `SEED=<n>` replays a run set; a
//! failure prints the seed and write point.

use node::store::{
    BlockDevice, Manifest, PoolRecord, SimDisk, SimFaults, SimRng, StateFile, Store, StoreConfig,
    StoreError, Verify,
};

const RUNS_MIN: u64 = 2_000;
const DISK_BYTES: u64 = 4 << 20;
const ROUNDS: u64 = 5;
const HEIGHTS_PER_ROUND: u64 = 10;

fn config() -> StoreConfig {
    StoreConfig {
        chunk_bytes: 16 * 1024,
        pool_segment_bytes: 32 * 1024,
        ..StoreConfig::default()
    }
}

type State = Vec<(String, Vec<u8>)>;

fn files(state: &State) -> Vec<StateFile<'_>> {
    state
        .iter()
        .map(|(n, b)| StateFile { name: n, bytes: b })
        .collect()
}

/// The state after round `r`: some files change a little each round, one grows, one appears.
fn state_at(round: u64) -> State {
    let mut rng = SimRng::new(0xc0ffee);
    let mut heap = vec![0u8; 120 * 1024];
    rng.fill(&mut heap);
    let mut stable = vec![0u8; 40 * 1024 + 123];
    rng.fill(&mut stable);
    for r in 1..=round {
        let at = (rng.below(heap.len() as u64)) as usize;
        heap[at] ^= r as u8 | 1;
        stable.extend_from_slice(&[r as u8; 5000]);
    }
    let mut state = vec![
        ("canister/heap".to_string(), heap),
        ("canister/stable".to_string(), stable),
        (
            "system/metadata".to_string(),
            format!("round {round}").into_bytes(),
        ),
    ];
    if round % 2 == 1 {
        state.push(("subnet/queues".to_string(), vec![round as u8; 20_000]));
    }
    state
}

fn record(height: u64, i: u64) -> PoolRecord {
    PoolRecord {
        height,
        kind: (i % 3) as u32,
        bytes: vec![(height * 7 + i) as u8; 300 + (i as usize * 97 + height as usize * 31) % 2500],
    }
}

/// What the workload got done before the power went out.
#[derive(Default, Debug)]
struct Oracle {
    formatted: bool,
    /// Checkpoints that returned Ok: (height, root, round).
    committed: Vec<(u64, [u8; 32], u64)>,
    /// The round whose checkpoint was being written when the power went out.
    in_flight_round: Option<u64>,
    cup: Option<Vec<u8>>,
    cup_in_flight: Option<Vec<u8>>,
    appended: Vec<PoolRecord>,
    durable_records: usize,
    purged_below: u64,
    purge_in_flight: Option<u64>,
}

/// Runs the workload until it finishes or the device fails.
fn workload(dev: &mut SimDisk, oracle: &mut Oracle) -> Result<(), StoreError> {
    let mut store = Store::format(&mut *dev, config())?;
    oracle.formatted = true;
    for round in 1..=ROUNDS {
        for h in (round - 1) * HEIGHTS_PER_ROUND + 1..=round * HEIGHTS_PER_ROUND {
            for i in 0..3 {
                let r = record(h, i);
                store.pool_append(r.height, r.kind, &r.bytes)?;
                oracle.appended.push(r);
            }
            if h % 2 == 0 {
                store.pool_sync()?;
                oracle.durable_records = oracle.appended.len();
            }
        }
        let state = state_at(round);
        oracle.in_flight_round = Some(round);
        let height = round * HEIGHTS_PER_ROUND;
        let stats = store.checkpoint(height, &files(&state))?;
        oracle.committed.push((height, stats.root_hash, round));
        oracle.in_flight_round = None;
        let cup = format!("cup {height}").into_bytes();
        oracle.cup_in_flight = Some(cup.clone());
        store.put_cup(&cup)?;
        oracle.cup = oracle.cup_in_flight.take();
        let floor = height.saturating_sub(HEIGHTS_PER_ROUND / 2);
        oracle.purge_in_flight = Some(floor);
        store.pool_purge_below(floor)?;
        oracle.purged_below = floor;
        oracle.purge_in_flight = None;
    }
    Ok(())
}

/// What a first recovery found, to check a second crash against.
struct Snapshot {
    checkpoint: Option<(u64, [u8; 32])>,
    files: Vec<(String, Vec<u8>)>,
    records: Vec<PoolRecord>,
    cup: Option<Vec<u8>>,
}

/// Checks a recovery against the oracle, then runs `rejoin`; with `second_cut`, the power is
/// cut again that many device operations into the rejoin, and the second recovery is checked
/// against the first.
fn check_recovery(
    dev: &mut SimDisk,
    oracle: &Oracle,
    second_cut: Option<u64>,
) -> Result<(), String> {
    let snapshot = {
        let Some((mut store, rec)) = check_first_recovery(dev, oracle)? else {
            return Ok(());
        };
        let Some(k) = second_cut else {
            return rejoin(store, oracle);
        };
        let mut files = Vec::new();
        for name in store.file_names() {
            let bytes = store.read_file(&name).map_err(|e| e.to_string())?;
            files.push((name, bytes));
        }
        let snapshot = Snapshot {
            checkpoint: rec.checkpoint,
            files,
            records: rec.pool_records.clone(),
            cup: store.cup().map_err(|e| e.to_string())?,
        };
        let at = store.device().ops_issued() + k;
        store.device_mut().cut_power_at_op(at);
        match rejoin(store, oracle) {
            Ok(()) => return Ok(()),
            Err(why) if !dev.is_offline() => return Err(why),
            Err(_) => snapshot,
        }
    };
    dev.restart();
    check_second_recovery(dev, &snapshot)?;
    let (store, _) = Store::open(&mut *dev, Verify::Lazy).map_err(|e| e.to_string())?;
    rejoin(store, oracle)
}

fn check_second_recovery(dev: &mut SimDisk, before: &Snapshot) -> Result<(), String> {
    let (mut store, rec) =
        Store::open(&mut *dev, Verify::Eager).map_err(|e| format!("second open failed: {e}"))?;
    if !rec.bad_chunks.is_empty() {
        return Err(format!(
            "bad chunks after second recovery: {:?}",
            rec.bad_chunks
        ));
    }
    let next = state_at(ROUNDS + 1);
    let next_root = Manifest::compute(config().chunk_bytes, &files(&next))
        .map_err(|e| e.to_string())?
        .root_hash();
    let expect = if rec.checkpoint == before.checkpoint {
        &before.files
    } else if rec.checkpoint.map(|c| c.1) == Some(next_root) {
        &next
    } else {
        return Err("second recovery found a checkpoint never committed".into());
    };
    for (name, bytes) in expect {
        if store.read_file(name).ok().as_ref() != Some(bytes) {
            return Err(format!("file {name} wrong after second recovery"));
        }
    }
    let records_ok = rec.pool_records == before.records
        || (rec.pool_records.len() == before.records.len() + 1
            && rec.pool_records[..before.records.len()] == before.records[..]
            && rec.pool_records.last().map(|r| r.bytes.as_slice()) == Some(b"after".as_slice()));
    if !records_ok {
        return Err("pool records after second recovery are not a durable prefix".into());
    }
    if store.cup().map_err(|e| e.to_string())? != before.cup {
        return Err("cup changed".into());
    }
    Ok(())
}

type Opened<'a> = Option<(Store<&'a mut SimDisk>, node::store::Recovery)>;

fn check_first_recovery<'a>(dev: &'a mut SimDisk, oracle: &Oracle) -> Result<Opened<'a>, String> {
    let opened = Store::open(&mut *dev, Verify::Eager).map_err(|e| e.error);
    let (mut store, rec) = match opened {
        Err(StoreError::NotFormatted) if !oracle.formatted => return Ok(None),
        Err(e) => return Err(format!("open failed: {e}")),
        Ok(x) => x,
    };
    if !rec.bad_chunks.is_empty() {
        return Err(format!("bad chunks after recovery: {:?}", rec.bad_chunks));
    }
    // The checkpoint is the last committed one or the one in flight, in full.
    let mut allowed: Vec<(u64, u64)> = oracle
        .committed
        .last()
        .map(|c| (c.0, c.2))
        .into_iter()
        .collect();
    if let Some(round) = oracle.in_flight_round {
        allowed.push((round * HEIGHTS_PER_ROUND, round));
    }
    match rec.checkpoint {
        None if oracle.committed.is_empty() => {}
        None => return Err("committed checkpoint lost".into()),
        Some((height, root)) => {
            let Some(&(_, round)) = allowed.iter().find(|(h, _)| *h == height) else {
                return Err(format!("checkpoint at unexpected height {height}"));
            };
            let state = state_at(round);
            for (name, bytes) in &state {
                let got = store
                    .read_file(name)
                    .map_err(|e| format!("read {name}: {e}"))?;
                if &got != bytes {
                    return Err(format!("file {name} differs at height {height}"));
                }
            }
            if store.file_names().len() != state.len() {
                return Err("checkpoint has extra files".into());
            }
            if let Some(c) = oracle.committed.iter().find(|c| c.0 == height) {
                if c.1 != root {
                    return Err("root hash differs".into());
                }
            }
        }
    }
    let cup = store.cup().map_err(|e| format!("cup: {e}"))?;
    if cup != oracle.cup && cup != oracle.cup_in_flight {
        return Err(format!("cup {cup:?} is neither committed nor in flight"));
    }
    check_pool(&rec.pool_records, rec.pool_purged_below, oracle)?;
    Ok(Some((store, rec)))
}

fn check_pool(got: &[PoolRecord], floor: u64, oracle: &Oracle) -> Result<(), String> {
    if floor != oracle.purged_below && Some(floor) != oracle.purge_in_flight {
        return Err(format!("purge height {floor} unexpected"));
    }
    let ok = (oracle.durable_records..=oracle.appended.len()).any(|n| {
        let expect = oracle.appended[..n].iter().filter(|r| r.height >= floor);
        expect.eq(got.iter())
    });
    if !ok {
        return Err(format!(
            "pool records are not a durable prefix: got {}, durable {}, appended {}",
            got.len(),
            oracle.durable_records,
            oracle.appended.len()
        ));
    }
    Ok(())
}

/// The recovered store keeps working: a new checkpoint and records survive a clean reopen.
fn rejoin<D: BlockDevice>(mut store: Store<D>, oracle: &Oracle) -> Result<(), String> {
    let state = state_at(ROUNDS + 1);
    let height = 1_000 + oracle.appended.len() as u64;
    let stats = store
        .checkpoint(height, &files(&state))
        .map_err(|e| format!("checkpoint after recovery: {e}"))?;
    store
        .pool_append(height + 1, 9, b"after")
        .map_err(|e| e.to_string())?;
    store.pool_sync().map_err(|e| e.to_string())?;
    let (mut store, rec) =
        Store::open(store.into_device(), Verify::Eager).map_err(|e| e.to_string())?;
    if rec.checkpoint != Some((height, stats.root_hash)) || !rec.bad_chunks.is_empty() {
        return Err("checkpoint after recovery not durable".into());
    }
    if rec.pool_records.last().map(|r| r.bytes.as_slice()) != Some(b"after".as_slice()) {
        return Err("record after recovery not durable".into());
    }
    for (name, bytes) in &state {
        if store.read_file(name).ok().as_ref() != Some(bytes) {
            return Err(format!("file {name} wrong after rejoin"));
        }
    }
    Ok(())
}

fn run_one(seed: u64, cut_at: u64, second_cut: Option<u64>) -> Result<(), String> {
    let sector = if seed.is_multiple_of(2) { 512 } else { 4096 };
    let mut dev = SimDisk::new(sector, DISK_BYTES / sector as u64, seed, SimFaults::crash());
    dev.cut_power_at_op(cut_at);
    let mut oracle = Oracle::default();
    match workload(&mut dev, &mut oracle) {
        Ok(()) => return Err("workload finished before the cut".into()),
        Err(StoreError::Device(_)) => {}
        Err(e) => return Err(format!("workload failed: {e}")),
    }
    dev.restart();
    check_recovery(&mut dev, &oracle, second_cut)
}

#[test]
fn crash_at_every_write_point_recovers_a_committed_state() {
    let base: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    // Count the write points of a whole run.
    let mut dev = SimDisk::new(512, DISK_BYTES / 512, base, SimFaults::crash());
    let mut oracle = Oracle::default();
    workload(&mut dev, &mut oracle).expect("workload without faults");
    let points = dev.ops_issued();
    assert!(points > 100, "workload too small: {points} write points");
    let passes = RUNS_MIN.div_ceil(points);
    let mut runs = 0;
    for pass in 0..passes {
        for cut_at in 0..points {
            let seed = base
                .wrapping_mul(1_000_003)
                .wrapping_add(pass * points + cut_at);
            if let Err(why) = run_one(seed, cut_at, None) {
                panic!("SEED={base}: crash at write {cut_at} (disk seed {seed}): {why}");
            }
            runs += 1;
        }
    }
    eprintln!("SEED={base}: {runs} crashes over {points} write/flush points recovered");
    assert!(runs >= RUNS_MIN);
}

/// Device operations of the rejoin phase (checkpoint, append, sync, reopen) a second cut is
/// spread over.
const REJOIN_OPS: u64 = 40;
/// Double-crash runs: a cut in the workload, then another during the recovered store's work.
const DOUBLE_CRASH_RUNS: u64 = 400;

#[test]
fn second_crash_after_recovery_recovers_too() {
    let base: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut dev = SimDisk::new(512, DISK_BYTES / 512, base, SimFaults::crash());
    workload(&mut dev, &mut Oracle::default()).expect("workload without faults");
    let points = dev.ops_issued();
    let mut rng = SimRng::new(base ^ 0xdead);
    for run in 0..DOUBLE_CRASH_RUNS {
        let (cut_at, second) = (rng.below(points), rng.below(REJOIN_OPS));
        let seed = base.wrapping_mul(7_777_777).wrapping_add(run);
        if let Err(why) = run_one(seed, cut_at, Some(second)) {
            panic!("SEED={base}: run {run}: crash at op {cut_at}, then {second} ops into the recovered store's work (disk seed {seed}): {why}");
        }
    }
    eprintln!("SEED={base}: {DOUBLE_CRASH_RUNS} double crashes recovered");
}

/// Runs where the power is cut again while the first recovery (`open`) repairs copies.
const CRASH_IN_RECOVERY_RUNS: u64 = 300;
/// Device operations of an `open` a cut inside it is spread over.
const OPEN_OPS: u64 = 12;

#[test]
fn crash_during_recovery_recovers_too() {
    let base: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut dev = SimDisk::new(4096, DISK_BYTES / 4096, base, SimFaults::crash());
    workload(&mut dev, &mut Oracle::default()).expect("workload without faults");
    let points = dev.ops_issued();
    let mut rng = SimRng::new(base ^ 0xbeef);
    let mut cut_in_open = 0;
    for run in 0..CRASH_IN_RECOVERY_RUNS {
        let (cut_at, in_open) = (rng.below(points), rng.below(OPEN_OPS));
        // Mostly cut at the first operations of recovery, where repairs are written.
        let in_open = if run % 2 == 0 { in_open % 3 } else { in_open };
        let seed = base.wrapping_mul(3_333_331).wrapping_add(run);
        let sector = if seed.is_multiple_of(2) { 512 } else { 4096 };
        let mut dev = SimDisk::new(sector, DISK_BYTES / sector as u64, seed, SimFaults::crash());
        dev.cut_power_at_op(cut_at);
        let mut oracle = Oracle::default();
        if workload(&mut dev, &mut oracle).is_ok() {
            continue;
        }
        dev.restart();
        let at = dev.ops_issued() + in_open;
        dev.cut_power_at_op(at);
        let _ = Store::open(&mut dev, Verify::Lazy);
        cut_in_open += u64::from(dev.is_offline());
        dev.cancel_power_cut();
        dev.restart();
        if let Err(why) = check_recovery(&mut dev, &oracle, None) {
            panic!("SEED={base}: run {run}: crash at op {cut_at}, then {in_open} ops into recovery (disk seed {seed}): {why}");
        }
    }
    eprintln!("SEED={base}: {CRASH_IN_RECOVERY_RUNS} runs, {cut_in_open} cut inside recovery, all recovered");
    assert!(cut_in_open > 0, "some cuts land inside recovery");
}
