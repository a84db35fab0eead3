//! The disk-backed store: nothing finalized is ever lost (issue 7).
//!
//! # Guarantees
//!
//! - **Atomic commits.** Every change of what the store holds (a checkpoint, the CUP, the set of
//!   pool segments) is a *commit*: new data goes to free blocks, then a new meta record naming
//!   all of it, then `flush`, then the superblock copies in two halves, each followed by a flush.
//!   After any crash, `Store::open` finds either the previous commit or the new one, never a mix.
//! - **Durable pool records.** Records made durable by `pool_sync` survive any crash; records
//!   appended after the last `pool_sync` returned may be lost, but only as a suffix.
//! - **Everything is checksummed, and the checksum lives in the parent.** The superblock carries
//!   the meta's hash, the meta the manifest's, the manifest each chunk's; pool batches chain by
//!   hash. A flipped bit, a torn or misdirected write, or a latent sector error is detected, and
//!   reported by name (which chunk, which batch copy). Small structures (meta, manifest, CUP,
//!   pool segments) are mirrored and repaired from their twin on open, superblock copies from
//!   the quorum; chunks are repaired by
//!   state sync from a peer ([`StateSync`]).
//! - **Incremental checkpoints.** A chunk whose hash is already stored is not written again;
//!   with dirty-chunk hints (`checkpoint_with_hints`) an unchanged chunk is not even hashed.
//!
//! What it does not promise: a misdirected write can destroy a committed chunk, and a fault in
//! both copies of a mirrored structure makes the store unopenable (`Corrupt`). Both are
//! detected, never returned as data; the node then recovers by state sync from its peers.
//!
//! The design follows LMDB's copy-on-write meta pages, TigerBeetle's superblock (several copies,
//! a quorum, a hash chain) and the IC state manager's chunk manifests
//! (`../shared/reference/unikernels-and-snp.md` §5).
//!
//! # How the layers use it
//!
//! The kernel owns the disk, the replica owns the store; everything is synchronous and
//! single-threaded (a call returns when its writes and flushes returned).
//!
//! ```text
//! boot (kernel)       dev = virtio-blk driver, which implements BlockDevice
//!                     (store, recovery) = Store::open_or_format(dev, StoreConfig::default(),
//!                                                               Verify::Lazy)?
//! restart (replica)   recovery.checkpoint: (height, root) of the state to load, files through
//!                     store.file_names() / store.read_file(name) (each chunk verified; a
//!                     BadChunk means: repair by state sync, never execute on it)
//!                     store.cup(): the CUP to resume from
//!                     recovery.pool_records: artifacts to put back into the consensus pool;
//!                     recovery.records_after_checkpoint(): the finalized blocks to replay
//! consensus           store.pool_append(height, kind, bytes) per artifact; store.pool_sync()
//!                     before acting on it (e.g. before sending a share that depends on it)
//!                     store.pool_purge_below(cup_height) once a CUP is durable
//! checkpoint          stats = store.checkpoint(height, &[StateFile { name, bytes }, ...])?
//!                     stats.root_hash goes to consensus to certify (and into the CUP);
//!                     store.put_cup_at(cup_height, bytes) when the CUP is made
//!                     (the checkpoint at cup_height is then *retained* when a newer
//!                     one replaces it, until the next CUP: peers that adopted the
//!                     CUP can still sync its state)
//! state sync (join,   manifest = Manifest::from_bytes(from a peer)?;
//!  catch up, repair)  sync = store.begin_state_sync(cup.height, &cup.root, manifest)?
//!                     for i in sync.missing_chunks(): fetch i from peers,
//!                         store.accept_chunk(&mut sync, i, &bytes)?  (wrong bytes: ask another)
//!                     store.commit_state_sync(sync)?; then load the files as on restart
//! serving a peer      store.manifest_at(height)?.to_bytes(), store.read_chunk_of(height, i)
//!                     (the latest or the retained checkpoint)
//! ```
//!
//! # On-disk format (version 1, meta version 2)
//!
//! The device is cut into 4 KiB blocks (`BLOCK_BYTES`, a multiple of the 512- or 4096-byte
//! sector). Integers in fixed layouts are little-endian.
//!
//! ```text
//! block  0..4   superblock copies 0..3; copy i in the first sector of block i
//! block  4..    data area: extents allocated copy-on-write, never overwritten while referenced
//!
//! superblock (168 meaningful bytes, rest of the sector zero)
//! off  size  field
//!   0     8  magic "CAIRNSB\x01"
//!   8     4  format version (1)
//!  12     4  copy index 0..3 (not covered by the checksum; catches misdirected reads)
//!  16     8  sequence (+1 per commit)
//!  24    32  parent: checksum of the superblock with sequence - 1 (a hash chain linking the
//!            history, as TigerBeetle's; `open` chooses by quorum, not by the chain)
//!  56     4  block bytes (4096)
//!  60     4  chunk bytes (1 MiB by default)
//!  64     8  block count
//!  72     4  pool segment blocks
//!  76     4  reserved, zero
//!  80     8  meta copy 0: first block
//!  88     8  meta copy 1: first block
//!  96     4  meta blocks per copy
//! 100     4  meta bytes
//! 104    32  meta hash = H(dsep("cairn-blob") · meta bytes)
//! 136    32  checksum = H(dsep("cairn-superblock") · bytes[0..136] with the copy index zeroed)
//!
//! data area structures (all found from the meta; all blobs mirrored in two extents)
//! meta       postcard `format::Meta` v2: checkpoint {height, root hash, manifest blob},
//!            CUP blob, pool segments [{id, 2 extents, blocks}], next segment id, purged_below,
//!            format nonce, CUP height (optional), retained checkpoint (optional, as the
//!            checkpoint). A v1 meta (the same without the last two) is still read, with no
//!            CUP height and nothing retained; the next commit writes v2. Another version is
//!            `UnsupportedMeta`.
//! manifest   postcard {`Manifest`, chunk locations}; hash in the meta
//! chunk      one extent per distinct chunk hash, padded to whole blocks; hash in the manifest
//! CUP        opaque bytes; hash in the meta
//! segment    pool log, see `pool` for the batch layout
//! ```
//!
//! # Commit protocol and recovery
//!
//! `commit` writes data and the new meta to free blocks, flushes, writes superblock copies 0 and
//! 1, flushes, writes copies 2 and 3, flushes. `open` reads the four copies and takes the highest
//! sequence that at least `SUPERBLOCK_QUORUM` (2) valid copies agree on: a crash in the first half
//! leaves copies 2 and 3 of the old commit intact, a crash in the second half leaves copies 0 and
//! 1 of the new one durable. A single copy never wins, so one misdirected or rotten copy is
//! outvoted. After a device error during a commit the store refuses further work (`Poisoned`)
//! until it is reopened, so its view never runs ahead of what a reopen finds. `open` rewrites
//! the chosen superblock to every copy that does not hold it before anything else: a store
//! recovered with only copies 0 and 1 good would otherwise overwrite both in the first half of
//! its next commit (the double-crash test found this). So every commit starts from four equal
//! copies, and an abandoned commit's lone copy is overwritten before it could meet another.
//!
//! # The retained checkpoint
//!
//! The meta names at most two checkpoints: the latest, and the *retained* one, which is the
//! checkpoint at the stored CUP's height while a newer checkpoint is the latest (the IC state
//! manager never removes the checkpoint of the latest CUP either). A checkpoint commit moves
//! the previous latest to the retained slot if it is at the CUP height, keeps a retained one
//! still at the CUP height, and otherwise lets the previous one go; `put_cup_at` drops a
//! retained checkpoint not at the new CUP's height. Both happen in the one meta commit of the
//! operation. The two checkpoints share chunks (a chunk with the same hash is stored once,
//! found in either), so a retained checkpoint costs only the chunks that changed since and
//! its manifest. `open` loads it as the latest (manifest repaired from its twin); if its
//! manifest fails in both copies, or (eager verification) one of its chunks fails, it is
//! dropped and the drop committed before `open` returns: it only serves peers, who then sync
//! from other replicas. A bad chunk found when serving is answered as unavailable.
//!
//! # Reclamation
//!
//! There is no on-disk free list. Free space is derived from the references of the durable meta
//! (plus the extents an unfinished state sync holds). Extents only the previous commit used
//! become free as soon as the new superblock is durable on all copies, which is also the
//! moment no crash can bring the previous commit back. Chunks are allocated first-fit from the
//! bottom of the data area, small structures (meta, manifest, CUP, pool segments) from the top,
//! so the short-lived small ones do not fragment the runs chunks need.

