//! `cairn.net-check=<ipv4>[:port][,…]`: a client that proves the path to each peer. For each
//! target it streams [`CHECK_BYTES_DEFAULT`] bytes (or `cairn.net-check-bytes=N`) of a
//! position-dependent pattern over TCP to the target's echo port (7 unless given), checks
//! every echoed byte against the pattern as it arrives, then sends [`UDP_DATAGRAMS`] UDP
//! datagrams to the same port and counts the echoes. Lines host tests match:
//!
//! ```text
//! net-check: tcp <ip>:<port> <bytes> bytes echoed ok in <ms> ms (<kB/s> kB/s)
//! net-check: tcp <ip>:<port> FAILED: <reason>
//! net-check: udp <ip>:<port> sent <n> received <m>
//! net-check: done (<ok> ok, <failed> failed)
//! ```
//! Peers that are not up yet are retried until [`CONNECT_DEADLINE_MS`].

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::str::FromStr;
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpEndpoint, Ipv4Address};

use crate::arch::{clock, serial};

pub const CHECK_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;
/// The most targets one check accepts.
const MAX_TARGETS: usize = 8;
const DEFAULT_PORT: u16 = 7;
const FIRST_LOCAL_PORT: u16 = 49_200;
const TCP_BUFFER_BYTES: usize = 64 * 1024;
const UDP_DATAGRAMS: u32 = 64;
const UDP_DATAGRAM_BYTES: usize = 512;
const UDP_BUFFER_PACKETS: usize = 32;
/// Datagrams in flight at most.
const UDP_WINDOW: u32 = 4;
const UDP_RESEND_GAP_MS: u64 = 50;
const CONNECT_RETRY_MS: u64 = 500;
const CONNECT_DEADLINE_MS: u64 = 120_000;
const STREAM_DEADLINE_MS: u64 = 600_000;
const UDP_WAIT_MS: u64 = 5_000;
const NS_PER_MS: u64 = 1_000_000;

/// The pattern byte at stream position `at`.
fn pattern(at: u64) -> u8 {
    (at.wrapping_mul(0x9e37_79b9) >> 11) as u8 ^ (at as u8)
}

fn now_ms() -> u64 {
    clock::now_ns() / NS_PER_MS
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting { retry_at_ms: u64 },
    Streaming,
    Udp { until_ms: u64 },
    Done,
}

struct Target {
    remote: IpEndpoint,
    local_port: u16,
    tcp: SocketHandle,
    udp: SocketHandle,
    phase: Phase,
    started_ms: u64,
    streaming_since_ms: u64,
    sent: u64,
    verified: u64,
    udp_sent: u32,
    udp_received: u32,
    udp_last_send_ms: u64,
    failed: bool,
}

pub struct NetCheck {
    targets: Vec<Target>,
    bytes: u64,
    reported_done: bool,
}

/// Parses `a.b.c.d[:port]`.
fn parse_target(s: &str) -> Option<IpEndpoint> {
    let (ip, port) = match s.split_once(':') {
        Some((ip, port)) => (ip, port.parse().ok()?),
        None => (s, DEFAULT_PORT),
    };
    Some(IpEndpoint::new(
        Ipv4Address::from_str(ip).ok()?.into(),
        port,
    ))
}

impl NetCheck {
    /// Creates the check from the option values; None when no target parses.
    pub fn new(
        sockets: &mut SocketSet<'static>,
        targets: &str,
        bytes: Option<&str>,
    ) -> Option<NetCheck> {
        let bytes = bytes
            .and_then(|b| b.parse().ok())
            .unwrap_or(CHECK_BYTES_DEFAULT);
        let now = now_ms();
        let mut list = Vec::new();
        for (i, text) in targets
            .split(',')
            .filter(|t| !t.is_empty())
            .take(MAX_TARGETS)
            .enumerate()
        {
            let Some(remote) = parse_target(text) else {
                serial::write_fmt(format_args!("net-check: bad target {text:?}, skipped\n"));
                continue;
            };
            let tcp = sockets.add(tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; TCP_BUFFER_BYTES]),
                tcp::SocketBuffer::new(vec![0; TCP_BUFFER_BYTES]),
            ));
            let udp_buffer = || {
                udp::PacketBuffer::new(
                    vec![udp::PacketMetadata::EMPTY; UDP_BUFFER_PACKETS],
                    vec![0; UDP_BUFFER_PACKETS * UDP_DATAGRAM_BYTES],
                )
            };
            let udp = sockets.add(udp::Socket::new(udp_buffer(), udp_buffer()));
            list.push(Target {
                remote,
                local_port: FIRST_LOCAL_PORT + i as u16,
                tcp,
                udp,
                phase: Phase::Connecting { retry_at_ms: now },
                started_ms: now,
                streaming_since_ms: now,
                sent: 0,
                verified: 0,
                udp_sent: 0,
                udp_received: 0,
                udp_last_send_ms: 0,
                failed: false,
            });
        }
        (!list.is_empty()).then_some(NetCheck {
            targets: list,
            bytes,
            reported_done: false,
        })
    }

    /// Advances every target; true when data moved.
    pub fn poll(&mut self, iface: &mut Interface, sockets: &mut SocketSet<'static>) -> bool {
        let now = now_ms();
        let mut moved = false;
        for t in self.targets.iter_mut() {
            moved |= step(t, self.bytes, now, iface, sockets);
        }
        if !self.reported_done && self.targets.iter().all(|t| t.phase == Phase::Done) {
            self.reported_done = true;
            let failed = self.targets.iter().filter(|t| t.failed).count();
            serial::write_fmt(format_args!(
                "net-check: done ({} ok, {failed} failed)\n",
                self.targets.len() - failed
            ));
        }
        moved
    }
}

