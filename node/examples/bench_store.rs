//! `cargo xtask bench store`: checkpoint write rate and recovery time of the store, beside the
//! raw sequential write rate of the same device, measured in the same run.
//!
//! The device is a file opened with `O_DIRECT` (falling back to buffered I/O if the filesystem
//! refuses it), 4096-byte sectors, `flush` = `fdatasync`. For each state size (100 MiB and
//! 1 GiB by default; `BENCH_STORE_SIZES_MIB=100,1024`) it measures:
//! - raw: the state's bytes written sequentially in 1 MiB requests through `BlockDevice`, then
//!   one flush; measured before and after the store's runs (the ratio uses their mean, as a
//!   shared host's disk speed drifts);
//! - checkpoint (full): a first checkpoint of the state (hash every 1 MiB chunk, write it, the
//!   manifest, the meta, the superblocks; flushes included);
//! - checkpoint (1% changed): the next checkpoint after rewriting 1% of the chunks (every chunk
//!   is still hashed; only the changed ones are written);
//! - the same with dirty-chunk hints (`Store::checkpoint_with_hints`): only the dirty chunks
//!   and the audited tenth of the others are hashed;
//! - recovery: `Store::open` with lazy verification (superblock, meta, manifest, pool scan) and
//!   with eager verification (every chunk read back and hashed).
//!
//! The file lives in `BENCH_STORE_DIR` (default: the system temp directory) and is removed.

use node::store::{
    check_request, BlockDevice, DeviceError, SimRng, StateFile, Store, StoreConfig, Verify,
};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SECTOR_BYTES: usize = 4096;
/// Linux `O_DIRECT` on x86_64.
const O_DIRECT: i32 = 0o40000;
/// Bounce buffer for `O_DIRECT`, which needs sector-aligned memory.
const BOUNCE_BYTES: usize = 4 << 20;
const MIB: u64 = 1 << 20;

/// A sector-aligned heap buffer.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(bytes: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(bytes, SECTOR_BYTES).expect("layout");
        // SAFETY: the layout has a non-zero size; the pointer is checked for null.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        AlignedBuf { ptr, layout }
    }
    fn slice(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.layout.size());
        // SAFETY: `ptr` is valid for `layout.size()` bytes, zero-initialised, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated with exactly this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// A `BlockDevice` over a host file.
struct FileDisk {
    file: File,
    sectors: u64,
    bounce: AlignedBuf,
}

impl FileDisk {
    fn create(path: &PathBuf, bytes: u64) -> (FileDisk, bool) {
        let _ = std::fs::remove_file(path);
        let open = |flags: i32| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match open(O_DIRECT) {
            Ok(f) => (f, true),
            Err(_) => (open(0).expect("create bench file"), false),
        };
        file.set_len(bytes).expect("size bench file");
        let disk = FileDisk {
            file,
            sectors: bytes / SECTOR_BYTES as u64,
            bounce: AlignedBuf::new(BOUNCE_BYTES),
        };
        (disk, direct)
    }
}

impl BlockDevice for FileDisk {
    fn sector_bytes(&self) -> usize {
        SECTOR_BYTES
    }
    fn sector_count(&self) -> u64 {
        self.sectors
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let (offset, _) = check_request(SECTOR_BYTES, self.sectors, lba, buf.len())?;
        for (i, piece) in buf.chunks_mut(BOUNCE_BYTES).enumerate() {
            let bounce = self.bounce.slice(piece.len());
            let at = (offset + i * BOUNCE_BYTES) as u64;
            self.file
                .read_exact_at(bounce, at)
                .map_err(|_| DeviceError::Io)?;
            piece.copy_from_slice(bounce);
        }
        Ok(())
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let (offset, _) = check_request(SECTOR_BYTES, self.sectors, lba, buf.len())?;
        for (i, piece) in buf.chunks(BOUNCE_BYTES).enumerate() {
            let bounce = self.bounce.slice(piece.len());
            bounce.copy_from_slice(piece);
            let at = (offset + i * BOUNCE_BYTES) as u64;
            self.file
                .write_all_at(bounce, at)
                .map_err(|_| DeviceError::Io)?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        self.file.sync_data().map_err(|_| DeviceError::Io)
    }
}

fn mb_per_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / MIB as f64 / t.as_secs_f64()
}

