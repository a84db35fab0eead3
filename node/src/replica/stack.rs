//! The whole node, sans-IO: consensus [`Replica`], message routing and execution
//! ([`StateMachine`]), state certification ([`Certifier`]) and the HTTP interface
//! ([`HttpApi`]), wired as DESIGN.md's "One update call, end to end" describes.
//!
//! ```text
//! HTTP call ─▶ HttpApi ─▶ ApiBackend::submit_ingress ─▶ payload entry ─┬─▶ consensus ingress queue
//!                                                                     └─▶ gossip (Upper message)
//! finalized block ─▶ entries re-validated at block time ─▶ Batch ─▶ StateMachine::execute_batch
//!   ─▶ state tree of the height ─▶ share on "\x0Dic-state-root" ‖ root ─▶ gossip
//!   ─▶ n−f shares combine (verified against the subnet key) ─▶ CertifiedState ─▶ HttpApi
//! ```
//!
//! **Ingress payload encoding.** Each entry of a block's `payload.ingress` is
//! `0x01 ‖ len(ecid) (one byte, ≤ 29) ‖ ecid ‖ envelope`, where `ecid` is the effective
//! canister id of the HTTP request and `envelope` the CBOR body exactly as the client sent it
//! to `/api/v*/canister/<ecid>/call`. Every node decodes and authenticates each entry again at
//! the block's time (expiry window, signatures, delegations, effective canister rules), so a
//! block maker cannot forge or alter a user's message; entries that fail are skipped by
//! every node alike. Duplicates (gossiped messages several makers included) are inducted once:
//! the ingress history already holds their request id.
//!
//! **Batches.** Finalized block `h` becomes batch `h`: its time is the block's time, its
//! randomness is derived from the random beacon of height `h + 1` (threshold BLS, revealed
//! only after `h` is notarized, so no block maker can grind it; see [`randomness_of`]).
//!
//! **Certification.** After each batch the node builds the certified state tree of the spec
//! (`/time`, `/request_status`, `/canister/<id>/…`, `/subnet/<sid>/…` with node keys and
//! canister ranges; reference §2.2), signs its root with its subnet key share and gossips the
//! share ([`UpperMessage::Share`]). `n−f` shares on one root combine into the certificate the
//! API serves. Queries run on the newest executed state; they get a data certificate when that
//! state is the certified one.
//!
//! **Gaps.** A node that adopts a catch-up package jumps over blocks it never executed. A node
//! without a store ([`Stack::new`]) cannot continue: it stops executing and reports
//! `certified_state_behind` ([`Stack::stalled`]). A node with a store ([`Stack::with_store`])
//! fetches the state the CUP certifies from its peers (state sync) and continues.
//!
//! **Persistence** ([`Stack::with_store`]; the store's record layout and what the CUP
//! certifies are in [`super::persist`]). The node appends every finalized block, every
//! artifact it signs and its signing watermark to the store's pool log and makes them durable in
//! [`Stack::poll_transmit`] before any byte leaves; it writes a checkpoint of the state at
//! every CUP height and the CUP itself when it is made, and purges the log below both. On
//! start it loads the checkpoint (every chunk verified), resumes consensus from the stored CUP
//! with its own artifacts above it restored, and replays the logged blocks above the checkpoint. A checkpoint with a bad chunk, or a CUP
//! ahead of the state, is repaired by state sync ([`super::state_sync`]): manifest and chunks
//! come over p2p as [`UpperMessage`]s, each checked against the CUP and the manifest.
//! Every node of a subnet must run the same way: [`Stack::new`] and [`Stack::with_store`]
//! nodes certify different state hashes at CUP heights.

mod durable;

pub use durable::StoreStats;

use super::{Replica, ReplicaConfig, ReplicaError};
use crate::api::auth;
use crate::api::envelope::{Content, Envelope, RequestKind};
use crate::api::labeled_tree::HashedTree;
use crate::api::{
    self, ApiBackend, ApiConfig, CanisterEntry, CertifiedState, ConnId, HttpApi, ReplicaHealth,
    RequestStatus, StateTreeBuilder, SubnetEntry,
};
use crate::candid::{self, record, Type, TypeEnv};
use crate::consensus::certification::{CertificationShare, Certifier, CertifierStats};
use crate::consensus::FinalizedBlock;
use crate::crypto::dealer::{NodeKeys, SubnetKeys};
use crate::crypto::ed25519::NodeSigningKey;
use crate::execution::ExecutionConfig;
use crate::routing::{self, Batch, StateMachine};
use crate::state::IngressStatus;
use crate::types::{domain_hash, Height, NodeId, Principal, Time};
use alloc::collections::BTreeMap;
use alloc::string::ToString;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Version byte of a block payload's ingress entry.
pub const INGRESS_ENTRY_VERSION: u8 = 1;
/// Version of [`UpperMessage`] on the wire.
pub const UPPER_MESSAGE_VERSION: u8 = 1;
/// The last canister index of the subnet's single canister range `[0, CANISTER_INDEX_LAST]`
/// (the first range of the IC's root subnet).
pub const CANISTER_INDEX_LAST: u64 = 0xF_FFFF;
/// How often a node re-sends its share of the newest uncertified height.
pub const CERTIFICATION_RESEND_MS: u64 = 1_000;
/// Ingress messages remembered (accepted here or by gossip, not yet seen in a block).
pub const INGRESS_KNOWN_MAX: usize = 100_000;
/// State trees of executed, not yet certified heights kept for certification.
pub const UNCERTIFIED_TREES_MAX: usize = 128;
/// Domain of the per-batch randomness.
pub const DOMAIN_RANDOM_TAPE: &str = "cairn-random-tape";

