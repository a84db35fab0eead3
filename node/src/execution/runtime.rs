//! The Wasm runtime: wasmi configured for determinism, module compilation with the
//! canister interface checks, and running one entry point with fuel as the instruction
//! counter (resumable across rounds for deterministic time slicing).
//!
//! Every execution gets a fresh wasmi instance of the cached compiled module; the
//! canister's persisted heap (memory bytes and mutable globals, see `wasm.rs`) is copied in
//! before and out after a successful execution. A trap therefore rolls back everything:
//! the committed snapshot was never touched.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use sha2::{Digest, Sha256};
use wasmi::{
    CompilationMode, Config, Engine, ExternType, Func, Instance, Linker, Module, Nullable, Ref,
    ResumableCall, ResumableCallOutOfFuel, Store, StoreLimits, StoreLimitsBuilder, Val,
};

use super::system_api::{define_imports, expected_import, ApiContext, Host, HostTrap, WasmClosure};
use super::wasm::{
    self, ExportedMethod, PreparedModule, WasmError, GLOBAL_EXPORT_PREFIX, MEMORY_EXPORT,
    START_EXPORT, TABLE_EXPORT,
};

/// Nested Wasm calls before "stack overflow" (deep recursion traps, it never exhausts the host).
pub const WASM_CALL_DEPTH_MAX: usize = 10_000;
/// Bytes of wasmi value stack per execution.
pub const WASM_VALUE_STACK_BYTES_MAX: usize = 8 << 20;

/// A compiled, checked canister module (cached per canister and shared between executions).
pub struct CompiledModule {
    pub module: Module,
    pub prepared: PreparedModule,
    /// SHA-256 of the module as installed (what `canister_status.module_hash` reports).
    pub hash: [u8; 32],
}

impl fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledModule")
            .field("hash", &self.hash)
            .finish()
    }
}

/// A saved mutable global.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalValue {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
}

/// The Wasm heap state that persists between messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeapSnapshot {
    pub memory: Vec<u8>,
    pub globals: Vec<GlobalValue>,
}

/// What to call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// The module's start function (only if it has one).
    Start,
    /// An exported function by its export name, e.g. `canister_update inc`. A missing
    /// export is not an error for system hooks (the caller decides).
    Export(String),
    /// A callback from the table.
    Closure(WasmClosure),
}

/// Why an execution did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecError {
    /// A Wasm trap or an `ic0.trap`: the message for the reject.
    Trapped(String),
    /// The per-message instruction limit was reached.
    InstructionLimit(u64),
    /// The module does not export the entry point.
    MissingExport(String),
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecError::Trapped(m) => f.write_str(m),
            ExecError::InstructionLimit(n) => write!(
                f,
                "Canister exceeded the limit of {n} instructions for single message execution."
            ),
            ExecError::MissingExport(m) => write!(f, "Canister has no method `{m}`"),
        }
    }
}

/// The result of running to the end (or to a trap).
pub struct Finished {
    pub result: Result<(), ExecError>,
    pub host: Host,
    /// The heap after a successful execution.
    pub heap: Option<HeapSnapshot>,
    pub instructions: u64,
}

/// An execution that used up its slice and continues in a later round.
pub struct Paused {
    store: Store<Host>,
    instance: Instance,
    call: ResumableCallOutOfFuel,
    module: Arc<CompiledModule>,
    pub instructions: u64,
}

impl fmt::Debug for Paused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Paused")
            .field("instructions", &self.instructions)
            .finish()
    }
}

pub enum Outcome {
    Finished(Box<Finished>),
    Paused(Box<Paused>),
}

pub struct Runtime {
    engine: Engine,
    linker32: Linker<Host>,
    linker64: Linker<Host>,
}

impl Default for Runtime {
    fn default() -> Self {
        Self::new()
    }
}

impl Runtime {
    pub fn new() -> Runtime {
        let mut config = Config::default();
        config
            .consume_fuel(true)
            .wasm_memory64(true)
            .wasm_bulk_memory(true)
            .wasm_multi_value(true)
            .wasm_sign_extension(true)
            .wasm_saturating_float_to_int(true)
            .wasm_reference_types(true)
            .wasm_mutable_global(true)
            .set_max_recursion_depth(WASM_CALL_DEPTH_MAX)
            .set_max_stack_height(WASM_VALUE_STACK_BYTES_MAX)
            .compilation_mode(CompilationMode::LazyTranslation);
        let engine = Engine::new(&config);
        let mut linker32 = Linker::new(&engine);
        let mut linker64 = Linker::new(&engine);
        // The definitions are static and well-formed; failing here is a bug in the table.
        define_imports(&mut linker32, false).expect("ic0 definitions (32-bit) are consistent");
        define_imports(&mut linker64, true).expect("ic0 definitions (64-bit) are consistent");
        Runtime {
            engine,
            linker32,
            linker64,
        }
    }

