//! Issue 8 item 3 / issue 7 item 1, at the node level: a canister's state survives stopping
//! and restarting the *whole* subnet. Every node's power is cut (at one moment, or one after
//! the other), every node boots from its disk, and the subnet must finalize new heights with
//! the counter's value kept, further updates applied and equal state hashes. A restarted node
//! signs no height again with other content: it restores what it signed from its pool log
//! (`RECORD_OWN_ARTIFACT`) and gossips it again, which lets the subnet complete the heights
//! its nodes had signed before the cut. Also a 1-node subnet restarted from its disk, and a
//! 4-node subnet of which only n − f = 3 nodes come back at first (the fourth, whose own
//! artifacts the others never logged, boots later and catches up). And 3 of 4 nodes that
//! lose power after checkpoint 40 but before its CUP, with the fourth behind the CUP at 30
//! and one of the three staying down: the restarted nodes must finalize 31..=40 again from
//! what their logs kept of what made those heights final (`RECORD_FINALITY`). `SEED=<n>`
//! replays.

#![cfg(feature = "sim")]

use node::sim::stack_sim::StackSim;
use std::time::Instant;

const DISK_BYTES: u64 = 12 << 20;
/// Simulated time a run may take to reach its target.
const RUN_LIMIT_MS: u64 = 60_000;
/// The cut happens up to this long after the counter reached its first value.
const CUT_JITTER_MS: u64 = 1_500;
/// Heights the restarted subnet must finalize and execute beyond where it stopped.
const NEW_HEIGHTS: u64 = 12;

fn seed() -> u64 {
    std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(21)
}

/// Runs `n` nodes with the counter, cuts all of them (`stagger_ms` apart), restarts the first
/// `back` from their disks and checks they go on; then the others boot and catch up.
fn whole_subnet_restart(n: usize, back: usize, seed: u64, stagger_ms: u64) {
    let t0 = Instant::now();
    let mut sim = StackSim::new(n, seed, DISK_BYTES);
    sim.install_counter(0).expect("counter installed");
    sim.set_call_interval(Some(150));
    assert!(sim.run_until(RUN_LIMIT_MS, |s| s.min_executed() >= 23));
    sim.check().expect("agreement before the cut");
    // The seed picks the moment of the cut within a few rounds, so seeds cover different
    // states of the pools (shares signed, blocks notarized but not finalized, …).
    sim.run_for(seed.wrapping_mul(97) % CUT_JITTER_MS);
    for i in 0..n {
        if i > 0 && stagger_ms > 0 {
            sim.run_for(stagger_ms);
        }
        sim.power_cut(i);
    }
    sim.set_call_interval(None);
    // The subnet is down for a while.
    sim.run_for(2_000);
    for i in 0..back {
        sim.start(i).expect("node boots from its disk");
    }
    let executed: Vec<u64> = (0..back).map(|i| sim.node(i).executed_height()).collect();
    let finalized: Vec<u64> = (0..back)
        .map(|i| sim.node(i).finalized_height().0)
        .collect();
    let before: Vec<Option<u64>> = (0..back).map(|i| sim.counter(i)).collect();
    let value = before.iter().flatten().copied().max().unwrap_or(0);
    assert!(value > 0, "the counter counted before the cut: {before:?}");
    let top = executed.iter().copied().max().unwrap_or(0);
    eprintln!(
        "n={n} back={back} stagger={stagger_ms}ms: restarted at executed {executed:?} finalized {finalized:?}, counter {before:?}"
    );
    let target = top + NEW_HEIGHTS;
    assert!(
        sim.run_until(RUN_LIMIT_MS, |s| s.min_executed() >= target),
        "the restarted subnet finalizes and executes new heights: executed {:?}, finalized {:?}",
        (0..back)
            .map(|i| sim.is_up(i).then(|| sim.node(i).executed_height()))
            .collect::<Vec<_>>(),
        (0..back)
            .map(|i| sim.is_up(i).then(|| sim.node(i).finalized_height().0))
            .collect::<Vec<_>>()
    );
    // The state survived: every node's counter is at least the highest value before the cut
    // (blocks notarized before the cut may be finalized since; no call is sent meanwhile).
    let after: Vec<Option<u64>> = (0..back).map(|i| sim.counter(i)).collect();
    assert!(
        after.iter().all(|v| v.is_some_and(|v| v >= value))
            && after.windows(2).all(|w| w[0] == w[1]),
        "counter kept across the restart: {before:?} → {after:?}"
    );
    // Further updates work.
    sim.set_call_interval(Some(150));
    let target = sim.max_executed() + NEW_HEIGHTS;
    assert!(sim.run_until(RUN_LIMIT_MS, |s| s.min_executed() >= target
        && (0..back).all(|i| s.counter(i).is_some_and(|v| v >= value + 3))));
    // The nodes that stayed down boot from their disks and catch up with the others.
    for i in back..n {
        sim.start(i).expect("late node boots from its disk");
    }
    sim.set_call_interval(None);
    let target = sim.max_executed() + 4;
    assert!(sim.run_until(RUN_LIMIT_MS, |s| s.min_executed() >= target));
    sim.check().expect("state hashes agree");
    let counters: Vec<_> = (0..n).map(|i| sim.counter(i)).collect();
    assert!(counters.windows(2).all(|w| w[0] == w[1]), "{counters:?}");
    let stats = sim.node(0).store_stats().unwrap_or_default();
    assert!(stats.own_artifacts_logged > 0);
    // Requests served from a retained checkpoint (the CUP's, kept while a newer one is the
    // latest): what a node that restarted behind the CUP syncs from.
    let served_retained: u64 = (0..n)
        .map(|i| {
            sim.node(i)
                .store_stats()
                .unwrap_or_default()
                .served_retained
        })
        .sum();
    eprintln!(
        "n={n}: counter {value} → {:?}, executed {}, replayed {} blocks on restart, {served_retained} sync requests served from a retained checkpoint; {:?}",
        counters[0],
        sim.node(0).executed_height(),
        stats.blocks_replayed,
        t0.elapsed()
    );
}

