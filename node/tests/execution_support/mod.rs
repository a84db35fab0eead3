//! Shared helpers for the execution tests: a one-replica subnet driven by batches, with
//! Candid-encoded management calls.
#![allow(dead_code)]

use node::candid::{blob, encode_args, field_id, opt, record, variant, Type, Value};
use node::execution::ExecutionConfig;
use node::routing::{Batch, IngressMessage, StateMachine};
use node::state::{IngressStatus, Reject};
use node::types::Principal;
use sha2::{Digest, Sha256};

pub const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata");

pub fn read_module(rel: &str) -> Vec<u8> {
    std::fs::read(format!("{TESTDATA}/{rel}")).expect("test module present")
}

pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub const EMPTY_ARGS: &[u8] = b"DIDL\x00\x00";

pub fn user() -> Principal {
    Principal::self_authenticating(b"cairn execution test controller")
}

pub struct Subnet {
    pub sm: StateMachine,
    counter: u64,
    pub time_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reply(Vec<u8>),
    Reject(Reject),
}

impl Outcome {
    pub fn reply(self) -> Vec<u8> {
        match self {
            Outcome::Reply(b) => b,
            Outcome::Reject(r) => panic!("expected a reply, got reject {r:?}"),
        }
    }
    pub fn reject(self) -> Reject {
        match self {
            Outcome::Reply(b) => panic!("expected a reject, got reply {}", to_hex(&b)),
            Outcome::Reject(r) => r,
        }
    }
}

impl Subnet {
    pub fn new() -> Subnet {
        Subnet::with_config(ExecutionConfig::default())
    }

    pub fn with_config(config: ExecutionConfig) -> Subnet {
        Subnet {
            sm: StateMachine::new(config),
            counter: 0,
            time_ns: 1_700_000_000_000_000_000,
        }
    }

    pub fn next_id(&mut self) -> [u8; 32] {
        self.counter += 1;
        Sha256::digest(self.counter.to_le_bytes()).into()
    }

    /// Executes one batch with these ingress messages.
    pub fn batch(&mut self, ingress: Vec<IngressMessage>) -> node::routing::BatchResult {
        self.time_ns += 1_000_000_000;
        let randomness: [u8; 32] = Sha256::digest(self.time_ns.to_le_bytes()).into();
        self.sm.execute_batch(Batch {
            time_ns: self.time_ns,
            randomness,
            ingress,
        })
    }

    pub fn message(
        &mut self,
        sender: Principal,
        canister: Principal,
        method: &str,
        arg: &[u8],
    ) -> IngressMessage {
        IngressMessage {
            id: self.next_id(),
            sender,
            canister_id: canister,
            method: method.into(),
            arg: arg.to_vec(),
        }
    }

    /// Submits one ingress message and executes batches until it has an answer.
    pub fn update(
        &mut self,
        sender: Principal,
        canister: Principal,
        method: &str,
        arg: &[u8],
    ) -> Outcome {
        let m = self.message(sender, canister, method, arg);
        let id = m.id;
        self.batch(vec![m]);
        for _ in 0..1000 {
            match self.sm.request_status(&id) {
                Some(IngressStatus::Replied(b)) => return Outcome::Reply(b.clone()),
                Some(IngressStatus::Rejected(r)) => return Outcome::Reject(r.clone()),
                _ => {
                    self.batch(vec![]);
                }
            }
        }
        panic!("no answer after 1000 rounds");
    }

    pub fn query(
        &self,
        sender: Principal,
        canister: Principal,
        method: &str,
        arg: &[u8],
    ) -> Outcome {
        match self.sm.query(canister, method, arg.to_vec(), sender, None) {
            Ok(b) => Outcome::Reply(b),
            Err(r) => Outcome::Reject(r),
        }
    }

    pub fn create_canister(&mut self) -> Principal {
        self.create_canister_with(user(), None)
    }

