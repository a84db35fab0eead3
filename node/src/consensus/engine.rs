//! The consensus state machine of one node.

use super::artifacts::*;
use super::ranking::{ConsensusParams, Ranking};
use crate::crypto::bls::{Signature, SIGNATURE_BYTES};
use crate::crypto::dealer::{NodeKeys, SubnetKeys};
use crate::crypto::threshold;
use crate::p2p::{ArtifactId, ArtifactPool, PeerStatus};
use crate::types::{domain_hash, CryptoHash, FixedBytes, Height, NodeIndex, Rank, Time};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

/// Heights above the finalized height from which artifacts are accepted.
pub const HEIGHTS_AHEAD_MAX: u64 = 150;
/// Heights re-advertised to a peer that is behind, per status message.
pub const CATCH_UP_BATCH_HEIGHTS: u64 = 20;
/// Re-evaluation rounds per step (each round can unlock the next height's work).
pub const STEP_ROUNDS_MAX: usize = 64;
/// How far a block's time may be ahead of the local clock before it waits.
pub const BLOCK_TIME_SKEW_MS: u64 = 500;
/// Ingress messages queued locally for inclusion in a block.
pub const INGRESS_QUEUE_MAX: usize = 10_000;
/// Ids remembered as invalid (so they are not requested again); the oldest are forgotten.
pub const BAD_IDS_MAX: usize = 65_536;
/// Advert ids per status answer.
pub const STATUS_ADVERTS_MAX: usize = crate::p2p::IDS_PER_MESSAGE_MAX;

/// A block that became final, delivered in height order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalizedBlock {
    pub height: Height,
    pub hash: CryptoHash,
    pub block: Block,
    /// The maker's signature on the proposal, so that a consumer can re-check it.
    pub signature: FixedBytes<64>,
    /// Hash of the random beacon at `height + 1`, the seed of the batch's randomness (the
    /// IC's random tape plays this role). That beacon is a threshold signature (f+1 shares)
    /// over the beacon chain alone, and honest nodes release their shares for it only once
    /// height `height` is notarized: the maker of this block could neither predict nor steer
    /// it. [`Consensus::poll_finalized`] holds a block back until that beacon is known.
    pub next_beacon_hash: CryptoHash,
}

/// What the node wants sent.
#[derive(Clone, Debug)]
pub enum Outgoing {
    /// The whole artifact, to one peer or (None) to all.
    Push {
        to: Option<NodeIndex>,
        artifact: Box<Artifact>,
    },
    /// An advert to every peer.
    Advert(ArtifactId),
}

/// Counters for metrics, benches and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsensusStats {
    /// Pairing-based signature checks performed (each ~1 ms).
    pub bls_verifications: u64,
    /// Ed25519 checks (block proposals).
    pub ed25519_verifications: u64,
    /// BLS signatures made.
    pub bls_signatures: u64,
    /// Share groups whose combined check failed, forcing one-by-one checks.
    pub batch_fallbacks: u64,
    /// Artifacts rejected as invalid.
    pub rejected: u64,
    pub blocks_proposed: u64,
    pub cups_adopted: u64,
}

/// Misbehaviour injected by the simulator (never built into a real node).
#[cfg(feature = "sim")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// As block maker, proposes two different blocks and shows each to half of the peers.
    EquivocatingBlockMaker,
    /// Notarizes every block at once, finalizes every notarized block, signs made-up blocks.
    ConflictingShares,
    /// Every share and proposal carries a signature on the wrong message.
    InvalidSignatures,
}

/// The consensus state of one node.
pub struct Consensus {
    keys: SubnetKeys,
    me: NodeKeys,
    params: ConsensusParams,
    pool: ArtifactPool<Artifact>,
    cup: CatchUpPackage,
    cup_block_hash: CryptoHash,
    finalized: Height,
    notarized: Height,
    beacon_height: Height,
    beacon_hashes: BTreeMap<Height, CryptoHash>,
    finalized_hashes: BTreeMap<Height, CryptoHash>,
    supported: BTreeMap<Height, BTreeMap<Rank, CryptoHash>>,
    finalization_shared: BTreeSet<Height>,
    beacon_shared: BTreeSet<Height>,
    proposed: BTreeSet<Height>,
    cup_shared: BTreeSet<Height>,
    round_start: BTreeMap<Height, Time>,
    rankings: BTreeMap<Height, Ranking>,
    bad: BTreeSet<ArtifactId>,
    outbox: VecDeque<Outgoing>,
    finalized_out: VecDeque<FinalizedBlock>,
    ingress: VecDeque<Vec<u8>>,
    state_hashes: BTreeMap<Height, CryptoHash>,
    state_hash_placeholder: bool,
    signing_floor: Height,
    signed_up_to: Height,
    /// What this node signed (and the blocks it notarized), for the driver's persistent log;
    /// kept only while [`Consensus::set_record_signed`] is on.
    signed_log: VecDeque<Artifact>,
    /// What made heights final (beacons, notarizations, the finalization), for the driver's
    /// persistent log; kept only while [`Consensus::set_record_signed`] is on.
    finality_log: VecDeque<Artifact>,
    record_signed: bool,
    deadline: Option<Time>,
    stats: ConsensusStats,
    #[cfg(feature = "sim")]
    fault: Option<Fault>,
}

/// The genesis catch-up package every node of a subnet starts from (unsigned, trusted).
pub fn genesis_cup(keys: &SubnetKeys) -> CatchUpPackage {
    let block = Block {
        version: BLOCK_VERSION,
        parent: [0; 32],
        height: Height(0),
        rank: Rank(0),
        maker: 0,
        time: keys.genesis_time,
        payload: Payload::default(),
    };
    let beacon = RandomBeacon {
        height: Height(0),
        parent: domain_hash("cairn-genesis-beacon", keys.subnet_id.0.as_slice()),
        signature: FixedBytes([0; SIGNATURE_BYTES]),
    };
    CatchUpPackage {
        content: CatchUpContent {
            block,
            beacon,
            state_hash: [0; 32],
        },
        signature: FixedBytes([0; SIGNATURE_BYTES]),
    }
}

fn sig(bytes: &FixedBytes<48>) -> Signature {
    Signature::from_bytes(&bytes.0).unwrap_or_else(|_| unreachable_signature())
}

/// `Signature::from_bytes` only checks the length, which `FixedBytes<48>` guarantees.
fn unreachable_signature() -> Signature {
    Signature::from_bytes(&[0u8; SIGNATURE_BYTES]).unwrap_or_else(|_| unreachable!())
}

impl Consensus {
    /// A node starting from `cup` (the genesis CUP, or a later one from its store).
    /// It will not sign notarization/finalization shares or blocks at heights up to
    /// `signing_floor` (the highest height it may have signed before a restart).
    pub fn new(
        keys: SubnetKeys,
        me: NodeKeys,
        params: ConsensusParams,
        cup: Option<CatchUpPackage>,
        signing_floor: Height,
    ) -> Consensus {
        let cup = cup.unwrap_or_else(|| genesis_cup(&keys));
        let mut c = Consensus {
            keys,
            me,
            params,
            pool: ArtifactPool::new(),
            cup_block_hash: [0; 32],
            cup: cup.clone(),
            finalized: Height(0),
            notarized: Height(0),
            beacon_height: Height(0),
            beacon_hashes: BTreeMap::new(),
            finalized_hashes: BTreeMap::new(),
            supported: BTreeMap::new(),
            finalization_shared: BTreeSet::new(),
            beacon_shared: BTreeSet::new(),
            proposed: BTreeSet::new(),
            cup_shared: BTreeSet::new(),
            round_start: BTreeMap::new(),
            rankings: BTreeMap::new(),
            bad: BTreeSet::new(),
            outbox: VecDeque::new(),
            finalized_out: VecDeque::new(),
            ingress: VecDeque::new(),
            state_hashes: BTreeMap::new(),
            state_hash_placeholder: true,
            signing_floor,
            signed_up_to: signing_floor,
            signed_log: VecDeque::new(),
            finality_log: VecDeque::new(),
            record_signed: false,
            deadline: None,
            stats: ConsensusStats::default(),
            #[cfg(feature = "sim")]
            fault: None,
        };
        c.install_cup(cup);
        c
    }

    #[cfg(feature = "sim")]
    pub fn set_fault(&mut self, fault: Option<Fault>) {
        self.fault = fault;
    }

    /// With `false`, CUPs wait for [`Consensus::set_state_hash`] (execution integration);
    /// with `true` (default) they certify a zero placeholder.
    pub fn use_state_hash_placeholder(&mut self, on: bool) {
        self.state_hash_placeholder = on;
    }

