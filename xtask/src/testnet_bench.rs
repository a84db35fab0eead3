//! `cargo xtask bench testnet`: the 4-VM testnet measured from the host, beside the
//! simulated subnet (`node/examples/bench_testnet_sim.rs`, run in the same invocation), with
//! ratios.
//!
//! On the testnet: time from the start of the command (kernel build check included) and from
//! QEMU start to the first finalized block; the finalization rate over [`RATE_WINDOW_S`];
//! update-call (`inc`, certified reply verified) and query-call (`get`) latency, median and
//! p99, over sequential calls through the nodes in turn; update and query throughput with one
//! client per node for a bounded time. Everything goes to 127.0.0.1 only and stops by itself.

use crate::testnet_client::{Client, EMPTY_ARGS};
use crate::testnet_harness::{Ports, Spec, Testnet};
use crate::{cargo, kernel_build, Paths};
use node::types::Principal;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub const NODES: usize = 4;
/// Sequential update calls timed.
pub const UPDATE_SAMPLES: usize = 30;
/// Sequential queries timed.
pub const QUERY_SAMPLES: usize = 100;
/// Length of each throughput run.
pub const THROUGHPUT_S: u64 = 10;
/// Window over which the finalization rate is measured.
pub const RATE_WINDOW_S: u64 = 20;
const VM_LIMIT_S: u64 = 900;
const BOOT_TIMEOUT_S: u64 = 300;
const CALL_TIMEOUT_S: u64 = 60;
/// Bound on building and running the simulator's bench.
const SIM_BENCH_TIMEOUT_S: u64 = 1200;

/// Latency summary of sorted samples.
#[derive(Clone, Copy, Debug, Default)]
struct Lat {
    median_ms: f64,
    p99_ms: f64,
}

fn lat(mut samples: Vec<Duration>) -> Lat {
    if samples.is_empty() {
        return Lat::default();
    }
    samples.sort();
    let at = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    Lat {
        median_ms: at(50).as_secs_f64() * 1e3,
        p99_ms: at(99).as_secs_f64() * 1e3,
    }
}

/// The figures of one subnet; `None` where not measured.
#[derive(Clone, Debug, Default)]
struct Figures {
    first_block_s: Option<f64>,
    first_block_cmd_s: Option<f64>,
    rate_per_s: Option<f64>,
    update: Option<Lat>,
    query: Option<Lat>,
    update_per_s: Option<f64>,
    query_per_s: Option<f64>,
}

pub fn run(paths: &Paths) -> Result<(), String> {
    let t0 = Instant::now();
    kernel_build::build_all(paths)?;
    println!(
        "\nbench testnet: {NODES} VMs ({:?})",
        crate::boot_paths::accel()
    );
    let vm = bench_vms(paths, t0)?;
    println!("\nbench testnet: the simulated subnet (bench_testnet_sim), same run");
    let sim = match bench_sim(paths) {
        Ok(f) => f,
        Err(e) => {
            println!("  simulator bench failed: {e}");
            Figures::default()
        }
    };
    print_table(&vm, &sim);
    Ok(())
}

