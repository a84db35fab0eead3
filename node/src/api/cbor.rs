//! CBOR as the IC's HTTP interface uses it (reference §1.3): a borrowed value tree decoded with
//! hard limits, and a small canonical writer.
//!
//! Guarantees: decoding never panics and never allocates more than the input could describe
//! (every declared length is capped by the bytes that remain), nesting is bounded by
//! [`CBOR_DEPTH_MAX`], and trailing bytes are an error. Byte and text strings borrow from the
//! input. The writer emits definite lengths in the shortest head, as serde_cbor does, and
//! [`SELF_DESCRIBE_TAG`] where the IC writes it.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use minicbor::data::Type;
use minicbor::Decoder;

/// The self-describing tag (`D9 D9 F7`) the IC puts on every body and certificate.
pub const SELF_DESCRIBE_TAG: u64 = 55799;
/// The bignum tag for naturals above `u64::MAX`.
const TAG_POSITIVE_BIGNUM: u64 = 2;
/// Most data items in one decoded value. A 5 MiB body of one-byte items would otherwise
/// become millions of `Value`s; the largest legitimate request (1000 read_state paths of 127
/// labels) has about 128,000.
pub const CBOR_ITEMS_MAX: usize = 200_000;
/// Deepest nesting accepted. Hash trees of real certificates nest fork inside fork; 40 node
/// keys of a mainnet subnet reach about 20 levels, so this leaves ample room.
pub const CBOR_DEPTH_MAX: usize = 128;

/// A decoded CBOR data item. Strings borrow from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// Major type 0.
    Uint(u64),
    /// Major type 1: the value is `-1 - n`.
    Nint(u64),
    /// A natural larger than u64 (tag 2 bignum), big-endian magnitude.
    BigUint(&'a [u8]),
    Bytes(&'a [u8]),
    Text(&'a str),
    Array(Vec<Value<'a>>),
    /// Pairs in input order; duplicates are kept so callers can refuse them.
    Map(Vec<(Value<'a>, Value<'a>)>),
    Tag(u64, Box<Value<'a>>),
    Bool(bool),
    Null,
    Undefined,
    /// Floats and simple values are carried, never interpreted (no floats in the node).
    Other,
}

/// Why bytes are not the CBOR we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CborError {
    /// The input ended inside an item, or an item is malformed.
    Malformed,
    /// Nesting deeper than [`CBOR_DEPTH_MAX`].
    TooDeep,
    /// More than [`CBOR_ITEMS_MAX`] items.
    TooManyItems,
    /// Bytes follow the top-level item.
    TrailingBytes,
    /// Indefinite-length byte or text strings (no IC client sends them).
    Unsupported,
}

impl fmt::Display for CborError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CborError::Malformed => "malformed CBOR",
            CborError::TooDeep => "CBOR nested too deeply",
            CborError::TooManyItems => "CBOR has too many items",
            CborError::TrailingBytes => "trailing bytes after CBOR item",
            CborError::Unsupported => "unsupported CBOR (indefinite-length string)",
        })
    }
}

impl From<minicbor::decode::Error> for CborError {
    fn from(_: minicbor::decode::Error) -> Self {
        // Truncation, a bad head, invalid UTF-8: all one thing to a client, 400.
        CborError::Malformed
    }
}

/// Decodes exactly one item spanning all of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Value<'_>, CborError> {
    let mut d = Decoder::new(bytes);
    let mut items = 0;
    let v = decode_item(&mut d, 0, &mut items)?;
    if d.position() != bytes.len() {
        return Err(CborError::TrailingBytes);
    }
    Ok(v)
}

fn decode_item<'a>(
    d: &mut Decoder<'a>,
    depth: usize,
    items: &mut usize,
) -> Result<Value<'a>, CborError> {
    if depth > CBOR_DEPTH_MAX {
        return Err(CborError::TooDeep);
    }
    *items += 1;
    if *items > CBOR_ITEMS_MAX {
        return Err(CborError::TooManyItems);
    }
    let v = match d.datatype()? {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Value::Uint(d.u64()?),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            let i: i128 = d.int()?.into();
            if i >= 0 {
                Value::Uint(u64::try_from(i).map_err(|_| CborError::Malformed)?)
            } else {
                Value::Nint(u64::try_from(-1 - i).map_err(|_| CborError::Malformed)?)
            }
        }
        Type::Bytes => Value::Bytes(d.bytes()?),
        Type::String => Value::Text(d.str()?),
        Type::BytesIndef | Type::StringIndef => return Err(CborError::Unsupported),
        Type::Array | Type::ArrayIndef => decode_array(d, depth, items)?,
        Type::Map | Type::MapIndef => decode_map(d, depth, items)?,
        Type::Tag => {
            let tag = d.tag()?.as_u64();
            let inner = decode_item(d, depth + 1, items)?;
            match (tag, inner) {
                (TAG_POSITIVE_BIGNUM, Value::Bytes(b)) => Value::BigUint(b),
                (tag, inner) => Value::Tag(tag, Box::new(inner)),
            }
        }
        Type::Bool => Value::Bool(d.bool()?),
        Type::Null => {
            d.null()?;
            Value::Null
        }
        Type::Undefined => {
            d.undefined()?;
            Value::Undefined
        }
        Type::F16 | Type::F32 | Type::F64 | Type::Simple => {
            d.skip()?;
            Value::Other
        }
        Type::Break | Type::Unknown(_) => return Err(CborError::Malformed),
    };
    Ok(v)
}