struct Row {
    state_mib: u64,
    raw: f64,
    raw_before: f64,
    raw_after: f64,
    full: f64,
    full_time: Duration,
    incr_time: Duration,
    incr_written: u32,
    hinted_time: Duration,
    hinted_hashed: u32,
    lazy: Duration,
    eager: Duration,
}

/// Rewrites 4 KiB in `count` distinct chunks of the two big files; returns (file, chunk) pairs.
fn change_chunks(
    state: &mut [(String, Vec<u8>)],
    count: u64,
    salt: u64,
    rng: &mut SimRng,
) -> std::collections::BTreeSet<(String, u64)> {
    let mut dirty = std::collections::BTreeSet::new();
    for k in 0..count {
        let (name, file) = &mut state[(k % 2) as usize];
        let file_chunks = file.len() as u64 / MIB;
        let chunk = (k * 7919 + salt * 104_729) % file_chunks;
        let at = (chunk * MIB) as usize;
        rng.fill(&mut file[at..at + 4096]);
        dirty.insert((name.clone(), chunk));
    }
    dirty
}

fn make_state(bytes: u64) -> Vec<(String, Vec<u8>)> {
    // A few large files (heap, stable memory) and small ones (metadata, queues).
    let heap = bytes * 3 / 4;
    let stable = bytes - heap - 2 * MIB;
    let mut rng = SimRng::new(42);
    let mut out = Vec::new();
    for (name, size) in [
        ("canister_0/vmemory_0.bin", heap),
        ("canister_0/stable_memory.bin", stable),
        ("canister_0/queues.pbuf", MIB + 12_345),
        ("system_metadata.pbuf", MIB - 4_321),
    ] {
        let mut data = vec![0u8; size as usize];
        rng.fill(&mut data);
        out.push((name.to_string(), data));
    }
    out
}

/// Writes `state_mib` MiB sequentially in 1 MiB requests through a fresh `FileDisk`, then
/// flushes; returns MB/s and whether `O_DIRECT` was available.
fn raw_rate(path: &PathBuf, device_bytes: u64, state_mib: u64) -> (f64, bool) {
    let (mut raw_dev, direct) = FileDisk::create(path, device_bytes);
    let block = vec![0x5au8; MIB as usize];
    let t = Instant::now();
    for i in 0..state_mib {
        raw_dev
            .write(i * MIB / SECTOR_BYTES as u64, &block)
            .expect("raw write");
    }
    raw_dev.flush().expect("raw flush");
    (mb_per_s(state_mib * MIB, t.elapsed()), direct)
}