fn fail(t: &mut Target, why: String) {
    serial::write_fmt(format_args!("net-check: tcp {} FAILED: {why}\n", t.remote));
    t.failed = true;
    t.phase = Phase::Udp {
        until_ms: now_ms() + UDP_WAIT_MS,
    };
}

fn step(
    t: &mut Target,
    bytes: u64,
    now: u64,
    iface: &mut Interface,
    sockets: &mut SocketSet<'static>,
) -> bool {
    match t.phase {
        Phase::Connecting { retry_at_ms } => {
            let socket = sockets.get_mut::<tcp::Socket>(t.tcp);
            if socket.state() == tcp::State::Established {
                t.phase = Phase::Streaming;
                t.streaming_since_ms = now;
                return true;
            }
            if now.saturating_sub(t.started_ms) > CONNECT_DEADLINE_MS {
                socket.abort();
                fail(t, String::from("could not connect"));
                return false;
            }
            if !socket.is_open() && now >= retry_at_ms {
                let local = t.local_port;
                if let Err(e) = socket.connect(iface.context(), t.remote, local) {
                    fail(t, format!("connect: {e}"));
                    return false;
                }
                t.phase = Phase::Connecting {
                    retry_at_ms: now + CONNECT_RETRY_MS,
                };
            }
            false
        }
        Phase::Streaming => stream(t, bytes, now, sockets),
        Phase::Udp { until_ms } => udp_step(t, now, until_ms, sockets),
        Phase::Done => false,
    }
}

fn stream(t: &mut Target, bytes: u64, now: u64, sockets: &mut SocketSet<'static>) -> bool {
    let socket = sockets.get_mut::<tcp::Socket>(t.tcp);
    let mut moved = false;
    while t.sent < bytes && socket.can_send() {
        let start = t.sent;
        let want = (bytes - start).min(usize::MAX as u64) as usize;
        let Ok(n) = socket.send(|buf| {
            let n = buf.len().min(want);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(start + i as u64);
            }
            (n, n)
        }) else {
            break;
        };
        if n == 0 {
            break;
        }
        t.sent += n as u64;
        moved = true;
    }
    while socket.can_recv() {
        let start = t.verified;
        let Ok((n, bad)) = socket.recv(|buf| {
            let bad = buf
                .iter()
                .enumerate()
                .position(|(i, &b)| b != pattern(start + i as u64));
            (buf.len(), (buf.len(), bad))
        }) else {
            break;
        };
        if let Some(i) = bad {
            socket.abort();
            fail(t, format!("byte {} differs", start + i as u64));
            return true;
        }
        t.verified += n as u64;
        moved |= n > 0;
    }
    if t.verified >= bytes {
        socket.close();
        let ms = now.saturating_sub(t.streaming_since_ms).max(1);
        serial::write_fmt(format_args!(
            "net-check: tcp {} {bytes} bytes echoed ok in {ms} ms ({} kB/s)\n",
            t.remote,
            bytes / ms
        ));
        t.phase = Phase::Udp {
            until_ms: now + UDP_WAIT_MS,
        };
    } else if !socket.is_open() || now.saturating_sub(t.streaming_since_ms) > STREAM_DEADLINE_MS {
        socket.abort();
        let why = format!("connection lost after {} of {bytes} bytes", t.verified);
        fail(t, why);
    }
    moved
}

fn udp_step(t: &mut Target, now: u64, until_ms: u64, sockets: &mut SocketSet<'static>) -> bool {
    let socket = sockets.get_mut::<udp::Socket>(t.udp);
    if !socket.is_open() && socket.bind(t.local_port).is_err() {
        t.phase = Phase::Done;
        return false;
    }
    let mut moved = false;
    // A small window keeps the burst inside the peer's receive queue; a lost datagram
    // stalls the window for at most UDP_RESEND_GAP_MS.
    let window_open = t.udp_sent - t.udp_received < UDP_WINDOW
        || now.saturating_sub(t.udp_last_send_ms) > UDP_RESEND_GAP_MS;
    if t.udp_sent < UDP_DATAGRAMS && window_open && socket.can_send() {
        let mut datagram = [0u8; UDP_DATAGRAM_BYTES];
        datagram[..4].copy_from_slice(&t.udp_sent.to_le_bytes());
        if socket.send_slice(&datagram, t.remote).is_ok() {
            t.udp_sent += 1;
            t.udp_last_send_ms = now;
            moved = true;
        }
    }
    let mut buf = [0u8; UDP_DATAGRAM_BYTES];
    while let Ok((n, meta)) = socket.recv_slice(&mut buf) {
        if meta.endpoint == t.remote && n == UDP_DATAGRAM_BYTES {
            t.udp_received += 1;
        }
        moved = true;
    }
    if t.udp_received >= t.udp_sent.max(1) && t.udp_sent == UDP_DATAGRAMS || now > until_ms {
        serial::write_fmt(format_args!(
            "net-check: udp {} sent {} received {}\n",
            t.remote, t.udp_sent, t.udp_received
        ));
        t.phase = Phase::Done;
    }
    moved
}