mod checkpoint;
mod device;
mod format;
mod manifest;
mod pool;
mod sim_disk;
mod space;
mod sync;

pub use checkpoint::REHASH_EVERY_NTH_CHUNK;
pub use device::{check_request, BlockDevice, DeviceError, Window, SECTOR_BYTES_ALLOWED};
pub use format::{
    hash_with_domain, Hash, BLOCK_BYTES, FORMAT_VERSION, SUPERBLOCK_COPIES, SUPERBLOCK_QUORUM,
};
pub use manifest::{
    chunk_hash, ChunkEntry, FileEntry, KnownChunk, Manifest, ManifestError, StateFile,
    CHUNK_BYTES_DEFAULT,
};
pub use pool::{PoolFault, PoolRecord, POOL_RECORD_BYTES_MAX};
pub use sim_disk::{SimDisk, SimFaults, SimRng};
pub use space::Extent;
pub use sync::{StateSync, SyncStats};

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use device::{read_blocks, write_blocks};
use format::{
    blocks_for, BlobRef, CheckpointRef, Geometry, Meta, MetaDecodeError, Superblock,
    DATA_START_BLOCK, META_BYTES_MAX, META_VERSION,
};
use pool::{scan_segment, SegmentTail};
use serde::{Deserialize, Serialize};
use space::FreeSpace;

/// Default pool segment size, in bytes.
pub const POOL_SEGMENT_BYTES_DEFAULT: u32 = 4 << 20;
/// Which superblock copies hold the chosen superblock.
type CopyMask = [bool; SUPERBLOCK_COPIES];

