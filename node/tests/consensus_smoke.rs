#![cfg(feature = "sim")]
use node::sim::{Sim, SimConfig};

#[test]
fn smoke_four_honest() {
    let t0 = std::time::Instant::now();
    let mut sim = Sim::new(SimConfig::new(4, 1));
    sim.run_for_ms(5_000);
    for i in 0..4 {
        let r = sim.replica(i).unwrap();
        eprintln!(
            "node {i}: finalized {} notarized {} cup {} stats {:?} pool {:?}",
            r.finalized_height(),
            r.notarized_height(),
            r.cup_height(),
            r.stats(),
            r.pool_sizes()
        );
    }
    eprintln!(
        "events {} units {} wall {:?}",
        sim.events,
        sim.delivered_units,
        t0.elapsed()
    );
    assert!(sim.min_honest_finalized().0 >= 10);
}
