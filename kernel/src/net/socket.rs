//! The socket layer the runtime uses: TCP listeners with a bounded accept pool, outgoing TCP
//! connections, and UDP endpoints, over the cards' smoltcp sockets.
//!
//! With several network cards (see `net`), a listener listens on every card
//! ([`Network::tcp_listen`]) or on one ([`Network::tcp_listen_on`]), with its own backlog on
//! each; an accepted connection stays on the card it arrived on. Outgoing connections leave
//! through the card `Network::nic_for` picks; UDP endpoints live on the primary card.
//!
//! Handles are small `Copy` ids; every call returns a typed [`SocketError`], none panics on
//! a stale handle. Bounds: at most [`MAX_TCP_SOCKETS`] TCP sockets (listening ones included),
//! [`MAX_UDP_SOCKETS`] UDP sockets, [`MAX_LISTEN_BACKLOG`] pending connections per listener.
//! A connection the caller closed is removed from the socket set once TCP has finished with
//! it (`Network::poll` reaps it).

use super::Network;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Duration;
use smoltcp::wire::IpEndpoint;

pub const MAX_TCP_SOCKETS: usize = 256;
pub const MAX_UDP_SOCKETS: usize = 32;
pub const MAX_LISTEN_BACKLOG: usize = 16;
/// Receive and send buffer of each TCP socket (smoltcp scales the window above 64 KiB).
pub const TCP_BUFFER_BYTES: usize = 64 * 1024;
/// Datagrams each UDP socket buffers per direction.
pub const UDP_BUFFER_PACKETS: usize = 64;
/// The largest UDP payload carried (one Ethernet frame, IPv4).
pub const UDP_MAX_PAYLOAD_BYTES: usize = 1472;
/// A connection whose peer sends nothing for this long is aborted (a half-open connection
/// whose SYN-ACK stays unacknowledged included); a listener's slot then listens again.
///
/// smoltcp counts this from the last segment the peer sent, whether or not anything is
/// outstanding, so an idle keep-alive connection (an agent's pooled HTTP connection, a sync
/// call parked until its reply is certified) would be aborted after it too: every
/// connection therefore probes an idle peer every [`TCP_KEEP_ALIVE_MS`], and a live peer's
/// answer keeps the connection.
pub const TCP_ACK_TIMEOUT_MS: u64 = 10_000;
/// An idle connection sends a keep-alive probe this often (well inside
/// [`TCP_ACK_TIMEOUT_MS`], so that one lost probe or answer does not abort it).
pub const TCP_KEEP_ALIVE_MS: u64 = 3_000;
/// Local ports for outgoing connections are taken from this range, round robin.
const EPHEMERAL_PORTS: core::ops::RangeInclusive<u16> = 49_152..=65_535;
/// The card UDP endpoints live on.
const UDP_NIC: usize = 0;

/// A TCP connection: the card it lives on and its socket there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpId {
    nic: usize,
    handle: SocketHandle,
}

/// A listening TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerId(usize);

/// A bound UDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpId(SocketHandle);

/// Why a socket call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketError {
    /// A socket bound was reached.
    TooManySockets,
    /// The handle does not name a live socket of this layer.
    InvalidHandle,
    /// The port is already listened on or bound.
    PortInUse,
    Connect(tcp::ConnectError),
    Listen(tcp::ListenError),
    Bind(udp::BindError),
    /// The connection is not established (yet, or any more) for sending.
    NotConnected,
    /// The peer finished sending and everything it sent has been read.
    Closed,
    /// The UDP payload exceeds [`UDP_MAX_PAYLOAD_BYTES`] or the send buffer is full.
    UdpSend,
    /// A received datagram was larger than the buffer given; it was dropped.
    UdpTruncated,
}