/// Largest blob (meta, manifest, CUP), in bytes.
pub const BLOB_BYTES_MAX: u64 = 256 << 20;
/// Most pool segments a store holds (the consensus layer purges long before).
pub const SEGMENTS_MAX: usize = 4096;
/// Most bytes of pool records buffered between two `pool_sync` calls.
pub const POOL_PENDING_BYTES_MAX: usize = 64 << 20;
/// Smallest pool segment, in blocks.
pub const POOL_SEGMENT_BLOCKS_MIN: u32 = 4;
/// Reads of a checksummed structure are retried this many times (a misdirected read is
/// transient) before the copy is declared bad.
const READ_ATTEMPTS: usize = 2;

/// Parameters fixed when a device is formatted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Checkpoint chunk size in bytes (multiple of 4 KiB, at most 16 MiB).
    pub chunk_bytes: u32,
    /// Pool segment size in bytes (multiple of 4 KiB, at least 16 KiB).
    pub pool_segment_bytes: u32,
    /// Different for every format of a device (the kernel takes it from its entropy source or
    /// clock): pool batches left on the disk by an earlier format then never verify.
    pub format_nonce: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            chunk_bytes: CHUNK_BYTES_DEFAULT,
            pool_segment_bytes: POOL_SEGMENT_BYTES_DEFAULT,
            format_nonce: 0,
        }
    }
}

/// Whether `open` reads and hashes every chunk of the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Read every chunk now and report the bad ones in `Recovery::bad_chunks`.
    Eager,
    /// Verify each chunk when it is read.
    Lazy,
}

/// What a stored structure is, for error reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structure {
    /// The superblock copies.
    Superblock,
    /// Both copies of the meta record.
    Meta,
    /// Both copies of the checkpoint manifest.
    Manifest,
    /// Both copies of the CUP.
    Cup,
}

/// Why a store operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The device failed.
    Device(DeviceError),
    /// No superblock: the device was never formatted (or formatting was cut short).
    NotFormatted,
    /// A structure failed its checksum in every copy.
    Corrupt(Structure),
    /// The device's sector size or size does not fit the format.
    Geometry,
    /// Not enough free contiguous blocks.
    NoSpace,
    /// An earlier device error during a commit: reopen the store.
    Poisoned,
    /// The checkpoint height is below the stored one.
    StaleHeight,
    /// There is no checkpoint.
    NoCheckpoint,
    /// Chunk `index` of the checkpoint fails its hash (or is unreadable).
    BadChunk(u32),
    /// No such file or chunk index in the checkpoint.
    NotFound,
    /// A pool record is larger than a segment can take.
    RecordTooLarge,
    /// Too many pool records buffered without `pool_sync`, or too many segments unpurged.
    PoolFull,
    /// The state's manifest is not acceptable.
    Manifest(ManifestError),
    /// A chunk received in state sync does not match the manifest.
    ChunkMismatch(u32),
    /// State sync is committed before every chunk arrived, or a second one is started.
    SyncState,
    /// Chunk `index`, vouched unchanged by a hint, has changed: the hint is wrong.
    HintMismatch(u32),
    /// The meta record has a version this code does not read (a newer format).
    UnsupportedMeta(u32),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Device(e) => write!(f, "store device: {e}"),
            StoreError::NotFormatted => f.write_str("store not formatted"),
            StoreError::Corrupt(s) => write!(f, "store structure corrupt in every copy: {s:?}"),
            StoreError::Geometry => f.write_str("device geometry does not fit the store"),
            StoreError::NoSpace => f.write_str("store full"),
            StoreError::Poisoned => f.write_str("store failed during a commit; reopen it"),
            StoreError::StaleHeight => f.write_str("checkpoint height below the stored one"),
            StoreError::NoCheckpoint => f.write_str("no checkpoint stored"),
            StoreError::BadChunk(i) => write!(f, "checkpoint chunk {i} fails its hash"),
            StoreError::NotFound => f.write_str("no such file or chunk"),
            StoreError::RecordTooLarge => f.write_str("pool record too large"),
            StoreError::PoolFull => f.write_str("pool log full: sync or purge"),
            StoreError::Manifest(e) => write!(f, "manifest: {e}"),
            StoreError::ChunkMismatch(i) => write!(f, "synced chunk {i} does not match"),
            StoreError::SyncState => f.write_str("state sync not in a state to do that"),
            StoreError::HintMismatch(i) => write!(f, "chunk {i} vouched unchanged has changed"),
            StoreError::UnsupportedMeta(v) => write!(f, "store meta version {v} not supported"),
        }
    }
}

impl core::error::Error for StoreError {}

impl From<DeviceError> for StoreError {
    fn from(e: DeviceError) -> Self {
        StoreError::Device(e)
    }
}

impl From<ManifestError> for StoreError {
    fn from(e: ManifestError) -> Self {
        StoreError::Manifest(e)
    }
}

/// `Store::open` failed; the device is handed back (e.g. to format it).
pub struct OpenError<D> {
    /// Why.
    pub error: StoreError,
    /// The device, untouched by the failed open except for copies repaired from their twin.
    pub device: D,
}

