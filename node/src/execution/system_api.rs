//! The `ic0` System API: every import of the spec's list with its exact Wasm signature,
//! the contexts it may be called from, and its effect on the per-execution [`Host`] state.
//!
//! Spec: ic-interface.md §3.2. `I` is `i32` for 32-bit memories and `i64` for memory64
//! modules (modern Motoko); the legacy 32-bit-only functions (`stable_*`,
//! `call_cycles_add`, `msg_cycles_*` without 128) exist only for 32-bit modules.
//! A call from a context the spec does not list traps; copying out of bounds traps.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use wasmi::ValType;
use wasmi::{Caller, Error, FuncType, Linker, Memory, Val};

use super::stable::StableMemory;
use crate::types::Principal;

/// The context an execution runs in (the spec's context letters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiContext {
    /// `s`: the module's start function.
    Start,
    /// `I`: `canister_init` and `canister_post_upgrade`.
    Init,
    /// `G`: `canister_pre_upgrade`.
    PreUpgrade,
    /// `U`: an update method.
    Update,
    /// `RQ`: a query method executed as an update (replicated).
    ReplicatedQuery,
    /// `NRQ`: a query call (never persisted).
    NonReplicatedQuery,
    /// `Ry`: a reply callback.
    ReplyCallback,
    /// `Rt`: a reject callback.
    RejectCallback,
    /// `C`: a cleanup callback.
    Cleanup,
    /// `F`: `canister_inspect_message`.
    InspectMessage,
    /// `T`: `canister_heartbeat` / `canister_global_timer`.
    SystemTask,
    /// `CQ`: a composite query method (never persisted).
    CompositeQuery,
    /// `CRy`: a reply callback in a composite query.
    CompositeReplyCallback,
    /// `CRt`: a reject callback in a composite query.
    CompositeRejectCallback,
    /// `CC`: a cleanup callback in a composite query.
    CompositeCleanup,
}

const S: u16 = 1;
const I: u16 = 1 << 1;
const G: u16 = 1 << 2;
const U: u16 = 1 << 3;
const RQ: u16 = 1 << 4;
const NRQ: u16 = 1 << 5;
const RY: u16 = 1 << 6;
const RT: u16 = 1 << 7;
const C: u16 = 1 << 8;
const F: u16 = 1 << 9;
const T: u16 = 1 << 10;
const CQ: u16 = 1 << 11;
const CRY: u16 = 1 << 12;
const CRT: u16 = 1 << 13;
const CC: u16 = 1 << 14;
/// `*`: everywhere except the start function.
const ALL: u16 = I | G | U | RQ | NRQ | RY | RT | C | F | T | CQ | CRY | CRT | CC;
const ALL_S: u16 = ALL | S;

impl ApiContext {
    fn bit(self) -> u16 {
        match self {
            ApiContext::Start => S,
            ApiContext::Init => I,
            ApiContext::PreUpgrade => G,
            ApiContext::Update => U,
            ApiContext::ReplicatedQuery => RQ,
            ApiContext::NonReplicatedQuery => NRQ,
            ApiContext::ReplyCallback => RY,
            ApiContext::RejectCallback => RT,
            ApiContext::Cleanup => C,
            ApiContext::InspectMessage => F,
            ApiContext::SystemTask => T,
            ApiContext::CompositeQuery => CQ,
            ApiContext::CompositeReplyCallback => CRY,
            ApiContext::CompositeRejectCallback => CRT,
            ApiContext::CompositeCleanup => CC,
        }
    }

    /// Runs on one node only (a query call, inspect_message, a composite query and its
    /// callbacks): nothing it does persists.
    pub fn is_non_replicated(self) -> bool {
        matches!(
            self,
            ApiContext::NonReplicatedQuery
                | ApiContext::InspectMessage
                | ApiContext::CompositeQuery
                | ApiContext::CompositeReplyCallback
                | ApiContext::CompositeRejectCallback
                | ApiContext::CompositeCleanup
        )
    }

    fn name(self) -> &'static str {
        match self {
            ApiContext::Start => "start",
            ApiContext::Init => "init",
            ApiContext::PreUpgrade => "pre_upgrade",
            ApiContext::Update => "update",
            ApiContext::ReplicatedQuery => "replicated query",
            ApiContext::NonReplicatedQuery => "query",
            ApiContext::ReplyCallback => "reply callback",
            ApiContext::RejectCallback => "reject callback",
            ApiContext::Cleanup => "cleanup",
            ApiContext::InspectMessage => "inspect_message",
            ApiContext::SystemTask => "system task",
            ApiContext::CompositeQuery => "composite query",
            ApiContext::CompositeReplyCallback => "composite query reply callback",
            ApiContext::CompositeRejectCallback => "composite query reject callback",
            ApiContext::CompositeCleanup => "composite query cleanup",
        }
    }
}

/// A parameter or result kind: the pointer width `I`, or a fixed type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum K {
    P,
    W32,
    W64,
}

