//! A `no_std` Candid codec for what the node itself reads and writes: the management
//! canister's arguments and results, and the tests' canister arguments.
//!
//! Spec: the Candid binary format ("DIDL" magic, type table, argument types, values), as in
//! `dfinity/candid` `spec/Candid.md`. Decoding is *typed*: the caller gives the expected
//! type and the decoder applies Candid's subtyping coercions (missing `opt` record fields
//! become `null`, extra fields and unknown arguments are skipped, `opt` values that do not
//! coerce become `null`, `nat` widens to `int`). Every decode is metered by
//! [`DECODE_COST_MAX`] so that zero-sized "space bombs" are rejected early.
//!
//! Invariants: decoding never panics on any input; it allocates at most in proportion to
//! the input length plus the metered cost.

pub mod decode;
pub mod encode;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub use decode::decode_args;
pub use encode::{encode_args, Encoder};

use crate::types::Principal;

/// The magic bytes every Candid message starts with.
pub const MAGIC: &[u8; 4] = b"DIDL";
/// Upper bound on the abstract work (values visited, bytes skipped / 64) of one decode.
pub const DECODE_COST_MAX: u64 = 2_000_000;
/// Upper bound on nesting depth while decoding or skipping a value.
pub const DECODE_DEPTH_MAX: usize = 256;
/// Upper bound on the number of entries in a message's type table.
pub const TYPE_TABLE_ENTRIES_MAX: usize = 10_000;

/// A Candid type, as the decoder expects it (or as the encoder writes it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Type {
    Null,
    Bool,
    Nat,
    Int,
    Nat8,
    Nat16,
    Nat32,
    Nat64,
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Text,
    Reserved,
    Empty,
    Principal,
    Opt(Box<Type>),
    Vec(Box<Type>),
    /// Fields sorted by id.
    Record(Vec<(u32, Type)>),
    /// Alternatives sorted by id.
    Variant(Vec<(u32, Type)>),
    Func(Box<FuncType>),
    /// Methods sorted by name.
    Service(Vec<(String, Type)>),
    /// A reference to a named type in a [`TypeEnv`] (for recursive types).
    Var(u32),
    /// A type from a future Candid version (opcode below -24): only skippable.
    Future,
}

/// A function type: arguments, results, annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuncType {
    pub args: Vec<Type>,
    pub results: Vec<Type>,
    /// 1 = query, 2 = oneway, 3 = composite_query.
    pub modes: Vec<u8>,
}

/// Named types referred to by [`Type::Var`].
#[derive(Clone, Debug, Default)]
pub struct TypeEnv {
    pub defs: Vec<Type>,
}

impl TypeEnv {
    /// Follows `Var` references (bounded, so a cycle of `Var`s cannot loop).
    pub fn resolve<'a>(&'a self, mut ty: &'a Type) -> Option<&'a Type> {
        for _ in 0..=self.defs.len() {
            match ty {
                Type::Var(i) => ty = self.defs.get(*i as usize)?,
                other => return Some(other),
            }
        }
        None
    }
}

/// A decoded Candid value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// Unbounded natural, as little-endian u64 limbs without trailing zero limbs.
    Nat(Vec<u64>),
    /// Unbounded integer: sign (true = negative) and magnitude limbs.
    Int(bool, Vec<u64>),
    Nat8(u8),
    Nat16(u16),
    Nat32(u32),
    Nat64(u64),
    Int8(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    /// IEEE-754 bits (no floating point arithmetic in the node).
    Float32(u32),
    Float64(u64),
    Text(String),
    Reserved,
    Principal(Principal),
    Opt(Option<Box<Value>>),
    Vec(Vec<Value>),
    /// Field id and value, sorted by id.
    Record(Vec<(u32, Value)>),
    /// Chosen alternative: its id and value.
    Variant(u32, Box<Value>),
    /// A function reference: service principal and method name.
    Func(Principal, String),
    Service(Principal),
    /// A `vec nat8` decoded as bytes (the decoder produces this for `blob`).
    Blob(Vec<u8>),
}

