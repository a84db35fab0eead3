//! `store-kill9` (issue 7, acceptance 4): the state store runs in the kernel on virtio-blk, and
//! a VM killed with SIGKILL mid-run reboots and resumes from its disk.
//!
//! A fresh sparse raw disk; the kernel boots with `cairn.store-demo=1` (kernel/src/store_demo.rs),
//! formats the store and advances: one durable pool record per height (`store: height=H` is
//! printed only after the record is synced), a checkpoint every few heights
//! (`store: checkpoint=H …`). At a seeded moment (after a seeded number of height lines) the
//! host SIGKILLs QEMU, boots again on the same disk, and requires:
//! - `store: recovered height=H checkpoint=C …` with `H` at least the last height printed
//!   before the kill (everything reported durable survived) and `C` at least the last
//!   checkpoint printed (no committed checkpoint lost), `C <= H`;
//! - `store: verified ok`: the guest checked the checkpoint's files and root hash against the
//!   state function at `C`, and the pool records after it as `C + 1 … H` without a gap;
//! - heights advance past `H` again.
//!
//! This is repeated [`KILL_CYCLES`] times. `CAIRN_SEED=n` picks other kill moments.

use crate::boot_paths::{accel, failure_report, spawn_quiet};
use crate::Paths;
use qemu::{Drive, LinePattern, QemuCommand, Vm};
use std::path::Path;
use std::time::Duration;

/// Size of the sparse raw disk the store is formatted on.
pub const STORE_DISK_BYTES: u64 = 256 * 1024 * 1024;
/// Kill/reboot cycles.
pub const KILL_CYCLES: usize = 3;
/// Overall host time limit of one QEMU run.
pub const STORE_RUN_TIMEOUT_S: u64 = 300;
/// Host time allowed between two `store:` lines (boot and recovery included).
pub const STORE_LINE_TIMEOUT_S: u64 = 120;
/// Heights each run advances at least before it is killed…
const KILL_AFTER_HEIGHTS_MIN: u64 = 12;
/// …plus a seeded number below this.
const KILL_AFTER_HEIGHTS_SPAN: u64 = 40;
/// Heights the last run must advance past its recovered height.
const FINAL_ADVANCE_HEIGHTS: u64 = 10;
/// After the last awaited line, the kill waits a seeded time below this (ms), so it lands
/// anywhere in the guest's loop: between rounds, inside a pool sync, inside a checkpoint.
const KILL_DELAY_MS_SPAN: u64 = 150;
/// How long the host keeps reading the killed VM's console for lines it printed before dying.
const DRAIN_TIMEOUT_S: u64 = 5;
/// The default seed of the kill moments.
const DEFAULT_SEED: u64 = 0x5eed_0007;

/// What the host saw of one run.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    height: u64,
    checkpoint: Option<u64>,
}