/// What nodes exchange above consensus, inside [`crate::p2p::WireBody::Upper`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpperMessage {
    /// An ingress payload entry (see the module docs), gossiped so that any block maker can
    /// include it.
    Ingress(Vec<u8>),
    /// A state certification share.
    Share(CertificationShare),
    /// State sync: "send me the manifest of your checkpoint at `height`".
    ManifestRequest { height: u64 },
    /// State sync: the manifest (`store::Manifest::to_bytes`) of the checkpoint at `height`,
    /// and the execution state hash there (the CUP certifies both, see `persist`).
    Manifest {
        height: u64,
        state_hash: [u8; 32],
        bytes: Vec<u8>,
    },
    /// State sync: "send me chunk `index` of your checkpoint at `height`".
    ChunkRequest { height: u64, index: u32 },
    /// State sync: chunk `index` of the checkpoint at `height`.
    Chunk {
        height: u64,
        index: u32,
        bytes: Vec<u8>,
    },
    /// State sync: the sender has no (intact) checkpoint at `height` to serve.
    Unavailable { height: u64 },
}

#[derive(Serialize, Deserialize)]
struct UpperWire {
    version: u8,
    message: UpperMessage,
}

#[derive(Serialize)]
struct UpperWireRef<'a> {
    version: u8,
    message: &'a UpperMessage,
}

impl UpperMessage {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(&UpperWireRef {
            version: UPPER_MESSAGE_VERSION,
            message: self,
        })
        .unwrap_or_default()
    }

    /// Decodes untrusted bytes; never panics.
    pub fn decode(bytes: &[u8]) -> Option<UpperMessage> {
        let w: UpperWire = postcard::from_bytes(bytes).ok()?;
        (w.version == UPPER_MESSAGE_VERSION).then_some(w.message)
    }
}

/// `0x01 ‖ len(ecid) ‖ ecid ‖ envelope`.
pub fn encode_ingress_entry(ecid: &Principal, envelope: &[u8]) -> Vec<u8> {
    let id = ecid.as_slice();
    let mut v = Vec::with_capacity(2 + id.len() + envelope.len());
    v.push(INGRESS_ENTRY_VERSION);
    v.push(id.len() as u8);
    v.extend_from_slice(id);
    v.extend_from_slice(envelope);
    v
}

/// Splits an entry into (ecid, envelope bytes).
pub fn decode_ingress_entry(entry: &[u8]) -> Option<(Principal, &[u8])> {
    let (&version, rest) = entry.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if version != INGRESS_ENTRY_VERSION {
        return None;
    }
    let id = rest.get(..len as usize)?;
    let envelope = rest.get(len as usize..)?;
    Some((Principal::from_slice(id).ok()?, envelope))
}

/// Why an ingress entry is not executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryError {
    Encoding,
    Envelope,
    EffectiveCanister,
    Auth(auth::AuthError),
}

impl core::fmt::Display for EntryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EntryError::Encoding => f.write_str("malformed ingress entry"),
            EntryError::Envelope => f.write_str("malformed call envelope"),
            EntryError::EffectiveCanister => f.write_str("wrong effective canister id"),
            EntryError::Auth(e) => write!(f, "authentication failed: {e}"),
        }
    }
}

/// For calls to `aaaaa-aa`: the canister the call is about (its Candid `canister_id`, or
/// `target_canister` for `install_chunked_code`); `None` when any canister may be the
/// effective one or the argument cannot be decoded.
pub fn management_target(method: &str, arg: &[u8]) -> Option<Principal> {
    let field = match method {
        "create_canister" | "provisional_create_canister_with_cycles" | "raw_rand" => return None,
        "install_chunked_code" => "target_canister",
        _ => "canister_id",
    };
    let ty = record(&[(field, Type::Principal)]);
    let values = candid::decode_args(arg, &[ty], &TypeEnv::default()).ok()?;
    values.first()?.field(field)?.as_principal()
}