    pub fn set_state_hash(&mut self, height: Height, hash: CryptoHash) {
        if height > self.cup.content.height() {
            self.state_hashes.insert(height, hash);
        }
    }

    /// Queues an ingress message for a block this node makes. False if the queue is full.
    pub fn submit_ingress(&mut self, message: Vec<u8>) -> bool {
        if self.ingress.len() >= INGRESS_QUEUE_MAX
            || message.len() as u64 > self.params.max_block_payload_bytes
        {
            return false;
        }
        self.ingress.push_back(message);
        true
    }

    pub fn index(&self) -> NodeIndex {
        self.me.index
    }

    pub fn finalized_height(&self) -> Height {
        self.finalized
    }

    pub fn notarized_height(&self) -> Height {
        self.notarized
    }

    pub fn cup_height(&self) -> Height {
        self.cup.content.height()
    }

    pub fn cup(&self) -> &CatchUpPackage {
        &self.cup
    }

    /// The highest height at which this node signed a share or proposed a block.
    pub fn signing_watermark(&self) -> Height {
        self.signed_up_to
    }

    pub fn stats(&self) -> ConsensusStats {
        self.stats
    }

    pub fn status(&self) -> PeerStatus {
        PeerStatus {
            finalized_height: self.finalized.0,
            cup_height: self.cup_height().0,
        }
    }

    /// When [`Consensus::step`] next has time-driven work.
    pub fn next_deadline(&self) -> Option<Time> {
        self.deadline
    }

    pub fn poll_outgoing(&mut self) -> Option<Outgoing> {
        self.outbox.pop_front()
    }

    /// The next finalized block, once the random beacon of the height after it is known
    /// (it fills [`FinalizedBlock::next_beacon_hash`]).
    pub fn poll_finalized(&mut self) -> Option<FinalizedBlock> {
        let next = self.finalized_out.front()?.height.next();
        let beacon = *self.beacon_hashes.get(&next)?;
        let mut block = self.finalized_out.pop_front()?;
        block.next_beacon_hash = beacon;
        Some(block)
    }

    /// Every id in the pool, with whether it is validated (diagnostics).
    pub fn pool_ids(&self) -> Vec<(bool, ArtifactId)> {
        let mut v = Vec::new();
        for kind in 1..=9u8 {
            v.extend(
                self.pool
                    .validated_ids(kind, 0, u64::MAX)
                    .map(|id| (true, *id)),
            );
            v.extend(
                self.pool
                    .unvalidated_ids(kind, 0, u64::MAX)
                    .map(|id| (false, *id)),
            );
        }
        v
    }

    pub fn pool_sizes(&self) -> (usize, usize) {
        (self.pool.validated_len(), self.pool.unvalidated_len())
    }

    // ----- gossip interface -------------------------------------------------------------

    /// A validated artifact, to answer a peer's request.
    pub fn lookup(&self, id: &ArtifactId) -> Option<&Artifact> {
        self.pool.validated(id)
    }

    /// Whether an advertised artifact is worth requesting.
    pub fn wants(&self, id: &ArtifactId) -> bool {
        let Some(kind) = ArtifactKind::from_u8(id.kind) else {
            return false;
        };
        if self.pool.contains(id) || self.bad.contains(id) {
            return false;
        }
        let h = Height(id.height);
        if kind == ArtifactKind::CatchUpPackage {
            return h > self.cup_height();
        }
        if h <= self.cup_height() || h.0 > self.finalized.0 + HEIGHTS_AHEAD_MAX {
            return false;
        }
        match kind {
            ArtifactKind::RandomBeacon => h > self.beacon_height,
            ArtifactKind::RandomBeaconShare => {
                h > self.beacon_height && id.key == self.beacon_parent_for(h)
            }
            ArtifactKind::Block => h > self.finalized || !self.finalized_hashes.contains_key(&h),
            ArtifactKind::Notarization => h > self.finalized,
            ArtifactKind::Finalization => h > self.finalized,
            ArtifactKind::NotarizationShare | ArtifactKind::FinalizationShare => h > self.finalized,
            ArtifactKind::CatchUpShare => true,
            ArtifactKind::CatchUpPackage => false,
        }
    }

    fn beacon_parent_for(&self, h: Height) -> CryptoHash {
        self.beacon_hashes
            .get(&h.prev())
            .copied()
            .unwrap_or([0; 32])
    }

    /// Takes an artifact from peer `from` into the unvalidated pool (work happens in `step`).
    pub fn on_artifact(&mut self, from: NodeIndex, artifact: Artifact) {
        let id = artifact.id();
        if !self.wants(&id) {
            return;
        }
        let _ = self.pool.insert_unvalidated(from, artifact);
    }

    /// Ids to re-advertise to a peer that reported `status`: what it may lack.
    pub fn adverts_for(&self, status: PeerStatus) -> Vec<ArtifactId> {
        let mut ids = Vec::new();
        let cup_h = self.cup_height().0;
        if status.cup_height < cup_h && cup_h > 0 && status.finalized_height < cup_h {
            ids.push(self.cup_id());
        }
        let lo = status.finalized_height.max(cup_h) + 1;
        let hi = lo + CATCH_UP_BATCH_HEIGHTS;
        let aggregate_kinds = [
            ArtifactKind::RandomBeacon,
            ArtifactKind::Block,
            ArtifactKind::Notarization,
            ArtifactKind::Finalization,
        ];
        for kind in aggregate_kinds {
            for id in self.pool.validated_ids(kind as u8, lo, hi) {
                let on_chain = self
                    .finalized_hashes
                    .get(&Height(id.height))
                    .is_none_or(|h| *h == id.key || kind == ArtifactKind::RandomBeacon);
                if on_chain {
                    ids.push(*id);
                }
            }
        }
        let share_lo = lo.max(self.finalized.0 + 1);
        for kind in [
            ArtifactKind::RandomBeaconShare,
            ArtifactKind::NotarizationShare,
            ArtifactKind::FinalizationShare,
        ] {
            ids.extend(self.pool.validated_ids(kind as u8, share_lo, hi));
        }
        ids.extend(
            self.pool
                .validated_ids(ArtifactKind::CatchUpShare as u8, cup_h + 1, u64::MAX),
        );
        ids.truncate(STATUS_ADVERTS_MAX);
        ids
    }

    fn cup_id(&self) -> ArtifactId {
        Artifact::CatchUpPackage(self.cup.clone()).id()
    }

    // ----- the step -----------------------------------------------------------------

    /// Validates what can be validated, aggregates, advances heights and acts. Call after
    /// every input and at [`Consensus::next_deadline`].
    pub fn step(&mut self, now: Time) {
        for _ in 0..STEP_ROUNDS_MAX {
            let mut progress = false;
            progress |= self.validate_cups();
            progress |= self.validate_beacons();
            progress |= self.aggregate_beacon();
            progress |= self.validate_blocks(now);
            progress |= self.validate_aggregates(ArtifactKind::Notarization);
            progress |= self.validate_aggregates(ArtifactKind::Finalization);
            progress |= self.aggregate_shares(ArtifactKind::NotarizationShare);
            progress |= self.aggregate_shares(ArtifactKind::FinalizationShare);
            progress |= self.advance(now);
            progress |= self.act(now);
            progress |= self.aggregate_cup();
            if !progress {
                break;
            }
        }
        self.deadline = self.compute_deadline(now);
    }

    // ----- catch-up packages ------------------------------------------------------------

    fn install_cup(&mut self, cup: CatchUpPackage) {
        let h = cup.content.height();
        let block_hash = cup.content.block.hash();
        self.cup_block_hash = block_hash;
        let beacon = cup.content.beacon.clone();
        self.beacon_hashes.insert(h, beacon.hash());
        self.finalized_hashes.insert(h, block_hash);
        if h > self.finalized {
            self.finalized = h;
        }
        if h > self.notarized {
            self.notarized = h;
        }
        if h > self.beacon_height {
            self.beacon_height = h;
        }
        self.cup = cup;
        if h > Height(0) {
            self.pool
                .insert_validated(Artifact::CatchUpPackage(self.cup.clone()));
            self.pool.insert_validated(Artifact::RandomBeacon(beacon));
        }
        self.purge_below(h);
    }

