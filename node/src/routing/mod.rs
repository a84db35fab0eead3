//! Message routing: a finalized batch (ordered ingress messages, time, randomness from
//! consensus) is inducted into canister input queues, the round is executed, outputs are
//! routed between canisters of this subnet, and the state advances one height.
//!
//! [`StateMachine`] is the interface the rest of the node uses:
//! - [`StateMachine::execute_batch`] — the replicated path; returns the new height's state
//!   hash (equal on every replica that executed the same batches);
//! - [`StateMachine::query`] — non-replicated query calls (never persisted), with the
//!   certificate the API layer passes in for `data_certificate_*`;
//! - [`StateMachine::request_status`] — `/request_status/<id>` by the 32-byte request id
//!   the API layer computed;
//! - [`StateMachine::canister`] — metadata for the certified state tree (module hash,
//!   controllers, certified data, `icp:` custom sections).
//!
//! Ordering guarantees: messages from one canister to another are delivered in the order
//! they were sent (one FIFO input queue per canister); canisters are visited in id order,
//! starting from a rotation by height so that no canister is always first.

pub mod checkpoint;

pub use checkpoint::CheckpointError;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::execution::cycles;
use crate::execution::management::{self, MgmtResult};
use crate::execution::message::{
    self, execute_next, execute_query, origin_output, reject, run_system_tasks, Env, Output,
};
use crate::execution::runtime::Runtime;
use crate::execution::wasm::ExportedMethod;
use crate::execution::ExecutionConfig;
use crate::state::{
    CallOrigin, CanisterMessage, CanisterState, CanisterStatus, Ingress, IngressStatus, Payload,
    Reject, RejectCode, ReplicatedState, RequestId, Response,
};
use crate::types::Principal;

/// Passes over all canisters within one round (each pass routes the previous one's outputs).
pub const ROUND_PASSES_MAX: usize = 64;
/// Ingress messages one batch may carry.
pub const BATCH_INGRESS_MAX: usize = 10_000;
/// Messages waiting in one canister's input queue.
pub const INPUT_QUEUE_MESSAGES_MAX: usize = 10_000;
/// Heights whose state hashes are kept for lookups.
pub const STATE_HASHES_KEPT: usize = 1_024;
/// How long a reply or reject stays in the ingress history before the status becomes
/// `done` (the spec's maximum ingress expiry, 5 minutes).
pub const INGRESS_HISTORY_REPLY_KEPT_NS: u64 = 300_000_000_000;
/// How long a `done` status stays before the entry is pruned.
pub const INGRESS_HISTORY_DONE_KEPT_NS: u64 = 300_000_000_000;

/// An ingress message as consensus delivers it; `id` is the request id the API computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressMessage {
    pub id: RequestId,
    pub sender: Principal,
    pub canister_id: Principal,
    pub method: String,
    pub arg: Vec<u8>,
}

/// One finalized block's worth of input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub time_ns: u64,
    /// The random beacon's output for this height (randomness for `raw_rand`).
    pub randomness: [u8; 32],
    pub ingress: Vec<IngressMessage>,
}

/// What executing a batch produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchResult {
    pub height: u64,
    pub state_hash: [u8; 32],
    pub instructions: u64,
}

pub struct StateMachine {
    pub state: ReplicatedState,
    runtime: Runtime,
    config: ExecutionConfig,
    hashes: BTreeMap<u64, [u8; 32]>,
}

impl StateMachine {
    pub fn new(config: ExecutionConfig) -> StateMachine {
        StateMachine {
            state: ReplicatedState::default(),
            runtime: Runtime::new(),
            config,
            hashes: BTreeMap::new(),
        }
    }

    /// Aborts every paused (time-sliced) execution; the messages run again from the start.
    /// Call it at the same height on every replica (e.g. before each checkpoint): a
    /// checkpoint then holds no half-executed message. The state hash of the current height
    /// is recomputed.
    pub fn abort_paused_executions(&mut self) {
        let mut out = Vec::new();
        for c in self.state.canisters.values_mut() {
            message::abort_paused(c, &mut out);
        }
        route(&mut self.state, out);
        let h = self.state.hash();
        self.hashes.insert(self.state.height, h);
    }

    /// Whether any canister has a paused execution (a checkpoint must not).
    pub fn has_paused_executions(&self) -> bool {
        self.state.canisters.values().any(|c| c.paused.is_some())
    }