fn in_ranges(ranges: &[(Principal, Principal)], id: &Principal) -> bool {
    ranges.iter().any(|(lo, hi)| lo <= id && id <= hi)
}

/// Decodes and authenticates one payload entry at `time_ns` with the API's rules. Every node
/// runs this on every entry of a finalized block, so it depends only on its arguments.
pub fn validate_ingress_entry(
    entry: &[u8],
    time_ns: u64,
    root_key_der: &[u8],
    ranges: &[(Principal, Principal)],
) -> Result<routing::IngressMessage, EntryError> {
    let (ecid, body) = decode_ingress_entry(entry).ok_or(EntryError::Encoding)?;
    let env = Envelope::decode(body, RequestKind::Call).map_err(|_| EntryError::Envelope)?;
    let Content::Call(content) = &env.content else {
        return Err(EntryError::Envelope);
    };
    if !(ecid.is_management() || in_ranges(ranges, &ecid)) {
        return Err(EntryError::EffectiveCanister);
    }
    if content.canister_id.is_management() {
        if management_target(&content.method_name, &content.arg).is_some_and(|t| t != ecid) {
            return Err(EntryError::EffectiveCanister);
        }
    } else if content.canister_id != ecid {
        return Err(EntryError::EffectiveCanister);
    }
    auth::authenticate(&env, Some(ecid), time_ns, root_key_der).map_err(EntryError::Auth)?;
    Ok(routing::IngressMessage {
        id: env.request_id,
        sender: content.sender,
        canister_id: content.canister_id,
        method: content.method_name.clone(),
        arg: content.arg.clone(),
    })
}

/// The randomness of batch `h`: `H("cairn-random-tape" ‖ hash of the random beacon at h+1)`.
/// Equal on every node; that beacon is a threshold BLS signature revealed only after height
/// `h` is notarized, so the block maker can neither predict nor grind it (it plays the role
/// of the IC's random tape; see [`FinalizedBlock::next_beacon_hash`]).
pub fn randomness_of(block: &FinalizedBlock) -> [u8; 32] {
    domain_hash(DOMAIN_RANDOM_TAPE, &block.next_beacon_hash)
}

/// Everything a node of the full stack needs to start.
#[derive(Clone)]
pub struct StackConfig {
    pub replica: ReplicaConfig,
    pub api: ApiConfig,
}

/// Counters for metrics and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct StackStats {
    pub batches_executed: u64,
    pub ingress_executed: u64,
    pub ingress_entries_invalid: u64,
    pub ingress_accepted: u64,
    pub ingress_gossip_received: u64,
    pub ingress_queue_full: u64,
    pub instructions_executed: u64,
    pub upper_malformed: u64,
    pub certifier: CertifierStats,
}

/// The node minus the HTTP server (which borrows it as its [`ApiBackend`]).
struct Core {
    replica: Replica,
    sm: StateMachine,
    certifier: Certifier,
    node_key: NodeSigningKey,
    node_principal: Principal,
    root_key_der: Vec<u8>,
    subnet: SubnetEntry,
    certified: Option<CertifiedState>,
    trees: BTreeMap<u64, HashedTree>,
    /// Request id → ingress expiry of messages accepted and not yet seen in a block.
    known_ingress: BTreeMap<[u8; 32], u64>,
    now: Time,
    stalled: bool,
    stats: StackStats,
    /// The store and everything about persistence and state sync (`with_store` only).
    persist: Option<alloc::boxed::Box<durable::Persist>>,
}

/// One node of a subnet with every layer, sans-IO. The driver feeds peer bytes, HTTP bytes and
/// time, and sends what [`Stack::poll_transmit`] and [`Stack::take_http_outputs`] return.
pub struct Stack {
    core: Core,
    api: HttpApi,
    next_resend: Time,
}

impl Stack {
    /// Starts a node from genesis at `now`.
    pub fn new(config: StackConfig, now: Time) -> Result<Stack, ReplicaError> {
        Stack::start(config, now, None)
    }

