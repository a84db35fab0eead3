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
    BlockDevice, PoolRecord, SimDisk, SimFaults, SimRng, StateFile, Store, StoreConfig, StoreError,
    Verify,
};

const RUNS_MIN: u64 = 2_000;
const DISK_BYTES: u64 = 8 << 20;
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

fn check_recovery(dev: &mut SimDisk, oracle: &Oracle) -> Result<(), String> {
    let opened = Store::open(&mut *dev, Verify::Eager).map_err(|e| e.error);
    let (mut store, rec) = match opened {
        Err(StoreError::NotFormatted) if !oracle.formatted => return Ok(()),
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
    rejoin(store, oracle)
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

fn run_one(seed: u64, cut_at: u64) -> Result<(), String> {
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
    check_recovery(&mut dev, &oracle)
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
            if let Err(why) = run_one(seed, cut_at) {
                panic!("SEED={base}: crash at write {cut_at} (disk seed {seed}): {why}");
            }
            runs += 1;
        }
    }
    eprintln!("SEED={base}: {runs} crashes over {points} write/flush points recovered");
    assert!(runs >= RUNS_MIN);
}