pub fn store_kill9(paths: &Paths) -> Result<String, String> {
    let run_dir = paths.run_dir("test-store-kill9");
    std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
    let disk = run_dir.join("store.raw");
    let _ = std::fs::remove_file(&disk);
    let file =
        std::fs::File::create(&disk).map_err(|e| format!("create {}: {e}", disk.display()))?;
    file.set_len(STORE_DISK_BYTES).map_err(|e| e.to_string())?;
    drop(file);
    let seed = std::env::var("CAIRN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let mut rng = seed;
    let mut report = Vec::new();

    // First boot: an empty disk is formatted.
    let mut vm = boot(paths, &disk, 0)?;
    let first = next_store_line(&mut vm)?;
    if !first.contains("store: formatted") {
        return Err(failure_report(
            &mut vm,
            &format!("first boot on an empty disk: expected `store: formatted`, got {first:?}"),
        ));
    }
    expect_verified(&mut vm)?;
    let mut start = Seen::default();
    for cycle in 1..=KILL_CYCLES + 1 {
        let last = cycle == KILL_CYCLES + 1;
        let advance = if last {
            FINAL_ADVANCE_HEIGHTS
        } else {
            KILL_AFTER_HEIGHTS_MIN + splitmix(&mut rng) % KILL_AFTER_HEIGHTS_SPAN
        };
        let mut seen = run_until(&mut vm, start, start.height + advance)?;
        let delay_ms = if last {
            0
        } else {
            splitmix(&mut rng) % KILL_DELAY_MS_SPAN
        };
        std::thread::sleep(Duration::from_millis(delay_ms));
        vm.kill();
        drain(&mut vm, &mut seen);
        if last {
            report.push(format!("advanced to {} and stopped", seen.height));
            break;
        }
        vm = boot(paths, &disk, cycle)?;
        let line = next_store_line(&mut vm)?;
        let (height, checkpoint) = match parse_recovered(&line) {
            Some(r) => r,
            None => {
                return Err(failure_report(
                    &mut vm,
                    &format!("reboot {cycle}: expected `store: recovered …`, got {line:?}"),
                ))
            }
        };
        let lost_height = height < seen.height;
        let lost_checkpoint = seen.checkpoint > checkpoint || checkpoint > Some(height);
        if lost_height || lost_checkpoint {
            return Err(failure_report(
                &mut vm,
                &format!(
                    "reboot {cycle}: before the kill the guest reported height {} and checkpoint \
                     {:?} durable, but recovered {line:?}",
                    seen.height, seen.checkpoint
                ),
            ));
        }
        expect_verified(&mut vm)?;
        report.push(format!(
            "kill {cycle} {delay_ms} ms after height {} (last checkpoint seen {}) -> recovered \
             height {height} checkpoint {}",
            seen.height,
            seen.checkpoint.map_or("none".into(), |c| c.to_string()),
            checkpoint.map_or("none".into(), |c| c.to_string()),
        ));
        start = Seen { height, checkpoint };
    }
    Ok(format!("seed {seed}; {}", report.join("; ")))
}

fn boot(paths: &Paths, disk: &Path, index: usize) -> Result<Vm, String> {
    let cmd = QemuCommand::pvh(paths.kernel())
        .accel(accel())
        .append("cairn.store-demo=1")
        .drive(Drive::raw(disk));
    let name = format!("store-kill9-boot{index}");
    let run_dir = paths
        .run_dir("test-store-kill9")
        .join(format!("boot{index}"));
    spawn_quiet(
        &name,
        &cmd,
        &run_dir,
        Duration::from_secs(STORE_RUN_TIMEOUT_S),
    )
}

/// The next console line from the store demo; a failure report if it is an error.
fn next_store_line(vm: &mut Vm) -> Result<String, String> {
    let limit = Duration::from_secs(STORE_LINE_TIMEOUT_S);
    let line = match vm.wait_for(&LinePattern::substring("store: "), limit) {
        Ok(line) => line.text,
        Err(err) => return Err(failure_report(vm, &err.to_string())),
    };
    if line.contains("store: error") || line.contains("store: INCONSISTENT") {
        return Err(failure_report(vm, &format!("the guest reported {line:?}")));
    }
    Ok(line)
}

fn expect_verified(vm: &mut Vm) -> Result<(), String> {
    let line = next_store_line(vm)?;
    if line.contains("store: verified ok") {
        Ok(())
    } else {
        Err(failure_report(
            vm,
            &format!("expected `store: verified ok`, got {line:?}"),
        ))
    }
}

/// Follows `store: height=` / `store: checkpoint=` lines until a height of at least `target`;
/// heights must go up one by one from `start.height + 1`.
fn run_until(vm: &mut Vm, start: Seen, target: u64) -> Result<Seen, String> {
    let mut seen = start;
    while seen.height < target {
        let line = next_store_line(vm)?;
        if let Some(h) = value_after(&line, "store: height=") {
            if h != seen.height + 1 {
                return Err(failure_report(
                    vm,
                    &format!("height {h} printed after height {}", seen.height),
                ));
            }
            seen.height = h;
        } else if let Some(c) = value_after(&line, "store: checkpoint=") {
            seen.checkpoint = Some(c);
        }
    }
    Ok(seen)
}

/// Reads what the killed VM printed before it died (the console pipe ends with QEMU) and
/// adds it to `seen`. A line cut by the kill is ignored: a height counts only if it is the
/// next one, a checkpoint only if its line got past the number.
fn drain(vm: &mut Vm, seen: &mut Seen) {
    let limit = Duration::from_secs(DRAIN_TIMEOUT_S);
    while let Ok(line) = vm.wait_for(&LinePattern::substring("store: "), limit) {
        if let Some(h) = value_after(&line.text, "store: height=") {
            if h == seen.height + 1 {
                seen.height = h;
            }
        } else if line.text.contains(" chunks written ") {
            if let Some(c) = value_after(&line.text, "store: checkpoint=") {
                seen.checkpoint = Some(c);
            }
        }
    }
}

/// `store: recovered height=H checkpoint=C …` → `(H, Some(C))`, or `(H, None)` for `none`.
fn parse_recovered(line: &str) -> Option<(u64, Option<u64>)> {
    let height = value_after(line, "store: recovered height=")?;
    let at = line.find("checkpoint=")? + "checkpoint=".len();
    let rest = &line[at..];
    if rest.starts_with("none") {
        return Some((height, None));
    }
    Some((height, Some(leading_number(rest)?)))
}

fn value_after(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    leading_number(&line[at..])
}

fn leading_number(text: &str) -> Option<u64> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

/// SplitMix64: the seeded kill moments.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_guest_lines() {
        assert_eq!(
            parse_recovered("store: recovered height=41 checkpoint=40 records=1 (open 3 ms)"),
            Some((41, Some(40)))
        );
        assert_eq!(
            parse_recovered("store: recovered height=5 checkpoint=none records=5 (open 3 ms)"),
            Some((5, None))
        );
        assert_eq!(parse_recovered("store: formatted (256 MiB device)"), None);
        assert_eq!(value_after("store: height=17", "store: height="), Some(17));
        assert_eq!(
            value_after(
                "store: checkpoint=16 chunks written 2/5",
                "store: checkpoint="
            ),
            Some(16)
        );
    }
}
