//! The consensus pool log: append-only segments of `(height, kind, bytes)` records.
//!
//! Records are buffered by `Store::pool_append` and made durable in one batch by
//! `Store::pool_sync`. A batch starts on a fresh block, so appending never rewrites a block that
//! holds durable records (a torn append can only lose the batch being appended). Each segment
//! has two mirrored copies written in lockstep; recovery takes, batch by batch, whichever copy
//! verifies, and rewrites the other from it.
//!
//! ```text
//! batch (block-aligned within its segment; padded with zeros to whole blocks)
//! off  size  field
//!   0     8  magic "CAIRNLG\x01"
//!   8     4  batch format version (1)
//!  12     4  record count
//!  16     8  segment id (unique per segment, never reused)
//!  24     8  batch sequence within the segment (0, 1, 2, ...)
//!  32     8  body bytes
//!  40    32  checksum of the previous batch in the segment; for the first batch
//!            H(dsep("cairn-pool-segment") · u64 format nonce · u64 segment id), so batches
//!            left by an earlier format of the device never verify
//!  72    32  checksum = H(dsep("cairn-pool-batch") · bytes[0..72] · body)
//! 104     …  body: records, each u64 height · u32 kind · u32 len · len bytes
//! ```
//! The segment id, sequence and parent checksum chain the batches, so stale bytes left from an
//! earlier use of the blocks, or a batch read from the wrong place, never verify.

use super::device::{read_blocks, write_blocks, BlockDevice, DeviceError};
use super::format::{blocks_for, hash_with_domain, Hash, SegmentRef, BLOCK_BYTES};
use super::{Store, StoreError};
use alloc::vec;
use alloc::vec::Vec;

/// Largest pool record payload, in bytes.
pub const POOL_RECORD_BYTES_MAX: usize = 1 << 20;
/// Bytes of a batch header.
pub const BATCH_HEADER_BYTES: usize = 104;
/// Bytes of a record header inside a batch body.
pub const RECORD_HEADER_BYTES: usize = 16;

const BATCH_MAGIC: [u8; 8] = *b"CAIRNLG\x01";
const BATCH_VERSION: u32 = 1;

/// One consensus pool artifact, opaque to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRecord {
    /// Height the artifact belongs to (purge and replay are by height).
    pub height: u64,
    /// The artifact kind, defined by the consensus layer.
    pub kind: u32,
    /// The encoded artifact (its own version lives in its encoding).
    pub bytes: Vec<u8>,
}

impl PoolRecord {
    /// Bytes this record takes in a batch body.
    pub fn encoded_bytes(&self) -> usize {
        RECORD_HEADER_BYTES + self.bytes.len()
    }
}

/// A pool batch copy that failed verification while its twin verified (then rewritten).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolFault {
    /// Segment id.
    pub segment: u64,
    /// Batch sequence within the segment.
    pub batch: u64,
    /// Which copy (0 or 1) was bad.
    pub copy: usize,
}

/// Where appends to a segment continue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentTail {
    pub used_blocks: u64,
    pub next_batch: u64,
    pub prev: Hash,
    /// Highest record height in the segment (0 when empty).
    pub max_height: u64,
}

impl SegmentTail {
    /// The tail of a segment with no batch yet.
    pub fn empty(format_nonce: u64, segment: u64) -> Self {
        let genesis = hash_with_domain(
            "cairn-pool-segment",
            &[&format_nonce.to_le_bytes(), &segment.to_le_bytes()],
        );
        SegmentTail {
            used_blocks: 0,
            next_batch: 0,
            prev: genesis,
            max_height: 0,
        }
    }
}