impl<D> fmt::Debug for OpenError<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpenError({:?})", self.error)
    }
}

impl<D> fmt::Display for OpenError<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// What `open` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Sequence of the superblock chosen.
    pub superblock_sequence: u64,
    /// How many of the superblock copies hold that superblock.
    pub superblock_copies: usize,
    /// Height and root hash of the checkpoint, if any.
    pub checkpoint: Option<(u64, Hash)>,
    /// Chunks that failed verification (eager verification only).
    pub bad_chunks: Vec<u32>,
    /// Durable pool records at or above the purge height, in append order.
    pub pool_records: Vec<PoolRecord>,
    /// The purge height: records below it are not returned.
    pub pool_purged_below: u64,
    /// Pool batch copies that were bad and rewritten from their twin.
    pub pool_faults: Vec<PoolFault>,
    /// Mirrored blob copies (meta, manifest, CUP) that were bad and rewritten from their twin.
    pub blob_repairs: Vec<Structure>,
    /// Height and root hash of the retained checkpoint (the one at the CUP height, kept while
    /// a newer checkpoint is the latest), if any survived the open.
    pub retained: Option<(u64, Hash)>,
    /// The retained checkpoint was dropped on open: its manifest failed in both copies, or
    /// (eager verification) one of its chunks failed. The drop is committed before `open`
    /// returns; peers sync that state from other replicas.
    pub retained_dropped: bool,
}

impl Recovery {
    /// The pool records to replay on top of the checkpoint: those above its height.
    pub fn records_after_checkpoint(&self) -> impl Iterator<Item = &PoolRecord> {
        let floor = self.checkpoint.map_or(0, |(h, _)| h);
        self.pool_records.iter().filter(move |r| r.height > floor)
    }
}

/// What a checkpoint wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Root hash of the checkpoint's manifest (to be certified by consensus).
    pub root_hash: Hash,
    /// Chunks in the state.
    pub chunks_total: u32,
    /// Chunks hashed (the others were vouched unchanged by hints).
    pub chunks_hashed: u32,
    /// Chunks written (the rest were already stored).
    pub chunks_written: u32,
    /// Bytes written for chunks.
    pub chunk_bytes_written: u64,
}

/// The manifest as stored: the manifest and, per chunk, its first block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StoredManifest {
    manifest: Manifest,
    locations: Vec<u64>,
}

/// The loaded checkpoint.
#[derive(Clone, Debug)]
struct Checkpoint {
    height: u64,
    root_hash: Hash,
    manifest: Manifest,
    locations: Vec<u64>,
    /// Chunk hash to its first block, for dedupe.
    by_hash: BTreeMap<Hash, u64>,
}

impl Checkpoint {
    fn new(height: u64, root_hash: Hash, manifest: Manifest, locations: Vec<u64>) -> Self {
        let by_hash = manifest
            .chunks
            .iter()
            .zip(&locations)
            .map(|(c, &l)| (c.hash, l))
            .collect();
        Checkpoint {
            height,
            root_hash,
            manifest,
            locations,
            by_hash,
        }
    }
}

/// The store over a block device (see the module docs).
pub struct Store<D: BlockDevice> {
    dev: D,
    geometry: Geometry,
    sequence: u64,
    superblock_checksum: Hash,
    meta_ref: BlobRef,
    meta: Meta,
    checkpoint: Option<Checkpoint>,
    /// The checkpoint of `meta.retained`.
    retained: Option<Checkpoint>,
    /// Per segment of `meta.segments`, where appends continue.
    tails: Vec<SegmentTail>,
    pending: Vec<PoolRecord>,
    pending_bytes: usize,
    space: FreeSpace,
    /// Extents held by an unfinished state sync.
    reserved: Vec<Extent>,
    sync_active: bool,
    poisoned: bool,
}

fn device_blocks<D: BlockDevice>(dev: &D) -> Result<u64, StoreError> {
    let sector = dev.sector_bytes();
    if !SECTOR_BYTES_ALLOWED.contains(&sector) {
        return Err(StoreError::Geometry);
    }
    Ok(dev.sector_count() / (BLOCK_BYTES / sector) as u64)
}

impl<D: BlockDevice> Store<D> {
    /// Formats `dev` as an empty store (destroying what it held) and opens it.
    pub fn format(mut dev: D, config: StoreConfig) -> Result<Store<D>, StoreError> {
        let block_count = device_blocks(&dev)?;
        let segment_blocks = config.pool_segment_bytes / BLOCK_BYTES as u32;
        if !manifest::chunk_bytes_supported(config.chunk_bytes)
            || !config.pool_segment_bytes.is_multiple_of(BLOCK_BYTES as u32)
            || segment_blocks < POOL_SEGMENT_BLOCKS_MIN
            || block_count < DATA_START_BLOCK + 16
        {
            return Err(StoreError::Geometry);
        }
        // Zero the superblock area first so no copy of an earlier format can win a quorum.
        let zero = vec![0u8; BLOCK_BYTES * format::SUPERBLOCK_COPIES];
        write_blocks(&mut dev, 0, &zero)?;
        dev.flush()?;
        let geometry = Geometry {
            block_count,
            chunk_bytes: config.chunk_bytes,
            pool_segment_blocks: segment_blocks,
        };
        let mut store = Store::empty(dev, geometry);
        store.rebuild_space();
        let meta = Meta {
            version: META_VERSION,
            format_nonce: config.format_nonce,
            ..Meta::default()
        };
        store.commit(meta)?;
        Ok(store)
    }