    /// [`Stack::new`], or with `signed` a node with a store ([`Replica::restarting`]).
    fn start(
        config: StackConfig,
        now: Time,
        signed: Option<Vec<crate::consensus::Artifact>>,
    ) -> Result<Stack, ReplicaError> {
        let keys = SubnetKeys::from_record(&config.replica.record).map_err(ReplicaError::Record)?;
        let me = NodeKeys::from_secrets(&config.replica.secrets).map_err(ReplicaError::Record)?;
        let mut replica = Replica::restarting(config.replica, now, signed)?;
        replica.require_state_hashes();
        let root_key_der = keys.subnet.group_key.to_der().to_vec();
        let subnet_id = keys.subnet_id.0;
        let ranges = alloc::vec![(
            Principal::from_canister_index(0),
            Principal::from_canister_index(CANISTER_INDEX_LAST),
        )];
        let nodes = keys
            .node_keys
            .iter()
            .map(|k| (k.node_id().0, k.to_der().to_vec()))
            .collect();
        let subnet = SubnetEntry {
            id: subnet_id,
            public_key_der: root_key_der.clone(),
            canister_ranges: ranges,
            nodes,
            subnet_type: Some("system".to_string()),
        };
        let sm = StateMachine::new(ExecutionConfig {
            subnet_id,
            root_key: root_key_der.clone(),
            ..ExecutionConfig::default()
        });
        let certifier = Certifier::new(me.index, me.subnet_share.clone(), keys.subnet.clone());
        let node_principal = me.node_key.public_key().node_id().0;
        let core = Core {
            replica,
            sm,
            certifier,
            node_key: me.node_key,
            node_principal,
            root_key_der,
            subnet,
            certified: None,
            trees: BTreeMap::new(),
            known_ingress: BTreeMap::new(),
            now,
            stalled: false,
            stats: StackStats::default(),
            persist: None,
        };
        Ok(Stack {
            core,
            api: HttpApi::new(config.api),
            next_resend: now.plus_millis(CERTIFICATION_RESEND_MS),
        })
    }

    /// Starts a node over its store, at `now`: what `Store::open_or_format` returned for the
    /// node's disk (`recovery` from the same call). The store must be formatted with
    /// `chunk_bytes ==` [`super::persist::CHECKPOINT_CHUNK_BYTES`] (see [`store_config`]).
    ///
    /// Recovery: the stored CUP (if newer than `config.replica.resume_from`) is where
    /// consensus resumes; the artifacts the node signed above it are restored from the pool
    /// log (so it signs nothing conflicting, and gossips them again: see `persist`); the
    /// signing floor is the higher of `config.replica.signing_floor` and the CUP (and the
    /// logged watermark if the log has no own artifacts up to it); the checkpoint is loaded with every chunk verified, and the
    /// logged finalized blocks above it are executed again. A bad chunk, or a CUP ahead of the
    /// state, starts state sync from the peers (the node executes nothing until it is done).
    ///
    /// The driver then runs the node exactly as one from [`Stack::new`]; the store is written
    /// from inside the calls (a flush at most once per [`Stack::poll_transmit`] burst, a
    /// checkpoint and a CUP commit per CUP interval). If the store fails, the node stops
    /// sending ([`Stack::store_error`]): reopen the store and start again.
    pub fn with_store(
        config: StackConfig,
        store: crate::store::Store<alloc::boxed::Box<dyn crate::store::BlockDevice>>,
        recovery: crate::store::Recovery,
        now: Time,
    ) -> Result<Stack, ReplicaError> {
        durable::start(config, store, recovery, now)
    }

    /// With a store: the height of the state being synced from peers, if any.
    pub fn syncing(&self) -> Option<u64> {
        self.core
            .persist
            .as_ref()?
            .sync
            .as_ref()
            .map(|s| s.target().height())
    }

    /// With a store: counters of persistence, recovery and state sync.
    pub fn store_stats(&self) -> Option<StoreStats> {
        self.core.persist.as_ref().map(|p| p.stats)
    }

    /// With a store: the error that stopped it (the node then sends nothing).
    pub fn store_error(&self) -> Option<crate::store::StoreError> {
        self.core.persist.as_ref()?.failed
    }

    /// With a store: the store (e.g. for diagnostics; tests inject faults through it).
    pub fn store_mut(
        &mut self,
    ) -> Option<&mut crate::store::Store<alloc::boxed::Box<dyn crate::store::BlockDevice>>> {
        self.core.persist.as_mut().map(|p| &mut p.store)
    }

    /// Closes the node and hands back its store (a clean shutdown: nothing is lost that
    /// [`Stack::poll_transmit`] made durable).
    pub fn into_store(
        self,
    ) -> Option<crate::store::Store<alloc::boxed::Box<dyn crate::store::BlockDevice>>> {
        self.core.persist.map(|p| p.store)
    }

    pub fn node_id(&self) -> NodeId {
        self.core.replica.node_id()
    }

    /// DER of the subnet's (= root) public key, as `/api/v2/status` serves it.
    pub fn root_key_der(&self) -> &[u8] {
        &self.core.root_key_der
    }

    pub fn subnet_id(&self) -> Principal {
        self.core.subnet.id
    }

    pub fn canister_ranges(&self) -> &[(Principal, Principal)] {
        &self.core.subnet.canister_ranges
    }

    pub fn finalized_height(&self) -> Height {
        self.core.replica.finalized_height()
    }

    /// The height of the newest executed batch.
    pub fn executed_height(&self) -> u64 {
        self.core.sm.height()
    }

    /// The newest certified height (0 before the first certification).
    pub fn certified_height(&self) -> u64 {
        self.core.certified.as_ref().map(|c| c.height).unwrap_or(0)
    }

