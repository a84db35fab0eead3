//! A sans-IO HTTP/1.1 codec for the API: request heads through `httparse`, bodies by
//! `Content-Length`, keep-alive and pipelining, and the endpoint routes of reference §1.1.
//!
//! Bounds: a head larger than [`HEADER_BYTES_MAX`] or with more than [`HEADERS_MAX`] headers
//! is refused with 431, a body larger than [`BODY_BYTES_MAX`] with 413 as soon as its
//! `Content-Length` is seen (the body is never buffered), chunked bodies with 411 (no IC agent
//! sends them). The reader never holds more than one head plus one body.

use crate::types::Principal;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::fmt::Write as _;

/// Most headers in one request.
pub const HEADERS_MAX: usize = 32;
/// Largest request head (request line and headers), in bytes.
pub const HEADER_BYTES_MAX: usize = 16 * 1024;
/// Largest request body, in bytes (IC `max_request_size_bytes` = 5 MiB).
pub const BODY_BYTES_MAX: usize = 5 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Options,
    Other,
}

/// One complete request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub body: Vec<u8>,
    /// The client wants the connection kept after the response.
    pub keep_alive: bool,
}

/// A request that cannot be read; the connection is answered with `status` and closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// 400: not HTTP/1.x, or a bad `Content-Length`.
    BadRequest,
    /// 411: no usable length (chunked transfer encoding).
    LengthRequired,
    /// 413: the body is larger than [`BODY_BYTES_MAX`].
    PayloadTooLarge,
    /// 431: the head is larger than [`HEADER_BYTES_MAX`] or has too many headers.
    HeadersTooLarge,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest => 400,
            HttpError::LengthRequired => 411,
            HttpError::PayloadTooLarge => 413,
            HttpError::HeadersTooLarge => 431,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HttpError::BadRequest => "malformed HTTP request",
            HttpError::LengthRequired => "Content-Length required",
            HttpError::PayloadTooLarge => "request body too large",
            HttpError::HeadersTooLarge => "request headers too large",
        })
    }
}

struct Head {
    method: Method,
    path: String,
    head_bytes: usize,
    body_bytes: usize,
    keep_alive: bool,
    /// The client sent `Expect: 100-continue` and waits for an interim response.
    expect_continue: bool,
}

/// Accumulates the bytes of one connection and cuts them into requests.
#[derive(Default)]
pub struct RequestReader {
    buf: Vec<u8>,
    head: Option<Head>,
    /// Bytes of `buf` already searched for the end of the head, so a client dribbling its
    /// head byte by byte costs linear, not quadratic, work.
    scanned: usize,
}

impl RequestReader {
    /// True once per request whose head asked for `100 Continue` and whose body is not here
    /// yet (curl does this for bodies over 1 KiB).
    pub fn take_expect_continue(&mut self) -> bool {
        match &mut self.head {
            Some(h) if h.expect_continue => {
                h.expect_continue = false;
                true
            }
            _ => false,
        }
    }
}

impl RequestReader {
    pub fn new() -> RequestReader {
        RequestReader::default()
    }

    /// Bytes held, waiting to form a request.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete request, if the buffer holds one.
    pub fn next_request(&mut self) -> Result<Option<Request>, HttpError> {
        if self.head.is_none() {
            let from = self.scanned.saturating_sub(3);
            let end = self.buf.len().min(HEADER_BYTES_MAX + 4);
            let complete = self.buf[from.min(end)..end]
                .windows(4)
                .any(|w| w == b"\r\n\r\n");
            self.scanned = end;
            if !complete {
                if self.buf.len() > HEADER_BYTES_MAX {
                    return Err(HttpError::HeadersTooLarge);
                }
                return Ok(None);
            }
            match parse_head(&self.buf)? {
                Some(h) => self.head = Some(h),
                None if self.buf.len() > HEADER_BYTES_MAX => {
                    return Err(HttpError::HeadersTooLarge)
                }
                None => return Ok(None),
            }
        }
        let Some(head) = &self.head else {
            return Ok(None);
        };
        let total = head.head_bytes + head.body_bytes;
        if self.buf.len() < total {
            return Ok(None);
        }
        let body = self.buf[head.head_bytes..total].to_vec();
        self.buf.drain(..total);
        self.scanned = 0;
        let head = self.head.take();
        Ok(head.map(|h| Request {
            method: h.method,
            path: h.path,
            body,
            keep_alive: h.keep_alive,
        }))
    }
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let head_bytes = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
        Err(_) => return Err(HttpError::BadRequest),
    };
    if head_bytes > HEADER_BYTES_MAX {
        return Err(HttpError::HeadersTooLarge);
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some("OPTIONS") => Method::Options,
        _ => Method::Other,
    };
    let version = req.version.unwrap_or(0);
    let mut keep_alive = version >= 1;
    let mut body_bytes: Option<usize> = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = core::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(HttpError::BadRequest)?;
            if body_bytes.is_some_and(|m| m as u64 != n) {
                return Err(HttpError::BadRequest);
            }
            if n > BODY_BYTES_MAX as u64 {
                return Err(HttpError::PayloadTooLarge);
            }
            body_bytes = Some(n as usize);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::LengthRequired);
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value;
            if v.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if v.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive = true;
            }
        }
    }
    let path = String::from(req.path.unwrap_or("/"));
    Ok(Some(Head {
        method,
        path,
        head_bytes,
        body_bytes: body_bytes.unwrap_or(0),
        keep_alive,
        expect_continue,
    }))
}

