//! The management canister `aaaaa-aa`: canister lifecycle, settings, cycles and randomness,
//! with Candid arguments and results (ic-interface.md §3.4, `ic.did`).
//!
//! Every method checks its argument's Candid against the expected type (extra and missing
//! optional fields are tolerated by subtyping) and rejects malformed payloads without
//! changing anything; only controllers may manage a canister. `install_code` is atomic:
//! the canister changes only if compilation, `pre_upgrade`, `(start)` and
//! `canister_init`/`canister_post_upgrade` all succeed.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use sha2::{Digest, Sha256};

use super::cycles::{self, idle_cycles_per_day};
use super::message::{origin_output, reject, respond, run_hooks, Env, Output};
use super::runtime::{EntryPoint, ExecError, HeapSnapshot};
use super::stable::StableMemory;
use super::system_api::ApiContext;
use crate::candid::{
    self, blob, decode_args, encode_args, field_id, opt, record, variant, vec, Type, TypeEnv, Value,
};
use crate::state::{
    CallOrigin, CanisterState, CanisterStatus, Payload, Reject, RejectCode, ReplicatedState,
};
use crate::types::Principal;

/// Controllers a canister may have.
pub const CONTROLLERS_MAX: usize = 10;
/// Largest chunk `upload_chunk` takes (the IC's 1 MiB).
pub const WASM_CHUNK_BYTES_MAX: usize = 1 << 20;
/// Most chunks a canister's Wasm chunk store holds (the IC's 100 MiB store).
pub const WASM_CHUNK_STORE_CHUNKS_MAX: usize = 100;

/// The result of a management call.
#[derive(Debug, PartialEq, Eq)]
pub enum MgmtResult {
    /// Reply bytes and cycles to refund to a calling canister.
    Reply(Vec<u8>, u128),
    Reject(Reject, u128),
    /// `stop_canister` on a canister that still has open calls: answered when it stops.
    Deferred,
}

fn bad_payload(method: &str, e: candid::DecodeError) -> Reject {
    reject(
        RejectCode::CanisterReject,
        "IC0408",
        format!("Error decoding candid for management method {method}: {e}"),
    )
}

fn not_found(id: &Principal) -> Reject {
    reject(
        RejectCode::DestinationInvalid,
        "IC0301",
        format!("Canister {id} not found"),
    )
}

fn not_controller(id: &Principal, caller: &Principal) -> Reject {
    reject(
        RejectCode::CanisterError,
        "IC0512",
        format!(
            "Only the controllers of the canister {id} can control it. Caller {caller} is not a controller."
        ),
    )
}

fn settings_type() -> Type {
    record(&[
        ("controllers", opt(vec(Type::Principal))),
        ("compute_allocation", opt(Type::Nat)),
        ("memory_allocation", opt(Type::Nat)),
        ("freezing_threshold", opt(Type::Nat)),
        ("reserved_cycles_limit", opt(Type::Nat)),
        ("wasm_memory_limit", opt(Type::Nat)),
        ("wasm_memory_threshold", opt(Type::Nat)),
    ])
}

fn canister_id_record() -> Type {
    record(&[("canister_id", Type::Principal)])
}

fn decode_one(method: &str, arg: &[u8], ty: Type) -> Result<Value, Reject> {
    let mut v = decode_args(arg, &[ty], &TypeEnv::default()).map_err(|e| bad_payload(method, e))?;
    v.pop()
        .ok_or_else(|| bad_payload(method, candid::DecodeError::MissingArgument))
}

fn encode_unit() -> Vec<u8> {
    encode_args(&[]).unwrap_or_default()
}

fn reply_canister_id(id: Principal) -> Vec<u8> {
    let ty = record(&[("canister_id", Type::Principal)]);
    let v = Value::Record(alloc::vec![(field_id("canister_id"), Value::Principal(id))]);
    encode_args(&[(ty, v)]).unwrap_or_default()
}

/// The canister a management call is about (the `canister_id` field of its Candid argument),
/// for the API layer's effective-canister-id check. `None` for calls about no existing
/// canister (`create_canister`, `provisional_create_canister_with_cycles`, `raw_rand`) or
/// an argument that does not decode.
pub fn target_canister(method: &str, arg: &[u8]) -> Option<Principal> {
    let field = match method {
        "create_canister" | "provisional_create_canister_with_cycles" | "raw_rand" => return None,
        "install_chunked_code" => "target_canister",
        _ => "canister_id",
    };
    let ty = record(&[(field, Type::Principal)]);
    let v = decode_args(arg, &[ty], &TypeEnv::default()).ok()?;
    v.first()?.field(field)?.as_principal()
}