/// Encodes a batch padded to whole blocks; returns the bytes and its checksum.
pub(crate) fn encode_batch(
    segment: u64,
    batch: u64,
    prev: &Hash,
    records: &[PoolRecord],
) -> (Vec<u8>, Hash) {
    let body_bytes: usize = records.iter().map(PoolRecord::encoded_bytes).sum();
    let total = BATCH_HEADER_BYTES + body_bytes;
    let mut out = vec![0u8; blocks_for(total as u64) as usize * BLOCK_BYTES];
    out[0..8].copy_from_slice(&BATCH_MAGIC);
    out[8..12].copy_from_slice(&BATCH_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(records.len() as u32).to_le_bytes());
    out[16..24].copy_from_slice(&segment.to_le_bytes());
    out[24..32].copy_from_slice(&batch.to_le_bytes());
    out[32..40].copy_from_slice(&(body_bytes as u64).to_le_bytes());
    out[40..72].copy_from_slice(prev);
    let mut at = BATCH_HEADER_BYTES;
    for r in records {
        out[at..at + 8].copy_from_slice(&r.height.to_le_bytes());
        out[at + 8..at + 12].copy_from_slice(&r.kind.to_le_bytes());
        out[at + 12..at + 16].copy_from_slice(&(r.bytes.len() as u32).to_le_bytes());
        out[at + 16..at + 16 + r.bytes.len()].copy_from_slice(&r.bytes);
        at += r.encoded_bytes();
    }
    let checksum = batch_checksum(&out[..72], &out[BATCH_HEADER_BYTES..total]);
    out[72..104].copy_from_slice(&checksum);
    (out, checksum)
}

