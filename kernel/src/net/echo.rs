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

pub struct TcpEcho {
    listener: ListenerId,
    connections: Vec<TcpId>,
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
                    self.connections.push(id);
                    net.services.counters_mut().echo_connections += 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let mut moved = false;
        let scratch = &mut self.scratch;
        self.connections
            .retain(|&id| match echo_once(net, id, scratch) {
                Ok(n) => {
                    moved |= n > 0;
                    net.services.counters_mut().echo_bytes += n as u64;
                    true
                }
                Err(_) => {
                    // The peer finished (or reset): finish our side; the layer reaps the socket.
                    net.tcp_close(id);
                    false
                }
            });
        moved
    }
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
