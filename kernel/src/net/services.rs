//! The services that prove the stack: UDP echo on port 7 (RFC 862) and HTTP `GET /health`
//! on port 8080 (JSON: uptime, address, counters). TCP echo is in `echo`, on the socket
//! layer.
//!
//! Each service owns a fixed pool of listening sockets. A socket that does not reach
//! Established within [`HANDSHAKE_TIMEOUT_MS`], or whose HTTP request is incomplete after
//! [`REQUEST_TIMEOUT_MS`], is aborted and listens again, so a flood of half-open connections
//! ties the pool up for a bounded time only. Requests are bounded by [`MAX_REQUEST_BYTES`].

use super::device::FrameCounters;
use crate::arch::clock;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{EthernetAddress, Ipv4Cidr};

/// The UDP echo port (TCP echo lives in `echo`).
pub const ECHO_PORT: u16 = 7;
pub const HTTP_PORT: u16 = 8080;
/// Concurrent HTTP connections.
const HTTP_SOCKETS: usize = 32;
/// Each HTTP socket's receive and send buffer.
const HTTP_BUFFER_BYTES: usize = 8 * 1024;
/// The largest HTTP request head accepted.
const MAX_REQUEST_BYTES: usize = 4096;
/// Datagrams the UDP echo socket buffers each way.
const UDP_ECHO_PACKETS: usize = 64;
/// The largest UDP datagram echoed (one Ethernet frame's payload).
const UDP_ECHO_MAX_BYTES: usize = 1472;
/// The UDP echo's copy buffer.
const UDP_SCRATCH_BYTES: usize = 2048;
const HANDSHAKE_TIMEOUT_MS: u64 = 3_000;
const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// The longest an HTTP connection holds a slot, response and close included: a client that
/// never reads its response or never closes its side is aborted after this.
const CONNECTION_LIFETIME_MS: u64 = 10_000;
/// HTTP slots kept listening under a flood: when fewer listen, the oldest idle connections
/// are aborted (half-open ones older than [`HALF_OPEN_EVICT_AFTER_MS`], connected ones without
/// a request byte older than [`IDLE_EVICT_AFTER_MS`]), so that a new client finds a listening
/// slot during a flood of half-open or silent connections.
const MIN_LISTENING_SLOTS: usize = HTTP_SOCKETS / 2;
/// A real client's ACK arrives within one round trip, far sooner than this.
const HALF_OPEN_EVICT_AFTER_MS: u64 = 20;
/// A real client sends its request right after connecting, far sooner than this.
const IDLE_EVICT_AFTER_MS: u64 = 250;
const NS_PER_MS: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceCounters {
    pub echo_connections: u64,
    pub echo_bytes: u64,
    /// Echo connections being served now.
    pub echo_active: u64,
    /// Echo connections aborted for moving no byte for too long.
    pub echo_idle_aborts: u64,
    /// TCP sockets of the socket layer (listeners' pools included).
    pub tcp_sockets: u64,
    http_requests: u64,
    http_errors: u64,
    aborted_stale: u64,
    evicted_idle: u64,
    /// HTTP slots with a connection (not listening).
    http_active: u64,
}

/// A pooled socket and when its current connection attempt began.
struct Slot {
    handle: SocketHandle,
    /// Monotonic ms when the socket left Listen, or None while listening/closed.
    since_ms: Option<u64>,
    request: Vec<u8>,
    responded: bool,
}

pub struct Services {
    udp_echo: SocketHandle,
    http: Vec<Slot>,
    counters: ServiceCounters,
    scratch: Vec<u8>,
}

fn tcp_socket(buffer_bytes: usize) -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buffer_bytes]),
        tcp::SocketBuffer::new(vec![0; buffer_bytes]),
    )
}

fn now_ms() -> u64 {
    clock::now_ns() / NS_PER_MS
}