    pub fn create_canister_with(
        &mut self,
        controller: Principal,
        cycles: Option<u128>,
    ) -> Principal {
        let ty = record(&[
            ("amount", opt(Type::Nat)),
            ("settings", opt(Type::Reserved)),
        ]);
        let amount = Value::Opt(cycles.map(|c| Box::new(Value::nat(c))));
        let v = Value::Record(sorted(vec![
            (field_id("amount"), amount),
            (field_id("settings"), Value::Opt(None)),
        ]));
        let ty = fix_reserved(ty);
        let arg = encode_args(&[(ty, v)]).expect("encode");
        let reply = self
            .update(
                controller,
                Principal::MANAGEMENT,
                "provisional_create_canister_with_cycles",
                &arg,
            )
            .reply();
        let out = node::candid::decode_args(
            &reply,
            &[record(&[("canister_id", Type::Principal)])],
            &Default::default(),
        )
        .expect("decode create reply");
        out[0]
            .field("canister_id")
            .and_then(Value::as_principal)
            .expect("canister id")
    }

    pub fn install(
        &mut self,
        canister: Principal,
        wasm: &[u8],
        arg: &[u8],
        mode: &str,
        keep_memory: bool,
    ) -> Outcome {
        self.install_as(user(), canister, wasm, arg, mode, keep_memory)
    }

    pub fn install_as(
        &mut self,
        sender: Principal,
        canister: Principal,
        wasm: &[u8],
        arg: &[u8],
        mode: &str,
        keep_memory: bool,
    ) -> Outcome {
        let a = install_arg(canister, wasm, arg, mode, keep_memory);
        self.update(sender, Principal::MANAGEMENT, "install_code", &a)
    }
}

fn sorted(mut v: Vec<(u32, Value)>) -> Vec<(u32, Value)> {
    v.sort_by_key(|(i, _)| *i);
    v
}

/// `opt reserved` cannot be encoded with a value; use `opt null` for absent settings.
fn fix_reserved(t: Type) -> Type {
    match t {
        Type::Record(f) => Type::Record(
            f.into_iter()
                .map(|(i, t)| {
                    (
                        i,
                        if t == opt(Type::Reserved) {
                            opt(Type::Null)
                        } else {
                            t
                        },
                    )
                })
                .collect(),
        ),
        other => other,
    }
}

pub fn install_arg(
    canister: Principal,
    wasm: &[u8],
    arg: &[u8],
    mode: &str,
    keep_memory: bool,
) -> Vec<u8> {
    let upgrade_opts = record(&[
        ("skip_pre_upgrade", opt(Type::Bool)),
        (
            "wasm_memory_persistence",
            opt(variant(&[("keep", Type::Null), ("replace", Type::Null)])),
        ),
    ]);
    let mode_ty = variant(&[
        ("install", Type::Null),
        ("reinstall", Type::Null),
        ("upgrade", opt(upgrade_opts)),
    ]);
    let ty = record(&[
        ("mode", mode_ty),
        ("canister_id", Type::Principal),
        ("wasm_module", blob()),
        ("arg", blob()),
    ]);
    let mode_v = match mode {
        "upgrade" => {
            let persistence = if keep_memory {
                Value::Opt(Some(Box::new(Value::Variant(
                    field_id("keep"),
                    Box::new(Value::Null),
                ))))
            } else {
                Value::Opt(None)
            };
            let opts = Value::Record(sorted(vec![
                (field_id("skip_pre_upgrade"), Value::Opt(None)),
                (field_id("wasm_memory_persistence"), persistence),
            ]));
            Value::Variant(
                field_id("upgrade"),
                Box::new(Value::Opt(Some(Box::new(opts)))),
            )
        }
        m => Value::Variant(field_id(m), Box::new(Value::Null)),
    };
    let v = Value::Record(sorted(vec![
        (field_id("mode"), mode_v),
        (field_id("canister_id"), Value::Principal(canister)),
        (field_id("wasm_module"), Value::Blob(wasm.to_vec())),
        (field_id("arg"), Value::Blob(arg.to_vec())),
    ]));
    encode_args(&[(ty, v)]).expect("encode install_code")
}