    pub fn certified_state(&self) -> Option<&CertifiedState> {
        self.core.certified.as_ref()
    }

    /// True when the node skipped blocks (adopted a catch-up package) and cannot execute. A
    /// node with a store is then syncing the state ([`Stack::syncing`]) and recovers; one
    /// without stays stalled.
    pub fn stalled(&self) -> bool {
        self.core.stalled
    }

    pub fn state_machine(&self) -> &StateMachine {
        &self.core.sm
    }

    pub fn replica(&self) -> &Replica {
        &self.core.replica
    }

    pub fn stats(&self) -> StackStats {
        StackStats {
            certifier: self.core.certifier.stats(),
            ..self.core.stats
        }
    }

    /// Bytes read from `peer`'s stream.
    pub fn handle_peer_bytes(&mut self, peer: NodeId, bytes: &[u8], now: Time) {
        self.core.now = now;
        self.core.replica.handle_peer_bytes(peer, bytes, now);
        self.process(now);
    }

    /// The driver's connection to `peer` was closed or re-opened.
    pub fn peer_connection_reset(&mut self, peer: NodeId) {
        self.core.replica.peer_connection_reset(peer);
    }

    /// Time passed: call when `now >= poll_deadline()` (more often is harmless).
    pub fn handle_timeout(&mut self, now: Time) {
        self.core.now = now;
        self.core.replica.handle_timeout(now);
        self.core.sync_tick(now);
        if now >= self.next_resend {
            if let Some(share) = self.core.certifier.latest_own_share() {
                let bytes = UpperMessage::Share(share).encode();
                self.core.replica.send_upper(None, bytes, now);
            }
            self.core.forget_expired_ingress(now);
            self.next_resend = now.plus_millis(CERTIFICATION_RESEND_MS);
        }
        self.api.poll(&mut self.core, now.0);
        self.process(now);
    }

    /// When to call [`Stack::handle_timeout`] next.
    pub fn poll_deadline(&self) -> Time {
        let mut t = self.core.replica.poll_deadline().min(self.next_resend);
        if let Some(d) = self.api.next_deadline_ns() {
            t = t.min(Time(d));
        }
        if let Some(d) = self.core.sync_deadline() {
            t = t.min(d);
        }
        t
    }

    /// Next bytes to write to a peer's stream. With a store, what the node appended to its
    /// pool log (finalized blocks, the signing watermark) is made durable first, so nothing
    /// leaves the node before what it depends on survives a crash; if the store fails, nothing
    /// leaves at all ([`Stack::store_error`]).
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<u8>)> {
        if !self.core.make_durable() {
            return None;
        }
        self.core.replica.poll_transmit()
    }

    /// A new HTTP client connection.
    pub fn http_connect(&mut self, conn: ConnId, now: Time) {
        self.api.connect(conn, now.0);
    }

    /// Bytes from an HTTP client.
    pub fn http_receive(&mut self, conn: ConnId, bytes: &[u8], now: Time) {
        self.core.now = now;
        self.api.receive(&mut self.core, conn, bytes, now.0);
        self.process(now);
    }

    /// The client closed, or the driver dropped the connection.
    pub fn http_disconnect(&mut self, conn: ConnId) {
        self.api.disconnect(conn);
    }

    /// HTTP bytes to send (close the connection after sending where `close` is set).
    pub fn take_http_outputs(&mut self) -> Vec<api::Output> {
        self.api.take_outputs()
    }

    /// The driver's own samples for `GET /metrics` (peers, uptime, store usage), replacing
    /// the previous set; the node adds its heights and counters ([`Stack::metrics`]).
    pub fn set_driver_metrics(&mut self, samples: Vec<api::Metric>) {
        self.api.set_driver_metrics(samples);
    }

    /// What `GET /_/attestation` serves: the driver's attestation report, or (`None`) a 404
    /// with `reason` ([`HttpApi::set_attestation_report`]).
    pub fn set_attestation_report(&mut self, report: Option<Vec<u8>>, reason: &str) {
        self.api.set_attestation_report(report, reason);
    }

    /// The node's own `/metrics` samples: heights, batches, ingress, instructions.
    pub fn metrics(&self) -> Vec<api::Metric> {
        self.core.metrics()
    }

    /// Runs everything the last input made possible: executes finalized blocks, handles
    /// upper-layer messages, sends shares, installs certifications and wakes parked calls.
    fn process(&mut self, now: Time) {
        loop {
            let mut progress = false;
            while let Some(block) = self.core.replica.poll_finalized() {
                self.core.execute(block);
                progress = true;
            }
            while let Some((from, bytes)) = self.core.replica.poll_upper() {
                self.core.on_upper(from, &bytes, now);
                progress = true;
            }
            while let Some(share) = self.core.certifier.poll_outgoing() {
                let bytes = UpperMessage::Share(share).encode();
                self.core.replica.send_upper(None, bytes, now);
            }
            let mut certified = false;
            while let Some(c) = self.core.certifier.poll_certified() {
                self.core.install_certification(c.height, c.signature);
                certified = true;
            }
            if certified {
                self.api.poll(&mut self.core, now.0);
            }
            if !progress {
                break;
            }
        }
        self.core.after_step(now);
    }
}