/// The reason phrase of the status codes the API sends.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Content types of the API's responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    Cbor,
    Text,
    /// Prometheus text exposition (`GET /metrics`).
    Metrics,
    /// Raw bytes (`GET /_/attestation`: the SEV-SNP report).
    OctetStream,
    None,
}

/// Serialises a response with the IC's CORS headers.
pub fn response(status: u16, content_type: ContentType, body: &[u8], close: bool) -> Vec<u8> {
    let mut head = String::with_capacity(256);
    let _ = write!(head, "HTTP/1.1 {status} {}\r\n", reason(status));
    match content_type {
        ContentType::Cbor => head.push_str("Content-Type: application/cbor\r\n"),
        ContentType::Text => head.push_str("Content-Type: text/plain; charset=utf-8\r\n"),
        ContentType::Metrics => {
            let _ = write!(head, "Content-Type: {}\r\n", super::metrics::CONTENT_TYPE);
        }
        ContentType::OctetStream => head.push_str("Content-Type: application/octet-stream\r\n"),
        ContentType::None => {}
    }
    let _ = write!(head, "Content-Length: {}\r\n", body.len());
    head.push_str("Access-Control-Allow-Origin: *\r\n");
    head.push_str("Access-Control-Allow-Methods: POST, GET\r\n");
    head.push_str("Access-Control-Allow-Headers: Accept, Authorization, Content-Type\r\n");
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The endpoints of the HTTP interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Status,
    /// `GET /metrics` (not part of the IC's interface: node operations).
    Metrics,
    /// `GET /_/attestation`: the node's SEV-SNP attestation report (cairn's, beside the IC's
    /// interface, as the IC's `/_/dashboard` is).
    Attestation,
    /// `/api/v{2,3,4}/canister/<ecid>/call`.
    Call {
        version: u8,
        ecid: Principal,
    },
    /// `/api/v{2,3}/canister/<ecid>/query`.
    Query {
        version: u8,
        ecid: Principal,
    },
    /// `/api/v{2,3}/canister/<ecid>/read_state`.
    ReadStateCanister {
        version: u8,
        ecid: Principal,
    },
    /// `/api/v{2,3}/subnet/<esid>/read_state`.
    ReadStateSubnet {
        version: u8,
        esid: Principal,
    },
}

/// Why a path or method has no endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    MethodNotAllowed,
    /// The path's principal is not valid text.
    BadPrincipal,
}

impl RouteError {
    pub fn status(&self) -> u16 {
        match self {
            RouteError::NotFound => 404,
            RouteError::MethodNotAllowed => 405,
            RouteError::BadPrincipal => 400,
        }
    }
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RouteError::NotFound => "no such endpoint",
            RouteError::MethodNotAllowed => "method not allowed",
            RouteError::BadPrincipal => "invalid principal in path",
        })
    }
}

