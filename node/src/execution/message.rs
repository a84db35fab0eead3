//! Executing one message of one canister: ingress and requests (update or replicated query),
//! responses (reply / reject callbacks, cleanup), system tasks (heartbeat, global timer),
//! and the call-context bookkeeping that decides when a call is answered.
//!
//! Rules (spec §"Call contexts"): a call context is answered at most once, by the first
//! `msg_reply`/`msg_reject` of any execution in it; when it has no outstanding callbacks
//! and was not answered, the system rejects it ("did not reply"). A trap discards every
//! change of that execution (heap, stable memory, calls, cycles), except the charge for
//! the instructions it used; a trapping callback runs its cleanup closure.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::cycles::{self, execution_cost, freezing_threshold_cycles};
use super::runtime::{CompiledModule, EntryPoint, ExecError, Finished, Outcome, Runtime};
use super::stable::WASM_PAGE_BYTES;
use super::system_api::{ApiContext, Host, Response as HostResponse};
use super::wasm::ExportedMethod;
use super::ExecutionConfig;
use crate::state::{
    CallContext, CallOrigin, Callback, CanisterMessage, CanisterState, IngressStatus, PausedKind,
    PausedMessage, Payload, Reject, RejectCode, Request, RequestId, Response,
};
use crate::types::Principal;

/// What executing a message produced for the rest of the subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Request(Request),
    Response(Response),
    Ingress(RequestId, IngressStatus),
}

/// Everything an execution needs from outside the canister.
pub struct Env<'a> {
    pub runtime: &'a Runtime,
    pub config: &'a ExecutionConfig,
    pub time_ns: u64,
}

pub fn reject(code: RejectCode, error_code: &'static str, message: String) -> Reject {
    Reject {
        code,
        message,
        error_code,
    }
}

/// The output that delivers `payload` to whoever made a call (ingress sender or calling
/// canister); the management canister uses it for its replies.
pub fn origin_output(origin: &CallOrigin, payload: Payload, refund: u128) -> Option<Output> {
    match origin {
        CallOrigin::Ingress { id, .. } => Some(Output::Ingress(
            *id,
            match payload {
                Payload::Reply(b) => IngressStatus::Replied(b),
                Payload::Reject(r) => IngressStatus::Rejected(r),
            },
        )),
        CallOrigin::Canister { caller, callback } => Some(Output::Response(Response {
            originator: *caller,
            respondent: Principal::MANAGEMENT,
            originator_callback: *callback,
            payload,
            refund,
        })),
        CallOrigin::System => None,
    }
}

/// Opens a call context for an incoming call.
pub fn open_context(c: &mut CanisterState, origin: CallOrigin, cycles: u128, method: &str) -> u64 {
    let id = c.next_call_context;
    c.next_call_context += 1;
    c.call_contexts.insert(
        id,
        CallContext {
            origin,
            responded: false,
            outstanding: 0,
            cycles_available: cycles,
            method: method.into(),
        },
    );
    id
}

/// Answers a call context (once) and closes it if nothing is outstanding.
pub fn respond(c: &mut CanisterState, ctx: u64, payload: Payload, out: &mut Vec<Output>) {
    let Some(cc) = c.call_contexts.get_mut(&ctx) else {
        return;
    };
    if cc.responded {
        return;
    }
    cc.responded = true;
    let refund = core::mem::take(&mut cc.cycles_available);
    match &cc.origin {
        CallOrigin::Ingress { id, .. } => {
            let status = match payload {
                Payload::Reply(b) => IngressStatus::Replied(b),
                Payload::Reject(r) => IngressStatus::Rejected(r),
            };
            out.push(Output::Ingress(*id, status));
            // Cycles attached to ingress do not exist; nothing to refund.
        }
        CallOrigin::Canister { caller, callback } => out.push(Output::Response(Response {
            originator: *caller,
            respondent: c.id,
            originator_callback: *callback,
            payload,
            refund,
        })),
        CallOrigin::System => {}
    }
    close_if_done(c, ctx, out);
}