impl core::fmt::Display for SocketError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SocketError::TooManySockets => f.write_str("socket limit reached"),
            SocketError::InvalidHandle => f.write_str("no such socket"),
            SocketError::PortInUse => f.write_str("port in use"),
            SocketError::Connect(e) => write!(f, "connect: {e}"),
            SocketError::Listen(e) => write!(f, "listen: {e}"),
            SocketError::Bind(e) => write!(f, "bind: {e}"),
            SocketError::NotConnected => f.write_str("not connected"),
            SocketError::Closed => f.write_str("connection closed by the peer"),
            SocketError::UdpSend => f.write_str("datagram too large or send buffer full"),
            SocketError::UdpTruncated => f.write_str("datagram larger than the buffer"),
        }
    }
}

struct Listener {
    port: u16,
    /// The card it listens on; `None`: every card.
    nic: Option<usize>,
    /// Sockets listening on `port`; an established one is handed out by `tcp_accept`.
    pool: Vec<TcpId>,
}

/// The layer's bookkeeping, kept inside [`Network`].
#[derive(Default)]
pub struct SocketTable {
    listeners: Vec<Option<Listener>>,
    /// Connections handed to the caller (accepted or connected).
    connections: Vec<TcpId>,
    /// Connections the caller closed, removed once TCP is done with them.
    closing: Vec<TcpId>,
    udp: Vec<(SocketHandle, u16)>,
    pub(super) tcp_count: usize,
    next_port: u16,
}

fn new_tcp() -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER_BYTES]),
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER_BYTES]),
    );
    socket.set_timeout(Some(Duration::from_millis(TCP_ACK_TIMEOUT_MS)));
    socket.set_keep_alive(Some(Duration::from_millis(TCP_KEEP_ALIVE_MS)));
    socket
}

impl Network {
    fn add_tcp(&mut self, nic: usize) -> Result<TcpId, SocketError> {
        if self.table.tcp_count >= MAX_TCP_SOCKETS {
            return Err(SocketError::TooManySockets);
        }
        let sockets = &mut self
            .nics
            .get_mut(nic)
            .ok_or(SocketError::InvalidHandle)?
            .sockets;
        self.table.tcp_count += 1;
        Ok(TcpId {
            nic,
            handle: sockets.add(new_tcp()),
        })
    }

