//! Typed Candid decoding with subtyping coercions and cost metering.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use super::{
    trim, DecodeError, FuncType, Type, TypeEnv, Value, DECODE_COST_MAX, DECODE_DEPTH_MAX, MAGIC,
    TYPE_TABLE_ENTRIES_MAX,
};
use crate::types::Principal;

type Result<T> = core::result::Result<T, DecodeError>;

/// Decodes a Candid message against the expected argument types (`env` resolves
/// [`Type::Var`] in `expected`). Extra wire arguments are skipped; missing ones must be
/// `opt`, `null` or `reserved`.
pub fn decode_args(bytes: &[u8], expected: &[Type], env: &TypeEnv) -> Result<Vec<Value>> {
    let mut d = Decoder {
        bytes,
        pos: 0,
        cost: 0,
        depth: 0,
        wire: TypeEnv::default(),
        env,
    };
    if bytes.get(..4) != Some(&MAGIC[..]) {
        return Err(DecodeError::BadMagic);
    }
    d.pos = 4;
    d.read_type_table()?;
    let argc = d.leb_usize()?;
    let mut wire_args = Vec::new();
    for _ in 0..argc.min(bytes.len()) {
        wire_args.push(d.read_type_ref()?);
    }
    if wire_args.len() != argc {
        return Err(DecodeError::UnexpectedEnd);
    }
    let mut out = Vec::with_capacity(expected.len());
    for (i, exp) in expected.iter().enumerate() {
        match wire_args.get(i) {
            Some(w) => {
                let v = d.value(w, exp)?;
                out.push(v);
            }
            None => out.push(d.default_for_missing(exp)?),
        }
    }
    for w in wire_args.iter().skip(expected.len()) {
        d.skip(w)?;
    }
    if d.pos != bytes.len() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(out)
}

struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    cost: u64,
    depth: usize,
    wire: TypeEnv,
    env: &'a TypeEnv,
}