    /// A state machine over a state loaded from a checkpoint: every canister's compiled
    /// module is rebuilt from its stored Wasm (the compiled form is a cache, not state).
    /// Paused executions are not part of a checkpoint; a checkpoint is taken between rounds
    /// with none in flight.
    pub fn from_state(
        config: ExecutionConfig,
        mut state: ReplicatedState,
    ) -> Result<StateMachine, crate::execution::wasm::WasmError> {
        let runtime = Runtime::new();
        let mut out = Vec::new();
        for c in state.canisters.values_mut() {
            // A paused execution belongs to the old runtime; it starts over.
            message::abort_paused(c, &mut out);
            c.module = match &c.wasm {
                Some(w) => Some(alloc::sync::Arc::new(runtime.compile(w)?)),
                None => None,
            };
        }
        route(&mut state, out);
        let mut hashes = BTreeMap::new();
        hashes.insert(state.height, state.hash());
        Ok(StateMachine {
            state,
            runtime,
            config,
            hashes,
        })
    }

    pub fn config(&self) -> &ExecutionConfig {
        &self.config
    }

    pub fn height(&self) -> u64 {
        self.state.height
    }

    pub fn state_hash(&self, height: u64) -> Option<[u8; 32]> {
        self.hashes.get(&height).copied()
    }

    pub fn canister(&self, id: &Principal) -> Option<&CanisterState> {
        self.state.canisters.get(id)
    }

    pub fn request_status(&self, id: &RequestId) -> Option<&IngressStatus> {
        self.state.ingress_history.get(id)
    }

    /// A non-replicated query call against the latest state; nothing it does persists.
    pub fn query(
        &self,
        canister: Principal,
        method: &str,
        arg: Vec<u8>,
        caller: Principal,
        data_certificate: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, Reject> {
        let env = self.env();
        execute_query(
            &env,
            &self.state.canisters,
            canister,
            method,
            arg,
            caller,
            data_certificate,
        )
    }

    /// `canister_inspect_message` for an ingress update call (the API layer calls it before
    /// accepting a message into the pool). Management calls are always accepted here.
    pub fn inspect_ingress(&self, m: &IngressMessage) -> Result<(), Reject> {
        let Some(c) = self.state.canisters.get(&m.canister_id) else {
            return Ok(());
        };
        message::inspect_message(&self.env(), c, &m.method, m.arg.clone(), m.sender)
    }

    fn env(&self) -> Env<'_> {
        Env {
            runtime: &self.runtime,
            config: &self.config,
            time_ns: self.state.time_ns,
        }
    }

    /// Executes one batch: induction, the round, output routing; advances the height by one.
    pub fn execute_batch(&mut self, batch: Batch) -> BatchResult {
        let st = &mut self.state;
        st.height += 1;
        let previous_time = st.time_ns;
        st.time_ns = batch.time_ns.max(previous_time.saturating_add(1));
        st.randomness = batch.randomness;
        st.raw_rand_draws = 0;
        charge_storage(st, st.time_ns - previous_time);
        age_ingress_history(st);
        for m in batch.ingress.into_iter().take(BATCH_INGRESS_MAX) {
            induct(st, m);
        }
        let instructions = self.run_round();
        let hash = self.state.hash();
        self.hashes.insert(self.state.height, hash);
        while self.hashes.len() > STATE_HASHES_KEPT {
            self.hashes.pop_first();
        }
        BatchResult {
            height: self.state.height,
            state_hash: hash,
            instructions,
        }
    }

    fn run_round(&mut self) -> u64 {
        let env = Env {
            runtime: &self.runtime,
            config: &self.config,
            time_ns: self.state.time_ns,
        };
        let st = &mut self.state;
        let mut budget = self.config.instructions_per_round;
        let mut total = 0u64;
        let ids: Vec<Principal> = st.canisters.keys().copied().collect();
        let n = ids.len().max(1);
        let rotation = (st.height as usize) % n;
        // System tasks first: heartbeats and due timers, once per round.
        for id in ids.iter().cycle().skip(rotation).take(ids.len()) {
            let mut out = Vec::new();
            if let Some(c) = st.canisters.get_mut(id) {
                let used = run_system_tasks(&env, c, &mut out);
                budget = budget.saturating_sub(used);
                total += used;
            }
            route(st, out);
        }
        // A canister whose message was paused got its slice for this round.
        let mut sliced: alloc::collections::BTreeSet<Principal> =
            alloc::collections::BTreeSet::new();
        for _pass in 0..ROUND_PASSES_MAX {
            let mut progress = process_subnet_queue(&env, st);
            let ids: Vec<Principal> = st.canisters.keys().copied().collect();
            for id in ids
                .iter()
                .cycle()
                .skip(rotation % ids.len().max(1))
                .take(ids.len())
            {
                if budget == 0 {
                    break;
                }
                let mut out = Vec::new();
                if let Some(c) = st.canisters.get_mut(id) {
                    if c.status == CanisterStatus::Stopped || sliced.contains(id) {
                        continue;
                    }
                    while budget > 0 {
                        let Some(used) = execute_next(&env, c, &mut out) else {
                            break;
                        };
                        progress = true;
                        budget = budget.saturating_sub(used.max(1));
                        total += used;
                        if c.paused.is_some() {
                            // A sliced message holds the canister until a later round.
                            sliced.insert(*id);
                            break;
                        }
                    }
                }
                route(st, out);
            }
            progress |= finish_stopping(st);
            if !progress || budget == 0 {
                break;
            }
        }
        total
    }
}

