//! `cargo xtask bench`: `boot` (here) and the node's simulator benchmarks
//! (`node/examples/bench_<name>.rs`, run with `--release --features sim`).

use crate::boot_paths::{boot_to_ready, BootPath};
use crate::{cargo, kernel_build, option_value, run_status, Paths};
use std::time::Duration;

/// Boots per path unless `--runs` says otherwise.
pub const DEFAULT_BOOT_RUNS: usize = 5;

pub fn run(paths: &Paths, args: &[String]) -> Result<(), String> {
    let available = list(paths);
    let Some(name) = args.iter().find(|a| !a.starts_with("--")) else {
        println!("benchmarks: {}", available.join(", "));
        println!("run one with: cargo xtask bench <name>");
        return Ok(());
    };
    if name == "boot" {
        let runs = match option_value(args, "--runs") {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--runs: not a number: {v}"))?,
            None => DEFAULT_BOOT_RUNS,
        };
        return bench_boot(paths, runs.max(1));
    }
    if name == "testnet" {
        return crate::testnet_bench::run(paths);
    }
    if name == "net" {
        return crate::bench_net::run(paths, args);
    }
    if name == "blk" {
        return crate::bench_blk::run(paths, args);
    }
    if name == "exec" {
        return bench_exec(paths);
    }
    if name == "api" {
        return bench_api(paths);
    }
    if !available.iter().any(|a| a == name) {
        return Err(format!(
            "no benchmark `{name}`; available: {}",
            available.join(", ")
        ));
    }
    run_status(cargo(paths).args([
        "run",
        "--release",
        "-p",
        "node",
        "--features",
        "sim",
        "--example",
        &format!("bench_{name}"),
    ]))
}

/// `boot` plus every `node/examples/bench_*.rs`.
fn list(paths: &Paths) -> Vec<String> {
    let mut names = vec!["boot".to_string(), "net".to_string(), "blk".to_string()];
    let mut node: Vec<String> = std::fs::read_dir(paths.root.join("node").join("examples"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            file.strip_prefix("bench_")?
                .strip_suffix(".rs")
                .map(str::to_string)
        })
        .collect();
    node.sort();
    names.extend(node);
    names.push("testnet".to_string());
    names
}

/// Median host time from QEMU start to the ready line, per boot path.
fn bench_boot(paths: &Paths, runs: usize) -> Result<(), String> {
    kernel_build::build_all(paths)?;
    crate::run_vm::build_image(
        paths,
        crate::run_vm::DEFAULT_CMDLINE,
        image::DEFAULT_STORE_MIB,
    )?;
    println!(
        "\nboot to `cairn: ready`, host clock from QEMU start, {runs} runs per path ({:?}):",
        crate::boot_paths::accel()
    );
    println!(
        "{:<6} {:>10} {:>10} {:>10}   runs (s)",
        "path", "median s", "min s", "max s"
    );
    for path in BootPath::ALL {
        let mut times = Vec::with_capacity(runs);
        for i in 0..runs {
            times.push(boot_to_ready(
                paths,
                path,
                &format!("bench-boot-{}-{i}", path.name()),
            )?);
        }
        times.sort();
        let shown: Vec<String> = times
            .iter()
            .map(|t| format!("{:.2}", t.as_secs_f64()))
            .collect();
        println!(
            "{:<6} {:>10.3} {:>10.3} {:>10.3}   {}",
            path.name(),
            median(&times).as_secs_f64(),
            times[0].as_secs_f64(),
            times[times.len() - 1].as_secs_f64(),
            shown.join(" ")
        );
    }
    Ok(())
}

/// The median of sorted, non-empty `times` (the mean of the middle two for an even count).
fn median(times: &[Duration]) -> Duration {
    let mid = times.len() / 2;
    if times.len() % 2 == 1 {
        times[mid]
    } else {
        (times[mid - 1] + times[mid]) / 2
    }
}

