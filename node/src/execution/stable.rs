//! Stable memory: a sparse, copy-on-write byte array in 64 KiB Wasm pages.
//!
//! Chunks of [`CHUNK_BYTES`] are shared (`Arc`) between the committed state and a running
//! execution, so an execution gets its own copy in O(chunks) and a write copies only the
//! chunk it touches; a trap simply drops the execution's copy. Absent chunks read as zero.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// Bytes in a Wasm page.
pub const WASM_PAGE_BYTES: u64 = 65_536;
/// Bytes in one copy-on-write chunk.
pub const CHUNK_BYTES: usize = 4096;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StableMemory {
    pages: u64,
    chunks: BTreeMap<u64, Arc<[u8; CHUNK_BYTES]>>,
}

/// An access past the current size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfBounds;

impl StableMemory {
    pub fn pages(&self) -> u64 {
        self.pages
    }

    pub fn size_bytes(&self) -> u64 {
        self.pages * WASM_PAGE_BYTES
    }

    pub fn grow(&mut self, pages: u64) {
        self.pages += pages;
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), OutOfBounds> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size_bytes() => Ok(()),
            _ => Err(OutOfBounds),
        }
    }

    pub fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), OutOfBounds> {
        self.check(offset, bytes.len() as u64)?;
        let mut pos = 0usize;
        while pos < bytes.len() {
            let at = offset + pos as u64;
            let chunk = at / CHUNK_BYTES as u64;
            let within = (at % CHUNK_BYTES as u64) as usize;
            let n = (CHUNK_BYTES - within).min(bytes.len() - pos);
            let c = self
                .chunks
                .entry(chunk)
                .or_insert_with(|| Arc::new([0u8; CHUNK_BYTES]));
            Arc::make_mut(c)[within..within + n].copy_from_slice(&bytes[pos..pos + n]);
            pos += n;
        }
        Ok(())
    }

    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, OutOfBounds> {
        self.check(offset, len)?;
        let mut out = alloc::vec![0u8; len as usize];
        self.read_into(offset, &mut out)?;
        Ok(out)
    }

    /// Reads `out.len()` bytes at `offset` into `out` (no intermediate buffer).
    pub fn read_into(&self, offset: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        self.check(offset, out.len() as u64)?;
        let mut pos = 0usize;
        while pos < out.len() {
            let at = offset + pos as u64;
            let chunk = at / CHUNK_BYTES as u64;
            let within = (at % CHUNK_BYTES as u64) as usize;
            let n = (CHUNK_BYTES - within).min(out.len() - pos);
            match self.chunks.get(&chunk) {
                Some(c) => out[pos..pos + n].copy_from_slice(&c[within..within + n]),
                None => out[pos..pos + n].fill(0),
            }
            pos += n;
        }
        Ok(())
    }

    /// The chunks that were ever written, in order (for hashing and checkpoints).
    pub fn chunks(&self) -> impl Iterator<Item = (u64, &[u8; CHUNK_BYTES])> {
        self.chunks.iter().map(|(i, c)| (*i, &**c))
    }
}
