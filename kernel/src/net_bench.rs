//! `cairn.net-bench=source|sink:<ipv4>`: TCP throughput services for `cargo xtask bench net`.
//!
//! - `source`: listens on [`NET_BENCH_PORT`]; each connection accepted (one at a time) is sent
//!   `cairn.net-bench-bytes` bytes (default [`NET_BENCH_BYTES_DEFAULT`]) and closed. The host
//!   (through a 127.0.0.1 forward) or another VM reads until end of stream and times it.
//! - `sink:<ipv4>`: connects to `<ipv4>:`[`NET_BENCH_PORT`] (retrying while the peer boots),
//!   reads until the peer closes and prints what it measured with the TSC clock:
//!
//! ```text
//! net-bench: source sent <bytes> bytes in <us> us
//! net-bench: sink received <bytes> bytes in <us> us
//! net-bench: sink FAILED: <reason>
//! ```

use crate::arch::{clock, serial};
use crate::net::socket::{ListenerId, SocketError, TcpId};
use crate::net::Network;
use alloc::vec;
use alloc::vec::Vec;
use core::str::FromStr;
use smoltcp::socket::tcp::State;
use smoltcp::wire::{IpEndpoint, Ipv4Address};

pub const NET_BENCH_PORT: u16 = 5001;
pub const NET_BENCH_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Bytes queued per send call.
const CHUNK_BYTES: usize = 16 * 1024;
const CONNECT_RETRY_MS: u64 = 500;
/// The sink gives up when the source is not reachable by then (ms after boot).
const CONNECT_DEADLINE_MS: u64 = 120_000;
const NS_PER_MS: u64 = 1_000_000;

enum Mode {
    Source {
        listener: ListenerId,
        current: Option<(TcpId, u64, u64)>,
    },
    Sink {
        remote: IpEndpoint,
        conn: Option<TcpId>,
        retry_at_ms: u64,
        started_ns: u64,
        received: u64,
        done: bool,
    },
}

/// The bench service; poll it after each `Network::poll`.
pub struct NetBench {
    mode: Mode,
    bytes: u64,
    buf: Vec<u8>,
}

fn now_ms() -> u64 {
    clock::now_ns() / NS_PER_MS
}

impl NetBench {
    /// Creates the service from the option values; None (with a log line) when they are bad.
    pub fn new(net: &mut Network, mode: &str, bytes: Option<&str>) -> Option<NetBench> {
        let bytes = bytes
            .and_then(|b| b.parse().ok())
            .unwrap_or(NET_BENCH_BYTES_DEFAULT);
        let mode = if mode == "source" {
            match net.tcp_listen(NET_BENCH_PORT, 1) {
                Ok(listener) => Mode::Source {
                    listener,
                    current: None,
                },
                Err(e) => {
                    log::error!("net-bench: listen: {e}");
                    return None;
                }
            }
        } else if let Some(ip) = mode.strip_prefix("sink:") {
            let Ok(ip) = Ipv4Address::from_str(ip) else {
                log::error!("net-bench: sink:{ip}: not an IPv4 address");
                return None;
            };
            Mode::Sink {
                remote: IpEndpoint::new(ip.into(), NET_BENCH_PORT),
                conn: None,
                retry_at_ms: 0,
                started_ns: 0,
                received: 0,
                done: false,
            }
        } else {
            log::error!("net-bench: {mode}: expected source or sink:<ipv4>");
            return None;
        };
        serial::write_fmt(format_args!(
            "net-bench: {} on port {NET_BENCH_PORT}, {bytes} bytes per stream\n",
            if matches!(mode, Mode::Source { .. }) {
                "source"
            } else {
                "sink"
            }
        ));
        Some(NetBench {
            mode,
            bytes,
            buf: vec![0x5a; CHUNK_BYTES],
        })
    }

