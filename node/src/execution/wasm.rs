//! Canister module preparation: the checks the spec puts on a canister module before it
//! may be installed, and the one rewrite cairn needs to run it in wasmi.
//!
//! Spec: ic-interface.md §3.1. A module may import only `ic0.*` functions (checked against
//! the exact signatures in `system_api::IC0_IMPORTS`), has at most one memory, exports only
//! the `canister_*` names the spec lists (each `() -> ()`), and stays within the limits below.
//!
//! The rewrite (done once at install, cached with the compiled module) makes the instance
//! state that persists between messages reachable from the host:
//! - every mutable global is exported as `__cairn_global_<index>`, so heap state (e.g. the
//!   Rust shadow-stack pointer) can be saved after a message and restored before the next;
//! - memory 0 and table 0 are exported as `__cairn_memory` / `__cairn_table` (callbacks are
//!   table entries);
//! - the `(start)` section is removed and its function exported as `__cairn_start`: the
//!   start function runs once per fresh instance (install, reinstall, upgrade), not once per
//!   message.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use wasmparser::{BinaryReader, ExportSectionReader, GlobalSectionReader, MemorySectionReader};

use crate::candid::encode::leb;

/// Spec limit: functions in a module.
pub const MODULE_FUNCTIONS_MAX: usize = 50_000;
/// Spec limit: globals in a module.
pub const MODULE_GLOBALS_MAX: usize = 1_000;
/// Spec limit: exported canister methods.
pub const EXPORTED_METHODS_MAX: usize = 1_000;
/// Spec limit: total length of exported method names.
pub const EXPORTED_METHOD_NAMES_BYTES_MAX: usize = 20_000;
/// Spec limit: number of `icp:` custom sections.
pub const ICP_SECTIONS_MAX: usize = 16;
/// Spec limit: total size of `icp:` custom sections.
pub const ICP_SECTIONS_BYTES_MAX: usize = 1 << 20;
/// Spec limit: a module (uncompressed).
pub const MODULE_BYTES_MAX: usize = 100 << 20;
/// Spec limit: the code section.
pub const CODE_SECTION_BYTES_MAX: usize = 10 << 20;

pub const GLOBAL_EXPORT_PREFIX: &str = "__cairn_global_";
pub const MEMORY_EXPORT: &str = "__cairn_memory";
pub const TABLE_EXPORT: &str = "__cairn_table";
pub const START_EXPORT: &str = "__cairn_start";

/// Why a module cannot be installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WasmError {
    /// Not a Wasm binary, or its sections do not parse.
    Malformed(String),
    /// It parses but breaks a rule of the canister interface.
    Invalid(String),
}

impl fmt::Display for WasmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WasmError::Malformed(m) => write!(f, "Wasm module is malformed: {m}"),
            WasmError::Invalid(m) => write!(f, "Wasm module is invalid: {m}"),
        }
    }
}

/// A canister method or system entry point the module exports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExportedMethod {
    Update(String),
    Query(String),
    CompositeQuery(String),
    System(String),
}

/// What installation learned about a module.
#[derive(Clone, Debug)]
pub struct PreparedModule {
    /// The rewritten binary that wasmi compiles.
    pub binary: Vec<u8>,
    pub memory64: bool,
    pub has_memory: bool,
    pub has_table: bool,
    pub has_start: bool,
    /// Indices of the mutable globals (all exported under `__cairn_global_<i>`).
    pub mutable_globals: Vec<u32>,
    /// `canister_*` exports by their full export name.
    pub methods: BTreeMap<String, ExportedMethod>,
    /// `icp:public <name>` / `icp:private <name>` sections: name → (public?, bytes).
    pub metadata: BTreeMap<String, (bool, Vec<u8>)>,
}

struct Section<'a> {
    id: u8,
    payload: &'a [u8],
    payload_offset: usize,
}

fn read_leb_u32(bytes: &[u8], pos: &mut usize) -> Result<u32, WasmError> {
    let mut result: u32 = 0;
    for shift in (0..35).step_by(7) {
        let b = *bytes
            .get(*pos)
            .ok_or_else(|| WasmError::Malformed("truncated LEB128".into()))?;
        *pos += 1;
        result |= ((b & 0x7f) as u32) << shift;
        if b & 0x80 == 0 {
            return Ok(result);
        }
    }
    Err(WasmError::Malformed("LEB128 too long".into()))
}

