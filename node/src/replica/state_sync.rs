//! The client side of state sync over p2p: which peer to ask for what, when to give up on a
//! peer, and what to believe.
//!
//! A sync has a target: a height and either the state hash a CUP certified there
//! ([`SyncTarget::Certified`], see `persist::bind_checkpoint`) or the root of the node's own
//! checkpoint ([`SyncTarget::LocalRoot`], repair of chunks that failed their checksum).
//!
//! 1. Ask one peer for the manifest ([`UpperMessage::ManifestRequest`]); another one on
//!    timeout, on "unavailable", or when the manifest does not match the target.
//! 2. `Store::begin_state_sync` keeps every chunk the local checkpoint already holds (and that
//!    still verifies); the rest are requested, at most [`SYNC_CHUNKS_IN_FLIGHT_MAX`] at once and
//!    [`SYNC_CHUNKS_PER_PEER_MAX`] per peer, spread over the peers in turn.
//! 3. Each chunk is checked against the manifest by `Store::accept_chunk`; a wrong one is asked
//!    again from the next peer. A request unanswered after [`SYNC_REQUEST_TIMEOUT_MS`] too.
//!
//! Nothing a peer sends can make the node panic or accept a state the CUP did not certify.

use super::stack::UpperMessage;
use crate::store::{BlockDevice, Hash, Manifest, StateSync, Store, StoreError};
use crate::types::{CryptoHash, NodeId, Time};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

/// How long a manifest or chunk request may stay unanswered.
pub const SYNC_REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Chunk requests outstanding at once.
pub const SYNC_CHUNKS_IN_FLIGHT_MAX: usize = 8;
/// Chunk requests outstanding at once to one peer.
pub const SYNC_CHUNKS_PER_PEER_MAX: usize = 4;

/// What the synced state must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncTarget {
    /// The state hash a CUP certified at `height`: `bind(height, state hash, manifest root)`.
    Certified { height: u64, bound: CryptoHash },
    /// The node's own checkpoint at `height`, whose manifest root it trusts.
    LocalRoot { height: u64, root: Hash },
}

impl SyncTarget {
    pub fn height(&self) -> u64 {
        match self {
            SyncTarget::Certified { height, .. } | SyncTarget::LocalRoot { height, .. } => *height,
        }
    }
}

/// Counters of one sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncProgress {
    pub height: u64,
    pub chunks_total: u32,
    /// Chunks the local store already held.
    pub chunks_local: u32,
    /// Chunks fetched from peers.
    pub chunks_fetched: u32,
    /// Bytes of chunks fetched from peers.
    pub bytes_fetched: u64,
    /// Manifests or chunks from peers that did not verify.
    pub rejected: u32,
    /// Requests that timed out.
    pub timeouts: u32,
}

enum Phase {
    Manifest {
        asked: Option<(NodeId, Time)>,
    },
    Chunks {
        sync: StateSync,
        state_hash: CryptoHash,
        queue: VecDeque<u32>,
        in_flight: BTreeMap<u32, (NodeId, Time)>,
    },
}

/// One state sync in progress.
pub struct SyncClient {
    target: SyncTarget,
    peers: Vec<NodeId>,
    cursor: usize,
    phase: Phase,
    progress: SyncProgress,
}

/// A finished sync: the checkpoint is durable in the store.
pub struct SyncDone {
    pub height: u64,
    /// The execution state hash the peer claimed (checked against the CUP for a
    /// [`SyncTarget::Certified`] target; recomputed from the files in any case).
    pub state_hash: CryptoHash,
    pub root: Hash,
    pub progress: SyncProgress,
}

impl SyncClient {
    pub fn new(target: SyncTarget, peers: Vec<NodeId>, rotation: usize) -> SyncClient {
        let cursor = if peers.is_empty() {
            0
        } else {
            rotation % peers.len()
        };
        SyncClient {
            target,
            peers,
            cursor,
            phase: Phase::Manifest { asked: None },
            progress: SyncProgress {
                height: target.height(),
                ..SyncProgress::default()
            },
        }
    }