#[test]
fn all_four_nodes_cut_at_once_restart_and_go_on() {
    whole_subnet_restart(4, 4, seed(), 0);
}

#[test]
fn all_four_nodes_cut_one_after_the_other_restart_and_go_on() {
    whole_subnet_restart(4, 4, seed() + 1, 37);
}

#[test]
fn a_one_node_subnet_restarted_from_disk_goes_on() {
    whole_subnet_restart(1, 1, seed() + 2, 0);
}

#[test]
fn all_four_nodes_cut_three_come_back_and_go_on_then_the_fourth_catches_up() {
    whole_subnet_restart(4, 3, seed() + 3, 0);
}

#[test]
fn all_four_nodes_cut_one_after_the_other_three_come_back() {
    whole_subnet_restart(4, 3, seed() + 4, 37);
}

/// Nodes 0–2 of a 4-node subnet lose power right after they wrote checkpoint 40 (the CUP is
/// still 30); node 3 has been down since before 30. Nodes 0, 1 and 3 boot (2 stays down):
/// node 3 syncs the CUP's state (30), and the three must finalize the heights the cut nodes
/// had finalized (31..=40, whose blocks may be proposals of node 2) and go on. What a node
/// finalization-signed must survive its restart with what made it final, or no node may
/// sign anything at those heights again.
#[test]
fn three_of_four_restart_after_checkpoint_before_its_cup_and_go_on() {
    let t0 = Instant::now();
    let seed = seed();
    let mut sim = StackSim::new(4, seed, DISK_BYTES);
    sim.install_counter(0).expect("counter installed");
    sim.set_call_interval(Some(150));
    assert!(sim.run_until(RUN_LIMIT_MS, |s| s.min_executed() >= 22));
    sim.power_cut(3);
    // Each of nodes 0–2 loses power as soon as it wrote checkpoint 40, before the CUP at 40.
    for _ in 0..3 {
        let cut = |s: &StackSim| {
            (0..3).find(|&i| {
                s.is_up(i)
                    && s.node(i)
                        .store_stats()
                        .is_some_and(|st| st.checkpoint_height >= 40)
            })
        };
        assert!(
            sim.run_until(RUN_LIMIT_MS, |s| cut(s).is_some()),
            "checkpoint 40 written"
        );
        let Some(i) = cut(&sim) else { unreachable!() };
        assert_eq!(sim.node(i).replica().cup_height().0, 30, "CUP still 30");
        sim.power_cut(i);
    }
    sim.set_call_interval(None);
    sim.run_for(2_000);
    for i in [0, 1, 3] {
        sim.start(i).expect("node boots from its disk");
    }
    let cups: Vec<u64> = [0, 1, 3]
        .iter()
        .map(|&i| sim.node(i).replica().cup_height().0)
        .collect();
    let executed: Vec<u64> = [0, 1, 3]
        .iter()
        .map(|&i| sim.node(i).executed_height())
        .collect();
    eprintln!("seed {seed}: restarted with CUPs {cups:?}, executed {executed:?}");
    // What made 31..=40 final came back from the pool logs (blocks, notarizations, the
    // finalization), not only the own shares.
    for i in [0, 1] {
        let st = sim.node(i).store_stats().unwrap_or_default();
        assert!(
            st.finality_restored >= 10 && st.bad_finality_records == 0,
            "node {i}: {st:?}"
        );
    }
    let target = 40 + NEW_HEIGHTS;
    let ok = sim.run_until(RUN_LIMIT_MS, |s| s.min_executed() >= target);
    let finalized: Vec<u64> = [0, 1, 3]
        .iter()
        .map(|&i| sim.node(i).finalized_height().0)
        .collect();
    let executed: Vec<u64> = [0, 1, 3]
        .iter()
        .map(|&i| sim.node(i).executed_height())
        .collect();
    assert!(
        ok,
        "seed {seed}: the three nodes finalize past 40: finalized {finalized:?}, executed {executed:?}, sync {:?}",
        sim.node(3).store_stats().map(|s| (s.syncs_completed, s.last_sync))
    );
    sim.check().expect("state hashes agree");
    sim.set_call_interval(Some(150));
    let target = sim.max_executed() + 4;
    assert!(sim.run_until(RUN_LIMIT_MS, |s| s.min_executed() >= target));
    sim.start(2).expect("node 2 boots from its disk");
    let target = sim.max_executed() + 4;
    assert!(sim.run_until(RUN_LIMIT_MS, |s| s.min_executed() >= target));
    sim.check().expect("state hashes agree");
    eprintln!(
        "seed {seed}: finalized {finalized:?} → executed {}; {:?}",
        sim.node(0).executed_height(),
        t0.elapsed()
    );
}