fn split_sections(wasm: &[u8]) -> Result<Vec<Section<'_>>, WasmError> {
    if wasm.len() > MODULE_BYTES_MAX {
        return Err(WasmError::Invalid("module exceeds 100 MiB".into()));
    }
    if wasm.get(..8) != Some(&[0, b'a', b's', b'm', 1, 0, 0, 0][..]) {
        return Err(WasmError::Malformed(
            "missing Wasm magic number and version 1".into(),
        ));
    }
    let mut pos = 8;
    let mut out = Vec::new();
    while pos < wasm.len() {
        let id = wasm[pos];
        pos += 1;
        let len = read_leb_u32(wasm, &mut pos)? as usize;
        let end = pos
            .checked_add(len)
            .filter(|e| *e <= wasm.len())
            .ok_or_else(|| WasmError::Malformed("section runs past the end".into()))?;
        out.push(Section {
            id,
            payload: &wasm[pos..end],
            payload_offset: pos,
        });
        pos = end;
    }
    Ok(out)
}

fn parse_err(e: wasmparser::BinaryReaderError) -> WasmError {
    WasmError::Malformed(e.to_string())
}

/// The gzip magic: a module may be installed gzip-compressed (spec §3.1).
const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

/// Decompresses a gzip-wrapped module (RFC 1952), bounded by [`MODULE_BYTES_MAX`].
pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, WasmError> {
    let bad = |m: &str| WasmError::Malformed(format!("gzip: {m}"));
    let flags = *data.get(3).ok_or_else(|| bad("truncated header"))?;
    let mut pos = 10usize;
    if flags & 0x04 != 0 {
        let xlen = data
            .get(pos..pos + 2)
            .ok_or_else(|| bad("truncated extra field"))?;
        pos += 2 + u16::from_le_bytes([xlen[0], xlen[1]]) as usize;
    }
    for flag in [0x08u8, 0x10] {
        if flags & flag != 0 {
            let rest = data.get(pos..).ok_or_else(|| bad("truncated name"))?;
            pos += rest
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| bad("unterminated name"))?
                + 1;
        }
    }
    if flags & 0x02 != 0 {
        pos += 2;
    }
    let body = data
        .get(pos..data.len().saturating_sub(8))
        .ok_or_else(|| bad("truncated body"))?;
    miniz_oxide::inflate::decompress_to_vec_with_limit(body, MODULE_BYTES_MAX)
        .map_err(|_| bad("invalid deflate stream or module exceeds 100 MiB"))
}

/// Checks a module against the canister interface rules and rewrites it for cairn.
pub fn prepare(wasm: &[u8]) -> Result<PreparedModule, WasmError> {
    if wasm.starts_with(&GZIP_MAGIC) {
        // One level of compression only: a gzip inside the gzip is not a Wasm module.
        return prepare_raw(&gunzip(wasm)?);
    }
    prepare_raw(wasm)
}

fn prepare_raw(wasm: &[u8]) -> Result<PreparedModule, WasmError> {
    let sections = split_sections(wasm)?;
    let mut p = PreparedModule {
        binary: Vec::new(),
        memory64: false,
        has_memory: false,
        has_table: false,
        has_start: false,
        mutable_globals: Vec::new(),
        methods: BTreeMap::new(),
        metadata: BTreeMap::new(),
    };
    let mut start_func: Option<u32> = None;
    let mut export_names: Vec<String> = Vec::new();
    for s in &sections {
        match s.id {
            0 => read_custom(s, &mut p)?,
            4 => p.has_table = count(s)? > 0,
            5 => read_memories(s, &mut p)?,
            6 => read_globals(s, &mut p)?,
            7 => read_exports(s, &mut p, &mut export_names)?,
            8 => {
                let mut pos = 0;
                start_func = Some(read_leb_u32(s.payload, &mut pos)?);
            }
            3 if count(s)? as usize > MODULE_FUNCTIONS_MAX => {
                return Err(WasmError::Invalid("too many functions".into()));
            }
            10 if s.payload.len() > CODE_SECTION_BYTES_MAX => {
                return Err(WasmError::Invalid("code section exceeds 10 MiB".into()));
            }
            _ => {}
        }
    }
    p.has_start = start_func.is_some();
    p.binary = rewrite(wasm, &sections, &p, start_func, &export_names)?;
    Ok(p)
}

