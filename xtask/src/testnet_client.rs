//! A small IC HTTP-interface client for the testnet steps and `bench testnet`: anonymous
//! update calls (`/api/v3/.../call`, the certified reply is taken from the certificate, whose
//! BLS signature is verified against the root key), queries (`/api/v2/.../query`), and the
//! management calls that create a canister and install a module. Everything is bounded by
//! [`HTTP_TIMEOUT_MS`]; every failure is an error string, never a panic.
//!
//! The official agents (ic-agent, @dfinity/agent) are exercised by the `e2e` crate; this client
//! exists so the host can drive calls while it kills, pauses and restarts VMs, and measure.

use node::api::cbor::{self, Writer};
use node::api::certificate::{self, Effective};
use node::api::hash_tree::Lookup;
use node::candid::{self, record, Type, Value};
use node::crypto::bls;
use node::types::Principal;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bound on one HTTP exchange (connect, send, receive).
pub const HTTP_TIMEOUT_MS: u64 = 30_000;
/// Largest HTTP response read.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// How far in the future a request's `ingress_expiry` is set.
const INGRESS_EXPIRY_NS: u64 = 240_000_000_000;
/// Polling for a call's status after a v3 call answered 202.
const POLL_INTERVAL_MS: u64 = 250;
/// Cycles a created canister gets.
pub const CREATE_CYCLES: u128 = 100_000_000_000_000;
/// The empty Candid argument.
pub const EMPTY_ARGS: &[u8] = b"DIDL\x00\x00";
/// The anonymous principal.
const ANONYMOUS: [u8; 1] = [4];

/// One HTTP/1.1 exchange on 127.0.0.1:`port` with `Connection: close`; returns (status, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/cbor\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| format!("{addr} {path}: send: {e}"))?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("{addr} {path}: no complete answer in {timeout:?}"));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => response.extend_from_slice(&chunk[..k]),
            Err(e) => return Err(format!("{addr} {path}: receive: {e}")),
        }
        if response.len() > MAX_RESPONSE_BYTES {
            return Err(format!(
                "{addr} {path}: answer over {MAX_RESPONSE_BYTES} bytes"
            ));
        }
        if let Some((_, head_end, len)) = parse_head(&response) {
            if len.is_some_and(|l| response.len() >= head_end + l) {
                break;
            }
        }
    }
    let (status, head_end, len) =
        parse_head(&response).ok_or_else(|| format!("{addr} {path}: no HTTP answer"))?;
    let end = len.map_or(response.len(), |l| (head_end + l).min(response.len()));
    Ok((status, response[head_end..end].to_vec()))
}

/// (status, offset of the body, Content-Length) once the head is complete.
fn parse_head(response: &[u8]) -> Option<(u16, usize, Option<usize>)> {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..end]);
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    Some((status, end + 4, len))
}

/// Prometheus text: the value of the first sample named `name` (without labels).
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Why a call did not produce a reply.
#[derive(Debug)]
pub enum CallError {
    /// No HTTP answer (connection refused or reset, timeout).
    Transport(String),
    /// An HTTP answer that is not a reply (status code and body as text).
    Http(u16, String),
    /// The call was rejected (reject code, message).
    Rejected(u64, String),
    /// The answer did not decode or its certificate did not verify.
    Invalid(String),
    /// Still not answered when the time was up.
    Timeout,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "transport: {e}"),
            CallError::Http(s, b) => write!(f, "HTTP {s}: {b}"),
            CallError::Rejected(c, m) => write!(f, "rejected ({c}): {m}"),
            CallError::Invalid(e) => write!(f, "invalid answer: {e}"),
            CallError::Timeout => f.write_str("no answer in time"),
        }
    }
}

/// A client of one node's HTTP interface.
pub struct Client {
    pub port: u16,
    root_key: bls::PublicKey,
    nonce: u64,
    /// Bound on one call, polling included.
    pub call_timeout: Duration,
}