/// Remaining input bytes: an upper bound on how many items can still follow.
fn remaining(d: &Decoder<'_>) -> usize {
    d.input().len().saturating_sub(d.position())
}

/// Reads items until `count` are read, or, for indefinite lengths, until the break byte.
fn decode_array<'a>(
    d: &mut Decoder<'a>,
    depth: usize,
    count: &mut usize,
) -> Result<Value<'a>, CborError> {
    let len = d.array()?;
    let mut items = Vec::with_capacity(capacity(len, remaining(d)));
    match len {
        Some(n) => {
            for _ in 0..n {
                items.push(decode_item(d, depth + 1, count)?);
            }
        }
        None => {
            while d.datatype()? != Type::Break {
                items.push(decode_item(d, depth + 1, count)?);
            }
            d.set_position(d.position() + 1);
        }
    }
    Ok(Value::Array(items))
}

fn decode_map<'a>(
    d: &mut Decoder<'a>,
    depth: usize,
    count: &mut usize,
) -> Result<Value<'a>, CborError> {
    let len = d.map()?;
    let mut pairs = Vec::with_capacity(capacity(len, remaining(d) / 2));
    match len {
        Some(n) => {
            for _ in 0..n {
                let k = decode_item(d, depth + 1, count)?;
                let v = decode_item(d, depth + 1, count)?;
                pairs.push((k, v));
            }
        }
        None => {
            while d.datatype()? != Type::Break {
                let k = decode_item(d, depth + 1, count)?;
                let v = decode_item(d, depth + 1, count)?;
                pairs.push((k, v));
            }
            d.set_position(d.position() + 1);
        }
    }
    Ok(Value::Map(pairs))
}

fn capacity(declared: Option<u64>, bound: usize) -> usize {
    match declared {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(bound),
        None => 0,
    }
}

