//! Simulated subnets of 4, 7 and 13 nodes under crashes, Byzantine nodes, partitions, loss
//! and reordering. Every run is seeded; the simulator checks safety after every event (it
//! panics on a violation), and each test asserts liveness where `n−f` honest nodes are
//! connected. A failure prints `SEED=… cargo test …`, which replays that one run exactly.
#![cfg(feature = "sim")]

use node::consensus::Fault;
use node::sim::{Behavior, NetConfig, Sim, SimConfig};
use node::types::Height;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Seeds `base..base+count`, or only `$SEED` when set.
fn run_seeds(name: &str, base: u64, count: u64, run: impl Fn(u64)) {
    let seeds: Vec<u64> = match std::env::var("SEED") {
        Ok(s) => vec![s.parse().expect("SEED is a u64")],
        Err(_) => (base..base + count).collect(),
    };
    for seed in seeds {
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| run(seed))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "{name} failed for seed {seed}: {msg}\nreproduce: SEED={seed} cargo test -p node --features sim --test consensus_sim {name}"
            );
        }
    }
}

fn f_of(n: usize) -> usize {
    (n - 1) / 3
}

/// Asserts every honest, running node reached `target`.
fn assert_live(sim: &Sim, target: u64, what: &str) {
    let h = sim.min_honest_finalized();
    assert!(
        h >= Height(target),
        "{what}: honest nodes finalized only to {h} (want {target}) by {} ms; seed {}",
        sim.now.as_millis() - 1_700_000_000_000,
        sim.config.seed
    );
}

fn all_honest(n: usize, seed: u64) {
    let mut sim = Sim::new(SimConfig::new(n, seed));
    sim.run_for_ms(1_000);
    assert_live(&sim, 6, "all honest");
}

fn f_crashed(n: usize, seed: u64) {
    let mut sim = Sim::new(SimConfig::new(n, seed));
    // The last f nodes crash at different points, one at the very start.
    for k in 0..f_of(n) {
        sim.run_for_ms(50 * k as u64);
        sim.crash(n - 1 - k);
    }
    sim.run_for_ms(1_600);
    assert_live(&sim, 5, "f crashed");
}

fn byzantine(n: usize, seed: u64, behavior: Behavior) {
    let mut cfg = SimConfig::new(n, seed);
    // Spread the Byzantine nodes over the index range.
    for k in 0..f_of(n) {
        cfg.behaviors.insert((k * 3 + seed as usize) % n, behavior);
    }
    cfg.ingress_per_second = 20;
    cfg.ingress_bytes = 64;
    let mut sim = Sim::new(cfg);
    sim.run_for_ms(1_600);
    assert_live(&sim, 5, "f Byzantine");
}

/// No side of the partition has n−f nodes: nothing may finalize (beyond what was in flight),
/// and nothing may fork; after healing, progress resumes.
fn partition_then_heal(n: usize, seed: u64) {
    let mut sim = Sim::new(SimConfig::new(n, seed));
    sim.run_for_ms(400);
    let half = n / 2;
    let a: Vec<usize> = (0..half).collect();
    let b: Vec<usize> = (half..n).collect();
    assert!(a.len() < n - f_of(n) && b.len() < n - f_of(n));
    sim.partition(&[&a, &b]);
    sim.run_for_ms(300); // let what was in flight land
    let stuck = sim.max_finalized();
    sim.run_for_ms(1_000);
    assert_eq!(
        sim.max_finalized(),
        stuck,
        "progress without n−f connected; seed {seed}"
    );
    sim.heal();
    sim.run_for_ms(1_200);
    assert_live(&sim, stuck.0 + 4, "after heal");
}

fn lossy(n: usize, seed: u64) {
    let mut cfg = SimConfig::new(n, seed);
    cfg.net = NetConfig {
        latency_ms: 15,
        jitter_ms: 10,
        loss_permille: 200,
        duplicate_permille: 50,
        reorder_permille: 200,
    };
    let mut sim = Sim::new(cfg);
    sim.run_for_ms(2_500);
    assert_live(&sim, 5, "20% loss and reordering");
}

