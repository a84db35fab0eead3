//! `cairn.store-demo=1`: the state store on the virtio-blk disk, run until the host kills the
//! VM (issue 7, acceptance 4: a VM killed with `kill -9` mid-run reboots and resumes from its
//! disk). The host test is `cargo xtask test store-kill9` (xtask/src/store_tests.rs).
//!
//! The workload is a toy replica whose state is a pure function of its height, so whatever is
//! recovered can be checked exactly:
//! - every round appends a pool record for height `h + 1` (payload a function of the height)
//!   and syncs it; only then is `store: height=H` printed, so every height the host saw is
//!   durable;
//! - every [`CHECKPOINT_EVERY_ROUNDS`] heights, a checkpoint of the state at that height: a
//!   small `counter` file and a `heap` file of [`HEAP_CHUNKS`] chunks, chunk `k` changing every
//!   `k + 1` checkpoints (so most checkpoints rewrite a few chunks and share the rest, and the
//!   unchanged ones are vouched by hints), then the pool is purged below it; then
//!   `store: checkpoint=H …` is printed.
//!
//! On boot the store is opened (or formatted if the disk is empty) and checked: the checkpoint's
//! files and root hash must equal the state function at its height, and the pool records after
//! it must be heights `C + 1, C + 2, …` without a gap, each with its expected payload. Console:
//!
//! ```text
//! store: formatted (N MiB device, format N ms)               (first boot: empty disk)
//! store: recovered height=H checkpoint=C records=R (open N ms)   (later boots; C is `none`
//! store: verified ok (…)                                      before the first checkpoint)
//! store: INCONSISTENT: <why>                                  (then the VM fails, status 35)
//! store: height=H                                             (every round)
//! store: checkpoint=H chunks written W/T                      (every checkpoint)
//! ```

use crate::arch::{clock, cpu, entropy, power, serial};
use crate::drivers::block::VirtioBlock;
use crate::store_device::StoreDevice;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use node::store::{
    BlockDevice, Manifest, OpenError, Recovery, StateFile, Store, StoreConfig, StoreError, Verify,
};

/// A checkpoint every this many heights.
pub const CHECKPOINT_EVERY_ROUNDS: u64 = 8;
/// Chunks of the `heap` state file (each the store's chunk size, 1 MiB by default).
pub const HEAP_CHUNKS: usize = 4;
/// Bytes of each pool record's payload.
pub const RECORD_BYTES: usize = 256;
/// The pool record kind the demo writes.
const RECORD_KIND: u32 = 1;
const COUNTER_FILE: &str = "counter";
const HEAP_FILE: &str = "heap";
const COUNTER_TAG: &[u8; 16] = b"cairn-demo-state";
const MIB: u64 = 1024 * 1024;

type DemoStore = Store<StoreDevice>;

/// Runs the demo on `disk`; never returns (the host kills the VM).
pub fn run(disk: VirtioBlock) -> ! {
    let dev = StoreDevice::new(disk);
    let device_mib = dev.sector_count() * dev.sector_bytes() as u64 / MIB;
    let config = StoreConfig {
        format_nonce: format_nonce(),
        ..StoreConfig::default()
    };
    let started = clock::now_ns();
    let (mut store, recovery, formatted) = match Store::open(dev, Verify::Lazy) {
        Ok((store, recovery)) => (store, recovery, false),
        Err(OpenError {
            error: StoreError::NotFormatted,
            device,
        }) => match Store::format(device, config) {
            Ok(store) => (store, Recovery::default(), true),
            Err(e) => fail(&format!("format: {e}")),
        },
        Err(e) => fail(&format!("open: {e}")),
    };
    let open_ms = (clock::now_ns() - started) / 1_000_000;
    let height = match recover(&mut store, &recovery) {
        Ok(height) => height,
        Err(why) => {
            serial::write_fmt(format_args!("store: INCONSISTENT: {why}\n"));
            power::fail_and_halt();
        }
    };
    let records = recovery.records_after_checkpoint().count();
    if formatted {
        serial::write_fmt(format_args!(
            "store: formatted ({device_mib} MiB device, format {open_ms} ms)\n"
        ));
    } else {
        serial::write_fmt(format_args!(
            "store: recovered height={height} checkpoint={} records={records} (open {open_ms} ms)\n",
            recovery
                .checkpoint
                .map_or(String::from("none"), |(c, _)| format!("{c}")),
        ));
    }
    serial::write_fmt(format_args!(
        "store: verified ok (checkpoint state and {records} records after it match)\n"
    ));
    match advance(&mut store, height) {
        Ok(never) => match never {},
        Err(e) => fail(&format!("{e}")),
    }
}

/// A fresh nonce per format (so pool batches of an earlier format never verify).
fn format_nonce() -> u64 {
    entropy::rdrand64().unwrap_or_else(|_| cpu::rdtsc())
}