fn bench_vms(paths: &Paths, t0: Instant) -> Result<Figures, String> {
    let spec = Spec {
        boot: crate::testnet_harness::NodeBoot::Pvh,
        nodes: NODES,
        dir: paths.run_dir("bench-testnet"),
        fresh: true,
        ports: Ports::Ephemeral,
        limit: Duration::from_secs(VM_LIMIT_S),
        append: String::new(),
        cup_interval_heights: image::genesis::ConsensusParams::IC_APPLICATION_SUBNET
            .cup_interval_heights,
    };
    let mut net = Testnet::create(paths, &spec)?;
    let booted = Instant::now();
    net.start_all()?;
    net.wait_until(
        "a first finalized block",
        Duration::from_secs(BOOT_TIMEOUT_S),
        |t| t.nodes.iter().any(|n| n.first_block.is_some()),
    )?;
    let first = net
        .nodes
        .iter()
        .filter_map(|n| n.first_block)
        .min()
        .unwrap_or_default();
    let first_cmd = booted.duration_since(t0) + first;
    println!(
        "  first finalized block: {:.2} s after QEMU start, {:.2} s after the command started",
        first.as_secs_f64(),
        first_cmd.as_secs_f64()
    );
    for i in 0..NODES {
        net.wait_api(i, Duration::from_secs(BOOT_TIMEOUT_S))?;
    }
    // Finalization rate: node 0's height over a window.
    net.poll_all()?;
    let h0 = net.nodes[0].height;
    let w = Instant::now();
    while w.elapsed() < Duration::from_secs(RATE_WINDOW_S) {
        std::thread::sleep(Duration::from_millis(250));
        net.poll_all()?;
    }
    let h1 = net.nodes[0].height;
    let rate = (h1 - h0) as f64 / w.elapsed().as_secs_f64();
    println!("  finalization: {h0} → {h1} in {RATE_WINDOW_S} s = {rate:.2} blocks/s");

    let clients = |net: &Testnet| -> Result<Vec<Client>, String> {
        (0..NODES)
            .map(|i| {
                Client::new(
                    net.nodes[i].http_port,
                    &net.root_key_der,
                    Duration::from_secs(CALL_TIMEOUT_S),
                )
            })
            .collect()
    };
    let mut cs = clients(&net)?;
    let wasm_path = paths
        .root
        .join("../shared/testdata/canisters/motoko-counter/module.wasm");
    let wasm = std::fs::read(&wasm_path).map_err(|e| format!("{}: {e}", wasm_path.display()))?;
    let id = cs[0]
        .create_canister()
        .map_err(|e| format!("create: {e}"))?;
    cs[0]
        .install(id, &wasm, EMPTY_ARGS)
        .map_err(|e| format!("install: {e}"))?;

    let mut upd = Vec::with_capacity(UPDATE_SAMPLES);
    for k in 0..UPDATE_SAMPLES {
        let t = Instant::now();
        cs[k % NODES]
            .update(&id, "inc", EMPTY_ARGS)
            .map_err(|e| format!("inc via node{}: {e}", k % NODES))?;
        upd.push(t.elapsed());
    }
    let mut qs = Vec::with_capacity(QUERY_SAMPLES);
    for k in 0..QUERY_SAMPLES {
        let t = Instant::now();
        cs[k % NODES]
            .query(&id, "get", EMPTY_ARGS)
            .map_err(|e| format!("get via node{}: {e}", k % NODES))?;
        qs.push(t.elapsed());
    }
    let update = lat(upd);
    let query = lat(qs);
    println!(
        "  update latency median {:.1} ms p99 {:.1} ms; query median {:.1} ms p99 {:.1} ms",
        update.median_ms, update.p99_ms, query.median_ms, query.p99_ms
    );
    let update_per_s = throughput(clients(&net)?, id, true)?;
    let query_per_s = throughput(clients(&net)?, id, false)?;
    println!(
        "  throughput ({NODES} clients, one per node, {THROUGHPUT_S} s each): \
         {update_per_s:.2} updates/s, {query_per_s:.1} queries/s"
    );
    net.poll_all()?;
    net.kill_all();
    Ok(Figures {
        first_block_s: Some(first.as_secs_f64()),
        first_block_cmd_s: Some(first_cmd.as_secs_f64()),
        rate_per_s: Some(rate),
        update: Some(update),
        query: Some(query),
        update_per_s: Some(update_per_s),
        query_per_s: Some(query_per_s),
    })
}

