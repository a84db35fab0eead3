//! `cairn.disk-check=write|verify`: writes, or reads back and compares, a known pattern over
//! the first [`DISK_CHECK_BYTES`] of the virtio-blk disk, then reads past the end of the
//! device and reports the error. Host tests boot twice (write, power off, verify) and match:
//!
//! ```text
//! disk-check: wrote 64 MiB
//! disk-check: verified 64 MiB ok            (or: disk-check: MISMATCH at sector N)
//! disk-check: read past end -> error: <message>
//! ```

use crate::arch::serial;
use crate::drivers::block::{VirtioBlock, SECTOR_BYTES};
use alloc::vec;
use node::store::BlockDevice;

/// How much of the disk the check covers.
pub const DISK_CHECK_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes per request.
const CHUNK_BYTES: usize = 64 * 1024;
const MIB: u64 = 1024 * 1024;

/// The pattern byte at absolute byte offset `at`: differs per sector and per position.
fn pattern(at: u64) -> u8 {
    let sector = at / SECTOR_BYTES as u64;
    (sector
        .wrapping_mul(0x9e37_79b9)
        .wrapping_add(at.wrapping_mul(31))
        >> 3) as u8
}

/// Runs the check named by `mode` ("write" or "verify").
pub fn run(disk: &mut VirtioBlock, mode: &str) {
    let capacity = disk.sector_count() * SECTOR_BYTES as u64;
    let total = DISK_CHECK_BYTES.min(capacity);
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut at = 0u64;
    while at < total {
        let len = (CHUNK_BYTES as u64).min(total - at) as usize;
        let sector = at / SECTOR_BYTES as u64;
        let outcome = if mode == "write" {
            for (i, b) in buf[..len].iter_mut().enumerate() {
                *b = pattern(at + i as u64);
            }
            disk.write(sector, &buf[..len])
        } else {
            disk.read(sector, &mut buf[..len])
        };
        if let Err(e) = outcome {
            serial::write_fmt(format_args!(
                "disk-check: I/O error at sector {sector}: {e}\n"
            ));
            return;
        }
        if mode != "write" {
            if let Some(i) = (0..len).find(|&i| buf[i] != pattern(at + i as u64)) {
                let bad = (at + i as u64) / SECTOR_BYTES as u64;
                serial::write_fmt(format_args!("disk-check: MISMATCH at sector {bad}\n"));
                return;
            }
        }
        at += len as u64;
    }
    if mode == "write" {
        if let Err(e) = disk.flush() {
            serial::write_fmt(format_args!("disk-check: flush failed: {e}\n"));
            return;
        }
        serial::write_fmt(format_args!("disk-check: wrote {} MiB\n", total / MIB));
    } else {
        serial::write_fmt(format_args!(
            "disk-check: verified {} MiB ok\n",
            total / MIB
        ));
    }
    let past_end = disk.sector_count();
    match disk.read(past_end, &mut buf[..SECTOR_BYTES]) {
        Ok(()) => serial::write_fmt(format_args!("disk-check: read past end -> ok (BUG)\n")),
        Err(e) => serial::write_fmt(format_args!("disk-check: read past end -> error: {e}\n")),
    }
}