/// Executes a management call from `caller` with `cycles` attached.
pub fn execute(
    env: &Env<'_>,
    state: &mut ReplicatedState,
    origin: &CallOrigin,
    caller: Principal,
    method: &str,
    arg: &[u8],
    cycles: u128,
) -> MgmtResult {
    let from_canister = matches!(origin, CallOrigin::Canister { .. });
    let r = match method {
        "create_canister" if from_canister => create_canister(state, caller, arg, cycles),
        "provisional_create_canister_with_cycles" => provisional_create(state, caller, arg),
        "provisional_top_up_canister" => top_up(state, arg),
        "install_code" => install_code(env, state, caller, arg),
        "upload_chunk" => upload_chunk(state, caller, arg),
        "clear_chunk_store" => clear_chunk_store(state, caller, arg),
        "stored_chunks" => stored_chunks(state, caller, arg),
        "install_chunked_code" => install_chunked_code(env, state, caller, arg),
        "uninstall_code" => uninstall_code(state, caller, arg),
        "update_settings" => update_settings(state, caller, arg),
        "canister_status" => canister_status(state, caller, arg),
        "start_canister" => start_canister(state, caller, arg),
        "stop_canister" => return stop_canister(state, origin, caller, arg, cycles),
        "delete_canister" => delete_canister(state, caller, arg),
        "deposit_cycles" if from_canister => deposit_cycles(state, arg, cycles),
        "raw_rand" if from_canister => raw_rand(state, arg),
        "create_canister" | "deposit_cycles" | "raw_rand" => Err(reject(
            RejectCode::CanisterReject,
            "IC0406",
            format!("Only canisters can call ic00 method {method}"),
        )),
        _ => Err(reject(
            RejectCode::CanisterReject,
            "IC0407",
            format!("Management canister has no method '{method}'"),
        )),
    };
    match r {
        // Cycles attached to calls that do not take them are refunded.
        Ok((bytes, kept)) => MgmtResult::Reply(bytes, cycles - kept.min(cycles)),
        Err(rj) => MgmtResult::Reject(rj, cycles),
    }
}

type MResult = Result<(Vec<u8>, u128), Reject>;

fn canister_mut<'a>(
    state: &'a mut ReplicatedState,
    caller: &Principal,
    id: Principal,
) -> Result<&'a mut CanisterState, Reject> {
    let c = state.canisters.get_mut(&id).ok_or_else(|| not_found(&id))?;
    if !c.is_controller(caller) {
        return Err(not_controller(&id, caller));
    }
    Ok(c)
}

fn arg_canister_id(method: &str, arg: &[u8]) -> Result<Principal, Reject> {
    let v = decode_one(method, arg, canister_id_record())?;
    v.field("canister_id")
        .and_then(Value::as_principal)
        .ok_or_else(|| bad_payload(method, candid::DecodeError::TypeMismatch))
}

fn new_canister_id(state: &mut ReplicatedState) -> Principal {
    loop {
        let id = Principal::from_canister_index(state.next_canister_index);
        state.next_canister_index += 1;
        if !state.canisters.contains_key(&id) {
            return id;
        }
    }
}

fn apply_settings(c: &mut CanisterState, settings: &Value, method: &str) -> Result<(), Reject> {
    if let Some(ctrls) = settings.field("controllers").and_then(Value::opt) {
        let list = ctrls.as_vec().unwrap_or(&[]);
        if list.len() > CONTROLLERS_MAX {
            return Err(reject(
                RejectCode::CanisterReject,
                "IC0408",
                format!("{method}: at most {CONTROLLERS_MAX} controllers are allowed"),
            ));
        }
        let mut out: Vec<Principal> = Vec::new();
        for p in list.iter().filter_map(Value::as_principal) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        c.controllers = out;
    }
    let nat = |name: &str| {
        settings
            .field(name)
            .and_then(Value::opt)
            .and_then(Value::as_u128)
    };
    if let Some(v) = nat("freezing_threshold") {
        c.freezing_threshold_seconds = u64::try_from(v).unwrap_or(u64::MAX);
    }
    if let Some(v) = nat("wasm_memory_limit") {
        c.wasm_memory_limit_bytes = u64::try_from(v).unwrap_or(u64::MAX);
    }
    if let Some(v) = nat("compute_allocation") {
        if v > 100 {
            return Err(reject(
                RejectCode::CanisterReject,
                "IC0408",
                format!("{method}: compute_allocation must be at most 100"),
            ));
        }
        c.compute_allocation = v as u64;
    }
    if let Some(v) = nat("memory_allocation") {
        c.memory_allocation = u64::try_from(v).unwrap_or(u64::MAX);
    }
    Ok(())
}