fn batch_checksum(header: &[u8], body: &[u8]) -> Hash {
    hash_with_domain("cairn-pool-batch", &[header, body])
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// A verified batch read from one copy.
struct ReadBatch {
    raw: Vec<u8>,
    checksum: Hash,
    records: Vec<PoolRecord>,
}

/// Reads and verifies the batch expected at `block` (one copy); `Ok(None)` if it does not verify.
fn read_batch<D: BlockDevice + ?Sized>(
    dev: &mut D,
    block: u64,
    room_blocks: u64,
    expect: (u64, u64, &Hash),
) -> Result<Option<ReadBatch>, DeviceError> {
    let mut head = vec![0u8; BLOCK_BYTES];
    match read_blocks(dev, block, &mut head) {
        Ok(()) => {}
        Err(DeviceError::Io) => return Ok(None),
        Err(e) => return Err(e),
    }
    let (segment, batch, prev) = expect;
    let header_ok = head[0..8] == BATCH_MAGIC
        && u32_at(&head, 8) == Some(BATCH_VERSION)
        && u64_at(&head, 16) == Some(segment)
        && u64_at(&head, 24) == Some(batch)
        && &head[40..72] == prev;
    let Some(body_bytes) = u64_at(&head, 32).filter(|_| header_ok) else {
        return Ok(None);
    };
    let total = (BATCH_HEADER_BYTES as u64).saturating_add(body_bytes);
    let blocks = blocks_for(total);
    if blocks > room_blocks {
        return Ok(None);
    }
    let mut raw = vec![0u8; blocks as usize * BLOCK_BYTES];
    match read_blocks(dev, block, &mut raw) {
        Ok(()) => {}
        Err(DeviceError::Io) => return Ok(None),
        Err(e) => return Err(e),
    }
    let body = &raw[BATCH_HEADER_BYTES..total as usize];
    let checksum: Hash = raw[72..104].try_into().unwrap_or([0; 32]);
    if raw[..72] != head[..72] || batch_checksum(&raw[..72], body) != checksum {
        return Ok(None);
    }
    let count = u32_at(&raw, 12).unwrap_or(0);
    let Some(records) = decode_records(body, count) else {
        return Ok(None);
    };
    Ok(Some(ReadBatch {
        raw,
        checksum,
        records,
    }))
}

fn decode_records(body: &[u8], count: u32) -> Option<Vec<PoolRecord>> {
    let mut records = Vec::new();
    let mut at = 0usize;
    for _ in 0..count {
        let height = u64_at(body, at)?;
        let kind = u32_at(body, at + 8)?;
        let len = u32_at(body, at + 12)? as usize;
        let bytes = body.get(at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + len)?;
        records.push(PoolRecord {
            height,
            kind,
            bytes: bytes.to_vec(),
        });
        at += RECORD_HEADER_BYTES + len;
    }
    (at == body.len()).then_some(records)
}

/// Scans one segment from its start, appending its records to `out` and its copy faults to
/// `faults`; rewrites a bad copy of a batch from its good twin (not flushed here).
pub(crate) fn scan_segment<D: BlockDevice + ?Sized>(
    dev: &mut D,
    format_nonce: u64,
    segment: &SegmentRef,
    out: &mut Vec<PoolRecord>,
    faults: &mut Vec<PoolFault>,
) -> Result<SegmentTail, DeviceError> {
    let mut tail = SegmentTail::empty(format_nonce, segment.id);
    let size = u64::from(segment.blocks);
    while tail.used_blocks < size {
        let room = size - tail.used_blocks;
        let expect = (segment.id, tail.next_batch, &tail.prev);
        let mut copies = [None, None];
        for (copy, slot) in copies.iter_mut().enumerate() {
            let block = segment.copies[copy] + tail.used_blocks;
            *slot = read_batch(dev, block, room, expect)?;
        }
        let good_copy = match (&copies[0], &copies[1]) {
            (Some(_), _) => 0,
            (None, Some(_)) => 1,
            (None, None) => break,
        };
        let bad_copy = 1 - good_copy;
        let Some(good) = copies[good_copy].take() else {
            break;
        };
        if copies[bad_copy].is_none() {
            faults.push(PoolFault {
                segment: segment.id,
                batch: tail.next_batch,
                copy: bad_copy,
            });
            write_blocks(dev, segment.copies[bad_copy] + tail.used_blocks, &good.raw)?;
        }
        for r in &good.records {
            tail.max_height = tail.max_height.max(r.height);
        }
        out.extend(good.records);
        tail.used_blocks += (good.raw.len() / BLOCK_BYTES) as u64;
        tail.next_batch += 1;
        tail.prev = good.checksum;
    }
    Ok(tail)
}

impl<D: BlockDevice> Store<D> {
    /// Buffers a record; it becomes durable at the next `pool_sync`.
    pub fn pool_append(&mut self, height: u64, kind: u32, bytes: &[u8]) -> Result<(), StoreError> {
        self.check_usable()?;
        let room = u64::from(self.geometry.pool_segment_blocks) * BLOCK_BYTES as u64;
        let needed = (BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + bytes.len()) as u64;
        if bytes.len() > POOL_RECORD_BYTES_MAX || needed > room {
            return Err(StoreError::RecordTooLarge);
        }
        if self.pending_bytes + bytes.len() > super::POOL_PENDING_BYTES_MAX {
            return Err(StoreError::PoolFull);
        }
        self.pending_bytes += bytes.len();
        self.pending.push(PoolRecord {
            height,
            kind,
            bytes: bytes.to_vec(),
        });
        Ok(())
    }

    /// Makes every appended record durable (one batch per segment touched, then one flush).
    pub fn pool_sync(&mut self) -> Result<(), StoreError> {
        self.check_usable()?;
        let mut pending = core::mem::take(&mut self.pending);
        let result = self.write_pending(&mut pending);
        // What was not written stays buffered (after a device error the store is poisoned).
        pending.append(&mut self.pending);
        self.pending = pending;
        self.pending_bytes = self.pending.iter().map(|r| r.bytes.len()).sum();
        result
    }

    fn write_pending(&mut self, pending: &mut Vec<PoolRecord>) -> Result<(), StoreError> {
        let mut staged: Option<(usize, SegmentTail)> = None;
        while !pending.is_empty() {
            let (index, mut tail) = match staged.take() {
                Some(s) => s,
                None => self.current_segment()?,
            };
            let room = u64::from(self.geometry.pool_segment_blocks) - tail.used_blocks;
            let take = records_fitting(pending, room);
            if take == 0 {
                // The segment is full: make the staged batch durable, then open a new one.
                self.persist_tail(index, tail)?;
                self.open_segment()?;
                continue;
            }
            let batch: Vec<PoolRecord> = pending.drain(..take).collect();
            let segment = self.meta.segments[index];
            let (raw, checksum) = encode_batch(segment.id, tail.next_batch, &tail.prev, &batch);
            for copy in segment.copies {
                let r = write_blocks(&mut self.dev, copy + tail.used_blocks, &raw);
                self.poison(r)?;
            }
            tail.used_blocks += (raw.len() / BLOCK_BYTES) as u64;
            tail.next_batch += 1;
            tail.prev = checksum;
            tail.max_height = batch
                .iter()
                .map(|r| r.height)
                .fold(tail.max_height, u64::max);
            staged = Some((index, tail));
        }
        if let Some((index, tail)) = staged {
            self.persist_tail(index, tail)?;
        }
        Ok(())
    }

    /// Flushes, then records the new tail of segment `index`.
    fn persist_tail(&mut self, index: usize, tail: SegmentTail) -> Result<(), StoreError> {
        let r = self.dev.flush();
        self.poison(r)?;
        self.tails[index] = tail;
        Ok(())
    }

    /// The segment appends go to, opening the first one if there is none.
    fn current_segment(&mut self) -> Result<(usize, SegmentTail), StoreError> {
        if self.meta.segments.is_empty() {
            self.open_segment()?;
        }
        let index = self.meta.segments.len() - 1;
        Ok((index, self.tails[index]))
    }

    /// Allocates a new segment and commits a meta naming it (before anything is written to it).
    fn open_segment(&mut self) -> Result<(), StoreError> {
        if self.meta.segments.len() >= super::SEGMENTS_MAX {
            return Err(StoreError::PoolFull);
        }
        let blocks = u64::from(self.geometry.pool_segment_blocks);
        let a = self.alloc_high(blocks)?;
        let b = match self.alloc_high(blocks) {
            Ok(b) => b,
            Err(e) => {
                self.rebuild_space();
                return Err(e);
            }
        };
        let mut meta = self.meta.clone();
        let id = meta.next_segment_id;
        meta.segments.push(SegmentRef {
            id,
            copies: [a.start, b.start],
            blocks: blocks as u32,
        });
        meta.next_segment_id += 1;
        self.commit(meta)?;
        self.tails
            .push(SegmentTail::empty(self.meta.format_nonce, id));
        Ok(())
    }

    /// Forgets pool records below `height`: segments holding only such records are freed
    /// (atomically, by a commit); records below it in kept segments are no longer returned.
    pub fn pool_purge_below(&mut self, height: u64) -> Result<(), StoreError> {
        self.check_usable()?;
        if height <= self.meta.purged_below {
            return Ok(());
        }
        let last = self.meta.segments.len().saturating_sub(1);
        let keep: Vec<bool> = (0..self.meta.segments.len())
            .map(|i| i == last || self.tails[i].max_height >= height)
            .collect();
        let mut meta = self.meta.clone();
        meta.purged_below = height;
        meta.segments = self
            .meta
            .segments
            .iter()
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|(s, _)| *s)
            .collect();
        self.commit(meta)?;
        let tails = core::mem::take(&mut self.tails);
        self.tails = tails
            .into_iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(t, _)| t)
            .collect();
        Ok(())
    }

    /// Records appended but not yet synced.
    pub fn pool_pending(&self) -> usize {
        self.pending.len()
    }

    /// Height below which pool records are purged.
    pub fn pool_purged_below(&self) -> u64 {
        self.meta.purged_below
    }
}

/// How many of the first `records` fit in one batch of at most `room_blocks` blocks.
fn records_fitting(records: &[PoolRecord], room_blocks: u64) -> usize {
    let room = room_blocks as usize * BLOCK_BYTES;
    let mut bytes = BATCH_HEADER_BYTES;
    let mut n = 0;
    for r in records {
        bytes += r.encoded_bytes();
        if bytes > room {
            break;
        }
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_and_chain() {
        let records = [
            PoolRecord {
                height: 5,
                kind: 1,
                bytes: vec![7; 100],
            },
            PoolRecord {
                height: 6,
                kind: 2,
                bytes: vec![],
            },
        ];
        let (raw, _) = encode_batch(3, 0, &[0; 32], &records);
        assert_eq!(raw.len(), BLOCK_BYTES);
        let body_end = BATCH_HEADER_BYTES + 116 + 16;
        assert_eq!(
            decode_records(&raw[BATCH_HEADER_BYTES..body_end], 2).unwrap(),
            records
        );
    }
}