pub fn canister_id_arg(canister: Principal) -> Vec<u8> {
    let ty = record(&[("canister_id", Type::Principal)]);
    let v = Value::Record(vec![(field_id("canister_id"), Value::Principal(canister))]);
    encode_args(&[(ty, v)]).expect("encode")
}

/// The `update_settings` argument that sets `id`'s freezing threshold (seconds).
pub fn freezing_arg(id: Principal, seconds: u128) -> Vec<u8> {
    use node::candid::{encode_args, field_id, opt, record, Type, Value};
    let settings_t = record(&[("freezing_threshold", opt(Type::Nat))]);
    let ty = record(&[("canister_id", Type::Principal), ("settings", settings_t)]);
    let settings = Value::Record(vec![(
        field_id("freezing_threshold"),
        Value::Opt(Some(Box::new(Value::nat(seconds)))),
    )]);
    let mut fields = vec![
        (field_id("canister_id"), Value::Principal(id)),
        (field_id("settings"), settings),
    ];
    fields.sort_by_key(|(i, _)| *i);
    encode_args(&[(ty, Value::Record(fields))]).expect("encode")
}

/// A tiny Wasm module assembler for hand-written test canisters (WAT is not available in
/// no_std wasmi; the tests build binaries directly).
pub mod wasm {
    pub fn leb(out: &mut Vec<u8>, mut n: u64) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    pub fn sleb(out: &mut Vec<u8>, mut n: i64) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if (n == 0 && b & 0x40 == 0) || (n == -1 && b & 0x40 != 0) {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    pub fn name(out: &mut Vec<u8>, s: &str) {
        leb(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }

    fn section(out: &mut Vec<u8>, id: u8, body: Vec<u8>) {
        out.push(id);
        leb(out, body.len() as u64);
        out.extend(body);
    }

    pub const I32: u8 = 0x7f;
    pub const I64: u8 = 0x7e;

    /// A defined function: type index, locals (count, type), body without the final `end`.
    pub type FuncDef = (u32, Vec<(u32, u8)>, Vec<u8>);

    /// A module description: types, ic0 imports, functions, memory, exports, data.
    #[derive(Default)]
    pub struct Module {
        pub types: Vec<(Vec<u8>, Vec<u8>)>,
        /// (module, name, type index)
        pub imports: Vec<(String, String, u32)>,
        /// (type index, locals (count, type), body code without the final `end`)
        pub funcs: Vec<FuncDef>,
        pub memory_pages: Option<u32>,
        /// (name, function index)
        pub exports: Vec<(String, u32)>,
        /// (offset, bytes)
        pub data: Vec<(u32, Vec<u8>)>,
        pub table_funcs: Vec<u32>,
    }

    impl Module {
        pub fn ty(&mut self, params: &[u8], results: &[u8]) -> u32 {
            let t = (params.to_vec(), results.to_vec());
            if let Some(i) = self.types.iter().position(|x| *x == t) {
                return i as u32;
            }
            self.types.push(t);
            self.types.len() as u32 - 1
        }

        /// Imports `ic0.<name>`; returns its function index (imports must come first).
        pub fn import(&mut self, name: &str, params: &[u8], results: &[u8]) -> u32 {
            let t = self.ty(params, results);
            self.imports.push(("ic0".into(), name.into(), t));
            self.imports.len() as u32 - 1
        }

        pub fn import_from(
            &mut self,
            module: &str,
            name: &str,
            params: &[u8],
            results: &[u8],
        ) -> u32 {
            let t = self.ty(params, results);
            self.imports.push((module.into(), name.into(), t));
            self.imports.len() as u32 - 1
        }

        pub fn func(
            &mut self,
            params: &[u8],
            results: &[u8],
            locals: Vec<(u32, u8)>,
            body: Vec<u8>,
        ) -> u32 {
            let t = self.ty(params, results);
            self.funcs.push((t, locals, body));
            (self.imports.len() + self.funcs.len()) as u32 - 1
        }

        pub fn export(&mut self, name: &str, func: u32) {
            self.exports.push((name.into(), func));
        }

        pub fn encode(&self) -> Vec<u8> {
            let mut out = b"\0asm\x01\0\0\0".to_vec();
            let mut b = Vec::new();
            leb(&mut b, self.types.len() as u64);
            for (p, r) in &self.types {
                b.push(0x60);
                leb(&mut b, p.len() as u64);
                b.extend(p);
                leb(&mut b, r.len() as u64);
                b.extend(r);
            }
            section(&mut out, 1, b);
            let mut b = Vec::new();
            leb(&mut b, self.imports.len() as u64);
            for (m, n, t) in &self.imports {
                name(&mut b, m);
                name(&mut b, n);
                b.push(0);
                leb(&mut b, *t as u64);
            }
            section(&mut out, 2, b);
            let mut b = Vec::new();
            leb(&mut b, self.funcs.len() as u64);
            for (t, _, _) in &self.funcs {
                leb(&mut b, *t as u64);
            }
            section(&mut out, 3, b);
            if !self.table_funcs.is_empty() {
                let mut b = Vec::new();
                b.push(1);
                b.push(0x70);
                b.push(0);
                leb(&mut b, self.table_funcs.len() as u64);
                section(&mut out, 4, b);
            }
            if let Some(p) = self.memory_pages {
                let mut b = vec![1, 0];
                leb(&mut b, p as u64);
                section(&mut out, 5, b);
            }
            let mut b = Vec::new();
            leb(&mut b, self.exports.len() as u64);
            for (n, f) in &self.exports {
                name(&mut b, n);
                b.push(0);
                leb(&mut b, *f as u64);
            }
            section(&mut out, 7, b);
            if !self.table_funcs.is_empty() {
                let mut b = vec![1, 0, 0x41, 0, 0x0b];
                leb(&mut b, self.table_funcs.len() as u64);
                for f in &self.table_funcs {
                    leb(&mut b, *f as u64);
                }
                section(&mut out, 9, b);
            }
            let mut b = Vec::new();
            leb(&mut b, self.funcs.len() as u64);
            for (_, locals, body) in &self.funcs {
                let mut f = Vec::new();
                leb(&mut f, locals.len() as u64);
                for (n, t) in locals {
                    leb(&mut f, *n as u64);
                    f.push(*t);
                }
                f.extend(body);
                f.push(0x0b);
                leb(&mut b, f.len() as u64);
                b.extend(f);
            }
            section(&mut out, 10, b);
            if !self.data.is_empty() {
                let mut b = Vec::new();
                leb(&mut b, self.data.len() as u64);
                for (off, bytes) in &self.data {
                    b.push(0);
                    b.push(0x41);
                    sleb(&mut b, *off as i64);
                    b.push(0x0b);
                    leb(&mut b, bytes.len() as u64);
                    b.extend(bytes);
                }
                section(&mut out, 11, b);
            }
            out
        }
    }

    /// `i32.const n`
    pub fn i32c(n: i32) -> Vec<u8> {
        let mut v = vec![0x41];
        sleb(&mut v, n as i64);
        v
    }

    /// `i64.const n`
    pub fn i64c(n: i64) -> Vec<u8> {
        let mut v = vec![0x42];
        sleb(&mut v, n);
        v
    }

    pub fn call(f: u32) -> Vec<u8> {
        let mut v = vec![0x10];
        leb(&mut v, f as u64);
        v
    }

    /// Appends the whole message argument to the reply (through memory at `at`; the
    /// function's local `len` holds its length). The functions are the imports' indices.
    pub fn append_argument(arg_size: u32, arg_copy: u32, append: u32, at: i32, len: u8) -> Vec<u8> {
        [
            call(arg_size),
            vec![0x21, len],
            i32c(at),
            i32c(0),
            vec![0x20, len],
            call(arg_copy),
            i32c(at),
            vec![0x20, len],
            call(append),
        ]
        .concat()
    }

    /// Replies with the reject code, 4 bytes little-endian (through memory at `at`).
    pub fn reply_reject_code(reject_code: u32, append: u32, reply: u32, at: i32) -> Vec<u8> {
        [
            i32c(at),
            call(reject_code),
            vec![0x36, 2, 0],
            i32c(at),
            i32c(4),
            call(append),
            call(reply),
        ]
        .concat()
    }
}

/// The hand-written test canister every limit, call and determinism test uses.
///
/// | export | what it does |
/// |---|---|
/// | `canister_update inc` | memory[0] += 1, replies the 4-byte LE counter |
/// | `canister_query read` | replies the counter |
/// | `canister_update loop` | loops forever |
/// | `canister_update alloc` | grows memory by one page until it fails, then traps |
/// | `canister_update recurse` | unbounded recursion |
/// | `canister_update work` | counts to the u32 in its argument, then replies "done" |
/// | `canister_update call_inc` | calls `inc` on the canister whose id is its argument; replies with the callee's reply, or the reject code (4 bytes LE) |
/// | `canister_update stable_put` | grows stable memory to 1 page if needed, writes the argument at offset 0 |
/// | `canister_query stable_get` | replies the first 8 bytes of stable memory |
/// | `canister_update trap_after_write` | writes memory[0] = 1000, then traps |
/// | `canister_update accept_half` | accepts half the attached cycles, replies the amount (u128 LE) |
/// | `canister_update send_cycles` | calls `accept_half` on its argument with 1,000,000 cycles, replies the refund (u128 LE) |
pub fn test_canister() -> Vec<u8> {
    use wasm::*;
    let mut m = Module::default();
    let append = m.import("msg_reply_data_append", &[I32, I32], &[]);
    let reply = m.import("msg_reply", &[], &[]);
    let arg_size = m.import("msg_arg_data_size", &[], &[I32]);
    let arg_copy = m.import("msg_arg_data_copy", &[I32, I32, I32], &[]);
    let call_new = m.import("call_new", &[I32; 8], &[]);
    let call_perform = m.import("call_perform", &[], &[I32]);
    let reject_code = m.import("msg_reject_code", &[], &[I32]);
    let trap = m.import("trap", &[I32, I32], &[]);
    let st_size = m.import("stable64_size", &[], &[I64]);
    let st_grow = m.import("stable64_grow", &[I64], &[I64]);
    let st_write = m.import("stable64_write", &[I64, I64, I64], &[]);
    let st_read = m.import("stable64_read", &[I64, I64, I64], &[]);
    let cycles_add = m.import("call_cycles_add128", &[I64, I64], &[]);
    let cycles_available = m.import("msg_cycles_available128", &[I32], &[]);
    let cycles_accept = m.import("msg_cycles_accept128", &[I64, I64, I32], &[]);
    let cycles_refunded = m.import("msg_cycles_refunded128", &[I32], &[]);
    m.memory_pages = Some(1);
    m.data.push((16, b"out of memory".to_vec()));
    m.data.push((300, b"inc".to_vec()));
    m.data.push((320, b"done".to_vec()));
    m.data.push((340, b"deliberate".to_vec()));
    let reply_counter = [i32c(0), i32c(4), call(append), call(reply)].concat();
    // inc
    let body = [
        i32c(0),
        i32c(0),
        vec![0x28, 2, 0],
        i32c(1),
        vec![0x6a, 0x36, 2, 0],
        reply_counter.clone(),
    ]
    .concat();
    let f = m.func(&[], &[], vec![], body);
    m.export("canister_update inc", f);
    let f = m.func(&[], &[], vec![], reply_counter.clone());
    m.export("canister_query read", f);
    let f = m.func(&[], &[], vec![], vec![0x03, 0x40, 0x0c, 0, 0x0b]);
    m.export("canister_update loop", f);
    // alloc: block { loop { memory.grow(1) == -1 ? br 1 : br 0 } }; trap
    let body = [
        vec![0x02, 0x40, 0x03, 0x40],
        i32c(1),
        vec![0x40, 0x00],
        i32c(-1),
        vec![0x46, 0x0d, 1, 0x0c, 0, 0x0b, 0x0b],
        i32c(16),
        i32c(13),
        call(trap),
    ]
    .concat();
    let f = m.func(&[], &[], vec![], body);
    m.export("canister_update alloc", f);
    // recurse: a function calling itself (its own index is the next one).
    let next = (m.imports.len() + m.funcs.len()) as u32;
    let f = m.func(&[], &[], vec![], call(next));
    assert_eq!(f, next);
    m.export("canister_update recurse", f);
    // work: n = arg as u32 (first 4 bytes); count i from 0 to n; reply "done".
    let body = [
        i32c(400),
        i32c(0),
        i32c(4),
        call(arg_copy),
        i32c(400),
        vec![0x28, 2, 0, 0x21, 1],
        vec![
            0x03, 0x40, 0x20, 0, 0x41, 1, 0x6a, 0x22, 0, 0x20, 1, 0x49, 0x0d, 0, 0x0b,
        ],
        i32c(320),
        i32c(4),
        call(append),
        call(reply),
    ]
    .concat();
    let f = m.func(&[], &[], vec![(2, I32)], body);
    m.export("canister_update work", f);
    // call_inc: callee = arg bytes at 100.
    let body = [
        call(arg_size),
        vec![0x21, 0],
        i32c(100),
        i32c(0),
        vec![0x20, 0],
        call(arg_copy),
        i32c(100),
        vec![0x20, 0],
        i32c(300),
        i32c(3),
        i32c(0),
        i32c(0),
        i32c(1),
        i32c(0),
        call(call_new),
        call(call_perform),
        vec![0x1a],
    ]
    .concat();
    let f = m.func(&[], &[], vec![(1, I32)], body);
    m.export("canister_update call_inc", f);
    // on_reply(env): reply with the callee's reply.
    let body = [
        append_argument(arg_size, arg_copy, append, 200, 1),
        call(reply),
    ]
    .concat();
    let on_reply = m.func(&[I32], &[], vec![(1, I32)], body);
    // on_reject(env): reply with the reject code.
    let body = reply_reject_code(reject_code, append, reply, 500);
    let on_reject = m.func(&[I32], &[], vec![], body);
    // on_reply_refund(env): reply with the refunded cycles (16 bytes LE).
    let body = [
        i32c(900),
        call(cycles_refunded),
        i32c(900),
        i32c(16),
        call(append),
        call(reply),
    ]
    .concat();
    let on_reply_refund = m.func(&[I32], &[], vec![], body);
    m.table_funcs = vec![on_reply, on_reject, on_reply_refund];
    // accept_half: accept half of the attached cycles, reply with the accepted amount.
    let body = [
        i32c(800),
        call(cycles_available),
        i64c(0),
        i32c(800),
        vec![0x29, 3, 0], // i64.load
        i64c(1),
        vec![0x88], // i64.shr_u
        i32c(816),
        call(cycles_accept),
        i32c(816),
        i32c(16),
        call(append),
        call(reply),
    ]
    .concat();
    let f = m.func(&[], &[], vec![], body);
    m.export("canister_update accept_half", f);
    // send_cycles: call `accept_half` on the argument's canister with 1,000,000 cycles; the
    // reply callback answers with the refund.
    m.data.push((960, b"accept_half".to_vec()));
    let body = [
        call(arg_size),
        vec![0x21, 0],
        i32c(100),
        i32c(0),
        vec![0x20, 0],
        call(arg_copy),
        i32c(100),
        vec![0x20, 0],
        i32c(960),
        i32c(11),
        i32c(2),
        i32c(0),
        i32c(1),
        i32c(0),
        call(call_new),
        i64c(0),
        i64c(1_000_000),
        call(cycles_add),
        call(call_perform),
        vec![0x1a],
    ]
    .concat();
    let f = m.func(&[], &[], vec![(1, I32)], body);
    m.export("canister_update send_cycles", f);
    // stable_put: if size == 0 grow 1; write arg (8 bytes) at 0.
    let body = [
        call(st_size),
        vec![0x50, 0x04, 0x40],
        i64c(1),
        call(st_grow),
        vec![0x1a, 0x0b],
        i32c(600),
        i32c(0),
        i32c(8),
        call(arg_copy),
        i64c(0),
        i64c(600),
        i64c(8),
        call(st_write),
        reply_counter.clone(),
    ]
    .concat();
    let f = m.func(&[], &[], vec![], body);
    m.export("canister_update stable_put", f);
    let body = [
        i64c(700),
        i64c(0),
        i64c(8),
        call(st_read),
        i32c(700),
        i32c(8),
        call(append),
        call(reply),
    ]
    .concat();
    let f = m.func(&[], &[], vec![], body);
    m.export("canister_query stable_get", f);
    let body = [
        i32c(0),
        i32c(1000),
        vec![0x36, 2, 0],
        i32c(340),
        i32c(10),
        call(trap),
    ]
    .concat();
    let f = m.func(&[], &[], vec![], body);
    m.export("canister_update trap_after_write", f);
    m.encode()
}

pub fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

/// The seeded generator of the randomized workloads (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `provisional_create_canister_with_cycles` with no amount (the default cycles).
pub fn create_arg() -> Vec<u8> {
    let ty = record(&[("amount", opt(Type::Nat))]);
    let v = Value::Record(vec![(field_id("amount"), Value::Opt(None))]);
    encode_args(&[(ty, v)]).expect("encode")
}

/// Ingress messages of a workload: each gets an id from the seed and a counter, so two
/// workloads of the same seed are equal message for message.
pub struct Messages {
    seed: u64,
    sent: u64,
}

impl Messages {
    pub fn new(seed: u64) -> Messages {
        Messages { seed, sent: 0 }
    }

    pub fn msg(
        &mut self,
        sender: Principal,
        canister: Principal,
        method: &str,
        arg: Vec<u8>,
    ) -> IngressMessage {
        self.sent += 1;
        IngressMessage {
            id: Sha256::digest([self.seed.to_le_bytes(), self.sent.to_le_bytes()].concat()).into(),
            sender,
            canister_id: canister,
            method: method.into(),
            arg,
        }
    }

    /// The first batch: creates canister `i` and installs `installs[i]` (module, argument)
    /// in it, for every `i`, all sent by [`user`].
    pub fn setup_batch(&mut self, installs: &[(&[u8], &[u8])]) -> Batch {
        let mut ingress = Vec::new();
        for (i, (wasm, arg)) in installs.iter().enumerate() {
            let id = Principal::from_canister_index(i as u64);
            let create = create_arg();
            ingress.push(self.msg(
                user(),
                Principal::MANAGEMENT,
                "provisional_create_canister_with_cycles",
                create,
            ));
            let install = install_arg(id, wasm, arg, "install", false);
            ingress.push(self.msg(user(), Principal::MANAGEMENT, "install_code", install));
        }
        Batch {
            time_ns: SETUP_TIME_NS,
            randomness: [7; 32],
            ingress,
        }
    }
}

/// The time of a workload's setup batch.
pub const SETUP_TIME_NS: u64 = 1_000;

/// The batch after one at `*time_ns`: 1 to 2 s later, with fresh randomness.
pub fn next_batch(rng: &mut Rng, time_ns: &mut u64, ingress: Vec<IngressMessage>) -> Batch {
    *time_ns += 1_000_000_000 + rng.below(1_000_000_000);
    let mut randomness = [0u8; 32];
    randomness[..8].copy_from_slice(&rng.next().to_le_bytes());
    Batch {
        time_ns: *time_ns,
        randomness,
        ingress,
    }
}