    fn empty(dev: D, geometry: Geometry) -> Store<D> {
        Store {
            dev,
            geometry,
            sequence: 0,
            superblock_checksum: [0; 32],
            meta_ref: BlobRef {
                copies: [0, 0],
                blocks: 0,
                len: 0,
                hash: [0; 32],
            },
            meta: Meta::default(),
            checkpoint: None,
            retained: None,
            tails: Vec::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            space: FreeSpace::default(),
            reserved: Vec::new(),
            sync_active: false,
            poisoned: false,
        }
    }

    /// Opens a formatted store: newest superblock with a quorum, its meta, the checkpoint's
    /// manifest (and, with `Verify::Eager`, every chunk), and the pool log. Mirrored copies
    /// found bad are rewritten from their twin. On failure the device is handed back.
    pub fn open(mut dev: D, verify: Verify) -> Result<(Store<D>, Recovery), OpenError<D>> {
        let found = device_blocks(&dev).and_then(|blocks| {
            let sb = read_superblock(&mut dev)?;
            Ok((blocks, sb))
        });
        let (block_count, (sb, checksum, holding)) = match found {
            Ok(found) => found,
            Err(error) => return Err(OpenError { error, device: dev }),
        };
        let g = sb.geometry;
        if g.block_count > block_count
            || !manifest::chunk_bytes_supported(g.chunk_bytes)
            || g.pool_segment_blocks < POOL_SEGMENT_BLOCKS_MIN
            || u64::from(g.pool_segment_blocks) > g.block_count
        {
            let error = StoreError::Geometry;
            return Err(OpenError { error, device: dev });
        }
        let mut store = Store::empty(dev, g);
        store.sequence = sb.sequence;
        store.superblock_checksum = checksum;
        store.meta_ref = sb.meta;
        let mut recovery = Recovery {
            superblock_sequence: sb.sequence,
            superblock_copies: holding.iter().filter(|&&h| h).count(),
            ..Recovery::default()
        };
        let loaded = store
            .repair_superblock(&sb, holding)
            .and_then(|()| store.load(&sb, verify, &mut recovery));
        match loaded {
            Ok(()) => Ok((store, recovery)),
            Err(error) => Err(OpenError {
                error,
                device: store.dev,
            }),
        }
    }

    /// Opens the store on `dev`, or formats it if it holds none (a new disk, or a format that
    /// was cut short). A store that exists but is corrupt is never formatted over.
    pub fn open_or_format(
        dev: D,
        config: StoreConfig,
        verify: Verify,
    ) -> Result<(Store<D>, Recovery), StoreError> {
        match Store::open(dev, verify) {
            Ok(opened) => Ok(opened),
            Err(OpenError {
                error: StoreError::NotFormatted,
                device,
            }) => {
                let store = Store::format(device, config)?;
                let recovery = Recovery {
                    superblock_sequence: store.sequence,
                    superblock_copies: SUPERBLOCK_COPIES,
                    ..Recovery::default()
                };
                Ok((store, recovery))
            }
            Err(e) => Err(e.error),
        }
    }

    /// Writes the chosen superblock to the copies that do not hold it, and flushes. Without
    /// this, a store recovered from a crash in the second half of a commit (copies 0 and 1 new,
    /// 2 and 3 old or torn) would overwrite its only two good copies in the first half of its
    /// next commit, and a crash there would leave no quorum at all.
    fn repair_superblock(&mut self, sb: &Superblock, holding: CopyMask) -> Result<(), StoreError> {
        if holding.iter().all(|&h| h) {
            return Ok(());
        }
        let mut sector = vec![0u8; self.dev.sector_bytes()];
        for copy in (0..SUPERBLOCK_COPIES).filter(|&c| !holding[c]) {
            sb.encode(copy as u32, &mut sector);
            write_blocks(&mut self.dev, copy as u64, &sector)?;
        }
        self.dev.flush()?;
        Ok(())
    }