/// A node down for several CUP intervals restarts from genesis and catches up.
fn crash_restart(n: usize, seed: u64) {
    let mut sim = Sim::new(SimConfig::new(n, seed));
    sim.run_for_ms(300);
    let victim = (seed as usize) % n;
    sim.crash(victim);
    sim.run_for_ms(2_000);
    let others = sim.min_honest_finalized();
    let cup_interval = sim.config.params.cup_interval_heights;
    assert!(
        others.0 > cup_interval + 3,
        "others progressed to {others}; seed {seed}"
    );
    sim.restart(victim);
    sim.run_for_ms(1_500);
    let caught_up = sim.finalized_height(victim);
    assert!(
        caught_up >= others && caught_up.0 + 3 >= sim.max_finalized().0,
        "restarted node at {caught_up}, others were at {others}, now {}; seed {seed}",
        sim.max_finalized()
    );
    let cup = sim
        .replica(victim)
        .map(|r| r.cup_height())
        .unwrap_or_default();
    assert!(
        cup.0 >= cup_interval,
        "restart caught up through a CUP; seed {seed}"
    );
}

const BYZANTINE_KINDS: [(&str, Behavior); 4] = [
    (
        "equivocating block maker",
        Behavior::Byzantine(Fault::EquivocatingBlockMaker),
    ),
    (
        "conflicting shares",
        Behavior::Byzantine(Fault::ConflictingShares),
    ),
    (
        "invalid signatures",
        Behavior::Byzantine(Fault::InvalidSignatures),
    ),
    ("garbage bytes", Behavior::GarbageBytes),
];

fn byzantine_all_kinds(name: &str, n: usize, base: u64, per_kind: u64) {
    for (k, (_, behavior)) in BYZANTINE_KINDS.iter().enumerate() {
        run_seeds(name, base + 1000 * k as u64, per_kind, |s| {
            byzantine(n, s, *behavior)
        });
    }
}

// ----- n = 4 (f = 1) -----
#[test]
fn n4_all_honest() {
    run_seeds("n4_all_honest", 400, 20, |s| all_honest(4, s));
}
#[test]
fn n4_f_crashed() {
    run_seeds("n4_f_crashed", 410, 8, |s| f_crashed(4, s));
}
#[test]
fn n4_byzantine() {
    byzantine_all_kinds("n4_byzantine", 4, 420, 6);
}
#[test]
fn n4_partition_then_heal() {
    run_seeds("n4_partition_then_heal", 430, 6, |s| {
        partition_then_heal(4, s)
    });
}
#[test]
fn n4_loss_and_reordering() {
    run_seeds("n4_loss_and_reordering", 440, 10, |s| lossy(4, s));
}
#[test]
fn n4_crash_restart_catches_up() {
    run_seeds("n4_crash_restart_catches_up", 450, 4, |s| {
        crash_restart(4, s)
    });
}

// ----- n = 7 (f = 2) -----
#[test]
fn n7_all_honest() {
    run_seeds("n7_all_honest", 700, 4, |s| all_honest(7, s));
}
#[test]
fn n7_f_crashed() {
    run_seeds("n7_f_crashed", 710, 3, |s| f_crashed(7, s));
}
#[test]
fn n7_byzantine() {
    byzantine_all_kinds("n7_byzantine", 7, 720, 2);
}
#[test]
fn n7_partition_then_heal() {
    run_seeds("n7_partition_then_heal", 730, 2, |s| {
        partition_then_heal(7, s)
    });
}
#[test]
fn n7_loss_and_reordering() {
    run_seeds("n7_loss_and_reordering", 740, 3, |s| lossy(7, s));
}
#[test]
fn n7_crash_restart_catches_up() {
    run_seeds("n7_crash_restart_catches_up", 750, 1, |s| {
        crash_restart(7, s)
    });
}

// ----- n = 13 (f = 4) -----
#[test]
fn n13_all_honest() {
    run_seeds("n13_all_honest", 1300, 2, |s| all_honest(13, s));
}
#[test]
fn n13_f_crashed() {
    run_seeds("n13_f_crashed", 1310, 1, |s| f_crashed(13, s));
}
#[test]
fn n13_byzantine() {
    byzantine_all_kinds("n13_byzantine", 13, 1320, 1);
}
#[test]
fn n13_partition_then_heal() {
    run_seeds("n13_partition_then_heal", 1330, 1, |s| {
        partition_then_heal(13, s)
    });
}
#[test]
fn n13_loss_and_reordering() {
    run_seeds("n13_loss_and_reordering", 1340, 1, |s| lossy(13, s));
}
#[test]
fn n13_crash_restart_catches_up() {
    run_seeds("n13_crash_restart_catches_up", 1350, 1, |s| {
        crash_restart(13, s)
    });
}