impl Services {
    pub fn new(sockets: &mut SocketSet<'static>) -> Services {
        let mut pool = |count: usize, bytes: usize| -> Vec<Slot> {
            (0..count)
                .map(|_| Slot {
                    handle: sockets.add(tcp_socket(bytes)),
                    since_ms: None,
                    request: Vec::new(),
                    responded: false,
                })
                .collect()
        };
        let http = pool(HTTP_SOCKETS, HTTP_BUFFER_BYTES);
        let udp_buffer = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_ECHO_PACKETS],
                vec![0; UDP_ECHO_PACKETS * UDP_ECHO_MAX_BYTES],
            )
        };
        let mut udp_socket = udp::Socket::new(udp_buffer(), udp_buffer());
        // Binding a fresh socket to a fixed non-zero port cannot fail.
        let _ = udp_socket.bind(ECHO_PORT);
        let udp_echo = sockets.add(udp_socket);
        Services {
            udp_echo,
            http,
            counters: ServiceCounters::default(),
            scratch: vec![0; UDP_SCRATCH_BYTES],
        }
    }

    /// Serves every socket once; true when data moved.
    /// Counters the TCP echo (which runs on the socket layer) adds to.
    pub fn counters_mut(&mut self) -> &mut ServiceCounters {
        &mut self.counters
    }

    /// Gives port 8080 up (the node runtime serves its HTTP API there).
    pub fn stop_http(&mut self, sockets: &mut SocketSet<'static>) {
        for slot in self.http.drain(..) {
            sockets.remove(slot.handle);
        }
    }

    pub fn poll(
        &mut self,
        sockets: &mut SocketSet<'static>,
        ip: Option<Ipv4Cidr>,
        mac: EthernetAddress,
        frames: FrameCounters,
    ) -> bool {
        let now = now_ms();
        let mut moved = udp_echo(
            sockets.get_mut::<udp::Socket>(self.udp_echo),
            &mut self.scratch,
        );
        for i in 0..self.http.len() {
            if !sockets.get::<tcp::Socket>(self.http[i].handle).is_open() {
                // A fresh socket for each connection: smoltcp keeps a per-socket egress
                // back-off (a forged peer whose address never resolves silences the socket for
                // a second), which must not fall on the next client of the slot.
                sockets.remove(self.http[i].handle);
                self.http[i].handle = sockets.add(tcp_socket(HTTP_BUFFER_BYTES));
            }
            let socket = sockets.get_mut::<tcp::Socket>(self.http[i].handle);
            if !lifecycle(
                &mut self.http[i],
                socket,
                HTTP_PORT,
                now,
                &mut self.counters,
            ) {
                continue;
            }
            let body = |c: &ServiceCounters| health_json(now, ip, mac, frames, c);
            moved |= http(&mut self.http[i], socket, body, &mut self.counters);
        }
        // After serving: an evicted socket must stay Closed until the interface has sent its
        // RST (the next `iface.poll`); `lifecycle` listens on it again after that.
        self.evict_idle(sockets, now);
        moved
    }

    /// Keeps [`MIN_LISTENING_SLOTS`] listening by aborting the oldest idle connections (see
    /// the constant). Also counts active slots.
    fn evict_idle(&mut self, sockets: &mut SocketSet<'static>, now: u64) {
        let mut listening = 0;
        let mut active = 0;
        // (since, slot) of the connections that may be evicted.
        let mut idle: Vec<(u64, usize)> = Vec::new();
        for (i, slot) in self.http.iter().enumerate() {
            let since = slot.since_ms.unwrap_or(now);
            let age = now.saturating_sub(since);
            match sockets.get::<tcp::Socket>(slot.handle).state() {
                tcp::State::Listen => listening += 1,
                tcp::State::Closed => {}
                tcp::State::SynReceived => {
                    active += 1;
                    if age > HALF_OPEN_EVICT_AFTER_MS {
                        idle.push((since, i));
                    }
                }
                tcp::State::Established if slot.request.is_empty() && !slot.responded => {
                    active += 1;
                    if age > IDLE_EVICT_AFTER_MS {
                        idle.push((since, i));
                    }
                }
                _ => active += 1,
            }
        }
        self.counters.http_active = active;
        idle.sort_unstable();
        let wanted = MIN_LISTENING_SLOTS.saturating_sub(listening);
        for &(_, i) in idle.iter().take(wanted) {
            sockets.get_mut::<tcp::Socket>(self.http[i].handle).abort();
            self.counters.evicted_idle += 1;
        }
    }
}

/// Keeps a pooled socket listening and aborts stale connections. True when the socket has
/// a connection to serve.
fn lifecycle(
    slot: &mut Slot,
    socket: &mut tcp::Socket<'_>,
    port: u16,
    now: u64,
    counters: &mut ServiceCounters,
) -> bool {
    if !socket.is_open() {
        slot.since_ms = None;
        slot.request.clear();
        slot.responded = false;
        // Listening on a closed socket with a fixed local port cannot fail.
        let _ = socket.listen(port);
        return false;
    }
    if socket.state() == tcp::State::Listen {
        return false;
    }
    let since = *slot.since_ms.get_or_insert(now);
    let established = !matches!(socket.state(), tcp::State::SynReceived);
    let limit = if established {
        REQUEST_TIMEOUT_MS
    } else {
        HANDSHAKE_TIMEOUT_MS
    };
    let waiting = !established || !slot.responded;
    let age = now.saturating_sub(since);
    if (waiting && age > limit) || age > CONNECTION_LIFETIME_MS {
        socket.abort();
        counters.aborted_stale += 1;
        return false;
    }
    established
}