/// Calls per second with one thread per client for [`THROUGHPUT_S`]; every call must succeed.
fn throughput(clients: Vec<Client>, id: Principal, update: bool) -> Result<f64, String> {
    let start = Instant::now();
    let until = start + Duration::from_secs(THROUGHPUT_S);
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || -> Result<u64, String> {
                let mut n = 0u64;
                while Instant::now() < until {
                    let r = if update {
                        c.update(&id, "inc", EMPTY_ARGS)
                    } else {
                        c.query(&id, "get", EMPTY_ARGS)
                    };
                    r.map_err(|e| format!("port {}: {e}", c.port))?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| "load thread panicked")??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Runs `bench_testnet_sim` and reads its table.
fn bench_sim(paths: &Paths) -> Result<Figures, String> {
    let mut child = cargo(paths)
        .args(["run", "--release", "-p", "node", "--features", "sim"])
        .args(["--example", "bench_testnet_sim"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cargo run bench_testnet_sim: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if start.elapsed() > Duration::from_secs(SIM_BENCH_TIMEOUT_S) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("killed after {SIM_BENCH_TIMEOUT_S} s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = reader.join().unwrap_or_default();
    for line in text.lines() {
        println!("  | {line}");
    }
    if !status.success() {
        return Err(format!("bench_testnet_sim failed ({status})"));
    }
    Ok(parse_sim(&text))
}

/// The two numbers after `label` in a table line (`… 12.3ms 45.6ms`).
fn two_ms(text: &str, label: &str) -> Option<Lat> {
    let line = text.lines().find(|l| l.starts_with(label))?;
    let nums: Vec<f64> = line[label.len()..]
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches("ms").parse().ok())
        .collect();
    Some(Lat {
        median_ms: *nums.first()?,
        p99_ms: *nums.get(1)?,
    })
}

/// The number before `/s` on the line starting with `label`.
fn per_s(text: &str, label: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(label))?;
    line.split_whitespace()
        .find_map(|w| w.strip_suffix("/s")?.parse().ok())
}

/// A `key: <number>` figure, if the simulator's bench prints one.
fn labelled(text: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains(key))?;
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().find_map(|w| {
        w.trim_end_matches(|c: char| c.is_alphabetic() || c == '/')
            .parse()
            .ok()
    })
}

fn parse_sim(text: &str) -> Figures {
    Figures {
        first_block_s: labelled(text, "first finalized block:"),
        first_block_cmd_s: None,
        rate_per_s: labelled(text, "finalization rate:"),
        update: two_ms(text, "update (v3 call, certified)"),
        query: two_ms(text, "query (v2, node-signed)"),
        update_per_s: per_s(text, "update throughput"),
        query_per_s: per_s(text, "query throughput"),
    }
}

fn print_table(vm: &Figures, sim: &Figures) {
    let show =
        |v: Option<f64>, unit: &str| v.map_or("—".to_string(), |v| format!("{v:.2}{unit}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "—".into(),
    };
    let rows: Vec<(&str, Option<f64>, Option<f64>, &str)> = vec![
        (
            "first block (s from start)",
            vm.first_block_s,
            sim.first_block_s,
            " s",
        ),
        ("first block (s from cmd)", vm.first_block_cmd_s, None, " s"),
        ("finalization rate", vm.rate_per_s, sim.rate_per_s, "/s"),
        (
            "update median",
            vm.update.map(|l| l.median_ms),
            sim.update.map(|l| l.median_ms),
            " ms",
        ),
        (
            "update p99",
            vm.update.map(|l| l.p99_ms),
            sim.update.map(|l| l.p99_ms),
            " ms",
        ),
        (
            "query median",
            vm.query.map(|l| l.median_ms),
            sim.query.map(|l| l.median_ms),
            " ms",
        ),
        (
            "query p99",
            vm.query.map(|l| l.p99_ms),
            sim.query.map(|l| l.p99_ms),
            " ms",
        ),
        ("update throughput", vm.update_per_s, sim.update_per_s, "/s"),
        ("query throughput", vm.query_per_s, sim.query_per_s, "/s"),
    ];
    println!(
        "\n{:<28} {:>14} {:>14} {:>10}",
        "", "4 VMs (QEMU)", "cairn-sim", "VMs/sim"
    );
    for (name, a, b, unit) in rows {
        println!(
            "{name:<28} {:>14} {:>14} {:>10}",
            show(a, unit),
            show(b, unit),
            ratio(a, b)
        );
    }
    println!(
        "(sim throughput: its update figure is 1 sequential client, its query figure 4 \
         clients; the VM figures use {NODES} clients, one per node)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_simulator_table() {
        let text = "cairn-sim, 4 nodes, from the host over 127.0.0.1 HTTP/1.1\n\
                    \u{20}                                  median          p99\n\
                    update (v3 call, certified)        1012.3ms     1500.0ms\n\
                    query (v2, node-signed)               1.5ms        3.0ms\n\
                    update throughput (1 client, sequential): 1.0/s\n\
                    query throughput (4 clients): 2400/s\n";
        let f = parse_sim(text);
        let u = f.update.unwrap();
        assert_eq!((u.median_ms, u.p99_ms), (1012.3, 1500.0));
        assert_eq!(f.query.unwrap().p99_ms, 3.0);
        assert_eq!(f.update_per_s, Some(1.0));
        assert_eq!(f.query_per_s, Some(2400.0));
        assert_eq!(f.rate_per_s, None);
        let l = lat(vec![Duration::from_millis(3), Duration::from_millis(1)]);
        assert_eq!(l.median_ms, 3.0);
    }
}
