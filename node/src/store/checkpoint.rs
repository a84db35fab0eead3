//! Writing, reading and verifying checkpoints of the replicated state.

use super::device::{read_blocks, write_blocks, BlockDevice, DeviceError};
use super::format::{blocks_for, CheckpointRef, Hash, BLOCK_BYTES};
use super::manifest::{chunk_hash, ChunkEntry, Manifest, StateFile};
use super::{Checkpoint, CheckpointStats, Store, StoreError, StoredManifest, READ_ATTEMPTS};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

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
    /// On return the checkpoint is durable and the previous one's unshared extents are free.
    pub fn checkpoint(
        &mut self,
        height: u64,
        files: &[StateFile<'_>],
    ) -> Result<CheckpointStats, StoreError> {
        self.check_usable()?;
        if self.checkpoint.as_ref().is_some_and(|c| height < c.height) {
            return Err(StoreError::StaleHeight);
        }
        let manifest = Manifest::compute(self.geometry.chunk_bytes, files)?;
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
            chunks_written: written,
            chunk_bytes_written: bytes,
        })
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
            let known = self
                .checkpoint
                .as_ref()
                .and_then(|cp| cp.by_hash.get(&c.hash));
            if let Some(&l) = known.or_else(|| fresh.get(&c.hash)) {
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
        meta.checkpoint = Some(CheckpointRef {
            height,
            root_hash,
            manifest: blob,
        });
        // The new checkpoint must be in place before `commit` derives free space from it.
        let previous = self.checkpoint.replace(Checkpoint::new(
            height,
            root_hash,
            stored.manifest,
            stored.locations,
        ));
        if let Err(e) = self.commit(meta) {
            self.checkpoint = previous;
            self.rebuild_space();
            return Err(e);
        }
        Ok(())
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

    /// Reads chunk `index` of the checkpoint, verified against the manifest (what a peer
    /// serves in state sync).
    pub fn read_chunk(&mut self, index: u32) -> Result<Vec<u8>, StoreError> {
        let cp = self.checkpoint.as_ref().ok_or(StoreError::NoCheckpoint)?;
        let i = index as usize;
        let entry = *cp.manifest.chunks.get(i).ok_or(StoreError::NotFound)?;
        let location = cp.locations[i];
        read_chunk_at(&mut self.dev, location, &entry)?.ok_or(StoreError::BadChunk(index))
    }

    /// Reads a whole file of the checkpoint, every chunk verified.
    pub fn read_file(&mut self, name: &str) -> Result<Vec<u8>, StoreError> {
        let cp = self.checkpoint.as_ref().ok_or(StoreError::NoCheckpoint)?;
        let file_index = cp
            .manifest
            .files
            .binary_search_by(|f| f.name.as_str().cmp(name))
            .map_err(|_| StoreError::NotFound)?;
        let size = cp.manifest.files[file_index].size;
        let indices: Vec<usize> = cp.manifest.chunks_of(file_index).collect();
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        for i in indices {
            out.extend_from_slice(&self.read_chunk(i as u32)?);
        }
        Ok(out)
    }

    /// Reads and hashes every chunk; returns the indices of those that fail.
    pub fn verify_checkpoint(&mut self) -> Result<Vec<u32>, StoreError> {
        let Some(cp) = self.checkpoint.as_ref() else {
            return Ok(Vec::new());
        };
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
