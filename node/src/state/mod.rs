//! The replicated state: canisters (code, heap, stable memory, cycles, settings), their
//! message queues and call contexts, the ingress history, and its deterministic hash.
//!
//! Invariants: every collection that is iterated is ordered (`BTreeMap`, `VecDeque` in
//! arrival order); [`ReplicatedState::hash`] covers everything that influences future
//! execution, so two replicas with equal hashes behave identically.

pub mod codec;
pub mod hash;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::execution::runtime::{CompiledModule, HeapSnapshot, Paused};
use crate::execution::stable::StableMemory;
use crate::execution::system_api::WasmClosure;
use crate::types::Principal;

/// A 32-byte request id (computed by the API layer from the request's content).
pub type RequestId = [u8; 32];

/// The spec's reject codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum RejectCode {
    SysFatal = 1,
    SysTransient = 2,
    DestinationInvalid = 3,
    CanisterReject = 4,
    CanisterError = 5,
}

/// A reject: code, message, and the IC's error code string (e.g. `IC0503`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub code: RejectCode,
    pub message: String,
    pub error_code: &'static str,
}

/// The status of an ingress message (`/request_status/<id>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngressStatus {
    Received,
    Processing,
    Replied(Vec<u8>),
    Rejected(Reject),
    Done,
}

/// Where a response goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOrigin {
    Ingress {
        id: RequestId,
        sender: Principal,
    },
    Canister {
        caller: Principal,
        callback: u64,
    },
    /// Heartbeat, global timer: nobody waits for the response.
    System,
}

/// An ingress message inducted from a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ingress {
    pub id: RequestId,
    pub sender: Principal,
    pub receiver: Principal,
    pub method: String,
    pub arg: Vec<u8>,
}

/// A call from one canister to another (or to the management canister).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub sender: Principal,
    pub receiver: Principal,
    pub method: String,
    pub payload: Vec<u8>,
    pub cycles: u128,
    /// The sender's callback id that the response must name.
    pub sender_callback: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Reply(Vec<u8>),
    Reject(Reject),
}

/// The response to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub originator: Principal,
    pub respondent: Principal,
    pub originator_callback: u64,
    pub payload: Payload,
    pub refund: u128,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CanisterMessage {
    Ingress(Ingress),
    Request(Request),
    Response(Response),
}

/// An open call context: a call the canister received and has not finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallContext {
    pub origin: CallOrigin,
    pub responded: bool,
    /// Callbacks of this context still waiting for a response.
    pub outstanding: u32,
    /// Cycles attached to the call and not (yet) accepted.
    pub cycles_available: u128,
    pub method: String,
}

/// A call the canister made and is waiting on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callback {
    pub call_context: u64,
    pub respondent: Principal,
    pub on_reply: WasmClosure,
    pub on_reject: WasmClosure,
    pub on_cleanup: Option<WasmClosure>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CanisterStatus {
    Running,
    Stopping,
    Stopped,
}

impl CanisterStatus {
    /// The value `ic0.canister_status` returns.
    pub fn code(self) -> i32 {
        match self {
            CanisterStatus::Running => 1,
            CanisterStatus::Stopping => 2,
            CanisterStatus::Stopped => 3,
        }
    }
}

/// What a message that is executing over several rounds was.
pub struct PausedMessage {
    pub execution: alloc::boxed::Box<Paused>,
    pub call_context: u64,
    pub kind: PausedKind,
    pub prepaid_cycles: u128,
    /// The message being executed, so an aborted execution can start over.
    pub message: Option<CanisterMessage>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PausedKind {
    Update,
    ReplicatedQuery,
}

/// One canister.
pub struct CanisterState {
    pub id: Principal,
    pub controllers: Vec<Principal>,
    pub status: CanisterStatus,
    /// Who asked to stop it (answered once it is stopped).
    pub stop_waiters: Vec<CallOrigin>,
    pub cycles: u128,
    pub freezing_threshold_seconds: u64,
    pub wasm_memory_limit_bytes: u64,
    pub compute_allocation: u64,
    pub memory_allocation: u64,
    /// The installed module as given to `install_code` (for checkpoints and the hash).
    pub wasm: Option<Arc<Vec<u8>>>,
    /// The compiled module (a cache: rebuilt from `wasm` after a restart).
    pub module: Option<Arc<CompiledModule>>,
    /// Chunks of a large module uploaded with `upload_chunk`, by SHA-256, for
    /// `install_chunked_code` (the management canister bounds their size and number).
    pub wasm_chunk_store: BTreeMap<[u8; 32], Arc<Vec<u8>>>,
    pub heap: Option<HeapSnapshot>,
    /// Hash of `heap`, recomputed when it changes (None = stale).
    pub heap_hash: Option<[u8; 32]>,
    pub stable: StableMemory,
    pub certified_data: Vec<u8>,
    pub global_timer: Option<u64>,
    pub version: u64,
    pub input_queue: VecDeque<CanisterMessage>,
    pub call_contexts: BTreeMap<u64, CallContext>,
    pub next_call_context: u64,
    pub callbacks: BTreeMap<u64, Callback>,
    pub next_callback: u64,
    pub paused: Option<PausedMessage>,
    /// Instructions executed in total (performance counter type 1 and statistics).
    pub instructions_total: u64,
}

impl CanisterState {
    /// A copy for a composite query to run on: the same code, memories, balance and
    /// settings, with no queued messages, call contexts, callbacks or paused execution.
    /// (Memories are shared until written: stable memory chunks are reference-counted.)
    pub fn scratch_copy(&self) -> CanisterState {
        CanisterState {
            id: self.id,
            controllers: self.controllers.clone(),
            status: self.status,
            stop_waiters: Vec::new(),
            cycles: self.cycles,
            freezing_threshold_seconds: self.freezing_threshold_seconds,
            wasm_memory_limit_bytes: self.wasm_memory_limit_bytes,
            compute_allocation: self.compute_allocation,
            memory_allocation: self.memory_allocation,
            wasm: self.wasm.clone(),
            module: self.module.clone(),
            wasm_chunk_store: self.wasm_chunk_store.clone(),
            heap: self.heap.clone(),
            heap_hash: self.heap_hash,
            stable: self.stable.clone(),
            certified_data: self.certified_data.clone(),
            global_timer: self.global_timer,
            version: self.version,
            input_queue: VecDeque::new(),
            call_contexts: BTreeMap::new(),
            next_call_context: self.next_call_context,
            callbacks: BTreeMap::new(),
            next_callback: self.next_callback,
            paused: None,
            instructions_total: self.instructions_total,
        }
    }

