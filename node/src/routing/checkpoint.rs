//! The replicated state as checkpoint files, and back.
//!
//! Layout (names sorted; equal states give equal bytes on every node):
//! - `system`: height, time, the next canister index, the list of canister ids, the
//!   ingress history and finish times, the subnet queue, randomness and its draws, pending
//!   outputs;
//! - per canister, under `canister/<hex of the id's bytes>/`:
//!   - `meta`: everything of the canister but its big byte arrays (settings, cycles,
//!     queues, call contexts, callbacks, timer, certified data, heap globals, the stable
//!     memory's size and written chunks, and the SHA-256 of each raw file below);
//!   - `heap`: the Wasm memory bytes, raw (present iff the canister has a heap);
//!   - `stable`: the stable memory, raw and offset-preserving up to the end of its last
//!     written chunk (never-written chunks in between are zeros; `meta` says which chunks
//!     exist, since the state hash tells a written zero chunk from an absent one);
//!   - `wasm`: the module as installed (present iff a module is installed);
//!   - `chunks`: the Wasm chunk store's chunks, concatenated in the order of their hashes
//!     (present iff the store holds any; `meta` lists each chunk's hash and length, and
//!     every chunk must hash to its key).
//!
//! Big data sits raw at stable offsets so that the store's content-addressed chunks of
//! an unchanged heap, stable memory or module are equal between checkpoints.
//!
//! `system` and `meta` are `[u32 version][body][SHA-256 checksum]`, the checksum over a
//! domain separator, the file's name, the version and the body (so a file cannot be
//! passed off under another name); raw files are checked against the hashes in `meta`.
//! Bytes come from a disk or a peer: decoding validates every length, tag, order and limit
//! and never panics. The compiled module is a cache and is not stored; it is rebuilt from
//! the stored Wasm on load. A paused (time-sliced) execution cannot be checkpointed.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use sha2::{Digest, Sha256};

use super::StateMachine;
use crate::execution::management::{
    CONTROLLERS_MAX, WASM_CHUNK_BYTES_MAX, WASM_CHUNK_STORE_CHUNKS_MAX,
};
use crate::execution::runtime::{CompiledModule, HeapSnapshot, Runtime};
use crate::execution::stable::{StableMemory, CHUNK_BYTES, WASM_PAGE_BYTES};
use crate::execution::system_api::CERTIFIED_DATA_BYTES_MAX;
use crate::execution::wasm::MODULE_BYTES_MAX;
use crate::execution::ExecutionConfig;
use crate::state::codec::{DecodeError, Reader, Writer};
use crate::state::{CanisterState, ReplicatedState};
use crate::types::Principal;

/// The version written at the start of `system` and `meta` files. Version 2 added the
/// Wasm chunk store (at the end of `meta`, and the `chunks` file); version 1 files are
/// still read (their canisters have empty chunk stores).
pub const CHECKPOINT_VERSION: u32 = 2;
/// The oldest version this node reads.
pub const CHECKPOINT_VERSION_MIN: u32 = 1;
/// The file with the subnet-wide part of the state.
pub const SYSTEM_FILE: &str = "system";
/// The directory prefix of per-canister files.
pub const CANISTER_DIR: &str = "canister/";
pub const META_FILE: &str = "meta";
pub const HEAP_FILE: &str = "heap";
pub const STABLE_FILE: &str = "stable";
pub const WASM_FILE: &str = "wasm";
pub const CHUNKS_FILE: &str = "chunks";
/// Longest file name a checkpoint may have (the longest real one, a 29-byte id's
/// `canister/<58 hex digits>/stable`, is 74 bytes).
pub const FILE_NAME_BYTES_MAX: usize = 200;
/// Bytes of the version at the start of `system` and `meta`.
const VERSION_BYTES: usize = 4;
/// Bytes of the checksum at the end of `system` and `meta`.
const CHECKSUM_BYTES: usize = 32;
const CHECKSUM_DOMAIN: &[u8] = b"cairn-checkpoint-file-v1";
/// Stable memory chunks per Wasm page.
const CHUNKS_PER_PAGE: u64 = WASM_PAGE_BYTES / CHUNK_BYTES as u64;
/// Smallest encodings, for rejecting impossible lengths before allocating.
const PRINCIPAL_MIN_BYTES: usize = 8;
const MESSAGE_MIN_BYTES: usize = 1 + 2 * PRINCIPAL_MIN_BYTES;