/// Replied / rejected statuses become `done` after [`INGRESS_HISTORY_REPLY_KEPT_NS`];
/// `done` entries are pruned after [`INGRESS_HISTORY_DONE_KEPT_NS`] more.
fn age_ingress_history(st: &mut ReplicatedState) {
    let now = st.time_ns;
    let mut prune = Vec::new();
    for (id, finished) in st.ingress_finished_ns.iter() {
        let age = now.saturating_sub(*finished);
        if age > INGRESS_HISTORY_REPLY_KEPT_NS + INGRESS_HISTORY_DONE_KEPT_NS {
            prune.push(*id);
        } else if age > INGRESS_HISTORY_REPLY_KEPT_NS {
            st.ingress_history.insert(*id, IngressStatus::Done);
        }
    }
    for id in prune {
        st.ingress_finished_ns.remove(&id);
        st.ingress_history.remove(&id);
    }
}

fn charge_storage(st: &mut ReplicatedState, elapsed_ns: u64) {
    for c in st.canisters.values_mut() {
        let fee = cycles::storage_cost(c.memory_bytes(), elapsed_ns);
        c.cycles = c.cycles.saturating_sub(fee);
    }
}

fn ingress_reject(st: &mut ReplicatedState, id: RequestId, r: Reject) {
    st.ingress_history.insert(id, IngressStatus::Rejected(r));
    st.ingress_finished_ns.insert(id, st.time_ns);
}

/// Methods of the management canister an ingress message may call.
fn management_ingress_allowed(method: &str) -> bool {
    !matches!(method, "create_canister" | "deposit_cycles" | "raw_rand")
}

fn induct(st: &mut ReplicatedState, m: IngressMessage) {
    if st.ingress_history.contains_key(&m.id) {
        return;
    }
    if m.canister_id == Principal::MANAGEMENT {
        if !management_ingress_allowed(&m.method) {
            let r = reject(
                RejectCode::CanisterReject,
                "IC0406",
                format!("Only canisters can call ic00 method {}", m.method),
            );
            return ingress_reject(st, m.id, r);
        }
        st.ingress_history.insert(m.id, IngressStatus::Received);
        let origin = CallOrigin::Ingress {
            id: m.id,
            sender: m.sender,
        };
        st.subnet_queue
            .push_back((origin, m.sender, m.method, m.arg, 0));
        return;
    }
    let Some(c) = st.canisters.get_mut(&m.canister_id) else {
        let r = reject(
            RejectCode::DestinationInvalid,
            "IC0301",
            format!("Canister {} not found", m.canister_id),
        );
        return ingress_reject(st, m.id, r);
    };
    let status_reject = match c.status {
        CanisterStatus::Running => None,
        CanisterStatus::Stopping => Some(("IC0509", "is stopping")),
        CanisterStatus::Stopped => Some(("IC0508", "is stopped")),
    };
    if let Some((code, what)) = status_reject {
        let r = reject(
            RejectCode::CanisterError,
            code,
            format!("Canister {} {what}", m.canister_id),
        );
        return ingress_reject(st, m.id, r);
    }
    let has_method = c.module.as_ref().map(|module| {
        let u = format!("canister_update {}", m.method);
        let q = format!("canister_query {}", m.method);
        matches!(
            module.prepared.methods.get(&u),
            Some(ExportedMethod::Update(_))
        ) || module.prepared.methods.contains_key(&q)
    });
    match has_method {
        None => {
            let r = reject(
                RejectCode::CanisterError,
                "IC0537",
                format!("Canister {} has no Wasm module", m.canister_id),
            );
            return ingress_reject(st, m.id, r);
        }
        Some(false) => {
            let r = reject(
                RejectCode::CanisterError,
                "IC0536",
                format!(
                    "Canister {} has no update method '{}'",
                    m.canister_id, m.method
                ),
            );
            return ingress_reject(st, m.id, r);
        }
        Some(true) => {}
    }
    let fee = cycles::INGRESS_MESSAGE_RECEPTION_FEE_CYCLES
        + cycles::INGRESS_BYTE_RECEPTION_FEE_CYCLES * (m.arg.len() + m.method.len()) as u128;
    let frozen = cycles::freezing_threshold_cycles(c.memory_bytes(), c.freezing_threshold_seconds);
    if c.cycles < fee.saturating_add(frozen) || c.input_queue.len() >= INPUT_QUEUE_MESSAGES_MAX {
        let r = reject(
            RejectCode::SysTransient,
            "IC0207",
            format!(
                "Canister {} is out of cycles or its queue is full",
                m.canister_id
            ),
        );
        return ingress_reject(st, m.id, r);
    }
    c.cycles -= fee;
    st.ingress_history.insert(m.id, IngressStatus::Received);
    c.input_queue.push_back(CanisterMessage::Ingress(Ingress {
        id: m.id,
        sender: m.sender,
        receiver: m.canister_id,
        method: m.method,
        arg: m.arg,
    }));
}

