//! The virtio-blk check (issue 5): a VM writes a known pattern across 64 MiB of a raw disk
//! file and powers off; a second boot reads it back and must find every byte; reading past the
//! end of the device must return an error the guest reports. A third boot after the host flips
//! one byte in the file must report the mismatch, so the verification cannot pass vacuously.
//! The kernel side is `cairn.disk-check=write|verify` (kernel/src/disk_check.rs).

use crate::boot_paths::{accel, failure_report, spawn_quiet};
use crate::Paths;
use qemu::{Drive, ExitOutcome, LinePattern, QemuCommand};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

/// The span the kernel's check covers.
pub const CHECKED_BYTES: u64 = 64 * 1024 * 1024;
/// The disk is a little larger, so "past the end" is past the device, not past the span.
pub const DISK_BYTES: u64 = CHECKED_BYTES + 1024 * 1024;
/// Host time one boot with its disk check may take.
pub const DISK_RUN_TIMEOUT_S: u64 = 180;
/// The byte the host corrupts for the negative run, and the sector the guest must name.
const CORRUPT_OFFSET_BYTES: u64 = 40 * 1024 * 1024 + 123;
const SECTOR_BYTES: u64 = 512;

pub fn disk(paths: &Paths) -> Result<String, String> {
    let run_dir = paths.run_dir("test-disk");
    std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
    let disk = run_dir.join("disk.raw");
    let file =
        std::fs::File::create(&disk).map_err(|e| format!("create {}: {e}", disk.display()))?;
    file.set_len(DISK_BYTES).map_err(|e| e.to_string())?;
    drop(file);

    let wrote = boot_check(paths, &disk, "write", "disk-check: wrote 64 MiB")?;
    let verified = boot_check(paths, &disk, "verify", "disk-check: verified 64 MiB ok")?;
    corrupt_one_byte(&disk)?;
    let sector = CORRUPT_OFFSET_BYTES / SECTOR_BYTES;
    boot_check(
        paths,
        &disk,
        "verify",
        &format!("disk-check: MISMATCH at sector {sector}"),
    )?;
    Ok(format!(
        "boot + write 64 MiB {wrote:.1} s; after a power-off, boot + read back {verified:.1} s; \
         read past the end failed as it must, a flipped byte was found at sector {sector}"
    ))
}

/// Boot with `cairn.disk-check=<mode> cairn.exit=1`, require `expect` (and, unless a mismatch
/// is expected, a past-the-end read error) and a clean exit; return the boot's seconds.
fn boot_check(paths: &Paths, disk: &Path, mode: &str, expect: &str) -> Result<f64, String> {
    let cmd = QemuCommand::pvh(paths.kernel())
        .accel(accel())
        .append(format!("cairn.disk-check={mode} cairn.exit=1"))
        .drive(Drive::raw(disk));
    let limit = Duration::from_secs(DISK_RUN_TIMEOUT_S);
    let name = format!("disk-{mode}");
    let mut vm = spawn_quiet(&name, &cmd, &paths.run_dir(&format!("test-{name}")), limit)?;
    let line = match vm.wait_for(&LinePattern::substring("disk-check: "), limit) {
        Ok(line) => line,
        Err(err) => return Err(failure_report(&mut vm, &err.to_string())),
    };
    if !line.text.contains(expect) {
        return Err(failure_report(
            &mut vm,
            &format!("expected {expect:?}, got {:?}", line.text),
        ));
    }
    if !expect.contains("MISMATCH") {
        let past_end = LinePattern::substring("disk-check: read past end -> error");
        if let Err(err) = vm.wait_for(&past_end, limit) {
            return Err(failure_report(
                &mut vm,
                &format!("reading past the end: {err}"),
            ));
        }
    }
    let seconds = line.at.as_secs_f64();
    match vm.wait_exit(limit) {
        Ok(ExitOutcome::Pass | ExitOutcome::PowerOff) => Ok(seconds),
        Ok(other) => Err(failure_report(
            &mut vm,
            &format!("QEMU {other} after the disk check"),
        )),
        Err(err) => Err(failure_report(&mut vm, &err.to_string())),
    }
}

fn corrupt_one_byte(disk: &Path) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    use std::io::Read;
    file.seek(SeekFrom::Start(CORRUPT_OFFSET_BYTES))
        .map_err(|e| e.to_string())?;
    file.read_exact(&mut byte).map_err(|e| e.to_string())?;
    byte[0] ^= 0x5a;
    file.seek(SeekFrom::Start(CORRUPT_OFFSET_BYTES))
        .map_err(|e| e.to_string())?;
    file.write_all(&byte).map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| e.to_string())
}
