//! Acceptance 1 (issue 7), at the node level: a running node's power is cut at sampled write
//! points; recovery yields a committed checkpoint plus replayable finalized blocks (state hash
//! equal to the subnet's at the recovered height), never a torn state, the recovered node
//! never signs below what it already sent, and it rejoins the subnet.
//!
//! Offline cuts: node 0's disk calls are recorded over a run of a 4-node subnet running the
//! Motoko counter; for each sampled write point the run's disk is rebuilt up to that call on a
//! copy, the power is cut there (unflushed writes torn, reordered, lost per `SimDisk`), and
//! the node boots from it. Live cuts: the power of node 0 is cut mid-run at random write
//! points; the harness reboots it and it must finalize and execute new heights with equal
//! hashes. `SEED=<n>` replays.

#![cfg(feature = "sim")]

use node::sim::stack_sim::{boot, replay_ops, DiskOp, SharedDisk, StackSim};
use node::store::{SimDisk, SimRng};
use std::time::Instant;

const DISK_BYTES: u64 = 12 << 20;
/// Sampled power cuts replayed offline.
const CUTS_MIN: usize = 1_000;
/// Live power cuts of a running node.
const LIVE_CUTS: usize = 6;

fn seed() -> u64 {
    std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11)
}

/// Boots node 0 from a disk cut at disk call `cut` and checks what it recovered; returns the
/// recovered height and the blocks replayed.
fn check_cut(
    config: &node::replica::stack::StackConfig,
    disk: SimDisk,
    cut: usize,
    now: node::types::Time,
    markers: &[(usize, u64, u64)],
    hashes: &std::collections::BTreeMap<u64, [u8; 32]>,
) -> (u64, u64, bool) {
    let shared = SharedDisk::from_disk(disk);
    let (stack, _recovery) = boot(config.clone(), &shared, now)
        .unwrap_or_else(|e| panic!("cut at disk call {cut}: recovery failed: {e}"));
    let r = stack.executed_height();
    let stats = stack.store_stats().unwrap_or_default();
    // What was acknowledged before the cut: sends happened only after their syncs.
    let (must_floor, must_height) = markers
        .iter()
        .filter(|m| m.0 <= cut)
        .fold((0, 0), |a, m| (a.0.max(m.1), a.1.max(m.2)));
    if stack.syncing().is_none() {
        assert!(
            r >= must_height,
            "cut at {cut}: recovered height {r} below {must_height}, durable before the cut"
        );
        assert_eq!(
            stack.state_machine().state_hash(r),
            hashes.get(&r).copied(),
            "cut at {cut}: state at height {r} differs from the subnet's"
        );
        assert!(
            stats.checkpoint_height % 10 == 0 && stats.checkpoint_height <= r,
            "cut at {cut}: checkpoint {} is not a committed one",
            stats.checkpoint_height
        );
    }
    assert!(
        stack.replica().signing_watermark().0 >= must_floor,
        "cut at {cut}: signing floor {} below {must_floor}, signed and sent before the cut",
        stack.replica().signing_watermark().0
    );
    (r, stats.blocks_replayed, stack.syncing().is_some())
}