fn create_canister(
    state: &mut ReplicatedState,
    caller: Principal,
    arg: &[u8],
    cycles: u128,
) -> MResult {
    // An empty argument is accepted (older callers send `()`).
    let ty = record(&[
        ("settings", opt(settings_type())),
        ("sender_canister_version", opt(Type::Nat64)),
    ]);
    let v = decode_one("create_canister", arg, ty)?;
    if cycles < cycles::CANISTER_CREATION_FEE_CYCLES {
        return Err(reject(
            RejectCode::CanisterReject,
            "IC0403",
            format!(
                "Creating a canister requires a fee of {} that is deducted from the canister's initial balance but only {cycles} cycles were received",
                cycles::CANISTER_CREATION_FEE_CYCLES
            ),
        ));
    }
    let id = new_canister_id(state);
    let mut c = CanisterState::new(
        id,
        alloc::vec![caller],
        cycles - cycles::CANISTER_CREATION_FEE_CYCLES,
    );
    if let Some(s) = v.field("settings").and_then(Value::opt) {
        apply_settings(&mut c, s, "create_canister")?;
    }
    state.canisters.insert(id, c);
    Ok((reply_canister_id(id), cycles))
}

fn provisional_create(state: &mut ReplicatedState, caller: Principal, arg: &[u8]) -> MResult {
    let method = "provisional_create_canister_with_cycles";
    let ty = record(&[
        ("amount", opt(Type::Nat)),
        ("settings", opt(settings_type())),
        ("specified_id", opt(Type::Principal)),
        ("sender_canister_version", opt(Type::Nat64)),
    ]);
    let v = decode_one(method, arg, ty)?;
    let amount = v
        .field("amount")
        .and_then(Value::opt)
        .map(|a| a.as_u128().unwrap_or(u128::MAX))
        .unwrap_or(cycles::DEFAULT_PROVISIONAL_CYCLES);
    let id = match v
        .field("specified_id")
        .and_then(Value::opt)
        .and_then(Value::as_principal)
    {
        Some(id) if state.canisters.contains_key(&id) => {
            return Err(reject(
                RejectCode::SysTransient,
                "IC0205",
                format!("Canister {id} is already installed"),
            ))
        }
        Some(id) => id,
        None => new_canister_id(state),
    };
    let mut c = CanisterState::new(id, alloc::vec![caller], amount);
    if let Some(s) = v.field("settings").and_then(Value::opt) {
        apply_settings(&mut c, s, method)?;
    }
    state.canisters.insert(id, c);
    Ok((reply_canister_id(id), 0))
}

fn top_up(state: &mut ReplicatedState, arg: &[u8]) -> MResult {
    let ty = record(&[("canister_id", Type::Principal), ("amount", Type::Nat)]);
    let v = decode_one("provisional_top_up_canister", arg, ty)?;
    let id = v
        .field("canister_id")
        .and_then(Value::as_principal)
        .ok_or_else(|| {
            bad_payload(
                "provisional_top_up_canister",
                candid::DecodeError::TypeMismatch,
            )
        })?;
    let amount = v
        .field("amount")
        .and_then(Value::as_u128)
        .unwrap_or(u128::MAX);
    let c = state.canisters.get_mut(&id).ok_or_else(|| not_found(&id))?;
    c.cycles = c.cycles.saturating_add(amount);
    Ok((encode_unit(), 0))
}

fn deposit_cycles(state: &mut ReplicatedState, arg: &[u8], cycles: u128) -> MResult {
    let id = arg_canister_id("deposit_cycles", arg)?;
    let c = state.canisters.get_mut(&id).ok_or_else(|| not_found(&id))?;
    c.cycles = c.cycles.saturating_add(cycles);
    Ok((encode_unit(), cycles))
}

fn raw_rand(state: &mut ReplicatedState, arg: &[u8]) -> MResult {
    decode_args(arg, &[], &TypeEnv::default()).map_err(|e| bad_payload("raw_rand", e))?;
    let mut h = Sha256::new();
    h.update(b"cairn-raw-rand");
    h.update(state.randomness);
    h.update(state.raw_rand_draws.to_le_bytes());
    state.raw_rand_draws += 1;
    let bytes: [u8; 32] = h.finalize().into();
    let out = encode_args(&[(blob(), Value::Blob(bytes.to_vec()))]).unwrap_or_default();
    Ok((out, 0))
}

