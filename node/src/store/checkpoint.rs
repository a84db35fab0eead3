//! Writing, reading and verifying checkpoints of the replicated state.

use super::device::{read_blocks, write_blocks, BlockDevice, DeviceError};
use super::format::{blocks_for, CheckpointRef, Hash, BLOCK_BYTES};
use super::manifest::{chunk_hash, ChunkEntry, KnownChunk, Manifest, StateFile};
use super::{Checkpoint, CheckpointStats, Store, StoreError, StoredManifest, READ_ATTEMPTS};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// With hints, one vouched-unchanged chunk in this many is hashed anyway (as the IC's
/// `REHASH_EVERY_NTH_CHUNK`).
pub const REHASH_EVERY_NTH_CHUNK: u64 = 10;

/// Reads the chunk stored at `location` and checks it against `entry`; `None` if it is
/// unreadable or does not match.
pub(crate) fn read_chunk_at<D: BlockDevice>(
    dev: &mut D,
    location: u64,
    entry: &ChunkEntry,
) -> Result<Option<Vec<u8>>, StoreError> {
    let mut raw = vec![0u8; blocks_for(u64::from(entry.size)) as usize * BLOCK_BYTES];
    for _ in 0..READ_ATTEMPTS {
        match read_blocks(dev, location, &mut raw) {
            Ok(()) => {}
            Err(DeviceError::Io | DeviceError::OutOfRange) => continue,
            Err(e) => return Err(e.into()),
        }
        if chunk_hash(&raw[..entry.size as usize]) == entry.hash {
            raw.truncate(entry.size as usize);
            return Ok(Some(raw));
        }
    }
    Ok(None)
}

