//! Byte layouts: the superblock, the meta record and blob references.
//!
//! Every integer in a fixed layout is little-endian. Every checksum is SHA-256 over a
//! length-prefixed domain separator and the covered bytes ([`hash_with_domain`]). A reference
//! to anything in the data area carries the checksum of what it points to, so a misdirected
//! read or write is caught by the parent (TigerBeetle's rule).

use super::space::Extent;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The store's allocation unit and I/O unit, in bytes; a multiple of every allowed sector.
pub const BLOCK_BYTES: usize = 4096;
/// Copies of the superblock, at blocks `0..SUPERBLOCK_COPIES`.
pub const SUPERBLOCK_COPIES: usize = 4;
/// A superblock is chosen only if this many copies of it agree.
pub const SUPERBLOCK_QUORUM: usize = 2;
/// First block of the data area.
pub const DATA_START_BLOCK: u64 = SUPERBLOCK_COPIES as u64;
/// Bytes of a superblock that are meaningful (the rest of its sector is zero).
pub const SUPERBLOCK_BYTES: usize = 168;
/// The on-disk format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The version of the postcard-encoded meta record this code writes. Version 1 (no CUP height,
/// no retained checkpoint) is still read ([`decode_meta`]); any other is `UnsupportedMeta`.
pub const META_VERSION: u32 = 2;
/// The meta version before the retained checkpoint.
pub const META_VERSION_1: u32 = 1;
/// Largest meta record accepted on read, in bytes.
pub const META_BYTES_MAX: u64 = 16 << 20;

const SUPERBLOCK_MAGIC: [u8; 8] = *b"CAIRNSB\x01";
const SUPERBLOCK_CHECKSUM_OFFSET: usize = 136;
const SUPERBLOCK_COPY_OFFSET: usize = 12;

/// A 32-byte SHA-256 digest.
pub type Hash = [u8; 32];

/// `SHA-256(len(domain) · domain · parts…)`: the IC's length-prefixed domain separation.
pub fn hash_with_domain(domain: &str, parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    h.update([domain.len() as u8]);
    h.update(domain.as_bytes());
    for part in parts {
        h.update(part);
    }
    h.finalize().into()
}

/// Where a blob lives: two mirrored extents and the checksum of its `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// First block of each copy.
    pub copies: [u64; 2],
    /// Blocks per copy.
    pub blocks: u32,
    /// Length of the blob in bytes.
    pub len: u64,
    /// `hash_with_domain("cairn-blob", bytes)`.
    pub hash: Hash,
}

impl BlobRef {
    /// Both copies as extents.
    pub fn extents(&self) -> [Extent; 2] {
        self.copies.map(|start| Extent {
            start,
            blocks: u64::from(self.blocks),
        })
    }
}

/// One pool log segment: two mirrored extents written in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    /// Unique, increasing; every batch in the segment names it, so stale bytes from an earlier
    /// use of the same blocks never parse as this segment's batches.
    pub id: u64,
    /// First block of each copy.
    pub copies: [u64; 2],
    /// Blocks per copy.
    pub blocks: u32,
}

impl SegmentRef {
    /// Both copies as extents.
    pub fn extents(&self) -> [Extent; 2] {
        self.copies.map(|start| Extent {
            start,
            blocks: u64::from(self.blocks),
        })
    }
}

/// The durable checkpoint: its height, root hash and stored manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// Height of the replicated state.
    pub height: u64,
    /// Root hash of its manifest (what consensus certifies).
    pub root_hash: Hash,
    /// The stored manifest: manifest plus chunk locations.
    pub manifest: BlobRef,
}

