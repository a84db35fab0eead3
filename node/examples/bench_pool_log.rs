//! `cargo xtask bench pool_log`: how fast each node's pool log grows, by record kind, in a
//! simulated 4-node subnet with stores (`StackSim`, `ConsensusParams::FAST`).
//!
//! ```text
//! cargo run --release -p node --features sim --example bench_pool_log
//! ```
//! Two runs of `BENCH_POOL_LOG_HEIGHTS` finalized heights each (default 200): an idle subnet,
//! then the Motoko counter with an update call every 150 ms. Per finalized height and node
//! (the mean over the four nodes) it reports the record bytes the log gained: the finalized
//! blocks (`RECORD_FINALIZED_BLOCK`), what the node signed (`RECORD_OWN_ARTIFACT`, with the
//! blocks it notarized) and what made heights final (`RECORD_FINALITY`: beacons,
//! notarizations, finalizations, and blocks the node finalized without notarizing them). The
//! finality records are shown as a ratio of the rest of the log, measured in the same run;
//! the log keeps the heights above the older of checkpoint and CUP, so its live size is
//! about the per-height bytes times one to two CUP intervals (shown for the IC's 500).

use node::replica::stack::StoreStats;
use node::sim::stack_sim::StackSim;

const DISK_BYTES: u64 = 64 << 20;
/// Simulated time a run may take.
const RUN_LIMIT_MS: u64 = 600_000;
/// The IC's CUP interval (DKG interval + 1), to put the per-height figure in proportion.
const IC_CUP_INTERVAL: u64 = 500;

#[derive(Default, Clone, Copy)]
struct Sizes {
    blocks: u64,
    own: u64,
    finality: u64,
    finality_records: u64,
}

impl Sizes {
    fn of(s: &StoreStats) -> Sizes {
        Sizes {
            blocks: s.block_bytes_logged,
            own: s.own_artifact_bytes_logged,
            finality: s.finality_bytes_logged,
            finality_records: s.finality_logged,
        }
    }
    fn minus(self, o: Sizes) -> Sizes {
        Sizes {
            blocks: self.blocks - o.blocks,
            own: self.own - o.own,
            finality: self.finality - o.finality,
            finality_records: self.finality_records - o.finality_records,
        }
    }
    fn plus(self, o: Sizes) -> Sizes {
        Sizes {
            blocks: self.blocks + o.blocks,
            own: self.own + o.own,
            finality: self.finality + o.finality,
            finality_records: self.finality_records + o.finality_records,
        }
    }
}

fn sizes(sim: &StackSim, n: usize) -> Vec<Sizes> {
    (0..n)
        .map(|i| Sizes::of(&sim.node(i).store_stats().unwrap_or_default()))
        .collect()
}

fn min_finalized(sim: &StackSim, n: usize) -> u64 {
    (0..n)
        .map(|i| sim.node(i).finalized_height().0)
        .min()
        .unwrap_or(0)
}

/// Runs `heights` more finalized heights and prints what the logs gained.
fn measure(sim: &mut StackSim, n: usize, heights: u64, label: &str) -> Result<(), String> {
    let before = sizes(sim, n);
    let from = min_finalized(sim, n);
    let target = from + heights;
    if !sim.run_until(RUN_LIMIT_MS, |s| min_finalized(s, n) >= target) {
        return Err(format!("{label}: the subnet did not reach height {target}"));
    }
    let span = (min_finalized(sim, n) - from) as f64;
    let gained = sizes(sim, n)
        .into_iter()
        .zip(before)
        .map(|(a, b)| a.minus(b))
        .fold(Sizes::default(), Sizes::plus);
    let per = |bytes: u64| bytes as f64 / span / n as f64;
    let total = per(gained.blocks + gained.own + gained.finality);
    println!(
        "{label:<28} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.2} {:>11.2}x {:>10.1}",
        per(gained.blocks),
        per(gained.own),
        per(gained.finality),
        total,
        gained.finality_records as f64 / span / n as f64,
        gained.finality as f64 / (gained.blocks + gained.own).max(1) as f64,
        total * IC_CUP_INTERVAL as f64 / 1024.0,
    );
    Ok(())
}

fn main() -> Result<(), String> {
    let heights: u64 = std::env::var("BENCH_POOL_LOG_HEIGHTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let n = 4;
    let mut sim = StackSim::new(n, 7, DISK_BYTES);
    println!(
        "pool log growth per finalized height and node (bytes; mean of {n} nodes over {heights} heights)"
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>10}",
        "run", "blocks", "own", "finality", "total", "fin.recs", "fin/(rest)", "KiB/500h"
    );
    measure(&mut sim, n, heights, "idle subnet")?;
    sim.install_counter(0)?;
    sim.set_call_interval(Some(150));
    measure(&mut sim, n, heights, "counter, 1 update / 150 ms")?;
    sim.check()?;
    Ok(())
}
