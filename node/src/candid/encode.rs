//! Candid encoding of typed values (no recursive types: the node never writes them).

use alloc::vec::Vec;

use super::{Type, Value, MAGIC};

/// Builds a Candid message: a type table (deduplicated) and the argument values.
#[derive(Default)]
pub struct Encoder {
    table: Vec<Type>,
    table_bytes: Vec<Vec<u8>>,
}

/// Encodes `(type, value)` pairs as one Candid message. Returns `None` when a value does
/// not match its type (a bug in the caller, never caused by outside input).
pub fn encode_args(args: &[(Type, Value)]) -> Option<Vec<u8>> {
    let mut enc = Encoder::default();
    let mut arg_refs = Vec::new();
    for (t, _) in args {
        arg_refs.push(enc.type_ref(t)?);
    }
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    leb(&mut out, enc.table_bytes.len() as u64);
    for b in &enc.table_bytes {
        out.extend_from_slice(b);
    }
    leb(&mut out, args.len() as u64);
    for r in arg_refs {
        sleb(&mut out, r);
    }
    for (t, v) in args {
        write_value(&mut out, t, v)?;
    }
    Some(out)
}

impl Encoder {
    /// The SLEB code of a type: a negative primitive code or a table index.
    fn type_ref(&mut self, t: &Type) -> Option<i64> {
        let prim = match t {
            Type::Null => -1,
            Type::Bool => -2,
            Type::Nat => -3,
            Type::Int => -4,
            Type::Nat8 => -5,
            Type::Nat16 => -6,
            Type::Nat32 => -7,
            Type::Nat64 => -8,
            Type::Int8 => -9,
            Type::Int16 => -10,
            Type::Int32 => -11,
            Type::Int64 => -12,
            Type::Float32 => -13,
            Type::Float64 => -14,
            Type::Text => -15,
            Type::Reserved => -16,
            Type::Empty => -17,
            Type::Principal => -24,
            Type::Var(_) | Type::Future => return None,
            _ => 0,
        };
        if prim != 0 {
            return Some(prim);
        }
        if let Some(i) = self.table.iter().position(|x| x == t) {
            return Some(i as i64);
        }
        let mut b = Vec::new();
        match t {
            Type::Opt(i) => {
                sleb(&mut b, -18);
                let r = self.type_ref(i)?;
                sleb(&mut b, r);
            }
            Type::Vec(i) => {
                sleb(&mut b, -19);
                let r = self.type_ref(i)?;
                sleb(&mut b, r);
            }
            Type::Record(f) | Type::Variant(f) => {
                sleb(
                    &mut b,
                    if matches!(t, Type::Record(_)) {
                        -20
                    } else {
                        -21
                    },
                );
                leb(&mut b, f.len() as u64);
                for (id, ft) in f {
                    leb(&mut b, *id as u64);
                    let r = self.type_ref(ft)?;
                    sleb(&mut b, r);
                }
            }
            Type::Func(f) => {
                sleb(&mut b, -22);
                leb(&mut b, f.args.len() as u64);
                for a in &f.args {
                    let r = self.type_ref(a)?;
                    sleb(&mut b, r);
                }
                leb(&mut b, f.results.len() as u64);
                for a in &f.results {
                    let r = self.type_ref(a)?;
                    sleb(&mut b, r);
                }
                leb(&mut b, f.modes.len() as u64);
                b.extend_from_slice(&f.modes);
            }
            Type::Service(m) => {
                sleb(&mut b, -23);
                leb(&mut b, m.len() as u64);
                for (name, mt) in m {
                    leb(&mut b, name.len() as u64);
                    b.extend_from_slice(name.as_bytes());
                    let r = self.type_ref(mt)?;
                    sleb(&mut b, r);
                }
            }
            _ => return None,
        }
        self.table.push(t.clone());
        self.table_bytes.push(b);
        Some(self.table.len() as i64 - 1)
    }
}