/// Runs a node bench example in release and returns its stdout lines (echoed as they come).
fn run_node_example(paths: &Paths, example: &str) -> Result<Vec<String>, String> {
    use std::io::BufRead;
    let mut child = cargo(paths)
        .args(["run", "--release", "-p", "node", "--features", "sim"])
        .args(["--example", example])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run the {example} example: {e}"))?;
    let mut lines = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if !line.starts_with("bench-row\t") {
                println!("{line}");
            }
            lines.push(line);
        }
    }
    let status = child.wait().map_err(|e| format!("{example}: {e}"))?;
    if !status.success() {
        return Err(format!("the {example} example failed ({status})"));
    }
    Ok(lines)
}

/// `key=value` fields of the tab-separated line of `lines` that starts with `tag`.
fn tagged_fields(lines: &[String], tag: &str) -> Option<Vec<(String, String)>> {
    let line = lines
        .iter()
        .find(|l| l.split(['\t', ' ']).next() == Some(tag))?;
    let sep = if line.contains('\t') { '\t' } else { ' ' };
    Some(
        line.split(sep)
            .skip(1)
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Result<&'a str, String> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| format!("bench output lacks `{key}`"))
}

fn field_f64(fields: &[(String, String)], key: &str) -> Result<f64, String> {
    field(fields, key)?
        .parse()
        .map_err(|_| format!("bench output: `{key}` is not a number"))
}

/// The wasmtime baseline crate (outside the workspace, so workspace builds never compile it).
const WASMTIME_BENCH_DIR: &str = "bench/wasmtime";
/// Runs per wasmtime configuration (the median is reported).
const WASMTIME_RUNS: usize = 5;

/// `bench exec`: the node's wasmi figures, then the same CPU-bound module under wasmtime
/// (Cranelift, with and without fuel metering) in the same run, as ratios.
fn bench_exec(paths: &Paths) -> Result<(), String> {
    let lines = run_node_example(paths, "bench_exec")?;
    let cpu = tagged_fields(&lines, "bench-exec-cpu")
        .ok_or("bench_exec printed no `bench-exec-cpu` line")?;
    let wasmi_ips = field_f64(&cpu, "instructions")? / field_f64(&cpu, "median_s")?;
    let wasmi_reply = field(&cpu, "reply_hex")?.to_string();

    println!(
        "\nbuilding the wasmtime baseline ({WASMTIME_BENCH_DIR}, release; the first build \
         compiles Cranelift and takes several minutes)..."
    );
    let target_dir = paths.root.join("target").join("bench-wasmtime");
    let manifest = paths.root.join(WASMTIME_BENCH_DIR).join("Cargo.toml");
    run_status(
        cargo(paths)
            .args(["build", "--release", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir),
    )?;
    let exe = target_dir.join("release").join("cairn-bench-wasmtime");
    let mut rows = vec![(
        "wasmi 2.0 (cairn: fuel metering, full routing + execution)".to_string(),
        wasmi_ips,
    )];
    for (fuel, label) in [
        (false, "wasmtime 48 (Cranelift, no metering)"),
        (true, "wasmtime 48 (Cranelift, fuel metering on)"),
    ] {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--module", field(&cpu, "module")?])
            .args(["--export", field(&cpu, "export")?])
            .args(["--arg-hex", field(&cpu, "arg_hex")?])
            .args(["--instructions", field(&cpu, "instructions")?])
            .args(["--runs", &WASMTIME_RUNS.to_string()]);
        if fuel {
            cmd.arg("--fuel");
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Err(format!("{label} failed ({})", out.status));
        }
        let stdout: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        let w = tagged_fields(&stdout, "wasmtime-result")
            .ok_or("cairn-bench-wasmtime printed no result line")?;
        let reply = field(&w, "reply_hex")?;
        if reply != wasmi_reply {
            return Err(format!(
                "{label} replied {reply}, wasmi replied {wasmi_reply}: not the same computation"
            ));
        }
        rows.push((label.to_string(), field_f64(&w, "instr_per_s")?));
    }
    println!(
        "\nCPU-bound canister `{}`, {} wasmi-counted instructions per message; every engine \
         replied {wasmi_reply}",
        field(&cpu, "export")?,
        field(&cpu, "instructions")?
    );
    println!("{:<62} {:>16} {:>10}", "engine", "instr/s", "vs wasmi");
    for (label, ips) in &rows {
        println!("{label:<62} {ips:>16.0} {:>9.2}x", ips / wasmi_ips);
    }
    Ok(())
}

/// One `bench-row` line of a node bench example: (section, name, value, unit).
type BenchRow = (String, String, f64, String);

fn bench_rows(lines: &[String]) -> Vec<BenchRow> {
    lines
        .iter()
        .filter_map(|l| {
            let mut f = l.strip_prefix("bench-row\t")?.split('\t');
            let (section, name) = (f.next()?, f.next()?);
            let value = f.next()?.parse().ok()?;
            Some((section.into(), name.into(), value, f.next()?.into()))
        })
        .collect()
}

fn row_value(rows: &[BenchRow], name_prefix: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.1.starts_with(name_prefix))
        .map(|r| r.2)
}

/// `bench api`: per-operation costs and the in-process simulated subnet (`bench_api`), then
/// cairn-sim over real TCP (`bench_testnet_sim`), in one table.
fn bench_api(paths: &Paths) -> Result<(), String> {
    let mut rows = bench_rows(&run_node_example(paths, "bench_api")?);
    rows.extend(bench_rows(&run_node_example(paths, "bench_testnet_sim")?));
    if rows.is_empty() {
        return Err("the api benches printed no rows".into());
    }
    // Where an update call's CPU goes on the simulated subnet: its sender's signature is
    // verified once at the API and again by every node when it executes the block.
    let per_call_us = row_value(&rows, "update calls/s, 400 concurrent").map(|r| 1e6 / r);
    let verify_us = row_value(&rows, "verify Ed25519 signature");
    println!("\nbench api: the HTTP interface, one table");
    let mut section = String::new();
    for (sec, name, value, unit) in &rows {
        if *sec != section {
            section = sec.clone();
            println!("\n{section}");
            println!("  {:<78} {:>12} {:>8}", "", "value", "unit");
        }
        println!("  {name:<78} {value:>12.2} {unit:>8}");
    }
    if let (Some(call), Some(verify)) = (per_call_us, verify_us) {
        let sigs = 5.0 * verify;
        println!("\nCPU per update call on the simulated subnet (all 4 nodes, 1 core)");
        println!("  {:<78} {call:>12.1} {:>8}", "total", "µs");
        println!(
            "  {:<78} {sigs:>12.1} {:>8}  ({:.1}%)",
            "Ed25519 verification: 5 per call (API + each node's execution)",
            "µs",
            100.0 * sigs / call
        );
    }
    let cert: Option<Vec<f64>> = [
        "BLS threshold share: sign",
        "BLS threshold: aggregate",
        "BLS threshold: verify the aggregate",
    ]
    .iter()
    .map(|n| row_value(&rows, n))
    .collect();
    if let (Some(cert), Some(tree)) = (cert, row_value(&rows, "hash state tree, 1000 ")) {
        let bls: f64 = cert.iter().sum();
        println!("\ncertification CPU per height per node");
        println!(
            "  {:<78} {bls:>12.1} {:>8}",
            "BLS: sign a share + aggregate n−f shares + verify the aggregate", "µs"
        );
        println!(
            "  {:<78} {tree:>12.1} {:>8}",
            "state tree hashing (1,000 request statuses)", "µs"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_and_even() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(median(&ms(&[1, 2, 9])), Duration::from_millis(2));
        assert_eq!(median(&ms(&[1, 2, 4, 9])), Duration::from_millis(3));
    }
}
