//! A canonical byte encoding of the replicated state's parts, for checkpoint files
//! (`crate::routing::checkpoint` lays them out as files).
//!
//! Fixed-width little-endian integers, `u64` length prefixes, collections in their
//! (ordered) iteration order. Encoding is a function of the value: equal states give equal
//! bytes on every node. Decoding never panics: every length is checked against the bytes
//! that remain before anything is allocated, ordered maps must come in strictly increasing
//! key order (so every value has exactly one encoding), and enum tags outside their range
//! are errors. The encoders destructure every struct by field name, so a field added to the
//! state fails to compile here until it is encoded.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use super::{
    CallContext, CallOrigin, Callback, CanisterMessage, CanisterStatus, Ingress, IngressStatus,
    Payload, Reject, RejectCode, Request, RequestId, Response,
};
use crate::execution::message::Output;
use crate::execution::runtime::GlobalValue;
use crate::execution::system_api::WasmClosure;
use crate::types::Principal;

/// Why bytes do not decode (the checkpoint layer adds the file name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.0)
    }
}

pub type Decoded<T> = Result<T, DecodeError>;

/// Appends canonical encodings to a byte vector.
#[derive(Default)]
pub struct Writer {
    pub out: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u128(&mut self, v: u128) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }
    pub fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }
    pub fn fixed(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.fixed(b);
    }
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    pub fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(x) => {
                self.u8(1);
                self.u64(x);
            }
            None => self.u8(0),
        }
    }
    pub fn principal(&mut self, p: &Principal) {
        self.bytes(p.as_slice());
    }
    pub fn reject(&mut self, r: &Reject) {
        let Reject {
            code,
            message,
            error_code,
        } = r;
        self.u8(*code as u8);
        self.str(message);
        self.str(error_code);
    }
    pub fn origin(&mut self, o: &CallOrigin) {
        match o {
            CallOrigin::Ingress { id, sender } => {
                self.u8(0);
                self.fixed(id);
                self.principal(sender);
            }
            CallOrigin::Canister { caller, callback } => {
                self.u8(1);
                self.principal(caller);
                self.u64(*callback);
            }
            CallOrigin::System => self.u8(2),
        }
    }
    pub fn request(&mut self, r: &Request) {
        let Request {
            sender,
            receiver,
            method,
            payload,
            cycles,
            sender_callback,
        } = r;
        self.principal(sender);
        self.principal(receiver);
        self.str(method);
        self.bytes(payload);
        self.u128(*cycles);
        self.u64(*sender_callback);
    }
    pub fn response(&mut self, r: &Response) {
        let Response {
            originator,
            respondent,
            originator_callback,
            payload,
            refund,
        } = r;
        self.principal(originator);
        self.principal(respondent);
        self.u64(*originator_callback);
        match payload {
            Payload::Reply(b) => {
                self.u8(0);
                self.bytes(b);
            }
            Payload::Reject(rj) => {
                self.u8(1);
                self.reject(rj);
            }
        }
        self.u128(*refund);
    }
    pub fn message(&mut self, m: &CanisterMessage) {
        match m {
            CanisterMessage::Ingress(Ingress {
                id,
                sender,
                receiver,
                method,
                arg,
            }) => {
                self.u8(0);
                self.fixed(id);
                self.principal(sender);
                self.principal(receiver);
                self.str(method);
                self.bytes(arg);
            }
            CanisterMessage::Request(r) => {
                self.u8(1);
                self.request(r);
            }
            CanisterMessage::Response(r) => {
                self.u8(2);
                self.response(r);
            }
        }
    }
    pub fn ingress_status(&mut self, s: &IngressStatus) {
        match s {
            IngressStatus::Received => self.u8(0),
            IngressStatus::Processing => self.u8(1),
            IngressStatus::Replied(b) => {
                self.u8(2);
                self.bytes(b);
            }
            IngressStatus::Rejected(r) => {
                self.u8(3);
                self.reject(r);
            }
            IngressStatus::Done => self.u8(4),
        }
    }
    pub fn output(&mut self, o: &Output) {
        match o {
            Output::Request(r) => {
                self.u8(0);
                self.request(r);
            }
            Output::Response(r) => {
                self.u8(1);
                self.response(r);
            }
            Output::Ingress(id, s) => {
                self.u8(2);
                self.fixed(id);
                self.ingress_status(s);
            }
        }
    }
    pub fn status(&mut self, s: CanisterStatus) {
        self.u8(match s {
            CanisterStatus::Running => 1,
            CanisterStatus::Stopping => 2,
            CanisterStatus::Stopped => 3,
        });
    }
    pub fn closure(&mut self, c: &WasmClosure) {
        let WasmClosure { fun, env } = c;
        self.u64(*fun);
        self.u64(*env);
    }
    pub fn call_context(&mut self, cc: &CallContext) {
        let CallContext {
            origin,
            responded,
            outstanding,
            cycles_available,
            method,
        } = cc;
        self.origin(origin);
        self.bool(*responded);
        self.u32(*outstanding);
        self.u128(*cycles_available);
        self.str(method);
    }
    pub fn callback(&mut self, cb: &Callback) {
        let Callback {
            call_context,
            respondent,
            on_reply,
            on_reject,
            on_cleanup,
        } = cb;
        self.u64(*call_context);
        self.principal(respondent);
        self.closure(on_reply);
        self.closure(on_reject);
        match on_cleanup {
            Some(c) => {
                self.u8(1);
                self.closure(c);
            }
            None => self.u8(0),
        }
    }
    pub fn global(&mut self, g: &GlobalValue) {
        match g {
            GlobalValue::I32(x) => {
                self.u8(0);
                self.u64(*x as u32 as u64);
            }
            GlobalValue::I64(x) => {
                self.u8(1);
                self.u64(*x as u64);
            }
            GlobalValue::F32(x) => {
                self.u8(2);
                self.u64(*x as u64);
            }
            GlobalValue::F64(x) => {
                self.u8(3);
                self.u64(*x);
            }
        }
    }
}