    /// Checks and compiles a canister module (see `wasm.rs` for the rules).
    pub fn compile(&self, wasm_bytes: &[u8]) -> Result<CompiledModule, WasmError> {
        let hash: [u8; 32] = Sha256::digest(wasm_bytes).into();
        let prepared = wasm::prepare(wasm_bytes)?;
        let module = Module::new(&self.engine, &prepared.binary[..])
            .map_err(|e| WasmError::Invalid(e.to_string()))?;
        for imp in module.imports() {
            if imp.module() != "ic0" {
                return Err(WasmError::Invalid(format!(
                    "module imports `{}.{}`; only functions from `ic0` may be imported",
                    imp.module(),
                    imp.name()
                )));
            }
            let ExternType::Func(ft) = imp.ty() else {
                return Err(WasmError::Invalid(format!(
                    "`ic0.{}` must be imported as a function",
                    imp.name()
                )));
            };
            let want =
                expected_import(imp.name(), prepared.memory64).map_err(WasmError::Invalid)?;
            if ft.params() != want.params() || ft.results() != want.results() {
                return Err(WasmError::Invalid(format!(
                    "`ic0.{}` is imported with the wrong type {:?} -> {:?} (expected {:?} -> {:?})",
                    imp.name(),
                    ft.params(),
                    ft.results(),
                    want.params(),
                    want.results()
                )));
            }
        }
        for exp in module.exports() {
            if !prepared.methods.contains_key(exp.name()) {
                continue;
            }
            match exp.ty() {
                ExternType::Func(ft) if ft.params().is_empty() && ft.results().is_empty() => {}
                _ => {
                    return Err(WasmError::Invalid(format!(
                        "export `{}` must be a function of type () -> ()",
                        exp.name()
                    )))
                }
            }
        }
        Ok(CompiledModule {
            module,
            prepared,
            hash,
        })
    }