fn count(s: &Section<'_>) -> Result<u32, WasmError> {
    let mut pos = 0;
    read_leb_u32(s.payload, &mut pos)
}

fn read_custom(s: &Section<'_>, p: &mut PreparedModule) -> Result<(), WasmError> {
    let mut pos = 0;
    let n = read_leb_u32(s.payload, &mut pos)? as usize;
    let name = s
        .payload
        .get(pos..pos + n)
        .and_then(|b| core::str::from_utf8(b).ok())
        .ok_or_else(|| WasmError::Malformed("bad custom section name".into()))?;
    let content = &s.payload[pos + n..];
    let (public, rest) = if let Some(r) = name.strip_prefix("icp:public ") {
        (true, r)
    } else if let Some(r) = name.strip_prefix("icp:private ") {
        (false, r)
    } else if name.starts_with("icp:") {
        return Err(WasmError::Invalid(format!(
            "invalid custom section name `{name}`"
        )));
    } else {
        return Ok(());
    };
    if p.metadata.contains_key(rest) {
        return Err(WasmError::Invalid(format!(
            "duplicate custom section `{rest}`"
        )));
    }
    p.metadata.insert(rest.into(), (public, content.to_vec()));
    let total: usize = p.metadata.values().map(|(_, b)| b.len()).sum();
    if p.metadata.len() > ICP_SECTIONS_MAX || total > ICP_SECTIONS_BYTES_MAX {
        return Err(WasmError::Invalid(
            "too many or too large icp: sections".into(),
        ));
    }
    Ok(())
}

fn read_memories(s: &Section<'_>, p: &mut PreparedModule) -> Result<(), WasmError> {
    let r = MemorySectionReader::new(BinaryReader::new(s.payload, s.payload_offset))
        .map_err(parse_err)?;
    if r.count() > 1 {
        return Err(WasmError::Invalid("more than one memory".into()));
    }
    for m in r {
        let m = m.map_err(parse_err)?;
        p.has_memory = true;
        p.memory64 = m.memory64;
    }
    Ok(())
}

fn read_globals(s: &Section<'_>, p: &mut PreparedModule) -> Result<(), WasmError> {
    let r = GlobalSectionReader::new(BinaryReader::new(s.payload, s.payload_offset))
        .map_err(parse_err)?;
    if r.count() as usize > MODULE_GLOBALS_MAX {
        return Err(WasmError::Invalid("too many globals".into()));
    }
    // Canister modules import no globals (only ic0 functions), so indices start at 0.
    for (i, g) in r.into_iter().enumerate() {
        let g = g.map_err(parse_err)?;
        if g.ty.mutable {
            p.mutable_globals.push(i as u32);
        }
    }
    Ok(())
}

fn read_exports(
    s: &Section<'_>,
    p: &mut PreparedModule,
    names: &mut Vec<String>,
) -> Result<(), WasmError> {
    let r = ExportSectionReader::new(BinaryReader::new(s.payload, s.payload_offset))
        .map_err(parse_err)?;
    let mut method_names: BTreeMap<String, ()> = BTreeMap::new();
    let mut name_bytes = 0usize;
    for e in r {
        let e = e.map_err(parse_err)?;
        names.push(e.name.into());
        let Some(m) = classify_export(e.name)? else {
            continue;
        };
        if let ExportedMethod::Update(n)
        | ExportedMethod::Query(n)
        | ExportedMethod::CompositeQuery(n) = &m
        {
            if method_names.insert(n.clone(), ()).is_some() {
                return Err(WasmError::Invalid(format!(
                    "method `{n}` exported more than once"
                )));
            }
            name_bytes += n.len();
        }
        p.methods.insert(e.name.into(), m);
    }
    if method_names.len() > EXPORTED_METHODS_MAX || name_bytes > EXPORTED_METHOD_NAMES_BYTES_MAX {
        return Err(WasmError::Invalid("too many exported methods".into()));
    }
    Ok(())
}

