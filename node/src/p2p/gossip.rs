//! Gossip bookkeeping: which adverts to answer with a request, and which requests are in
//! flight. An artifact is requested from one peer at a time; if it has not arrived within
//! [`REQUEST_TIMEOUT_MS`], the next advert of it (from any peer) requests it again.
//!
//! Small artifacts (shares, aggregates) are pushed whole by their creator instead, which
//! saves a round trip; adverts repair losses and serve peers that fell behind.

use super::ArtifactId;
use crate::types::{NodeIndex, Time};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Requests in flight across all peers.
pub const INFLIGHT_REQUESTS_MAX: usize = 2048;
/// Requests in flight to one peer.
pub const INFLIGHT_REQUESTS_PER_PEER_MAX: usize = 512;
/// How long a request may stay unanswered before the artifact is requested again.
pub const REQUEST_TIMEOUT_MS: u64 = 250;

/// Requests in flight.
#[derive(Default)]
pub struct Gossip {
    inflight: BTreeMap<ArtifactId, (NodeIndex, Time)>,
    per_peer: BTreeMap<NodeIndex, usize>,
}

impl Gossip {
    pub fn new() -> Gossip {
        Gossip::default()
    }

    /// Picks which advertised ids to request from `from`: those `wanted` says the pool lacks
    /// and that are not already requested, within the in-flight bounds.
    pub fn on_adverts(
        &mut self,
        from: NodeIndex,
        ids: &[ArtifactId],
        now: Time,
        mut wanted: impl FnMut(&ArtifactId) -> bool,
    ) -> Vec<ArtifactId> {
        self.expire(now);
        let mut out = Vec::new();
        for id in ids {
            if self.inflight.len() >= INFLIGHT_REQUESTS_MAX
                || self.per_peer.get(&from).copied().unwrap_or(0) >= INFLIGHT_REQUESTS_PER_PEER_MAX
            {
                break;
            }
            if self.inflight.contains_key(id) || !wanted(id) {
                continue;
            }
            self.inflight.insert(*id, (from, now));
            *self.per_peer.entry(from).or_default() += 1;
            out.push(*id);
        }
        out
    }

    /// An artifact arrived (or is no longer wanted).
    pub fn on_delivered(&mut self, id: &ArtifactId) {
        if let Some((peer, _)) = self.inflight.remove(id) {
            if let Some(c) = self.per_peer.get_mut(&peer) {
                *c = c.saturating_sub(1);
            }
        }
    }

    /// Forgets requests older than the timeout.
    pub fn expire(&mut self, now: Time) {
        let timeout_ns = REQUEST_TIMEOUT_MS * crate::types::NANOS_PER_MILLI;
        let stale: Vec<ArtifactId> = self
            .inflight
            .iter()
            .filter(|(_, (_, t))| now.saturating_sub(*t) >= timeout_ns)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.on_delivered(&id);
        }
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Drops requests of artifacts below `height` (purged).
    pub fn purge_below(&mut self, height: u64) {
        let stale: Vec<ArtifactId> = self
            .inflight
            .keys()
            .filter(|id| id.height < height)
            .copied()
            .collect();
        for id in stale {
            self.on_delivered(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_once_until_timeout() {
        let mut g = Gossip::new();
        let id = ArtifactId::first(1, 3);
        assert_eq!(g.on_adverts(1, &[id], Time(0), |_| true), alloc::vec![id]);
        assert!(g.on_adverts(2, &[id], Time(5), |_| true).is_empty());
        let later = Time::from_millis(REQUEST_TIMEOUT_MS + 1);
        assert_eq!(g.on_adverts(2, &[id], later, |_| true), alloc::vec![id]);
        g.on_delivered(&id);
        assert_eq!(g.inflight_len(), 0);
        assert!(g.on_adverts(2, &[id], later, |_| false).is_empty());
    }
}