impl Decoder<'_> {
    fn byte(&mut self) -> Result<u8> {
        let b = *self.bytes.get(self.pos).ok_or(DecodeError::UnexpectedEnd)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::UnexpectedEnd)?;
        let s = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::UnexpectedEnd)?;
        self.pos = end;
        Ok(s)
    }

    fn charge(&mut self, units: u64) -> Result<()> {
        self.cost = self.cost.saturating_add(units);
        if self.cost > DECODE_COST_MAX {
            return Err(DecodeError::TooCostly);
        }
        Ok(())
    }

    fn leb_u64(&mut self) -> Result<u64> {
        let mut result: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            let low = (b & 0x7f) as u64;
            if shift >= 64 {
                if low != 0 {
                    return Err(DecodeError::BadLeb);
                }
            } else {
                if shift == 63 && low > 1 {
                    return Err(DecodeError::BadLeb);
                }
                result |= low << shift;
            }
            shift = shift.saturating_add(7);
            if b & 0x80 == 0 {
                return Ok(result);
            }
        }
    }

    fn leb_usize(&mut self) -> Result<usize> {
        usize::try_from(self.leb_u64()?).map_err(|_| DecodeError::BadLeb)
    }

    fn sleb_i64(&mut self) -> Result<i64> {
        let mut result: i64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if shift < 64 {
                result |= ((b & 0x7f) as i64) << shift;
            }
            shift = shift.saturating_add(7);
            if b & 0x80 == 0 {
                if shift < 64 && (b & 0x40) != 0 {
                    result |= -1i64 << shift;
                }
                if shift > 70 {
                    return Err(DecodeError::BadLeb);
                }
                return Ok(result);
            }
        }
    }

    /// Unbounded LEB128 into little-endian u64 limbs.
    fn leb_limbs(&mut self) -> Result<Vec<u64>> {
        let mut limbs: Vec<u64> = Vec::new();
        let mut bit = 0usize;
        loop {
            let b = self.byte()?;
            self.charge(1)?;
            let chunk = (b & 0x7f) as u64;
            set_bits(&mut limbs, bit, chunk);
            bit += 7;
            if b & 0x80 == 0 {
                trim(&mut limbs);
                return Ok(limbs);
            }
        }
    }

    /// Unbounded SLEB128 into sign and magnitude.
    fn sleb_limbs(&mut self) -> Result<(bool, Vec<u64>)> {
        let mut limbs: Vec<u64> = Vec::new();
        let mut bit = 0usize;
        let negative;
        loop {
            let b = self.byte()?;
            self.charge(1)?;
            set_bits(&mut limbs, bit, (b & 0x7f) as u64);
            bit += 7;
            if b & 0x80 == 0 {
                negative = b & 0x40 != 0;
                break;
            }
        }
        if !negative {
            trim(&mut limbs);
            return Ok((false, limbs));
        }
        // Two's complement of `bit` bits: magnitude = 2^bit - value.
        let words = bit.div_ceil(64);
        limbs.resize(words, 0);
        let top_bits = bit % 64;
        if top_bits != 0 {
            if let Some(last) = limbs.last_mut() {
                *last |= !0u64 << top_bits;
            }
        }
        // Negate: invert and add one.
        let mut carry = 1u64;
        for l in limbs.iter_mut() {
            let (v, c) = (!*l).overflowing_add(carry);
            *l = v;
            carry = c as u64;
        }
        trim(&mut limbs);
        Ok((!limbs.is_empty(), limbs))
    }

    fn read_type_table(&mut self) -> Result<()> {
        let n = self.leb_usize()?;
        if n > TYPE_TABLE_ENTRIES_MAX {
            return Err(DecodeError::BadTypeTable);
        }
        let mut defs = Vec::with_capacity(n.min(self.bytes.len()));
        for _ in 0..n {
            let op = self.sleb_i64()?;
            let t = match op {
                -18 => Type::Opt(Box::new(self.read_type_ref()?)),
                -19 => Type::Vec(Box::new(self.read_type_ref()?)),
                -20 => Type::Record(self.read_fields()?),
                -21 => Type::Variant(self.read_fields()?),
                -22 => Type::Func(Box::new(self.read_func()?)),
                -23 => self.read_service()?,
                op if op < -24 => {
                    // A future type: its description is length-prefixed and skipped.
                    let len = self.leb_usize()?;
                    self.take(len)?;
                    Type::Future
                }
                _ => return Err(DecodeError::BadTypeTable),
            };
            defs.push(t);
        }
        self.wire.defs = defs;
        // Every reference must point into the table.
        for t in self.wire.defs.iter() {
            if !refs_in_range(t, n) {
                return Err(DecodeError::BadTypeTable);
            }
        }
        // A definition must not be a pure reference cycle (e.g. `opt` is fine, records of
        // themselves only are fine too); Var-only chains cannot occur as entries are
        // constructors, so nothing more to check here.
        Ok(())
    }

    fn read_fields(&mut self) -> Result<Vec<(u32, Type)>> {
        let n = self.leb_usize()?;
        let mut fields: Vec<(u32, Type)> = Vec::new();
        for _ in 0..n {
            let id = u32::try_from(self.leb_u64()?).map_err(|_| DecodeError::BadTypeTable)?;
            if let Some((last, _)) = fields.last() {
                if id <= *last {
                    return Err(DecodeError::BadTypeTable);
                }
            }
            let t = self.read_type_ref()?;
            fields.push((id, t));
        }
        Ok(fields)
    }

    fn read_func(&mut self) -> Result<FuncType> {
        let na = self.leb_usize()?;
        let mut args = Vec::new();
        for _ in 0..na {
            args.push(self.read_type_ref()?);
        }
        let nr = self.leb_usize()?;
        let mut results = Vec::new();
        for _ in 0..nr {
            results.push(self.read_type_ref()?);
        }
        let nm = self.leb_usize()?;
        let modes = self.take(nm)?.to_vec();
        if modes.iter().any(|m| !(1..=3).contains(m)) {
            return Err(DecodeError::BadTypeTable);
        }
        Ok(FuncType {
            args,
            results,
            modes,
        })
    }

    fn read_service(&mut self) -> Result<Type> {
        let n = self.leb_usize()?;
        let mut methods: Vec<(String, Type)> = Vec::new();
        for _ in 0..n {
            let len = self.leb_usize()?;
            let name = core::str::from_utf8(self.take(len)?)
                .map_err(|_| DecodeError::BadUtf8)?
                .into();
            if let Some((last, _)) = methods.last() {
                if &name <= last {
                    return Err(DecodeError::BadTypeTable);
                }
            }
            let t = self.read_type_ref()?;
            methods.push((name, t));
        }
        Ok(Type::Service(methods))
    }

    fn read_type_ref(&mut self) -> Result<Type> {
        let code = self.sleb_i64()?;
        if code >= 0 {
            return u32::try_from(code)
                .map(Type::Var)
                .map_err(|_| DecodeError::BadTypeTable);
        }
        Ok(match code {
            -1 => Type::Null,
            -2 => Type::Bool,
            -3 => Type::Nat,
            -4 => Type::Int,
            -5 => Type::Nat8,
            -6 => Type::Nat16,
            -7 => Type::Nat32,
            -8 => Type::Nat64,
            -9 => Type::Int8,
            -10 => Type::Int16,
            -11 => Type::Int32,
            -12 => Type::Int64,
            -13 => Type::Float32,
            -14 => Type::Float64,
            -15 => Type::Text,
            -16 => Type::Reserved,
            -17 => Type::Empty,
            -24 => Type::Principal,
            _ => return Err(DecodeError::BadTypeTable),
        })
    }

    fn wire_resolve(&self, t: &Type) -> Result<Type> {
        self.wire
            .resolve(t)
            .cloned()
            .ok_or(DecodeError::BadTypeTable)
    }

    fn exp_resolve(&self, t: &Type) -> Result<Type> {
        self.env
            .resolve(t)
            .cloned()
            .ok_or(DecodeError::TypeMismatch)
    }

    fn default_for_missing(&self, exp: &Type) -> Result<Value> {
        match self.exp_resolve(exp)? {
            Type::Opt(_) => Ok(Value::Opt(None)),
            Type::Null => Ok(Value::Null),
            Type::Reserved => Ok(Value::Reserved),
            _ => Err(DecodeError::MissingArgument),
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > DECODE_DEPTH_MAX {
            return Err(DecodeError::TooCostly);
        }
        self.charge(1)
    }

    fn value(&mut self, wire: &Type, exp: &Type) -> Result<Value> {
        self.enter()?;
        let r = self.value_inner(wire, exp);
        self.depth -= 1;
        r
    }

    fn value_inner(&mut self, wire: &Type, exp: &Type) -> Result<Value> {
        let w = self.wire_resolve(wire)?;
        let e = self.exp_resolve(exp)?;
        if let Type::Empty = w {
            return Err(DecodeError::TypeMismatch);
        }
        match (&w, &e) {
            (_, Type::Reserved) => {
                self.skip(&w)?;
                Ok(Value::Reserved)
            }
            (_, Type::Opt(inner)) => self.opt_value(&w, inner),
            (Type::Null, Type::Null) => Ok(Value::Null),
            (Type::Bool, Type::Bool) => match self.byte()? {
                0 => Ok(Value::Bool(false)),
                1 => Ok(Value::Bool(true)),
                _ => Err(DecodeError::BadValue),
            },
            (Type::Nat, Type::Nat) => Ok(Value::Nat(self.leb_limbs()?)),
            (Type::Nat, Type::Int) => Ok(Value::Int(false, self.leb_limbs()?)),
            (Type::Int, Type::Int) => {
                let (neg, l) = self.sleb_limbs()?;
                Ok(Value::Int(neg, l))
            }
            (Type::Nat8, Type::Nat8) => Ok(Value::Nat8(self.byte()?)),
            (Type::Nat16, Type::Nat16) => Ok(Value::Nat16(u16::from_le_bytes(self.fixed()?))),
            (Type::Nat32, Type::Nat32) => Ok(Value::Nat32(u32::from_le_bytes(self.fixed()?))),
            (Type::Nat64, Type::Nat64) => Ok(Value::Nat64(u64::from_le_bytes(self.fixed()?))),
            (Type::Int8, Type::Int8) => Ok(Value::Int8(self.byte()? as i8)),
            (Type::Int16, Type::Int16) => Ok(Value::Int16(i16::from_le_bytes(self.fixed()?))),
            (Type::Int32, Type::Int32) => Ok(Value::Int32(i32::from_le_bytes(self.fixed()?))),
            (Type::Int64, Type::Int64) => Ok(Value::Int64(i64::from_le_bytes(self.fixed()?))),
            (Type::Float32, Type::Float32) => Ok(Value::Float32(u32::from_le_bytes(self.fixed()?))),
            (Type::Float64, Type::Float64) => Ok(Value::Float64(u64::from_le_bytes(self.fixed()?))),
            (Type::Text, Type::Text) => Ok(Value::Text(self.text()?)),
            (Type::Principal, Type::Principal) => Ok(Value::Principal(self.principal()?)),
            (Type::Vec(wi), Type::Vec(ei)) => self.vec_value(wi, ei),
            (Type::Record(wf), Type::Record(ef)) => self.record_value(wf, ef),
            (Type::Variant(wa), Type::Variant(ea)) => self.variant_value(wa, ea),
            (Type::Service(_), Type::Principal) => Ok(Value::Principal(self.principal()?)),
            (Type::Func(_), Type::Func(_)) | (Type::Service(_), Type::Service(_))
                if !self.subtype(&w, &e, &mut Vec::new(), 0) =>
            {
                self.skip(&w)?;
                Err(DecodeError::TypeMismatch)
            }
            (Type::Func(_), Type::Func(_)) => {
                if self.byte()? != 1 {
                    return Err(DecodeError::BadValue);
                }
                let p = self.principal()?;
                let m = self.text()?;
                Ok(Value::Func(p, m))
            }
            (Type::Service(_), Type::Service(_)) => Ok(Value::Service(self.principal()?)),
            _ => Err(DecodeError::TypeMismatch),
        }
    }

    fn opt_value(&mut self, w: &Type, inner: &Type) -> Result<Value> {
        match w {
            Type::Null => Ok(Value::Opt(None)),
            Type::Reserved => Ok(Value::Opt(None)),
            Type::Opt(wi) => match self.byte()? {
                0 => Ok(Value::Opt(None)),
                1 => {
                    let wi = (**wi).clone();
                    self.coerce_or_null(&wi, inner)
                }
                _ => Err(DecodeError::BadValue),
            },
            other => {
                // `t <: opt T` when `t <: T` and `T` is not null/opt/reserved.
                let e = self.exp_resolve(inner)?;
                if self.opt_cycle(&e) {
                    // `fix opt`: no non-opt type to decode into, ever.
                    return Err(DecodeError::TypeMismatch);
                }
                if matches!(e, Type::Null | Type::Opt(_) | Type::Reserved) {
                    self.skip(other)?;
                    return Ok(Value::Opt(None));
                }
                let other = other.clone();
                self.coerce_or_null(&other, inner)
            }
        }
    }

    /// Decodes `wire` as `exp`; if the types do not match, skips the value and yields null.
    fn coerce_or_null(&mut self, wire: &Type, exp: &Type) -> Result<Value> {
        let start = self.pos;
        let depth = self.depth;
        match self.value(wire, exp) {
            Ok(v) => Ok(Value::Opt(Some(Box::new(v)))),
            Err(DecodeError::TypeMismatch) => {
                self.pos = start;
                self.depth = depth;
                self.skip(wire)?;
                Ok(Value::Opt(None))
            }
            Err(e) => Err(e),
        }
    }

    fn vec_value(&mut self, wi: &Type, ei: &Type) -> Result<Value> {
        let n = self.leb_u64()?;
        let wr = self.wire_resolve(wi)?;
        let er = self.exp_resolve(ei)?;
        if wr == Type::Nat8 && er == Type::Nat8 {
            let n = usize::try_from(n).map_err(|_| DecodeError::UnexpectedEnd)?;
            self.charge(n as u64 / 64)?;
            return Ok(Value::Blob(self.take(n)?.to_vec()));
        }
        self.charge(n)?;
        let mut items = Vec::new();
        for _ in 0..n {
            items.push(self.value(wi, ei)?);
        }
        Ok(Value::Vec(items))
    }

    fn record_value(&mut self, wf: &[(u32, Type)], ef: &[(u32, Type)]) -> Result<Value> {
        let mut out: Vec<(u32, Value)> = Vec::with_capacity(ef.len());
        for (id, wt) in wf {
            match ef.iter().find(|(eid, _)| eid == id) {
                Some((_, et)) => {
                    let v = self.value(wt, et)?;
                    out.push((*id, v));
                }
                None => self.skip(wt)?,
            }
        }
        for (id, et) in ef {
            if !out.iter().any(|(i, _)| i == id) {
                let v = match self.default_for_missing(et) {
                    Ok(v) => v,
                    Err(_) => return Err(DecodeError::TypeMismatch),
                };
                out.push((*id, v));
            }
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(Value::Record(out))
    }

    fn variant_value(&mut self, wa: &[(u32, Type)], ea: &[(u32, Type)]) -> Result<Value> {
        let idx = self.leb_usize()?;
        let (id, wt) = wa.get(idx).ok_or(DecodeError::BadValue)?;
        let (_, et) = ea
            .iter()
            .find(|(eid, _)| eid == id)
            .ok_or(DecodeError::TypeMismatch)?;
        let v = self.value(wt, et)?;
        Ok(Value::Variant(*id, Box::new(v)))
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn text(&mut self) -> Result<String> {
        let n = self.leb_usize()?;
        self.charge(n as u64 / 64)?;
        let s = self.take(n)?;
        core::str::from_utf8(s)
            .map(String::from)
            .map_err(|_| DecodeError::BadUtf8)
    }

    fn principal(&mut self) -> Result<Principal> {
        if self.byte()? != 1 {
            return Err(DecodeError::BadValue);
        }
        let n = self.leb_usize()?;
        let s = self.take(n)?;
        Principal::from_slice(s).map_err(|_| DecodeError::BadValue)
    }

    /// Skips one value of wire type `t`.
    fn skip(&mut self, t: &Type) -> Result<()> {
        self.enter()?;
        let r = self.skip_inner(t);
        self.depth -= 1;
        r
    }

    fn skip_inner(&mut self, t: &Type) -> Result<()> {
        let t = self.wire_resolve(t)?;
        match t {
            Type::Null | Type::Reserved => Ok(()),
            Type::Empty => Err(DecodeError::TypeMismatch),
            Type::Bool => match self.byte()? {
                0 | 1 => Ok(()),
                _ => Err(DecodeError::BadValue),
            },
            Type::Nat => self.leb_limbs().map(|_| ()),
            Type::Int => self.sleb_limbs().map(|_| ()),
            Type::Nat8 | Type::Int8 => self.take(1).map(|_| ()),
            Type::Nat16 | Type::Int16 => self.take(2).map(|_| ()),
            Type::Nat32 | Type::Int32 | Type::Float32 => self.take(4).map(|_| ()),
            Type::Nat64 | Type::Int64 | Type::Float64 => self.take(8).map(|_| ()),
            Type::Text => self.text().map(|_| ()),
            Type::Principal | Type::Service(_) => self.principal().map(|_| ()),
            Type::Opt(inner) => match self.byte()? {
                0 => Ok(()),
                1 => self.skip(&inner),
                _ => Err(DecodeError::BadValue),
            },
            Type::Vec(inner) => {
                let n = self.leb_u64()?;
                if self.wire_resolve(&inner)? == Type::Nat8 {
                    let n = usize::try_from(n).map_err(|_| DecodeError::UnexpectedEnd)?;
                    return self.take(n).map(|_| ());
                }
                self.charge(n)?;
                for _ in 0..n {
                    self.skip(&inner)?;
                }
                Ok(())
            }
            Type::Record(fields) => {
                for (_, ft) in fields.iter() {
                    self.skip(ft)?;
                }
                Ok(())
            }
            Type::Variant(alts) => {
                let idx = self.leb_usize()?;
                let (_, at) = alts.get(idx).ok_or(DecodeError::BadValue)?;
                let at = at.clone();
                self.skip(&at)
            }
            Type::Func(_) => {
                if self.byte()? != 1 {
                    return Err(DecodeError::BadValue);
                }
                self.principal()?;
                self.text().map(|_| ())
            }
            Type::Future => {
                let len = self.leb_usize()?;
                let _refs = self.leb_usize()?;
                self.take(len).map(|_| ())
            }
            Type::Var(_) => Err(DecodeError::BadTypeTable),
        }
    }

    /// Whether an expected `opt` chain loops back on itself without reaching another type.
    fn opt_cycle(&self, t: &Type) -> bool {
        let mut cur = t.clone();
        for _ in 0..=self.env.defs.len() + 1 {
            match cur {
                Type::Opt(inner) => match self.env.resolve(&inner) {
                    Some(r) => cur = r.clone(),
                    None => return false,
                },
                _ => return false,
            }
        }
        true
    }

    fn exp_opt_like(&self, t: &Type) -> bool {
        matches!(
            self.env.resolve(t),
            Some(Type::Null | Type::Opt(_) | Type::Reserved)
        )
    }

    /// The subtype relation `wire <: expected` on types (for function and service
    /// references). `seen` holds assumed pairs, so recursive types terminate.
    fn subtype(&mut self, w: &Type, e: &Type, seen: &mut Vec<(Type, Type)>, depth: usize) -> bool {
        if depth > DECODE_DEPTH_MAX || self.charge(1).is_err() {
            return false;
        }
        let key = (w.clone(), e.clone());
        if seen.contains(&key) {
            return true;
        }
        let (Some(wr), Some(er)) = (self.wire.resolve(w).cloned(), self.env.resolve(e).cloned())
        else {
            return false;
        };
        if matches!((w, e), (Type::Var(_), _) | (_, Type::Var(_))) {
            seen.push(key);
        }
        match (&wr, &er) {
            (_, Type::Reserved) | (Type::Empty, _) | (_, Type::Opt(_)) => true,
            (Type::Nat, Type::Int) => true,
            (Type::Vec(a), Type::Vec(b)) => self.subtype(a, b, seen, depth + 1),
            (Type::Record(wf), Type::Record(ef)) => {
                ef.iter()
                    .all(|(id, et)| match wf.iter().find(|(i, _)| i == id) {
                        Some((_, wt)) => self.subtype(wt, et, seen, depth + 1),
                        None => self.exp_opt_like(et),
                    })
            }
            (Type::Variant(wa), Type::Variant(ea)) => {
                wa.iter()
                    .all(|(id, wt)| match ea.iter().find(|(i, _)| i == id) {
                        Some((_, et)) => self.subtype(wt, et, seen, depth + 1),
                        None => false,
                    })
            }
            (Type::Func(wf), Type::Func(ef)) => {
                if wf.modes != ef.modes {
                    return false;
                }
                // Arguments are contravariant, results covariant. The argument check runs
                // with the environments swapped, which this decoder cannot express; the
                // tuples are compared by arity and opt-tolerance instead.
                let args_ok = wf.args.iter().enumerate().all(|(i, _)| {
                    i < ef.args.len()
                        || matches!(
                            self.wire.resolve(&wf.args[i]),
                            Some(Type::Null | Type::Opt(_) | Type::Reserved)
                        )
                });
                let results_ok =
                    ef.results
                        .iter()
                        .enumerate()
                        .all(|(i, et)| match wf.results.get(i) {
                            Some(wt) => self.subtype(wt, et, seen, depth + 1),
                            None => self.exp_opt_like(et),
                        });
                args_ok && results_ok
            }
            (Type::Service(wm), Type::Service(em)) => {
                em.iter()
                    .all(|(name, et)| match wm.iter().find(|(n, _)| n == name) {
                        Some((_, wt)) => self.subtype(wt, et, seen, depth + 1),
                        None => false,
                    })
            }
            (a, b) => a == b && is_primitive(a),
        }
    }
}

fn is_primitive(t: &Type) -> bool {
    !matches!(
        t,
        Type::Opt(_)
            | Type::Vec(_)
            | Type::Record(_)
            | Type::Variant(_)
            | Type::Func(_)
            | Type::Service(_)
            | Type::Var(_)
            | Type::Future
    )
}

fn set_bits(limbs: &mut Vec<u64>, bit: usize, chunk: u64) {
    let word = bit / 64;
    let off = bit % 64;
    while limbs.len() <= word + 1 {
        limbs.push(0);
    }
    limbs[word] |= chunk << off;
    if off > 57 {
        limbs[word + 1] |= chunk >> (64 - off);
    }
}

fn refs_in_range(t: &Type, n: usize) -> bool {
    match t {
        Type::Var(i) => (*i as usize) < n,
        Type::Opt(i) | Type::Vec(i) => refs_in_range(i, n),
        Type::Record(f) | Type::Variant(f) => f.iter().all(|(_, t)| refs_in_range(t, n)),
        Type::Func(f) => f
            .args
            .iter()
            .chain(f.results.iter())
            .all(|t| refs_in_range(t, n)),
        Type::Service(m) => m.iter().all(|(_, t)| refs_in_range(t, n)),
        _ => true,
    }
}
