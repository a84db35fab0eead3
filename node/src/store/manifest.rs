//! Checkpoint manifests: the list of files of a replicated state, their chunks and the root
//! hash that names the whole state (modelled on the IC state manager's manifest,
//! `rs/state_manager/src/manifest.rs`; `../shared/reference/unikernels-and-snp.md` §5.1).
//!
//! ```text
//! chunk_hash = H(dsep("ic-state-chunk") · bytes)
//! file_hash  = H(dsep("ic-state-file") · u32 chunk_count · (u32 size · u64 offset · chunk_hash)*)
//! root_hash  = H(dsep("cairn-state-manifest") · u32 version · u32 chunk_bytes · u32 file_count
//!                · (u32 name_len · name · u64 size · file_hash)*)
//! ```
//! `H` is SHA-256, `dsep(s)` is `len(s) as u8 · s`, integers are big-endian (as the IC's).
//! Chunk and file hashes follow the IC; the root is ours (the IC's meta-manifest hashes the
//! protobuf encoding of the manifest, which cairn does not carry). Files are sorted by name,
//! chunks by (file, offset); every chunk but a file's last is exactly `chunk_bytes` long.

use super::format::{hash_with_domain, Hash};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// The manifest format this code computes.
pub const MANIFEST_VERSION: u32 = 1;
/// Default chunk size, as the IC's `DEFAULT_CHUNK_SIZE`.
pub const CHUNK_BYTES_DEFAULT: u32 = 1 << 20;
/// Most files a state may have.
pub const MANIFEST_FILES_MAX: usize = 1 << 16;
/// Most chunks a state may have (16 Mi chunks = 16 TiB at 1 MiB).
pub const MANIFEST_CHUNKS_MAX: usize = 1 << 24;
/// Longest file name, in bytes.
pub const FILE_NAME_BYTES_MAX: usize = 255;
/// Largest encoded manifest accepted from a peer, in bytes.
pub const MANIFEST_BYTES_MAX: usize = 1 << 30;

/// A file of the state as handed to `Store::checkpoint`.
#[derive(Clone, Copy, Debug)]
pub struct StateFile<'a> {
    /// Name, unique within the state (e.g. `canister/<id>/stable_memory.bin`).
    pub name: &'a str,
    /// Contents.
    pub bytes: &'a [u8],
}

/// A chunk `Manifest::compute_with_known` asks about.
#[derive(Clone, Copy, Debug)]
pub struct KnownChunk<'a> {
    /// Index of the chunk in the manifest being computed.
    pub index: usize,
    /// Its file.
    pub file: &'a str,
    /// Its index within the file.
    pub chunk_in_file: u64,
    /// Its size in bytes.
    pub size: u32,
}

/// One file of a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// `file_hash` (see the module docs).
    pub hash: Hash,
}

/// One chunk of a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    /// Index of its file in `Manifest::files`.
    pub file_index: u32,
    /// Byte offset within the file.
    pub offset: u64,
    /// Size in bytes.
    pub size: u32,
    /// `chunk_hash` (see the module docs).
    pub hash: Hash,
}

/// A state's manifest: what a peer sends first in state sync, verified against the root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `MANIFEST_VERSION`.
    pub version: u32,
    /// Chunk size in bytes.
    pub chunk_bytes: u32,
    /// Files, sorted by name.
    pub files: Vec<FileEntry>,
    /// Chunks, sorted by (file, offset).
    pub chunks: Vec<ChunkEntry>,
}

/// Why a manifest is not acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestError {
    /// The bytes do not decode.
    Malformed,
    /// Unknown version or chunk size.
    Unsupported,
    /// Too many files or chunks, or a name too long.
    TooLarge,
    /// Files not strictly sorted by name.
    Unsorted,
    /// Chunks do not tile their files exactly.
    BadChunking,
    /// A file hash does not match its chunks.
    BadFileHash,
    /// The root does not match the certified root.
    RootMismatch,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ManifestError::Malformed => "manifest does not decode",
            ManifestError::Unsupported => "unsupported manifest version or chunk size",
            ManifestError::TooLarge => "manifest exceeds its bounds",
            ManifestError::Unsorted => "manifest files are not sorted by name",
            ManifestError::BadChunking => "manifest chunks do not tile their files",
            ManifestError::BadFileHash => "manifest file hash does not match its chunks",
            ManifestError::RootMismatch => "manifest root does not match the certified root",
        })
    }
}