fn request_status(s: &IngressStatus) -> RequestStatus {
    match s {
        IngressStatus::Received => RequestStatus::Received,
        IngressStatus::Processing => RequestStatus::Processing,
        IngressStatus::Replied(r) => RequestStatus::Replied(r.clone()),
        IngressStatus::Rejected(r) => RequestStatus::Rejected {
            code: r.code as u64,
            message: r.message.clone(),
            error_code: Some(r.error_code.to_string()),
        },
        IngressStatus::Done => RequestStatus::Done,
    }
}

impl Core {
    fn execute(&mut self, block: FinalizedBlock) {
        if self.persist.is_some() {
            self.execute_durable(block);
            return;
        }
        if self.stalled {
            return;
        }
        let height = block.height.0;
        if height != self.sm.height() + 1 {
            // Blocks were skipped (a catch-up package was adopted): needs state sync.
            self.stalled = true;
            return;
        }
        self.execute_block(block);
    }

    /// Executes the next block (`block.height == sm.height() + 1`).
    fn execute_block(&mut self, block: FinalizedBlock) {
        let time_ns = block.block.time.0;
        let mut ingress = Vec::new();
        for entry in &block.block.payload.ingress {
            match validate_ingress_entry(
                entry,
                time_ns,
                &self.root_key_der,
                &self.subnet.canister_ranges,
            ) {
                Ok(m) => {
                    self.known_ingress.remove(&m.id);
                    ingress.push(m);
                }
                Err(_) => self.stats.ingress_entries_invalid += 1,
            }
        }
        self.stats.ingress_executed += ingress.len() as u64;
        let batch = Batch {
            time_ns,
            randomness: randomness_of(&block),
            ingress,
        };
        let result = self.sm.execute_batch(batch);
        self.stats.batches_executed += 1;
        self.stats.instructions_executed += result.instructions;
        let state_hash = self.checkpoint_if_due(result.height, result.state_hash);
        self.replica.set_state_hash(block.height, state_hash);
        let tree = self.build_tree();
        let root = tree.digest();
        self.trees.insert(result.height, tree);
        while self.trees.len() > UNCERTIFIED_TREES_MAX {
            self.trees.pop_first();
        }
        self.certifier.on_local_root(result.height, root);
    }

