//! The sans-IO replica: one node of a subnet, tying channels, gossip and consensus together.
//!
//! A driver (the kernel's runtime loop, or the simulator) owns the sockets and the clock:
//!
//! ```text
//! let mut r = Replica::new(config, now)?;
//! loop {
//!     // 1. feed inputs, each with the current time
//!     r.handle_peer_bytes(peer, &bytes, now);      // bytes read from peer's stream
//!     r.handle_timeout(now);                       // whenever now >= r.poll_deadline()
//!     r.submit_ingress(msg);                       // from the HTTP API
//!     // 2. drain outputs
//!     while let Some((peer, bytes)) = r.poll_transmit() { write bytes to peer's stream }
//!     while let Some(block) = r.poll_finalized() { hand to message routing / execution }
//!     // 3. sleep until r.poll_deadline() or the next input
//! }
//! ```
//!
//! Streams: bytes for one peer must be written in order on one stream; when the driver
//! (re)connects to a peer it calls [`Replica::peer_connection_reset`]. Channels re-handshake
//! on their own when a peer restarts. The replica never blocks and never allocates without
//! a bound (see the limits in `p2p` and `consensus`).

pub mod persist;
pub mod stack;
pub mod state_sync;

use crate::consensus::{
    Artifact, CatchUpPackage, Consensus, ConsensusParams, ConsensusStats, FinalizedBlock, Outgoing,
};
use crate::crypto::dealer::{NodeKeys, NodeSecrets, RecordError, SubnetKeys, SubnetRecord};
use crate::p2p::channel::{ChannelStats, Channels};
use crate::p2p::gossip::Gossip;
use crate::p2p::{
    PeerStatus, WireBody, WireMessage, ARTIFACTS_PER_MESSAGE_MAX, IDS_PER_MESSAGE_MAX,
};
use crate::types::{CryptoHash, Height, NodeId, NodeIndex, SubnetId, Time};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::fmt;

/// Default interval between status messages to each peer (drives re-advertisement).
pub const STATUS_INTERVAL_MS: u64 = 200;
/// Bytes of artifacts in one delivery message.
pub const DELIVERY_BYTES_MAX: usize = 1024 * 1024;
/// Artifacts up to this size are pushed whole by their creator; larger ones are adverted.
pub const PUSH_BYTES_MAX: usize = 16 * 1024;
/// Received messages of the upper layers ([`WireBody::Upper`]) waiting for [`Replica::poll_upper`].
pub const UPPER_MESSAGES_QUEUED_MAX: usize = 4096;

/// Everything a replica needs to start.
#[derive(Clone)]
pub struct ReplicaConfig {
    /// The subnet's registry entry (membership and public keys).
    pub record: SubnetRecord,
    /// This node's secrets.
    pub secrets: NodeSecrets,
    pub params: ConsensusParams,
    /// Seed for channel ephemeral keys; the driver draws it from its entropy source.
    pub entropy: [u8; 32],
    /// The highest height this node may have signed at before a restart (persisted by the
    /// driver; zero for a fresh node). The node signs nothing at or below it.
    pub signing_floor: Height,
    pub status_interval_ms: u64,
    /// The catch-up package to resume from (the node's own store; trusted), or `None` for
    /// genesis.
    pub resume_from: Option<CatchUpPackage>,
}

/// Why a replica could not start, or refused an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaError {
    Record(RecordError),
    NotAMember,
    IngressQueueFull,
    /// The store failed while the node recovered from it (`Stack::with_store`).
    Store(crate::store::StoreError),
}

impl fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaError::Record(e) => write!(f, "bad configuration: {e}"),
            ReplicaError::NotAMember => f.write_str("node secrets do not match the subnet record"),
            ReplicaError::IngressQueueFull => f.write_str("ingress queue full"),
            ReplicaError::Store(e) => write!(f, "store: {e}"),
        }
    }
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplicaStats {
    pub consensus: ConsensusStats,
    pub channels: ChannelStats,
    pub malformed_messages: u64,
    pub malformed_artifacts: u64,
}