/// Delivers outputs: ingress statuses, requests to canisters (or the management canister),
/// responses to callers.
fn route(st: &mut ReplicatedState, out: Vec<Output>) {
    let mut queue = out;
    queue.append(&mut st.pending_outputs);
    for o in queue {
        match o {
            Output::Ingress(id, status) => {
                let terminal = matches!(
                    st.ingress_history.get(&id),
                    Some(
                        IngressStatus::Replied(_)
                            | IngressStatus::Rejected(_)
                            | IngressStatus::Done
                    )
                );
                if !terminal {
                    let done = matches!(
                        status,
                        IngressStatus::Replied(_) | IngressStatus::Rejected(_)
                    );
                    st.ingress_history.insert(id, status);
                    if done {
                        st.ingress_finished_ns.insert(id, st.time_ns);
                    }
                }
            }
            Output::Request(r) => {
                if r.receiver == Principal::MANAGEMENT {
                    let origin = CallOrigin::Canister {
                        caller: r.sender,
                        callback: r.sender_callback,
                    };
                    st.subnet_queue
                        .push_back((origin, r.sender, r.method, r.payload, r.cycles));
                    continue;
                }
                let refusal = match st.canisters.get(&r.receiver) {
                    None => Some(reject(
                        RejectCode::DestinationInvalid,
                        "IC0301",
                        format!("Canister {} not found", r.receiver),
                    )),
                    Some(c) if c.status != CanisterStatus::Running => Some(reject(
                        RejectCode::CanisterError,
                        "IC0508",
                        format!("Canister {} is not running", r.receiver),
                    )),
                    Some(c) if c.input_queue.len() >= INPUT_QUEUE_MESSAGES_MAX => Some(reject(
                        RejectCode::SysTransient,
                        "IC0201",
                        format!("Canister {} input queue is full", r.receiver),
                    )),
                    Some(_) => None,
                };
                match refusal {
                    Some(rj) => {
                        if let Some(c) = st.canisters.get_mut(&r.sender) {
                            c.input_queue.push_back(CanisterMessage::Response(Response {
                                originator: r.sender,
                                respondent: r.receiver,
                                originator_callback: r.sender_callback,
                                payload: Payload::Reject(rj),
                                refund: r.cycles,
                            }));
                        }
                    }
                    None => {
                        if let Some(c) = st.canisters.get_mut(&r.receiver) {
                            c.input_queue.push_back(CanisterMessage::Request(r));
                        }
                    }
                }
            }
            Output::Response(r) => {
                if let Some(c) = st.canisters.get_mut(&r.originator) {
                    c.input_queue.push_back(CanisterMessage::Response(r));
                }
            }
        }
    }
}

/// Executes queued management calls. Returns whether any ran.
fn process_subnet_queue(env: &Env<'_>, st: &mut ReplicatedState) -> bool {
    let mut progress = false;
    while let Some((origin, caller, method, arg, cycles)) = st.subnet_queue.pop_front() {
        progress = true;
        if let CallOrigin::Ingress { id, .. } = &origin {
            st.ingress_history.insert(*id, IngressStatus::Processing);
        }
        let r = management::execute(env, st, &origin, caller, &method, &arg, cycles);
        let o = match r {
            MgmtResult::Reply(b, refund) => origin_output(&origin, Payload::Reply(b), refund),
            MgmtResult::Reject(rj, refund) => origin_output(&origin, Payload::Reject(rj), refund),
            MgmtResult::Deferred => None,
        };
        let mut out: Vec<Output> = o.into_iter().collect();
        out.append(&mut st.pending_outputs);
        route(st, out);
    }
    progress
}

/// Stopping canisters with no open calls become stopped; their stop requests are answered.
fn finish_stopping(st: &mut ReplicatedState) -> bool {
    let mut out = Vec::new();
    for c in st.canisters.values_mut() {
        if c.status == CanisterStatus::Stopping && c.call_contexts.is_empty() && c.paused.is_none()
        {
            c.status = CanisterStatus::Stopped;
            let unit = crate::candid::encode_args(&[]).unwrap_or_default();
            for w in core::mem::take(&mut c.stop_waiters) {
                if let Some(o) = origin_output(&w, Payload::Reply(unit.clone()), 0) {
                    out.push(o);
                }
            }
        }
    }
    let any = !out.is_empty();
    route(st, out);
    any
}