impl Client {
    pub fn new(port: u16, root_key_der: &[u8], call_timeout: Duration) -> Result<Client, String> {
        let root_key =
            bls::PublicKey::from_der(root_key_der).map_err(|_| "root key: not a BLS DER key")?;
        Ok(Client {
            port,
            root_key,
            nonce: now_ns(),
            call_timeout,
        })
    }

    fn next_nonce(&mut self) -> u64 {
        self.nonce = self.nonce.wrapping_add(1);
        self.nonce
    }

    fn envelope(&mut self, kind: &str, canister: &Principal, method: &str, arg: &[u8]) -> Vec<u8> {
        let nonce = self.next_nonce();
        let mut w = Writer::self_describing();
        w.map(1).text("content").map(7);
        w.text("request_type").text(kind);
        w.text("sender").bytes(&ANONYMOUS);
        w.text("nonce").bytes(&nonce.to_be_bytes());
        w.text("ingress_expiry").u64(now_ns() + INGRESS_EXPIRY_NS);
        w.text("canister_id").bytes(canister.as_slice());
        w.text("method_name").text(method);
        w.text("arg").bytes(arg);
        w.into_bytes()
    }

    fn post(&self, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), CallError> {
        http(
            self.port,
            "POST",
            path,
            body,
            Duration::from_millis(HTTP_TIMEOUT_MS),
        )
        .map_err(CallError::Transport)
    }

    /// `read_state` of one `path` through `ecid` (anonymously): the certificate, unverified.
    fn read_state(&mut self, ecid: &Principal, path: &[&[u8]]) -> Result<Vec<u8>, CallError> {
        let nonce = self.next_nonce();
        let mut w = Writer::self_describing();
        w.map(1).text("content").map(5);
        w.text("request_type").text("read_state");
        w.text("sender").bytes(&ANONYMOUS);
        w.text("nonce").bytes(&nonce.to_be_bytes());
        w.text("ingress_expiry").u64(now_ns() + INGRESS_EXPIRY_NS);
        w.text("paths").array(1).array(path.len());
        for label in path {
            w.bytes(label);
        }
        let body = w.into_bytes();
        let resp = self.post_ok(&format!("/api/v2/canister/{ecid}/read_state"), &body)?;
        let v = cbor::decode(&resp).map_err(|e| CallError::Invalid(format!("{e:?}")))?;
        let r =
            cbor::Record::new(v.untagged()).map_err(|e| CallError::Invalid(format!("{e:?}")))?;
        r.bytes("certificate")
            .map(<[u8]>::to_vec)
            .map_err(|e| CallError::Invalid(format!("no certificate: {e:?}")))
    }

    /// [`Self::post`], with any status but 200 as [`CallError::Http`].
    fn post_ok(&self, path: &str, body: &[u8]) -> Result<Vec<u8>, CallError> {
        match self.post(path, body)? {
            (200, resp) => Ok(resp),
            (status, resp) => Err(CallError::Http(
                status,
                String::from_utf8_lossy(&resp).into_owned(),
            )),
        }
    }

    /// An update call; returns the certified reply.
    pub fn update(
        &mut self,
        canister: &Principal,
        method: &str,
        arg: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        let deadline = Instant::now() + self.call_timeout;
        let body = self.envelope("call", canister, method, arg);
        let rid =
            node::api::envelope::Envelope::decode(&body, node::api::envelope::RequestKind::Call)
                .map_err(|e| CallError::Invalid(format!("own envelope: {e:?}")))?
                .request_id;
        let ecid = if canister.is_management() {
            node::replica::stack::management_target(method, arg).unwrap_or(*canister)
        } else {
            *canister
        };
        let (status, resp) = self.post(&format!("/api/v3/canister/{ecid}/call"), &body)?;
        match status {
            200 => {
                let v = cbor::decode(&resp).map_err(|e| CallError::Invalid(format!("{e:?}")))?;
                let r = cbor::Record::new(v.untagged())
                    .map_err(|e| CallError::Invalid(format!("{e:?}")))?;
                if r.text("status").ok() == Some("non_replicated_rejection") {
                    return Err(reject_of(&r));
                }
                let cert = r
                    .bytes("certificate")
                    .map_err(|e| CallError::Invalid(format!("no certificate: {e:?}")))?;
                match self.status_in(cert, &rid, &ecid)? {
                    Some(reply) => Ok(reply),
                    None => self.poll(&ecid, &rid, deadline),
                }
            }
            202 => self.poll(&ecid, &rid, deadline),
            _ => Err(CallError::Http(
                status,
                String::from_utf8_lossy(&resp).into_owned(),
            )),
        }
    }

