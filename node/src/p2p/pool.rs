//! The artifact pool: a validated and an unvalidated section, each keyed by [`ArtifactId`]
//! (so per artifact kind, by height). Unvalidated artifacts are charged to the peer that
//! delivered them, within a per-peer budget, so one peer cannot crowd out the others.

use super::ArtifactId;
use crate::types::NodeIndex;
use alloc::collections::BTreeMap;
use core::fmt;
use core::ops::Bound::{self, Excluded, Included};

/// Unvalidated artifacts one peer may have in the pool.
pub const UNVALIDATED_ARTIFACTS_PER_PEER_MAX: usize = 4096;
/// Unvalidated bytes one peer may have in the pool.
pub const UNVALIDATED_BYTES_PER_PEER_MAX: usize = 16 * 1024 * 1024;

/// What the pool needs to know about an artifact.
pub trait PoolArtifact: Clone {
    fn id(&self) -> ArtifactId;
    fn size_bytes(&self) -> usize;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// The pool already holds it (either section).
    Duplicate,
    /// The delivering peer's budget is spent.
    PeerBudget,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolError::Duplicate => "artifact already in pool",
            PoolError::PeerBudget => "peer's unvalidated pool budget is spent",
        })
    }
}

#[derive(Clone, Copy, Default)]
struct Budget {
    count: usize,
    bytes: usize,
}

/// Validated and unvalidated artifacts.
pub struct ArtifactPool<A> {
    validated: BTreeMap<ArtifactId, A>,
    unvalidated: BTreeMap<ArtifactId, (NodeIndex, A)>,
    budgets: BTreeMap<NodeIndex, Budget>,
}

impl<A: PoolArtifact> Default for ArtifactPool<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: PoolArtifact> ArtifactPool<A> {
    pub fn new() -> Self {
        ArtifactPool {
            validated: BTreeMap::new(),
            unvalidated: BTreeMap::new(),
            budgets: BTreeMap::new(),
        }
    }

    pub fn contains(&self, id: &ArtifactId) -> bool {
        self.validated.contains_key(id) || self.unvalidated.contains_key(id)
    }

    pub fn is_validated(&self, id: &ArtifactId) -> bool {
        self.validated.contains_key(id)
    }

    pub fn validated(&self, id: &ArtifactId) -> Option<&A> {
        self.validated.get(id)
    }

    pub fn unvalidated(&self, id: &ArtifactId) -> Option<&A> {
        self.unvalidated.get(id).map(|(_, a)| a)
    }

    /// Adds an artifact delivered by `from`, charging its budget.
    pub fn insert_unvalidated(&mut self, from: NodeIndex, artifact: A) -> Result<(), PoolError> {
        let id = artifact.id();
        if self.contains(&id) {
            return Err(PoolError::Duplicate);
        }
        let size = artifact.size_bytes();
        let budget = self.budgets.entry(from).or_default();
        if budget.count >= UNVALIDATED_ARTIFACTS_PER_PEER_MAX
            || budget.bytes + size > UNVALIDATED_BYTES_PER_PEER_MAX
        {
            return Err(PoolError::PeerBudget);
        }
        budget.count += 1;
        budget.bytes += size;
        self.unvalidated.insert(id, (from, artifact));
        Ok(())
    }

    /// Removes an unvalidated artifact (rejected, or about to be validated).
    pub fn remove_unvalidated(&mut self, id: &ArtifactId) -> Option<(NodeIndex, A)> {
        let (from, a) = self.unvalidated.remove(id)?;
        if let Some(b) = self.budgets.get_mut(&from) {
            b.count = b.count.saturating_sub(1);
            b.bytes = b.bytes.saturating_sub(a.size_bytes());
        }
        Some((from, a))
    }

    /// Removes a validated artifact (found invalid after all, e.g. in a failed aggregate).
    pub fn remove_validated(&mut self, id: &ArtifactId) -> Option<A> {
        self.validated.remove(id)
    }

    /// Adds a validated artifact (own, or one that passed validation); drops any
    /// unvalidated copy. Returns false if it was already validated.
    pub fn insert_validated(&mut self, artifact: A) -> bool {
        let id = artifact.id();
        self.remove_unvalidated(&id);
        self.validated.insert(id, artifact).is_none()
    }