/// Every ic0 function cairn provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    MsgArgDataSize,
    MsgArgDataCopy,
    MsgCallerSize,
    MsgCallerCopy,
    MsgCallerInfoDataSize,
    MsgCallerInfoDataCopy,
    MsgCallerInfoSignerSize,
    MsgCallerInfoSignerCopy,
    MsgRejectCode,
    MsgRejectMsgSize,
    MsgRejectMsgCopy,
    MsgDeadline,
    MsgReplyDataAppend,
    MsgReply,
    MsgReject,
    MsgCyclesAvailable128,
    MsgCyclesRefunded128,
    MsgCyclesAccept128,
    CyclesBurn128,
    CanisterCycleBalance128,
    CanisterLiquidCycleBalance128,
    CanisterSelfSize,
    CanisterSelfCopy,
    CanisterStatus,
    CanisterVersion,
    SubnetSelfSize,
    SubnetSelfCopy,
    MsgMethodNameSize,
    MsgMethodNameCopy,
    AcceptMessage,
    CallNew,
    CallOnCleanup,
    CallDataAppend,
    CallWithBestEffortResponse,
    CallCyclesAdd128,
    CallPerform,
    Stable64Size,
    Stable64Grow,
    Stable64Write,
    Stable64Read,
    RootKeySize,
    RootKeyCopy,
    CertifiedDataSet,
    DataCertificatePresent,
    DataCertificateSize,
    DataCertificateCopy,
    Time,
    GlobalTimerSet,
    PerformanceCounter,
    IsController,
    InReplicatedExecution,
    CostCall,
    CostCreateCanister,
    CostHttpRequest,
    CostSignWithEcdsa,
    CostSignWithSchnorr,
    CostVetkdDeriveKey,
    EnvVarCount,
    EnvVarNameSize,
    EnvVarNameCopy,
    EnvVarNameExists,
    EnvVarValueSize,
    EnvVarValueCopy,
    DebugPrint,
    Trap,
    MsgCyclesAvailable,
    MsgCyclesRefunded,
    MsgCyclesAccept,
    CanisterCycleBalance,
    CallCyclesAdd,
    StableSize,
    StableGrow,
    StableWrite,
    StableRead,
}

struct Ic0Def {
    name: &'static str,
    params: &'static [K],
    results: &'static [K],
    allowed: u16,
    api: Api,
    /// Only for 32-bit modules (the legacy API).
    legacy: bool,
}

const fn d(
    name: &'static str,
    params: &'static [K],
    results: &'static [K],
    allowed: u16,
    api: Api,
) -> Ic0Def {
    Ic0Def {
        name,
        params,
        results,
        allowed,
        api,
        legacy: false,
    }
}

const fn legacy(
    name: &'static str,
    params: &'static [K],
    results: &'static [K],
    allowed: u16,
    api: Api,
) -> Ic0Def {
    let mut def = d(name, params, results, allowed, api);
    def.legacy = true;
    def
}

use K::{P, W32, W64};

