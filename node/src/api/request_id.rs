//! The representation-independent hash (IC interface spec §hash-of-map; reference §1.4) and
//! request ids.
//!
//! `hash_of_map(m) = SHA-256(concat(sort([SHA-256(key) ‖ hash_value(v)])))`: the hash depends
//! on the values, not on the CBOR bytes, key order or integer width, so agents and nodes
//! agree on a request id however the envelope was encoded. Every signature over a request,
//! a delegation or a query response signs such a hash behind its domain separator.

use super::cbor::Value;
use alloc::vec::Vec;
use core::fmt;
use sha2::{Digest, Sha256};

/// A 32-byte request id.
pub type RequestId = [u8; 32];

/// Why a value has no representation-independent hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashError {
    /// A map key is not text.
    NonTextKey,
    /// Floats, booleans, null and other simple values have no defined hash.
    Unhashable,
}

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HashError::NonTextKey => "map key is not text",
            HashError::Unhashable => "value has no representation-independent hash",
        })
    }
}

/// Shortest unsigned LEB128 of `n` (624485 → e5 8e 26).
pub fn uleb128(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Shortest signed LEB128 of `n` (−123456 → c0 bb 78).
pub fn sleb128(mut n: i128, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        let sign_clear = byte & 0x40 == 0;
        if (n == 0 && sign_clear) || (n == -1 && !sign_clear) {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Unsigned LEB128 of a big-endian magnitude of any length.
fn uleb128_big(be: &[u8], out: &mut Vec<u8>) {
    // Repeated division by 128 over the big-endian digits; bignums here are rare and short.
    let mut digits: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
    loop {
        let mut rem: u16 = 0;
        for d in digits.iter_mut() {
            let cur = (rem << 8) | u16::from(*d);
            *d = (cur >> 7) as u8;
            rem = cur & 0x7f;
        }
        while digits.first() == Some(&0) {
            digits.remove(0);
        }
        if digits.is_empty() {
            out.push(rem as u8);
            return;
        }
        out.push(rem as u8 | 0x80);
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// `hash_value` of the spec for one CBOR value.
pub fn hash_value(v: &Value<'_>) -> Result<[u8; 32], HashError> {
    let mut buf = Vec::new();
    match v.untagged() {
        Value::Bytes(b) => Ok(sha256(b)),
        Value::Text(t) => Ok(sha256(t.as_bytes())),
        Value::Uint(n) => {
            uleb128(*n, &mut buf);
            Ok(sha256(&buf))
        }
        Value::BigUint(be) => {
            uleb128_big(be, &mut buf);
            Ok(sha256(&buf))
        }
        Value::Nint(n) => {
            sleb128(-1 - i128::from(*n), &mut buf);
            Ok(sha256(&buf))
        }
        Value::Array(items) => {
            let mut h = Sha256::new();
            for item in items {
                h.update(hash_value(item)?);
            }
            Ok(h.finalize().into())
        }
        Value::Map(pairs) => hash_of_map(pairs.iter().map(|(k, v)| (k, v))),
        _ => Err(HashError::Unhashable),
    }
}

/// `hash_of_map` over pairs whose keys must be text; duplicate keys are hashed pair by pair.
pub fn hash_of_map<'v, 'a: 'v>(
    pairs: impl Iterator<Item = (&'v Value<'a>, &'v Value<'a>)>,
) -> Result<[u8; 32], HashError> {
    let mut entries: Vec<[u8; 64]> = Vec::new();
    for (k, v) in pairs {
        let key = k.as_text().ok_or(HashError::NonTextKey)?;
        let mut e = [0u8; 64];
        e[..32].copy_from_slice(&sha256(key.as_bytes()));
        e[32..].copy_from_slice(&hash_value(v)?);
        entries.push(e);
    }
    Ok(hash_of_entries(entries))
}

/// Sorts and hashes prepared `H(key) ‖ H(value)` entries.
pub fn hash_of_entries(mut entries: Vec<[u8; 64]>) -> [u8; 32] {
    entries.sort_unstable();
    let mut h = Sha256::new();
    for e in &entries {
        h.update(e);
    }
    h.finalize().into()
}

/// One `H(key) ‖ H(value)` entry from already-hashed parts.
pub fn entry(key: &str, value_hash: [u8; 32]) -> [u8; 64] {
    let mut e = [0u8; 64];
    e[..32].copy_from_slice(&sha256(key.as_bytes()));
    e[32..].copy_from_slice(&value_hash);
    e
}

/// The hash of a nat field, as `hash_value` computes it.
pub fn hash_nat(n: u64) -> [u8; 32] {
    let mut buf = Vec::with_capacity(10);
    uleb128(n, &mut buf);
    sha256(&buf)
}

/// The request id of a decoded `content` map.
pub fn request_id(content: &Value<'_>) -> Result<RequestId, HashError> {
    match content.untagged() {
        Value::Map(pairs) => hash_of_map(pairs.iter().map(|(k, v)| (k, v))),
        _ => Err(HashError::Unhashable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_examples() {
        let mut out = Vec::new();
        uleb128(624485, &mut out);
        assert_eq!(out, [0xe5, 0x8e, 0x26]);
        out.clear();
        sleb128(-123456, &mut out);
        assert_eq!(out, [0xc0, 0xbb, 0x78]);
        out.clear();
        uleb128_big(&[0x09, 0x86, 0xbf], &mut out);
        let mut small = Vec::new();
        uleb128(0x0986bf, &mut small);
        assert_eq!(out, small);
        out.clear();
        uleb128_big(&[], &mut out);
        assert_eq!(out, [0]);
    }
}