    /// Validated artifacts of `kind` at `height`.
    pub fn validated_at(&self, kind: u8, height: u64) -> impl Iterator<Item = (&ArtifactId, &A)> {
        self.validated.range(bounds(kind, height, height))
    }

    /// Unvalidated artifacts of `kind` at `height`.
    pub fn unvalidated_at(&self, kind: u8, height: u64) -> impl Iterator<Item = (&ArtifactId, &A)> {
        self.unvalidated
            .range(bounds(kind, height, height))
            .map(|(id, (_, a))| (id, a))
    }

    /// Unvalidated artifacts of `kind` at heights `lo..=hi`.
    pub fn unvalidated_ids(&self, kind: u8, lo: u64, hi: u64) -> impl Iterator<Item = &ArtifactId> {
        self.unvalidated
            .range(bounds(kind, lo, hi))
            .map(|(id, _)| id)
    }

    /// Validated artifacts of `kind` at heights `lo..=hi`.
    pub fn validated_ids(&self, kind: u8, lo: u64, hi: u64) -> impl Iterator<Item = &ArtifactId> {
        self.validated.range(bounds(kind, lo, hi)).map(|(id, _)| id)
    }

    /// Drops everything of `kind` below `height` from both sections.
    pub fn purge_below(&mut self, kind: u8, height: u64) {
        let lo = ArtifactId::first(kind, 0);
        let hi = ArtifactId::first(kind, height);
        if height == 0 {
            return;
        }
        let doomed: alloc::vec::Vec<ArtifactId> =
            self.unvalidated.range(lo..hi).map(|(id, _)| *id).collect();
        for id in doomed {
            self.remove_unvalidated(&id);
        }
        let doomed: alloc::vec::Vec<ArtifactId> =
            self.validated.range(lo..hi).map(|(id, _)| *id).collect();
        for id in doomed {
            self.validated.remove(&id);
        }
    }

    pub fn validated_len(&self) -> usize {
        self.validated.len()
    }

    pub fn unvalidated_len(&self) -> usize {
        self.unvalidated.len()
    }
}

/// Ids of `kind` at heights `lo..=hi` (empty when `lo > hi`).
fn bounds(kind: u8, lo: u64, hi: u64) -> (Bound<ArtifactId>, Bound<ArtifactId>) {
    let start = ArtifactId::first(kind, lo);
    if lo > hi {
        return (Included(start), Excluded(start));
    }
    (Included(start), Included(ArtifactId::last(kind, hi)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct A(ArtifactId, usize);

    impl PoolArtifact for A {
        fn id(&self) -> ArtifactId {
            self.0
        }
        fn size_bytes(&self) -> usize {
            self.1
        }
    }

    fn id(kind: u8, h: u64, k: u8) -> ArtifactId {
        ArtifactId {
            kind,
            height: h,
            key: [k; 32],
            signer: u32::MAX,
        }
    }

    #[test]
    fn budgets_ranges_and_purge() {
        let mut pool = ArtifactPool::new();
        pool.insert_unvalidated(1, A(id(1, 5, 1), 10)).unwrap();
        assert_eq!(
            pool.insert_unvalidated(2, A(id(1, 5, 1), 10)),
            Err(PoolError::Duplicate)
        );
        assert_eq!(
            pool.insert_unvalidated(1, A(id(1, 6, 1), UNVALIDATED_BYTES_PER_PEER_MAX)),
            Err(PoolError::PeerBudget)
        );
        pool.insert_unvalidated(2, A(id(1, 6, 1), UNVALIDATED_BYTES_PER_PEER_MAX))
            .unwrap();
        assert!(pool.insert_validated(A(id(1, 5, 1), 10)));
        assert_eq!(pool.unvalidated_len(), 1);
        pool.insert_validated(A(id(2, 5, 3), 10));
        assert_eq!(pool.validated_at(1, 5).count(), 1);
        assert_eq!(pool.validated_at(2, 5).count(), 1);
        pool.purge_below(1, 7);
        assert_eq!(pool.validated_len(), 1);
        assert_eq!(pool.unvalidated_len(), 0);
        // The budget was refunded by the purge.
        pool.insert_unvalidated(2, A(id(1, 9, 1), UNVALIDATED_BYTES_PER_PEER_MAX))
            .unwrap();
    }
}