/// The spec's import list (SPEC 0.66.0 "Overview of imports").
const IC0_IMPORTS: &[Ic0Def] = &[
    d(
        "msg_arg_data_size",
        &[],
        &[P],
        I | U | RQ | NRQ | RY | F | CQ | CRY,
        Api::MsgArgDataSize,
    ),
    d(
        "msg_arg_data_copy",
        &[P, P, P],
        &[],
        I | U | RQ | NRQ | RY | F | CQ | CRY,
        Api::MsgArgDataCopy,
    ),
    d("msg_caller_size", &[], &[P], ALL, Api::MsgCallerSize),
    d("msg_caller_copy", &[P, P, P], &[], ALL, Api::MsgCallerCopy),
    d(
        "msg_caller_info_data_size",
        &[],
        &[P],
        U | RQ | NRQ | RY | RT | C | F | CQ | CRY | CRT | CC,
        Api::MsgCallerInfoDataSize,
    ),
    d(
        "msg_caller_info_data_copy",
        &[P, P, P],
        &[],
        U | RQ | NRQ | RY | RT | C | F | CQ | CRY | CRT | CC,
        Api::MsgCallerInfoDataCopy,
    ),
    d(
        "msg_caller_info_signer_size",
        &[],
        &[P],
        U | RQ | NRQ | RY | RT | C | F | CQ | CRY | CRT | CC,
        Api::MsgCallerInfoSignerSize,
    ),
    d(
        "msg_caller_info_signer_copy",
        &[P, P, P],
        &[],
        U | RQ | NRQ | RY | RT | C | F | CQ | CRY | CRT | CC,
        Api::MsgCallerInfoSignerCopy,
    ),
    d(
        "msg_reject_code",
        &[],
        &[W32],
        RY | RT | C | CRY | CRT | CC,
        Api::MsgRejectCode,
    ),
    d(
        "msg_reject_msg_size",
        &[],
        &[P],
        RT | CRT,
        Api::MsgRejectMsgSize,
    ),
    d(
        "msg_reject_msg_copy",
        &[P, P, P],
        &[],
        RT | CRT,
        Api::MsgRejectMsgCopy,
    ),
    d(
        "msg_deadline",
        &[],
        &[W64],
        U | RQ | NRQ | RY | RT | CQ | CRY | CRT,
        Api::MsgDeadline,
    ),
    d(
        "msg_reply_data_append",
        &[P, P],
        &[],
        U | RQ | NRQ | RY | RT | CQ | CRY | CRT,
        Api::MsgReplyDataAppend,
    ),
    d(
        "msg_reply",
        &[],
        &[],
        U | RQ | NRQ | RY | RT | CQ | CRY | CRT,
        Api::MsgReply,
    ),
    d(
        "msg_reject",
        &[P, P],
        &[],
        U | RQ | NRQ | RY | RT | CQ | CRY | CRT,
        Api::MsgReject,
    ),
    d(
        "msg_cycles_available128",
        &[P],
        &[],
        U | RQ | RY | RT,
        Api::MsgCyclesAvailable128,
    ),
    d(
        "msg_cycles_refunded128",
        &[P],
        &[],
        RY | RT,
        Api::MsgCyclesRefunded128,
    ),
    d(
        "msg_cycles_accept128",
        &[W64, W64, P],
        &[],
        U | RQ | RY | RT,
        Api::MsgCyclesAccept128,
    ),
    d(
        "cycles_burn128",
        &[W64, W64, P],
        &[],
        I | G | U | RQ | RY | RT | C | T,
        Api::CyclesBurn128,
    ),
    d(
        "canister_cycle_balance128",
        &[P],
        &[],
        ALL,
        Api::CanisterCycleBalance128,
    ),
    d(
        "canister_liquid_cycle_balance128",
        &[P],
        &[],
        ALL,
        Api::CanisterLiquidCycleBalance128,
    ),
    d("canister_self_size", &[], &[P], ALL, Api::CanisterSelfSize),
    d(
        "canister_self_copy",
        &[P, P, P],
        &[],
        ALL,
        Api::CanisterSelfCopy,
    ),
    d("canister_status", &[], &[W32], ALL, Api::CanisterStatus),
    d("canister_version", &[], &[W64], ALL, Api::CanisterVersion),
    d("subnet_self_size", &[], &[P], ALL, Api::SubnetSelfSize),
    d(
        "subnet_self_copy",
        &[P, P, P],
        &[],
        ALL,
        Api::SubnetSelfCopy,
    ),
    d("msg_method_name_size", &[], &[P], F, Api::MsgMethodNameSize),
    d(
        "msg_method_name_copy",
        &[P, P, P],
        &[],
        F,
        Api::MsgMethodNameCopy,
    ),
    d("accept_message", &[], &[], F, Api::AcceptMessage),
    d(
        "call_new",
        &[P, P, P, P, P, P, P, P],
        &[],
        U | RY | RT | T | CQ | CRY | CRT,
        Api::CallNew,
    ),
    d(
        "call_on_cleanup",
        &[P, P],
        &[],
        U | RY | RT | T | CQ | CRY | CRT,
        Api::CallOnCleanup,
    ),
    d(
        "call_data_append",
        &[P, P],
        &[],
        U | RY | RT | T | CQ | CRY | CRT,
        Api::CallDataAppend,
    ),
    d(
        "call_with_best_effort_response",
        &[W32],
        &[],
        U | RY | RT | T | CQ | CRY | CRT,
        Api::CallWithBestEffortResponse,
    ),
    d(
        "call_cycles_add128",
        &[W64, W64],
        &[],
        U | RY | RT | T,
        Api::CallCyclesAdd128,
    ),
    d(
        "call_perform",
        &[],
        &[W32],
        U | RY | RT | T | CQ | CRY | CRT,
        Api::CallPerform,
    ),
    d("stable64_size", &[], &[W64], ALL_S, Api::Stable64Size),
    d("stable64_grow", &[W64], &[W64], ALL_S, Api::Stable64Grow),
    d(
        "stable64_write",
        &[W64, W64, W64],
        &[],
        ALL_S,
        Api::Stable64Write,
    ),
    d(
        "stable64_read",
        &[W64, W64, W64],
        &[],
        ALL_S,
        Api::Stable64Read,
    ),
    d(
        "root_key_size",
        &[],
        &[P],
        I | G | U | RQ | RY | RT | C | T,
        Api::RootKeySize,
    ),
    d(
        "root_key_copy",
        &[P, P, P],
        &[],
        I | G | U | RQ | RY | RT | C | T,
        Api::RootKeyCopy,
    ),
    d(
        "certified_data_set",
        &[P, P],
        &[],
        I | G | U | RY | RT | T,
        Api::CertifiedDataSet,
    ),
    d(
        "data_certificate_present",
        &[],
        &[W32],
        ALL,
        Api::DataCertificatePresent,
    ),
    d(
        "data_certificate_size",
        &[],
        &[P],
        NRQ | CQ,
        Api::DataCertificateSize,
    ),
    d(
        "data_certificate_copy",
        &[P, P, P],
        &[],
        NRQ | CQ,
        Api::DataCertificateCopy,
    ),
    d("time", &[], &[W64], ALL, Api::Time),
    d(
        "global_timer_set",
        &[W64],
        &[W64],
        I | G | U | RY | RT | C | T,
        Api::GlobalTimerSet,
    ),
    d(
        "performance_counter",
        &[W32],
        &[W64],
        ALL_S,
        Api::PerformanceCounter,
    ),
    d("is_controller", &[P, P], &[W32], ALL_S, Api::IsController),
    d(
        "in_replicated_execution",
        &[],
        &[W32],
        ALL_S,
        Api::InReplicatedExecution,
    ),
    d("cost_call", &[W64, W64, P], &[], ALL_S, Api::CostCall),
    d(
        "cost_create_canister",
        &[P],
        &[],
        ALL_S,
        Api::CostCreateCanister,
    ),
    d(
        "cost_http_request",
        &[W64, W64, P],
        &[],
        ALL_S,
        Api::CostHttpRequest,
    ),
    d(
        "cost_sign_with_ecdsa",
        &[P, P, W32, P],
        &[W32],
        ALL_S,
        Api::CostSignWithEcdsa,
    ),
    d(
        "cost_sign_with_schnorr",
        &[P, P, W32, P],
        &[W32],
        ALL_S,
        Api::CostSignWithSchnorr,
    ),
    d(
        "cost_vetkd_derive_key",
        &[P, P, W32, P],
        &[W32],
        ALL_S,
        Api::CostVetkdDeriveKey,
    ),
    d("env_var_count", &[], &[P], ALL, Api::EnvVarCount),
    d("env_var_name_size", &[P], &[P], ALL, Api::EnvVarNameSize),
    d(
        "env_var_name_copy",
        &[P, P, P, P],
        &[],
        ALL,
        Api::EnvVarNameCopy,
    ),
    d(
        "env_var_name_exists",
        &[P, P],
        &[W32],
        ALL,
        Api::EnvVarNameExists,
    ),
    d(
        "env_var_value_size",
        &[P, P],
        &[P],
        ALL,
        Api::EnvVarValueSize,
    ),
    d(
        "env_var_value_copy",
        &[P, P, P, P, P],
        &[],
        ALL,
        Api::EnvVarValueCopy,
    ),
    d("debug_print", &[P, P], &[], ALL_S, Api::DebugPrint),
    d("trap", &[P, P], &[], ALL_S, Api::Trap),
    legacy(
        "msg_cycles_available",
        &[],
        &[W64],
        U | RQ | RY | RT,
        Api::MsgCyclesAvailable,
    ),
    legacy(
        "msg_cycles_refunded",
        &[],
        &[W64],
        RY | RT,
        Api::MsgCyclesRefunded,
    ),
    legacy(
        "msg_cycles_accept",
        &[W64],
        &[W64],
        U | RQ | RY | RT,
        Api::MsgCyclesAccept,
    ),
    legacy(
        "canister_cycle_balance",
        &[],
        &[W64],
        ALL,
        Api::CanisterCycleBalance,
    ),
    legacy(
        "call_cycles_add",
        &[W64],
        &[],
        U | RY | RT | T,
        Api::CallCyclesAdd,
    ),
    legacy("stable_size", &[], &[W32], ALL_S, Api::StableSize),
    legacy("stable_grow", &[W32], &[W32], ALL_S, Api::StableGrow),
    legacy(
        "stable_write",
        &[W32, W32, W32],
        &[],
        ALL_S,
        Api::StableWrite,
    ),
    legacy("stable_read", &[W32, W32, W32], &[], ALL_S, Api::StableRead),
];