impl<D: BlockDevice> Store<D> {
    /// Stores a checkpoint of the state at `height` made of `files`, atomically, writing only
    /// chunks whose hash is not already stored. Returns the root hash to be certified.
    ///
    /// On return the checkpoint is durable. The previous one is retained if it is at the
    /// stored CUP's height ([`Store::put_cup_at`]); otherwise its extents not shared with the
    /// new one (or the retained one) are free.
    pub fn checkpoint(
        &mut self,
        height: u64,
        files: &[StateFile<'_>],
    ) -> Result<CheckpointStats, StoreError> {
        self.checkpoint_with_hints(height, files, &|_, _| false)
    }

    /// As `checkpoint`, but chunk `k` of file `f` is not even hashed when `unchanged(f, k)`
    /// and the stored checkpoint has that chunk at the same size: its stored hash is reused
    /// (the IC state manager does the same with dirty-page tracking). As a guard against a
    /// wrong hint, one vouched chunk in `REHASH_EVERY_NTH_CHUNK` (rotating with the height) is
    /// hashed anyway; a mismatch fails with `HintMismatch` and stores nothing.
    pub fn checkpoint_with_hints(
        &mut self,
        height: u64,
        files: &[StateFile<'_>],
        unchanged: &dyn Fn(&str, u64) -> bool,
    ) -> Result<CheckpointStats, StoreError> {
        self.check_usable()?;
        if self.checkpoint.as_ref().is_some_and(|c| height < c.height) {
            return Err(StoreError::StaleHeight);
        }
        let (manifest, chunks_hashed) = self.compute_manifest(height, files, unchanged)?;
        let mut sorted: Vec<&StateFile<'_>> = files.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(b.name));
        let result = self.write_chunks(&manifest, &sorted);
        let (locations, written, bytes) = match result {
            Ok(done) => done,
            Err(e) => {
                self.rebuild_space();
                return Err(e);
            }
        };
        let root_hash = manifest.root_hash();
        let chunks_total = manifest.chunks.len() as u32;
        self.commit_checkpoint(height, root_hash, manifest, locations)?;
        Ok(CheckpointStats {
            root_hash,
            chunks_total,
            chunks_hashed,
            chunks_written: written,
            chunk_bytes_written: bytes,
        })
    }

    /// Computes the manifest, reusing stored hashes of vouched-unchanged chunks; returns it
    /// and how many chunks were hashed.
    fn compute_manifest(
        &self,
        height: u64,
        files: &[StateFile<'_>],
        unchanged: &dyn Fn(&str, u64) -> bool,
    ) -> Result<(Manifest, u32), StoreError> {
        let old = self.checkpoint.as_ref().map(|c| &c.manifest);
        // First chunk index and chunk count of each file of the stored checkpoint.
        let mut old_files: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        if let Some(m) = old {
            let mut first = 0;
            for (i, f) in m.files.iter().enumerate() {
                let count = m.chunks[first..]
                    .iter()
                    .take_while(|c| c.file_index as usize == i)
                    .count();
                old_files.insert(f.name.as_str(), (first, count));
                first += count;
            }
        }
        let mut audits: Vec<(usize, Hash)> = Vec::new();
        let mut hashed = 0u32;
        let mut known = |q: KnownChunk<'_>| {
            let stored = old_files
                .get(q.file)
                .filter(|&&(_, count)| q.chunk_in_file < count as u64)
                .and_then(|&(first, _)| old?.chunks.get(first + q.chunk_in_file as usize))
                .filter(|c| c.size == q.size && unchanged(q.file, q.chunk_in_file));
            match stored {
                Some(c) if !(q.index as u64 + height).is_multiple_of(REHASH_EVERY_NTH_CHUNK) => {
                    Some(c.hash)
                }
                Some(c) => {
                    audits.push((q.index, c.hash));
                    hashed += 1;
                    None
                }
                None => {
                    hashed += 1;
                    None
                }
            }
        };
        let manifest = Manifest::compute_with_known(self.geometry.chunk_bytes, files, &mut known)?;
        for (index, vouched) in audits {
            if manifest.chunks[index].hash != vouched {
                return Err(StoreError::HintMismatch(index as u32));
            }
        }
        Ok((manifest, hashed))
    }

    /// Writes the chunks not already stored; returns per-chunk locations, chunks and bytes
    /// written. Nothing is flushed: `commit_checkpoint` does that.
    fn write_chunks(
        &mut self,
        manifest: &Manifest,
        files: &[&StateFile<'_>],
    ) -> Result<(Vec<u64>, u32, u64), StoreError> {
        let mut fresh: BTreeMap<Hash, u64> = BTreeMap::new();
        let mut locations = Vec::with_capacity(manifest.chunks.len());
        let (mut written, mut bytes) = (0u32, 0u64);
        let mut padded = Vec::new();
        for c in &manifest.chunks {
            if let Some(l) = self
                .stored_chunk(&c.hash)
                .or_else(|| fresh.get(&c.hash).copied())
            {
                locations.push(l);
                continue;
            }
            let start = c.offset as usize;
            let data = &files[c.file_index as usize].bytes[start..start + c.size as usize];
            let extent = self.alloc(blocks_for(u64::from(c.size)))?;
            let r = if data.len().is_multiple_of(BLOCK_BYTES) && !data.is_empty() {
                write_blocks(&mut self.dev, extent.start, data)
            } else {
                padded.clear();
                padded.resize(extent.blocks as usize * BLOCK_BYTES, 0);
                padded[..data.len()].copy_from_slice(data);
                write_blocks(&mut self.dev, extent.start, &padded)
            };
            self.poison(r)?;
            fresh.insert(c.hash, extent.start);
            locations.push(extent.start);
            written += 1;
            bytes += u64::from(c.size);
        }
        Ok((locations, written, bytes))
    }

    /// Writes the manifest and commits a meta naming the new checkpoint.
    pub(crate) fn commit_checkpoint(
        &mut self,
        height: u64,
        root_hash: Hash,
        manifest: Manifest,
        locations: Vec<u64>,
    ) -> Result<(), StoreError> {
        let stored = StoredManifest {
            manifest,
            locations,
        };
        let encoded = postcard::to_allocvec(&stored)
            .map_err(|_| StoreError::Manifest(super::ManifestError::TooLarge))?;
        let blob = match self.write_blob(&encoded) {
            Ok(blob) => blob,
            Err(e) => {
                self.rebuild_space();
                return Err(e);
            }
        };
        let mut meta = self.meta.clone();
        let new_ref = CheckpointRef {
            height,
            root_hash,
            manifest: blob,
        };
        let at_cup = |r: &Option<CheckpointRef>| {
            r.filter(|r| meta.cup_height == Some(r.height) && r.height < height)
        };
        // The checkpoint at the CUP height stays (as the retained one) until a newer CUP.
        let previous_ref = meta.checkpoint.replace(new_ref);
        let retain_previous = at_cup(&previous_ref).is_some();
        meta.retained = at_cup(&previous_ref).or(at_cup(&meta.retained));
        // The in-memory checkpoints must match `meta` before `commit` derives free space.
        let previous = self.checkpoint.replace(Checkpoint::new(
            height,
            root_hash,
            stored.manifest,
            stored.locations,
        ));
        let previous_retained = self.retained.clone();
        if retain_previous {
            self.retained.clone_from(&previous);
        } else if meta.retained.is_none() {
            self.retained = None;
        }
        if let Err(e) = self.commit(meta) {
            self.checkpoint = previous;
            self.retained = previous_retained;
            self.rebuild_space();
            return Err(e);
        }
        Ok(())
    }

    /// Where a chunk with `hash` is stored (latest checkpoint first, then the retained one).
    pub(crate) fn stored_chunk(&self, hash: &Hash) -> Option<u64> {
        self.checkpoint
            .iter()
            .chain(&self.retained)
            .find_map(|cp| cp.by_hash.get(hash).copied())
    }

    /// The checkpoint at `height`: the latest or the retained one.
    fn checkpoint_at(&self, height: u64) -> Option<&Checkpoint> {
        self.checkpoint
            .iter()
            .chain(&self.retained)
            .find(|cp| cp.height == height)
    }

    /// Height of the retained checkpoint (see [`Store::put_cup_at`]).
    pub fn retained_height(&self) -> Option<u64> {
        self.retained.as_ref().map(|c| c.height)
    }

    /// Root hash of the retained checkpoint.
    pub fn retained_root_hash(&self) -> Option<Hash> {
        self.retained.as_ref().map(|c| c.root_hash)
    }

    /// Manifest of the checkpoint at `height` (the latest or the retained one).
    pub fn manifest_at(&self, height: u64) -> Option<&Manifest> {
        self.checkpoint_at(height).map(|c| &c.manifest)
    }

    /// Names of the files of the checkpoint at `height`, in order.
    pub fn file_names_at(&self, height: u64) -> Vec<String> {
        self.manifest_at(height)
            .map(|m| m.files.iter().map(|f| f.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Where each chunk of the retained checkpoint lies (for tests that damage them).
    pub fn retained_chunk_extents(&self) -> Vec<super::Extent> {
        self.retained
            .as_ref()
            .map_or_else(Vec::new, chunk_extents_of)
    }

    /// Height of the stored checkpoint.
    pub fn checkpoint_height(&self) -> Option<u64> {
        self.checkpoint.as_ref().map(|c| c.height)
    }

    /// Root hash of the stored checkpoint.
    pub fn root_hash(&self) -> Option<Hash> {
        self.checkpoint.as_ref().map(|c| c.root_hash)
    }

    /// Manifest of the stored checkpoint (what a peer asks for first in state sync).
    pub fn manifest(&self) -> Option<&Manifest> {
        self.checkpoint.as_ref().map(|c| &c.manifest)
    }

    /// Names of the checkpoint's files, in order.
    pub fn file_names(&self) -> Vec<String> {
        self.manifest()
            .map(|m| m.files.iter().map(|f| f.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Where each chunk of the checkpoint lies (for tests that damage them).
    pub fn chunk_extents(&self) -> Vec<super::Extent> {
        self.checkpoint
            .as_ref()
            .map_or_else(Vec::new, chunk_extents_of)
    }

    /// Reads chunk `index` of the checkpoint, verified against the manifest (what a peer
    /// serves in state sync).
    pub fn read_chunk(&mut self, index: u32) -> Result<Vec<u8>, StoreError> {
        let height = self.checkpoint_height().ok_or(StoreError::NoCheckpoint)?;
        self.read_chunk_of(height, index)
    }

    /// Reads chunk `index` of the checkpoint at `height` (the latest or the retained one),
    /// verified against its manifest.
    pub fn read_chunk_of(&mut self, height: u64, index: u32) -> Result<Vec<u8>, StoreError> {
        let cp = self.checkpoint_at(height).ok_or(StoreError::NoCheckpoint)?;
        let i = index as usize;
        let entry = *cp.manifest.chunks.get(i).ok_or(StoreError::NotFound)?;
        let location = *cp.locations.get(i).ok_or(StoreError::NotFound)?;
        let chunk = read_chunk_at(&mut self.dev, location, &entry)?;
        if chunk.is_none() {
            // Never reuse the bad copy for a later checkpoint: that one writes the chunk anew.
            for cp in self.checkpoint.iter_mut().chain(self.retained.iter_mut()) {
                if cp.by_hash.get(&entry.hash) == Some(&location) {
                    cp.by_hash.remove(&entry.hash);
                }
            }
        }
        chunk.ok_or(StoreError::BadChunk(index))
    }

    /// Reads a whole file of the checkpoint, every chunk verified.
    pub fn read_file(&mut self, name: &str) -> Result<Vec<u8>, StoreError> {
        let height = self.checkpoint_height().ok_or(StoreError::NoCheckpoint)?;
        self.read_file_at(height, name)
    }

    /// Reads a whole file of the checkpoint at `height` (the latest or the retained one).
    pub fn read_file_at(&mut self, height: u64, name: &str) -> Result<Vec<u8>, StoreError> {
        let cp = self.checkpoint_at(height).ok_or(StoreError::NoCheckpoint)?;
        let file_index = cp
            .manifest
            .files
            .binary_search_by(|f| f.name.as_str().cmp(name))
            .map_err(|_| StoreError::NotFound)?;
        let size = cp.manifest.files[file_index].size;
        let indices: Vec<usize> = cp.manifest.chunks_of(file_index).collect();
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        for i in indices {
            out.extend_from_slice(&self.read_chunk_of(height, i as u32)?);
        }
        Ok(out)
    }

    /// Reads and hashes every chunk; returns the indices of those that fail.
    pub fn verify_checkpoint(&mut self) -> Result<Vec<u32>, StoreError> {
        let Some(cp) = self.checkpoint.clone() else {
            return Ok(Vec::new());
        };
        self.verify_chunks(&cp)
    }

    /// As `verify_checkpoint`, for the retained checkpoint.
    pub fn verify_retained(&mut self) -> Result<Vec<u32>, StoreError> {
        let Some(cp) = self.retained.clone() else {
            return Ok(Vec::new());
        };
        self.verify_chunks(&cp)
    }

    fn verify_chunks(&mut self, cp: &Checkpoint) -> Result<Vec<u32>, StoreError> {
        let work: Vec<(ChunkEntry, u64)> = cp
            .manifest
            .chunks
            .iter()
            .copied()
            .zip(cp.locations.iter().copied())
            .collect();
        let mut bad = Vec::new();
        for (i, (entry, location)) in work.iter().enumerate() {
            if read_chunk_at(&mut self.dev, *location, entry)?.is_none() {
                bad.push(i as u32);
            }
        }
        Ok(bad)
    }
}

fn chunk_extents_of(cp: &Checkpoint) -> Vec<super::Extent> {
    cp.manifest
        .chunks
        .iter()
        .zip(&cp.locations)
        .map(|(c, &l)| super::Extent {
            start: l,
            blocks: blocks_for(u64::from(c.size)),
        })
        .collect()
}
