//! State sync: assembling a checkpoint from a certified manifest and chunks sent by peers.
//!
//! The flow, for a node whose CUP names a state (height, root hash) it does not have:
//!
//! 1. fetch the manifest from any peer; `Store::begin_state_sync` checks it against the
//!    certified root hash, then looks up every chunk locally: a chunk whose hash the local
//!    checkpoint (or the retained one) already stores, and which still verifies on disk, is
//!    reused, never fetched;
//! 2. fetch the chunks `StateSync::missing_chunks` names from any peers (in any order, in
//!    parallel); `Store::accept_chunk` verifies each against the manifest before writing it to
//!    free blocks, so a lying peer costs a retry, never a bad state;
//! 3. `Store::commit_state_sync` makes the checkpoint durable in one commit, exactly as a local
//!    checkpoint; a crash before that leaves the previous checkpoint, and the blocks written so
//!    far become free again.
//!
//! Repairing a local checkpoint with a bad chunk is the same flow with the local root: only the
//! bad chunks are missing. The peer side is `Store::manifest` and `Store::read_chunk`.

use super::checkpoint::read_chunk_at;
use super::device::write_blocks;
use super::format::{blocks_for, Hash, BLOCK_BYTES};
use super::manifest::{chunk_hash, Manifest};
use super::{BlockDevice, Extent, Store, StoreError};
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

/// Counters of one state sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Chunks in the manifest.
    pub chunks_total: u32,
    /// Chunks found locally (verified) and reused.
    pub chunks_local: u32,
    /// Chunks accepted from peers.
    pub chunks_fetched: u32,
    /// Chunks from peers that did not match the manifest.
    pub chunks_rejected: u32,
}

/// An unfinished state sync (see the module docs). Use it only with the store that began it.
#[derive(Clone, Debug)]
pub struct StateSync {
    height: u64,
    root_hash: Hash,
    manifest: Manifest,
    locations: Vec<Option<u64>>,
    /// Missing chunk hash to the chunk indices that carry it.
    missing: BTreeMap<Hash, Vec<u32>>,
    stats: SyncStats,
}

impl StateSync {
    /// Height of the state being synced.
    pub fn height(&self) -> u64 {
        self.height
    }

    /// The certified root hash.
    pub fn root_hash(&self) -> Hash {
        self.root_hash
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Chunks still to fetch: one index per distinct missing hash, ascending.
    pub fn missing_chunks(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .missing
            .values()
            .filter_map(|v| v.first().copied())
            .collect();
        out.sort_unstable();
        out
    }

    /// Whether every chunk is present.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// Counters so far.
    pub fn stats(&self) -> SyncStats {
        self.stats
    }
}

impl<D: BlockDevice> Store<D> {
    /// Starts syncing the state `certified_root` at `height` from `manifest` (as received from
    /// a peer). Fails if the manifest does not hash to the root.
    pub fn begin_state_sync(
        &mut self,
        height: u64,
        certified_root: &Hash,
        manifest: Manifest,
    ) -> Result<StateSync, StoreError> {
        self.check_usable()?;
        if self.sync_active {
            return Err(StoreError::SyncState);
        }
        manifest.validate(certified_root)?;
        if manifest.chunk_bytes != self.geometry.chunk_bytes {
            return Err(StoreError::Manifest(super::ManifestError::Unsupported));
        }
        if self.checkpoint.as_ref().is_some_and(|c| height < c.height) {
            return Err(StoreError::StaleHeight);
        }
        let mut sync = StateSync {
            height,
            root_hash: *certified_root,
            locations: vec![None; manifest.chunks.len()],
            missing: BTreeMap::new(),
            stats: SyncStats {
                chunks_total: manifest.chunks.len() as u32,
                ..SyncStats::default()
            },
            manifest,
        };
        self.find_local_chunks(&mut sync)?;
        self.sync_active = true;
        Ok(sync)
    }

    /// Fills `sync` with the chunks the local checkpoint holds and that still verify.
    fn find_local_chunks(&mut self, sync: &mut StateSync) -> Result<(), StoreError> {
        let mut checked: BTreeMap<Hash, Option<u64>> = BTreeMap::new();
        for (i, entry) in sync.manifest.chunks.iter().enumerate() {
            let local = match checked.get(&entry.hash) {
                Some(&known) => known,
                None => {
                    let found = match self.stored_chunk(&entry.hash) {
                        Some(l) => read_chunk_at(&mut self.dev, l, entry)?.map(|_| l),
                        None => None,
                    };
                    checked.insert(entry.hash, found);
                    if let Some(l) = found {
                        self.reserved.push(Extent {
                            start: l,
                            blocks: blocks_for(u64::from(entry.size)),
                        });
                    }
                    found
                }
            };
            match local {
                Some(l) => {
                    sync.locations[i] = Some(l);
                    sync.stats.chunks_local += 1;
                }
                None => sync.missing.entry(entry.hash).or_default().push(i as u32),
            }
        }
        Ok(())
    }

    /// Accepts chunk `index` from a peer: verified against the manifest, then written to free
    /// blocks (not yet durable). Returns `false` if the chunk was not needed (already present).
    pub fn accept_chunk(
        &mut self,
        sync: &mut StateSync,
        index: u32,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        self.check_usable()?;
        let entry = *sync
            .manifest
            .chunks
            .get(index as usize)
            .ok_or(StoreError::NotFound)?;
        if !sync.missing.contains_key(&entry.hash) {
            return Ok(false);
        }
        if bytes.len() != entry.size as usize || chunk_hash(bytes) != entry.hash {
            sync.stats.chunks_rejected += 1;
            return Err(StoreError::ChunkMismatch(index));
        }
        let extent = self.alloc(blocks_for(u64::from(entry.size)))?;
        let mut padded = vec![0u8; extent.blocks as usize * BLOCK_BYTES];
        padded[..bytes.len()].copy_from_slice(bytes);
        let r = write_blocks(&mut self.dev, extent.start, &padded);
        self.poison(r)?;
        self.reserved.push(extent);
        for i in sync.missing.remove(&entry.hash).unwrap_or_default() {
            sync.locations[i as usize] = Some(extent.start);
        }
        sync.stats.chunks_fetched += 1;
        Ok(true)
    }

    /// Commits a complete sync as the store's checkpoint; returns its root hash.
    pub fn commit_state_sync(&mut self, sync: StateSync) -> Result<Hash, StoreError> {
        if !sync.is_complete() || !self.sync_active {
            return Err(StoreError::SyncState);
        }
        let locations: Vec<u64> = sync.locations.iter().map(|l| l.unwrap_or(0)).collect();
        debug_assert!(locations.iter().all(|&l| l != 0));
        let result = self.commit_checkpoint(sync.height, sync.root_hash, sync.manifest, locations);
        self.end_sync();
        result.map(|()| sync.root_hash)
    }

    /// Abandons a sync; the blocks it wrote become free.
    pub fn abort_state_sync(&mut self, sync: StateSync) {
        drop(sync);
        self.end_sync();
    }

    fn end_sync(&mut self) {
        self.reserved.clear();
        self.sync_active = false;
        self.rebuild_space();
    }
}