/// One node of a subnet, sans-IO.
pub struct Replica {
    node_id: NodeId,
    subnet_id: SubnetId,
    index: NodeIndex,
    peers: Vec<NodeId>,
    index_of: BTreeMap<NodeId, NodeIndex>,
    consensus: Consensus,
    channels: Channels,
    gossip: Gossip,
    next_status: Time,
    status_interval_ms: u64,
    out: VecDeque<(NodeId, Vec<u8>)>,
    malformed_messages: u64,
    malformed_artifacts: u64,
    upper_in: VecDeque<(NodeId, Vec<u8>)>,
}

impl Replica {
    /// Starts a node at time `now` from genesis.
    pub fn new(config: ReplicaConfig, now: Time) -> Result<Replica, ReplicaError> {
        Replica::restarting(config, now, None)
    }

    /// Starts a node at `now`; with `signed`, a node with a persistent log: what
    /// [`Replica::poll_signed`] returned before a restart is restored first
    /// ([`Consensus::restore_signed`]) and what it signs from now on is kept for
    /// [`Replica::poll_signed`].
    pub fn restarting(
        config: ReplicaConfig,
        now: Time,
        signed: Option<Vec<Artifact>>,
    ) -> Result<Replica, ReplicaError> {
        let keys = SubnetKeys::from_record(&config.record).map_err(ReplicaError::Record)?;
        let me = NodeKeys::from_secrets(&config.secrets).map_err(ReplicaError::Record)?;
        let index = me.index;
        let Some(registered) = keys.node_keys.get(index as usize) else {
            return Err(ReplicaError::NotAMember);
        };
        if *registered != me.node_key.public_key() {
            return Err(ReplicaError::NotAMember);
        }
        let channels = Channels::new(
            index,
            me.node_key.clone(),
            keys.node_keys.clone(),
            config.entropy,
        );
        let peers = keys.node_ids.clone();
        let index_of = peers
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i as NodeIndex))
            .collect();
        let node_id = peers[index as usize];
        let subnet_id = keys.subnet_id;
        let mut consensus = Consensus::new(
            keys,
            me,
            config.params,
            config.resume_from,
            config.signing_floor,
        );
        if let Some(signed) = signed {
            consensus.set_record_signed(true);
            consensus.restore_signed(signed);
        }
        let mut r = Replica {
            node_id,
            subnet_id,
            index,
            peers,
            index_of,
            consensus,
            channels,
            gossip: Gossip::new(),
            next_status: now,
            status_interval_ms: config.status_interval_ms.max(1),
            out: VecDeque::new(),
            malformed_messages: 0,
            malformed_artifacts: 0,
            upper_in: VecDeque::new(),
        };
        r.handle_timeout(now);
        Ok(r)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn subnet_id(&self) -> SubnetId {
        self.subnet_id
    }

    /// All members, in registry order (including this node).
    pub fn members(&self) -> &[NodeId] {
        &self.peers
    }

    /// Bytes read from `peer`'s stream.
    pub fn handle_peer_bytes(&mut self, peer: NodeId, bytes: &[u8], now: Time) {
        let Some(&from) = self.index_of.get(&peer) else {
            return;
        };
        for message in self.channels.receive(from, bytes, now) {
            self.on_message(from, &message, now);
        }
        self.consensus.step(now);
        self.flush(now);
    }

    /// Time passed: call when `now >= poll_deadline()` (calling more often is harmless).
    pub fn handle_timeout(&mut self, now: Time) {
        self.channels.tick(now);
        self.gossip.expire(now);
        if now >= self.next_status {
            let status = WireMessage::new(WireBody::Status(self.consensus.status())).encode();
            for peer in 0..self.peers.len() as NodeIndex {
                if peer != self.index {
                    self.channels.send(peer, &status, now);
                }
            }
            self.next_status = now.plus_millis(self.status_interval_ms);
        }
        self.consensus.step(now);
        self.flush(now);
    }

    /// The driver's connection to `peer` was closed or re-opened.
    pub fn peer_connection_reset(&mut self, peer: NodeId) {
        if let Some(&i) = self.index_of.get(&peer) {
            self.channels.reset_stream(i);
        }
    }

    /// Queues an ingress message (opaque bytes) for the next block this node makes.
    pub fn submit_ingress(&mut self, message: Vec<u8>) -> Result<(), ReplicaError> {
        if self.consensus.submit_ingress(message) {
            Ok(())
        } else {
            Err(ReplicaError::IngressQueueFull)
        }
    }

    /// Execution's state hash after the finalized block at `height` (certified by CUPs).
    /// Until [`Replica::require_state_hashes`] is on, CUPs carry a zero placeholder.
    pub fn set_state_hash(&mut self, height: Height, hash: CryptoHash) {
        self.consensus.set_state_hash(height, hash);
    }

    /// Makes CUPs wait for [`Replica::set_state_hash`] instead of the placeholder.
    pub fn require_state_hashes(&mut self) {
        self.consensus.use_state_hash_placeholder(false);
    }

    /// Sends an upper-layer message ([`WireBody::Upper`]) to `to`, or to every peer.
    pub fn send_upper(&mut self, to: Option<NodeId>, message: Vec<u8>, now: Time) {
        let bytes = WireMessage::new(WireBody::Upper(message)).encode();
        for peer in 0..self.peers.len() as NodeIndex {
            if peer != self.index && to.is_none_or(|t| self.index_of.get(&t) == Some(&peer)) {
                self.channels.send(peer, &bytes, now);
            }
        }
        self.drain_channels();
    }

    /// Next upper-layer message received, with its (authenticated) sender.
    pub fn poll_upper(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.upper_in.pop_front()
    }

    /// Next bytes to write to a peer's stream.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.out.pop_front()
    }

    /// Next finalized block, in height order.
    pub fn poll_finalized(&mut self) -> Option<FinalizedBlock> {
        self.consensus.poll_finalized()
    }

    /// When to call [`Replica::handle_timeout`] next.
    pub fn poll_deadline(&self) -> Time {
        let mut t = self.next_status;
        for d in [
            self.consensus.next_deadline(),
            self.channels.next_deadline(),
        ]
        .into_iter()
        .flatten()
        {
            t = t.min(d);
        }
        t
    }

    pub fn finalized_height(&self) -> Height {
        self.consensus.finalized_height()
    }

    pub fn notarized_height(&self) -> Height {
        self.consensus.notarized_height()
    }

    pub fn cup_height(&self) -> Height {
        self.consensus.cup_height()
    }

    /// The highest height this node signed at; persist it and pass it back as
    /// [`ReplicaConfig::signing_floor`] after a restart.
    /// The next artifact this node signed, to log (see [`Replica::restarting`]).
    pub fn poll_signed(&mut self) -> Option<Artifact> {
        self.consensus.poll_signed()
    }

    /// The next artifact that made a height final, to log with the finalized blocks and pass
    /// back (with them) in `signed` after a restart ([`Consensus::poll_finality`]).
    pub fn poll_finality(&mut self) -> Option<Artifact> {
        self.consensus.poll_finality()
    }

    pub fn signing_watermark(&self) -> Height {
        self.consensus.signing_watermark()
    }

    /// The latest catch-up package (persist it to resume from it after a restart).
    pub fn cup(&self) -> &CatchUpPackage {
        self.consensus.cup()
    }

    pub fn stats(&self) -> ReplicaStats {
        ReplicaStats {
            consensus: self.consensus.stats(),
            channels: self.channels.stats(),
            malformed_messages: self.malformed_messages,
            malformed_artifacts: self.malformed_artifacts,
        }
    }

    /// The consensus state (read-only), for diagnostics and tests.
    pub fn consensus(&self) -> &Consensus {
        &self.consensus
    }

    /// (validated, unvalidated) artifacts in the pool.
    pub fn pool_sizes(&self) -> (usize, usize) {
        self.consensus.pool_sizes()
    }

    #[cfg(feature = "sim")]
    pub fn set_fault(&mut self, fault: Option<crate::consensus::Fault>) {
        self.consensus.set_fault(fault);
    }

    /// Sends arbitrary bytes as an authenticated channel message (simulated Byzantine peers).
    #[cfg(feature = "sim")]
    pub fn send_raw_message(&mut self, peer: NodeId, bytes: &[u8], now: Time) {
        if let Some(&i) = self.index_of.get(&peer) {
            self.channels.send(i, bytes, now);
            self.drain_channels();
        }
    }

    fn on_message(&mut self, from: NodeIndex, bytes: &[u8], now: Time) {
        let Ok(msg) = WireMessage::decode(bytes) else {
            self.malformed_messages += 1;
            return;
        };
        match msg.body {
            WireBody::Status(status) => self.on_status(from, status, now),
            WireBody::Adverts(ids) => {
                let consensus = &self.consensus;
                let wanted = self
                    .gossip
                    .on_adverts(from, &ids, now, |id| consensus.wants(id));
                if !wanted.is_empty() {
                    self.send_to(from, WireBody::Requests(wanted), now);
                }
            }
            WireBody::Requests(ids) => self.on_requests(from, &ids, now),
            WireBody::Upper(bytes) => {
                if self.upper_in.len() < UPPER_MESSAGES_QUEUED_MAX {
                    if let Some(id) = self.peers.get(from as usize) {
                        self.upper_in.push_back((*id, bytes));
                    }
                }
            }
            WireBody::Artifacts(list) => {
                for bytes in list {
                    match Artifact::decode(&bytes) {
                        Ok(a) => {
                            self.gossip.on_delivered(&a.id());
                            self.consensus.on_artifact(from, a);
                        }
                        Err(_) => self.malformed_artifacts += 1,
                    }
                }
            }
        }
    }

    fn on_status(&mut self, from: NodeIndex, status: PeerStatus, now: Time) {
        let ids = self.consensus.adverts_for(status);
        if !ids.is_empty() {
            self.send_to(from, WireBody::Adverts(ids), now);
        }
    }

    fn on_requests(&mut self, from: NodeIndex, ids: &[crate::p2p::ArtifactId], now: Time) {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        for id in ids.iter().take(IDS_PER_MESSAGE_MAX) {
            let Some(a) = self.consensus.lookup(id) else {
                continue;
            };
            let encoded = a.encode();
            if !batch.is_empty()
                && (batch.len() >= ARTIFACTS_PER_MESSAGE_MAX
                    || bytes + encoded.len() > DELIVERY_BYTES_MAX)
            {
                let full = core::mem::take(&mut batch);
                self.send_to(from, WireBody::Artifacts(full), now);
                bytes = 0;
            }
            bytes += encoded.len();
            batch.push(encoded);
        }
        if !batch.is_empty() {
            self.send_to(from, WireBody::Artifacts(batch), now);
        }
    }

    fn send_to(&mut self, peer: NodeIndex, body: WireBody, now: Time) {
        let bytes = WireMessage::new(body).encode();
        self.channels.send(peer, &bytes, now);
    }

    /// Turns consensus output into channel messages: pushes batched per peer, adverts
    /// batched into one message to every peer.
    fn flush(&mut self, now: Time) {
        let n = self.peers.len();
        let mut pushes: Vec<Vec<Vec<u8>>> = (0..n).map(|_| Vec::new()).collect();
        let mut adverts = Vec::new();
        while let Some(o) = self.consensus.poll_outgoing() {
            match o {
                Outgoing::Push { to, artifact } => {
                    let encoded = artifact.encode();
                    if encoded.len() > PUSH_BYTES_MAX {
                        adverts.push(artifact.id());
                        continue;
                    }
                    for (peer, list) in pushes.iter_mut().enumerate() {
                        if peer as NodeIndex != self.index && to.is_none_or(|t| t as usize == peer)
                        {
                            list.push(encoded.clone());
                        }
                    }
                }
                Outgoing::Advert(id) => adverts.push(id),
            }
        }
        for (peer, list) in pushes.into_iter().enumerate() {
            for chunk in list.chunks(ARTIFACTS_PER_MESSAGE_MAX) {
                self.send_to(peer as NodeIndex, WireBody::Artifacts(chunk.to_vec()), now);
            }
        }
        for chunk in adverts.chunks(IDS_PER_MESSAGE_MAX) {
            let bytes = WireMessage::new(WireBody::Adverts(chunk.to_vec())).encode();
            for peer in 0..n as NodeIndex {
                if peer != self.index {
                    self.channels.send(peer, &bytes, now);
                }
            }
        }
        self.drain_channels();
    }

    fn drain_channels(&mut self) {
        while let Some((peer, bytes)) = self.channels.poll_transmit() {
            if let Some(id) = self.peers.get(peer as usize) {
                self.out.push_back((*id, bytes));
            }
        }
    }
}