    fn purge_below(&mut self, h: Height) {
        for kind in 1..=9u8 {
            self.pool.purge_below(kind, h.0);
        }
        self.beacon_hashes = self.beacon_hashes.split_off(&h);
        self.finalized_hashes = self.finalized_hashes.split_off(&h);
        self.supported = self.supported.split_off(&h);
        self.finalization_shared = self.finalization_shared.split_off(&h);
        self.beacon_shared = self.beacon_shared.split_off(&h);
        self.proposed = self.proposed.split_off(&h);
        self.cup_shared = self.cup_shared.split_off(&h);
        self.round_start = self.round_start.split_off(&h);
        self.rankings = self.rankings.split_off(&h);
        self.state_hashes = self.state_hashes.split_off(&h);
        self.bad.retain(|id| id.height >= h.0);
    }

    fn validate_cups(&mut self) -> bool {
        let cup_h = self.cup_height().0;
        let ids: Vec<ArtifactId> = self
            .pool
            .unvalidated_ids(ArtifactKind::CatchUpPackage as u8, cup_h + 1, u64::MAX)
            .copied()
            .collect();
        // Only the highest is worth a pairing; the rest are superseded either way.
        let Some(best) = ids.last().copied() else {
            return false;
        };
        for id in &ids[..ids.len() - 1] {
            self.pool.remove_unvalidated(id);
        }
        let Some((_, Artifact::CatchUpPackage(cup))) = self.pool.remove_unvalidated(&best) else {
            return false;
        };
        let content_hash = cup.content.hash();
        let consistent = cup.content.beacon.height == cup.content.height()
            && cup.content.block.version == BLOCK_VERSION;
        self.stats.bls_verifications += 1;
        let valid = consistent
            && self
                .keys
                .subnet
                .group_key
                .verify(
                    &CatchUpContent::signed_message(&content_hash),
                    &sig(&cup.signature),
                )
                .is_ok();
        if !valid {
            self.reject(best);
            return true;
        }
        self.adopt_cup(cup);
        true
    }

    fn adopt_cup(&mut self, cup: CatchUpPackage) {
        let h = cup.content.height();
        self.stats.cups_adopted += 1;
        let id = Artifact::CatchUpPackage(cup.clone()).id();
        self.install_cup(cup);
        // A node that jumped forward delivers nothing below the CUP: its state comes from
        // state sync (a later layer), not from replaying blocks it never saw.
        self.finalized_out.retain(|b| b.height > h);
        self.outbox.push_back(Outgoing::Advert(id));
    }

    fn aggregate_cup(&mut self) -> bool {
        let kind = ArtifactKind::CatchUpShare as u8;
        let cup_h = self.cup_height().0;
        let mut groups: BTreeMap<(u64, CryptoHash), Vec<ShareEntry>> = BTreeMap::new();
        for validated in [true, false] {
            let ids: Vec<ArtifactId> = if validated {
                self.pool
                    .validated_ids(kind, cup_h + 1, self.finalized.0)
                    .copied()
                    .collect()
            } else {
                self.pool
                    .unvalidated_ids(kind, cup_h + 1, self.finalized.0)
                    .copied()
                    .collect()
            };
            for id in ids {
                let a = if validated {
                    self.pool.validated(&id)
                } else {
                    self.pool.unvalidated(&id)
                };
                if let Some(Artifact::CatchUpShare(s)) = a {
                    groups.entry((id.height, s.content)).or_default().push((
                        s.signer,
                        s.signature,
                        validated,
                    ));
                }
            }
        }
        let t = self.keys.subnet.threshold;
        for ((h, content_hash), shares) in groups.into_iter().rev() {
            if shares.len() < t {
                continue;
            }
            let Some(content) = self.cup_content(Height(h)) else {
                continue;
            };
            if content.hash() != content_hash {
                continue;
            }
            let msg = CatchUpContent::signed_message(&content_hash);
            let Some(combined) = self.combine_threshold(kind, h, &content_hash, &msg, shares, true)
            else {
                continue;
            };
            let cup = CatchUpPackage {
                content,
                signature: FixedBytes(*combined.as_bytes()),
            };
            self.adopt_cup(cup);
            return true;
        }
        false
    }

    /// The CUP content this node would certify at `h` (a finalized height).
    fn cup_content(&self, h: Height) -> Option<CatchUpContent> {
        let hash = self.finalized_hashes.get(&h)?;
        let block = self.block(h, hash)?;
        let beacon = self.beacon(h)?;
        let state_hash = match self.state_hashes.get(&h) {
            Some(s) => *s,
            None if self.state_hash_placeholder => [0; 32],
            None => return None,
        };
        Some(CatchUpContent {
            block,
            beacon,
            state_hash,
        })
    }

    // ----- random beacon ------------------------------------------------------------------

    fn beacon(&self, h: Height) -> Option<RandomBeacon> {
        if h == self.cup_height() {
            return Some(self.cup.content.beacon.clone());
        }
        let parent = self.beacon_hashes.get(&h.prev())?;
        let id = ArtifactId {
            kind: ArtifactKind::RandomBeacon as u8,
            height: h.0,
            key: *parent,
            signer: NO_SIGNER,
        };
        match self.pool.validated(&id) {
            Some(Artifact::RandomBeacon(b)) => Some(b.clone()),
            _ => None,
        }
    }

    fn validate_beacons(&mut self) -> bool {
        let mut progress = false;
        loop {
            let h = self.beacon_height.next();
            let parent = self.beacon_parent_for(h);
            let ids: Vec<ArtifactId> = self
                .pool
                .unvalidated_at(ArtifactKind::RandomBeacon as u8, h.0)
                .map(|(id, _)| *id)
                .collect();
            let mut advanced = false;
            for id in ids {
                let Some((from, Artifact::RandomBeacon(b))) = self.pool.remove_unvalidated(&id)
                else {
                    continue;
                };
                if b.parent != parent || advanced {
                    self.reject(id);
                    continue;
                }
                self.stats.bls_verifications += 1;
                let msg = RandomBeacon::signed_message(h, &parent);
                if self
                    .keys
                    .beacon
                    .group_key
                    .verify(&msg, &sig(&b.signature))
                    .is_err()
                {
                    self.reject(id);
                    continue;
                }
                let _ = from;
                self.accept_beacon(b, false);
                advanced = true;
            }
            if !advanced {
                return progress;
            }
            progress = true;
        }
    }

    fn accept_beacon(&mut self, b: RandomBeacon, own: bool) {
        let h = b.height;
        self.beacon_hashes.insert(h, b.hash());
        self.beacon_height = h;
        let artifact = Artifact::RandomBeacon(b);
        let id = artifact.id();
        self.pool.insert_validated(artifact);
        let _ = own;
        self.outbox.push_back(Outgoing::Advert(id));
        self.pool
            .purge_below(ArtifactKind::RandomBeaconShare as u8, h.0 + 1);
    }

    fn aggregate_beacon(&mut self) -> bool {
        let h = self.beacon_height.next();
        let parent = self.beacon_parent_for(h);
        let kind = ArtifactKind::RandomBeaconShare as u8;
        let shares = self.collect_shares(kind, h.0, &parent);
        if shares.len() < self.keys.beacon.threshold {
            return false;
        }
        let msg = RandomBeacon::signed_message(h, &parent);
        let Some(combined) = self.combine_threshold(kind, h.0, &parent, &msg, shares, false) else {
            return true;
        };
        self.accept_beacon(
            RandomBeacon {
                height: h,
                parent,
                signature: FixedBytes(*combined.as_bytes()),
            },
            true,
        );
        true
    }

    /// Shares `(signer, signature, already validated)` of `kind` at `height` on `key`.
    fn collect_shares(
        &self,
        kind: u8,
        height: u64,
        key: &CryptoHash,
    ) -> Vec<(NodeIndex, FixedBytes<48>, bool)> {
        let mut out = Vec::new();
        let lo = ArtifactId {
            kind,
            height,
            key: *key,
            signer: 0,
        };
        for (validated, id, a) in self
            .pool
            .validated_at(kind, height)
            .map(|(i, a)| (true, i, a))
            .chain(
                self.pool
                    .unvalidated_at(kind, height)
                    .map(|(i, a)| (false, i, a)),
            )
        {
            if id.key != lo.key || self.bad.contains(id) {
                continue;
            }
            let s = match a {
                Artifact::NotarizationShare(s) | Artifact::FinalizationShare(s) => s.signature,
                Artifact::RandomBeaconShare(s) => s.signature,
                Artifact::CatchUpShare(s) => s.signature,
                _ => continue,
            };
            out.push((id.signer, s, validated));
        }
        out.sort_by_key(|(signer, _, _)| *signer);
        out
    }

