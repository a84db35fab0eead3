//! `cargo xtask bench blk [--mib N]`: sequential write and read on virtio-blk inside the VM,
//! beside the same on a host file, in the same run.
//!
//! - guest: `cairn.blk-bench=N` (kernel/src/blk_bench.rs) writes N MiB in 256 KiB requests,
//!   flushes (timed with the writes), then reads them back, timing with its TSC clock. QEMU
//!   opens the raw file with its default cache mode (writeback): guest writes land in the host
//!   page cache and the flush is an fdatasync; the guest's reads are served from the host page
//!   cache (the data was just written).
//! - host: the same sizes and request size on a file in the same directory: write + fsync
//!   (like the guest's write + flush), then read back with the page cache hot (like the
//!   guest's read: the ratio is taken against this), and again after
//!   `posix_fadvise(DONTNEED)` dropped the file's pages (cold, shown for reference).

use crate::bench_net::{parse_bytes_us, parse_opt, print_table_rows};
use crate::boot_paths::{accel, failure_report, spawn_quiet};
use crate::{kernel_build, Paths};
use qemu::{Drive, LinePattern, QemuCommand};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

pub const DEFAULT_BLK_MIB: u64 = 128;
/// The request size, host and guest (kernel/src/blk_bench.rs `BLK_BENCH_CHUNK_BYTES`).
const CHUNK_BYTES: usize = 256 * 1024;
const BENCH_VM_TIMEOUT_S: u64 = 600;
const MIB: u64 = 1024 * 1024;
/// Host runs; the best is shown.
const HOST_RUNS: usize = 3;

pub fn run(paths: &Paths, args: &[String]) -> Result<(), String> {
    let mib: u64 = parse_opt(args, "--mib", DEFAULT_BLK_MIB)?;
    let bytes = mib.max(1) * MIB;
    kernel_build::build_all(paths)?;
    let dir = paths.run_dir("bench-blk");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    let host_file = dir.join("host.raw");
    let _ = std::fs::remove_file(&host_file);
    // The host's figures are the best of a few runs (this machine is shared); the guest's
    // come from one boot.
    let (mut host_write_s, mut hot_s, mut cold_s) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..HOST_RUNS {
        let _ = std::fs::remove_file(&host_file);
        host_write_s = host_write_s.min(host_write(&host_file, bytes)?);
        hot_s = hot_s.min(host_read(&host_file, bytes, false)?);
        cold_s = cold_s.min(host_read(&host_file, bytes, true)?);
    }
    let _ = std::fs::remove_file(&host_file);
    let (host_write, host_read_hot, host_read_cold) = (host_write_s, hot_s, cold_s);

    let (guest_write, guest_read) = guest(paths, &dir, bytes)?;
    print_table_rows(
        &format!("sequential write, {mib} MiB in 256 KiB requests (flush/fsync included)"),
        &[
            ("host file write + fsync = base".into(), bytes, host_write),
            ("guest virtio-blk write + flush".into(), bytes, guest_write),
        ],
    );
    print_table_rows(
        &format!("sequential read, {mib} MiB in 256 KiB requests"),
        &[
            (
                "host file read, page cache hot = base".into(),
                bytes,
                host_read_hot,
            ),
            (
                "guest virtio-blk read (host cache hot)".into(),
                bytes,
                guest_read,
            ),
            (
                "host file read, cold (fadvise DONTNEED)".into(),
                bytes,
                host_read_cold,
            ),
        ],
    );
    println!(
        "\n(guest figures from its TSC clock, one boot; host figures best of {HOST_RUNS}; {:?}; \
         QEMU cache=writeback, so guest reads come from the host page cache like the hot host \
         read)",
        accel()
    );
    Ok(())
}

fn host_write(path: &Path, bytes: u64) -> Result<f64, String> {
    let mut file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let chunk = vec![0xa5u8; CHUNK_BYTES];
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK_BYTES as u64) as usize;
        file.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    file.sync_all().map_err(|e| e.to_string())?;
    Ok(started.elapsed().as_secs_f64())
}

fn host_read(path: &Path, bytes: u64, cold: bool) -> Result<f64, String> {
    let mut file = OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if cold {
        // SAFETY: a valid descriptor; the call only advises the kernel about the file's pages.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(format!("posix_fadvise: error {rc}"));
        }
    }
    let mut buf = vec![0u8; CHUNK_BYTES];
    let started = Instant::now();
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    if total != bytes {
        return Err(format!("host read {total} of {bytes} bytes"));
    }
    Ok(seconds)
}

/// Boots the guest bench on a fresh disk file; (write seconds, read seconds).
fn guest(paths: &Paths, dir: &Path, bytes: u64) -> Result<(f64, f64), String> {
    let disk = dir.join("guest.raw");
    let _ = std::fs::remove_file(&disk);
    let file = File::create(&disk).map_err(|e| format!("{}: {e}", disk.display()))?;
    file.set_len(bytes + MIB).map_err(|e| e.to_string())?;
    drop(file);
    let cmd = QemuCommand::pvh(paths.kernel())
        .accel(accel())
        .append(format!("cairn.blk-bench={} cairn.exit=1", bytes / MIB))
        .drive(Drive::raw(&disk));
    let limit = Duration::from_secs(BENCH_VM_TIMEOUT_S);
    let mut vm = spawn_quiet("bench-blk", &cmd, dir, limit)?;
    let mut figures = Vec::new();
    for marker in ["write ", "read "] {
        let line = match vm.wait_for(&LinePattern::substring("blk-bench: "), limit) {
            Ok(line) => line,
            Err(err) => return Err(failure_report(&mut vm, &err.to_string())),
        };
        match parse_bytes_us(&line.text, marker) {
            Some((n, us)) if n == bytes && us > 0 => figures.push(us as f64 / 1e6),
            _ => {
                return Err(failure_report(
                    &mut vm,
                    &format!("expected the {marker}figure, got {:?}", line.text),
                ))
            }
        }
    }
    let _ = vm.wait_exit(limit);
    let _ = std::fs::remove_file(&disk);
    Ok((figures[0], figures[1]))
}