/// Reads canonical encodings from a byte slice; every read is bounds-checked.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }
    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Decoded<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError("trailing bytes"))
        }
    }
    pub fn take(&mut self, n: usize) -> Decoded<&'a [u8]> {
        if n > self.rest.len() {
            return Err(DecodeError("truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Decoded<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Decoded<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u32(&mut self) -> Decoded<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Decoded<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn u128(&mut self) -> Decoded<u128> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    pub fn id(&mut self) -> Decoded<RequestId> {
        self.array()
    }
    pub fn hash(&mut self) -> Decoded<[u8; 32]> {
        self.array()
    }
    pub fn bool(&mut self) -> Decoded<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError("bad boolean")),
        }
    }
    /// A collection length; each element takes at least `min_item_bytes` bytes, so a length
    /// the remaining bytes cannot hold is rejected before anything is allocated.
    pub fn count(&mut self, min_item_bytes: usize) -> Decoded<usize> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| DecodeError("length overflows"))?;
        if n.saturating_mul(min_item_bytes.max(1)) > self.rest.len() {
            return Err(DecodeError("length exceeds the data"));
        }
        Ok(n)
    }
    pub fn bytes(&mut self) -> Decoded<Vec<u8>> {
        let n = self.count(1)?;
        Ok(self.take(n)?.to_vec())
    }
    pub fn string(&mut self) -> Decoded<String> {
        let b = self.bytes()?;
        String::from_utf8(b).map_err(|_| DecodeError("string is not UTF-8"))
    }
    pub fn opt_u64(&mut self) -> Decoded<Option<u64>> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.u64()?)),
            _ => Err(DecodeError("bad option tag")),
        }
    }
    pub fn principal(&mut self) -> Decoded<Principal> {
        let n = self.count(1)?;
        let b = self.take(n)?;
        Principal::from_slice(b).map_err(|_| DecodeError("principal longer than 29 bytes"))
    }
    pub fn reject(&mut self) -> Decoded<Reject> {
        let code = match self.u8()? {
            1 => RejectCode::SysFatal,
            2 => RejectCode::SysTransient,
            3 => RejectCode::DestinationInvalid,
            4 => RejectCode::CanisterReject,
            5 => RejectCode::CanisterError,
            _ => return Err(DecodeError("bad reject code")),
        };
        let message = self.string()?;
        let n = self.count(1)?;
        let error_code = static_error_code(self.take(n)?)?;
        Ok(Reject {
            code,
            message,
            error_code,
        })
    }
    pub fn origin(&mut self) -> Decoded<CallOrigin> {
        match self.u8()? {
            0 => Ok(CallOrigin::Ingress {
                id: self.id()?,
                sender: self.principal()?,
            }),
            1 => Ok(CallOrigin::Canister {
                caller: self.principal()?,
                callback: self.u64()?,
            }),
            2 => Ok(CallOrigin::System),
            _ => Err(DecodeError("bad call origin tag")),
        }
    }
    pub fn request(&mut self) -> Decoded<Request> {
        Ok(Request {
            sender: self.principal()?,
            receiver: self.principal()?,
            method: self.string()?,
            payload: self.bytes()?,
            cycles: self.u128()?,
            sender_callback: self.u64()?,
        })
    }
    pub fn response(&mut self) -> Decoded<Response> {
        let originator = self.principal()?;
        let respondent = self.principal()?;
        let originator_callback = self.u64()?;
        let payload = match self.u8()? {
            0 => Payload::Reply(self.bytes()?),
            1 => Payload::Reject(self.reject()?),
            _ => return Err(DecodeError("bad payload tag")),
        };
        Ok(Response {
            originator,
            respondent,
            originator_callback,
            payload,
            refund: self.u128()?,
        })
    }
    pub fn message(&mut self) -> Decoded<CanisterMessage> {
        match self.u8()? {
            0 => Ok(CanisterMessage::Ingress(Ingress {
                id: self.id()?,
                sender: self.principal()?,
                receiver: self.principal()?,
                method: self.string()?,
                arg: self.bytes()?,
            })),
            1 => Ok(CanisterMessage::Request(self.request()?)),
            2 => Ok(CanisterMessage::Response(self.response()?)),
            _ => Err(DecodeError("bad message tag")),
        }
    }
    pub fn ingress_status(&mut self) -> Decoded<IngressStatus> {
        match self.u8()? {
            0 => Ok(IngressStatus::Received),
            1 => Ok(IngressStatus::Processing),
            2 => Ok(IngressStatus::Replied(self.bytes()?)),
            3 => Ok(IngressStatus::Rejected(self.reject()?)),
            4 => Ok(IngressStatus::Done),
            _ => Err(DecodeError("bad ingress status tag")),
        }
    }
    pub fn output(&mut self) -> Decoded<Output> {
        match self.u8()? {
            0 => Ok(Output::Request(self.request()?)),
            1 => Ok(Output::Response(self.response()?)),
            2 => Ok(Output::Ingress(self.id()?, self.ingress_status()?)),
            _ => Err(DecodeError("bad output tag")),
        }
    }
    pub fn status(&mut self) -> Decoded<CanisterStatus> {
        match self.u8()? {
            1 => Ok(CanisterStatus::Running),
            2 => Ok(CanisterStatus::Stopping),
            3 => Ok(CanisterStatus::Stopped),
            _ => Err(DecodeError("bad canister status")),
        }
    }
    pub fn closure(&mut self) -> Decoded<WasmClosure> {
        Ok(WasmClosure {
            fun: self.u64()?,
            env: self.u64()?,
        })
    }
    pub fn call_context(&mut self) -> Decoded<CallContext> {
        Ok(CallContext {
            origin: self.origin()?,
            responded: self.bool()?,
            outstanding: self.u32()?,
            cycles_available: self.u128()?,
            method: self.string()?,
        })
    }
    pub fn callback(&mut self) -> Decoded<Callback> {
        let call_context = self.u64()?;
        let respondent = self.principal()?;
        let on_reply = self.closure()?;
        let on_reject = self.closure()?;
        let on_cleanup = match self.u8()? {
            0 => None,
            1 => Some(self.closure()?),
            _ => return Err(DecodeError("bad option tag")),
        };
        Ok(Callback {
            call_context,
            respondent,
            on_reply,
            on_reject,
            on_cleanup,
        })
    }
    pub fn global(&mut self) -> Decoded<GlobalValue> {
        let tag = self.u8()?;
        let v = self.u64()?;
        let narrow = |v: u64| u32::try_from(v).map_err(|_| DecodeError("32-bit global too wide"));
        match tag {
            0 => Ok(GlobalValue::I32(narrow(v)? as i32)),
            1 => Ok(GlobalValue::I64(v as i64)),
            2 => Ok(GlobalValue::F32(narrow(v)?)),
            3 => Ok(GlobalValue::F64(v)),
            _ => Err(DecodeError("bad global tag")),
        }
    }
    /// A `VecDeque` of `n` items, each at least `min_item_bytes` long.
    pub fn deque<T>(
        &mut self,
        min_item_bytes: usize,
        mut item: impl FnMut(&mut Self) -> Decoded<T>,
    ) -> Decoded<VecDeque<T>> {
        let n = self.count(min_item_bytes)?;
        let mut out = VecDeque::with_capacity(n);
        for _ in 0..n {
            out.push_back(item(self)?);
        }
        Ok(out)
    }
    pub fn vec<T>(
        &mut self,
        min_item_bytes: usize,
        mut item: impl FnMut(&mut Self) -> Decoded<T>,
    ) -> Decoded<Vec<T>> {
        let n = self.count(min_item_bytes)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }
    /// An ordered map whose keys must come strictly increasing (one encoding per value).
    pub fn map<K: Ord, V>(
        &mut self,
        min_item_bytes: usize,
        mut entry: impl FnMut(&mut Self) -> Decoded<(K, V)>,
    ) -> Decoded<BTreeMap<K, V>> {
        let n = self.count(min_item_bytes)?;
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let (k, v) = entry(self)?;
            if out.last_key_value().is_some_and(|(last, _)| *last >= k) {
                return Err(DecodeError("map keys out of order"));
            }
            out.insert(k, v);
        }
        Ok(out)
    }
}