/// The root record of one commit, written copy-on-write and named by the superblock.
///
/// Fields are postcard-encoded in this order; version 2 appended `cup_height` and `retained`
/// to version 1's fields ([`MetaV1`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// `META_VERSION`.
    pub version: u32,
    /// The latest checkpoint, if any.
    pub checkpoint: Option<CheckpointRef>,
    /// The latest catch-up package, opaque.
    pub cup: Option<BlobRef>,
    /// Pool log segments, oldest first.
    pub segments: Vec<SegmentRef>,
    /// Next segment id to hand out.
    pub next_segment_id: u64,
    /// Pool records below this height are purged (not returned on recovery).
    pub purged_below: u64,
    /// `StoreConfig::format_nonce`: tells this format's pool batches from an earlier one's.
    pub format_nonce: u64,
    /// Height of the stored CUP, if the caller said (`Store::put_cup_at`): the checkpoint at
    /// this height is retained while a newer one is the latest.
    pub cup_height: Option<u64>,
    /// The checkpoint at `cup_height` when a newer checkpoint replaced it as the latest (so
    /// peers that adopted the CUP can still sync its state). Its extents may be shared with
    /// the latest checkpoint's.
    pub retained: Option<CheckpointRef>,
}

/// The meta record of version 1 (read for compatibility, never written).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaV1 {
    /// `META_VERSION_1`.
    pub version: u32,
    /// The checkpoint.
    pub checkpoint: Option<CheckpointRef>,
    /// The CUP.
    pub cup: Option<BlobRef>,
    /// Pool log segments.
    pub segments: Vec<SegmentRef>,
    /// Next segment id.
    pub next_segment_id: u64,
    /// Purge height.
    pub purged_below: u64,
    /// Format nonce.
    pub format_nonce: u64,
}

/// Why a meta record does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaDecodeError {
    /// The bytes do not parse as the version they name.
    Malformed,
    /// A version this code does not read.
    Unsupported(u32),
}

/// Decodes a meta record of version 2 or 1 (upgraded in memory: no CUP height, no retained
/// checkpoint; the next commit writes version 2).
pub fn decode_meta(bytes: &[u8]) -> Result<Meta, MetaDecodeError> {
    let (version, _) =
        postcard::take_from_bytes::<u32>(bytes).map_err(|_| MetaDecodeError::Malformed)?;
    match version {
        META_VERSION => postcard::from_bytes(bytes).map_err(|_| MetaDecodeError::Malformed),
        META_VERSION_1 => {
            let v1: MetaV1 = postcard::from_bytes(bytes).map_err(|_| MetaDecodeError::Malformed)?;
            Ok(Meta {
                version: META_VERSION,
                checkpoint: v1.checkpoint,
                cup: v1.cup,
                segments: v1.segments,
                next_segment_id: v1.next_segment_id,
                purged_below: v1.purged_below,
                format_nonce: v1.format_nonce,
                cup_height: None,
                retained: None,
            })
        }
        other => Err(MetaDecodeError::Unsupported(other)),
    }
}

/// Static parameters fixed at format time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks on the device (`sector_count * sector_bytes / BLOCK_BYTES`).
    pub block_count: u64,
    /// Checkpoint chunk size in bytes, a multiple of `BLOCK_BYTES`.
    pub chunk_bytes: u32,
    /// Pool segment size in blocks.
    pub pool_segment_blocks: u32,
}

/// One superblock copy, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Increases by one per commit.
    pub sequence: u64,
    /// Checksum of the superblock with `sequence - 1` (zero for the first).
    pub parent: Hash,
    /// Geometry fixed at format.
    pub geometry: Geometry,
    /// The two copies of the meta record.
    pub meta: BlobRef,
}