    /// Runs `entries` in order on one instance. `heap` is the persisted state (None: a fresh
    /// instance, as after install). Only a single-entry execution may pause (time slicing):
    /// it pauses when `slice_instructions` are used up and `instruction_limit` is not.
    pub fn execute(
        &self,
        module: &Arc<CompiledModule>,
        heap: Option<&HeapSnapshot>,
        entries: &[(EntryPoint, ApiContext)],
        mut host: Host,
        memory_bytes_max: usize,
    ) -> Outcome {
        host.limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes_max)
            .instances(1)
            .build();
        let limit = host.instruction_limit;
        let slice = host.slice_fuel.min(limit);
        host.slice_fuel = slice;
        host.instructions_before_slice = 0;
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h: &mut Host| -> &mut dyn wasmi::ResourceLimiter { &mut h.limits });
        let fail = |store: Store<Host>, e: ExecError| {
            Outcome::Finished(Box::new(Finished {
                result: Err(e),
                host: store.into_data(),
                heap: None,
                instructions: 0,
            }))
        };
        if store.set_fuel(slice).is_err() {
            return fail(store, ExecError::Trapped("fuel metering is off".into()));
        }
        let linker = if module.prepared.memory64 {
            &self.linker64
        } else {
            &self.linker32
        };
        let instance = match linker.instantiate_and_start(&mut store, &module.module) {
            Ok(i) => i,
            Err(e) => return fail(store, ExecError::Trapped(format!("Canister trapped: {e}"))),
        };
        let memory = instance.get_memory(&store, MEMORY_EXPORT);
        store.data_mut().memory = memory;
        if let Some(h) = heap {
            if let Err(e) = restore_heap(&mut store, &instance, module, h) {
                return fail(store, e);
            }
        }
        let single = entries.len() == 1;
        for (entry, ctx) in entries {
            store.data_mut().context = *ctx;
            let func = match resolve(&store, &instance, entry, module) {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) => return fail(store, e),
            };
            let args = closure_args(entry, module);
            let call = func.call_resumable(&mut store, &args, &mut []);
            match self.drive(call, &mut store, single) {
                Drive::Done => {}
                Drive::Failed(e) => {
                    let used = used_instructions(&store);
                    let mut out = fail(store, e);
                    if let Outcome::Finished(f) = &mut out {
                        f.instructions = used;
                    }
                    return out;
                }
                Drive::Pause(call) => {
                    let instructions = used_instructions(&store);
                    return Outcome::Paused(Box::new(Paused {
                        store,
                        instance,
                        call,
                        module: module.clone(),
                        instructions,
                    }));
                }
            }
        }
        finish(store, &instance, module)
    }

    /// Continues a paused execution with another slice.
    pub fn resume(&self, paused: Box<Paused>, slice_instructions: u64) -> Outcome {
        let Paused {
            mut store,
            instance,
            call,
            module,
            ..
        } = *paused;
        let h = store.data_mut();
        let used_so_far = h.instructions_before_slice + h.slice_fuel;
        let left = h.instruction_limit.saturating_sub(used_so_far);
        let slice = slice_instructions.min(left);
        h.instructions_before_slice = used_so_far;
        h.slice_fuel = slice;
        if store.set_fuel(slice).is_err() {
            return finish_err(store, ExecError::Trapped("fuel metering is off".into()));
        }
        let r = call.resume(&mut store, &mut []);
        match self.drive(r, &mut store, true) {
            Drive::Done => finish(store, &instance, &module),
            Drive::Failed(e) => finish_err(store, e),
            Drive::Pause(call) => {
                let instructions = used_instructions(&store);
                Outcome::Paused(Box::new(Paused {
                    store,
                    instance,
                    call,
                    module,
                    instructions,
                }))
            }
        }
    }

    fn drive(
        &self,
        call: Result<ResumableCall, wasmi::Error>,
        store: &mut Store<Host>,
        may_pause: bool,
    ) -> Drive {
        match call {
            Ok(ResumableCall::Finished) => Drive::Done,
            Ok(ResumableCall::HostTrap(t)) => Drive::Failed(map_error(t.into_host_error(), store)),
            Ok(ResumableCall::OutOfFuel(c)) => {
                let h = store.data();
                let used = h.instructions_before_slice + h.slice_fuel;
                if may_pause && used < h.instruction_limit {
                    Drive::Pause(c)
                } else {
                    Drive::Failed(ExecError::InstructionLimit(h.instruction_limit))
                }
            }
            Err(e) => Drive::Failed(map_error(e, store)),
        }
    }
}

enum Drive {
    Done,
    Failed(ExecError),
    Pause(ResumableCallOutOfFuel),
}

fn used_instructions(store: &Store<Host>) -> u64 {
    let h = store.data();
    let left = store.get_fuel().unwrap_or(0);
    h.instructions_before_slice + h.slice_fuel.saturating_sub(left)
}

fn finish_err(store: Store<Host>, e: ExecError) -> Outcome {
    let instructions = used_instructions(&store);
    Outcome::Finished(Box::new(Finished {
        result: Err(e),
        host: store.into_data(),
        heap: None,
        instructions,
    }))
}

fn finish(mut store: Store<Host>, instance: &Instance, module: &CompiledModule) -> Outcome {
    let instructions = used_instructions(&store);
    let heap = save_heap(&mut store, instance, module);
    Outcome::Finished(Box::new(Finished {
        result: Ok(()),
        host: store.into_data(),
        heap: Some(heap),
        instructions,
    }))
}

fn map_error(e: wasmi::Error, store: &Store<Host>) -> ExecError {
    if let Some(t) = e.downcast_ref::<HostTrap>() {
        return match t {
            HostTrap::OutOfInstructions => {
                ExecError::InstructionLimit(store.data().instruction_limit)
            }
            other => ExecError::Trapped(other.to_string()),
        };
    }
    match e.as_trap_code() {
        Some(wasmi::TrapCode::OutOfFuel) => {
            ExecError::InstructionLimit(store.data().instruction_limit)
        }
        Some(code) => ExecError::Trapped(format!("Canister trapped: {}", trap_text(code))),
        None => ExecError::Trapped(format!("Canister trapped: {e}")),
    }
}

fn trap_text(code: wasmi::TrapCode) -> &'static str {
    use wasmi::TrapCode::*;
    match code {
        UnreachableCodeReached => "unreachable",
        MemoryOutOfBounds => "heap out of bounds",
        TableOutOfBounds => "table out of bounds",
        IndirectCallToNull => "indirect call to null",
        IntegerDivisionByZero => "integer division by 0",
        IntegerOverflow => "integer overflow",
        BadConversionToInteger => "invalid conversion to integer",
        StackOverflow => "stack overflow",
        BadSignature => "call indirect signature mismatch",
        OutOfFuel => "instruction limit exceeded",
        _ => "trap",
    }
}

