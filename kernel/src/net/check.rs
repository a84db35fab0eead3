//! `cairn.net-check=<ipv4>[:port]|[<ipv6>][:port][,…]`: a client that proves the path to each peer. For each
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

use super::socket::{TcpId, UdpId};
use super::Network;
use crate::arch::{clock, serial};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::str::FromStr;
use smoltcp::socket::tcp::State;
use smoltcp::wire::{IpEndpoint, Ipv4Address, Ipv6Address};

pub const CHECK_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;
/// The most targets one check accepts.
const MAX_TARGETS: usize = 8;
const DEFAULT_PORT: u16 = 7;
/// UDP ports the check binds, one per target.
const FIRST_UDP_PORT: u16 = 40_700;
const UDP_DATAGRAMS: u32 = 64;
const UDP_DATAGRAM_BYTES: usize = 512;
/// Datagrams in flight at most.
const UDP_WINDOW: u32 = 4;
const UDP_RESEND_GAP_MS: u64 = 50;
const CHUNK_BYTES: usize = 16 * 1024;
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
    udp_port: u16,
    tcp: Option<TcpId>,
    udp: Option<UdpId>,
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

/// The check's state; poll it after each `Network::poll`.
pub struct NetCheck {
    targets: Vec<Target>,
    bytes: u64,
    scratch: Vec<u8>,
    reported_done: bool,
}