/// Maps a method and path (a query string is ignored) to an endpoint.
pub fn route(method: Method, path: &str) -> Result<Route, RouteError> {
    let path = path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.split('/').collect();
    let post = |r: Route| match method {
        Method::Post => Ok(r),
        _ => Err(RouteError::MethodNotAllowed),
    };
    let principal = |t: &str| Principal::from_text(t).map_err(|_| RouteError::BadPrincipal);
    match parts.as_slice() {
        ["", "api", "v2", "status"] => match method {
            Method::Get => Ok(Route::Status),
            _ => Err(RouteError::MethodNotAllowed),
        },
        ["", "metrics"] => match method {
            Method::Get => Ok(Route::Metrics),
            _ => Err(RouteError::MethodNotAllowed),
        },
        ["", "_", "attestation"] => match method {
            Method::Get => Ok(Route::Attestation),
            _ => Err(RouteError::MethodNotAllowed),
        },
        ["", "api", v, kind, id, endpoint] => {
            let version = match *v {
                "v2" => 2,
                "v3" => 3,
                "v4" => 4,
                _ => return Err(RouteError::NotFound),
            };
            let r = match (*kind, *endpoint, version) {
                ("canister", "call", _) => Route::Call {
                    version,
                    ecid: principal(id)?,
                },
                ("canister", "query", 2 | 3) => Route::Query {
                    version,
                    ecid: principal(id)?,
                },
                ("canister", "read_state", 2 | 3) => Route::ReadStateCanister {
                    version,
                    ecid: principal(id)?,
                },
                ("subnet", "read_state", 2 | 3) => Route::ReadStateSubnet {
                    version,
                    esid: principal(id)?,
                },
                _ => return Err(RouteError::NotFound),
            };
            post(r)
        }
        _ => Err(RouteError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pipelined_requests_in_pieces() {
        let one = b"POST /api/v2/canister/aaaaa-aa/call HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        let two = b"GET /api/v2/status HTTP/1.1\r\nConnection: close\r\n\r\n";
        let mut all = one.to_vec();
        all.extend_from_slice(two);
        let mut r = RequestReader::new();
        let mut got = Vec::new();
        for b in &all {
            r.push(&[*b]);
            while let Some(req) = r.next_request().unwrap() {
                got.push(req);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].body, b"abc");
        assert!(got[0].keep_alive);
        assert_eq!(got[1].method, Method::Get);
        assert!(!got[1].keep_alive);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn limits() {
        let mut r = RequestReader::new();
        r.push(b"POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n");
        assert_eq!(r.next_request(), Err(HttpError::PayloadTooLarge));
        let mut r = RequestReader::new();
        r.push(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(r.next_request(), Err(HttpError::LengthRequired));
        let mut r = RequestReader::new();
        r.push(b"GET / HTTP/1.1\r\nX: ");
        r.push(&[b'a'; HEADER_BYTES_MAX]);
        assert_eq!(r.next_request(), Err(HttpError::HeadersTooLarge));
        let mut r = RequestReader::new();
        r.push(b"\x00\x01garbage\r\n\r\n");
        assert_eq!(r.next_request(), Err(HttpError::BadRequest));
    }

    #[test]
    fn routes() {
        let cid = "ryjl3-tyaaa-aaaaa-aaaba-cai";
        let p = Principal::from_text(cid).unwrap();
        let r = |m, s: &str| route(m, s);
        assert_eq!(r(Method::Get, "/api/v2/status"), Ok(Route::Status));
        assert_eq!(r(Method::Get, "/metrics"), Ok(Route::Metrics));
        assert_eq!(r(Method::Get, "/_/attestation"), Ok(Route::Attestation));
        assert_eq!(
            r(Method::Post, "/_/attestation"),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            r(Method::Post, "/metrics"),
            Err(RouteError::MethodNotAllowed)
        );
        for v in [2u8, 3, 4] {
            let path = alloc::format!("/api/v{v}/canister/{cid}/call");
            assert_eq!(
                r(Method::Post, &path),
                Ok(Route::Call {
                    version: v,
                    ecid: p
                })
            );
        }
        let q = alloc::format!("/api/v4/canister/{cid}/query");
        assert_eq!(r(Method::Post, &q), Err(RouteError::NotFound));
        let q = alloc::format!("/api/v3/subnet/{cid}/read_state");
        assert_eq!(
            r(Method::Post, &q),
            Ok(Route::ReadStateSubnet {
                version: 3,
                esid: p
            })
        );
        let q = alloc::format!("/api/v3/canister/{cid}/query");
        assert_eq!(r(Method::Get, &q), Err(RouteError::MethodNotAllowed));
        assert_eq!(
            r(Method::Post, "/api/v2/canister/not-a-principal/call"),
            Err(RouteError::BadPrincipal)
        );
        assert_eq!(r(Method::Get, "/"), Err(RouteError::NotFound));
    }
}