fn write_value(out: &mut Vec<u8>, t: &Type, v: &Value) -> Option<()> {
    match (t, v) {
        (Type::Null, Value::Null) | (Type::Reserved, _) => {}
        (Type::Bool, Value::Bool(b)) => out.push(*b as u8),
        (Type::Nat, Value::Nat(l)) => leb_limbs(out, l),
        (Type::Int, Value::Int(neg, l)) => sleb_limbs(out, *neg, l),
        (Type::Int, Value::Nat(l)) => sleb_limbs(out, false, l),
        (Type::Nat8, Value::Nat8(n)) => out.push(*n),
        (Type::Nat16, Value::Nat16(n)) => out.extend_from_slice(&n.to_le_bytes()),
        (Type::Nat32, Value::Nat32(n)) => out.extend_from_slice(&n.to_le_bytes()),
        (Type::Nat64, Value::Nat64(n)) => out.extend_from_slice(&n.to_le_bytes()),
        (Type::Int8, Value::Int8(n)) => out.extend_from_slice(&n.to_le_bytes()),
        (Type::Int16, Value::Int16(n)) => out.extend_from_slice(&n.to_le_bytes()),
        (Type::Int32, Value::Int32(n)) => out.extend_from_slice(&n.to_le_bytes()),
        (Type::Int64, Value::Int64(n)) => out.extend_from_slice(&n.to_le_bytes()),
        (Type::Float32, Value::Float32(n)) => out.extend_from_slice(&n.to_le_bytes()),
        (Type::Float64, Value::Float64(n)) => out.extend_from_slice(&n.to_le_bytes()),
        (Type::Text, Value::Text(s)) => {
            leb(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        (Type::Principal, Value::Principal(p)) | (Type::Service(_), Value::Service(p)) => {
            principal(out, p.as_slice())
        }
        (Type::Opt(_), Value::Opt(None)) => out.push(0),
        (Type::Opt(i), Value::Opt(Some(x))) => {
            out.push(1);
            write_value(out, i, x)?;
        }
        (Type::Vec(i), Value::Blob(b)) if **i == Type::Nat8 => {
            leb(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        (Type::Vec(i), Value::Vec(items)) => {
            leb(out, items.len() as u64);
            for x in items {
                write_value(out, i, x)?;
            }
        }
        (Type::Record(fields), Value::Record(vals)) => {
            for (id, ft) in fields {
                let (_, fv) = vals.iter().find(|(vid, _)| vid == id)?;
                write_value(out, ft, fv)?;
            }
        }
        (Type::Variant(alts), Value::Variant(id, x)) => {
            let idx = alts.iter().position(|(aid, _)| aid == id)?;
            leb(out, idx as u64);
            write_value(out, &alts[idx].1, x)?;
        }
        (Type::Func(_), Value::Func(p, m)) => {
            out.push(1);
            principal(out, p.as_slice());
            leb(out, m.len() as u64);
            out.extend_from_slice(m.as_bytes());
        }
        _ => return None,
    }
    Some(())
}

fn principal(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(1);
    leb(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Unsigned LEB128.
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

/// Signed LEB128.
pub fn sleb(out: &mut Vec<u8>, mut n: i64) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        let done = (n == 0 && b & 0x40 == 0) || (n == -1 && b & 0x40 != 0);
        if done {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn leb_limbs(out: &mut Vec<u8>, limbs: &[u64]) {
    if limbs.len() <= 1 {
        leb(out, limbs.first().copied().unwrap_or(0));
        return;
    }
    let mut bits = limbs.to_vec();
    loop {
        let b = (bits[0] & 0x7f) as u8;
        shr7(&mut bits);
        if bits.iter().all(|x| *x == 0) {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn sleb_limbs(out: &mut Vec<u8>, negative: bool, limbs: &[u64]) {
    if limbs.len() <= 1 {
        let m = limbs.first().copied().unwrap_or(0);
        if m <= i64::MAX as u64 {
            let v = if negative { -(m as i64) } else { m as i64 };
            sleb(out, v);
            return;
        }
        if negative && m == 1u64 << 63 {
            sleb(out, i64::MIN);
            return;
        }
    }
    // Wide values: two's complement over enough limbs, then 7 bits at a time.
    let mut bits = limbs.to_vec();
    bits.push(0);
    if negative {
        let mut carry = 1u64;
        for l in bits.iter_mut() {
            let (v, c) = (!*l).overflowing_add(carry);
            *l = v;
            carry = c as u64;
        }
    }
    loop {
        let b = (bits[0] & 0x7f) as u8;
        shr7_signed(&mut bits);
        let rest_zero = bits.iter().all(|x| *x == 0);
        let rest_ones = bits.iter().all(|x| *x == u64::MAX);
        if (rest_zero && b & 0x40 == 0) || (rest_ones && b & 0x40 != 0) {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn shr7(bits: &mut [u64]) {
    let n = bits.len();
    for i in 0..n {
        let hi = if i + 1 < n { bits[i + 1] << 57 } else { 0 };
        bits[i] = (bits[i] >> 7) | hi;
    }
}

fn shr7_signed(bits: &mut [u64]) {
    let n = bits.len();
    let sign = bits.last().map(|x| x >> 63).unwrap_or(0);
    for i in 0..n {
        let hi = if i + 1 < n {
            bits[i + 1] << 57
        } else if sign == 1 {
            0x7fu64 << 57
        } else {
            0
        };
        bits[i] = (bits[i] >> 7) | hi;
    }
}