fn update_settings(state: &mut ReplicatedState, caller: Principal, arg: &[u8]) -> MResult {
    let ty = record(&[
        ("canister_id", Type::Principal),
        ("settings", settings_type()),
        ("sender_canister_version", opt(Type::Nat64)),
    ]);
    let v = decode_one("update_settings", arg, ty)?;
    let id = v
        .field("canister_id")
        .and_then(Value::as_principal)
        .ok_or_else(|| bad_payload("update_settings", candid::DecodeError::TypeMismatch))?;
    let c = canister_mut(state, &caller, id)?;
    let settings = v
        .field("settings")
        .cloned()
        .unwrap_or(Value::Record(Vec::new()));
    // Validate on a copy so a bad setting changes nothing.
    let mut controllers = c.controllers.clone();
    let before = (
        c.freezing_threshold_seconds,
        c.wasm_memory_limit_bytes,
        c.compute_allocation,
        c.memory_allocation,
    );
    match apply_settings(c, &settings, "update_settings") {
        Ok(()) => {
            c.version += 1;
            Ok((encode_unit(), 0))
        }
        Err(e) => {
            core::mem::swap(&mut c.controllers, &mut controllers);
            (
                c.freezing_threshold_seconds,
                c.wasm_memory_limit_bytes,
                c.compute_allocation,
                c.memory_allocation,
            ) = before;
            Err(e)
        }
    }
}

fn status_type() -> Type {
    let n = Type::Nat;
    record(&[
        (
            "status",
            variant(&[
                ("running", Type::Null),
                ("stopping", Type::Null),
                ("stopped", Type::Null),
            ]),
        ),
        ("ready_for_migration", Type::Bool),
        ("version", Type::Nat64),
        (
            "settings",
            record(&[
                ("controllers", vec(Type::Principal)),
                ("compute_allocation", n.clone()),
                ("memory_allocation", n.clone()),
                ("freezing_threshold", n.clone()),
                ("reserved_cycles_limit", n.clone()),
                (
                    "log_visibility",
                    variant(&[("controllers", Type::Null), ("public", Type::Null)]),
                ),
                ("wasm_memory_limit", n.clone()),
                ("wasm_memory_threshold", n.clone()),
            ]),
        ),
        ("module_hash", opt(blob())),
        ("memory_size", n.clone()),
        (
            "memory_metrics",
            record(&[
                ("wasm_memory_size", n.clone()),
                ("stable_memory_size", n.clone()),
                ("global_memory_size", n.clone()),
                ("wasm_binary_size", n.clone()),
                ("custom_sections_size", n.clone()),
                ("canister_history_size", n.clone()),
                ("wasm_chunk_store_size", n.clone()),
                ("snapshots_size", n.clone()),
            ]),
        ),
        ("cycles", n.clone()),
        ("reserved_cycles", n.clone()),
        ("idle_cycles_burned_per_day", n.clone()),
        (
            "query_stats",
            record(&[
                ("num_calls_total", n.clone()),
                ("num_instructions_total", n.clone()),
                ("request_payload_bytes_total", n.clone()),
                ("response_payload_bytes_total", n),
            ]),
        ),
    ])
}

fn rec(fields: Vec<(&str, Value)>) -> Value {
    let mut f: Vec<(u32, Value)> = fields.into_iter().map(|(n, v)| (field_id(n), v)).collect();
    f.sort_by_key(|(i, _)| *i);
    Value::Record(f)
}

fn canister_status(state: &mut ReplicatedState, caller: Principal, arg: &[u8]) -> MResult {
    let id = arg_canister_id("canister_status", arg)?;
    let c = state.canisters.get(&id).ok_or_else(|| not_found(&id))?;
    // A canister may ask for its own status too.
    if !c.is_controller(&caller) && caller != id {
        return Err(not_controller(&id, &caller));
    }
    let status = match c.status {
        CanisterStatus::Running => "running",
        CanisterStatus::Stopping => "stopping",
        CanisterStatus::Stopped => "stopped",
    };
    let nat = |x: u128| Value::nat(x);
    let heap = c.heap.as_ref().map(|h| h.memory.len() as u128).unwrap_or(0);
    let wasm = c.wasm.as_ref().map(|w| w.len() as u128).unwrap_or(0);
    let mem = c.memory_bytes();
    let settings = rec(alloc::vec![
        (
            "controllers",
            Value::Vec(c.controllers.iter().map(|p| Value::Principal(*p)).collect())
        ),
        ("compute_allocation", nat(c.compute_allocation as u128)),
        ("memory_allocation", nat(c.memory_allocation as u128)),
        (
            "freezing_threshold",
            nat(c.freezing_threshold_seconds as u128)
        ),
        ("reserved_cycles_limit", nat(5_000_000_000_000)),
        (
            "log_visibility",
            Value::Variant(field_id("controllers"), alloc::boxed::Box::new(Value::Null))
        ),
        ("wasm_memory_limit", nat(c.wasm_memory_limit_bytes as u128)),
        ("wasm_memory_threshold", nat(0)),
    ]);
    let v = rec(alloc::vec![
        (
            "status",
            Value::Variant(field_id(status), alloc::boxed::Box::new(Value::Null))
        ),
        ("ready_for_migration", Value::Bool(false)),
        ("version", Value::Nat64(c.version)),
        ("settings", settings),
        (
            "module_hash",
            Value::Opt(
                c.module_hash()
                    .map(|h| alloc::boxed::Box::new(Value::Blob(h.to_vec())))
            ),
        ),
        ("memory_size", nat(mem as u128)),
        (
            "memory_metrics",
            rec(alloc::vec![
                ("wasm_memory_size", nat(heap)),
                ("stable_memory_size", nat(c.stable.size_bytes() as u128)),
                ("global_memory_size", nat(0)),
                ("wasm_binary_size", nat(wasm)),
                ("custom_sections_size", nat(0)),
                ("canister_history_size", nat(0)),
                (
                    "wasm_chunk_store_size",
                    nat(c.wasm_chunk_store_bytes() as u128)
                ),
                ("snapshots_size", nat(0)),
            ]),
        ),
        ("cycles", nat(c.cycles)),
        ("reserved_cycles", nat(0)),
        ("idle_cycles_burned_per_day", nat(idle_cycles_per_day(mem))),
        (
            "query_stats",
            rec(alloc::vec![
                ("num_calls_total", nat(0)),
                ("num_instructions_total", nat(0)),
                ("request_payload_bytes_total", nat(0)),
                ("response_payload_bytes_total", nat(0)),
            ]),
        ),
    ]);
    let out = encode_args(&[(status_type(), v)]).unwrap_or_default();
    Ok((out, 0))
}