    /// Moves data; true when anything happened.
    pub fn poll(&mut self, net: &mut Network) -> bool {
        let total = self.bytes;
        match &mut self.mode {
            Mode::Source { listener, current } => source(net, *listener, current, total, &self.buf),
            Mode::Sink {
                remote,
                conn,
                retry_at_ms,
                started_ns,
                received,
                done,
            } => {
                if *done {
                    return false;
                }
                let outcome = sink(
                    net,
                    *remote,
                    conn,
                    retry_at_ms,
                    started_ns,
                    received,
                    &mut self.buf,
                );
                match outcome {
                    Ok(moved) => moved,
                    Err(why) => {
                        *done = true;
                        if let Some(id) = conn.take() {
                            net.tcp_close(id);
                        }
                        match why {
                            SinkEnd::Finished => serial::write_fmt(format_args!(
                                "net-bench: sink received {received} bytes in {} us\n",
                                (clock::now_ns() - *started_ns) / 1_000
                            )),
                            SinkEnd::Failed(e) => serial::write_fmt(format_args!(
                                "net-bench: sink FAILED: {e} after {received} bytes\n"
                            )),
                        }
                        true
                    }
                }
            }
        }
    }
}

/// Serves one connection at a time: (connection, bytes sent, start ns).
fn source(
    net: &mut Network,
    listener: ListenerId,
    current: &mut Option<(TcpId, u64, u64)>,
    total: u64,
    buf: &[u8],
) -> bool {
    if current.is_none() {
        match net.tcp_accept(listener) {
            Ok(Some(id)) => *current = Some((id, 0, clock::now_ns())),
            Ok(None) | Err(_) => return false,
        }
    }
    let Some((id, sent, started)) = current.as_mut() else {
        return false;
    };
    let mut moved = false;
    while *sent < total {
        let want = (total - *sent).min(buf.len() as u64) as usize;
        match net.tcp_send(*id, &buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                *sent += n as u64;
                moved = true;
            }
            Err(e) => {
                serial::write_fmt(format_args!(
                    "net-bench: source FAILED: {e} after {sent} bytes\n"
                ));
                net.tcp_abort(*id);
                *current = None;
                return true;
            }
        }
    }
    if *sent >= total {
        serial::write_fmt(format_args!(
            "net-bench: source sent {sent} bytes in {} us\n",
            (clock::now_ns() - *started) / 1_000
        ));
        net.tcp_close(*id);
        *current = None;
        moved = true;
    }
    moved
}

enum SinkEnd {
    Finished,
    Failed(SocketError),
}

fn sink(
    net: &mut Network,
    remote: IpEndpoint,
    conn: &mut Option<TcpId>,
    retry_at_ms: &mut u64,
    started_ns: &mut u64,
    received: &mut u64,
    buf: &mut [u8],
) -> Result<bool, SinkEnd> {
    let Some(id) = *conn else {
        let now = now_ms();
        if now < *retry_at_ms {
            return Ok(false);
        }
        if now > CONNECT_DEADLINE_MS {
            return Err(SinkEnd::Failed(SocketError::NotConnected));
        }
        *retry_at_ms = now + CONNECT_RETRY_MS;
        *conn = Some(net.tcp_connect(remote).map_err(SinkEnd::Failed)?);
        *started_ns = clock::now_ns();
        return Ok(true);
    };
    let state = net.tcp_state(id).map_err(SinkEnd::Failed)?;
    if state == State::Closed && *received == 0 {
        // Refused or timed out while the source boots: try again.
        net.tcp_close(id);
        *conn = None;
        return Ok(false);
    }
    let mut moved = false;
    loop {
        match net.tcp_recv(id, buf) {
            Ok(0) => return Ok(moved),
            Ok(n) => {
                *received += n as u64;
                moved = true;
            }
            Err(SocketError::Closed) => return Err(SinkEnd::Finished),
            Err(e) => return Err(SinkEnd::Failed(e)),
        }
    }
}
