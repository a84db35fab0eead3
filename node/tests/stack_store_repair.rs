//! Acceptance 2 (issue 7): bit flips in a node's store are detected by checksum, and the node
//! repairs from its peers by state sync instead of executing on bad data; then it computes the
//! same state hashes as the others.

#![cfg(feature = "sim")]

use node::sim::stack_sim::{StackSim, SECTOR_BYTES};
use node::store::{SimRng, BLOCK_BYTES};
use std::time::Instant;

const DISK_BYTES: u64 = 24 << 20;

/// Flips one random bit in each of `n` random extents of `list`.
fn flip_in(sim: &StackSim, node: usize, list: &[node::store::Extent], n: usize, rng: &mut SimRng) {
    let mut disk = sim.disks[node].disk.borrow_mut();
    for _ in 0..n {
        let e = list[rng.below(list.len() as u64) as usize];
        let byte = e.start * BLOCK_BYTES as u64 + rng.below(e.blocks * BLOCK_BYTES as u64);
        disk.flip_bit(byte, rng.below(8) as u8);
    }
    let _ = SECTOR_BYTES;
}

#[test]
fn flipped_checkpoint_chunks_are_detected_and_repaired_by_state_sync() {
    let t0 = Instant::now();
    let mut sim = StackSim::new(4, 31, DISK_BYTES);
    sim.install_counter(0).expect("counter installed");
    sim.set_call_interval(Some(150));
    let mut rng = SimRng::new(31);
    for round in 0..3 {
        // Right after node 1 wrote a checkpoint, so that its peers still serve that height.
        let cp = sim
            .node(1)
            .store_stats()
            .unwrap_or_default()
            .checkpoint_height;
        assert!(sim.run_until(60_000, |s| s
            .node(1)
            .store_stats()
            .is_some_and(|st| st.checkpoint_height > cp)));
        let chunks = sim.node_mut(1).store_mut().expect("store").chunk_extents();
        let flips = 1 + round;
        flip_in(&sim, 1, &chunks, flips, &mut rng);
        sim.power_cut(1);
        sim.start(1).expect("reboots");
        let st = sim.node(1).store_stats().unwrap_or_default();
        assert!(
            st.bad_chunks_detected >= 1,
            "round {round}: the flip is detected"
        );
        assert!(
            sim.node(1).syncing().is_some(),
            "round {round}: it repairs instead of executing"
        );
        let target = sim.max_executed() + 10;
        assert!(sim.run_until(60_000, |s| s.min_executed() >= target
            && !s.node(1).stalled()));
        sim.check().expect("agreement after repair");
        let st = sim.node(1).store_stats().unwrap_or_default();
        eprintln!(
            "round {round}: {flips} flips; repaired by {:?}",
            st.last_sync
        );
        assert!(st.syncs_completed >= 1);
        assert!(st.last_sync.chunks_local > 0, "intact chunks are kept");
        assert!(
            st.last_sync.chunks_fetched as usize <= flips,
            "only the damaged chunks are fetched"
        );
    }
    eprintln!("{:?}", t0.elapsed());
}

#[test]
fn a_bit_flip_anywhere_in_the_store_is_detected_and_the_node_recovers() {
    let t0 = Instant::now();
    let mut sim = StackSim::new(4, 32, DISK_BYTES);
    sim.install_counter(0).expect("counter installed");
    sim.set_call_interval(Some(150));
    assert!(sim.run_until(60_000, |s| s.min_executed() >= 22));
    let mut rng = SimRng::new(32);
    let mut detected = 0;
    for round in 0..8 {
        let extents = sim
            .node_mut(2)
            .store_mut()
            .expect("store")
            .referenced_extents();
        flip_in(&sim, 2, &extents, 1 + round % 3, &mut rng);
        sim.power_cut(2);
        sim.start(2).expect("boots (or is wiped and joins)");
        let r = sim.recoveries[2].clone().unwrap_or_default();
        let st = sim.node(2).store_stats().unwrap_or_default();
        detected += usize::from(
            !r.blob_repairs.is_empty()
                || !r.pool_faults.is_empty()
                || st.bad_chunks_detected > 0
                || r.checkpoint.is_none(),
        );
        let target = sim.max_executed() + 6;
        assert!(
            sim.run_until(60_000, |s| s.min_executed() >= target
                && !s.node(2).stalled()),
            "round {round}: node 2 runs again"
        );
        sim.check().expect("agreement");
    }
    eprintln!(
        "8 rounds: {detected} with detected damage, {} stores unopenable (wiped, re-synced); {:?}",
        sim.wiped_unopenable,
        t0.elapsed()
    );
    assert!(detected >= 4);
}