fn bench_size(dir: &std::path::Path, state_mib: u64) -> (Row, bool) {
    let state_bytes = state_mib * MIB;
    let device_bytes = state_bytes + state_bytes / 8 + 64 * MIB;
    let path = dir.join(format!("cairn-bench-store-{}.img", std::process::id()));

    let (raw_before, direct) = raw_rate(&path, device_bytes, state_mib);

    let mut state = make_state(state_bytes);
    let (dev, _) = FileDisk::create(&path, device_bytes);
    let mut store = Store::format(dev, StoreConfig::default()).expect("format");
    let views: Vec<StateFile<'_>> = state
        .iter()
        .map(|(n, b)| StateFile { name: n, bytes: b })
        .collect();
    let t = Instant::now();
    let stats = store.checkpoint(100, &views).expect("checkpoint");
    let full_time = t.elapsed();
    let full = mb_per_s(state_bytes, full_time);
    drop(views);

    // Rewrite 1% of the chunks, spread over the state; checkpoint without hints.
    let chunks = stats.chunks_total as u64;
    let change = (chunks / 100).max(1);
    let mut rng = SimRng::new(7);
    change_chunks(&mut state, change, 0, &mut rng);
    let views: Vec<StateFile<'_>> = state
        .iter()
        .map(|(n, b)| StateFile { name: n, bytes: b })
        .collect();
    let t = Instant::now();
    let incr = store
        .checkpoint(200, &views)
        .expect("incremental checkpoint");
    let incr_time = t.elapsed();
    drop(views);

    // Another 1%, now with dirty-chunk hints (only dirty and audited chunks are hashed).
    let dirty = change_chunks(&mut state, change, 1, &mut rng);
    let views: Vec<StateFile<'_>> = state
        .iter()
        .map(|(n, b)| StateFile { name: n, bytes: b })
        .collect();
    let t = Instant::now();
    let hinted = store
        .checkpoint_with_hints(300, &views, &|f, k| !dirty.contains(&(f.to_string(), k)))
        .expect("hinted checkpoint");
    let hinted_time = t.elapsed();
    drop(views);

    let dev = store.into_device();
    let t = Instant::now();
    let (store, rec) = Store::open(dev, Verify::Lazy).expect("open lazy");
    let lazy = t.elapsed();
    assert_eq!(rec.checkpoint, Some((300, hinted.root_hash)));
    let dev = store.into_device();
    let t = Instant::now();
    let (store, rec) = Store::open(dev, Verify::Eager).expect("open eager");
    let eager = t.elapsed();
    assert!(rec.bad_chunks.is_empty());
    drop(store);
    // Raw rate again: on a shared host the device's speed drifts; the ratio uses the mean.
    let (raw_after, _) = raw_rate(&path, device_bytes, state_mib);
    let raw = (raw_before + raw_after) / 2.0;
    let _ = std::fs::remove_file(&path);
    let row = Row {
        state_mib,
        raw,
        raw_before,
        raw_after,
        full,
        full_time,
        incr_time,
        incr_written: incr.chunks_written,
        hinted_time,
        hinted_hashed: hinted.chunks_hashed,
        lazy,
        eager,
    };
    (row, direct)
}

fn main() {
    let dir: PathBuf = std::env::var_os("BENCH_STORE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let sizes: Vec<u64> = std::env::var("BENCH_STORE_SIZES_MIB")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1024]);
    // Baseline: the chunk hash alone (every checkpoint hashes the whole state).
    let buf = vec![0x33u8; MIB as usize];
    let t = Instant::now();
    for _ in 0..256 {
        std::hint::black_box(node::store::chunk_hash(&buf));
    }
    let hash_rate = mb_per_s(256 * MIB, t.elapsed());
    let mut rows = Vec::new();
    let mut direct = true;
    for &mib in &sizes {
        let (row, d) = bench_size(&dir, mib);
        direct &= d;
        rows.push(row);
    }
    println!(
        "store bench: file-backed BlockDevice in {} ({}), 4096-byte sectors, 1 MiB chunks",
        dir.display(),
        if direct { "O_DIRECT" } else { "buffered" }
    );
    println!("chunk hash (SHA-256) alone: {hash_rate:.0} MB/s");
    println!(
        "{:>9} | {:>27} | {:>17} | {:>8} | {:>22} | {:>24} | {:>12} | {:>21}",
        "state",
        "raw seq MB/s (before/after)",
        "checkpoint MB/s",
        "ckpt/raw",
        "1% changed, no hints",
        "1% changed, dirty hints",
        "recover lazy",
        "recover eager (MB/s)"
    );
    for r in &rows {
        let eager_rate = mb_per_s(r.state_mib * MIB, r.eager);
        println!(
            "{:>5} MiB | {:>6.0} ({:>6.0}/{:>6.0}) | {:>9.0} ({:>4.2}s) | {:>8.2} | {:>6.0} ms ({:>3} written) | {:>6.0} ms ({:>4} hashed) | {:>9.1} ms | {:>8.0} ms ({:>6.0})",
            r.state_mib,
            r.raw,
            r.raw_before,
            r.raw_after,
            r.full,
            r.full_time.as_secs_f64(),
            r.full / r.raw,
            r.incr_time.as_secs_f64() * 1e3,
            r.incr_written,
            r.hinted_time.as_secs_f64() * 1e3,
            r.hinted_hashed,
            r.lazy.as_secs_f64() * 1e3,
            r.eager.as_secs_f64() * 1e3,
            eager_rate,
        );
    }
}