/// Closes a context with no outstanding callbacks, rejecting it if it was never answered.
pub fn close_if_done(c: &mut CanisterState, ctx: u64, out: &mut Vec<Output>) {
    let Some(cc) = c.call_contexts.get(&ctx) else {
        return;
    };
    if cc.outstanding > 0 {
        return;
    }
    if !cc.responded {
        let msg = format!("Canister {} did not produce a response", c.id);
        respond(
            c,
            ctx,
            Payload::Reject(reject(RejectCode::CanisterError, "IC0506", msg)),
            out,
        );
        return;
    }
    c.call_contexts.remove(&ctx);
}

fn new_host(env: &Env<'_>, c: &CanisterState, context: ApiContext, limit: u64) -> Host {
    let frozen = freezing_threshold_cycles(c.memory_bytes(), c.freezing_threshold_seconds);
    Host {
        context,
        memory: None,
        canister_id: c.id,
        caller: Principal::ANONYMOUS,
        arg: Vec::new(),
        method_name: String::new(),
        reject_code: 0,
        reject_message: String::new(),
        controllers: c.controllers.clone(),
        status: c.status.code(),
        canister_version: c.version,
        time_ns: env.time_ns,
        root_key: env.config.root_key.clone(),
        subnet_id: env.config.subnet_id,
        data_certificate: None,
        already_responded: false,
        reply_buffer: Vec::new(),
        response: None,
        cycles_balance: c.cycles,
        cycles_available: 0,
        cycles_accepted: 0,
        cycles_refunded: 0,
        cycles_frozen: frozen,
        xnet_call_fee_cycles: cycles::XNET_CALL_FEE_CYCLES,
        xnet_byte_fee_cycles: cycles::XNET_BYTE_TRANSMISSION_FEE_CYCLES,
        pending_call: None,
        calls: Vec::new(),
        stable: c.stable.clone(),
        stable_pages_max: env.config.stable_memory_bytes_max / WASM_PAGE_BYTES,
        certified_data: None,
        global_timer: c.global_timer,
        message_accepted: false,
        debug_log: Vec::new(),
        instruction_limit: limit,
        instructions_before_slice: 0,
        slice_fuel: env.config.instructions_per_slice,
        instructions_counter_base: c.instructions_total,
        limits: super::runtime::default_limits(),
    }
}

