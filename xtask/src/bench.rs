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
    let mut names = vec!["boot".to_string()];
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
