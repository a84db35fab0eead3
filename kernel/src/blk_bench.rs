//! `cairn.blk-bench=<MiB>`: sequential write then read of the first `<MiB>` of the virtio-blk
//! disk, timed with the TSC clock, for `cargo xtask bench blk`. The write phase ends with a
//! flush (included in its time); the read phase reads back what was written and checks a
//! stamp in every chunk, so it cannot be served by anything but the disk. Lines:
//!
//! ```text
//! blk-bench: write <bytes> bytes in <us> us (flush included)
//! blk-bench: read <bytes> bytes in <us> us
//! blk-bench: FAILED: <reason>
//! ```

use crate::arch::{clock, serial};
use crate::drivers::block::{VirtioBlock, SECTOR_BYTES};
use alloc::vec;
use node::store::BlockDevice;

/// Bytes per request.
pub const BLK_BENCH_CHUNK_BYTES: usize = 256 * 1024;
/// The largest span the bench accepts.
const MAX_BENCH_MIB: u64 = 4096;
const MIB: u64 = 1024 * 1024;

/// Runs the bench over `mib` MiB (clamped to the disk and [`MAX_BENCH_MIB`]).
pub fn run(disk: &mut VirtioBlock, mib: &str) {
    let Ok(mib) = mib.parse::<u64>() else {
        serial::write_fmt(format_args!("blk-bench: FAILED: {mib}: not a number\n"));
        return;
    };
    let capacity = disk.sector_count() * SECTOR_BYTES as u64;
    let chunk = BLK_BENCH_CHUNK_BYTES as u64;
    let total = (mib.min(MAX_BENCH_MIB) * MIB).min(capacity) / chunk * chunk;
    if total == 0 {
        serial::write_fmt(format_args!("blk-bench: FAILED: disk too small\n"));
        return;
    }
    let mut buf = vec![0xa5u8; BLK_BENCH_CHUNK_BYTES];
    let sectors_per_chunk = chunk / SECTOR_BYTES as u64;
    let started = clock::now_ns();
    for i in 0..total / chunk {
        // A stamp per chunk: the read phase must find it.
        buf[..8].copy_from_slice(&i.to_le_bytes());
        if let Err(e) = disk.write(i * sectors_per_chunk, &buf) {
            serial::write_fmt(format_args!("blk-bench: FAILED: write chunk {i}: {e}\n"));
            return;
        }
    }
    if let Err(e) = disk.flush() {
        serial::write_fmt(format_args!("blk-bench: FAILED: flush: {e}\n"));
        return;
    }
    serial::write_fmt(format_args!(
        "blk-bench: write {total} bytes in {} us (flush included)\n",
        (clock::now_ns() - started) / 1_000
    ));
    let started = clock::now_ns();
    for i in 0..total / chunk {
        if let Err(e) = disk.read(i * sectors_per_chunk, &mut buf) {
            serial::write_fmt(format_args!("blk-bench: FAILED: read chunk {i}: {e}\n"));
            return;
        }
        if buf[..8] != i.to_le_bytes() {
            serial::write_fmt(format_args!(
                "blk-bench: FAILED: chunk {i} read back wrong\n"
            ));
            return;
        }
    }
    serial::write_fmt(format_args!(
        "blk-bench: read {total} bytes in {} us\n",
        (clock::now_ns() - started) / 1_000
    ));
}