fn start_canister(state: &mut ReplicatedState, caller: Principal, arg: &[u8]) -> MResult {
    let id = arg_canister_id("start_canister", arg)?;
    let c = canister_mut(state, &caller, id)?;
    c.status = CanisterStatus::Running;
    // Pending stop requests are cancelled.
    let waiters = core::mem::take(&mut c.stop_waiters);
    for w in waiters {
        let r = reject(
            RejectCode::CanisterError,
            "IC0511",
            format!("Canister {id}'s stop request was cancelled."),
        );
        if let Some(o) = origin_output(&w, Payload::Reject(r), 0) {
            state.pending_outputs.push(o);
        }
    }
    Ok((encode_unit(), 0))
}

fn stop_canister(
    state: &mut ReplicatedState,
    origin: &CallOrigin,
    caller: Principal,
    arg: &[u8],
    cycles: u128,
) -> MgmtResult {
    let id = match arg_canister_id("stop_canister", arg) {
        Ok(id) => id,
        Err(r) => return MgmtResult::Reject(r, cycles),
    };
    let c = match canister_mut(state, &caller, id) {
        Ok(c) => c,
        Err(r) => return MgmtResult::Reject(r, cycles),
    };
    match c.status {
        CanisterStatus::Stopped => MgmtResult::Reply(encode_unit(), cycles),
        _ if c.call_contexts.is_empty() && c.paused.is_none() => {
            c.status = CanisterStatus::Stopped;
            MgmtResult::Reply(encode_unit(), cycles)
        }
        _ => {
            c.status = CanisterStatus::Stopping;
            c.stop_waiters.push(origin.clone());
            MgmtResult::Deferred
        }
    }
}

fn delete_canister(state: &mut ReplicatedState, caller: Principal, arg: &[u8]) -> MResult {
    let id = arg_canister_id("delete_canister", arg)?;
    let c = canister_mut(state, &caller, id)?;
    if c.status != CanisterStatus::Stopped {
        return Err(reject(
            RejectCode::CanisterError,
            "IC0510",
            format!("Canister {id} must be stopped before it is deleted."),
        ));
    }
    state.canisters.remove(&id);
    Ok((encode_unit(), 0))
}

fn uninstall_code(state: &mut ReplicatedState, caller: Principal, arg: &[u8]) -> MResult {
    let id = arg_canister_id("uninstall_code", arg)?;
    let c = canister_mut(state, &caller, id)?;
    let mut out = Vec::new();
    reject_open_contexts(c, "Canister has been uninstalled.", &mut out);
    c.module = None;
    c.wasm = None;
    c.heap = None;
    c.heap_hash = None;
    c.stable = StableMemory::default();
    c.wasm_chunk_store.clear();
    c.certified_data.clear();
    c.global_timer = None;
    c.version += 1;
    state.pending_outputs.extend(out);
    Ok((encode_unit(), 0))
}