impl Value {
    /// A `nat` from a u128.
    pub fn nat(n: u128) -> Value {
        let mut limbs = alloc::vec![n as u64, (n >> 64) as u64];
        trim(&mut limbs);
        Value::Nat(limbs)
    }

    /// The value of a `nat` (or a fixed-width natural) if it fits into a u128.
    pub fn as_u128(&self) -> Option<u128> {
        match self {
            Value::Nat(l) | Value::Int(false, l) => match l.as_slice() {
                [] => Some(0),
                [a] => Some(*a as u128),
                [a, b] => Some(*a as u128 | ((*b as u128) << 64)),
                _ => None,
            },
            Value::Nat8(n) => Some(*n as u128),
            Value::Nat16(n) => Some(*n as u128),
            Value::Nat32(n) => Some(*n as u128),
            Value::Nat64(n) => Some(*n as u128),
            _ => None,
        }
    }

    /// The field `name` of a record.
    pub fn field(&self, name: &str) -> Option<&Value> {
        let id = field_id(name);
        match self {
            Value::Record(fields) => fields.iter().find(|(i, _)| *i == id).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The inner value of `opt` (None for `null`).
    pub fn opt(&self) -> Option<&Value> {
        match self {
            Value::Opt(Some(v)) => Some(v),
            _ => None,
        }
    }

    pub fn as_principal(&self) -> Option<Principal> {
        match self {
            Value::Principal(p) => Some(*p),
            _ => None,
        }
    }

    pub fn as_blob(&self) -> Option<&[u8]> {
        match self {
            Value::Blob(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_vec(&self) -> Option<&[Value]> {
        match self {
            Value::Vec(v) => Some(v),
            _ => None,
        }
    }
}

pub(crate) fn trim(limbs: &mut Vec<u64>) {
    while limbs.last() == Some(&0) {
        limbs.pop();
    }
}

/// The Candid field id of a name: `hash(name) = sum(c_i * 223^(k-i)) mod 2^32`.
pub fn field_id(name: &str) -> u32 {
    name.bytes()
        .fold(0u32, |h, b| h.wrapping_mul(223).wrapping_add(b as u32))
}

/// A record type from named fields (sorted by id here).
pub fn record(fields: &[(&str, Type)]) -> Type {
    let mut f: Vec<(u32, Type)> = fields
        .iter()
        .map(|(n, t)| (field_id(n), t.clone()))
        .collect();
    f.sort_by_key(|(i, _)| *i);
    Type::Record(f)
}

/// A variant type from named alternatives (sorted by id here).
pub fn variant(alts: &[(&str, Type)]) -> Type {
    match record(alts) {
        Type::Record(f) => Type::Variant(f),
        _ => Type::Empty,
    }
}

pub fn opt(t: Type) -> Type {
    Type::Opt(Box::new(t))
}

pub fn vec(t: Type) -> Type {
    Type::Vec(Box::new(t))
}

pub fn blob() -> Type {
    vec(Type::Nat8)
}

/// Why a message could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    BadMagic,
    UnexpectedEnd,
    BadLeb,
    BadTypeTable,
    /// A wire value does not fit the expected type.
    TypeMismatch,
    MissingArgument,
    BadUtf8,
    BadValue,
    /// The metered cost or depth bound was exceeded.
    TooCostly,
    TrailingBytes,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DecodeError::BadMagic => "missing DIDL magic",
            DecodeError::UnexpectedEnd => "unexpected end of message",
            DecodeError::BadLeb => "malformed LEB128",
            DecodeError::BadTypeTable => "malformed type table",
            DecodeError::TypeMismatch => "value does not match the expected type",
            DecodeError::MissingArgument => "missing argument",
            DecodeError::BadUtf8 => "text is not UTF-8",
            DecodeError::BadValue => "malformed value",
            DecodeError::TooCostly => "message exceeds the decoding cost limit",
            DecodeError::TrailingBytes => "trailing bytes after the arguments",
        };
        f.write_str(s)
    }
}