fn resolve(
    store: &Store<Host>,
    instance: &Instance,
    entry: &EntryPoint,
    module: &CompiledModule,
) -> Result<Option<Func>, ExecError> {
    match entry {
        EntryPoint::Start => Ok(instance.get_func(store, START_EXPORT)),
        EntryPoint::Export(name) => match instance.get_func(store, name) {
            Some(f) => Ok(Some(f)),
            None => match module.prepared.methods.get(name.as_str()) {
                Some(ExportedMethod::System(_)) => Ok(None),
                _ if name.starts_with("canister_update ")
                    || name.starts_with("canister_query ") =>
                {
                    Err(ExecError::MissingExport(name.clone()))
                }
                _ => Ok(None),
            },
        },
        EntryPoint::Closure(c) => {
            let table = instance
                .get_table(store, TABLE_EXPORT)
                .ok_or_else(|| ExecError::Trapped("Canister trapped: no table".into()))?;
            match table.get(store, c.fun) {
                Some(Ref::Func(Nullable::Val(f))) => Ok(Some(f)),
                _ => Err(ExecError::Trapped(
                    "Canister trapped: callback is not a function in the table".into(),
                )),
            }
        }
    }
}

fn closure_args(entry: &EntryPoint, module: &CompiledModule) -> Vec<Val> {
    match entry {
        EntryPoint::Closure(c) if module.prepared.memory64 => alloc::vec![Val::I64(c.env as i64)],
        EntryPoint::Closure(c) => alloc::vec![Val::I32(c.env as u32 as i32)],
        _ => Vec::new(),
    }
}

fn restore_heap(
    store: &mut Store<Host>,
    instance: &Instance,
    module: &CompiledModule,
    heap: &HeapSnapshot,
) -> Result<(), ExecError> {
    if let Some(mem) = instance.get_memory(&*store, MEMORY_EXPORT) {
        let have = mem.data_size(&*store);
        if heap.memory.len() > have {
            let pages = ((heap.memory.len() - have) as u64).div_ceil(65_536);
            mem.grow(&mut *store, pages)
                .map_err(|e| ExecError::Trapped(format!("cannot restore memory: {e}")))?;
        }
        let data = mem.data_mut(&mut *store);
        let n = heap.memory.len().min(data.len());
        data[..n].copy_from_slice(&heap.memory[..n]);
    }
    for (idx, v) in module
        .prepared
        .mutable_globals
        .iter()
        .zip(heap.globals.iter())
    {
        let name = format!("{GLOBAL_EXPORT_PREFIX}{idx}");
        if let Some(g) = instance.get_global(&*store, &name) {
            let val = match v {
                GlobalValue::I32(x) => Val::I32(*x),
                GlobalValue::I64(x) => Val::I64(*x),
                GlobalValue::F32(x) => Val::F32(wasmi::F32::from_bits(*x)),
                GlobalValue::F64(x) => Val::F64(wasmi::F64::from_bits(*x)),
            };
            g.set(&mut *store, val)
                .map_err(|e| ExecError::Trapped(format!("cannot restore global: {e}")))?;
        }
    }
    Ok(())
}

fn save_heap(
    store: &mut Store<Host>,
    instance: &Instance,
    module: &CompiledModule,
) -> HeapSnapshot {
    let memory = instance
        .get_memory(&*store, MEMORY_EXPORT)
        .map(|m| m.data(&*store).to_vec())
        .unwrap_or_default();
    let mut globals = Vec::with_capacity(module.prepared.mutable_globals.len());
    for idx in &module.prepared.mutable_globals {
        let name = format!("{GLOBAL_EXPORT_PREFIX}{idx}");
        let v = instance
            .get_global(&*store, &name)
            .map(|g| g.get(&*store))
            .unwrap_or(Val::I32(0));
        globals.push(match v {
            Val::I64(x) => GlobalValue::I64(x),
            Val::F32(x) => GlobalValue::F32(x.to_bits()),
            Val::F64(x) => GlobalValue::F64(x.to_bits()),
            Val::I32(x) => GlobalValue::I32(x),
            _ => GlobalValue::I32(0),
        });
    }
    HeapSnapshot { memory, globals }
}

/// Heap limits stored with the host state (wasmi asks the store's data for them).
pub fn default_limits() -> StoreLimits {
    StoreLimitsBuilder::new().build()
}