    pub fn target(&self) -> SyncTarget {
        self.target
    }

    pub fn progress(&self) -> SyncProgress {
        self.progress
    }

    /// The next time [`SyncClient::tick`] has work.
    pub fn deadline(&self) -> Option<Time> {
        match &self.phase {
            Phase::Manifest { asked } => {
                Some(asked.map_or(Time(0), |(_, t)| t.plus_millis(SYNC_REQUEST_TIMEOUT_MS)))
            }
            Phase::Chunks { in_flight, .. } => in_flight
                .values()
                .map(|(_, t)| t.plus_millis(SYNC_REQUEST_TIMEOUT_MS))
                .min(),
        }
    }

    fn next_peer(&mut self) -> Option<NodeId> {
        if self.peers.is_empty() {
            return None;
        }
        self.cursor = (self.cursor + 1) % self.peers.len();
        Some(self.peers[self.cursor])
    }

    /// Expires requests and sends new ones.
    pub fn tick(&mut self, now: Time, out: &mut Vec<(NodeId, UpperMessage)>) {
        let height = self.target.height();
        let timed_out = |t: Time| now >= t.plus_millis(SYNC_REQUEST_TIMEOUT_MS);
        let mut rotate = false;
        match &mut self.phase {
            Phase::Manifest { asked } => {
                if asked.is_none_or(|(_, t)| timed_out(t)) {
                    if asked.is_some() {
                        self.progress.timeouts += 1;
                    }
                    *asked = None;
                    rotate = true;
                }
            }
            Phase::Chunks {
                queue, in_flight, ..
            } => {
                let expired: Vec<u32> = in_flight
                    .iter()
                    .filter(|(_, (_, t))| timed_out(*t))
                    .map(|(i, _)| *i)
                    .collect();
                for i in expired {
                    in_flight.remove(&i);
                    queue.push_back(i);
                    self.progress.timeouts += 1;
                }
            }
        }
        if rotate {
            if let Some(peer) = self.next_peer() {
                out.push((peer, UpperMessage::ManifestRequest { height }));
                self.phase = Phase::Manifest {
                    asked: Some((peer, now)),
                };
            }
            return;
        }
        self.request_chunks(now, out);
    }

    fn request_chunks(&mut self, now: Time, out: &mut Vec<(NodeId, UpperMessage)>) {
        let height = self.target.height();
        let n = self.peers.len();
        let Phase::Chunks {
            queue, in_flight, ..
        } = &mut self.phase
        else {
            return;
        };
        let mut tried = 0;
        while in_flight.len() < SYNC_CHUNKS_IN_FLIGHT_MAX && tried < n {
            let Some(&index) = queue.front() else {
                return;
            };
            self.cursor = (self.cursor + 1) % n.max(1);
            let Some(&peer) = self.peers.get(self.cursor) else {
                return;
            };
            let load = in_flight.values().filter(|(p, _)| *p == peer).count();
            if load >= SYNC_CHUNKS_PER_PEER_MAX {
                tried += 1;
                continue;
            }
            tried = 0;
            queue.pop_front();
            in_flight.insert(index, (peer, now));
            out.push((peer, UpperMessage::ChunkRequest { height, index }));
        }
    }