/// Instructions charged for every System API call, on top of the bytes it copies.
pub const SYSTEM_API_CALL_INSTRUCTIONS: u64 = 50;
/// Bytes a reply may hold (the spec's inter-canister payload bound).
pub const REPLY_BYTES_MAX: usize = 2 << 20;
/// Bytes an inter-canister call's argument may hold.
pub const CALL_PAYLOAD_BYTES_MAX: usize = 2 << 20;
/// Bytes `certified_data_set` accepts.
pub const CERTIFIED_DATA_BYTES_MAX: usize = 32;
/// Bytes of one `debug_print` kept (the rest is cut).
pub const DEBUG_PRINT_BYTES_MAX: usize = 1024;
/// Calls one execution may make (bounds the output of one message).
pub const CALLS_PER_EXECUTION_MAX: usize = 500;

/// The expected Wasm signature of `name` for a module with the given memory width, or why
/// the module may not import it.
pub fn expected_import(name: &str, memory64: bool) -> Result<FuncType, String> {
    let def = IC0_IMPORTS
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| format!("`ic0.{name}` is not a System API function"))?;
    if def.legacy && memory64 {
        return Err(format!("`ic0.{name}` is only available to 32-bit modules"));
    }
    Ok(func_type(def, memory64))
}

fn val_type(k: K, memory64: bool) -> ValType {
    match (k, memory64) {
        (K::P, true) | (K::W64, _) => ValType::I64,
        (K::P, false) | (K::W32, _) => ValType::I32,
    }
}

fn func_type(def: &Ic0Def, memory64: bool) -> FuncType {
    FuncType::new(
        def.params.iter().map(|k| val_type(*k, memory64)),
        def.results.iter().map(|k| val_type(*k, memory64)),
    )
}

/// A trap raised by a System API call (or by the host on the canister's behalf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTrap {
    /// `ic0.trap` with the canister's message.
    Explicit(String),
    /// A contract violation of the System API (wrong context, out of bounds, …).
    Contract(String),
    /// The canister's per-message instruction limit was hit inside a host call.
    OutOfInstructions,
}

impl fmt::Display for HostTrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostTrap::Explicit(m) => write!(f, "Canister called `ic0.trap` with message: '{m}'"),
            HostTrap::Contract(m) => write!(f, "Canister violated contract: {m}"),
            HostTrap::OutOfInstructions => f.write_str("Canister exceeded its instruction limit"),
        }
    }
}

impl wasmi::errors::HostError for HostTrap {}
impl core::error::Error for HostTrap {}

fn trap(msg: impl Into<String>) -> Error {
    Error::host(HostTrap::Contract(msg.into()))
}

/// A table entry and its argument: a callback the canister registered with `call_new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WasmClosure {
    pub fun: u64,
    pub env: u64,
}

/// A call the canister performed during this execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingCall {
    pub callee: Principal,
    pub method: String,
    pub payload: Vec<u8>,
    pub cycles: u128,
    pub on_reply: WasmClosure,
    pub on_reject: WasmClosure,
    pub on_cleanup: Option<WasmClosure>,
}

/// How an execution responded to its call context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Reply(Vec<u8>),
    Reject(String),
}