    /// Combines threshold shares and verifies the result once; on failure checks each share
    /// against its key share, drops the bad ones, and returns None (the caller retries).
    fn combine_threshold(
        &mut self,
        kind: u8,
        height: u64,
        key: &CryptoHash,
        msg: &[u8],
        shares: Vec<(NodeIndex, FixedBytes<48>, bool)>,
        subnet_key: bool,
    ) -> Option<Signature> {
        let tkey = if subnet_key {
            self.keys.subnet.clone()
        } else {
            self.keys.beacon.clone()
        };
        let t = tkey.threshold;
        let picked: Vec<(usize, Signature)> = shares
            .iter()
            .take(t)
            .map(|(i, s, _)| (*i as usize, sig(s)))
            .collect();
        self.stats.bls_verifications += 1;
        if let Ok(combined) = threshold::combine(&picked, t) {
            if tkey.group_key.verify(msg, &combined).is_ok() {
                self.promote_shares(kind, height, key, shares.iter().take(t).map(|s| s.0));
                return Some(combined);
            }
        }
        self.stats.batch_fallbacks += 1;
        // Shares already held as validated are re-checked too: a combined signature that
        // fails must lose at least one share, or the next step would fail the same way.
        for (signer, s, _) in shares {
            let id = ArtifactId {
                kind,
                height,
                key: *key,
                signer,
            };
            self.stats.bls_verifications += 1;
            let ok = tkey
                .key_shares
                .get(signer as usize)
                .is_some_and(|k| k.verify(msg, &sig(&s)).is_ok());
            if ok {
                self.promote_shares(kind, height, key, core::iter::once(signer));
            } else {
                self.reject(id);
            }
        }
        None
    }

    fn promote_shares(
        &mut self,
        kind: u8,
        height: u64,
        key: &CryptoHash,
        signers: impl Iterator<Item = NodeIndex>,
    ) {
        for signer in signers {
            let id = ArtifactId {
                kind,
                height,
                key: *key,
                signer,
            };
            if let Some((_, a)) = self.pool.remove_unvalidated(&id) {
                self.pool.insert_validated(a);
            }
        }
    }

    fn reject(&mut self, id: ArtifactId) {
        self.stats.rejected += 1;
        self.pool.remove_unvalidated(&id);
        self.pool.remove_validated(&id);
        if self.bad.len() >= BAD_IDS_MAX {
            self.bad.pop_first();
        }
        self.bad.insert(id);
    }

    // ----- blocks ---------------------------------------------------------------------

    fn ranking(&mut self, h: Height) -> Option<Ranking> {
        if let Some(r) = self.rankings.get(&h) {
            return Some(r.clone());
        }
        let hash = *self.beacon_hashes.get(&h)?;
        let r = Ranking::from_beacon(&hash, self.keys.n(), self.keys.f());
        self.rankings.insert(h, r.clone());
        Some(r)
    }

    /// A validated block (or the CUP's block).
    fn block(&self, h: Height, hash: &CryptoHash) -> Option<Block> {
        if h == self.cup_height() && *hash == self.cup_block_hash {
            return Some(self.cup.content.block.clone());
        }
        let id = ArtifactId {
            kind: ArtifactKind::Block as u8,
            height: h.0,
            key: *hash,
            signer: NO_SIGNER,
        };
        match self.pool.validated(&id) {
            Some(Artifact::Block(p)) => Some(p.block.clone()),
            _ => None,
        }
    }

    fn aggregate_id(kind: ArtifactKind, h: Height, block: &CryptoHash) -> ArtifactId {
        ArtifactId {
            kind: kind as u8,
            height: h.0,
            key: *block,
            signer: NO_SIGNER,
        }
    }

    fn is_notarized(&self, h: Height, hash: &CryptoHash) -> bool {
        (h == self.cup_height() && *hash == self.cup_block_hash)
            || self.finalized_hashes.get(&h) == Some(hash)
            || self
                .pool
                .is_validated(&Self::aggregate_id(ArtifactKind::Notarization, h, hash))
            || self
                .pool
                .is_validated(&Self::aggregate_id(ArtifactKind::Finalization, h, hash))
    }

    fn any_notarization_at(&self, h: Height) -> bool {
        self.pool
            .validated_at(ArtifactKind::Notarization as u8, h.0)
            .next()
            .is_some()
            || self
                .pool
                .validated_at(ArtifactKind::Finalization as u8, h.0)
                .next()
                .is_some()
    }