/// Why a state cannot be written to or read from checkpoint files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointError {
    /// A time-sliced execution is in flight; call `abort_paused_executions` first.
    PausedExecution,
    /// A file the checkpoint needs is not there.
    Missing(String),
    /// A file that is not part of the checkpoint (unknown name, or a canister the `system`
    /// file does not list, or a raw file its `meta` says does not exist).
    Unexpected(String),
    /// The same file name given twice.
    Duplicate(String),
    /// A file's bytes do not decode, fail their checksum, or break a limit.
    Malformed { file: String, reason: String },
    /// A file written by a format version this node does not read.
    Version {
        file: String,
        found: u32,
        supported: u32,
    },
    /// A stored module does not compile.
    Wasm { file: String, reason: String },
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::PausedExecution => {
                f.write_str("a paused execution is in flight; abort it before checkpointing")
            }
            CheckpointError::Missing(file) => write!(f, "checkpoint file {file} is missing"),
            CheckpointError::Unexpected(file) => {
                write!(f, "checkpoint file {file} is not part of the checkpoint")
            }
            CheckpointError::Duplicate(file) => write!(f, "checkpoint file {file} given twice"),
            CheckpointError::Malformed { file, reason } => {
                write!(f, "checkpoint file {file} is malformed: {reason}")
            }
            CheckpointError::Version {
                file,
                found,
                supported,
            } => write!(
                f,
                "checkpoint file {file} has version {found}; this node reads version {supported}"
            ),
            CheckpointError::Wasm { file, reason } => {
                write!(f, "checkpoint module {file} does not compile: {reason}")
            }
        }
    }
}

impl core::error::Error for CheckpointError {}