fn reject_open_contexts(c: &mut CanisterState, why: &str, out: &mut Vec<Output>) {
    c.paused = None;
    c.callbacks.clear();
    let ids: Vec<u64> = c.call_contexts.keys().copied().collect();
    for id in ids {
        if let Some(cc) = c.call_contexts.get_mut(&id) {
            cc.outstanding = 0;
        }
        let r = reject(RejectCode::CanisterReject, "IC0406", String::from(why));
        respond(c, id, Payload::Reject(r), out);
        c.call_contexts.remove(&id);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Install,
    Reinstall,
    Upgrade {
        skip_pre_upgrade: bool,
        keep_memory: bool,
    },
}

/// A canister whose chunk store `caller` may use: its controllers and the canister itself.
fn chunk_store_mut<'a>(
    state: &'a mut ReplicatedState,
    caller: &Principal,
    id: Principal,
) -> Result<&'a mut CanisterState, Reject> {
    let c = state.canisters.get_mut(&id).ok_or_else(|| not_found(&id))?;
    if !c.is_controller(caller) && *caller != id {
        return Err(not_controller(&id, caller));
    }
    Ok(c)
}

fn hash_record(hash: &[u8; 32]) -> Value {
    Value::Record(alloc::vec![(field_id("hash"), Value::Blob(hash.to_vec()))])
}

fn hash_record_type() -> Type {
    record(&[("hash", blob())])
}

/// `upload_chunk`: stores a chunk (at most 1 MiB) under its SHA-256 and replies with the
/// hash. Uploading a chunk the store holds already changes nothing.
fn upload_chunk(state: &mut ReplicatedState, caller: Principal, arg: &[u8]) -> MResult {
    let ty = record(&[("canister_id", Type::Principal), ("chunk", blob())]);
    let v = decode_one("upload_chunk", arg, ty)?;
    let bad = || bad_payload("upload_chunk", candid::DecodeError::TypeMismatch);
    let id = v
        .field("canister_id")
        .and_then(Value::as_principal)
        .ok_or_else(bad)?;
    let chunk = v.field("chunk").and_then(Value::as_blob).ok_or_else(bad)?;
    let c = chunk_store_mut(state, &caller, id)?;
    if chunk.len() > WASM_CHUNK_BYTES_MAX {
        return Err(reject(
            RejectCode::CanisterError,
            "IC0505",
            format!(
                "Error from Canister {id}: Wasm chunk size {} exceeds the maximum chunk size of {WASM_CHUNK_BYTES_MAX}",
                chunk.len()
            ),
        ));
    }
    let hash: [u8; 32] = Sha256::digest(chunk).into();
    if !c.wasm_chunk_store.contains_key(&hash) {
        if c.wasm_chunk_store.len() >= WASM_CHUNK_STORE_CHUNKS_MAX {
            return Err(reject(
                RejectCode::CanisterError,
                "IC0505",
                format!(
                    "Error from Canister {id}: Wasm chunk store is full ({WASM_CHUNK_STORE_CHUNKS_MAX} chunks)"
                ),
            ));
        }
        c.wasm_chunk_store.insert(hash, Arc::new(chunk.to_vec()));
    }
    let bytes = encode_args(&[(hash_record_type(), hash_record(&hash))]).unwrap_or_default();
    Ok((bytes, 0))
}

/// `clear_chunk_store`: empties a canister's chunk store.
fn clear_chunk_store(state: &mut ReplicatedState, caller: Principal, arg: &[u8]) -> MResult {
    let id = arg_canister_id("clear_chunk_store", arg)?;
    chunk_store_mut(state, &caller, id)?
        .wasm_chunk_store
        .clear();
    Ok((encode_unit(), 0))
}

/// `stored_chunks`: the hashes in a canister's chunk store.
fn stored_chunks(state: &mut ReplicatedState, caller: Principal, arg: &[u8]) -> MResult {
    let id = arg_canister_id("stored_chunks", arg)?;
    let c = chunk_store_mut(state, &caller, id)?;
    let list = Value::Vec(c.wasm_chunk_store.keys().map(hash_record).collect());
    let bytes = encode_args(&[(vec(hash_record_type()), list)]).unwrap_or_default();
    Ok((bytes, 0))
}