    fn load(
        &mut self,
        sb: &Superblock,
        verify: Verify,
        recovery: &mut Recovery,
    ) -> Result<(), StoreError> {
        let meta_bytes = self.read_blob_repairing(&sb.meta, Structure::Meta, recovery)?;
        let mut meta: Meta = format::decode_meta(&meta_bytes).map_err(|e| match e {
            MetaDecodeError::Malformed => StoreError::Corrupt(Structure::Meta),
            MetaDecodeError::Unsupported(v) => StoreError::UnsupportedMeta(v),
        })?;
        let g = self.geometry;
        let segments_ok = meta.segments.iter().all(|seg| {
            seg.blocks == g.pool_segment_blocks
                && seg
                    .copies
                    .iter()
                    .all(|&c| extent_in_data_area(c, u64::from(seg.blocks), g.block_count))
        });
        let retained_ok = meta.retained.is_none_or(|r| {
            meta.checkpoint.is_some_and(|c| r.height < c.height)
                && meta.cup_height == Some(r.height)
        });
        if meta.version != META_VERSION
            || meta.segments.len() > SEGMENTS_MAX
            || !segments_ok
            || !retained_ok
        {
            return Err(StoreError::Corrupt(Structure::Meta));
        }
        if let Some(cp) = meta.checkpoint {
            let loaded = self.load_checkpoint(&cp, recovery)?;
            recovery.checkpoint = Some((cp.height, cp.root_hash));
            self.checkpoint = Some(loaded);
        }
        if let Some(r) = meta.retained {
            // Only kept for peers: a retained checkpoint that cannot be read is dropped, never
            // a reason to refuse the store.
            match self.load_checkpoint(&r, recovery) {
                Ok(loaded) => self.retained = Some(loaded),
                Err(StoreError::Corrupt(_)) => {
                    meta.retained = None;
                    recovery.retained_dropped = true;
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(cup) = meta.cup {
            self.read_blob_repairing(&cup, Structure::Cup, recovery)?;
        }
        self.meta = meta;
        self.load_pool(recovery)?;
        self.dev.flush()?;
        self.rebuild_space();
        if verify == Verify::Eager {
            recovery.bad_chunks = self.verify_checkpoint()?;
            if !self.verify_retained()?.is_empty() {
                self.meta.retained = None;
                self.retained = None;
                recovery.retained_dropped = true;
            }
        }
        if recovery.retained_dropped {
            // Commit the drop before anything reuses the retained checkpoint's blocks. (The
            // in-memory meta no longer names it, so `commit` frees its unshared extents.)
            let meta = self.meta.clone();
            self.commit(meta)?;
        }
        recovery.retained = self.retained.as_ref().map(|r| (r.height, r.root_hash));
        Ok(())
    }

    /// Reads and checks the stored manifest of `cp`.
    fn load_checkpoint(
        &mut self,
        cp: &CheckpointRef,
        recovery: &mut Recovery,
    ) -> Result<Checkpoint, StoreError> {
        let bytes = self.read_blob_repairing(&cp.manifest, Structure::Manifest, recovery)?;
        let stored: StoredManifest =
            postcard::from_bytes(&bytes).map_err(|_| StoreError::Corrupt(Structure::Manifest))?;
        let m = &stored.manifest;
        if m.check_structure().is_err()
            || m.root_hash() != cp.root_hash
            || stored.locations.len() != m.chunks.len()
            || m.chunk_bytes != self.geometry.chunk_bytes
        {
            return Err(StoreError::Corrupt(Structure::Manifest));
        }
        let in_range = m.chunks.iter().zip(&stored.locations).all(|(c, &l)| {
            l >= DATA_START_BLOCK
                && l.saturating_add(blocks_for(u64::from(c.size))) <= self.geometry.block_count
        });
        if !in_range {
            return Err(StoreError::Corrupt(Structure::Manifest));
        }
        Ok(Checkpoint::new(
            cp.height,
            cp.root_hash,
            stored.manifest,
            stored.locations,
        ))
    }

    fn load_pool(&mut self, recovery: &mut Recovery) -> Result<(), StoreError> {
        let mut records = Vec::new();
        for segment in self.meta.segments.clone() {
            let tail = scan_segment(
                &mut self.dev,
                self.meta.format_nonce,
                &segment,
                &mut records,
                &mut recovery.pool_faults,
            )?;
            self.tails.push(tail);
        }
        let floor = self.meta.purged_below;
        recovery.pool_purged_below = floor;
        recovery.pool_records = records.into_iter().filter(|r| r.height >= floor).collect();
        Ok(())
    }

    /// The device, e.g. to inspect a simulator disk in tests.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device, mutably: for fault injection in tests. Writing to it behind the store's
    /// back voids every guarantee.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Closes the store and hands back the device.
    pub fn into_device(self) -> D {
        self.dev
    }

    /// Chunk size fixed at format.
    pub fn chunk_bytes(&self) -> u32 {
        self.geometry.chunk_bytes
    }

    /// Free blocks in the data area.
    pub fn free_blocks(&self) -> u64 {
        self.space.free_blocks()
    }

    /// Sequence number of the durable superblock.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        if self.poisoned {
            Err(StoreError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Turns a device error into a poisoned store: the disk may now hold part of a commit.
    fn poison<T>(&mut self, r: Result<T, DeviceError>) -> Result<T, StoreError> {
        r.map_err(|e| {
            self.poisoned = true;
            StoreError::Device(e)
        })
    }

    /// Every data-area extent the durable meta (and an unfinished sync) references; the
    /// superblock copies are blocks `0..SUPERBLOCK_COPIES` besides these.
    pub fn referenced_extents(&self) -> Vec<Extent> {
        let mut used: Vec<Extent> = Vec::new();
        used.extend(self.meta_ref.extents());
        for cp in self.meta.checkpoint.iter().chain(&self.meta.retained) {
            used.extend(cp.manifest.extents());
        }
        // Chunks shared by the two checkpoints are listed twice; `FreeSpace::derive` takes the
        // union.
        for cp in self.checkpoint.iter().chain(&self.retained) {
            for (c, &l) in cp.manifest.chunks.iter().zip(&cp.locations) {
                used.push(Extent {
                    start: l,
                    blocks: blocks_for(u64::from(c.size)),
                });
            }
        }
        if let Some(cup) = &self.meta.cup {
            used.extend(cup.extents());
        }
        for s in &self.meta.segments {
            used.extend(s.extents());
        }
        used.extend(self.reserved.iter().copied());
        used.retain(|e| e.blocks > 0);
        used
    }

    fn rebuild_space(&mut self) {
        let used = self.referenced_extents();
        self.space = FreeSpace::derive(DATA_START_BLOCK, self.geometry.block_count, used);
    }

    /// Allocates for a chunk (from the bottom of the data area).
    fn alloc(&mut self, blocks: u64) -> Result<Extent, StoreError> {
        self.space.alloc(blocks).ok_or(StoreError::NoSpace)
    }

    /// Allocates for a small structure: blob or pool segment (from the top).
    fn alloc_high(&mut self, blocks: u64) -> Result<Extent, StoreError> {
        self.space.alloc_high(blocks).ok_or(StoreError::NoSpace)
    }

    /// Writes `bytes` as a mirrored blob into two fresh extents (not flushed).
    fn write_blob(&mut self, bytes: &[u8]) -> Result<BlobRef, StoreError> {
        if bytes.len() as u64 > BLOB_BYTES_MAX {
            return Err(StoreError::RecordTooLarge);
        }
        let blocks = blocks_for(bytes.len() as u64);
        let a = self.alloc_high(blocks)?;
        let b = self.alloc_high(blocks)?;
        let mut padded = vec![0u8; blocks as usize * BLOCK_BYTES];
        padded[..bytes.len()].copy_from_slice(bytes);
        for e in [a, b] {
            let r = write_blocks(&mut self.dev, e.start, &padded);
            self.poison(r)?;
        }
        Ok(BlobRef {
            copies: [a.start, b.start],
            blocks: blocks as u32,
            len: bytes.len() as u64,
            hash: hash_with_domain("cairn-blob", &[bytes]),
        })
    }

    /// Reads a mirrored blob; rewrites a bad copy from the good one (flushed by the caller).
    fn read_blob_repairing(
        &mut self,
        blob: &BlobRef,
        what: Structure,
        recovery: &mut Recovery,
    ) -> Result<Vec<u8>, StoreError> {
        let mut good = None;
        let mut bad = Vec::new();
        for copy in 0..2 {
            match read_blob_copy(&mut self.dev, self.geometry.block_count, blob, copy)? {
                Some(raw) if good.is_none() => good = Some(raw),
                Some(_) => {}
                None => bad.push(copy),
            }
        }
        let Some(raw) = good else {
            return Err(StoreError::Corrupt(what));
        };
        for copy in bad {
            write_blocks(&mut self.dev, blob.copies[copy], &raw)?;
            recovery.blob_repairs.push(what);
        }
        Ok(raw[..blob.len as usize].to_vec())
    }

    /// Makes `meta` (and everything written since the last commit) durable, atomically.
    fn commit(&mut self, meta: Meta) -> Result<(), StoreError> {
        let result = self.commit_inner(meta);
        if result.is_err() {
            // Extents taken for the failed commit are free again (its data is unreachable).
            self.rebuild_space();
        }
        result
    }

    fn commit_inner(&mut self, meta: Meta) -> Result<(), StoreError> {
        self.check_usable()?;
        let bytes =
            postcard::to_allocvec(&meta).map_err(|_| StoreError::Corrupt(Structure::Meta))?;
        assert!(
            (bytes.len() as u64) < META_BYTES_MAX,
            "meta record out of bounds"
        );
        let meta_ref = self.write_blob(&bytes)?;
        let r = self.dev.flush();
        self.poison(r)?;
        let sb = Superblock {
            sequence: self.sequence + 1,
            parent: self.superblock_checksum,
            geometry: self.geometry,
            meta: meta_ref,
        };
        let mut sector = vec![0u8; self.dev.sector_bytes()];
        let mut checksum = [0u8; 32];
        for half in [0u32..2, 2..4] {
            for copy in half {
                sb.encode(copy, &mut sector);
                checksum = Superblock::decode(&sector, copy).map_or([0; 32], |(_, c)| c);
                let r = write_blocks(&mut self.dev, u64::from(copy), &sector);
                self.poison(r)?;
            }
            let r = self.dev.flush();
            self.poison(r)?;
        }
        debug_assert_ne!(checksum, [0; 32]);
        self.sequence += 1;
        self.superblock_checksum = checksum;
        self.meta_ref = meta_ref;
        self.meta = meta;
        self.rebuild_space();
        Ok(())
    }
}

impl<D: BlockDevice> Store<D> {
    /// Stores the latest catch-up package (opaque bytes), atomically replacing the previous.
    /// Its height is unknown to the store, so no checkpoint is retained for it (and a retained
    /// one is dropped): prefer [`Store::put_cup_at`].
    pub fn put_cup(&mut self, cup: &[u8]) -> Result<(), StoreError> {
        self.put_cup_inner(None, cup)
    }

    /// Stores the catch-up package for `height`, atomically replacing the previous. From now
    /// on the checkpoint at `height` is retained when a newer checkpoint replaces it, until a
    /// CUP at another height is stored; a retained checkpoint below `height` is dropped in
    /// the same commit (its extents not shared with the latest checkpoint become free).
    pub fn put_cup_at(&mut self, height: u64, cup: &[u8]) -> Result<(), StoreError> {
        self.put_cup_inner(Some(height), cup)
    }

    /// Height of the stored CUP, as given to `put_cup_at`.
    pub fn cup_height(&self) -> Option<u64> {
        self.meta.cup_height
    }

    fn put_cup_inner(&mut self, height: Option<u64>, cup: &[u8]) -> Result<(), StoreError> {
        self.check_usable()?;
        let blob = self.write_blob(cup);
        let blob = match blob {
            Ok(blob) => blob,
            Err(e) => {
                self.rebuild_space();
                return Err(e);
            }
        };
        let mut meta = self.meta.clone();
        meta.cup = Some(blob);
        meta.cup_height = height;
        let keep = meta.retained.is_some_and(|r| height == Some(r.height));
        if !keep {
            meta.retained = None;
        }
        // As in `commit_checkpoint`: the in-memory checkpoints must match `meta` before
        // `commit` derives free space from them.
        let previous = if keep { None } else { self.retained.take() };
        if let Err(e) = self.commit(meta) {
            if previous.is_some() {
                self.retained = previous;
            }
            self.rebuild_space();
            return Err(e);
        }
        Ok(())
    }

    /// The stored catch-up package, verified.
    pub fn cup(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(blob) = self.meta.cup else {
            return Ok(None);
        };
        for copy in 0..2 {
            let block_count = self.geometry.block_count;
            if let Some(mut raw) = read_blob_copy(&mut self.dev, block_count, &blob, copy)? {
                raw.truncate(blob.len as usize);
                return Ok(Some(raw));
            }
        }
        Err(StoreError::Corrupt(Structure::Cup))
    }
}

/// Whether `blocks` blocks from `start` lie inside the data area.
fn extent_in_data_area(start: u64, blocks: u64, block_count: u64) -> bool {
    start >= DATA_START_BLOCK
        && start
            .checked_add(blocks)
            .is_some_and(|end| end <= block_count)
}

/// Reads one copy of a blob and checks its hash; `None` if it does not verify.
fn read_blob_copy<D: BlockDevice>(
    dev: &mut D,
    block_count: u64,
    blob: &BlobRef,
    copy: usize,
) -> Result<Option<Vec<u8>>, StoreError> {
    let blocks = u64::from(blob.blocks);
    if blob.len > BLOB_BYTES_MAX
        || blocks != blocks_for(blob.len)
        || !extent_in_data_area(blob.copies[copy], blocks, block_count)
    {
        return Ok(None);
    }
    let mut raw = vec![0u8; blob.blocks as usize * BLOCK_BYTES];
    for _ in 0..READ_ATTEMPTS {
        match read_blocks(dev, blob.copies[copy], &mut raw) {
            Ok(()) => {}
            Err(DeviceError::Io | DeviceError::OutOfRange) => continue,
            Err(e) => return Err(e.into()),
        }
        if hash_with_domain("cairn-blob", &[&raw[..blob.len as usize]]) == blob.hash {
            return Ok(Some(raw));
        }
    }
    Ok(None)
}

/// Reads the four superblock copies and picks the newest with a quorum; returns it, its
/// checksum and which copies hold it.
fn read_superblock<D: BlockDevice>(
    dev: &mut D,
) -> Result<(Superblock, Hash, CopyMask), StoreError> {
    let mut sector = vec![0u8; dev.sector_bytes()];
    let mut valid: Vec<(usize, Superblock, Hash)> = Vec::new();
    for copy in 0..SUPERBLOCK_COPIES {
        match read_blocks(dev, copy as u64, &mut sector) {
            Ok(()) => {}
            Err(DeviceError::Io) => continue,
            Err(e) => return Err(e.into()),
        }
        if let Some((sb, checksum)) = Superblock::decode(&sector, copy as u32) {
            valid.push((copy, sb, checksum));
        }
    }
    let best = valid
        .iter()
        .filter(|(_, _, c)| valid.iter().filter(|(_, _, d)| d == c).count() >= SUPERBLOCK_QUORUM)
        .max_by_key(|(_, sb, _)| sb.sequence);
    match best {
        Some(&(_, sb, checksum)) => {
            let mut holding = [false; SUPERBLOCK_COPIES];
            for (copy, _, c) in &valid {
                holding[*copy] = *c == checksum;
            }
            Ok((sb, checksum, holding))
        }
        // Only an interrupted format leaves no quorum and nothing newer than sequence 1.
        None if valid.iter().all(|(_, sb, _)| sb.sequence <= 1) => Err(StoreError::NotFormatted),
        None => Err(StoreError::Corrupt(Structure::Superblock)),
    }
}

#[cfg(test)]
mod tests;