impl Superblock {
    /// Encodes copy `copy` into the first `SUPERBLOCK_BYTES` of `out`.
    pub fn encode(&self, copy: u32, out: &mut [u8]) {
        assert!(out.len() >= SUPERBLOCK_BYTES);
        out.fill(0);
        out[0..8].copy_from_slice(&SUPERBLOCK_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        out[24..56].copy_from_slice(&self.parent);
        out[56..60].copy_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
        out[60..64].copy_from_slice(&self.geometry.chunk_bytes.to_le_bytes());
        out[64..72].copy_from_slice(&self.geometry.block_count.to_le_bytes());
        out[72..76].copy_from_slice(&self.geometry.pool_segment_blocks.to_le_bytes());
        out[80..88].copy_from_slice(&self.meta.copies[0].to_le_bytes());
        out[88..96].copy_from_slice(&self.meta.copies[1].to_le_bytes());
        out[96..100].copy_from_slice(&self.meta.blocks.to_le_bytes());
        out[100..104].copy_from_slice(&(self.meta.len as u32).to_le_bytes());
        out[104..136].copy_from_slice(&self.meta.hash);
        let checksum = superblock_checksum(out);
        out[SUPERBLOCK_CHECKSUM_OFFSET..SUPERBLOCK_BYTES].copy_from_slice(&checksum);
        out[SUPERBLOCK_COPY_OFFSET..SUPERBLOCK_COPY_OFFSET + 4]
            .copy_from_slice(&copy.to_le_bytes());
    }

    /// Decodes a copy, checking magic, version, checksum and that it sits where it claims to
    /// (`expected_copy`). Returns the superblock and its checksum (the next one's `parent`).
    pub fn decode(bytes: &[u8], expected_copy: u32) -> Option<(Superblock, Hash)> {
        let b = bytes.get(..SUPERBLOCK_BYTES)?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let hash_at = |o: usize| {
            let mut a = [0u8; 32];
            a.copy_from_slice(&b[o..o + 32]);
            a
        };
        if b[0..8] != SUPERBLOCK_MAGIC || u32_at(8) != FORMAT_VERSION {
            return None;
        }
        let checksum = hash_at(SUPERBLOCK_CHECKSUM_OFFSET);
        if superblock_checksum(b) != checksum || u32_at(SUPERBLOCK_COPY_OFFSET) != expected_copy {
            return None;
        }
        if u32_at(56) as usize != BLOCK_BYTES {
            return None;
        }
        let sb = Superblock {
            sequence: u64_at(16),
            parent: hash_at(24),
            geometry: Geometry {
                chunk_bytes: u32_at(60),
                block_count: u64_at(64),
                pool_segment_blocks: u32_at(72),
            },
            meta: BlobRef {
                copies: [u64_at(80), u64_at(88)],
                blocks: u32_at(96),
                len: u64::from(u32_at(100)),
                hash: hash_at(104),
            },
        };
        Some((sb, checksum))
    }
}

/// Checksum of a superblock: every meaningful byte except the copy index and the checksum.
fn superblock_checksum(bytes: &[u8]) -> Hash {
    let mut covered = [0u8; SUPERBLOCK_CHECKSUM_OFFSET];
    covered.copy_from_slice(&bytes[..SUPERBLOCK_CHECKSUM_OFFSET]);
    covered[SUPERBLOCK_COPY_OFFSET..SUPERBLOCK_COPY_OFFSET + 4].fill(0);
    hash_with_domain("cairn-superblock", &[&covered])
}

/// Blocks needed for `bytes` bytes (at least one).
pub fn blocks_for(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK_BYTES as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_round_trip_and_copy_check() {
        let sb = Superblock {
            sequence: 7,
            parent: [3; 32],
            geometry: Geometry {
                block_count: 1000,
                chunk_bytes: 1 << 20,
                pool_segment_blocks: 256,
            },
            meta: BlobRef {
                copies: [10, 20],
                blocks: 2,
                len: 5000,
                hash: [9; 32],
            },
        };
        let mut buf = [0u8; 512];
        sb.encode(2, &mut buf);
        let (decoded, checksum) = Superblock::decode(&buf, 2).unwrap();
        assert_eq!(decoded, sb);
        // The copy index is outside the checksum: every copy has the same checksum.
        let mut other = [0u8; 512];
        sb.encode(0, &mut other);
        assert_eq!(Superblock::decode(&other, 0).unwrap().1, checksum);
        // A copy read from the wrong place (misdirected) is rejected.
        assert!(Superblock::decode(&buf, 1).is_none());
        buf[40] ^= 1;
        assert!(Superblock::decode(&buf, 2).is_none());
    }
}