const SYSTEM_EXPORTS: [&str; 7] = [
    "canister_init",
    "canister_pre_upgrade",
    "canister_post_upgrade",
    "canister_inspect_message",
    "canister_heartbeat",
    "canister_global_timer",
    "canister_on_low_wasm_memory",
];

fn classify_export(name: &str) -> Result<Option<ExportedMethod>, WasmError> {
    if !name.starts_with("canister_") {
        return Ok(None);
    }
    if SYSTEM_EXPORTS.contains(&name) {
        return Ok(Some(ExportedMethod::System(name.into())));
    }
    if let Some(m) = name.strip_prefix("canister_update ") {
        return Ok(Some(ExportedMethod::Update(m.into())));
    }
    if let Some(m) = name.strip_prefix("canister_query ") {
        return Ok(Some(ExportedMethod::Query(m.into())));
    }
    if let Some(m) = name.strip_prefix("canister_composite_query ") {
        return Ok(Some(ExportedMethod::CompositeQuery(m.into())));
    }
    Err(WasmError::Invalid(format!(
        "exports reserved symbol `{name}`"
    )))
}

/// Re-emits the module with the extra exports and without the start section.
fn rewrite(
    wasm: &[u8],
    sections: &[Section<'_>],
    p: &PreparedModule,
    start: Option<u32>,
    existing: &[String],
) -> Result<Vec<u8>, WasmError> {
    // Extra export entries: (name, kind, index).
    let mut extra: Vec<(String, u8, u32)> = Vec::new();
    for g in &p.mutable_globals {
        extra.push((format!("{GLOBAL_EXPORT_PREFIX}{g}"), 3, *g));
    }
    if p.has_memory {
        extra.push((MEMORY_EXPORT.into(), 2, 0));
    }
    if p.has_table {
        extra.push((TABLE_EXPORT.into(), 1, 0));
    }
    if let Some(f) = start {
        extra.push((START_EXPORT.into(), 0, f));
    }
    if extra.iter().any(|(n, _, _)| existing.contains(n)) {
        return Err(WasmError::Invalid(
            "exports a name reserved by cairn".into(),
        ));
    }
    let mut out = Vec::with_capacity(wasm.len() + 256);
    out.extend_from_slice(&wasm[..8]);
    let mut wrote_exports = false;
    for s in sections {
        // The export section sits after globals (6) and before start (8), elements (9),
        // data count (12), code (10) and data (11).
        let after_exports = matches!(s.id, 8..=12);
        if !wrote_exports && (s.id == 7 || after_exports) {
            let (n0, body) = if s.id == 7 {
                let mut pos = 0;
                let n = read_leb_u32(s.payload, &mut pos)?;
                (n, &s.payload[pos..])
            } else {
                (0, &[][..])
            };
            let mut payload = Vec::new();
            leb(&mut payload, n0 as u64 + extra.len() as u64);
            payload.extend_from_slice(body);
            for (name, kind, idx) in &extra {
                leb(&mut payload, name.len() as u64);
                payload.extend_from_slice(name.as_bytes());
                payload.push(*kind);
                leb(&mut payload, *idx as u64);
            }
            out.push(7);
            leb(&mut out, payload.len() as u64);
            out.extend_from_slice(&payload);
            wrote_exports = true;
            if s.id == 7 {
                continue;
            }
        }
        if s.id == 8 {
            continue;
        }
        out.push(s.id);
        leb(&mut out, s.payload.len() as u64);
        out.extend_from_slice(s.payload);
    }
    if !wrote_exports {
        let mut payload = Vec::new();
        leb(&mut payload, extra.len() as u64);
        for (name, kind, idx) in &extra {
            leb(&mut payload, name.len() as u64);
            payload.extend_from_slice(name.as_bytes());
            payload.push(*kind);
            leb(&mut payload, *idx as u64);
        }
        out.push(7);
        leb(&mut out, payload.len() as u64);
        out.extend_from_slice(&payload);
    }
    Ok(out)
}