/// `install_chunked_code`: the module is the concatenation of chunks from the chunk store
/// of `store_canister` (default: the target), in the order listed, and must hash to
/// `wasm_module_hash`; then it installs as `install_code` does. The caller must control
/// the target and be allowed to use the store.
fn install_chunked_code(
    env: &Env<'_>,
    state: &mut ReplicatedState,
    caller: Principal,
    arg: &[u8],
) -> MResult {
    const METHOD: &str = "install_chunked_code";
    let Type::Record(mut fields) = install_args_type() else {
        return Err(bad_payload(METHOD, candid::DecodeError::TypeMismatch));
    };
    fields.retain(|(id, _)| *id != field_id("canister_id") && *id != field_id("wasm_module"));
    fields.push((field_id("target_canister"), Type::Principal));
    fields.push((field_id("store_canister"), opt(Type::Principal)));
    fields.push((field_id("chunk_hashes_list"), vec(hash_record_type())));
    fields.push((field_id("wasm_module_hash"), blob()));
    fields.sort_by_key(|(id, _)| *id);
    let v = decode_one(METHOD, arg, Type::Record(fields))?;
    let bad = || bad_payload(METHOD, candid::DecodeError::TypeMismatch);
    let mode = parse_mode(&v).ok_or_else(bad)?;
    let target = v
        .field("target_canister")
        .and_then(Value::as_principal)
        .ok_or_else(bad)?;
    let store = v
        .field("store_canister")
        .and_then(Value::opt)
        .and_then(Value::as_principal)
        .unwrap_or(target);
    let Some(Value::Vec(list)) = v.field("chunk_hashes_list") else {
        return Err(bad());
    };
    let expected = v
        .field("wasm_module_hash")
        .and_then(Value::as_blob)
        .ok_or_else(bad)?;
    let init_arg = v
        .field("arg")
        .and_then(Value::as_blob)
        .unwrap_or(&[])
        .to_vec();
    // The caller must control the target (checked by `install`) and use the store.
    let chunks = &chunk_store_mut(state, &caller, store)?.wasm_chunk_store;
    let mut wasm = Vec::new();
    for entry in list {
        let hash = entry
            .field("hash")
            .and_then(Value::as_blob)
            .ok_or_else(bad)?;
        let chunk = <[u8; 32]>::try_from(hash)
            .ok()
            .and_then(|h| chunks.get(&h))
            .ok_or_else(|| {
                reject(
                    RejectCode::CanisterError,
                    "IC0505",
                    format!(
                        "Error from Canister {target}: Wasm chunk {} is not in the chunk store of {store}",
                        hex(hash)
                    ),
                )
            })?;
        wasm.extend_from_slice(chunk);
    }
    let actual: [u8; 32] = Sha256::digest(&wasm).into();
    if actual.as_slice() != expected {
        return Err(reject(
            RejectCode::CanisterError,
            "IC0505",
            format!(
                "Error from Canister {target}: the assembled module hashes to {}, not to the wasm_module_hash {}",
                hex(&actual),
                hex(expected)
            ),
        ));
    }
    install(env, state, caller, target, mode, wasm, init_arg)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn install_args_type() -> Type {
    let upgrade_opts = record(&[
        ("skip_pre_upgrade", opt(Type::Bool)),
        (
            "wasm_memory_persistence",
            opt(variant(&[("keep", Type::Null), ("replace", Type::Null)])),
        ),
    ]);
    record(&[
        (
            "mode",
            variant(&[
                ("install", Type::Null),
                ("reinstall", Type::Null),
                ("upgrade", opt(upgrade_opts)),
            ]),
        ),
        ("canister_id", Type::Principal),
        ("wasm_module", blob()),
        ("arg", blob()),
        ("sender_canister_version", opt(Type::Nat64)),
    ])
}

fn parse_mode(v: &Value) -> Option<Mode> {
    let Value::Variant(id, inner) = v.field("mode")? else {
        return None;
    };
    if *id == field_id("install") {
        return Some(Mode::Install);
    }
    if *id == field_id("reinstall") {
        return Some(Mode::Reinstall);
    }
    if *id != field_id("upgrade") {
        return None;
    }
    let opts = inner.opt();
    let skip = opts
        .and_then(|o| o.field("skip_pre_upgrade"))
        .and_then(Value::opt)
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let keep = matches!(
        opts.and_then(|o| o.field("wasm_memory_persistence")).and_then(Value::opt),
        Some(Value::Variant(k, _)) if *k == field_id("keep")
    );
    Some(Mode::Upgrade {
        skip_pre_upgrade: skip,
        keep_memory: keep,
    })
}

fn install_code(
    env: &Env<'_>,
    state: &mut ReplicatedState,
    caller: Principal,
    arg: &[u8],
) -> MResult {
    let v = decode_one("install_code", arg, install_args_type())?;
    let mode = parse_mode(&v)
        .ok_or_else(|| bad_payload("install_code", candid::DecodeError::TypeMismatch))?;
    let id = v
        .field("canister_id")
        .and_then(Value::as_principal)
        .ok_or_else(|| bad_payload("install_code", candid::DecodeError::TypeMismatch))?;
    let wasm = v
        .field("wasm_module")
        .and_then(Value::as_blob)
        .unwrap_or(&[])
        .to_vec();
    let init_arg = v
        .field("arg")
        .and_then(Value::as_blob)
        .unwrap_or(&[])
        .to_vec();
    install(env, state, caller, id, mode, wasm, init_arg)
}

/// Installs `wasm` into canister `id` as `mode` says (the body of `install_code` and
/// `install_chunked_code`).
fn install(
    env: &Env<'_>,
    state: &mut ReplicatedState,
    caller: Principal,
    id: Principal,
    mode: Mode,
    wasm: Vec<u8>,
    init_arg: Vec<u8>,
) -> MResult {
    let c = canister_mut(state, &caller, id)?;
    if mode == Mode::Install && c.module.is_some() {
        return Err(reject(
            RejectCode::CanisterError,
            "IC0515",
            format!("Canister {id} cannot be installed because the canister is not empty. Try installing with mode='reinstall' instead."),
        ));
    }
    if matches!(mode, Mode::Upgrade { .. }) && c.module.is_none() {
        return Err(reject(
            RejectCode::DestinationInvalid,
            "IC0537",
            format!("Canister {id} has no Wasm module to upgrade"),
        ));
    }
    let module = env.runtime.compile(&wasm).map_err(|e| {
        reject(
            RejectCode::CanisterError,
            "IC0505",
            format!("Error from Canister {id}: Canister's Wasm module is not valid: {e}"),
        )
    })?;
    let module = Arc::new(module);
    let trapped = |e: ExecError, hook: &str| {
        let code = match &e {
            ExecError::InstructionLimit(_) => "IC0522",
            ExecError::Trapped(m) if m.starts_with("Canister called `ic0.trap`") => "IC0503",
            _ => "IC0502",
        };
        reject(
            RejectCode::CanisterError,
            code,
            format!("Error from Canister {id}: {hook} failed: {e}"),
        )
    };
    // Upgrade step 1: pre_upgrade on the old module; its stable memory carries over.
    let mut stable = StableMemory::default();
    let mut keep_heap: Option<HeapSnapshot> = None;
    let mut certified = None;
    let mut used = 0u64;
    if let Mode::Upgrade {
        skip_pre_upgrade,
        keep_memory,
    } = mode
    {
        stable = c.stable.clone();
        if !skip_pre_upgrade {
            let Some(old) = c.module.clone() else {
                return Err(not_found(&id));
            };
            let f = run_hooks(
                env,
                c,
                &old,
                c.heap.as_ref(),
                &[(
                    EntryPoint::Export("canister_pre_upgrade".into()),
                    ApiContext::PreUpgrade,
                )],
                caller,
                Vec::new(),
                stable.clone(),
            );
            used += f.instructions;
            if let Err(e) = f.result {
                return Err(trapped(e, "pre_upgrade"));
            }
            stable = f.host.stable;
            certified = f.host.certified_data;
            if keep_memory {
                // The memory as pre_upgrade left it; globals start fresh in the new module.
                keep_heap = f.heap.map(|h| HeapSnapshot {
                    memory: h.memory,
                    globals: Vec::new(),
                });
            }
        } else if keep_memory {
            keep_heap = c.heap.as_ref().map(|h| HeapSnapshot {
                memory: h.memory.clone(),
                globals: Vec::new(),
            });
        }
    }
    // Step 2: a fresh instance (or the kept memory), (start), then init / post_upgrade.
    let hook = match mode {
        Mode::Upgrade { .. } => "canister_post_upgrade",
        _ => "canister_init",
    };
    let f = run_hooks(
        env,
        c,
        &module,
        keep_heap.as_ref(),
        &[
            (EntryPoint::Start, ApiContext::Start),
            (EntryPoint::Export(hook.into()), ApiContext::Init),
        ],
        caller,
        init_arg,
        stable,
    );
    used += f.instructions;
    let f = *f;
    if let Err(e) = f.result {
        return Err(trapped(e, hook));
    }
    // Everything succeeded: switch the canister over atomically.
    let mut out = Vec::new();
    if mode != Mode::Install {
        reject_open_contexts(c, "Canister has been reinstalled or upgraded.", &mut out);
    }
    let h = f.host;
    c.wasm = Some(Arc::new(wasm));
    c.module = Some(module);
    c.heap = f.heap;
    c.heap_hash = None;
    c.stable = h.stable;
    if !matches!(mode, Mode::Upgrade { .. }) {
        c.certified_data.clear();
    }
    if let Some(d) = certified {
        c.certified_data = d;
    }
    if let Some(d) = h.certified_data {
        c.certified_data = d;
    }
    c.global_timer = h.global_timer;
    c.version += 1;
    let cost = cycles::execution_cost(used);
    c.cycles = c.cycles.saturating_sub(cost);
    c.instructions_total = c.instructions_total.saturating_add(used);
    state.pending_outputs.extend(out);
    Ok((encode_unit(), 0))
}