impl core::error::Error for ManifestError {}

/// `chunk_hash` of some bytes.
pub fn chunk_hash(bytes: &[u8]) -> Hash {
    hash_with_domain("ic-state-chunk", &[bytes])
}

fn file_hash(chunks: &[ChunkEntry]) -> Hash {
    let mut buf = Vec::with_capacity(4 + chunks.len() * 44);
    buf.extend_from_slice(&(chunks.len() as u32).to_be_bytes());
    for c in chunks {
        buf.extend_from_slice(&c.size.to_be_bytes());
        buf.extend_from_slice(&c.offset.to_be_bytes());
        buf.extend_from_slice(&c.hash);
    }
    hash_with_domain("ic-state-file", &[&buf])
}

/// Is `chunk_bytes` a chunk size this store supports (a multiple of 4 KiB, 4 KiB..=16 MiB)?
pub fn chunk_bytes_supported(chunk_bytes: u32) -> bool {
    (4096..=16 << 20).contains(&chunk_bytes) && chunk_bytes.is_multiple_of(4096)
}

impl Manifest {
    /// Computes the manifest of `files` (any order; duplicates rejected as `Unsorted`).
    pub fn compute(chunk_bytes: u32, files: &[StateFile<'_>]) -> Result<Manifest, ManifestError> {
        Manifest::compute_with_known(chunk_bytes, files, &mut |_| None)
    }

    /// As `compute`, but takes a chunk's hash from `known` instead of hashing it when `known`
    /// returns one (for chunks the caller vouches are unchanged).
    pub fn compute_with_known(
        chunk_bytes: u32,
        files: &[StateFile<'_>],
        known: &mut dyn FnMut(KnownChunk<'_>) -> Option<Hash>,
    ) -> Result<Manifest, ManifestError> {
        if !chunk_bytes_supported(chunk_bytes) {
            return Err(ManifestError::Unsupported);
        }
        let mut sorted: Vec<&StateFile<'_>> = files.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(b.name));
        let mut manifest = Manifest {
            version: MANIFEST_VERSION,
            chunk_bytes,
            files: Vec::with_capacity(sorted.len()),
            chunks: Vec::new(),
        };
        for (file_index, file) in sorted.iter().enumerate() {
            let first = manifest.chunks.len();
            for (i, piece) in file.bytes.chunks(chunk_bytes as usize).enumerate() {
                let query = KnownChunk {
                    index: manifest.chunks.len(),
                    file: file.name,
                    chunk_in_file: i as u64,
                    size: piece.len() as u32,
                };
                manifest.chunks.push(ChunkEntry {
                    file_index: file_index as u32,
                    offset: i as u64 * u64::from(chunk_bytes),
                    size: piece.len() as u32,
                    hash: known(query).unwrap_or_else(|| chunk_hash(piece)),
                });
            }
            manifest.files.push(FileEntry {
                name: String::from(file.name),
                size: file.bytes.len() as u64,
                hash: file_hash(&manifest.chunks[first..]),
            });
        }
        manifest.check_structure()?;
        Ok(manifest)
    }

    /// The root hash naming this state.
    pub fn root_hash(&self) -> Hash {
        let mut buf = Vec::with_capacity(12 + self.files.len() * 80);
        buf.extend_from_slice(&self.version.to_be_bytes());
        buf.extend_from_slice(&self.chunk_bytes.to_be_bytes());
        buf.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for f in &self.files {
            buf.extend_from_slice(&(f.name.len() as u32).to_be_bytes());
            buf.extend_from_slice(f.name.as_bytes());
            buf.extend_from_slice(&f.size.to_be_bytes());
            buf.extend_from_slice(&f.hash);
        }
        hash_with_domain("cairn-state-manifest", &[&buf])
    }

    /// Checks bounds, order, tiling and file hashes (everything but the root).
    pub fn check_structure(&self) -> Result<(), ManifestError> {
        if self.version != MANIFEST_VERSION || !chunk_bytes_supported(self.chunk_bytes) {
            return Err(ManifestError::Unsupported);
        }
        if self.files.len() > MANIFEST_FILES_MAX || self.chunks.len() > MANIFEST_CHUNKS_MAX {
            return Err(ManifestError::TooLarge);
        }
        if self
            .files
            .iter()
            .any(|f| f.name.len() > FILE_NAME_BYTES_MAX)
        {
            return Err(ManifestError::TooLarge);
        }
        if self.files.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(ManifestError::Unsorted);
        }
        let mut next = 0usize;
        for (file_index, file) in self.files.iter().enumerate() {
            let first = next;
            let mut offset = 0u64;
            while offset < file.size {
                let chunk = self.chunks.get(next).ok_or(ManifestError::BadChunking)?;
                let expect = (file.size - offset).min(u64::from(self.chunk_bytes));
                if chunk.file_index as usize != file_index
                    || chunk.offset != offset
                    || u64::from(chunk.size) != expect
                {
                    return Err(ManifestError::BadChunking);
                }
                offset += expect;
                next += 1;
            }
            if file_hash(&self.chunks[first..next]) != file.hash {
                return Err(ManifestError::BadFileHash);
            }
        }
        if next != self.chunks.len() {
            return Err(ManifestError::BadChunking);
        }
        Ok(())
    }

    /// Checks a manifest received from a peer against the certified root.
    pub fn validate(&self, certified_root: &Hash) -> Result<(), ManifestError> {
        self.check_structure()?;
        if &self.root_hash() != certified_root {
            return Err(ManifestError::RootMismatch);
        }
        Ok(())
    }

    /// The wire encoding (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes the wire encoding; call `validate` before trusting it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MANIFEST_BYTES_MAX {
            return Err(ManifestError::TooLarge);
        }
        postcard::from_bytes(bytes).map_err(|_| ManifestError::Malformed)
    }