    /// Validated blocks at `h`: (rank, hash), by rank.
    fn blocks_at(&self, h: Height) -> Vec<(Rank, CryptoHash)> {
        let mut v: Vec<(Rank, CryptoHash)> = self
            .pool
            .validated_at(ArtifactKind::Block as u8, h.0)
            .filter_map(|(id, a)| match a {
                Artifact::Block(p) => Some((p.block.rank, id.key)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn validate_blocks(&mut self, now: Time) -> bool {
        let mut progress = false;
        let lo = self.cup_height().0 + 1;
        let hi = self.beacon_height.0;
        if lo > hi {
            return false;
        }
        let ids: Vec<ArtifactId> = self
            .pool
            .unvalidated_ids(ArtifactKind::Block as u8, lo, hi)
            .copied()
            .collect();
        for id in ids {
            let Some(Artifact::Block(p)) = self.pool.unvalidated(&id).cloned() else {
                continue;
            };
            match self.check_block(&p, now) {
                BlockCheck::Wait => {}
                BlockCheck::Invalid => {
                    self.reject(id);
                    progress = true;
                }
                BlockCheck::Valid => {
                    self.pool.insert_validated(Artifact::Block(p));
                    self.outbox.push_back(Outgoing::Advert(id));
                    progress = true;
                }
            }
        }
        progress
    }

    fn check_block(&mut self, p: &BlockProposal, now: Time) -> BlockCheck {
        let b = &p.block;
        let h = b.height;
        if b.version != BLOCK_VERSION || (b.maker as usize) >= self.keys.n() {
            return BlockCheck::Invalid;
        }
        let Some(ranking) = self.ranking(h) else {
            return BlockCheck::Wait;
        };
        if ranking.block_maker_rank(b.maker) != Some(b.rank) {
            return BlockCheck::Invalid;
        }
        if self
            .finalized_hashes
            .get(&h.prev())
            .is_some_and(|f| *f != b.parent)
        {
            return BlockCheck::Invalid;
        }
        let Some(parent) = self.block(h.prev(), &b.parent) else {
            return BlockCheck::Wait;
        };
        if !self.is_notarized(h.prev(), &b.parent) {
            return BlockCheck::Wait;
        }
        if b.time <= parent.time {
            return BlockCheck::Invalid;
        }
        if b.time > now.plus_millis(BLOCK_TIME_SKEW_MS) {
            return BlockCheck::Wait;
        }
        if b.payload.size_bytes() as u64 > self.params.max_block_payload_bytes
            || b.payload.ingress.len() as u64 > self.params.max_ingress_messages_per_block
        {
            return BlockCheck::Invalid;
        }
        self.stats.ed25519_verifications += 1;
        let msg = BlockProposal::signed_message(&b.hash());
        match self.keys.node_keys[b.maker as usize].verify(&msg, &p.signature.0) {
            Ok(()) => BlockCheck::Valid,
            Err(_) => BlockCheck::Invalid,
        }
    }

    // ----- notarization and finalization --------------------------------------------

    fn validate_aggregates(&mut self, kind: ArtifactKind) -> bool {
        let lo = self.finalized.0 + 1;
        let hi = self.finalized.0 + HEIGHTS_AHEAD_MAX;
        let ids: Vec<ArtifactId> = self
            .pool
            .unvalidated_ids(kind as u8, lo, hi)
            .copied()
            .collect();
        let mut progress = false;
        for id in ids {
            let Some((_, a)) = self.pool.remove_unvalidated(&id) else {
                continue;
            };
            let agg = match a {
                Artifact::Notarization(x) | Artifact::Finalization(x) => x,
                _ => continue,
            };
            progress = true;
            let msg = if kind == ArtifactKind::Notarization {
                agg.content.notarization_message()
            } else {
                agg.content.finalization_message()
            };
            let n = self.keys.n();
            let distinct = agg.signers.windows(2).all(|w| w[0] < w[1]);
            let in_range = agg.signers.iter().all(|s| (*s as usize) < n);
            let enough = agg.signers.len() >= n - self.keys.f();
            if !(distinct && in_range && enough) {
                self.reject(id);
                continue;
            }
            let signers: Vec<usize> = agg.signers.iter().map(|s| *s as usize).collect();
            self.stats.bls_verifications += 1;
            if self
                .keys
                .multisig
                .verify_aggregate(&signers, &msg, &sig(&agg.signature))
                .is_err()
            {
                self.reject(id);
                continue;
            }
            let artifact = if kind == ArtifactKind::Notarization {
                Artifact::Notarization(agg)
            } else {
                Artifact::Finalization(agg)
            };
            self.pool.insert_validated(artifact);
            self.outbox.push_back(Outgoing::Advert(id));
        }
        progress
    }

    fn aggregate_shares(&mut self, kind: ArtifactKind) -> bool {
        let (agg_kind, lo, hi) = match kind {
            ArtifactKind::NotarizationShare => (
                ArtifactKind::Notarization,
                self.finalized.0 + 1,
                self.notarized.0 + 1,
            ),
            _ => (
                ArtifactKind::Finalization,
                self.finalized.0 + 1,
                self.notarized.0 + HEIGHTS_AHEAD_MAX,
            ),
        };
        let mut keys: BTreeSet<(u64, CryptoHash)> = BTreeSet::new();
        for id in self
            .pool
            .unvalidated_ids(kind as u8, lo, hi)
            .chain(self.pool.validated_ids(kind as u8, lo, hi))
        {
            keys.insert((id.height, id.key));
        }
        let threshold = self.keys.n() - self.keys.f();
        let mut progress = false;
        for (h, block) in keys {
            if self
                .pool
                .is_validated(&Self::aggregate_id(agg_kind, Height(h), &block))
            {
                continue;
            }
            let shares = self.collect_shares(kind as u8, h, &block);
            if shares.len() < threshold {
                continue;
            }
            progress = true;
            let content = BlockRef {
                height: Height(h),
                block,
            };
            let msg = if agg_kind == ArtifactKind::Notarization {
                content.notarization_message()
            } else {
                content.finalization_message()
            };
            let picked: Vec<(NodeIndex, FixedBytes<48>, bool)> =
                shares.iter().take(threshold).copied().collect();
            let sigs: Vec<Signature> = picked.iter().map(|(_, s, _)| sig(s)).collect();
            let signers: Vec<usize> = picked.iter().map(|(i, _, _)| *i as usize).collect();
            self.stats.bls_verifications += 1;
            let aggregate = crate::crypto::multisig::aggregate(&sigs).ok().filter(|a| {
                self.keys
                    .multisig
                    .verify_aggregate(&signers, &msg, a)
                    .is_ok()
            });
            let Some(aggregate) = aggregate else {
                self.stats.batch_fallbacks += 1;
                self.check_shares_one_by_one(kind as u8, h, &block, &msg, shares);
                continue;
            };
            self.promote_shares(kind as u8, h, &block, picked.iter().map(|s| s.0));
            let agg = Aggregate {
                content,
                signers: picked.iter().map(|s| s.0).collect(),
                signature: FixedBytes(*aggregate.as_bytes()),
            };
            let artifact = if agg_kind == ArtifactKind::Notarization {
                Artifact::Notarization(agg)
            } else {
                Artifact::Finalization(agg)
            };
            let id = artifact.id();
            self.pool.insert_validated(artifact);
            self.outbox.push_back(Outgoing::Advert(id));
        }
        progress
    }

    fn check_shares_one_by_one(
        &mut self,
        kind: u8,
        h: u64,
        block: &CryptoHash,
        msg: &[u8],
        shares: Vec<(NodeIndex, FixedBytes<48>, bool)>,
    ) {
        // Validated shares are re-checked too (see `combine_threshold`).
        for (signer, s, _) in shares {
            self.stats.bls_verifications += 1;
            let id = ArtifactId {
                kind,
                height: h,
                key: *block,
                signer,
            };
            if self
                .keys
                .multisig
                .verify_one(signer as usize, msg, &sig(&s))
                .is_ok()
            {
                self.promote_shares(kind, h, block, core::iter::once(signer));
            } else {
                self.reject(id);
            }
        }
    }

    /// Moves the notarized and finalized heights forward; delivers finalized blocks.
    fn advance(&mut self, now: Time) -> bool {
        let mut progress = false;
        loop {
            let h = self.notarized.next();
            let notarized_block = self
                .blocks_at(h)
                .into_iter()
                .any(|(_, hash)| self.is_notarized(h, &hash));
            if !notarized_block {
                break;
            }
            self.notarized = h;
            progress = true;
        }
        // The highest finalization whose block (and so whose whole chain) is validated.
        let mut target = None;
        for h in (self.finalized.0 + 1..=self.notarized.0).rev() {
            let fin = self
                .pool
                .validated_at(ArtifactKind::Finalization as u8, h)
                .map(|(id, _)| id.key)
                .find(|hash| self.block(Height(h), hash).is_some());
            if let Some(hash) = fin {
                target = Some((Height(h), hash));
                break;
            }
        }
        if let Some((h, hash)) = target {
            self.finalize(h, hash);
            progress = true;
        }
        let next = self.notarized.next();
        if self.beacon_height >= next && !self.round_start.contains_key(&next) {
            self.round_start.insert(next, now);
        }
        progress
    }

    fn finalize(&mut self, h: Height, hash: CryptoHash) {
        let mut chain = Vec::new();
        let mut cursor = (h, hash);
        while cursor.0 > self.finalized {
            let id = Self::aggregate_id(ArtifactKind::Block, cursor.0, &cursor.1);
            let Some(Artifact::Block(p)) = self.pool.validated(&id) else {
                // Unreachable: a validated block's parent is validated. Stop rather than skip.
                return;
            };
            let parent = p.block.parent;
            chain.push(FinalizedBlock {
                height: cursor.0,
                hash: cursor.1,
                block: p.block.clone(),
                signature: p.signature,
                // Filled in by `poll_finalized` once the beacon at `height + 1` exists.
                next_beacon_hash: [0; 32],
            });
            cursor = (cursor.0.prev(), parent);
        }
        if self.record_signed {
            self.log_finality(&chain, h, &hash);
        }
        for fb in chain.into_iter().rev() {
            self.finalized_hashes.insert(fb.height, fb.hash);
            self.finalized_out.push_back(fb);
        }
        self.finalized = h;
        // Shares at finalized heights are no longer needed.
        self.pool
            .purge_below(ArtifactKind::NotarizationShare as u8, h.0 + 1);
        self.pool
            .purge_below(ArtifactKind::FinalizationShare as u8, h.0 + 1);
    }

    // ----- this node's own actions ---------------------------------------------------

    fn act(&mut self, now: Time) -> bool {
        let mut progress = false;
        progress |= self.make_beacon_share();
        progress |= self.make_block(now);
        progress |= self.make_notarization_share(now);
        progress |= self.make_finalization_shares();
        progress |= self.make_cup_share();
        progress
    }

    fn bls_sign_share(&mut self, msg: &[u8], key: ShareKey) -> FixedBytes<48> {
        self.stats.bls_signatures += 1;
        #[cfg(feature = "sim")]
        if self.fault == Some(Fault::InvalidSignatures) {
            let mut wrong = Vec::from(b"not this".as_slice());
            wrong.extend_from_slice(msg);
            return FixedBytes(*self.me.multisig.sign(&wrong).as_bytes());
        }
        let s = match key {
            ShareKey::Multisig => self.me.multisig.sign(msg),
            ShareKey::Beacon => self.me.beacon_share.sign(msg),
            ShareKey::Subnet => self.me.subnet_share.sign(msg),
        };
        FixedBytes(*s.as_bytes())
    }

    fn log_signed(&mut self, artifact: &Artifact) {
        if self.record_signed {
            self.signed_log.push_back(artifact.clone());
        }
    }

    // ----- the persistent log of what this node signed ----------------------------------

    /// Keep what this node signs for [`Consensus::poll_signed`] (a driver with a store).
    pub fn set_record_signed(&mut self, on: bool) {
        self.record_signed = on;
        if !on {
            self.signed_log.clear();
            self.finality_log.clear();
        }
    }

    /// The next artifact that made a height final (a finalized block's random beacon and
    /// notarization, the finalization of the highest one), to log durably with the
    /// finalized blocks. A restarted node gets them back through
    /// [`Consensus::restore_signed`] (with the blocks), so it finalizes those heights again
    /// with the same blocks and serves them to peers: as the IC's persisted pool would.
    pub fn poll_finality(&mut self) -> Option<Artifact> {
        self.finality_log.pop_front()
    }

    /// Queues for [`Consensus::poll_finality`] what makes `chain` (newest first, `top` at
    /// its head) final, and the blocks of it the signed log does not hold (this node
    /// notarized none of them: it finalized them from its peers' shares). A driver logs a
    /// block again when it delivers it, but delivery waits for the next beacon: until then
    /// the finalization is only useful with the block beside it.
    fn log_finality(&mut self, chain: &[FinalizedBlock], top: Height, hash: &CryptoHash) {
        for fb in chain.iter().rev() {
            let logged_as_signed = self
                .supported
                .get(&fb.height)
                .is_some_and(|ranks| ranks.values().any(|h| *h == fb.hash));
            if !logged_as_signed {
                self.finality_log.push_back(Artifact::Block(BlockProposal {
                    block: fb.block.clone(),
                    signature: fb.signature,
                }));
            }
            let beacon = self
                .pool
                .validated_at(ArtifactKind::RandomBeacon as u8, fb.height.0)
                .map(|(_, a)| a.clone())
                .next();
            let id = Self::aggregate_id(ArtifactKind::Notarization, fb.height, &fb.hash);
            let notarization = self.pool.validated(&id).cloned();
            self.finality_log.extend(beacon);
            self.finality_log.extend(notarization);
        }
        let id = Self::aggregate_id(ArtifactKind::Finalization, top, hash);
        if let Some(f) = self.pool.validated(&id).cloned() {
            self.finality_log.push_back(f);
        }
    }

    /// The next artifact this node signed (or notarized: the block comes before its share),
    /// to log durably before anything is sent.
    pub fn poll_signed(&mut self) -> Option<Artifact> {
        self.signed_log.pop_front()
    }

    /// After a restart, before the first step: what [`Consensus::poll_signed`] returned
    /// before (above the CUP). The signing state is restored from it (so the node signs
    /// nothing it could not have signed had it not restarted: no second block, no share for
    /// a conflicting block), and the artifacts go back into the pool through validation, to
    /// be gossiped again. Beacon shares are unique signatures: the node signs them again.
    /// `artifacts` may also hold what [`Consensus::poll_finality`] returned and the finalized
    /// blocks: they go through validation like any received artifact.
    pub fn restore_signed(&mut self, artifacts: Vec<Artifact>) {
        let cup_h = self.cup_height();
        let ranks: BTreeMap<(Height, CryptoHash), Rank> = artifacts
            .iter()
            .filter_map(|a| match a {
                Artifact::Block(p) => Some(((p.block.height, p.block.hash()), p.block.rank)),
                _ => None,
            })
            .collect();
        for a in artifacts {
            let h = Height(a.id().height);
            if h <= cup_h {
                continue;
            }
            match &a {
                Artifact::Block(p) if p.block.maker == self.me.index => {
                    self.proposed.insert(h);
                    self.note_signed(h);
                }
                Artifact::NotarizationShare(s) if s.signer == self.me.index => {
                    // Unknown rank (block not logged): the best rank, so nothing else at h.
                    let rank = ranks.get(&(h, s.content.block)).copied().unwrap_or(Rank(0));
                    self.supported
                        .entry(h)
                        .or_default()
                        .insert(rank, s.content.block);
                    self.note_signed(h);
                }
                Artifact::FinalizationShare(s) if s.signer == self.me.index => {
                    self.finalization_shared.insert(h);
                    self.note_signed(h);
                }
                // Beacon shares are unique (deterministic) signatures: signed again when
                // due (the logged one may wait on a beacon the node does not have yet).
                Artifact::RandomBeaconShare(_) => continue,
                Artifact::CatchUpShare(s) if s.signer == self.me.index => {
                    self.cup_shared.insert(h);
                }
                _ => {}
            }
            let own_share = matches!(
                &a,
                Artifact::NotarizationShare(Share { signer, .. })
                    | Artifact::FinalizationShare(Share { signer, .. })
                    | Artifact::CatchUpShare(CatchUpShare { signer, .. })
                    if *signer == self.me.index
            );
            if own_share {
                // This node's own signature from its own log: valid, and gossiped again.
                let id = a.id();
                self.pool.insert_validated(a);
                self.outbox.push_back(Outgoing::Advert(id));
            } else {
                // Blocks wait for their beacon and parent like any received block.
                let me = self.me.index;
                self.on_artifact(me, a);
            }
        }
    }

    fn note_signed(&mut self, h: Height) {
        if h > self.signed_up_to {
            self.signed_up_to = h;
        }
    }

    fn make_beacon_share(&mut self) -> bool {
        let h = self.beacon_height.next();
        if h > self.notarized.next() || self.beacon_shared.contains(&h) {
            return false;
        }
        self.beacon_shared.insert(h);
        let parent = self.beacon_parent_for(h);
        let signature =
            self.bls_sign_share(&RandomBeacon::signed_message(h, &parent), ShareKey::Beacon);
        let share = Artifact::RandomBeaconShare(RandomBeaconShare {
            height: h,
            parent,
            signer: self.me.index,
            signature,
        });
        self.publish(share);
        true
    }

    fn publish(&mut self, artifact: Artifact) {
        self.log_signed(&artifact);
        self.pool.insert_validated(artifact.clone());
        self.outbox.push_back(Outgoing::Push {
            to: None,
            artifact: Box::new(artifact),
        });
    }

    fn make_block(&mut self, now: Time) -> bool {
        let h = self.notarized.next();
        let Some(start) = self.round_start.get(&h).copied() else {
            return false;
        };
        if self.proposed.contains(&h) || h <= self.signing_floor {
            return false;
        }
        if self.notarized.0 - self.finalized.0 >= self.params.max_notarization_lag_heights {
            return false;
        }
        let Some(ranking) = self.ranking(h) else {
            return false;
        };
        let Some(rank) = ranking.block_maker_rank(self.me.index) else {
            return false;
        };
        if now < start.plus_millis(self.params.block_maker_delay_ms(rank)) {
            return false;
        }
        self.proposed.insert(h);
        // The paper's rule: propose unless the height is already notarized. (Skipping
        // because a lower-rank block was seen would stall the height if that block's maker
        // equivocated and its rank gets disqualified later.)
        if self.any_notarization_at(h) {
            return true;
        }
        // The parent: the lowest-rank notarized block at h−1.
        let parent_h = h.prev();
        let parent_hash = if parent_h == self.cup_height() {
            Some(self.cup_block_hash)
        } else {
            self.blocks_at(parent_h)
                .into_iter()
                .map(|(_, hash)| hash)
                .find(|hash| self.is_notarized(parent_h, hash))
        };
        let Some(parent_hash) = parent_hash else {
            return true;
        };
        let Some(parent) = self.block(parent_h, &parent_hash) else {
            return true;
        };
        let payload = self.take_payload();
        let block = Block {
            version: BLOCK_VERSION,
            parent: parent_hash,
            height: h,
            rank,
            maker: self.me.index,
            time: Time(now.0.max(parent.time.0.saturating_add(1))),
            payload,
        };
        self.note_signed(h);
        self.stats.blocks_proposed += 1;
        let proposal = self.sign_block(block.clone());
        #[cfg(feature = "sim")]
        if self.fault == Some(Fault::EquivocatingBlockMaker) {
            let mut twin = block;
            twin.time = Time(twin.time.0 + 1);
            let twin = self.sign_block(twin);
            for peer in 0..self.keys.n() as NodeIndex {
                let which = if peer % 2 == 0 { &proposal } else { &twin };
                self.outbox.push_back(Outgoing::Push {
                    to: Some(peer),
                    artifact: Box::new(Artifact::Block(which.clone())),
                });
            }
            self.log_signed(&Artifact::Block(proposal.clone()));
            self.pool.insert_validated(Artifact::Block(proposal));
            return true;
        }
        self.publish(Artifact::Block(proposal));
        true
    }

    fn sign_block(&mut self, block: Block) -> BlockProposal {
        let msg = BlockProposal::signed_message(&block.hash());
        #[allow(unused_mut)]
        let mut signature = self.me.node_key.sign(&msg);
        #[cfg(feature = "sim")]
        if self.fault == Some(Fault::InvalidSignatures) {
            signature = self.me.node_key.sign(b"not a block");
        }
        BlockProposal {
            block,
            signature: FixedBytes(signature),
        }
    }

    fn take_payload(&mut self) -> Payload {
        let mut payload = Payload::default();
        let mut bytes = 0u64;
        while let Some(m) = self.ingress.front() {
            let next = bytes + m.len() as u64 + 4;
            if next > self.params.max_block_payload_bytes
                || payload.ingress.len() as u64 >= self.params.max_ingress_messages_per_block
            {
                break;
            }
            bytes = next;
            if let Some(m) = self.ingress.pop_front() {
                payload.ingress.push(m);
            }
        }
        payload
    }

    fn make_notarization_share(&mut self, now: Time) -> bool {
        let h = self.notarized.next();
        let Some(start) = self.round_start.get(&h).copied() else {
            return false;
        };
        if h <= self.signing_floor || self.any_notarization_at(h) {
            return false;
        }
        if self.notarized.0 - self.finalized.0 >= self.params.max_notarization_lag_heights {
            return false;
        }
        let blocks = self.blocks_at(h);
        #[cfg(feature = "sim")]
        if self.fault == Some(Fault::ConflictingShares) {
            return self.notarize_everything(h, &blocks);
        }
        let lag = self.notarized.0 - self.finalized.0;
        // A rank with two valid blocks is disqualified (its maker equivocated): support
        // neither, and do not let an earlier share for one of them block the next rank.
        let disqualified = |rank: Rank| blocks.iter().filter(|(r, _)| *r == rank).count() > 1;
        let supported_min = self
            .supported
            .get(&h)
            .and_then(|s| s.keys().copied().find(|r| !disqualified(*r)));
        for (rank, hash) in blocks.iter() {
            if now < start.plus_millis(self.params.notary_delay_ms(*rank, lag)) {
                return false;
            }
            if supported_min.is_some_and(|m| m <= *rank) {
                return false;
            }
            if disqualified(*rank) {
                continue;
            }
            self.supported.entry(h).or_default().insert(*rank, *hash);
            self.sign_notarization(h, *hash);
            return true;
        }
        false
    }

    fn sign_notarization(&mut self, h: Height, hash: CryptoHash) {
        self.note_signed(h);
        // The supported block goes into the log first: a restarted node learns its rank again.
        let id = Self::aggregate_id(ArtifactKind::Block, h, &hash);
        if let Some(block) = self.pool.validated(&id).cloned() {
            self.log_signed(&block);
        }
        let content = BlockRef {
            height: h,
            block: hash,
        };
        let signature = self.bls_sign_share(&content.notarization_message(), ShareKey::Multisig);
        self.publish(Artifact::NotarizationShare(Share {
            content,
            signer: self.me.index,
            signature,
        }));
    }

    #[cfg(feature = "sim")]
    fn notarize_everything(&mut self, h: Height, blocks: &[(Rank, CryptoHash)]) -> bool {
        let mut progress = false;
        let fake = domain_hash("cairn-made-up-block", &h.0.to_be_bytes());
        for (rank, hash) in blocks
            .iter()
            .copied()
            .chain(core::iter::once((Rank(99), fake)))
        {
            let done = self.supported.entry(h).or_default();
            if done.values().any(|x| *x == hash) {
                continue;
            }
            done.insert(Rank(rank.0 + 100 * done.len() as u32), hash);
            self.sign_notarization(h, hash);
            self.publish_finalization_share(h, hash);
            progress = true;
        }
        progress
    }

    /// Signs and publishes this node's finalization share for `hash` at `h`.
    fn publish_finalization_share(&mut self, h: Height, hash: CryptoHash) {
        let content = BlockRef {
            height: h,
            block: hash,
        };
        let signature = self.bls_sign_share(&content.finalization_message(), ShareKey::Multisig);
        self.publish(Artifact::FinalizationShare(Share {
            content,
            signer: self.me.index,
            signature,
        }));
    }

    fn make_finalization_shares(&mut self) -> bool {
        let mut progress = false;
        let lo = self.finalized.0.max(self.signing_floor.0) + 1;
        for h in lo..=self.notarized.0 {
            let h = Height(h);
            if self.finalization_shared.contains(&h) {
                continue;
            }
            let Some(supported) = self.supported.get(&h) else {
                continue;
            };
            if supported.len() != 1 {
                continue;
            }
            let Some(hash) = supported.values().next().copied() else {
                continue;
            };
            if !self.is_notarized(h, &hash) {
                continue;
            }
            self.finalization_shared.insert(h);
            self.note_signed(h);
            self.publish_finalization_share(h, hash);
            progress = true;
        }
        progress
    }

    fn make_cup_share(&mut self) -> bool {
        let k = self.params.cup_interval_heights.max(1);
        let next = (self.cup_height().0 / k + 1) * k;
        let h = Height(next);
        if h > self.finalized || self.cup_shared.contains(&h) {
            return false;
        }
        let Some(content) = self.cup_content(h) else {
            return false;
        };
        self.cup_shared.insert(h);
        let hash = content.hash();
        let signature =
            self.bls_sign_share(&CatchUpContent::signed_message(&hash), ShareKey::Subnet);
        self.publish(Artifact::CatchUpShare(CatchUpShare {
            height: h,
            content: hash,
            signer: self.me.index,
            signature,
        }));
        true
    }

    fn compute_deadline(&mut self, now: Time) -> Option<Time> {
        let h = self.notarized.next();
        let start = *self.round_start.get(&h)?;
        let mut deadline: Option<Time> = None;
        let mut consider = |t: Time| {
            if t > now {
                deadline = Some(deadline.map_or(t, |d| d.min(t)));
            }
        };
        if let Some(rank) = self
            .ranking(h)
            .and_then(|r| r.block_maker_rank(self.me.index))
        {
            if !self.proposed.contains(&h) {
                consider(start.plus_millis(self.params.block_maker_delay_ms(rank)));
            }
        }
        let lag = self.notarized.0 - self.finalized.0;
        for (rank, _) in self.blocks_at(h) {
            consider(start.plus_millis(self.params.notary_delay_ms(rank, lag)));
        }
        // Blocks waiting for the local clock to reach their time.
        for (_, a) in self.pool.unvalidated_at(ArtifactKind::Block as u8, h.0) {
            if let Artifact::Block(p) = a {
                consider(Time(p.block.time.0.saturating_sub(
                    BLOCK_TIME_SKEW_MS * crate::types::NANOS_PER_MILLI,
                )));
            }
        }
        deadline
    }
}

/// A share as collected for aggregation: (signer, signature, already validated).
type ShareEntry = (NodeIndex, FixedBytes<48>, bool);

enum BlockCheck {
    Valid,
    Invalid,
    Wait,
}

#[derive(Clone, Copy)]
enum ShareKey {
    Multisig,
    Beacon,
    Subnet,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::dealer::deal_subnet;

    /// Simulated milliseconds the four nodes below run for.
    const RUN_MS: u64 = 3_000;
    /// Simulated milliseconds between steps.
    const TICK_MS: u64 = 10;

    /// Hands node `i`'s outgoing artifacts to its peers at once (adverts as the artifact).
    fn deliver_outgoing(nodes: &mut [Consensus], i: usize) {
        while let Some(out) = nodes[i].poll_outgoing() {
            let (to, artifact) = match out {
                Outgoing::Push { to, artifact } => (to, *artifact),
                Outgoing::Advert(id) => match nodes[i].pool.validated(&id) {
                    Some(a) => (None, a.clone()),
                    None => continue,
                },
            };
            for (j, peer) in nodes.iter_mut().enumerate() {
                if j != i && to.is_none_or(|t| t as usize == j) {
                    peer.on_artifact(i as NodeIndex, artifact.clone());
                }
            }
        }
    }

    /// Four honest nodes hand each other every artifact directly. Every finalized block
    /// comes out carrying the hash of the validated random beacon at the next height (the
    /// seed of the batch's randomness), the same on every node, and never the block's own
    /// hash, which the maker could grind.
    #[test]
    fn finalized_blocks_carry_the_next_beacon() {
        let genesis = Time::from_millis(1_700_000_000_000);
        let (record, secrets) = deal_subnet(&[7; 32], 4, genesis).unwrap();
        let keys = SubnetKeys::from_record(&record).unwrap();
        let mut nodes: Vec<Consensus> = secrets
            .iter()
            .map(|s| {
                let me = NodeKeys::from_secrets(s).unwrap();
                Consensus::new(keys.clone(), me, ConsensusParams::FAST, None, Height(0))
            })
            .collect();
        let mut delivered: Vec<Vec<FinalizedBlock>> = vec![Vec::new(); nodes.len()];
        let mut now = genesis;
        while now.as_millis() < genesis.as_millis() + RUN_MS {
            now = now.plus_millis(TICK_MS);
            for i in 0..nodes.len() {
                nodes[i].step(now);
                deliver_outgoing(&mut nodes, i);
                while let Some(b) = nodes[i].poll_finalized() {
                    let beacon = nodes[i]
                        .beacon(b.height.next())
                        .expect("the next beacon is validated before delivery");
                    assert_eq!(b.next_beacon_hash, beacon.hash());
                    delivered[i].push(b);
                }
            }
        }
        for (i, blocks) in delivered.iter().enumerate() {
            assert!(blocks.len() >= 5, "node {i} delivered {}", blocks.len());
            for b in blocks {
                assert_ne!(b.next_beacon_hash, b.hash);
                // A node may skip heights below a CUP it adopted; where both delivered a
                // height, they agree on the block and on its randomness seed.
                if let Some(other) = delivered[0].iter().find(|o| o.height == b.height) {
                    assert!(other == b, "node {i} disagrees at height {:?}", b.height);
                }
            }
        }
    }

    /// Four nodes log what they sign; all four restart at once from the genesis CUP with no
    /// signing floor, restore their logs and go on: the subnet finalizes again, and no node
    /// ever signs two different blocks, two notarization shares of one rank or two
    /// finalization shares at one height (before and after the restart together).
    #[test]
    fn nodes_restored_from_their_signed_logs_go_on_without_equivocating() {
        let genesis = Time::from_millis(1_700_000_000_000);
        let (record, secrets) = deal_subnet(&[9; 32], 4, genesis).unwrap();
        let keys = SubnetKeys::from_record(&record).unwrap();
        let start = |logs: &[Vec<Artifact>]| -> Vec<Consensus> {
            secrets
                .iter()
                .zip(logs)
                .map(|(s, log)| {
                    let me = NodeKeys::from_secrets(s).unwrap();
                    let mut c =
                        Consensus::new(keys.clone(), me, ConsensusParams::FAST, None, Height(0));
                    c.set_record_signed(true);
                    c.restore_signed(log.clone());
                    c
                })
                .collect()
        };
        let run = |nodes: &mut Vec<Consensus>, logs: &mut Vec<Vec<Artifact>>, from: Time| {
            let mut now = from;
            while now.as_millis() < from.as_millis() + RUN_MS / 2 {
                now = now.plus_millis(TICK_MS);
                for i in 0..nodes.len() {
                    nodes[i].step(now);
                    while let Some(a) = nodes[i].poll_signed() {
                        logs[i].push(a);
                    }
                    deliver_outgoing(nodes, i);
                    while nodes[i].poll_finalized().is_some() {}
                }
            }
            now
        };
        let mut logs: Vec<Vec<Artifact>> = vec![Vec::new(); 4];
        let mut nodes = start(&logs);
        let now = run(&mut nodes, &mut logs, genesis);
        let before = nodes.iter().map(|n| n.finalized_height()).max().unwrap();
        assert!(before.0 >= 3, "finalized {before:?} before the restart");
        // Every node restarts; what it logged is all it keeps.
        let mut nodes = start(&logs);
        assert!(nodes.iter().all(|n| n.finalized_height() == Height(0)));
        run(&mut nodes, &mut logs, now);
        for (i, n) in nodes.iter().enumerate() {
            assert!(
                n.finalized_height().0 >= before.0 + 3,
                "node {i} finalized {:?} after the restart (before: {before:?})",
                n.finalized_height()
            );
        }
        for (i, log) in logs.iter().enumerate() {
            let mut blocks = BTreeMap::new();
            let mut notarized = BTreeMap::new();
            let mut finalized = BTreeMap::new();
            let rank_of: BTreeMap<CryptoHash, Rank> = log
                .iter()
                .filter_map(|a| match a {
                    Artifact::Block(p) => Some((p.block.hash(), p.block.rank)),
                    _ => None,
                })
                .collect();
            for a in log {
                match a {
                    Artifact::Block(p) if p.block.maker == i as NodeIndex => {
                        let prev = blocks.insert(p.block.height, p.block.hash());
                        assert!(
                            prev.is_none_or(|h| h == p.block.hash()),
                            "node {i}: two blocks"
                        );
                    }
                    Artifact::NotarizationShare(s) => {
                        let rank = rank_of[&s.content.block];
                        let prev = notarized.insert((s.content.height, rank), s.content.block);
                        assert!(
                            prev.is_none_or(|h| h == s.content.block),
                            "node {i}: two notarization shares of one rank"
                        );
                    }
                    Artifact::FinalizationShare(s) => {
                        let prev = finalized.insert(s.content.height, s.content.block);
                        assert!(
                            prev.is_none_or(|h| h == s.content.block),
                            "node {i}: two finalization shares"
                        );
                    }
                    _ => {}
                }
            }
        }
    }

    /// A node that finalized heights purely from its peers' shares (it notarization-signed
    /// none of those blocks) and whose newest finalized block was not yet delivered (the
    /// beacon above it had not come) restarts with no peer reachable: its log alone (what it
    /// signed, what made its heights final, and the blocks it delivered, as a driver with a
    /// store keeps them) finalizes every height it had finalized, the undelivered block's
    /// included.
    #[test]
    fn finalized_but_undelivered_blocks_are_final_again_from_the_log_alone() {
        let genesis = Time::from_millis(1_700_000_000_000);
        let (record, secrets) = deal_subnet(&[5; 32], 4, genesis).unwrap();
        let keys = SubnetKeys::from_record(&record).unwrap();
        let node = |i: usize| {
            let me = NodeKeys::from_secrets(&secrets[i]).unwrap();
            let mut c = Consensus::new(keys.clone(), me, ConsensusParams::FAST, None, Height(0));
            c.set_record_signed(true);
            c
        };
        // Nodes 0..3 finalize on their own; node 3 only listens, and what it hears is kept.
        let mut nodes: Vec<Consensus> = (0..3).map(node).collect();
        let mut heard: Vec<Artifact> = Vec::new();
        let mut now = genesis;
        while now.as_millis() < genesis.as_millis() + RUN_MS {
            now = now.plus_millis(TICK_MS);
            for i in 0..nodes.len() {
                nodes[i].step(now);
                while let Some(out) = nodes[i].poll_outgoing() {
                    let artifact = match out {
                        Outgoing::Push { artifact, .. } => *artifact,
                        Outgoing::Advert(id) => match nodes[i].pool.validated(&id) {
                            Some(a) => a.clone(),
                            None => continue,
                        },
                    };
                    for (j, peer) in nodes.iter_mut().enumerate() {
                        if j != i {
                            peer.on_artifact(i as NodeIndex, artifact.clone());
                        }
                    }
                    heard.push(artifact);
                }
                while nodes[i].poll_finalized().is_some() {}
            }
        }
        let top = nodes.iter().map(|n| n.finalized_height()).min().unwrap();
        assert!(top.0 >= 4, "the three finalized only {top:?}");
        // Node 3 hears everything up to `top` and nothing above: block `top` is final for
        // it but not deliverable (no beacon at `top + 1`).
        let mut listener = node(3);
        let mut log: Vec<Artifact> = Vec::new();
        for _ in 0..=top.0 {
            for a in heard.iter().filter(|a| a.id().height <= top.0) {
                listener.on_artifact(0, a.clone());
            }
            listener.step(now);
            while listener.poll_outgoing().is_some() {}
            while let Some(b) = listener.poll_finalized() {
                log.push(Artifact::Block(BlockProposal {
                    block: b.block,
                    signature: b.signature,
                }));
            }
        }
        assert_eq!(listener.finalized_height(), top);
        assert!(
            log.iter().all(|a| a.id().height < top.0),
            "block {top:?} was delivered without a beacon above it"
        );
        while let Some(a) = listener.poll_signed() {
            assert!(
                !matches!(a, Artifact::NotarizationShare(_)) || a.id().height > top.0,
                "node 3 notarization-signed at a height it finalized from its peers: {:?}",
                a.id()
            );
            log.push(a);
        }
        while let Some(a) = listener.poll_finality() {
            log.push(a);
        }
        // Restarted from the CUP it held (as a store keeps it) with that log, and nobody to
        // talk to.
        let me = NodeKeys::from_secrets(&secrets[3]).unwrap();
        let cup = listener.cup().clone();
        let mut restarted = Consensus::new(
            keys.clone(),
            me,
            ConsensusParams::FAST,
            Some(cup),
            Height(0),
        );
        restarted.set_record_signed(true);
        restarted.restore_signed(log);
        for _ in 0..=top.0 {
            restarted.step(now);
        }
        assert_eq!(restarted.finalized_height(), top);
    }
}
