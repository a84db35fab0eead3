#![cfg(feature = "sim")]
use node::consensus::Fault;
use node::sim::{Behavior, Sim, SimConfig};
#[test]
fn debug_kinds() {
    for b in [
        Behavior::Honest,
        Behavior::Byzantine(Fault::EquivocatingBlockMaker),
        Behavior::Byzantine(Fault::ConflictingShares),
        Behavior::Byzantine(Fault::InvalidSignatures),
        Behavior::GarbageBytes,
    ] {
        let t0 = std::time::Instant::now();
        let mut cfg = SimConfig::new(4, 421);
        cfg.behaviors.insert(1, b);
        cfg.ingress_per_second = 20;
        cfg.ingress_bytes = 64;
        let mut sim = Sim::new(cfg);
        sim.run_for_ms(1600);
        let r = sim.replica(2).unwrap();
        eprintln!(
            "{b:?}: wall {:?} fin {} events {} stats {:?}",
            t0.elapsed(),
            sim.min_honest_finalized(),
            sim.events,
            r.stats()
        );
    }
}