fn fail(what: &str) -> ! {
    serial::write_fmt(format_args!("store: error: {what}\n"));
    power::fail_and_halt();
}

/// Checks what `open` recovered against the state function; returns the recovered height.
fn recover(store: &mut DemoStore, recovery: &Recovery) -> Result<u64, String> {
    let checkpoint = recovery.checkpoint;
    let floor = checkpoint.map_or(0, |(h, _)| h);
    if let Some((c, root)) = checkpoint {
        let chunk = store.chunk_bytes() as usize;
        let counter = counter_bytes(c);
        let mut heap = vec![0u8; HEAP_CHUNKS * chunk];
        for (k, piece) in heap.chunks_mut(chunk).enumerate() {
            fill(piece, chunk_seed(k, version(k, c)));
        }
        let files = state_files(&counter, &heap);
        let expected = Manifest::compute(store.chunk_bytes(), &files)
            .map_err(|e| format!("manifest of the expected state: {e}"))?;
        if expected.root_hash() != root {
            return Err(format!(
                "checkpoint {c}: root hash differs from the state at {c}"
            ));
        }
        let mut names = store.file_names();
        names.sort();
        if names != [COUNTER_FILE, HEAP_FILE] {
            return Err(format!("checkpoint {c}: files {names:?}"));
        }
        for file in &files {
            let stored = store
                .read_file(file.name)
                .map_err(|e| format!("checkpoint {c}: reading {}: {e}", file.name))?;
            if stored != file.bytes {
                return Err(format!("checkpoint {c}: {} differs", file.name));
            }
        }
    }
    let mut height = floor;
    for record in recovery.records_after_checkpoint() {
        if record.height != height + 1 {
            return Err(format!(
                "pool record for height {} follows height {height} (gap or disorder)",
                record.height
            ));
        }
        if record.kind != RECORD_KIND || record.bytes != record_payload(record.height) {
            return Err(format!(
                "pool record {} has the wrong content",
                record.height
            ));
        }
        height = record.height;
    }
    Ok(height)
}

/// The workload: one durable pool record per height, a checkpoint every few heights.
fn advance(
    store: &mut DemoStore,
    mut height: u64,
) -> Result<core::convert::Infallible, StoreError> {
    let chunk = store.chunk_bytes() as usize;
    let mut heap = vec![0u8; HEAP_CHUNKS * chunk];
    // The version each cached chunk holds (None: not filled yet).
    let mut cached: Vec<Option<u64>> = vec![None; HEAP_CHUNKS];
    loop {
        height += 1;
        store.pool_append(height, RECORD_KIND, &record_payload(height))?;
        store.pool_sync()?;
        serial::write_fmt(format_args!("store: height={height}\n"));
        if !height.is_multiple_of(CHECKPOINT_EVERY_ROUNDS) {
            continue;
        }
        for (k, piece) in heap.chunks_mut(chunk).enumerate() {
            let v = version(k, height);
            if cached[k] != Some(v) {
                fill(piece, chunk_seed(k, v));
                cached[k] = Some(v);
            }
        }
        let counter = counter_bytes(height);
        let files = state_files(&counter, &heap);
        let previous = store.checkpoint_height();
        let unchanged = |name: &str, k: u64| {
            name == HEAP_FILE
                && previous.is_some_and(|p| version(k as usize, p) == version(k as usize, height))
        };
        let stats = store.checkpoint_with_hints(height, &files, &unchanged)?;
        store.pool_purge_below(height)?;
        serial::write_fmt(format_args!(
            "store: checkpoint={height} chunks written {}/{}\n",
            stats.chunks_written, stats.chunks_total
        ));
    }
}

fn state_files<'a>(counter: &'a [u8], heap: &'a [u8]) -> [StateFile<'a>; 2] {
    [
        StateFile {
            name: COUNTER_FILE,
            bytes: counter,
        },
        StateFile {
            name: HEAP_FILE,
            bytes: heap,
        },
    ]
}

fn counter_bytes(height: u64) -> Vec<u8> {
    let mut bytes = height.to_le_bytes().to_vec();
    bytes.extend_from_slice(COUNTER_TAG);
    bytes
}

/// Which version of heap chunk `k` the state at `height` holds: chunk `k` changes every
/// `k + 1` checkpoints.
fn version(k: usize, height: u64) -> u64 {
    height / CHECKPOINT_EVERY_ROUNDS / (k as u64 + 1)
}

fn chunk_seed(k: usize, version: u64) -> u64 {
    (k as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version.wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

fn record_payload(height: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; RECORD_BYTES];
    fill(&mut bytes, height ^ 0x94d0_49bb_1331_11eb);
    bytes[..8].copy_from_slice(&height.to_le_bytes());
    bytes
}

/// Fills `out` with a xorshift64* stream seeded by `seed`.
fn fill(out: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for piece in out.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let word = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        piece.copy_from_slice(&word[..piece.len()]);
    }
}