fn malformed(file: &str, reason: impl ToString) -> CheckpointError {
    CheckpointError::Malformed {
        file: file.into(),
        reason: reason.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// `canister/<hex id>/`.
fn canister_dir(id: &Principal) -> String {
    format!("{CANISTER_DIR}{}/", hex(id.as_slice()))
}

fn checksum(name: &str, versioned_body: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut h = Sha256::new();
    h.update(CHECKSUM_DOMAIN);
    h.update((name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(versioned_body);
    h.finalize().into()
}

/// A `system`/`meta` file: version, body, checksum.
fn seal(name: &str, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(VERSION_BYTES + body.len() + CHECKSUM_BYTES);
    out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    out.extend_from_slice(&body);
    let sum = checksum(name, &out);
    out.extend_from_slice(&sum);
    out
}

/// The version and body of a sealed file, after both are checked.
fn open<'a>(name: &str, bytes: &'a [u8]) -> Result<(u32, &'a [u8]), CheckpointError> {
    if bytes.len() < VERSION_BYTES + CHECKSUM_BYTES {
        return Err(malformed(name, "shorter than its version and checksum"));
    }
    let (versioned, sum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
    let (version, body) = versioned.split_at(VERSION_BYTES);
    let mut v = [0u8; VERSION_BYTES];
    v.copy_from_slice(version);
    let found = u32::from_le_bytes(v);
    if !(CHECKPOINT_VERSION_MIN..=CHECKPOINT_VERSION).contains(&found) {
        return Err(CheckpointError::Version {
            file: name.into(),
            found,
            supported: CHECKPOINT_VERSION,
        });
    }
    if checksum(name, versioned).as_slice() != sum {
        return Err(malformed(name, "checksum mismatch"));
    }
    Ok((found, body))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The stable memory as a raw file and the runs `(first chunk, count)` of written chunks.
fn stable_raw(s: &StableMemory) -> (Vec<u8>, Vec<(u64, u64)>) {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut end = 0u64;
    for (i, _) in s.chunks() {
        match runs.last_mut() {
            Some((start, n)) if *start + *n == i => *n += 1,
            _ => runs.push((i, 1)),
        }
        end = i + 1;
    }
    let mut raw = alloc::vec![0u8; (end as usize).saturating_mul(CHUNK_BYTES)];
    for (i, chunk) in s.chunks() {
        let at = i as usize * CHUNK_BYTES;
        raw[at..at + CHUNK_BYTES].copy_from_slice(chunk);
    }
    (raw, runs)
}

fn encode_meta(c: &CanisterState, stable_runs: &[(u64, u64)], stable_sha: &[u8; 32]) -> Vec<u8> {
    // Every field by name: a field added to the state breaks this build until it is
    // encoded here (and decoded in `decode_meta`).
    let CanisterState {
        id,
        controllers,
        status,
        stop_waiters,
        cycles,
        freezing_threshold_seconds,
        wasm_memory_limit_bytes,
        compute_allocation,
        memory_allocation,
        wasm,
        module: _, // a cache, rebuilt from `wasm`
        wasm_chunk_store,
        heap,
        heap_hash: _, // a cache, recomputed from `heap`
        stable: _,    // the `stable` file; its chunk runs and hash are passed in
        certified_data,
        global_timer,
        version,
        input_queue,
        call_contexts,
        next_call_context,
        callbacks,
        next_callback,
        paused: _, // refused by `checkpoint_files`
        instructions_total,
    } = c;
    let mut w = Writer::default();
    w.principal(id);
    w.len(controllers.len());
    for p in controllers {
        w.principal(p);
    }
    w.status(*status);
    w.len(stop_waiters.len());
    for o in stop_waiters {
        w.origin(o);
    }
    w.u128(*cycles);
    w.u64(*freezing_threshold_seconds);
    w.u64(*wasm_memory_limit_bytes);
    w.u64(*compute_allocation);
    w.u64(*memory_allocation);
    match wasm {
        Some(wasm) => {
            w.u8(1);
            w.len(wasm.len());
            w.fixed(&sha256(wasm));
        }
        None => w.u8(0),
    }
    match heap {
        Some(HeapSnapshot { memory, globals }) => {
            w.u8(1);
            w.len(memory.len());
            w.fixed(&sha256(memory));
            w.len(globals.len());
            for g in globals {
                w.global(g);
            }
        }
        None => w.u8(0),
    }
    w.u64(c.stable.pages());
    w.len(stable_runs.len());
    for (start, n) in stable_runs {
        w.u64(*start);
        w.u64(*n);
    }
    w.fixed(stable_sha);
    w.bytes(certified_data);
    w.opt_u64(*global_timer);
    w.u64(*version);
    w.len(input_queue.len());
    for m in input_queue {
        w.message(m);
    }
    w.u64(*next_call_context);
    w.len(call_contexts.len());
    for (id, cc) in call_contexts {
        w.u64(*id);
        w.call_context(cc);
    }
    w.u64(*next_callback);
    w.len(callbacks.len());
    for (id, cb) in callbacks {
        w.u64(*id);
        w.callback(cb);
    }
    w.u64(*instructions_total);
    // Version 2: the chunk store's hashes and lengths (the bytes are the `chunks` file).
    w.len(wasm_chunk_store.len());
    for (hash, chunk) in wasm_chunk_store {
        w.fixed(hash);
        w.u64(chunk.len() as u64);
    }
    w.out
}

fn encode_system(st: &ReplicatedState) -> Vec<u8> {
    // Every field by name, as in `encode_meta`.
    let ReplicatedState {
        height,
        time_ns,
        canisters,
        next_canister_index,
        ingress_history,
        ingress_finished_ns,
        subnet_queue,
        randomness,
        raw_rand_draws,
        pending_outputs,
    } = st;
    let mut w = Writer::default();
    w.u64(*height);
    w.u64(*time_ns);
    w.u64(*next_canister_index);
    w.len(canisters.len());
    for id in canisters.keys() {
        w.principal(id);
    }
    w.len(ingress_history.len());
    for (id, s) in ingress_history {
        w.fixed(id);
        w.ingress_status(s);
    }
    w.len(ingress_finished_ns.len());
    for (id, t) in ingress_finished_ns {
        w.fixed(id);
        w.u64(*t);
    }
    w.len(subnet_queue.len());
    for (origin, caller, method, arg, cycles) in subnet_queue {
        w.origin(origin);
        w.principal(caller);
        w.str(method);
        w.bytes(arg);
        w.u128(*cycles);
    }
    w.fixed(randomness);
    w.u64(*raw_rand_draws);
    w.len(pending_outputs.len());
    for o in pending_outputs {
        w.output(o);
    }
    w.out
}

/// What `meta` says about a canister's raw files.
struct RawFiles {
    wasm: Option<(usize, [u8; 32])>,
    heap: Option<(usize, [u8; 32])>,
    stable_pages: u64,
    stable_runs: Vec<(u64, u64)>,
    stable_sha: [u8; 32],
    /// The chunk store's (hash, length), in hash order (empty before version 2).
    chunks: Vec<([u8; 32], u64)>,
}

fn decode_meta(
    r: &mut Reader<'_>,
    version: u32,
    c: &mut CanisterState,
) -> Result<RawFiles, DecodeError> {
    c.id = r.principal()?;
    c.controllers = r.vec(PRINCIPAL_MIN_BYTES, |r| r.principal())?;
    c.status = r.status()?;
    c.stop_waiters = r.vec(1, |r| r.origin())?;
    c.cycles = r.u128()?;
    c.freezing_threshold_seconds = r.u64()?;
    c.wasm_memory_limit_bytes = r.u64()?;
    c.compute_allocation = r.u64()?;
    c.memory_allocation = r.u64()?;
    let raw_file = |r: &mut Reader<'_>| -> Result<Option<(usize, [u8; 32])>, DecodeError> {
        match r.u8()? {
            0 => Ok(None),
            1 => {
                let len = usize::try_from(r.u64()?)
                    .map_err(|_| DecodeError("raw file length overflows"))?;
                Ok(Some((len, r.hash()?)))
            }
            _ => Err(DecodeError("bad option tag")),
        }
    };
    let wasm = raw_file(r)?;
    let heap = match raw_file(r)? {
        Some(h) => {
            c.heap = Some(HeapSnapshot {
                memory: Vec::new(),
                globals: r.vec(9, |r| r.global())?,
            });
            Some(h)
        }
        None => None,
    };
    let stable_pages = r.u64()?;
    let stable_runs = r.vec(16, |r| Ok((r.u64()?, r.u64()?)))?;
    let stable_sha = r.hash()?;
    c.certified_data = r.bytes()?;
    c.global_timer = r.opt_u64()?;
    c.version = r.u64()?;
    c.input_queue = r.deque(MESSAGE_MIN_BYTES, |r| r.message())?;
    c.next_call_context = r.u64()?;
    c.call_contexts = r.map(8, |r| Ok((r.u64()?, r.call_context()?)))?;
    c.next_callback = r.u64()?;
    c.callbacks = r.map(8, |r| Ok((r.u64()?, r.callback()?)))?;
    c.instructions_total = r.u64()?;
    let chunks = if version >= 2 {
        r.vec(40, |r| Ok((r.hash()?, r.u64()?)))?
    } else {
        Vec::new()
    };
    r.finish()?;
    if chunks.len() > WASM_CHUNK_STORE_CHUNKS_MAX
        || chunks.windows(2).any(|w| w[0].0 >= w[1].0)
        || chunks
            .iter()
            .any(|(_, len)| *len > WASM_CHUNK_BYTES_MAX as u64)
    {
        return Err(DecodeError(
            "chunk store: too many chunks, a chunk too large, or hashes out of order",
        ));
    }
    // What execution relies on: ids below their counters, counters that can still count,
    // and the limits execution enforces when it writes these fields.
    if c.controllers.len() > CONTROLLERS_MAX {
        return Err(DecodeError("more controllers than allowed"));
    }
    if c.certified_data.len() > CERTIFIED_DATA_BYTES_MAX {
        return Err(DecodeError("certified data longer than allowed"));
    }
    if !counter_ok(c.version) {
        return Err(DecodeError("module version counter exhausted"));
    }
    if !counter_ok(c.next_call_context)
        || c.call_contexts
            .last_key_value()
            .is_some_and(|(id, _)| *id >= c.next_call_context)
    {
        return Err(DecodeError("call context id not below the next one"));
    }
    if !counter_ok(c.next_callback)
        || c.callbacks
            .last_key_value()
            .is_some_and(|(id, _)| *id >= c.next_callback)
    {
        return Err(DecodeError("callback id not below the next one"));
    }
    if c.call_contexts
        .values()
        .any(|cc| cc.outstanding == u32::MAX)
    {
        return Err(DecodeError("outstanding callback counter exhausted"));
    }
    Ok(RawFiles {
        wasm,
        heap,
        stable_pages,
        stable_runs,
        stable_sha,
        chunks,
    })
}

/// Whether a counter that execution increments by one can still be incremented.
fn counter_ok(v: u64) -> bool {
    v < u64::MAX
}

struct System {
    canisters: Vec<Principal>,
}

fn decode_system(r: &mut Reader<'_>, st: &mut ReplicatedState) -> Result<System, DecodeError> {
    st.height = r.u64()?;
    st.time_ns = r.u64()?;
    st.next_canister_index = r.u64()?;
    let canisters = r.vec(PRINCIPAL_MIN_BYTES, |r| r.principal())?;
    if canisters.windows(2).any(|w| w[0] >= w[1]) {
        return Err(DecodeError("canister ids out of order"));
    }
    st.ingress_history = r.map(33, |r| Ok((r.id()?, r.ingress_status()?)))?;
    st.ingress_finished_ns = r.map(40, |r| Ok((r.id()?, r.u64()?)))?;
    st.subnet_queue = r.deque(1, |r| {
        Ok((
            r.origin()?,
            r.principal()?,
            r.string()?,
            r.bytes()?,
            r.u128()?,
        ))
    })?;
    st.randomness = r.hash()?;
    st.raw_rand_draws = r.u64()?;
    st.pending_outputs = r.vec(1, |r| r.output())?;
    r.finish()?;
    if !counter_ok(st.height)
        || !counter_ok(st.next_canister_index)
        || !counter_ok(st.raw_rand_draws)
    {
        return Err(DecodeError("a subnet counter is exhausted"));
    }
    Ok(System { canisters })
}

/// The files of a checkpoint being read, by name; each is taken once.
struct Files<'a> {
    by_name: BTreeMap<&'a str, &'a [u8]>,
}

impl<'a> Files<'a> {
    fn take(&mut self, name: &str) -> Result<&'a [u8], CheckpointError> {
        self.by_name
            .remove(name)
            .ok_or_else(|| CheckpointError::Missing(name.into()))
    }
    /// A raw file that must exist iff `expected`.
    fn take_if(&mut self, name: &str, expected: bool) -> Result<Option<&'a [u8]>, CheckpointError> {
        match (self.by_name.remove(name), expected) {
            (Some(b), true) => Ok(Some(b)),
            (None, false) => Ok(None),
            (None, true) => Err(CheckpointError::Missing(name.into())),
            (Some(_), false) => Err(CheckpointError::Unexpected(name.into())),
        }
    }
}

fn check_raw(name: &str, bytes: &[u8], len: usize, sha: &[u8; 32]) -> Result<(), CheckpointError> {
    if bytes.len() != len {
        return Err(malformed(
            name,
            format!("{} bytes, meta says {len}", bytes.len()),
        ));
    }
    if &sha256(bytes) != sha {
        return Err(malformed(name, "hash differs from the one in meta"));
    }
    Ok(())
}

fn decode_stable(
    name: &str,
    bytes: &[u8],
    raw: &RawFiles,
    config: &ExecutionConfig,
) -> Result<StableMemory, CheckpointError> {
    let pages_max = config.stable_memory_bytes_max / WASM_PAGE_BYTES;
    if raw.stable_pages > pages_max {
        return Err(malformed(
            name,
            format!(
                "{} pages of stable memory, the limit is {pages_max}",
                raw.stable_pages
            ),
        ));
    }
    let chunks_total = raw.stable_pages * CHUNKS_PER_PAGE;
    // Runs are ordered, non-empty, apart (adjacent runs would be one), and within the size.
    let mut end = 0u64;
    for (i, (start, n)) in raw.stable_runs.iter().enumerate() {
        let run_end = start.checked_add(*n);
        let ok = *n > 0 && (i == 0 || *start > end) && run_end.is_some_and(|e| e <= chunks_total);
        if !ok {
            return Err(malformed(
                name,
                "stable memory chunk runs are not canonical",
            ));
        }
        end = run_end.unwrap_or(0);
    }
    let len = usize::try_from(end)
        .ok()
        .and_then(|e| e.checked_mul(CHUNK_BYTES))
        .ok_or_else(|| malformed(name, "stable memory too large"))?;
    check_raw(name, bytes, len, &raw.stable_sha)?;
    let mut s = StableMemory::default();
    s.grow(raw.stable_pages);
    let mut next = 0u64;
    for (start, n) in &raw.stable_runs {
        // The gap before a run was never written: it must be zeros.
        let gap = &bytes[next as usize * CHUNK_BYTES..*start as usize * CHUNK_BYTES];
        if gap.iter().any(|b| *b != 0) {
            return Err(malformed(name, "bytes in a never-written stable chunk"));
        }
        let at = *start as usize * CHUNK_BYTES;
        let run = &bytes[at..at + *n as usize * CHUNK_BYTES];
        s.write(*start * CHUNK_BYTES as u64, run)
            .map_err(|_| malformed(name, "stable chunk beyond the memory's size"))?;
        next = start + n;
    }
    Ok(s)
}

/// The chunk store from the `chunks` file and the (hash, length) list in `meta`.
fn decode_chunks(
    name: &str,
    bytes: &[u8],
    list: &[([u8; 32], u64)],
) -> Result<BTreeMap<[u8; 32], Arc<Vec<u8>>>, CheckpointError> {
    // `decode_meta` bounded the lengths: their sum cannot overflow.
    let total: u64 = list.iter().map(|(_, len)| *len).sum();
    if bytes.len() as u64 != total {
        return Err(malformed(
            name,
            format!("{} bytes, meta says {total}", bytes.len()),
        ));
    }
    let mut store = BTreeMap::new();
    let mut at = 0usize;
    for (hash, len) in list {
        let chunk = &bytes[at..at + *len as usize];
        if &sha256(chunk) != hash {
            return Err(malformed(name, "a chunk does not hash to its key"));
        }
        store.insert(*hash, Arc::new(chunk.to_vec()));
        at += *len as usize;
    }
    Ok(store)
}

/// Modules already read in this checkpoint, by SHA-256: canisters running the same module
/// share its bytes and its compiled form.
type Modules = BTreeMap<[u8; 32], (Arc<Vec<u8>>, Option<Arc<CompiledModule>>)>;

fn decode_canister(
    id: &Principal,
    files: &mut Files<'_>,
    config: &ExecutionConfig,
    modules: &mut Modules,
) -> Result<(CanisterState, Option<[u8; 32]>), CheckpointError> {
    let dir = canister_dir(id);
    let meta_name = format!("{dir}{META_FILE}");
    let (version, meta) = open(&meta_name, files.take(&meta_name)?)?;
    let mut c = CanisterState::new(*id, Vec::new(), 0);
    let raw = decode_meta(&mut Reader::new(meta), version, &mut c)
        .map_err(|e| malformed(&meta_name, e))?;
    if c.id != *id {
        return Err(malformed(
            &meta_name,
            "canister id differs from the file name",
        ));
    }
    let wasm_name = format!("{dir}{WASM_FILE}");
    if let Some(wasm) = files.take_if(&wasm_name, raw.wasm.is_some())? {
        let (len, sha) = raw.wasm.unwrap_or_default();
        if len > MODULE_BYTES_MAX {
            return Err(malformed(&wasm_name, "module larger than the limit"));
        }
        check_raw(&wasm_name, wasm, len, &sha)?;
        let (bytes, _) = modules
            .entry(sha)
            .or_insert_with(|| (Arc::new(wasm.to_vec()), None));
        c.wasm = Some(bytes.clone());
    }
    let heap_name = format!("{dir}{HEAP_FILE}");
    if let Some(heap) = files.take_if(&heap_name, raw.heap.is_some())? {
        let (len, sha) = raw.heap.unwrap_or_default();
        if len as u64 > config.wasm_memory_bytes_max
            || !(len as u64).is_multiple_of(WASM_PAGE_BYTES)
        {
            return Err(malformed(
                &heap_name,
                format!(
                    "{len} bytes of Wasm memory: not whole pages within the limit of {}",
                    config.wasm_memory_bytes_max
                ),
            ));
        }
        check_raw(&heap_name, heap, len, &sha)?;
        if let Some(h) = c.heap.as_mut() {
            h.memory = heap.to_vec();
        }
    }
    let stable_name = format!("{dir}{STABLE_FILE}");
    let stable = files.take(&stable_name)?;
    c.stable = decode_stable(&stable_name, stable, &raw, config)?;
    let chunks_name = format!("{dir}{CHUNKS_FILE}");
    if let Some(bytes) = files.take_if(&chunks_name, !raw.chunks.is_empty())? {
        c.wasm_chunk_store = decode_chunks(&chunks_name, bytes, &raw.chunks)?;
    }
    Ok((c, raw.wasm.map(|(_, sha)| sha)))
}

impl StateMachine {
    /// The state at the current height as named files, sorted by name, deterministic:
    /// equal states give equal bytes on every node. Errors if a paused (time-sliced)
    /// execution is in flight (the caller calls `abort_paused_executions` first).
    pub fn checkpoint_files(&self) -> Result<Vec<(String, Vec<u8>)>, CheckpointError> {
        if self.has_paused_executions() {
            return Err(CheckpointError::PausedExecution);
        }
        let st = &self.state;
        let mut files = Vec::with_capacity(1 + 4 * st.canisters.len());
        for (id, c) in &st.canisters {
            let dir = canister_dir(id);
            let (stable, runs) = stable_raw(&c.stable);
            let meta_name = format!("{dir}{META_FILE}");
            let meta = seal(&meta_name, encode_meta(c, &runs, &sha256(&stable)));
            files.push((meta_name, meta));
            files.push((format!("{dir}{STABLE_FILE}"), stable));
            if let Some(h) = &c.heap {
                files.push((format!("{dir}{HEAP_FILE}"), h.memory.clone()));
            }
            if let Some(w) = &c.wasm {
                files.push((format!("{dir}{WASM_FILE}"), w.to_vec()));
            }
            if !c.wasm_chunk_store.is_empty() {
                let chunks: Vec<u8> = c
                    .wasm_chunk_store
                    .values()
                    .flat_map(|chunk| chunk.iter().copied())
                    .collect();
                files.push((format!("{dir}{CHUNKS_FILE}"), chunks));
            }
        }
        files.push((SYSTEM_FILE.into(), seal(SYSTEM_FILE, encode_system(st))));
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(files)
    }

    /// Rebuilds a state machine from files produced by `checkpoint_files` (any order).
    /// Bytes come from disk or a peer: never panics on bad input, returns a typed error.
    pub fn from_checkpoint_files(
        config: ExecutionConfig,
        files: &[(String, Vec<u8>)],
    ) -> Result<StateMachine, CheckpointError> {
        let mut by_name = BTreeMap::new();
        for (name, bytes) in files {
            if name.len() > FILE_NAME_BYTES_MAX {
                return Err(CheckpointError::Unexpected(name.clone()));
            }
            if by_name.insert(name.as_str(), bytes.as_slice()).is_some() {
                return Err(CheckpointError::Duplicate(name.clone()));
            }
        }
        let mut files = Files { by_name };
        let mut state = ReplicatedState::default();
        // `system` is the same in versions 1 and 2.
        let (_, system) = open(SYSTEM_FILE, files.take(SYSTEM_FILE)?)?;
        let sys = decode_system(&mut Reader::new(system), &mut state)
            .map_err(|e| malformed(SYSTEM_FILE, e))?;
        let mut modules = Modules::new();
        let mut module_of = Vec::new();
        for id in &sys.canisters {
            let (c, sha) = decode_canister(id, &mut files, &config, &mut modules)?;
            state.canisters.insert(*id, c);
            module_of.extend(sha.map(|sha| (*id, sha)));
        }
        if let Some(name) = files.by_name.keys().next() {
            return Err(CheckpointError::Unexpected((*name).into()));
        }
        // The compiled module is a cache: rebuilt from the stored Wasm, once per module.
        let runtime = Runtime::new();
        for (id, sha) in module_of {
            let (Some(c), Some((w, compiled))) =
                (state.canisters.get_mut(&id), modules.get_mut(&sha))
            else {
                continue;
            };
            let module = match compiled {
                Some(m) => m.clone(),
                None => {
                    let m = runtime.compile(w).map_err(|e| CheckpointError::Wasm {
                        file: format!("{}{WASM_FILE}", canister_dir(&id)),
                        reason: e.to_string(),
                    })?;
                    compiled.insert(Arc::new(m)).clone()
                }
            };
            c.module = Some(module);
        }
        let mut hashes = BTreeMap::new();
        hashes.insert(state.height, state.hash());
        Ok(StateMachine {
            state,
            runtime,
            config,
            hashes,
        })
    }
}