fn memory_limit(env: &Env<'_>, c: &CanisterState) -> usize {
    let limit = if c.wasm_memory_limit_bytes == 0 {
        env.config.wasm_memory_bytes_max
    } else {
        c.wasm_memory_limit_bytes
            .min(env.config.wasm_memory_bytes_max)
    };
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// Takes the prepayment for `limit` instructions, or says why the canister cannot pay.
fn prepay(c: &mut CanisterState, limit: u64) -> Result<u128, Reject> {
    let cost = execution_cost(limit);
    let frozen = freezing_threshold_cycles(c.memory_bytes(), c.freezing_threshold_seconds);
    if c.cycles < cost.saturating_add(frozen) {
        return Err(reject(
            RejectCode::SysTransient,
            "IC0207",
            format!(
                "Canister {} is out of cycles: please top up the canister with at least {} additional cycles",
                c.id,
                (cost + frozen).saturating_sub(c.cycles)
            ),
        ));
    }
    c.cycles -= cost;
    Ok(cost)
}

fn refund_prepaid(c: &mut CanisterState, prepaid: u128, instructions: u64) {
    let used = execution_cost(instructions).min(prepaid);
    c.cycles += prepaid - used;
    c.instructions_total = c.instructions_total.saturating_add(instructions);
}

/// Executes the next piece of work of canister `c` (a paused execution, or the next queued
/// message). Returns the instructions used, or None if there was nothing to do.
pub fn execute_next(env: &Env<'_>, c: &mut CanisterState, out: &mut Vec<Output>) -> Option<u64> {
    if let Some(p) = c.paused.take() {
        let outcome = env
            .runtime
            .resume(p.execution, env.config.instructions_per_slice);
        return Some(after_call(
            env,
            c,
            outcome,
            p.call_context,
            p.kind,
            p.prepaid_cycles,
            out,
        ));
    }
    let msg = c.input_queue.pop_front()?;
    let restart = match &msg {
        CanisterMessage::Response(_) => None,
        other => Some(other.clone()),
    };
    let used = execute_message(env, c, msg, out);
    if let Some(p) = c.paused.as_mut() {
        if p.message.is_none() {
            p.message = restart;
        }
    }
    Some(used)
}

/// Aborts a paused execution (before a checkpoint): its changes are dropped, its
/// prepayment refunded, and the message goes back to the front of the queue to run again
/// from the start. Every replica aborts at the same heights, so this is deterministic.
pub fn abort_paused(c: &mut CanisterState, out: &mut Vec<Output>) {
    let Some(p) = c.paused.take() else {
        return;
    };
    c.cycles = c.cycles.saturating_add(p.prepaid_cycles);
    c.call_contexts.remove(&p.call_context);
    if let Some(m) = p.message {
        if let CanisterMessage::Ingress(i) = &m {
            out.push(Output::Ingress(i.id, IngressStatus::Received));
        }
        c.input_queue.push_front(m);
    }
}

fn execute_message(
    env: &Env<'_>,
    c: &mut CanisterState,
    msg: CanisterMessage,
    out: &mut Vec<Output>,
) -> u64 {
    match msg {
        CanisterMessage::Ingress(i) => {
            out.push(Output::Ingress(i.id, IngressStatus::Processing));
            let origin = CallOrigin::Ingress {
                id: i.id,
                sender: i.sender,
            };
            let ctx = open_context(c, origin, 0, &i.method);
            execute_call(env, c, ctx, i.sender, &i.method, i.arg, 0, out)
        }
        CanisterMessage::Request(r) => {
            let origin = CallOrigin::Canister {
                caller: r.sender,
                callback: r.sender_callback,
            };
            let ctx = open_context(c, origin, r.cycles, &r.method);
            execute_call(env, c, ctx, r.sender, &r.method, r.payload, r.cycles, out)
        }
        CanisterMessage::Response(r) => execute_response(env, c, r, out),
    }
}

/// Runs `canister_update <method>` (or `canister_query <method>` replicated) for a call.
#[allow(clippy::too_many_arguments)]
fn execute_call(
    env: &Env<'_>,
    c: &mut CanisterState,
    ctx: u64,
    caller: Principal,
    method: &str,
    arg: Vec<u8>,
    cycles_attached: u128,
    out: &mut Vec<Output>,
) -> u64 {
    let Some(module) = c.module.clone() else {
        let msg = format!("Canister {} has no Wasm module", c.id);
        let r = reject(RejectCode::DestinationInvalid, "IC0537", msg);
        respond(c, ctx, Payload::Reject(r), out);
        return 0;
    };
    let update = format!("canister_update {method}");
    let query = format!("canister_query {method}");
    let (export, kind, api) = if module.prepared.methods.contains_key(&update) {
        (update, PausedKind::Update, ApiContext::Update)
    } else if module.prepared.methods.contains_key(&query) {
        (
            query,
            PausedKind::ReplicatedQuery,
            ApiContext::ReplicatedQuery,
        )
    } else {
        let msg = format!("Canister {} has no update method '{method}'", c.id);
        let r = reject(RejectCode::DestinationInvalid, "IC0536", msg);
        respond(c, ctx, Payload::Reject(r), out);
        return 0;
    };
    let limit = env.config.instructions_per_message;
    let prepaid = match prepay(c, limit) {
        Ok(p) => p,
        Err(r) => {
            respond(c, ctx, Payload::Reject(r), out);
            return 0;
        }
    };
    let mut host = new_host(env, c, api, limit);
    host.caller = caller;
    host.arg = arg;
    host.method_name = method.into();
    host.cycles_available = cycles_attached;
    let outcome = env.runtime.execute(
        &module,
        c.heap.as_ref(),
        &[(EntryPoint::Export(export), api)],
        host,
        memory_limit(env, c),
    );
    after_call(env, c, outcome, ctx, kind, prepaid, out)
}

fn after_call(
    env: &Env<'_>,
    c: &mut CanisterState,
    outcome: Outcome,
    ctx: u64,
    kind: PausedKind,
    prepaid: u128,
    out: &mut Vec<Output>,
) -> u64 {
    let _ = env;
    let f = match outcome {
        Outcome::Paused(p) => {
            let used = p.instructions;
            c.paused = Some(PausedMessage {
                execution: p,
                call_context: ctx,
                kind,
                prepaid_cycles: prepaid,
                message: None,
            });
            return used;
        }
        Outcome::Finished(f) => f,
    };
    let instructions = f.instructions;
    let persist = kind == PausedKind::Update;
    finish_execution(c, *f, ctx, persist, out);
    refund_prepaid(c, prepaid, instructions);
    close_if_done(c, ctx, out);
    instructions
}

/// Applies a finished execution to the canister and answers the context as it says.
/// Returns whether the execution succeeded.
fn finish_execution(
    c: &mut CanisterState,
    f: Finished,
    ctx: u64,
    persist: bool,
    out: &mut Vec<Output>,
) -> bool {
    let Finished {
        result, host, heap, ..
    } = f;
    match result {
        Ok(()) => {
            if persist {
                commit(c, host.stable, heap, host.certified_data, host.global_timer);
                c.cycles = host.cycles_balance;
                if let Some(cc) = c.call_contexts.get_mut(&ctx) {
                    cc.cycles_available -= host.cycles_accepted.min(cc.cycles_available);
                }
                for call in host.calls {
                    let id = c.next_callback;
                    c.next_callback += 1;
                    c.callbacks.insert(
                        id,
                        Callback {
                            call_context: ctx,
                            respondent: call.callee,
                            on_reply: call.on_reply,
                            on_reject: call.on_reject,
                            on_cleanup: call.on_cleanup,
                        },
                    );
                    if let Some(cc) = c.call_contexts.get_mut(&ctx) {
                        cc.outstanding += 1;
                    }
                    out.push(Output::Request(Request {
                        sender: c.id,
                        receiver: call.callee,
                        method: call.method,
                        payload: call.payload,
                        cycles: call.cycles,
                        sender_callback: id,
                    }));
                }
            }
            match host.response {
                Some(HostResponse::Reply(b)) => respond(c, ctx, Payload::Reply(b), out),
                Some(HostResponse::Reject(m)) => {
                    let r = reject(RejectCode::CanisterReject, "IC0406", m);
                    respond(c, ctx, Payload::Reject(r), out)
                }
                None => {}
            }
            true
        }
        Err(e) => {
            let (code, text) = match &e {
                ExecError::InstructionLimit(_) => ("IC0522", e.to_string_lossy()),
                ExecError::MissingExport(_) => ("IC0536", e.to_string_lossy()),
                ExecError::Trapped(m) if m.starts_with("Canister called `ic0.trap`") => {
                    ("IC0503", e.to_string_lossy())
                }
                ExecError::Trapped(_) => ("IC0502", e.to_string_lossy()),
            };
            let msg = format!("Error from Canister {}: {}", c.id, text);
            respond(
                c,
                ctx,
                Payload::Reject(reject(RejectCode::CanisterError, code, msg)),
                out,
            );
            false
        }
    }
}

trait Lossy {
    fn to_string_lossy(&self) -> String;
}

impl Lossy for ExecError {
    fn to_string_lossy(&self) -> String {
        format!("{self}")
    }
}

fn commit(
    c: &mut CanisterState,
    stable: super::stable::StableMemory,
    heap: Option<super::runtime::HeapSnapshot>,
    certified: Option<Vec<u8>>,
    timer: Option<u64>,
) {
    c.stable = stable;
    if let Some(h) = heap {
        c.heap = Some(h);
        c.heap_hash = None;
    }
    if let Some(d) = certified {
        c.certified_data = d;
    }
    c.global_timer = timer;
}

/// Delivers a response: its refund, then the reply or reject callback (and cleanup if the
/// callback traps).
fn execute_response(
    env: &Env<'_>,
    c: &mut CanisterState,
    r: Response,
    out: &mut Vec<Output>,
) -> u64 {
    run_callback(env, c, r, CallbackMode::Replicated, out)
}

/// Where a callback runs.
#[derive(Clone, Copy)]
enum CallbackMode {
    /// In a replicated call context: prepaid from the balance, persisted.
    Replicated,
    /// In a composite query (a scratch copy of the canister): free, within what the call
    /// graph has left.
    Composite { limit: u64 },
}

fn run_callback(
    env: &Env<'_>,
    c: &mut CanisterState,
    r: Response,
    mode: CallbackMode,
    out: &mut Vec<Output>,
) -> u64 {
    c.cycles = c.cycles.saturating_add(r.refund);
    let Some(cb) = c.callbacks.remove(&r.originator_callback) else {
        return 0;
    };
    let ctx = cb.call_context;
    if let Some(cc) = c.call_contexts.get_mut(&ctx) {
        cc.outstanding = cc.outstanding.saturating_sub(1);
    }
    let Some(module) = c.module.clone() else {
        close_if_done(c, ctx, out);
        return 0;
    };
    let composite = matches!(mode, CallbackMode::Composite { .. });
    let (closure, api) = match (&r.payload, composite) {
        (Payload::Reply(_), false) => (cb.on_reply, ApiContext::ReplyCallback),
        (Payload::Reject(_), false) => (cb.on_reject, ApiContext::RejectCallback),
        (Payload::Reply(_), true) => (cb.on_reply, ApiContext::CompositeReplyCallback),
        (Payload::Reject(_), true) => (cb.on_reject, ApiContext::CompositeRejectCallback),
    };
    let cleanup_api = if composite {
        ApiContext::CompositeCleanup
    } else {
        ApiContext::Cleanup
    };
    let (limit, prepaid) = match mode {
        CallbackMode::Replicated => {
            let limit = env.config.instructions_per_message;
            match prepay(c, limit) {
                Ok(p) => (limit, p),
                Err(_) => {
                    close_if_done(c, ctx, out);
                    return 0;
                }
            }
        }
        CallbackMode::Composite { limit } => (limit, 0),
    };
    let mut host = new_host(env, c, api, limit);
    // Callbacks run to completion within the per-message limit (no slicing).
    host.slice_fuel = limit;
    host.caller = cb.respondent;
    host.cycles_refunded = r.refund;
    if let Some(cc) = c.call_contexts.get(&ctx) {
        host.already_responded = cc.responded;
        host.cycles_available = cc.cycles_available;
    }
    match r.payload {
        Payload::Reply(b) => host.arg = b,
        Payload::Reject(rj) => {
            host.reject_code = rj.code as u32;
            host.reject_message = rj.message;
        }
    }
    let outcome = env.runtime.execute(
        &module,
        c.heap.as_ref(),
        &[(EntryPoint::Closure(closure), api)],
        host,
        memory_limit(env, c),
    );
    // Callbacks run to completion within the per-message limit (no slicing).
    let f = match outcome {
        Outcome::Finished(f) => *f,
        Outcome::Paused(_) => {
            refund_prepaid(c, prepaid, limit);
            close_if_done(c, ctx, out);
            return limit;
        }
    };
    let mut instructions = f.instructions;
    let ok = matches!(f.result, Ok(()));
    if ok {
        finish_execution(c, f, ctx, true, out);
    } else if let Some(cleanup) = cb.on_cleanup {
        // In a composite query the cleanup gets what the call graph has left.
        let cleanup_limit = if composite {
            limit.saturating_sub(instructions)
        } else {
            limit
        };
        let mut host = new_host(env, c, cleanup_api, cleanup_limit);
        host.slice_fuel = limit;
        host.caller = cb.respondent;
        if let Some(cc) = c.call_contexts.get(&ctx) {
            host.already_responded = cc.responded;
        }
        let outcome = env.runtime.execute(
            &module,
            c.heap.as_ref(),
            &[(EntryPoint::Closure(cleanup), cleanup_api)],
            host,
            memory_limit(env, c),
        );
        if let Outcome::Finished(cf) = outcome {
            instructions += cf.instructions;
            if let (Ok(()), Some(heap)) = (&cf.result, cf.heap) {
                let h = cf.host;
                commit(c, h.stable, Some(heap), h.certified_data, h.global_timer);
            }
        }
        // The callback's trap rejects the call if it was not answered yet.
        let _ = finish_execution_trap_only(c, ctx, out);
    } else {
        finish_execution(c, f, ctx, true, out);
    }
    refund_prepaid(c, prepaid, instructions);
    close_if_done(c, ctx, out);
    instructions
}

fn finish_execution_trap_only(c: &mut CanisterState, ctx: u64, out: &mut Vec<Output>) -> bool {
    let responded = c.call_contexts.get(&ctx).map(|cc| cc.responded);
    if responded == Some(false) {
        let msg = format!("Error from Canister {}: the callback trapped", c.id);
        respond(
            c,
            ctx,
            Payload::Reject(reject(RejectCode::CanisterError, "IC0502", msg)),
            out,
        );
    }
    true
}

/// Runs `canister_global_timer` if the timer is due, else `canister_heartbeat` if exported.
/// Returns the instructions used.
pub fn run_system_tasks(env: &Env<'_>, c: &mut CanisterState, out: &mut Vec<Output>) -> u64 {
    let Some(module) = c.module.clone() else {
        return 0;
    };
    if c.paused.is_some() || c.status != crate::state::CanisterStatus::Running {
        return 0;
    }
    let mut used = 0;
    let due = matches!(c.global_timer, Some(t) if t <= env.time_ns);
    let has = |n: &str| {
        matches!(
            module.prepared.methods.get(n),
            Some(ExportedMethod::System(_))
        )
    };
    let mut tasks: Vec<&str> = Vec::new();
    if has("canister_heartbeat") {
        tasks.push("canister_heartbeat");
    }
    if due {
        // The timer fires once; the canister may set it again.
        c.global_timer = None;
        if has("canister_global_timer") {
            tasks.push("canister_global_timer");
        }
    }
    for task in tasks {
        let limit = env.config.instructions_per_message;
        let Ok(prepaid) = prepay(c, limit) else {
            return used;
        };
        let ctx = open_context(c, CallOrigin::System, 0, task);
        let mut host = new_host(env, c, ApiContext::SystemTask, limit);
        host.slice_fuel = limit;
        let outcome = env.runtime.execute(
            &module,
            c.heap.as_ref(),
            &[(EntryPoint::Export(task.into()), ApiContext::SystemTask)],
            host,
            memory_limit(env, c),
        );
        let instructions = match outcome {
            Outcome::Finished(f) => {
                let n = f.instructions;
                finish_execution(c, *f, ctx, true, out);
                n
            }
            Outcome::Paused(_) => limit,
        };
        refund_prepaid(c, prepaid, instructions);
        if let Some(cc) = c.call_contexts.get_mut(&ctx) {
            // Nobody waits for a system task: it counts as answered.
            cc.responded = true;
        }
        close_if_done(c, ctx, out);
        used += instructions;
    }
    used
}

/// Most levels of calls below the method a user's query call reached (the IC's query call
/// graph depth limit).
pub const QUERY_CALL_GRAPH_DEPTH_MAX: usize = 6;

/// A query call (non-replicated): a `canister_query` method, or a `canister_composite_query`
/// method together with the query calls it makes to canisters of this subnet, their
/// callbacks, and the calls those make in turn. Everything runs on copies of the canisters
/// and persists nothing. The whole call graph shares one instruction budget
/// (`instructions_per_query`); only the method the user called sees the data certificate.
pub fn execute_query(
    env: &Env<'_>,
    canisters: &BTreeMap<Principal, CanisterState>,
    canister: Principal,
    method: &str,
    arg: Vec<u8>,
    caller: Principal,
    data_certificate: Option<Vec<u8>>,
) -> Result<Vec<u8>, Reject> {
    let mut graph = QueryGraph {
        env,
        canisters,
        budget: env.config.instructions_per_query,
    };
    graph.call(canister, method, arg, caller, 0, data_certificate)
}

/// One query call graph being evaluated.
struct QueryGraph<'a, 'e> {
    env: &'a Env<'e>,
    canisters: &'a BTreeMap<Principal, CanisterState>,
    /// Instructions the rest of the graph may use.
    budget: u64,
}

impl QueryGraph<'_, '_> {
    fn spend(&mut self, instructions: u64) {
        self.budget = self.budget.saturating_sub(instructions);
    }

    /// Calls `method` of `canister` as a query at `depth` (0: the user's call).
    fn call(
        &mut self,
        canister: Principal,
        method: &str,
        arg: Vec<u8>,
        caller: Principal,
        depth: usize,
        data_certificate: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, Reject> {
        let Some(c) = self.canisters.get(&canister) else {
            return Err(reject(
                RejectCode::DestinationInvalid,
                "IC0301",
                format!("Canister {canister} not found"),
            ));
        };
        let module = c.module.clone().ok_or_else(|| {
            reject(
                RejectCode::DestinationInvalid,
                "IC0537",
                format!("Canister {} has no Wasm module", c.id),
            )
        })?;
        if c.status != crate::state::CanisterStatus::Running {
            return Err(reject(
                RejectCode::CanisterError,
                "IC0508",
                format!("Canister {} is not running", c.id),
            ));
        }
        let query = format!("canister_query {method}");
        let composite = format!("canister_composite_query {method}");
        let (export, api) = if module.prepared.methods.contains_key(&query) {
            (query, ApiContext::NonReplicatedQuery)
        } else if module.prepared.methods.contains_key(&composite) {
            (composite, ApiContext::CompositeQuery)
        } else {
            return Err(reject(
                RejectCode::DestinationInvalid,
                "IC0536",
                format!("Canister {} has no query method '{method}'", c.id),
            ));
        };
        if api == ApiContext::CompositeQuery && depth >= QUERY_CALL_GRAPH_DEPTH_MAX {
            return Err(reject(
                RejectCode::CanisterError,
                "IC0529",
                format!(
                    "Composite query call graph of canister {} deeper than {QUERY_CALL_GRAPH_DEPTH_MAX} calls",
                    c.id
                ),
            ));
        }
        let request = QueryRequest {
            method,
            arg,
            caller,
            data_certificate,
        };
        if api == ApiContext::NonReplicatedQuery {
            // A plain query makes no calls: it runs on the canister's heap as it is.
            let f = self.run(c, &module, export, api, request)?;
            return query_result(c.id, f);
        }
        // A scratch copy: the executions of this call and its callbacks see each other's
        // changes, and nothing else does.
        let mut scratch = c.scratch_copy();
        let ctx = open_context(
            &mut scratch,
            CallOrigin::Canister {
                caller,
                callback: 0,
            },
            0,
            method,
        );
        let f = self.run(&scratch, &module, export, api, request)?;
        let mut pending = Vec::new();
        finish_execution(&mut scratch, f, ctx, true, &mut pending);
        close_if_done(&mut scratch, ctx, &mut pending);
        // Calls run one at a time, in the order they were made; each response runs its
        // callback, which may answer and may make further calls.
        let mut pending: VecDeque<Output> = pending.into();
        while let Some(output) = pending.pop_front() {
            match output {
                Output::Response(r) => {
                    return match r.payload {
                        Payload::Reply(b) => Ok(b),
                        Payload::Reject(r) => Err(r),
                    };
                }
                Output::Request(req) => {
                    let payload = match self.call(
                        req.receiver,
                        &req.method,
                        req.payload,
                        scratch.id,
                        depth + 1,
                        None,
                    ) {
                        Ok(b) => Payload::Reply(b),
                        Err(r) => Payload::Reject(r),
                    };
                    let response = Response {
                        originator: scratch.id,
                        respondent: req.receiver,
                        originator_callback: req.sender_callback,
                        payload,
                        refund: req.cycles,
                    };
                    let mut more = Vec::new();
                    let mode = CallbackMode::Composite { limit: self.budget };
                    let used = run_callback(self.env, &mut scratch, response, mode, &mut more);
                    self.spend(used);
                    pending.extend(more);
                }
                Output::Ingress(..) => {}
            }
        }
        Err(reject(
            RejectCode::CanisterError,
            "IC0506",
            format!("Canister {} did not produce a response", c.id),
        ))
    }
}

/// What a query call graph's node was called with.
struct QueryRequest<'m> {
    method: &'m str,
    arg: Vec<u8>,
    caller: Principal,
    data_certificate: Option<Vec<u8>>,
}

impl QueryGraph<'_, '_> {
    /// Runs the method `export` of `c` (or of its scratch copy) within the budget.
    fn run(
        &mut self,
        c: &CanisterState,
        module: &Arc<CompiledModule>,
        export: String,
        api: ApiContext,
        request: QueryRequest<'_>,
    ) -> Result<Finished, Reject> {
        let limit = self.budget;
        let mut host = new_host(self.env, c, api, limit);
        host.slice_fuel = limit;
        host.caller = request.caller;
        host.arg = request.arg;
        host.method_name = request.method.into();
        host.data_certificate = request.data_certificate;
        let outcome = self.env.runtime.execute(
            module,
            c.heap.as_ref(),
            &[(EntryPoint::Export(export), api)],
            host,
            memory_limit(self.env, c),
        );
        let Outcome::Finished(f) = outcome else {
            return Err(instruction_limit(c.id));
        };
        self.spend(f.instructions);
        Ok(*f)
    }
}

/// The answer of a plain query's execution.
fn query_result(canister: Principal, f: Finished) -> Result<Vec<u8>, Reject> {
    match f.result {
        Ok(()) => match f.host.response {
            Some(HostResponse::Reply(b)) => Ok(b),
            Some(HostResponse::Reject(m)) => Err(reject(RejectCode::CanisterReject, "IC0406", m)),
            None => Err(reject(
                RejectCode::CanisterError,
                "IC0506",
                format!("Canister {canister} did not produce a response"),
            )),
        },
        Err(e) => {
            let code = match &e {
                ExecError::InstructionLimit(_) => "IC0522",
                ExecError::Trapped(m) if m.starts_with("Canister called `ic0.trap`") => "IC0503",
                _ => "IC0502",
            };
            Err(reject(
                RejectCode::CanisterError,
                code,
                format!("Error from Canister {canister}: {e}"),
            ))
        }
    }
}

fn instruction_limit(canister: Principal) -> Reject {
    reject(
        RejectCode::CanisterError,
        "IC0522",
        format!("Canister {canister} exceeded the query instruction limit"),
    )
}

/// Runs `canister_inspect_message` (if exported) for an ingress update call; Ok if the
/// canister accepts it.
pub fn inspect_message(
    env: &Env<'_>,
    c: &CanisterState,
    method: &str,
    arg: Vec<u8>,
    caller: Principal,
) -> Result<(), Reject> {
    let Some(module) = c.module.clone() else {
        return Ok(());
    };
    if !module
        .prepared
        .methods
        .contains_key("canister_inspect_message")
    {
        return Ok(());
    }
    let limit = env.config.instructions_per_query;
    let mut host = new_host(env, c, ApiContext::InspectMessage, limit);
    host.slice_fuel = limit;
    host.caller = caller;
    host.arg = arg;
    host.method_name = method.into();
    let outcome = env.runtime.execute(
        &module,
        c.heap.as_ref(),
        &[(
            EntryPoint::Export("canister_inspect_message".into()),
            ApiContext::InspectMessage,
        )],
        host,
        memory_limit(env, c),
    );
    match outcome {
        Outcome::Finished(f) if f.result.is_ok() && f.host.message_accepted => Ok(()),
        _ => Err(reject(
            RejectCode::CanisterReject,
            "IC0406",
            format!("Canister {} rejected the message", c.id),
        )),
    }
}

/// Helper for the management canister: run install hooks. Returns the finished execution.
#[allow(clippy::too_many_arguments)]
pub fn run_hooks(
    env: &Env<'_>,
    c: &CanisterState,
    module: &alloc::sync::Arc<super::runtime::CompiledModule>,
    heap: Option<&super::runtime::HeapSnapshot>,
    entries: &[(EntryPoint, ApiContext)],
    caller: Principal,
    arg: Vec<u8>,
    stable: super::stable::StableMemory,
) -> Box<Finished> {
    let limit = env.config.instructions_per_install;
    let mut host = new_host(env, c, ApiContext::Init, limit);
    host.slice_fuel = limit;
    host.caller = caller;
    host.arg = arg;
    host.stable = stable;
    match env
        .runtime
        .execute(module, heap, entries, host, memory_limit(env, c))
    {
        Outcome::Finished(f) => f,
        // Install hooks are never sliced (several entries): unreachable in practice.
        Outcome::Paused(p) => {
            let instructions = p.instructions;
            Box::new(Finished {
                result: Err(ExecError::InstructionLimit(instructions)),
                host: new_host(env, c, ApiContext::Init, limit),
                heap: None,
                instructions,
            })
        }
    }
}