/// Everything a System API call may read or change during one execution. Changes are
/// applied to the canister only if the execution finishes without trapping.
pub struct Host {
    pub context: ApiContext,
    pub memory: Option<Memory>,
    pub canister_id: Principal,
    pub caller: Principal,
    pub arg: Vec<u8>,
    pub method_name: String,
    pub reject_code: u32,
    pub reject_message: String,
    pub controllers: Vec<Principal>,
    pub status: i32,
    pub canister_version: u64,
    pub time_ns: u64,
    pub root_key: Vec<u8>,
    pub subnet_id: Principal,
    /// `Some` only for non-replicated queries: the certificate the caller passed in.
    pub data_certificate: Option<Vec<u8>>,
    /// Whether the call context was already responded to (by an earlier execution).
    pub already_responded: bool,
    pub reply_buffer: Vec<u8>,
    pub response: Option<Response>,
    pub cycles_balance: u128,
    pub cycles_available: u128,
    pub cycles_accepted: u128,
    pub cycles_refunded: u128,
    /// Balance that must stay on the canister (freezing threshold).
    pub cycles_frozen: u128,
    pub xnet_call_fee_cycles: u128,
    pub xnet_byte_fee_cycles: u128,
    pub pending_call: Option<OutgoingCall>,
    pub calls: Vec<OutgoingCall>,
    pub stable: StableMemory,
    pub stable_pages_max: u64,
    pub certified_data: Option<Vec<u8>>,
    pub global_timer: Option<u64>,
    pub message_accepted: bool,
    pub debug_log: Vec<String>,
    /// Instructions this message may use in total, and those used in earlier slices.
    pub instruction_limit: u64,
    pub instructions_before_slice: u64,
    pub slice_fuel: u64,
    pub instructions_counter_base: u64,
    /// Memory limits wasmi enforces on `memory.grow`.
    pub limits: wasmi::StoreLimits,
}

impl Host {
    /// Instructions executed in this message so far (for `performance_counter`).
    fn instructions_used(&self, fuel_left: u64) -> u64 {
        self.instructions_before_slice + self.slice_fuel.saturating_sub(fuel_left)
    }
}