    fn tcp_socket(&mut self, id: TcpId) -> &mut tcp::Socket<'static> {
        self.nics[id.nic].sockets.get_mut::<tcp::Socket>(id.handle)
    }

    fn remove_tcp(&mut self, id: TcpId) {
        self.nics[id.nic].sockets.remove(id.handle);
        self.table.tcp_count -= 1;
    }

    fn listening_socket(&mut self, nic: usize, port: u16) -> Result<TcpId, SocketError> {
        let id = self.add_tcp(nic)?;
        if let Err(e) = self.tcp_socket(id).listen(port) {
            self.remove_tcp(id);
            return Err(SocketError::Listen(e));
        }
        Ok(id)
    }

    /// Listens on `port` on every card, with up to `backlog` connections pending acceptance
    /// on each.
    pub fn tcp_listen(&mut self, port: u16, backlog: usize) -> Result<ListenerId, SocketError> {
        self.listen(None, port, backlog)
    }

    /// Listens on `port` on card `nic` only (0 is the primary card).
    pub fn tcp_listen_on(
        &mut self,
        nic: usize,
        port: u16,
        backlog: usize,
    ) -> Result<ListenerId, SocketError> {
        if nic >= self.nics.len() {
            return Err(SocketError::InvalidHandle);
        }
        self.listen(Some(nic), port, backlog)
    }

    fn listen(
        &mut self,
        nic: Option<usize>,
        port: u16,
        backlog: usize,
    ) -> Result<ListenerId, SocketError> {
        let taken = self
            .table
            .listeners
            .iter()
            .flatten()
            .any(|l| l.port == port && (l.nic.is_none() || nic.is_none() || l.nic == nic));
        if taken {
            return Err(SocketError::PortInUse);
        }
        let nics: Vec<usize> = match nic {
            Some(n) => vec![n],
            None => (0..self.nics.len()).collect(),
        };
        let mut pool = Vec::new();
        for &n in &nics {
            for _ in 0..backlog.clamp(1, MAX_LISTEN_BACKLOG) {
                match self.listening_socket(n, port) {
                    Ok(id) => pool.push(id),
                    Err(e) => {
                        for id in pool {
                            self.remove_tcp(id);
                        }
                        return Err(e);
                    }
                }
            }
        }
        self.table
            .listeners
            .push(Some(Listener { port, nic, pool }));
        Ok(ListenerId(self.table.listeners.len() - 1))
    }

    /// An established connection on the listener (on any of its cards), if one is waiting.
    /// Its pool slot listens again.
    pub fn tcp_accept(&mut self, id: ListenerId) -> Result<Option<TcpId>, SocketError> {
        let listener = self
            .table
            .listeners
            .get(id.0)
            .and_then(Option::as_ref)
            .ok_or(SocketError::InvalidHandle)?;
        let port = listener.port;
        let nics = &self.nics;
        let ready = listener.pool.iter().position(|&t| {
            let s = nics[t.nic].sockets.get::<tcp::Socket>(t.handle);
            s.may_send() || s.may_recv() && s.state() != tcp::State::Listen
        });
        let Some(index) = ready else {
            return Ok(None);
        };
        let nic = listener.pool[index].nic;
        let replacement = self.listening_socket(nic, port)?;
        let Some(listener) = self.table.listeners.get_mut(id.0).and_then(Option::as_mut) else {
            return Err(SocketError::InvalidHandle);
        };
        let conn = core::mem::replace(&mut listener.pool[index], replacement);
        self.table.connections.push(conn);
        Ok(Some(conn))
    }

    /// Starts a connection to `remote` (through the card `nic_for` picks); poll
    /// [`Network::tcp_state`] for Established.
    pub fn tcp_connect(&mut self, remote: IpEndpoint) -> Result<TcpId, SocketError> {
        let id = self.add_tcp(self.nic_for(remote.addr))?;
        let span = u32::from(EPHEMERAL_PORTS.end() - EPHEMERAL_PORTS.start()) + 1;
        let port = EPHEMERAL_PORTS.start() + (u32::from(self.table.next_port) % span) as u16;
        self.table.next_port = self.table.next_port.wrapping_add(1);
        let nic = &mut self.nics[id.nic];
        let socket = nic.sockets.get_mut::<tcp::Socket>(id.handle);
        if let Err(e) = socket.connect(nic.iface.context(), remote, port) {
            self.remove_tcp(id);
            return Err(SocketError::Connect(e));
        }
        self.table.connections.push(id);
        Ok(id)
    }

    fn connection(&mut self, id: TcpId) -> Result<&mut tcp::Socket<'static>, SocketError> {
        if !self.table.connections.contains(&id) {
            return Err(SocketError::InvalidHandle);
        }
        Ok(self.tcp_socket(id))
    }

    /// The connection's TCP state.
    pub fn tcp_state(&mut self, id: TcpId) -> Result<tcp::State, SocketError> {
        Ok(self.connection(id)?.state())
    }

    /// The remote endpoint of the connection (None before it has one).
    pub fn tcp_remote(&mut self, id: TcpId) -> Result<Option<IpEndpoint>, SocketError> {
        Ok(self.connection(id)?.remote_endpoint())
    }

    /// Queues as much of `data` as fits; returns the bytes queued (0 when the buffer is full).
    pub fn tcp_send(&mut self, id: TcpId, data: &[u8]) -> Result<usize, SocketError> {
        let socket = self.connection(id)?;
        if !socket.may_send() {
            return Err(SocketError::NotConnected);
        }
        socket
            .send_slice(data)
            .map_err(|_| SocketError::NotConnected)
    }

    /// Free space in the connection's send buffer, in bytes.
    pub fn tcp_send_capacity(&mut self, id: TcpId) -> Result<usize, SocketError> {
        let socket = self.connection(id)?;
        Ok(socket.send_capacity() - socket.send_queue())
    }

    /// Reads received bytes into `buf`; 0 when none are waiting; `Err(Closed)` when the peer
    /// has finished and all its bytes were read.
    pub fn tcp_recv(&mut self, id: TcpId, buf: &mut [u8]) -> Result<usize, SocketError> {
        let socket = self.connection(id)?;
        if socket.can_recv() {
            return socket.recv_slice(buf).map_err(|_| SocketError::Closed);
        }
        if !socket.may_recv() && socket.state() != tcp::State::SynSent {
            return Err(SocketError::Closed);
        }
        Ok(0)
    }

    /// Closes the connection gracefully (FIN after queued data); the handle is dead after.
    pub fn tcp_close(&mut self, id: TcpId) {
        if let Ok(socket) = self.connection(id) {
            socket.close();
            self.table.connections.retain(|&h| h != id);
            self.table.closing.push(id);
        }
    }

    /// Aborts the connection (RST); the handle is dead after.
    pub fn tcp_abort(&mut self, id: TcpId) {
        if let Ok(socket) = self.connection(id) {
            socket.abort();
            self.table.connections.retain(|&h| h != id);
            self.table.closing.push(id);
        }
    }

    /// Binds a UDP endpoint to `port`.
    pub fn udp_bind(&mut self, port: u16) -> Result<UdpId, SocketError> {
        if self.table.udp.len() >= MAX_UDP_SOCKETS {
            return Err(SocketError::TooManySockets);
        }
        if self.table.udp.iter().any(|&(_, p)| p == port) {
            return Err(SocketError::PortInUse);
        }
        let buffer = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_BUFFER_PACKETS],
                vec![0; UDP_BUFFER_PACKETS * UDP_MAX_PAYLOAD_BYTES],
            )
        };
        let mut socket = udp::Socket::new(buffer(), buffer());
        socket.bind(port).map_err(SocketError::Bind)?;
        let handle = self.nics[UDP_NIC].sockets.add(socket);
        self.table.udp.push((handle, port));
        Ok(UdpId(handle))
    }

    fn udp_socket(&mut self, id: UdpId) -> Result<&mut udp::Socket<'static>, SocketError> {
        if !self.table.udp.iter().any(|&(h, _)| h == id.0) {
            return Err(SocketError::InvalidHandle);
        }
        Ok(self.nics[UDP_NIC].sockets.get_mut::<udp::Socket>(id.0))
    }

    /// Queues one datagram to `remote`.
    pub fn udp_send_to(
        &mut self,
        id: UdpId,
        data: &[u8],
        remote: IpEndpoint,
    ) -> Result<(), SocketError> {
        if data.len() > UDP_MAX_PAYLOAD_BYTES {
            return Err(SocketError::UdpSend);
        }
        let socket = self.udp_socket(id)?;
        socket
            .send_slice(data, remote)
            .map_err(|_| SocketError::UdpSend)
    }

    /// One received datagram (truncated to `buf`), if any: (bytes, sender).
    pub fn udp_recv_from(
        &mut self,
        id: UdpId,
        buf: &mut [u8],
    ) -> Result<Option<(usize, IpEndpoint)>, SocketError> {
        let socket = self.udp_socket(id)?;
        match socket.recv_slice(buf) {
            Ok((n, meta)) => Ok(Some((n, meta.endpoint))),
            Err(udp::RecvError::Exhausted) => Ok(None),
            Err(udp::RecvError::Truncated) => Err(SocketError::UdpTruncated),
        }
    }

    /// Re-arms listener slots whose half-open connection died, and removes closed
    /// connections from their socket sets.
    pub(super) fn reap_closed(&mut self) {
        for listener in self.table.listeners.iter().flatten() {
            for &t in &listener.pool {
                let socket = self.nics[t.nic].sockets.get_mut::<tcp::Socket>(t.handle);
                if !socket.is_open() {
                    // Listening again on the slot's own port cannot fail.
                    let _ = socket.listen(listener.port);
                }
            }
        }
        let nics = &mut self.nics;
        let mut removed = 0;
        self.table.closing.retain(|&t| {
            let sockets = &mut nics[t.nic].sockets;
            let done = matches!(
                sockets.get::<tcp::Socket>(t.handle).state(),
                tcp::State::Closed | tcp::State::TimeWait
            );
            if done {
                sockets.remove(t.handle);
                removed += 1;
            }
            !done
        });
        self.table.tcp_count -= removed;
    }
}