    /// A manifest from `from`. Bad or unexpected data is ignored (and counted): the request
    /// then times out and goes to another peer.
    #[allow(clippy::too_many_arguments)]
    pub fn on_manifest<D: BlockDevice>(
        &mut self,
        store: &mut Store<D>,
        from: NodeId,
        height: u64,
        state_hash: CryptoHash,
        bytes: &[u8],
        now: Time,
        out: &mut Vec<(NodeId, UpperMessage)>,
    ) -> Result<(), StoreError> {
        let Phase::Manifest { asked } = &self.phase else {
            return Ok(());
        };
        if height != self.target.height() || asked.is_none_or(|(p, _)| p != from) {
            return Ok(());
        }
        let reject = |s: &mut Self, out: &mut Vec<(NodeId, UpperMessage)>| {
            s.progress.rejected += 1;
            s.phase = Phase::Manifest { asked: None };
            s.tick(now, out);
        };
        let Ok(manifest) = Manifest::from_bytes(bytes) else {
            reject(self, out);
            return Ok(());
        };
        let root = manifest.root_hash();
        let matches = match self.target {
            SyncTarget::Certified { height, bound } => {
                super::persist::bind_checkpoint(height, &state_hash, &root) == bound
            }
            SyncTarget::LocalRoot { root: r, .. } => r == root,
        };
        if !matches {
            reject(self, out);
            return Ok(());
        }
        let sync = match store.begin_state_sync(height, &root, manifest) {
            Ok(sync) => sync,
            Err(StoreError::Manifest(_)) => {
                reject(self, out);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let stats = sync.stats();
        self.progress.chunks_total = stats.chunks_total;
        self.progress.chunks_local = stats.chunks_local;
        let queue = sync.missing_chunks().into_iter().collect();
        self.phase = Phase::Chunks {
            sync,
            state_hash,
            queue,
            in_flight: BTreeMap::new(),
        };
        self.request_chunks(now, out);
        Ok(())
    }

    /// `from` does not have the state: ask elsewhere at once.
    pub fn on_unavailable(
        &mut self,
        from: NodeId,
        height: u64,
        now: Time,
        out: &mut Vec<(NodeId, UpperMessage)>,
    ) {
        if height != self.target.height() {
            return;
        }
        match &mut self.phase {
            Phase::Manifest { asked } => {
                if asked.is_some_and(|(p, _)| p == from) {
                    *asked = None;
                    self.tick(now, out);
                }
            }
            Phase::Chunks {
                queue, in_flight, ..
            } => {
                let theirs: Vec<u32> = in_flight
                    .iter()
                    .filter(|(_, (p, _))| *p == from)
                    .map(|(i, _)| *i)
                    .collect();
                for i in theirs {
                    in_flight.remove(&i);
                    queue.push_back(i);
                }
                self.request_chunks(now, out);
            }
        }
    }

    /// Chunk `index` from `from`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_chunk<D: BlockDevice>(
        &mut self,
        store: &mut Store<D>,
        from: NodeId,
        height: u64,
        index: u32,
        bytes: &[u8],
        now: Time,
        out: &mut Vec<(NodeId, UpperMessage)>,
    ) -> Result<(), StoreError> {
        if height != self.target.height() {
            return Ok(());
        }
        let Phase::Chunks {
            sync,
            queue,
            in_flight,
            ..
        } = &mut self.phase
        else {
            return Ok(());
        };
        if in_flight.get(&index).is_none_or(|(p, _)| *p != from) {
            return Ok(());
        }
        in_flight.remove(&index);
        match store.accept_chunk(sync, index, bytes) {
            Ok(fresh) => {
                if fresh {
                    self.progress.chunks_fetched += 1;
                    self.progress.bytes_fetched += bytes.len() as u64;
                }
            }
            Err(StoreError::ChunkMismatch(_) | StoreError::NotFound) => {
                self.progress.rejected += 1;
                queue.push_back(index);
            }
            Err(e) => return Err(e),
        }
        self.request_chunks(now, out);
        Ok(())
    }

    /// Whether every chunk is in.
    pub fn is_complete(&self) -> bool {
        matches!(&self.phase, Phase::Chunks { sync, .. } if sync.is_complete())
    }

    /// Commits a complete sync (see [`SyncClient::is_complete`]) as the store's checkpoint.
    pub fn finish<D: BlockDevice>(self, store: &mut Store<D>) -> Result<SyncDone, StoreError> {
        let Phase::Chunks {
            sync, state_hash, ..
        } = self.phase
        else {
            return Err(StoreError::SyncState);
        };
        let height = sync.height();
        let root = store.commit_state_sync(sync)?;
        Ok(SyncDone {
            height,
            state_hash,
            root,
            progress: self.progress,
        })
    }

    /// Gives up; chunks written so far are freed.
    pub fn abort<D: BlockDevice>(self, store: &mut Store<D>) {
        if let Phase::Chunks { sync, .. } = self.phase {
            store.abort_state_sync(sync);
        }
    }
}