    /// Reads `/request_status/<rid>` until it is replied or rejected.
    fn poll(
        &mut self,
        ecid: &Principal,
        rid: &[u8; 32],
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        while Instant::now() < deadline {
            let cert = self.read_state(ecid, &[b"request_status", rid])?;
            if let Some(reply) = self.status_in(&cert, rid, ecid)? {
                return Ok(reply);
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
        Err(CallError::Timeout)
    }

    /// `read_state` of `/time` through `ecid`: the certified state's time and root hash (the
    /// certificate's signature verified). Equal times mean the same certified height, so two
    /// nodes answering one time with different root hashes have diverged.
    pub fn certified_time(&mut self, ecid: &Principal) -> Result<(u64, [u8; 32]), CallError> {
        let cert = self.read_state(ecid, &[b"time"])?;
        let cert = certificate::verify(&cert, &self.root_key, Effective::Canister(*ecid))
            .map_err(|e| CallError::Invalid(format!("certificate: {e:?}")))?;
        let time = cert
            .time_ns()
            .map_err(|e| CallError::Invalid(format!("time: {e:?}")))?;
        Ok((time, cert.root_hash()))
    }

    /// The reply in a verified certificate; `None` while the request is not done.
    fn status_in(
        &self,
        cert: &[u8],
        rid: &[u8; 32],
        ecid: &Principal,
    ) -> Result<Option<Vec<u8>>, CallError> {
        let cert = certificate::verify(cert, &self.root_key, Effective::Canister(*ecid))
            .map_err(|e| CallError::Invalid(format!("certificate: {e:?}")))?;
        let status: [&[u8]; 3] = [b"request_status", rid, b"status"];
        let state = match cert.tree.lookup(&status) {
            Lookup::Found(s) => s.to_vec(),
            _ => return Ok(None),
        };
        match state.as_slice() {
            b"replied" => {
                let path: [&[u8]; 3] = [b"request_status", rid, b"reply"];
                match cert.tree.lookup(&path) {
                    Lookup::Found(reply) => Ok(Some(reply.to_vec())),
                    _ => Err(CallError::Invalid("replied without a reply".into())),
                }
            }
            b"rejected" => {
                let code: [&[u8]; 3] = [b"request_status", rid, b"reject_code"];
                let msg: [&[u8]; 3] = [b"request_status", rid, b"reject_message"];
                let code = match cert.tree.lookup(&code) {
                    Lookup::Found(c) => certificate::decode_uleb128(c).unwrap_or(0),
                    _ => 0,
                };
                let msg = match cert.tree.lookup(&msg) {
                    Lookup::Found(m) => String::from_utf8_lossy(m).into_owned(),
                    _ => String::new(),
                };
                Err(CallError::Rejected(code, msg))
            }
            b"done" => Err(CallError::Invalid(
                "status done: reply already pruned".into(),
            )),
            _ => Ok(None),
        }
    }

    /// A query; returns the reply.
    pub fn query(
        &mut self,
        canister: &Principal,
        method: &str,
        arg: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        let body = self.envelope("query", canister, method, arg);
        let resp = self.post_ok(&format!("/api/v2/canister/{canister}/query"), &body)?;
        let v = cbor::decode(&resp).map_err(|e| CallError::Invalid(format!("{e:?}")))?;
        let r =
            cbor::Record::new(v.untagged()).map_err(|e| CallError::Invalid(format!("{e:?}")))?;
        match r.text("status") {
            Ok("replied") => {
                let reply = r
                    .get("reply")
                    .ok_or_else(|| CallError::Invalid("no reply".into()))?;
                let reply = cbor::Record::new(reply.untagged())
                    .map_err(|e| CallError::Invalid(format!("{e:?}")))?;
                reply
                    .bytes("arg")
                    .map(<[u8]>::to_vec)
                    .map_err(|e| CallError::Invalid(format!("{e:?}")))
            }
            _ => Err(reject_of(&r)),
        }
    }

    /// `provisional_create_canister_with_cycles`; returns the new canister's id.
    pub fn create_canister(&mut self) -> Result<Principal, CallError> {
        let arg = candid::encode_args(&[(
            record(&[("amount", candid::opt(Type::Nat))]),
            Value::Record(vec![(
                candid::field_id("amount"),
                Value::Opt(Some(Box::new(Value::nat(CREATE_CYCLES)))),
            )]),
        )])
        .ok_or_else(|| CallError::Invalid("candid encode".into()))?;
        let reply = self.update(
            &Principal::MANAGEMENT,
            "provisional_create_canister_with_cycles",
            &arg,
        )?;
        let ty = record(&[("canister_id", Type::Principal)]);
        candid::decode_args(&reply, &[ty], &Default::default())
            .ok()
            .and_then(|v| v.first()?.field("canister_id")?.as_principal())
            .ok_or_else(|| CallError::Invalid("create reply without canister_id".into()))
    }

    /// `install_code` in install mode.
    pub fn install(
        &mut self,
        canister: Principal,
        wasm: &[u8],
        arg: &[u8],
    ) -> Result<(), CallError> {
        let install_ty = record(&[
            ("mode", candid::variant(&[("install", Type::Null)])),
            ("canister_id", Type::Principal),
            ("wasm_module", candid::blob()),
            ("arg", candid::blob()),
        ]);
        let mut fields = vec![
            (
                candid::field_id("mode"),
                Value::Variant(candid::field_id("install"), Box::new(Value::Null)),
            ),
            (candid::field_id("canister_id"), Value::Principal(canister)),
            (candid::field_id("wasm_module"), Value::Blob(wasm.to_vec())),
            (candid::field_id("arg"), Value::Blob(arg.to_vec())),
        ];
        fields.sort_by_key(|(k, _)| *k);
        let arg = candid::encode_args(&[(install_ty, Value::Record(fields))])
            .ok_or_else(|| CallError::Invalid("candid encode".into()))?;
        self.update(&Principal::MANAGEMENT, "install_code", &arg)
            .map(|_| ())
    }
}

fn reject_of(r: &cbor::Record<'_, '_>) -> CallError {
    CallError::Rejected(
        r.u64("reject_code").unwrap_or(0),
        r.text("reject_message").unwrap_or_default().to_string(),
    )
}

/// The Candid `nat` in a reply like `DIDL\0\x01\x7d<leb128>` (the Motoko counter's `get`).
pub fn decode_nat(reply: &[u8]) -> Option<u128> {
    let values = candid::decode_args(reply, &[Type::Nat], &Default::default()).ok()?;
    values.first()?.as_u128()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_metrics_parse() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(parse_head(r), Some((200, 38, Some(3))));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n"), None);
        let text = "# HELP x\ncairn_finalized_height 12\ncairn_peers{a=\"b\"} 3\n";
        assert_eq!(metric(text, "cairn_finalized_height"), Some(12));
        assert_eq!(metric(text, "cairn_peers"), None);
    }

    #[test]
    fn counter_replies_decode() {
        assert_eq!(decode_nat(b"DIDL\x00\x01\x7d\x2d"), Some(45));
        assert_eq!(decode_nat(EMPTY_ARGS), None);
    }
}