/// Echoes waiting datagrams back to their senders (RFC 862), as many as fit.
fn udp_echo(socket: &mut udp::Socket<'_>, scratch: &mut [u8]) -> bool {
    let mut moved = false;
    while socket.can_recv() && socket.can_send() {
        let Ok((n, meta)) = socket.recv_slice(scratch) else {
            break;
        };
        // A send fails only when the buffer is full, which `can_send` just ruled out.
        let _ = socket.send_slice(&scratch[..n], meta.endpoint);
        moved = true;
    }
    moved
}

fn http(
    slot: &mut Slot,
    socket: &mut tcp::Socket<'_>,
    body: impl FnOnce(&ServiceCounters) -> String,
    counters: &mut ServiceCounters,
) -> bool {
    if slot.responded {
        if socket.send_queue() == 0 {
            socket.close();
        }
        return false;
    }
    let mut moved = false;
    while socket.can_recv() && slot.request.len() <= MAX_REQUEST_BYTES {
        let room = MAX_REQUEST_BYTES + 1 - slot.request.len();
        let got = socket.recv(|data| {
            let n = data.len().min(room);
            (n, data[..n].to_vec())
        });
        match got {
            Ok(bytes) if !bytes.is_empty() => {
                slot.request.extend_from_slice(&bytes);
                moved = true;
            }
            _ => break,
        }
    }
    let request = parse_request(&slot.request);
    match &request {
        RequestState::Incomplete if socket.may_recv() => return moved,
        RequestState::Get(path) if path == "/health" => counters.http_requests += 1,
        _ => counters.http_errors += 1,
    }
    let response = match request {
        RequestState::Incomplete if socket.may_recv() => return moved,
        RequestState::Incomplete => {
            response(400, "Bad Request", "{\"error\":\"incomplete request\"}")
        }
        RequestState::TooLarge => response(
            431,
            "Request Header Fields Too Large",
            "{\"error\":\"request too large\"}",
        ),
        RequestState::Malformed => {
            response(400, "Bad Request", "{\"error\":\"malformed request\"}")
        }
        RequestState::Get(path) if path == "/health" => response(200, "OK", &body(counters)),
        RequestState::Get(_) => response(404, "Not Found", "{\"error\":\"not found\"}"),
        RequestState::OtherMethod => {
            response(405, "Method Not Allowed", "{\"error\":\"only GET\"}")
        }
    };
    // The response is far smaller than the send buffer of a fresh connection.
    let _ = socket.send_slice(response.as_bytes());
    slot.responded = true;
    true
}

enum RequestState {
    Incomplete,
    TooLarge,
    Malformed,
    OtherMethod,
    Get(String),
}

/// Parses the request head once it is complete ("\r\n\r\n"); only the request line matters.
fn parse_request(bytes: &[u8]) -> RequestState {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if bytes.len() > MAX_REQUEST_BYTES {
            RequestState::TooLarge
        } else {
            RequestState::Incomplete
        };
    };
    let Ok(head) = core::str::from_utf8(&bytes[..end]) else {
        return RequestState::Malformed;
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("GET"), Some(path), Some(v), None) if v.starts_with("HTTP/1.") => {
            RequestState::Get(path.into())
        }
        (Some(_), Some(_), Some(v), None) if v.starts_with("HTTP/1.") => RequestState::OtherMethod,
        _ => RequestState::Malformed,
    }
}

fn response(code: u16, reason: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn health_json(
    now_ms: u64,
    ip: Option<Ipv4Cidr>,
    mac: EthernetAddress,
    frames: FrameCounters,
    c: &ServiceCounters,
) -> String {
    let address = ip.map_or(String::from("null"), |ip| format!("\"{ip}\""));
    let m = mac.0;
    let mac = format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    );
    format!(
        "{{\"status\":\"ok\",\"version\":\"{}\",\"uptime_ms\":{now_ms},\"address\":{address},\"mac\":\"{mac}\",\"counters\":{{\"rx_frames\":{},\"tx_frames\":{},\"rx_errors\":{},\"tx_errors\":{},\"http_requests\":{},\"http_errors\":{},\"echo_connections\":{},\"echo_bytes\":{},\"echo_active\":{},\"echo_idle_aborts\":{},\"tcp_sockets\":{},\"http_active\":{},\"aborted_stale\":{},\"evicted_idle\":{},\"rx_malformed\":{},\"rx_oversized\":{},\"rx_fragments\":{},\"rx_unsupported\":{}}}}}",
        crate::VERSION,
        frames.rx_frames,
        frames.tx_frames,
        frames.rx_errors,
        frames.tx_errors,
        c.http_requests,
        c.http_errors,
        c.echo_connections,
        c.echo_bytes,
        c.echo_active,
        c.echo_idle_aborts,
        c.tcp_sockets,
        c.http_active,
        c.aborted_stale,
        c.evicted_idle,
        frames.rx_dropped.malformed,
        frames.rx_dropped.oversized,
        frames.rx_dropped.fragments,
        frames.rx_dropped.unsupported
    )
}