impl<'a> Value<'a> {
    /// The value under any number of self-describe tags.
    pub fn untagged(&self) -> &Value<'a> {
        let mut v = self;
        while let Value::Tag(SELF_DESCRIBE_TAG, inner) = v {
            v = inner;
        }
        v
    }

    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self.untagged() {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<&'a str> {
        match self.untagged() {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self.untagged() {
            Value::Uint(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value<'a>]> {
        match self.untagged() {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Value<'a>, Value<'a>)]> {
        match self.untagged() {
            Value::Map(pairs) => Some(pairs),
            _ => None,
        }
    }
}

/// A map with text keys, each key at most once: the shape of every IC record.
pub struct Record<'v, 'a> {
    pairs: &'v [(Value<'a>, Value<'a>)],
}

impl<'v, 'a> Record<'v, 'a> {
    /// Checks that `value` is a map whose keys are distinct texts.
    pub fn new(value: &'v Value<'a>) -> Result<Record<'v, 'a>, FieldError> {
        let pairs = value.as_map().ok_or(FieldError::NotARecord)?;
        // Sorting keeps the duplicate check O(n log n) for hostile maps with many keys.
        let mut keys = pairs
            .iter()
            .map(|(k, _)| k.as_text().ok_or(FieldError::NotARecord))
            .collect::<Result<Vec<&str>, FieldError>>()?;
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(FieldError::DuplicateKey);
        }
        Ok(Record { pairs })
    }

    pub fn get(&self, key: &str) -> Option<&'v Value<'a>> {
        self.pairs
            .iter()
            .find(|(k, _)| k.as_text() == Some(key))
            .map(|(_, v)| v)
    }

    pub fn keys(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.pairs.iter().filter_map(|(k, _)| k.as_text())
    }

    pub fn bytes(&self, key: &'static str) -> Result<&'a [u8], FieldError> {
        self.get(key)
            .ok_or(FieldError::Missing(key))?
            .as_bytes()
            .ok_or(FieldError::WrongType(key))
    }

    pub fn opt_bytes(&self, key: &'static str) -> Result<Option<&'a [u8]>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bytes().map(Some).ok_or(FieldError::WrongType(key)),
        }
    }

    pub fn text(&self, key: &'static str) -> Result<&'a str, FieldError> {
        self.get(key)
            .ok_or(FieldError::Missing(key))?
            .as_text()
            .ok_or(FieldError::WrongType(key))
    }

    pub fn u64(&self, key: &'static str) -> Result<u64, FieldError> {
        self.get(key)
            .ok_or(FieldError::Missing(key))?
            .as_u64()
            .ok_or(FieldError::WrongType(key))
    }
}

/// Why a decoded map is not the record we expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldError {
    NotARecord,
    DuplicateKey,
    Missing(&'static str),
    WrongType(&'static str),
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldError::NotARecord => f.write_str("expected a map with text keys"),
            FieldError::DuplicateKey => f.write_str("duplicate map key"),
            FieldError::Missing(k) => write!(f, "missing field `{k}`"),
            FieldError::WrongType(k) => write!(f, "field `{k}` has the wrong type"),
        }
    }
}

/// An append-only CBOR writer with definite lengths and shortest heads.
#[derive(Default)]
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer { out: Vec::new() }
    }

    /// A writer whose first item is the self-describe tag.
    pub fn self_describing() -> Writer {
        let mut w = Writer::new();
        w.tag(SELF_DESCRIBE_TAG);
        w
    }

    fn head(&mut self, major: u8, n: u64) {
        let m = major << 5;
        if n < 24 {
            self.out.push(m | n as u8);
        } else if n <= 0xff {
            self.out.extend_from_slice(&[m | 24, n as u8]);
        } else if n <= 0xffff {
            self.out.push(m | 25);
            self.out.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n <= 0xffff_ffff {
            self.out.push(m | 26);
            self.out.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            self.out.push(m | 27);
            self.out.extend_from_slice(&n.to_be_bytes());
        }
    }

    pub fn u64(&mut self, n: u64) -> &mut Self {
        self.head(0, n);
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.head(2, b.len() as u64);
        self.out.extend_from_slice(b);
        self
    }

    pub fn text(&mut self, s: &str) -> &mut Self {
        self.head(3, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
        self
    }

    pub fn array(&mut self, len: usize) -> &mut Self {
        self.head(4, len as u64);
        self
    }

    pub fn map(&mut self, len: usize) -> &mut Self {
        self.head(5, len as u64);
        self
    }

    pub fn tag(&mut self, tag: u64) -> &mut Self {
        self.head(6, tag);
        self
    }

    /// Appends bytes that are already one encoded item.
    pub fn raw(&mut self, encoded: &[u8]) -> &mut Self {
        self.out.extend_from_slice(encoded);
        self
    }

    /// Writes any decoded value back (used by tests and for re-encoding trees).
    pub fn value(&mut self, v: &Value<'_>) -> &mut Self {
        match v {
            Value::Uint(n) => self.u64(*n),
            Value::Nint(n) => {
                self.head(1, *n);
                self
            }
            Value::BigUint(b) => self.tag(TAG_POSITIVE_BIGNUM).bytes(b),
            Value::Bytes(b) => self.bytes(b),
            Value::Text(t) => self.text(t),
            Value::Array(items) => {
                self.array(items.len());
                items.iter().for_each(|i| {
                    self.value(i);
                });
                self
            }
            Value::Map(pairs) => {
                self.map(pairs.len());
                pairs.iter().for_each(|(k, v)| {
                    self.value(k).value(v);
                });
                self
            }
            Value::Tag(t, inner) => self.tag(*t).value(inner),
            Value::Bool(b) => self.raw(&[if *b { 0xf5 } else { 0xf4 }]),
            Value::Null => self.raw(&[0xf6]),
            Value::Undefined | Value::Other => self.raw(&[0xf7]),
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.out
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_limits() {
        let mut w = Writer::self_describing();
        w.map(2).text("a").u64(1_000_000).text("b").array(2);
        w.bytes(&[1, 2]).text("x");
        let bytes = w.into_bytes();
        let v = decode(&bytes).unwrap();
        let r = Record::new(v.untagged()).unwrap();
        assert_eq!(r.u64("a"), Ok(1_000_000));
        assert_eq!(Writer::new().value(&v).as_slice(), &bytes[..]);

        // Truncation anywhere is an error, never a panic.
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err());
        }
        // Trailing bytes.
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(CborError::TrailingBytes));
        // A huge declared array length does not preallocate.
        assert!(decode(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Too many items.
        let mut many = alloc::vec![0x9a, 0x00, 0x04, 0x00, 0x00];
        many.extend(core::iter::repeat_n(0u8, 0x40000));
        assert_eq!(decode(&many), Err(CborError::TooManyItems));
        // Deep nesting.
        let deep = [0x81u8; 1000];
        assert_eq!(decode(&deep), Err(CborError::TooDeep));
        // Indefinite arrays and maps are accepted.
        let v = decode(&[0x9f, 0x01, 0x02, 0xff]).unwrap();
        assert_eq!(v, Value::Array(alloc::vec![Value::Uint(1), Value::Uint(2)]));
        let v = decode(&[0xbf, 0x61, 0x61, 0x01, 0xff]).unwrap();
        assert_eq!(Record::new(&v).unwrap().u64("a"), Ok(1));
        // Duplicate keys are refused by records.
        let v = decode(&[0xa2, 0x61, 0x61, 0x01, 0x61, 0x61, 0x02]).unwrap();
        assert_eq!(Record::new(&v).err(), Some(FieldError::DuplicateKey));
    }
}