/// Adds every ic0 function for one memory width to `linker`.
pub fn define_imports(linker: &mut Linker<Host>, memory64: bool) -> Result<(), String> {
    for def in IC0_IMPORTS {
        if def.legacy && memory64 {
            continue;
        }
        let api = def.api;
        let allowed = def.allowed;
        let name = def.name;
        let results_kinds = def.results;
        linker
            .func_new(
                "ic0",
                def.name,
                func_type(def, memory64),
                move |mut caller: Caller<'_, Host>, params: &[Val], results: &mut [Val]| {
                    let ctx = caller.data().context;
                    if ctx.bit() & allowed == 0 {
                        return Err(trap(format!(
                            "\"ic0_{name}\" cannot be executed in {} mode",
                            ctx.name()
                        )));
                    }
                    let mut args = [0u64; 8];
                    for (a, v) in args.iter_mut().zip(params.iter()) {
                        *a = match v {
                            Val::I32(x) => *x as u32 as u64,
                            Val::I64(x) => *x as u64,
                            _ => 0,
                        };
                    }
                    charge(&mut caller, SYSTEM_API_CALL_INSTRUCTIONS)?;
                    let r = dispatch(api, &mut caller, &args)?;
                    if let (Some(slot), Some(kind)) = (results.first_mut(), results_kinds.first()) {
                        *slot = match val_type(*kind, memory64) {
                            ValType::I64 => Val::I64(r as i64),
                            _ => Val::I32(r as u32 as i32),
                        };
                    }
                    Ok(())
                },
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Takes `n` instructions from the execution's fuel.
fn charge(caller: &mut Caller<'_, Host>, n: u64) -> Result<(), Error> {
    let fuel = caller.get_fuel().unwrap_or(0);
    if fuel < n {
        let _ = caller.set_fuel(0);
        return Err(Error::host(HostTrap::OutOfInstructions));
    }
    caller.set_fuel(fuel - n).map_err(|e| trap(e.to_string()))
}

fn mem_slice(caller: &mut Caller<'_, Host>, src: u64, len: u64) -> Result<Vec<u8>, Error> {
    let mem = caller
        .data()
        .memory
        .ok_or_else(|| trap("module has no memory"))?;
    let data = mem.data(&*caller);
    let end = src
        .checked_add(len)
        .filter(|e| *e <= data.len() as u64)
        .ok_or_else(|| trap(format!("heap out of bounds: {src}+{len}")))?;
    Ok(data[src as usize..end as usize].to_vec())
}

fn mem_write(caller: &mut Caller<'_, Host>, dst: u64, bytes: &[u8]) -> Result<(), Error> {
    let mem = caller
        .data()
        .memory
        .ok_or_else(|| trap("module has no memory"))?;
    let data = mem.data_mut(&mut *caller);
    let end = dst
        .checked_add(bytes.len() as u64)
        .filter(|e| *e <= data.len() as u64)
        .ok_or_else(|| trap(format!("heap out of bounds: {dst}+{}", bytes.len())))?;
    data[dst as usize..end as usize].copy_from_slice(bytes);
    Ok(())
}

/// The blob convention: copy `src[off..off+size]` to heap `dst`.
fn copy_out(
    caller: &mut Caller<'_, Host>,
    src: &[u8],
    dst: u64,
    off: u64,
    size: u64,
) -> Result<(), Error> {
    let end = off
        .checked_add(size)
        .filter(|e| *e <= src.len() as u64)
        .ok_or_else(|| trap(format!("read out of bounds: {off}+{size} > {}", src.len())))?;
    charge(caller, size)?;
    mem_write(caller, dst, &src[off as usize..end as usize])
}

fn write_u128(caller: &mut Caller<'_, Host>, dst: u64, v: u128) -> Result<(), Error> {
    mem_write(caller, dst, &v.to_le_bytes())
}

fn dispatch(api: Api, c: &mut Caller<'_, Host>, a: &[u64; 8]) -> Result<u64, Error> {
    use Api::*;
    match api {
        MsgArgDataSize => Ok(c.data().arg.len() as u64),
        MsgArgDataCopy => {
            let src = core::mem::take(&mut c.data_mut().arg);
            let r = copy_out(c, &src, a[0], a[1], a[2]);
            c.data_mut().arg = src;
            r.map(|_| 0)
        }
        MsgCallerSize => Ok(c.data().caller.as_slice().len() as u64),
        MsgCallerCopy => {
            let p = c.data().caller;
            copy_out(c, p.as_slice(), a[0], a[1], a[2]).map(|_| 0)
        }
        MsgCallerInfoDataSize | MsgCallerInfoSignerSize => Ok(0),
        MsgCallerInfoDataCopy | MsgCallerInfoSignerCopy => {
            copy_out(c, &[], a[0], a[1], a[2]).map(|_| 0)
        }
        MsgRejectCode => Ok(c.data().reject_code as u64),
        MsgRejectMsgSize => Ok(c.data().reject_message.len() as u64),
        MsgRejectMsgCopy => {
            let m = c.data().reject_message.clone();
            copy_out(c, m.as_bytes(), a[0], a[1], a[2]).map(|_| 0)
        }
        MsgDeadline => Ok(0),
        MsgReplyDataAppend => reply_data_append(c, a[0], a[1]),
        MsgReply => {
            check_can_respond(c.data())?;
            let h = c.data_mut();
            let data = core::mem::take(&mut h.reply_buffer);
            h.response = Some(Response::Reply(data));
            Ok(0)
        }
        MsgReject => {
            check_can_respond(c.data())?;
            if a[1] > REPLY_BYTES_MAX as u64 {
                return Err(trap("reject message too long"));
            }
            let bytes = mem_slice(c, a[0], a[1])?;
            let msg = String::from_utf8(bytes).map_err(|_| trap("reject message is not UTF-8"))?;
            c.data_mut().response = Some(Response::Reject(msg));
            Ok(0)
        }
        MsgCyclesAvailable128 => {
            let v = available(c.data());
            write_u128(c, a[0], v).map(|_| 0)
        }
        MsgCyclesRefunded128 => {
            let v = c.data().cycles_refunded;
            write_u128(c, a[0], v).map(|_| 0)
        }
        MsgCyclesAccept128 => {
            let want = ((a[0] as u128) << 64) | a[1] as u128;
            let got = accept(c.data_mut(), want);
            write_u128(c, a[2], got).map(|_| 0)
        }
        CyclesBurn128 => {
            let want = ((a[0] as u128) << 64) | a[1] as u128;
            let h = c.data_mut();
            let liquid = h.cycles_balance.saturating_sub(h.cycles_frozen);
            let burnt = want.min(liquid);
            h.cycles_balance -= burnt;
            write_u128(c, a[2], burnt).map(|_| 0)
        }
        CanisterCycleBalance128 => {
            let v = c.data().cycles_balance;
            write_u128(c, a[0], v).map(|_| 0)
        }
        CanisterLiquidCycleBalance128 => {
            let h = c.data();
            let v = h.cycles_balance.saturating_sub(h.cycles_frozen);
            write_u128(c, a[0], v).map(|_| 0)
        }
        CanisterSelfSize => Ok(c.data().canister_id.as_slice().len() as u64),
        CanisterSelfCopy => {
            let p = c.data().canister_id;
            copy_out(c, p.as_slice(), a[0], a[1], a[2]).map(|_| 0)
        }
        CanisterStatus => Ok(c.data().status as u64),
        CanisterVersion => Ok(c.data().canister_version),
        SubnetSelfSize => Ok(c.data().subnet_id.as_slice().len() as u64),
        SubnetSelfCopy => {
            let p = c.data().subnet_id;
            copy_out(c, p.as_slice(), a[0], a[1], a[2]).map(|_| 0)
        }
        MsgMethodNameSize => Ok(c.data().method_name.len() as u64),
        MsgMethodNameCopy => {
            let m = c.data().method_name.clone();
            copy_out(c, m.as_bytes(), a[0], a[1], a[2]).map(|_| 0)
        }
        AcceptMessage => {
            if c.data().message_accepted {
                return Err(trap("accept_message called twice"));
            }
            c.data_mut().message_accepted = true;
            Ok(0)
        }
        CallNew => call_new(c, a),
        CallOnCleanup => {
            let h = c.data_mut();
            let call = h
                .pending_call
                .as_mut()
                .ok_or_else(|| trap("call_on_cleanup: no call is being constructed"))?;
            if call.on_cleanup.is_some() {
                return Err(trap("call_on_cleanup called twice"));
            }
            call.on_cleanup = Some(WasmClosure {
                fun: a[0],
                env: a[1],
            });
            Ok(0)
        }
        CallDataAppend => {
            if a[1] > CALL_PAYLOAD_BYTES_MAX as u64 {
                return Err(trap("call payload too large"));
            }
            let bytes = mem_slice(c, a[0], a[1])?;
            charge(c, a[1])?;
            let call = c
                .data_mut()
                .pending_call
                .as_mut()
                .ok_or_else(|| trap("call_data_append: no call is being constructed"))?;
            if call.payload.len() + bytes.len() > CALL_PAYLOAD_BYTES_MAX {
                return Err(trap("call payload too large"));
            }
            call.payload.extend_from_slice(&bytes);
            Ok(0)
        }
        CallWithBestEffortResponse => {
            if c.data().pending_call.is_none() {
                return Err(trap("call_with_best_effort_response: no call"));
            }
            Ok(0)
        }
        CallCyclesAdd128 => call_cycles_add(c.data_mut(), ((a[0] as u128) << 64) | a[1] as u128),
        CallCyclesAdd => call_cycles_add(c.data_mut(), a[0] as u128),
        CallPerform => call_perform(c.data_mut()),
        Stable64Size => Ok(c.data().stable.pages()),
        Stable64Grow => Ok(stable_grow(c.data_mut(), a[0])),
        Stable64Write => stable_write(c, a[0], a[1], a[2]),
        Stable64Read => stable_read(c, a[0], a[1], a[2]),
        StableSize => {
            let pages = c.data().stable.pages();
            if pages > u32::MAX as u64 / 65536 + 1 {
                return Err(trap("stable_size: memory exceeds the 32-bit API"));
            }
            Ok(pages)
        }
        StableGrow => {
            let h = c.data_mut();
            // The 32-bit API may address at most 4 GiB.
            if h.stable.pages() + a[0] > 65_536 {
                return Ok(u32::MAX as u64);
            }
            let r = stable_grow(h, a[0]);
            Ok(r & 0xffff_ffff)
        }
        StableWrite => stable_write(c, a[0], a[1], a[2]),
        StableRead => stable_read(c, a[0], a[1], a[2]),
        RootKeySize => Ok(c.data().root_key.len() as u64),
        RootKeyCopy => {
            let k = c.data().root_key.clone();
            copy_out(c, &k, a[0], a[1], a[2]).map(|_| 0)
        }
        CertifiedDataSet => {
            if a[1] as usize > CERTIFIED_DATA_BYTES_MAX {
                return Err(trap("certified_data_set: more than 32 bytes"));
            }
            let bytes = mem_slice(c, a[0], a[1])?;
            c.data_mut().certified_data = Some(bytes);
            Ok(0)
        }
        DataCertificatePresent => Ok(c.data().data_certificate.is_some() as u64),
        DataCertificateSize => match &c.data().data_certificate {
            Some(cert) => Ok(cert.len() as u64),
            None => Err(trap("data_certificate_size: no certificate")),
        },
        DataCertificateCopy => {
            let cert = c
                .data()
                .data_certificate
                .clone()
                .ok_or_else(|| trap("data_certificate_copy: no certificate"))?;
            copy_out(c, &cert, a[0], a[1], a[2]).map(|_| 0)
        }
        Time => Ok(c.data().time_ns),
        GlobalTimerSet => {
            let h = c.data_mut();
            let old = h.global_timer.unwrap_or(0);
            h.global_timer = if a[0] == 0 { None } else { Some(a[0]) };
            Ok(old)
        }
        PerformanceCounter => {
            let fuel = c.get_fuel().unwrap_or(0);
            let h = c.data();
            match a[0] {
                0 => Ok(h.instructions_used(fuel)),
                1 => Ok(h.instructions_counter_base + h.instructions_used(fuel)),
                _ => Err(trap("performance_counter: unknown counter type")),
            }
        }
        IsController => {
            if a[1] > PRINCIPAL_BYTES_MAX {
                return Err(trap("is_controller: not a principal"));
            }
            let bytes = mem_slice(c, a[0], a[1])?;
            let p = Principal::from_slice(&bytes)
                .map_err(|_| trap("is_controller: not a principal"))?;
            Ok(c.data().controllers.contains(&p) as u64)
        }
        InReplicatedExecution => Ok(!c.data().context.is_non_replicated() as u64),
        CostCall => {
            let h = c.data();
            let v = h.xnet_call_fee_cycles + h.xnet_byte_fee_cycles * (a[0] as u128 + a[1] as u128);
            write_u128(c, a[2], v).map(|_| 0)
        }
        CostCreateCanister => {
            write_u128(c, a[0], super::cycles::CANISTER_CREATION_FEE_CYCLES).map(|_| 0)
        }
        CostHttpRequest => write_u128(c, a[2], 0).map(|_| 0),
        CostSignWithEcdsa | CostSignWithSchnorr | CostVetkdDeriveKey => {
            // No threshold keys on this subnet: error code 1 (invalid curve or algorithm)
            // is not right either; the spec's code 2 means "key not available".
            write_u128(c, a[3], 0)?;
            Ok(2)
        }
        EnvVarCount => Ok(0),
        EnvVarNameSize | EnvVarNameCopy | EnvVarValueSize | EnvVarValueCopy => {
            Err(trap("environment variable index or name out of range"))
        }
        EnvVarNameExists => Ok(0),
        DebugPrint => {
            let len = a[1].min(DEBUG_PRINT_BYTES_MAX as u64);
            let bytes = mem_slice(c, a[0], len)?;
            let s = String::from_utf8_lossy(&bytes).into_owned();
            c.data_mut().debug_log.push(s);
            Ok(0)
        }
        Trap => {
            let len = a[1].min(REPLY_BYTES_MAX as u64);
            let bytes = mem_slice(c, a[0], len)?;
            let s = String::from_utf8_lossy(&bytes).into_owned();
            Err(Error::host(HostTrap::Explicit(s)))
        }
        MsgCyclesAvailable => {
            let v = available(c.data());
            u64::try_from(v).map_err(|_| trap("msg_cycles_available: more than 2^64 cycles"))
        }
        MsgCyclesRefunded => u64::try_from(c.data().cycles_refunded)
            .map_err(|_| trap("msg_cycles_refunded: more than 2^64 cycles")),
        MsgCyclesAccept => Ok(accept(c.data_mut(), a[0] as u128) as u64),
        CanisterCycleBalance => u64::try_from(c.data().cycles_balance)
            .map_err(|_| trap("canister_cycle_balance: more than 2^64 cycles")),
    }
}

fn check_can_respond(h: &Host) -> Result<(), Error> {
    if h.already_responded || h.response.is_some() {
        return Err(trap("the call was already replied to or rejected"));
    }
    Ok(())
}

fn reply_data_append(c: &mut Caller<'_, Host>, src: u64, size: u64) -> Result<u64, Error> {
    check_can_respond(c.data())?;
    if c.data().reply_buffer.len() as u64 + size > REPLY_BYTES_MAX as u64 {
        return Err(trap("reply exceeds the maximum payload size"));
    }
    let bytes = mem_slice(c, src, size)?;
    charge(c, size)?;
    let h = c.data_mut();
    if h.reply_buffer.len() + bytes.len() > REPLY_BYTES_MAX {
        return Err(trap("reply exceeds the maximum payload size"));
    }
    h.reply_buffer.extend_from_slice(&bytes);
    Ok(0)
}

fn available(h: &Host) -> u128 {
    h.cycles_available - h.cycles_accepted
}

fn accept(h: &mut Host, want: u128) -> u128 {
    let got = want.min(available(h));
    h.cycles_accepted += got;
    h.cycles_balance = h.cycles_balance.saturating_add(got);
    got
}

/// Bytes of a principal (the spec's bound).
const PRINCIPAL_BYTES_MAX: u64 = 29;

/// Bytes of a method name in `call_new`.
pub const METHOD_NAME_BYTES_MAX: u64 = 20_000;

fn call_new(c: &mut Caller<'_, Host>, a: &[u64; 8]) -> Result<u64, Error> {
    if a[1] > PRINCIPAL_BYTES_MAX || a[3] > METHOD_NAME_BYTES_MAX {
        return Err(trap("call_new: callee or method name too long"));
    }
    let callee = mem_slice(c, a[0], a[1])?;
    let method = mem_slice(c, a[2], a[3])?;
    let callee = Principal::from_slice(&callee).map_err(|_| trap("call_new: bad callee"))?;
    let method = String::from_utf8(method).map_err(|_| trap("call_new: method is not UTF-8"))?;
    let h = c.data_mut();
    // A call left under construction is discarded (its cycles return to the balance).
    if let Some(old) = h.pending_call.take() {
        h.cycles_balance += old.cycles;
    }
    h.pending_call = Some(OutgoingCall {
        callee,
        method,
        payload: Vec::new(),
        cycles: 0,
        on_reply: WasmClosure {
            fun: a[4],
            env: a[5],
        },
        on_reject: WasmClosure {
            fun: a[6],
            env: a[7],
        },
        on_cleanup: None,
    });
    Ok(0)
}

fn call_cycles_add(h: &mut Host, amount: u128) -> Result<u64, Error> {
    let liquid = h.cycles_balance.saturating_sub(h.cycles_frozen);
    let call = h
        .pending_call
        .as_mut()
        .ok_or_else(|| trap("call_cycles_add: no call is being constructed"))?;
    if amount > liquid {
        return Err(trap("call_cycles_add: not enough cycles"));
    }
    call.cycles += amount;
    h.cycles_balance -= amount;
    Ok(0)
}

fn call_perform(h: &mut Host) -> Result<u64, Error> {
    let call = h
        .pending_call
        .take()
        .ok_or_else(|| trap("call_perform: no call is being constructed"))?;
    // Calls of a composite query are free, like the query itself.
    let fee = if h.context.is_non_replicated() {
        0
    } else {
        h.xnet_call_fee_cycles + h.xnet_byte_fee_cycles * call.payload.len() as u128
    };
    let liquid = h.cycles_balance.saturating_sub(h.cycles_frozen);
    if fee > liquid || h.calls.len() >= CALLS_PER_EXECUTION_MAX {
        // Could not be performed: the attached cycles come back, no callbacks.
        h.cycles_balance += call.cycles;
        return Ok(2);
    }
    h.cycles_balance -= fee;
    h.calls.push(call);
    Ok(0)
}

/// Bytes copied between stable memory and the heap per step (no buffer of the full size).
const STABLE_COPY_STEP_BYTES: u64 = 64 * 1024;

fn stable_read(c: &mut Caller<'_, Host>, dst: u64, offset: u64, size: u64) -> Result<u64, Error> {
    charge(c, size)?;
    let mem = c
        .data()
        .memory
        .ok_or_else(|| trap("module has no memory"))?;
    let (data, host) = mem.data_and_store_mut(&mut *c);
    let end = dst
        .checked_add(size)
        .filter(|e| *e <= data.len() as u64)
        .ok_or_else(|| trap(format!("heap out of bounds: {dst}+{size}")))?;
    host.stable
        .read_into(offset, &mut data[dst as usize..end as usize])
        .map_err(|_| trap("stable memory out of bounds"))?;
    Ok(0)
}

fn stable_write(c: &mut Caller<'_, Host>, offset: u64, src: u64, size: u64) -> Result<u64, Error> {
    charge(c, size)?;
    let mem = c
        .data()
        .memory
        .ok_or_else(|| trap("module has no memory"))?;
    let (data, host) = mem.data_and_store_mut(&mut *c);
    let end = src
        .checked_add(size)
        .filter(|e| *e <= data.len() as u64)
        .ok_or_else(|| trap(format!("heap out of bounds: {src}+{size}")))?;
    if offset
        .checked_add(size)
        .is_none_or(|e| e > host.stable.size_bytes())
    {
        return Err(trap("stable memory out of bounds"));
    }
    let mut pos = src;
    while pos < end {
        let n = (end - pos).min(STABLE_COPY_STEP_BYTES);
        let at = offset + (pos - src);
        host.stable
            .write(at, &data[pos as usize..(pos + n) as usize])
            .map_err(|_| trap("stable memory out of bounds"))?;
        pos += n;
    }
    Ok(0)
}

fn stable_grow(h: &mut Host, pages: u64) -> u64 {
    let old = h.stable.pages();
    match old.checked_add(pages) {
        Some(n) if n <= h.stable_pages_max => {
            h.stable.grow(pages);
            old
        }
        _ => u64::MAX,
    }
}