/// Parses `a.b.c.d[:port]`, `[v6][:port]` or a bare IPv6 address.
fn parse_target(s: &str) -> Option<IpEndpoint> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if tail.is_empty() => DEFAULT_PORT,
            None => return None,
        };
        return Some(IpEndpoint::new(
            Ipv6Address::from_str(ip).ok()?.into(),
            port,
        ));
    }
    if s.matches(':').count() > 1 {
        let ip = Ipv6Address::from_str(s).ok()?;
        return Some(IpEndpoint::new(ip.into(), DEFAULT_PORT));
    }
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
    pub fn new(targets: &str, bytes: Option<&str>) -> Option<NetCheck> {
        let bytes = bytes
            .and_then(|b| b.parse().ok())
            .unwrap_or(CHECK_BYTES_DEFAULT);
        let now = now_ms();
        let mut list = Vec::new();
        let texts = targets
            .split(',')
            .filter(|t| !t.is_empty())
            .take(MAX_TARGETS);
        for (i, text) in texts.enumerate() {
            let Some(remote) = parse_target(text) else {
                serial::write_fmt(format_args!("net-check: bad target {text:?}, skipped\n"));
                continue;
            };
            list.push(Target {
                remote,
                udp_port: FIRST_UDP_PORT + i as u16,
                tcp: None,
                udp: None,
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
        (!list.is_empty()).then(|| NetCheck {
            targets: list,
            bytes,
            scratch: vec![0; CHUNK_BYTES],
            reported_done: false,
        })
    }

    /// Advances every target; true when data moved.
    pub fn poll(&mut self, net: &mut Network) -> bool {
        let now = now_ms();
        let mut moved = false;
        for t in self.targets.iter_mut() {
            moved |= match t.phase {
                Phase::Connecting { retry_at_ms } => connect(t, net, now, retry_at_ms),
                Phase::Streaming => stream(t, net, self.bytes, now, &mut self.scratch),
                Phase::Udp { until_ms } => udp_step(t, net, now, until_ms),
                Phase::Done => false,
            };
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

fn fail(t: &mut Target, net: &mut Network, why: String) {
    serial::write_fmt(format_args!("net-check: tcp {} FAILED: {why}\n", t.remote));
    if let Some(id) = t.tcp.take() {
        net.tcp_abort(id);
    }
    t.failed = true;
    t.phase = Phase::Udp {
        until_ms: now_ms() + UDP_WAIT_MS,
    };
}

fn connect(t: &mut Target, net: &mut Network, now: u64, retry_at_ms: u64) -> bool {
    if now.saturating_sub(t.started_ms) > CONNECT_DEADLINE_MS {
        fail(t, net, String::from("could not connect"));
        return false;
    }
    let Some(id) = t.tcp else {
        if now >= retry_at_ms {
            match net.tcp_connect(t.remote) {
                Ok(id) => t.tcp = Some(id),
                Err(e) => fail(t, net, format!("{e}")),
            }
        }
        return false;
    };
    match net.tcp_state(id) {
        Ok(State::Established) => {
            t.phase = Phase::Streaming;
            t.streaming_since_ms = now;
            true
        }
        // Refused (the peer is not listening yet): retry later on a fresh connection.
        Ok(State::Closed) | Err(_) => {
            net.tcp_abort(id);
            t.tcp = None;
            t.phase = Phase::Connecting {
                retry_at_ms: now + CONNECT_RETRY_MS,
            };
            false
        }
        Ok(_) => false,
    }
}

fn stream(t: &mut Target, net: &mut Network, bytes: u64, now: u64, scratch: &mut [u8]) -> bool {
    let Some(id) = t.tcp else {
        fail(t, net, String::from("no connection"));
        return false;
    };
    let mut moved = false;
    while t.sent < bytes {
        let len = (bytes - t.sent).min(scratch.len() as u64) as usize;
        for (i, b) in scratch[..len].iter_mut().enumerate() {
            *b = pattern(t.sent + i as u64);
        }
        match net.tcp_send(id, &scratch[..len]) {
            Ok(0) => break,
            Ok(n) => {
                t.sent += n as u64;
                moved = true;
            }
            Err(e) => {
                fail(t, net, format!("send after {} bytes: {e}", t.sent));
                return true;
            }
        }
    }
    loop {
        match net.tcp_recv(id, scratch) {
            Ok(0) => break,
            Ok(n) => {
                let start = t.verified;
                let bad = (0..n).find(|&i| scratch[i] != pattern(start + i as u64));
                if let Some(i) = bad {
                    fail(t, net, format!("byte {} differs", start + i as u64));
                    return true;
                }
                t.verified += n as u64;
                moved = true;
            }
            Err(e) => {
                let why = format!("{e} after {} of {bytes} bytes", t.verified);
                fail(t, net, why);
                return true;
            }
        }
    }
    if t.verified >= bytes {
        net.tcp_close(id);
        t.tcp = None;
        let ms = now.saturating_sub(t.streaming_since_ms).max(1);
        serial::write_fmt(format_args!(
            "net-check: tcp {} {bytes} bytes echoed ok in {ms} ms ({} kB/s)\n",
            t.remote,
            bytes / ms
        ));
        t.phase = Phase::Udp {
            until_ms: now + UDP_WAIT_MS,
        };
    } else if now.saturating_sub(t.streaming_since_ms) > STREAM_DEADLINE_MS {
        fail(
            t,
            net,
            format!("timed out after {} of {bytes} bytes", t.verified),
        );
    }
    moved
}

fn udp_step(t: &mut Target, net: &mut Network, now: u64, until_ms: u64) -> bool {
    let id = match t.udp {
        Some(id) => id,
        None => match net.udp_bind(t.udp_port) {
            Ok(id) => *t.udp.insert(id),
            Err(e) => {
                serial::write_fmt(format_args!("net-check: udp {} FAILED: {e}\n", t.remote));
                t.phase = Phase::Done;
                return false;
            }
        },
    };
    let mut moved = false;
    // A small window keeps the burst inside the peer's receive queue; a lost datagram
    // stalls the window for at most UDP_RESEND_GAP_MS.
    let window_open = t.udp_sent - t.udp_received < UDP_WINDOW
        || now.saturating_sub(t.udp_last_send_ms) > UDP_RESEND_GAP_MS;
    if t.udp_sent < UDP_DATAGRAMS && window_open {
        let mut datagram = [0u8; UDP_DATAGRAM_BYTES];
        datagram[..4].copy_from_slice(&t.udp_sent.to_le_bytes());
        if net.udp_send_to(id, &datagram, t.remote).is_ok() {
            t.udp_sent += 1;
            t.udp_last_send_ms = now;
            moved = true;
        }
    }
    let mut buf = [0u8; UDP_DATAGRAM_BYTES];
    while let Ok(Some((n, from))) = net.udp_recv_from(id, &mut buf) {
        if from == t.remote && n == UDP_DATAGRAM_BYTES {
            t.udp_received += 1;
        }
        moved = true;
    }
    let all_back = t.udp_sent == UDP_DATAGRAMS && t.udp_received >= UDP_DATAGRAMS;
    if all_back || now > until_ms {
        serial::write_fmt(format_args!(
            "net-check: udp {} sent {} received {}\n",
            t.remote, t.udp_sent, t.udp_received
        ));
        t.phase = Phase::Done;
    }
    moved
}