    pub fn new(id: Principal, controllers: Vec<Principal>, cycles: u128) -> CanisterState {
        CanisterState {
            id,
            controllers,
            status: CanisterStatus::Running,
            stop_waiters: Vec::new(),
            cycles,
            freezing_threshold_seconds:
                crate::execution::cycles::DEFAULT_FREEZING_THRESHOLD_SECONDS,
            wasm_memory_limit_bytes: 0,
            compute_allocation: 0,
            memory_allocation: 0,
            wasm: None,
            module: None,
            wasm_chunk_store: BTreeMap::new(),
            heap: None,
            heap_hash: None,
            stable: StableMemory::default(),
            certified_data: Vec::new(),
            global_timer: None,
            version: 0,
            input_queue: VecDeque::new(),
            call_contexts: BTreeMap::new(),
            next_call_context: 0,
            callbacks: BTreeMap::new(),
            next_callback: 0,
            paused: None,
            instructions_total: 0,
        }
    }

    /// Bytes of memory the canister holds (heap + stable + code), for storage fees.
    pub fn memory_bytes(&self) -> u64 {
        let heap = self
            .heap
            .as_ref()
            .map(|h| h.memory.len() as u64)
            .unwrap_or(0);
        let wasm = self.wasm.as_ref().map(|w| w.len() as u64).unwrap_or(0);
        heap + self.stable.size_bytes() + wasm + self.wasm_chunk_store_bytes()
    }

    /// Bytes held in the Wasm chunk store.
    pub fn wasm_chunk_store_bytes(&self) -> u64 {
        self.wasm_chunk_store.values().map(|c| c.len() as u64).sum()
    }

    pub fn module_hash(&self) -> Option<[u8; 32]> {
        self.module.as_ref().map(|m| m.hash)
    }

    /// A custom section `icp:public <name>` / `icp:private <name>`: (public?, bytes).
    pub fn metadata(&self, name: &str) -> Option<(bool, &[u8])> {
        let m = self.module.as_ref()?;
        m.prepared
            .metadata
            .get(name)
            .map(|(public, bytes)| (*public, bytes.as_slice()))
    }

    /// Every `icp:` custom section: (name without the prefix, public?, bytes), by name.
    pub fn metadata_sections(&self) -> impl Iterator<Item = (&str, bool, &[u8])> {
        self.module.iter().flat_map(|m| {
            m.prepared
                .metadata
                .iter()
                .map(|(n, (public, bytes))| (n.as_str(), *public, bytes.as_slice()))
        })
    }

    pub fn is_controller(&self, p: &Principal) -> bool {
        self.controllers.contains(p)
    }
}

/// The whole replicated state of the subnet at one height.
#[derive(Default)]
pub struct ReplicatedState {
    pub height: u64,
    pub time_ns: u64,
    pub canisters: BTreeMap<Principal, CanisterState>,
    pub next_canister_index: u64,
    pub ingress_history: BTreeMap<RequestId, IngressStatus>,
    /// When each ingress message got its reply or reject (for the transition to `Done`).
    pub ingress_finished_ns: BTreeMap<RequestId, u64>,
    /// Requests to the management canister, processed in arrival order.
    pub subnet_queue: VecDeque<(CallOrigin, Principal, String, Vec<u8>, u128)>,
    /// The latest batch's randomness and how many `raw_rand` calls drew from it.
    pub randomness: [u8; 32],
    pub raw_rand_draws: u64,
    /// Outputs produced outside a canister's own execution (management replies, rejects of
    /// cancelled calls), routed at the next opportunity in the same round.
    pub pending_outputs: Vec<crate::execution::message::Output>,
}