    /// The spec's state tree of the current execution state.
    fn build_tree(&self) -> HashedTree {
        let st = &self.sm.state;
        let mut b = StateTreeBuilder::new(st.time_ns);
        for (rid, status) in &st.ingress_history {
            b.request_status(rid, &request_status(status));
        }
        for (id, c) in &st.canisters {
            let metadata = c
                .module
                .as_ref()
                .map(|m| {
                    m.prepared
                        .metadata
                        .iter()
                        .map(|(name, (_, bytes))| (name.clone(), bytes.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let entry = CanisterEntry {
                module_hash: c.module_hash(),
                controllers: c.controllers.clone(),
                certified_data: c.certified_data.clone(),
                metadata,
            };
            b.canister(id, &entry);
        }
        b.subnet(&self.subnet);
        b.build()
    }

    fn install_certification(&mut self, height: u64, signature: [u8; 48]) {
        let Some(tree) = self.trees.remove(&height) else {
            return;
        };
        self.trees = self.trees.split_off(&height);
        self.certified = Some(CertifiedState {
            height,
            tree,
            signature,
            delegation: None,
        });
    }

    fn on_upper(&mut self, from: NodeId, bytes: &[u8], now: Time) {
        let Some(message) = UpperMessage::decode(bytes) else {
            self.stats.upper_malformed += 1;
            return;
        };
        match message {
            UpperMessage::ManifestRequest { .. }
            | UpperMessage::Manifest { .. }
            | UpperMessage::ChunkRequest { .. }
            | UpperMessage::Chunk { .. }
            | UpperMessage::Unavailable { .. } => self.on_sync_message(from, message, now),
            UpperMessage::Share(share) => {
                let Some(index) = self.replica.members().iter().position(|m| *m == from) else {
                    return;
                };
                self.certifier.on_share(index as u32, share);
            }
            UpperMessage::Ingress(entry) => {
                self.stats.ingress_gossip_received += 1;
                let Ok(m) = validate_ingress_entry(
                    &entry,
                    now.0,
                    &self.root_key_der,
                    &self.subnet.canister_ranges,
                ) else {
                    return;
                };
                if self.known_ingress.contains_key(&m.id)
                    || self.sm.request_status(&m.id).is_some()
                    || self.known_ingress.len() >= INGRESS_KNOWN_MAX
                {
                    return;
                }
                let expiry = Envelope::decode(
                    decode_ingress_entry(&entry).map(|(_, e)| e).unwrap_or(&[]),
                    RequestKind::Call,
                )
                .map(|e| e.ingress_expiry_ns())
                .unwrap_or(0);
                self.known_ingress.insert(m.id, expiry);
                if self.replica.submit_ingress(entry).is_err() {
                    self.stats.ingress_queue_full += 1;
                }
            }
        }
    }

    fn forget_expired_ingress(&mut self, now: Time) {
        self.known_ingress.retain(|_, expiry| *expiry >= now.0);
    }
}

impl ApiBackend for Core {
    fn root_key_der(&self) -> &[u8] {
        &self.root_key_der
    }

    fn subnet_id(&self) -> Principal {
        self.subnet.id
    }

    fn canister_ranges(&self) -> &[(Principal, Principal)] {
        &self.subnet.canister_ranges
    }

    fn health(&self) -> ReplicaHealth {
        match &self.certified {
            _ if self.persist.as_ref().is_some_and(|p| p.failed.is_some()) => {
                ReplicaHealth::CertifiedStateBehind
            }
            _ if self.stalled => ReplicaHealth::CertifiedStateBehind,
            None => ReplicaHealth::WaitingForCertifiedState,
            Some(_) => ReplicaHealth::Healthy,
        }
    }

    fn certified_state(&self) -> Option<&CertifiedState> {
        self.certified.as_ref()
    }

    fn submit_ingress(&mut self, msg: api::IngressMessage) -> Result<(), api::Reject> {
        let content = &msg.content;
        if !content.canister_id.is_management() {
            let m = routing::IngressMessage {
                id: msg.request_id,
                sender: content.sender,
                canister_id: content.canister_id,
                method: content.method_name.clone(),
                arg: content.arg.clone(),
            };
            self.sm.inspect_ingress(&m).map_err(api_reject)?;
        }
        if self.known_ingress.len() >= INGRESS_KNOWN_MAX {
            return Err(api::Reject {
                code: 2,
                message: "ingress pool full".to_string(),
                error_code: "IC0515".to_string(),
            });
        }
        let entry = encode_ingress_entry(&msg.effective_canister_id, &msg.envelope);
        if self.replica.submit_ingress(entry.clone()).is_err() {
            self.stats.ingress_queue_full += 1;
            return Err(api::Reject {
                code: 2,
                message: "ingress queue full".to_string(),
                error_code: "IC0515".to_string(),
            });
        }
        self.known_ingress
            .insert(msg.request_id, content.ingress_expiry_ns);
        self.stats.ingress_accepted += 1;
        let now = self.now;
        self.replica
            .send_upper(None, UpperMessage::Ingress(entry).encode(), now);
        Ok(())
    }

    fn query(&mut self, content: &api::envelope::CallContent) -> Result<Vec<u8>, api::Reject> {
        let certificate = self
            .certified
            .as_ref()
            .filter(|c| c.height == self.sm.height())
            .map(|c| c.data_certificate(&content.canister_id));
        self.sm
            .query(
                content.canister_id,
                &content.method_name,
                content.arg.clone(),
                content.sender,
                certificate,
            )
            .map_err(api_reject)
    }

    fn node_id(&self) -> Principal {
        self.node_principal
    }

    fn sign_with_node_key(&self, message: &[u8]) -> [u8; 64] {
        self.node_key.sign(message)
    }

    fn management_target(&self, method: &str, arg: &[u8]) -> Option<Principal> {
        management_target(method, arg)
    }

    fn metrics(&self) -> Vec<api::Metric> {
        use api::Metric;
        let s = self.stats;
        let c = self.certifier.stats();
        let r = self.replica.stats().consensus;
        let certified = self.certified.as_ref().map_or(0, |c| c.height);
        alloc::vec![
            Metric::gauge(
                "cairn_finalized_height",
                "newest finalized block height",
                self.replica.finalized_height().0,
            ),
            Metric::gauge(
                "cairn_notarized_height",
                "newest notarized block height (consensus rounds)",
                self.replica.notarized_height().0,
            ),
            Metric::gauge(
                "cairn_cup_height",
                "height of the newest catch-up package",
                self.replica.cup_height().0,
            ),
            Metric::gauge(
                "cairn_executed_height",
                "newest executed batch",
                self.sm.height(),
            ),
            Metric::gauge(
                "cairn_certified_height",
                "newest height with a certified state",
                certified,
            ),
            Metric::gauge(
                "cairn_stalled",
                "1 when blocks were skipped and execution waits for state sync",
                u64::from(self.stalled),
            ),
            Metric::counter(
                "cairn_batches_executed_total",
                "batches (finalized blocks) executed",
                s.batches_executed,
            ),
            Metric::counter(
                "cairn_blocks_proposed_total",
                "blocks this node proposed",
                r.blocks_proposed,
            ),
            Metric::counter(
                "cairn_ingress_accepted_total",
                "update calls accepted by this node's API",
                s.ingress_accepted,
            ),
            Metric::counter(
                "cairn_ingress_executed_total",
                "ingress messages inducted from finalized blocks",
                s.ingress_executed,
            ),
            Metric::counter(
                "cairn_ingress_invalid_total",
                "block ingress entries that failed validation",
                s.ingress_entries_invalid,
            ),
            Metric::counter(
                "cairn_ingress_queue_full_total",
                "ingress messages refused because the queue was full",
                s.ingress_queue_full,
            ),
            Metric::counter(
                "cairn_instructions_executed_total",
                "Wasm instructions executed (fuel)",
                s.instructions_executed,
            ),
            Metric::counter(
                "cairn_heights_certified_total",
                "heights whose certification this node combined or received",
                c.heights_certified,
            ),
            Metric::gauge(
                "cairn_ingress_known",
                "ingress messages accepted or gossiped, not yet in a block",
                self.known_ingress.len() as u64,
            ),
        ]
    }
}

fn api_reject(r: crate::state::Reject) -> api::Reject {
    api::Reject {
        code: r.code as u64,
        message: r.message,
        error_code: r.error_code.to_string(),
    }
}

/// The store configuration [`Stack::with_store`] expects (`format_nonce` from the driver's
/// entropy or clock; the segment size is free).
pub fn store_config(format_nonce: u64) -> crate::store::StoreConfig {
    crate::store::StoreConfig {
        chunk_bytes: super::persist::CHECKPOINT_CHUNK_BYTES,
        format_nonce,
        ..crate::store::StoreConfig::default()
    }
}

/// Helpers for drivers and tests: a subnet's stack configurations from the genesis dealer.
pub fn genesis_configs(
    seed: &[u8; 32],
    n: usize,
    genesis: Time,
    params: crate::consensus::ConsensusParams,
    api: ApiConfig,
) -> Result<Vec<StackConfig>, crate::crypto::dealer::RecordError> {
    let (record, secrets) = crate::crypto::dealer::deal_subnet(seed, n, genesis)?;
    Ok(secrets
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut entropy = [0u8; 32];
            entropy[..8].copy_from_slice(&(i as u64).to_le_bytes());
            entropy[8..].copy_from_slice(&seed[..24]);
            StackConfig {
                replica: ReplicaConfig {
                    record: record.clone(),
                    secrets: s,
                    params,
                    entropy: domain_hash("cairn-channel-entropy", &entropy),
                    signing_floor: Height(0),
                    status_interval_ms: super::STATUS_INTERVAL_MS,
                    resume_from: None,
                },
                api: api.clone(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingress_entries_round_trip_and_reject_garbage() {
        let ecid = Principal::from_canister_index(3);
        let e = encode_ingress_entry(&ecid, b"abc");
        assert_eq!(decode_ingress_entry(&e), Some((ecid, &b"abc"[..])));
        assert_eq!(decode_ingress_entry(&[]), None);
        assert_eq!(decode_ingress_entry(&[2, 0]), None);
        assert_eq!(decode_ingress_entry(&[1, 30]), None);
        let ranges = [(
            Principal::from_canister_index(0),
            Principal::from_canister_index(CANISTER_INDEX_LAST),
        )];
        assert_eq!(
            validate_ingress_entry(&e, 0, &[], &ranges),
            Err(EntryError::Envelope)
        );
        assert_eq!(
            validate_ingress_entry(b"\x01", 0, &[], &ranges),
            Err(EntryError::Encoding)
        );
    }

    #[test]
    fn upper_messages_decode_only_their_own_version() {
        let m = UpperMessage::Ingress(alloc::vec![1, 2, 3]);
        let bytes = m.encode();
        assert_eq!(UpperMessage::decode(&bytes), Some(m));
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        assert_eq!(UpperMessage::decode(&wrong), None);
        assert_eq!(UpperMessage::decode(&[0xff; 7]), None);
    }

    #[test]
    fn management_target_reads_the_candid_canister_id() {
        let id = Principal::from_canister_index(7);
        let arg = candid::encode_args(&[(
            record(&[("canister_id", Type::Principal)]),
            candid::Value::Record(alloc::vec![(
                candid::field_id("canister_id"),
                candid::Value::Principal(id)
            )]),
        )])
        .unwrap();
        assert_eq!(management_target("install_code", &arg), Some(id));
        assert_eq!(
            management_target("provisional_create_canister_with_cycles", &arg),
            None
        );
        assert_eq!(management_target("install_code", b"garbage"), None);
    }
}