    /// Indices of the chunks of file `file_index`, in order.
    pub fn chunks_of(&self, file_index: usize) -> impl Iterator<Item = usize> + '_ {
        self.chunks
            .iter()
            .enumerate()
            .filter(move |(_, c)| c.file_index as usize == file_index)
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn manifest_tiles_files_and_detects_tampering() {
        let a = vec![1u8; 10_000];
        let b = vec![2u8; 4096];
        let files = [
            StateFile {
                name: "b",
                bytes: &b,
            },
            StateFile {
                name: "a",
                bytes: &a,
            },
            StateFile {
                name: "empty",
                bytes: &[],
            },
        ];
        let m = Manifest::compute(4096, &files).unwrap();
        assert_eq!(m.files[0].name, "a");
        assert_eq!(m.chunks.len(), 3 + 1);
        assert_eq!(m.chunks[2].size, 10_000 - 8192);
        let root = m.root_hash();
        let decoded = Manifest::from_bytes(&m.to_bytes()).unwrap();
        assert_eq!(decoded.validate(&root), Ok(()));
        let mut bad = decoded.clone();
        bad.chunks[1].hash[0] ^= 1;
        assert_eq!(bad.validate(&root), Err(ManifestError::BadFileHash));
        let mut other = decoded;
        other.files[2].size = 1;
        assert_eq!(other.validate(&root), Err(ManifestError::BadChunking));
        let dup = [
            StateFile {
                name: "a",
                bytes: &a,
            },
            StateFile {
                name: "a",
                bytes: &b,
            },
        ];
        assert_eq!(Manifest::compute(4096, &dup), Err(ManifestError::Unsorted));
    }
}
