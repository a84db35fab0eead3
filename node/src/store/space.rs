//! Free space: which blocks of the data area no durable structure references.
//!
//! The store never persists a free list. Free space is derived from the references of the
//! durable meta (plus the extents an unfinished state sync holds), so after a crash it is
//! recomputed exactly, and an extent becomes reusable only once no durable superblock can lead
//! to it: the derivation is redone after each commit, when the previous meta is no longer
//! reachable (see the module docs of `store`, "Reclamation").

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// A run of whole blocks: `start..start + blocks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Extent {
    /// First block.
    pub start: u64,
    /// Number of blocks (at least 1).
    pub blocks: u64,
}

impl Extent {
    /// One past the last block.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.blocks)
    }
}

/// First-fit allocator over the free runs between `first_block` and `block_count`.
#[derive(Clone, Debug, Default)]
pub struct FreeSpace {
    /// Free runs, keyed by first block, never adjacent or overlapping.
    runs: BTreeMap<u64, u64>,
}

impl FreeSpace {
    /// Free space of `first_block..block_count` minus every extent in `used`.
    pub fn derive(first_block: u64, block_count: u64, mut used: Vec<Extent>) -> Self {
        used.sort_unstable();
        let mut runs = BTreeMap::new();
        let mut cursor = first_block;
        for extent in used {
            if extent.start > cursor {
                runs.insert(cursor, extent.start.min(block_count) - cursor);
            }
            cursor = cursor.max(extent.end());
            if cursor >= block_count {
                break;
            }
        }
        if cursor < block_count {
            runs.insert(cursor, block_count - cursor);
        }
        FreeSpace { runs }
    }

    /// Takes `blocks` contiguous blocks, first fit; `None` if no run is long enough.
    pub fn alloc(&mut self, blocks: u64) -> Option<Extent> {
        assert!(blocks > 0);
        let (&start, &len) = self.runs.iter().find(|(_, &len)| len >= blocks)?;
        self.runs.remove(&start);
        if len > blocks {
            self.runs.insert(start + blocks, len - blocks);
        }
        Some(Extent { start, blocks })
    }

    /// Takes `blocks` contiguous blocks from the highest run that fits (last fit). Small,
    /// short-lived structures (meta, manifests, CUPs, pool segments) are taken from the top so
    /// they do not fragment the runs chunks are taken from at the bottom.
    pub fn alloc_high(&mut self, blocks: u64) -> Option<Extent> {
        assert!(blocks > 0);
        let (&start, &len) = self.runs.iter().rev().find(|(_, &len)| len >= blocks)?;
        self.runs.remove(&start);
        if len > blocks {
            self.runs.insert(start, len - blocks);
        }
        Some(Extent {
            start: start + len - blocks,
            blocks,
        })
    }

    /// Total free blocks.
    pub fn free_blocks(&self) -> u64 {
        self.runs.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn derive_alloc_release_round_trip() {
        let used = vec![
            Extent {
                start: 10,
                blocks: 5,
            },
            Extent {
                start: 12,
                blocks: 2,
            },
            Extent {
                start: 30,
                blocks: 10,
            },
        ];
        let mut space = FreeSpace::derive(4, 50, used);
        assert_eq!(space.free_blocks(), 6 + 15 + 10);
        let a = space.alloc(10).unwrap();
        assert_eq!(
            a,
            Extent {
                start: 15,
                blocks: 10
            }
        );
        assert!(space.alloc(16).is_none());
        assert_eq!(space.free_blocks(), 21);
        assert_eq!(space.alloc(6).unwrap().start, 4);
        assert_eq!(
            space.alloc_high(3),
            Some(Extent {
                start: 47,
                blocks: 3
            })
        );
        assert_eq!(space.free_blocks(), 12);
    }
}
