//! Consensus benchmark: simulated subnets of 4, 13, 28 and 40 nodes on a 30 ms RTT network
//! with the IC's application-subnet timing (unit delay 1000 ms, initial notary delay 300 ms),
//! real signing and verification. Reports finalized blocks per simulated second, the median
//! and p99 finalization latency (block time → delivery, simulated), host CPU time per
//! finalized block per node, and BLS share verification throughput one by one vs batched.
//!
//! Run: `cargo run --release -p node --features sim --example bench_consensus`
//! (`BENCH_SECONDS=…` changes the simulated duration per subnet, default 10).

#[cfg(not(feature = "sim"))]
fn main() {
    eprintln!("bench_consensus needs the simulator: --features sim");
    std::process::exit(2);
}

#[cfg(feature = "sim")]
fn main() {
    bench::run();
}

#[cfg(feature = "sim")]
mod bench {
    use node::consensus::ConsensusParams;
    use node::crypto::bls::SecretKey;
    use node::crypto::multisig::{aggregate, KeySet};
    use node::sim::{NetConfig, Sim, SimConfig};
    use std::time::{Duration, Instant};

    /// CPU time of this thread (the simulator is single-threaded), from the scheduler's
    /// account; wall time where that is unavailable.
    fn thread_cpu() -> Duration {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .map(Duration::from_nanos)
            .unwrap_or_else(|| {
                static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
                START.get_or_init(Instant::now).elapsed()
            })
    }

    fn percentile(sorted: &[u64], p: usize) -> u64 {
        if sorted.is_empty() {
            return 0;
        }
        sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
    }

    pub fn run() {
        let seconds: u64 = std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10);
        let params = ConsensusParams::IC_APPLICATION_SUBNET;
        println!(
            "consensus: {seconds} simulated s per subnet, RTT 30 ms (±10% jitter), unit delay {} ms, initial notary delay {} ms, CUP every {} heights",
            params.unit_delay_ms, params.initial_notary_delay_ms, params.cup_interval_heights
        );
        println!(
            "{:>4} {:>10} {:>14} {:>12} {:>12} {:>16} {:>14}",
            "n",
            "finalized",
            "blocks/sim-s",
            "median ms",
            "p99 ms",
            "CPU ms/blk/node",
            "BLS ver/blk/node"
        );
        for n in [4usize, 13, 28, 40] {
            let mut cfg = SimConfig::new(n, 42);
            cfg.params = params;
            cfg.net = NetConfig::rtt_ms(30);
            cfg.ingress_per_second = 50;
            cfg.ingress_bytes = 100;
            let cpu0 = thread_cpu();
            let mut sim = Sim::new(cfg);
            // Warm-up: channels handshake and the first round starts.
            sim.run_for_ms(1_000);
            let start_height = sim.agreed_height().0;
            sim.run_for_ms(seconds * 1_000);
            let cpu = thread_cpu() - cpu0;
            let blocks = sim.agreed_height().0 - start_height;
            let lat = sim.latencies_ns();
            let per_block_node = if blocks > 0 {
                cpu.as_secs_f64() * 1e3 / (sim.agreed_height().0 as f64 * n as f64)
            } else {
                f64::NAN
            };
            let verifications: u64 = (0..n)
                .filter_map(|i| sim.replica(i))
                .map(|r| r.stats().consensus.bls_verifications)
                .sum();
            println!(
                "{:>4} {:>10} {:>14.2} {:>12.0} {:>12.0} {:>16.2} {:>14.2}",
                n,
                sim.agreed_height().0,
                blocks as f64 / seconds as f64,
                percentile(&lat, 50) as f64 / 1e6,
                percentile(&lat, 99) as f64 / 1e6,
                per_block_node,
                verifications as f64 / (sim.agreed_height().0.max(1) as f64 * n as f64),
            );
        }
        bls_shares();
    }

    /// Shares of `count` signers on one message: each verified alone, vs one randomized
    /// batch check, vs one aggregate check (what notarization uses).
    fn bls_shares() {
        let count = 40;
        let rounds = 5;
        let msg = b"notarization share benchmark";
        let sks: Vec<SecretKey> = (0..count)
            .map(|i| SecretKey::from_ikm(&[i as u8 + 1; 32]))
            .collect();
        let pks: Vec<_> = sks.iter().map(|k| k.public_key()).collect();
        let set = KeySet::new(&pks).expect("valid keys");
        let shares: Vec<(usize, _)> = sks.iter().map(|k| k.sign(msg)).enumerate().collect();
        let t = Instant::now();
        for _ in 0..rounds {
            for (i, s) in &shares {
                assert!(set.verify_one(*i, msg, s).is_ok());
            }
        }
        let individual = (rounds * count) as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..rounds {
            assert!(set.verify_batch(msg, &shares).is_ok());
        }
        let batched = (rounds * count) as f64 / t.elapsed().as_secs_f64();
        let signers: Vec<usize> = (0..count).collect();
        let sigs: Vec<_> = shares.iter().map(|(_, s)| *s).collect();
        let t = Instant::now();
        for _ in 0..rounds {
            let agg = aggregate(&sigs).expect("aggregate");
            assert!(set.verify_aggregate(&signers, msg, &agg).is_ok());
        }
        let aggregated = (rounds * count) as f64 / t.elapsed().as_secs_f64();
        println!();
        println!("BLS share verification ({count} shares on one message):");
        println!(
            "  {:<44} {:>10.0} shares/s  (baseline)",
            "one by one", individual
        );
        println!(
            "  {:<44} {:>10.0} shares/s  ratio {:.1}x",
            "batched (random 64-bit coefficients)",
            batched,
            batched / individual
        );
        println!(
            "  {:<44} {:>10.0} shares/s  ratio {:.1}x",
            "aggregated (sum, one pairing check)",
            aggregated,
            aggregated / individual
        );
    }
}
