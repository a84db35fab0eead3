//! TCP echo (RFC 862) on port 7, built on the socket layer (`socket`) as the runtime's
//! services will be: a listener with a bounded backlog, at most [`MAX_ECHO_CONNECTIONS`]
//! connections, each echoing only what its send buffer can take, so no byte is ever held
//! outside TCP's own buffers.

use super::socket::{ListenerId, SocketError, TcpId};
use super::Network;
use alloc::vec;
use alloc::vec::Vec;

pub const ECHO_PORT: u16 = 7;
/// Connections waiting to be accepted.
const ECHO_BACKLOG: usize = 4;
/// Connections served at once.
const MAX_ECHO_CONNECTIONS: usize = 16;
/// Bytes moved per connection per poll.
const ECHO_CHUNK_BYTES: usize = 16 * 1024;
/// A connection that moves no byte (the peer sends nothing, or stops reading what is echoed)
/// for this long is aborted, so idle or stuck peers cannot hold every slot.
pub const ECHO_IDLE_TIMEOUT_MS: u64 = 10_000;
const NS_PER_MS: u64 = 1_000_000;

pub struct TcpEcho {
    listener: ListenerId,
    /// Each connection with the monotonic ms of its last progress.
    connections: Vec<(TcpId, u64)>,
    scratch: Vec<u8>,
}

impl TcpEcho {
    pub fn new(net: &mut Network) -> Result<TcpEcho, SocketError> {
        Ok(TcpEcho {
            listener: net.tcp_listen(ECHO_PORT, ECHO_BACKLOG)?,
            connections: Vec::new(),
            scratch: vec![0; ECHO_CHUNK_BYTES],
        })
    }

    /// Accepts and serves; true when data moved.
    pub fn poll(&mut self, net: &mut Network) -> bool {
        while self.connections.len() < MAX_ECHO_CONNECTIONS {
            match net.tcp_accept(self.listener) {
                Ok(Some(id)) => {
                    self.connections.push((id, now_ms()));
                    net.services.counters_mut().echo_connections += 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let mut moved = false;
        let scratch = &mut self.scratch;
        let now = now_ms();
        self.connections
            .retain_mut(|(id, last)| match echo_once(net, *id, scratch) {
                Ok(0) if now.saturating_sub(*last) > ECHO_IDLE_TIMEOUT_MS => {
                    net.tcp_abort(*id);
                    net.services.counters_mut().echo_idle_aborts += 1;
                    false
                }
                Ok(n) => {
                    if n > 0 {
                        moved = true;
                        *last = now;
                    }
                    net.services.counters_mut().echo_bytes += n as u64;
                    true
                }
                Err(_) => {
                    // The peer finished (or reset): finish our side; the layer reaps the socket.
                    net.tcp_close(*id);
                    false
                }
            });
        net.services.counters_mut().echo_active = self.connections.len() as u64;
        moved
    }
}

fn now_ms() -> u64 {
    crate::arch::clock::now_ns() / NS_PER_MS
}

/// Echoes what fits in the send buffer; returns the bytes echoed.
fn echo_once(net: &mut Network, id: TcpId, scratch: &mut [u8]) -> Result<usize, SocketError> {
    let room = net.tcp_send_capacity(id)?.min(scratch.len());
    if room == 0 {
        return Ok(0);
    }
    let n = net.tcp_recv(id, &mut scratch[..room])?;
    if n > 0 {
        // `n` <= the free send space measured above, so all of it is queued.
        net.tcp_send(id, &scratch[..n])?;
    }
    Ok(n)
}