/// Decimal digits in an IC error code (`IC0503`).
const ERROR_CODE_DIGITS: usize = 4;
/// Distinct `IC` + four-digit error codes.
const ERROR_CODES_COUNT: usize = 10_000;

const fn error_code_table() -> [[u8; 2 + ERROR_CODE_DIGITS]; ERROR_CODES_COUNT] {
    let mut t = [[0u8; 2 + ERROR_CODE_DIGITS]; ERROR_CODES_COUNT];
    let mut i = 0;
    while i < ERROR_CODES_COUNT {
        t[i] = [
            b'I',
            b'C',
            b'0' + (i / 1000) as u8,
            b'0' + (i / 100 % 10) as u8,
            b'0' + (i / 10 % 10) as u8,
            b'0' + (i % 10) as u8,
        ];
        i += 1;
    }
    t
}

/// Every `ICdddd` code as static text: [`Reject::error_code`] is `&'static str`, so a
/// decoded code must point at text that lives for the program.
static ERROR_CODES: [[u8; 2 + ERROR_CODE_DIGITS]; ERROR_CODES_COUNT] = error_code_table();

/// The static text of an error code read from a checkpoint: `""` or `IC` and four digits.
pub fn static_error_code(b: &[u8]) -> Decoded<&'static str> {
    if b.is_empty() {
        return Ok("");
    }
    let bad = DecodeError("unknown error code");
    if b.len() != 2 + ERROR_CODE_DIGITS || &b[..2] != b"IC" {
        return Err(bad);
    }
    let mut n = 0usize;
    for d in &b[2..] {
        if !d.is_ascii_digit() {
            return Err(bad);
        }
        n = n * 10 + (d - b'0') as usize;
    }
    let text = ERROR_CODES.get(n).ok_or(bad)?;
    core::str::from_utf8(text).map_err(|_| bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_resolve_to_their_text() {
        assert_eq!(static_error_code(b"IC0503"), Ok("IC0503"));
        assert_eq!(static_error_code(b"IC9999"), Ok("IC9999"));
        assert_eq!(static_error_code(b""), Ok(""));
        assert!(static_error_code(b"IC05x3").is_err());
        assert!(static_error_code(b"XX0503").is_err());
        assert!(static_error_code(b"IC05033").is_err());
    }

    #[test]
    fn huge_lengths_are_rejected_before_allocating() {
        let mut w = Writer::default();
        w.u64(u64::MAX);
        assert!(Reader::new(&w.out).bytes().is_err());
        let mut w = Writer::default();
        w.u64(1 << 40);
        w.fixed(&[0; 16]);
        assert!(Reader::new(&w.out).vec(1, |r| r.u8()).is_err());
    }

    #[test]
    fn maps_must_be_strictly_ordered() {
        let mut w = Writer::default();
        w.len(2);
        w.u64(5);
        w.u64(5);
        let r = Reader::new(&w.out).map(8, |r| Ok((r.u64()?, ())));
        assert_eq!(r, Err(DecodeError("map keys out of order")));
    }

    #[test]
    fn messages_round_trip() {
        let p = Principal::from_canister_index(3);
        let msgs = [
            CanisterMessage::Ingress(Ingress {
                id: [9; 32],
                sender: Principal::ANONYMOUS,
                receiver: p,
                method: "inc".into(),
                arg: alloc::vec![1, 2, 3],
            }),
            CanisterMessage::Response(Response {
                originator: p,
                respondent: Principal::MANAGEMENT,
                originator_callback: 7,
                payload: Payload::Reject(Reject {
                    code: RejectCode::CanisterError,
                    message: "boom".into(),
                    error_code: "IC0503",
                }),
                refund: u128::MAX,
            }),
        ];
        for m in &msgs {
            let mut w = Writer::default();
            w.message(m);
            let mut r = Reader::new(&w.out);
            assert_eq!(r.message().as_ref(), Ok(m));
            assert_eq!(r.finish(), Ok(()));
            for cut in 0..w.out.len() {
                assert!(Reader::new(&w.out[..cut]).message().is_err());
            }
        }
    }
}