#[test]
fn power_cut_at_sampled_write_points_recovers_a_committed_checkpoint_plus_replay() {
    let t0 = Instant::now();
    let seed = seed();
    let mut sim = StackSim::new(4, seed, DISK_BYTES);
    sim.install_counter(1).expect("counter installed");
    sim.set_call_interval(Some(150));
    assert!(sim.run_until(60_000, |s| s.min_executed() >= 25));
    // Record node 0's disk over three checkpoint intervals of the running subnet.
    let base: SimDisk = sim.disks[0].start_log();
    sim.record = Some(0);
    let start = sim.node(0).executed_height();
    assert!(sim.run_until(60_000, |s| s.node(0).executed_height() >= start + 32));
    sim.record = None;
    let log: Vec<DiskOp> = sim.disks[0].take_log();
    sim.check().expect("agreement");
    let markers = sim.markers.clone();
    let config = sim.configs[0].clone();
    let flushes = log.iter().filter(|o| matches!(o, DiskOp::Flush)).count();
    eprintln!(
        "recorded {} disk calls ({} flushes) over heights {start}..{}; {:?}",
        log.len(),
        flushes,
        sim.node(0).executed_height(),
        t0.elapsed()
    );
    assert!(log.len() >= 200, "the run writes enough to sample");

    // Sample cut points: every write point at least once if there are fewer than CUTS_MIN,
    // otherwise CUTS_MIN random ones; sorted, so one replay disk walks forward.
    let mut rng = SimRng::new(seed);
    let mut points: Vec<usize> = (0..log.len()).collect();
    while points.len() < CUTS_MIN {
        points.push(rng.below(log.len() as u64) as usize);
    }
    if points.len() > CUTS_MIN && log.len() > CUTS_MIN {
        points = (0..CUTS_MIN)
            .map(|_| rng.below(log.len() as u64) as usize)
            .collect();
    }
    points.sort_unstable();
    // The cuts are independent: split them over the cores, each worker walking its own copy
    // of the disk forward through its (sorted) share of the points.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let share = points.len().div_ceil(workers);
    let (hashes, now) = (&sim.hashes, sim.now);
    let (log, markers, config, base) = (&log, &markers, &config, &base);
    let results: Vec<(std::collections::BTreeMap<u64, usize>, u64, u64)> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = points
                .chunks(share)
                .enumerate()
                .map(|(w, mine)| {
                    scope.spawn(move || {
                        let mut walker = base.clone();
                        let mut applied = 0usize;
                        let mut heights = std::collections::BTreeMap::<u64, usize>::new();
                        let mut replayed = 0u64;
                        let mut syncing = 0u64;
                        for (k, &cut) in mine.iter().enumerate() {
                            replay_ops(&mut walker, &log[applied..cut]);
                            applied = cut;
                            let mut disk = walker.clone();
                            disk.reseed(seed.wrapping_mul(31).wrapping_add((w * share + k) as u64));
                            disk.cut_power();
                            disk.restart();
                            let (r, rep, sync) = check_cut(config, disk, cut, now, markers, hashes);
                            *heights.entry(r).or_default() += 1;
                            replayed += rep;
                            syncing += u64::from(sync);
                        }
                        (heights, replayed, syncing)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
    let mut heights = std::collections::BTreeMap::<u64, usize>::new();
    let mut replayed_total = 0u64;
    let mut syncing_total = 0u64;
    for (h, r, y) in results {
        syncing_total += y;
        for (k, v) in h {
            *heights.entry(k).or_default() += v;
        }
        replayed_total += r;
    }
    eprintln!(
        "{} cuts at {} distinct write points recovered ({} needed state sync); recovered heights {:?}; {} blocks replayed; {:?}",
        points.len(),
        {
            let mut d = points.clone();
            d.dedup();
            d.len()
        },
        syncing_total,
        heights,
        replayed_total,
        t0.elapsed()
    );
    assert!(points.len() >= CUTS_MIN);
    assert!(heights.len() >= 3, "cuts spread over the run");
}

#[test]
fn a_node_cut_mid_run_reboots_and_rejoins() {
    let t0 = Instant::now();
    let seed = seed() + 1;
    let mut sim = StackSim::new(4, seed, DISK_BYTES);
    sim.install_counter(2).expect("counter installed");
    sim.set_call_interval(Some(150));
    let mut rng = SimRng::new(seed);
    for cut in 0..LIVE_CUTS {
        let ops = sim.disks[0].disk.borrow().ops_issued();
        let at = ops + 1 + rng.below(120);
        sim.disks[0].disk.borrow_mut().cut_power_at_op(at);
        let boots = sim.boots[0];
        assert!(
            sim.run_until(30_000, |s| s.boots[0] > boots && s.is_up(0)),
            "cut {cut}: node 0 rebooted"
        );
        let target = sim.max_executed() + 8;
        assert!(
            sim.run_until(60_000, |s| s.is_up(0)
                && s.node(0).executed_height() >= target
                && !s.node(0).stalled()),
            "cut {cut}: node 0 rejoined and executes new heights"
        );
        sim.check().expect("agreement");
        let stats = sim.node(0).store_stats().unwrap_or_default();
        eprintln!(
            "live cut {cut} at disk call {at}: rebooted, replayed {}, syncs {}, now at {}",
            stats.blocks_replayed,
            stats.syncs_completed,
            sim.node(0).executed_height()
        );
    }
    let counters: Vec<_> = (0..4).map(|i| sim.counter(i)).collect();
    assert!(counters.windows(2).all(|w| w[0] == w[1]), "{counters:?}");
    eprintln!("counter {:?}; {:?}", counters[0], t0.elapsed());
}
