//! The node runtime: drives the sans-IO node (`node::replica::stack::Stack`) with the
//! kernel's sockets, clock and entropy.
//!
//! Started when a boot module holds a node configuration (`config`: QEMU
//! `-initrd node-0.cfg` under PVH, or the fw_cfg file `opt/cairn/node.cfg` that the UEFI
//! entry turns into a module under `kernel.efi`). At start the node asks for its attestation
//! report once ([`attestation`]): under SEV-SNP `GET /_/attestation` serves it, otherwise
//! that endpoint answers 404 with [`NO_TEE_REASON`]. The loop, which never blocks on one connection:
//! 1. poll the interface;
//! 2. P2P on TCP [`P2P_PORT`]: node `i` dials every peer `j < i` and accepts from peers
//!    `j > i`, recognised by their source address (anything else is refused). A dial that
//!    fails is retried with exponential backoff ([`RECONNECT_MIN_MS`]..[`RECONNECT_MAX_MS`]).
//!    Every time a stream (re)starts, `Stack::peer_connection_reset` is called and bytes
//!    queued for the old stream are dropped;
//! 3. HTTP API on TCP [`HTTP_PORT`] on every network card (P2P is on the first card only):
//!    each accepted connection gets a `ConnId`; its bytes go to
//!    `Stack::http_receive`, the stack's outputs are written back, and the connection is closed
//!    when the stack asks;
//! 4. time: `Stack::handle_timeout` once `now >= poll_deadline()`; `now` is the CMOS RTC's
//!    wall-clock at boot plus the TSC's monotonic nanoseconds;
//! 5. when nothing moved, sleep until the next APIC tick (1 ms).
//!
//! With a virtio-blk disk the node keeps its state there (`store`; `Stack::with_store`):
//! boot recovers the checkpoint, CUP and logged blocks, or formats an empty or unusable disk
//! and lets the node catch up by state sync. `/metrics` reports the store's usage.
//!
//! Back-pressure: a peer's outgoing queue above [`PEER_PAUSE_BYTES`] stops reading from that
//! peer until it drains; above [`PEER_QUEUE_MAX_BYTES`] the stream is reset (the channel
//! re-handshakes). An HTTP client is not read while its response is being written, and is
//! dropped when its queue exceeds [`CLIENT_QUEUE_MAX_BYTES`].

pub mod config;
pub mod disk;
pub mod store;

use crate::arch::{apic, clock, entropy, rtc};
use crate::net::socket::{ListenerId, TcpId};
use crate::net::Network;
use crate::serial;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
pub use config::{ConfigError, NodeConfig, HTTP_PORT, P2P_PORT};
use node::api::{ApiConfig, Metric};
use node::replica::stack::{Stack, StackConfig};
use node::replica::{ReplicaConfig, STATUS_INTERVAL_MS};
use node::types::{Height, NodeId, Time};
use smoltcp::socket::tcp::State;
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address, Ipv4Cidr};

/// Pending P2P connections per listener.
pub const P2P_BACKLOG: usize = 8;
/// Pending HTTP connections.
pub const HTTP_BACKLOG: usize = 16;
/// Concurrent HTTP clients; more are refused (closed at once).
pub const HTTP_CLIENTS_MAX: usize = 32;
/// First reconnect delay after a failed dial; doubles up to [`RECONNECT_MAX_MS`].
pub const RECONNECT_MIN_MS: u64 = 200;
pub const RECONNECT_MAX_MS: u64 = 5_000;
/// A dial not established within this is abandoned and retried.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Stop reading from a peer while its outgoing queue holds more than this.
pub const PEER_PAUSE_BYTES: usize = 1024 * 1024;
/// A peer's outgoing queue beyond this resets the stream.
pub const PEER_QUEUE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// An HTTP client's unsent response bytes beyond this drop the client.
pub const CLIENT_QUEUE_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Bytes read per connection per loop round (fairness between connections).
pub const READ_ROUND_BYTES: usize = 64 * 1024;
/// Size of one read.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Minimum interval between `runtime: finalized height=` lines.
pub const REPORT_INTERVAL_MS: u64 = 2_000;
/// How often the runtime's own `/metrics` samples (peers, uptime, heap, store) are renewed.
pub const METRICS_REFRESH_MS: u64 = 500;
/// How long the loop keeps spinning after the last activity before sleeping on the APIC timer.
const IDLE_AFTER_NS: u64 = 1_000_000;
const NS_PER_MS: u64 = 1_000_000;
const NS_PER_S: u64 = 1_000_000_000;

/// Why the runtime could not start.
#[derive(Debug)]
pub enum RuntimeError {
    Entropy,
    Stack(node::replica::ReplicaError),
    /// The store could not start the node (`Stack::with_store`), and neither could genesis.
    StackFromStore(node::replica::ReplicaError),
    Listen(crate::net::socket::SocketError),
}

impl core::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RuntimeError::Entropy => f.write_str("no entropy for the channel keys"),
            RuntimeError::Stack(e) => write!(f, "node start: {e:?}"),
            RuntimeError::StackFromStore(e) => write!(f, "node start from the store: {e:?}"),
            RuntimeError::Listen(e) => write!(f, "listen: {e}"),
        }
    }
}

/// The node configuration from the first boot module that parses as one; a module that looks
/// like a configuration (magic) but fails the checks is an error.
pub fn find_config(info: &boot::BootInfo) -> Option<Result<NodeConfig, ConfigError>> {
    for m in info.modules() {
        let len = m.len as usize;
        if len < config::CONFIG_MAGIC.len() || len > config::CONFIG_MAX_BYTES {
            continue;
        }
        // SAFETY: the loader placed the module at [paddr, paddr + len) in RAM, which is
        // identity-mapped, and the heap excludes it (heap::init), so nothing writes it.
        let bytes = unsafe { core::slice::from_raw_parts(m.paddr as *const u8, len) };
        if !bytes.starts_with(config::CONFIG_MAGIC) {
            continue;
        }
        return Some(NodeConfig::decode(bytes));
    }
    None
}

/// The static addressing the configuration gives this node.
pub fn net_config(config: &NodeConfig) -> crate::net::NetConfig {
    let ip = config.ips.get(config.index as usize).copied();
    crate::net::NetConfig {
        ipv4: ip.map(|a| Ipv4Cidr::new(Ipv4Address::from(a), config.prefix_len)),
        gateway: None,
        ipv6: None,
    }
}

/// Wall-clock nanoseconds since the Unix epoch from the monotonic clock.
struct WallClock {
    base_ns: u64,
}

impl WallClock {
    fn new(fallback_ns: u64) -> WallClock {
        let mono = clock::now_ns();
        let base_ns = match rtc::unix_seconds() {
            Some(s) => (s * NS_PER_S).saturating_sub(mono),
            None => {
                log::warn!("rtc: unreadable; time starts at genesis");
                fallback_ns
            }
        };
        WallClock { base_ns }
    }

    fn now(&self) -> Time {
        Time(self.base_ns + clock::now_ns())
    }
}

struct Peer {
    id: NodeId,
    endpoint: IpEndpoint,
    conn: Option<TcpId>,
    established: bool,
    /// Monotonic ns when the current dial started.
    dial_started_ns: u64,
    out: VecDeque<u8>,
    backoff_ms: u64,
    next_dial_ns: u64,
    connects: u64,
}

struct Client {
    tcp: TcpId,
    out: VecDeque<u8>,
    close_after_write: bool,
}

/// The running node.
pub struct Runtime {
    stack: Stack,
    index: usize,
    n: usize,
    peers: Vec<Peer>,
    p2p: ListenerId,
    http: ListenerId,
    clients: BTreeMap<u64, Client>,
    next_conn: u64,
    clock: WallClock,
    buf: Vec<u8>,
    started_ns: u64,
    first_finalized: bool,
    last_report_ns: u64,
    last_reported: u64,
    last_metrics_ns: u64,
    /// HTTP connections accepted (all cards).
    http_accepted: u64,
    /// Size of the store's disk, when the node runs with one.
    disk_bytes: Option<u64>,
}

impl Runtime {
    pub fn new(
        network: &mut Network,
        config: NodeConfig,
        disk: Option<store::Opened>,
    ) -> Result<Runtime, RuntimeError> {
        let clock = WallClock::new(config.record.genesis_time_ns);
        let mut seed = [0u8; 32];
        entropy::fill(&mut seed).map_err(|_| RuntimeError::Entropy)?;
        let index = config.index as usize;
        let n = config.ips.len();
        let ips = config.ips.clone();
        let report_data = config.report_data();
        let stack_config = StackConfig {
            replica: ReplicaConfig {
                record: config.record,
                secrets: config.secrets,
                params: config.params,
                entropy: seed,
                signing_floor: Height(0),
                status_interval_ms: STATUS_INTERVAL_MS,
                resume_from: None,
            },
            api: ApiConfig {
                tee: Some(crate::tee::current().name()),
                ..ApiConfig::default()
            },
        };
        let disk_bytes = disk.as_ref().map(|d| d.device_bytes);
        let mut stack = start_stack(stack_config, disk, clock.now())?;
        let (report, reason) = attestation(report_data);
        stack.set_attestation_report(report, &reason);
        let ids = stack.replica().members().to_vec();
        let peers = ids
            .iter()
            .zip(ips.iter())
            .map(|(id, ip)| Peer {
                id: *id,
                endpoint: IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::from(*ip)), P2P_PORT),
                conn: None,
                established: false,
                dial_started_ns: 0,
                out: VecDeque::new(),
                backoff_ms: RECONNECT_MIN_MS,
                next_dial_ns: 0,
                connects: 0,
            })
            .collect();
        network.stop_http_service();
        // P2P only on the testnet card; the API on every card (a second card is the host's
        // way in: QEMU user-mode networking with a port forward to :8080).
        let p2p = network
            .tcp_listen_on(0, P2P_PORT, P2P_BACKLOG)
            .map_err(RuntimeError::Listen)?;
        let http = network
            .tcp_listen(HTTP_PORT, HTTP_BACKLOG)
            .map_err(RuntimeError::Listen)?;
        Ok(Runtime {
            stack,
            index,
            n,
            peers,
            p2p,
            http,
            clients: BTreeMap::new(),
            next_conn: 1,
            clock,
            buf: vec![0; READ_CHUNK_BYTES],
            started_ns: clock::now_ns(),
            first_finalized: false,
            last_report_ns: 0,
            last_reported: 0,
            last_metrics_ns: 0,
            http_accepted: 0,
            disk_bytes,
        })
    }

    /// The node's main loop; never returns.
    pub fn run(mut self, mut network: Network) -> ! {
        serial::write_fmt(format_args!(
            "runtime: node {}/{} up, node id {}, subnet {}, p2p :{P2P_PORT}, http :{HTTP_PORT}\n",
            self.index,
            self.n,
            self.stack.node_id().0,
            self.stack.subnet_id()
        ));
        let sleep = match apic::init() {
            Ok(_) => true,
            Err(e) => {
                log::warn!("apic: {e}; the runtime loop spins");
                false
            }
        };
        let mut last_activity = clock::now_ns();
        loop {
            let mut active = network.poll();
            active |= self.round(&mut network);
            active |= network.poll();
            self.report();
            self.refresh_metrics();
            if active {
                last_activity = clock::now_ns();
            } else if sleep && clock::now_ns() - last_activity > IDLE_AFTER_NS {
                apic::idle();
            }
        }
    }

    /// One pass over every input and output; true when anything moved.
    fn round(&mut self, net: &mut Network) -> bool {
        // The API first, its answers sent at once: a status or metrics request costs little
        // and should not wait behind a round of consensus work (signature checks take
        // hundreds of milliseconds under TCG).
        let mut active = self.serve_clients(net);
        if active {
            net.poll();
        }
        active |= self.accept_peers(net);
        active |= self.dial_peers(net);
        active |= self.read_peers(net);
        let now = self.clock.now();
        if now >= self.stack.poll_deadline() {
            self.stack.handle_timeout(now);
        }
        active |= self.queue_peer_outputs(net);
        active |= self.write_peers(net);
        active |= self.serve_clients(net);
        active
    }

    /// Accepts and reads HTTP clients, queues and writes the stack's answers.
    fn serve_clients(&mut self, net: &mut Network) -> bool {
        let mut active = self.accept_clients(net);
        active |= self.read_clients(net);
        active |= self.queue_http_outputs(net);
        active |= self.write_clients(net);
        active
    }

    fn reset_peer(&mut self, net: &mut Network, j: usize, abort: bool) {
        let peer = &mut self.peers[j];
        if let Some(conn) = peer.conn.take() {
            if abort {
                net.tcp_abort(conn);
            } else {
                net.tcp_close(conn);
            }
        }
        peer.established = false;
        peer.out.clear();
        peer.next_dial_ns = clock::now_ns() + peer.backoff_ms * NS_PER_MS;
        peer.backoff_ms = (peer.backoff_ms * 2).min(RECONNECT_MAX_MS);
        let id = peer.id;
        self.stack.peer_connection_reset(id);
    }

    fn stream_started(&mut self, j: usize, conn: TcpId) {
        let peer = &mut self.peers[j];
        peer.conn = Some(conn);
        peer.established = true;
        peer.out.clear();
        peer.backoff_ms = RECONNECT_MIN_MS;
        peer.connects += 1;
        let id = peer.id;
        self.stack.peer_connection_reset(id);
        log::info!("runtime: p2p stream to node {j} up ({})", peer.endpoint);
    }

    fn accept_peers(&mut self, net: &mut Network) -> bool {
        let mut active = false;
        while let Ok(Some(conn)) = net.tcp_accept(self.p2p) {
            active = true;
            let remote = net.tcp_remote(conn).ok().flatten().map(|e| e.addr);
            let from = self
                .peers
                .iter()
                .position(|p| Some(p.endpoint.addr) == remote);
            match from {
                Some(j) if j > self.index => {
                    if self.peers[j].conn.is_some() {
                        self.reset_peer(net, j, true);
                    }
                    self.stream_started(j, conn);
                }
                _ => {
                    log::warn!("runtime: refused p2p connection from {remote:?}");
                    net.tcp_abort(conn);
                }
            }
        }
        active
    }

    fn dial_peers(&mut self, net: &mut Network) -> bool {
        let mut active = false;
        let now_ns = clock::now_ns();
        for j in 0..self.index {
            let peer = &mut self.peers[j];
            match peer.conn {
                None if now_ns >= peer.next_dial_ns => match net.tcp_connect(peer.endpoint) {
                    Ok(conn) => {
                        peer.conn = Some(conn);
                        peer.dial_started_ns = now_ns;
                        active = true;
                    }
                    Err(e) => {
                        log::warn!("runtime: dial node {j}: {e}");
                        peer.next_dial_ns = now_ns + peer.backoff_ms * NS_PER_MS;
                        peer.backoff_ms = (peer.backoff_ms * 2).min(RECONNECT_MAX_MS);
                    }
                },
                Some(conn) if !peer.established => match net.tcp_state(conn) {
                    Ok(State::Established) => {
                        self.stream_started(j, conn);
                        active = true;
                    }
                    Ok(State::SynSent | State::SynReceived)
                        if now_ns - peer.dial_started_ns < CONNECT_TIMEOUT_MS * NS_PER_MS => {}
                    _ => self.reset_peer(net, j, true),
                },
                _ => {}
            }
        }
        active
    }

    fn read_peers(&mut self, net: &mut Network) -> bool {
        let mut active = false;
        for j in 0..self.peers.len() {
            let (Some(conn), true) = (self.peers[j].conn, self.peers[j].established) else {
                continue;
            };
            let mut read = 0;
            while read < READ_ROUND_BYTES && self.peers[j].out.len() <= PEER_PAUSE_BYTES {
                match net.tcp_recv(conn, &mut self.buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        read += k;
                        active = true;
                        let now = self.clock.now();
                        let id = self.peers[j].id;
                        let bytes = &self.buf[..k];
                        self.stack.handle_peer_bytes(id, bytes, now);
                    }
                    Err(e) => {
                        log::warn!("runtime: p2p stream of node {j}: {e}");
                        self.reset_peer(net, j, false);
                        active = true;
                        break;
                    }
                }
            }
        }
        active
    }

    fn accept_clients(&mut self, net: &mut Network) -> bool {
        let mut active = false;
        while let Ok(Some(tcp)) = net.tcp_accept(self.http) {
            active = true;
            if self.clients.len() >= HTTP_CLIENTS_MAX {
                net.tcp_abort(tcp);
                continue;
            }
            self.http_accepted += 1;
            let conn = self.next_conn;
            self.next_conn += 1;
            self.stack.http_connect(conn, self.clock.now());
            self.clients.insert(
                conn,
                Client {
                    tcp,
                    out: VecDeque::new(),
                    close_after_write: false,
                },
            );
        }
        active
    }

    fn read_clients(&mut self, net: &mut Network) -> bool {
        let mut active = false;
        let mut gone = Vec::new();
        for (&conn, client) in self.clients.iter_mut() {
            if client.close_after_write || !client.out.is_empty() {
                continue;
            }
            let mut read = 0;
            while read < READ_ROUND_BYTES {
                match net.tcp_recv(client.tcp, &mut self.buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        read += k;
                        active = true;
                        let now = self.clock.now();
                        self.stack.http_receive(conn, &self.buf[..k], now);
                    }
                    Err(_) => {
                        gone.push(conn);
                        break;
                    }
                }
            }
        }
        for conn in gone {
            active = true;
            self.drop_client(net, conn, false);
        }
        active
    }

    fn drop_client(&mut self, net: &mut Network, conn: u64, abort: bool) {
        if let Some(c) = self.clients.remove(&conn) {
            if abort {
                net.tcp_abort(c.tcp);
            } else {
                net.tcp_close(c.tcp);
            }
            self.stack.http_disconnect(conn);
        }
    }

    fn queue_peer_outputs(&mut self, net: &mut Network) -> bool {
        let mut active = false;
        let mut overflow = Vec::new();
        while let Some((to, bytes)) = self.stack.poll_transmit() {
            active = true;
            let Some(j) = self.peers.iter().position(|p| p.id == to) else {
                continue;
            };
            let peer = &mut self.peers[j];
            if !peer.established {
                // The stream restarts with a reset; these bytes belong to no stream.
                continue;
            }
            if peer.out.len() + bytes.len() > PEER_QUEUE_MAX_BYTES {
                overflow.push(j);
                continue;
            }
            peer.out.extend(bytes);
        }
        overflow.sort_unstable();
        overflow.dedup();
        for j in overflow {
            log::warn!("runtime: p2p queue of node {j} overflowed; resetting the stream");
            self.reset_peer(net, j, true);
        }
        active
    }

    fn queue_http_outputs(&mut self, net: &mut Network) -> bool {
        let mut active = false;
        let mut too_slow = Vec::new();
        for out in self.stack.take_http_outputs() {
            active = true;
            if let Some(c) = self.clients.get_mut(&out.conn) {
                c.out.extend(out.bytes);
                c.close_after_write |= out.close;
                if c.out.len() > CLIENT_QUEUE_MAX_BYTES {
                    too_slow.push(out.conn);
                }
            }
        }
        for conn in too_slow {
            self.drop_client(net, conn, true);
        }
        active
    }

    fn write_peers(&mut self, net: &mut Network) -> bool {
        let mut active = false;
        for j in 0..self.peers.len() {
            let peer = &mut self.peers[j];
            let (Some(conn), true) = (peer.conn, peer.established) else {
                continue;
            };
            match send_queue(net, conn, &mut peer.out) {
                Ok(moved) => active |= moved,
                Err(()) => {
                    self.reset_peer(net, j, false);
                    active = true;
                }
            }
        }
        active
    }

    fn write_clients(&mut self, net: &mut Network) -> bool {
        let mut active = false;
        let mut done = Vec::new();
        for (&conn, c) in self.clients.iter_mut() {
            match send_queue(net, c.tcp, &mut c.out) {
                Ok(moved) => active |= moved,
                Err(()) => {
                    done.push(conn);
                    continue;
                }
            }
            if c.out.is_empty() && c.close_after_write {
                done.push(conn);
            }
        }
        for conn in done {
            active = true;
            self.drop_client(net, conn, false);
        }
        active
    }

    fn report(&mut self) {
        let height = self.stack.finalized_height().0;
        let now_ns = clock::now_ns();
        if !self.first_finalized && height >= 1 {
            self.first_finalized = true;
            serial::write_fmt(format_args!(
                "runtime: first finalized height={height} {} ms after the runtime started\n",
                (now_ns - self.started_ns) / NS_PER_MS
            ));
        }
        if height > self.last_reported
            && now_ns - self.last_report_ns >= REPORT_INTERVAL_MS * NS_PER_MS
        {
            let peers_up = self.peers.iter().filter(|p| p.established).count();
            serial::write_fmt(format_args!(
                "runtime: finalized height={height} executed={} certified={} peers={peers_up}/{} t={} ms\n",
                self.stack.executed_height(),
                self.stack.certified_height(),
                self.n - 1,
                (now_ns - self.started_ns) / NS_PER_MS
            ));
            self.last_reported = height;
            self.last_report_ns = now_ns;
        }
    }
}

/// What `GET /_/attestation` says when the kernel does not run under SEV-SNP.
pub const NO_TEE_REASON: &str = "no TEE: this node does not run under SEV-SNP";

/// The node's attestation report (issue 9), asked for once at boot: under SEV-SNP, from the
/// AMD secure processor with `report_data` binding the node's public keys (its record entry,
/// `config::report_data_for_node`); otherwise none, and the reason. Logs the report_data
/// (governance's registry lists the same value) and the outcome.
fn attestation(
    report_data: Option<Result<[u8; 64], node::attest::binding::BindingError>>,
) -> (Option<Vec<u8>>, alloc::string::String) {
    use alloc::string::{String, ToString};
    let report_data = match report_data {
        Some(Ok(rd)) => rd,
        Some(Err(e)) => {
            return (
                None,
                alloc::format!("no report_data for the node's keys: {e}"),
            )
        }
        None => {
            return (
                None,
                String::from("no report_data: the node is not in its record"),
            )
        }
    };
    let hex: String = report_data
        .iter()
        .map(|b| alloc::format!("{b:02x}"))
        .collect();
    serial::write_fmt(format_args!("runtime: report_data {hex}\n"));
    let outcome = match crate::tee::current() {
        crate::tee::Tee::None => (None, NO_TEE_REASON.to_string()),
        crate::tee::Tee::SevSnp { .. } => match crate::tee::snp::attestation_report(&report_data) {
            Ok(report) => (Some(report.to_vec()), String::new()),
            Err(e) => (None, alloc::format!("SEV-SNP: no attestation report: {e}")),
        },
    };
    match &outcome {
        (Some(r), _) => serial::write_fmt(format_args!(
            "runtime: attestation report {} bytes (SEV-SNP), served at /_/attestation\n",
            r.len()
        )),
        (None, why) => serial::write_fmt(format_args!("runtime: attestation: none ({why})\n")),
    }
    outcome
}

/// Starts the node: over its store when there is one (falling back to genesis without a
/// store if the store cannot start it), else from genesis.
fn start_stack(
    config: StackConfig,
    disk: Option<store::Opened>,
    now: Time,
) -> Result<Stack, RuntimeError> {
    let Some(disk) = disk else {
        return Stack::new(config, now).map_err(RuntimeError::Stack);
    };
    let checkpoint = disk.recovery.checkpoint.map(|(h, _)| h);
    let records = disk.recovery.pool_records.len();
    let origin = disk.origin;
    let stack = match Stack::with_store(config.clone(), disk.store, disk.recovery, now) {
        Ok(stack) => stack,
        Err(e) => {
            log::error!("runtime: the store could not start the node ({e:?}); no store");
            return Stack::new(config, now).map_err(RuntimeError::StackFromStore);
        }
    };
    let mib = disk.device_bytes / (1024 * 1024);
    match origin {
        store::Origin::Recovered => serial::write_fmt(format_args!(
            "runtime: recovered checkpoint height={} cup={} pool records={records} \
             (open {} ms, {mib} MiB disk)\n",
            checkpoint.map_or(alloc::string::String::from("none"), |h| alloc::format!(
                "{h}"
            )),
            stack.replica().cup_height().0,
            disk.open_ms,
        )),
        store::Origin::Formatted => serial::write_fmt(format_args!(
            "runtime: no store on the {mib} MiB disk; formatted ({} ms)\n",
            disk.open_ms
        )),
        store::Origin::Replaced(why) => serial::write_fmt(format_args!(
            "runtime: store replaced (the old one {why}); formatted {mib} MiB fresh, the node \
             catches up by state sync\n"
        )),
    }
    Ok(stack)
}

impl Runtime {
    /// The store's samples for `/metrics` (none without a store).
    fn store_metrics(&mut self) -> Vec<Metric> {
        let Some(disk_bytes) = self.disk_bytes else {
            return Vec::new();
        };
        let syncing = self.stack.syncing();
        let failed = self.stack.store_error().is_some();
        let stats = self.stack.store_stats();
        let Some(store) = self.stack.store_mut() else {
            return Vec::new();
        };
        let free = store.free_blocks() * node::store::BLOCK_BYTES as u64;
        let mut samples = vec![
            Metric::gauge("cairn_store_bytes", "size of the store's disk", disk_bytes),
            Metric::gauge(
                "cairn_store_free_bytes",
                "free space in the store's data area",
                free,
            ),
            Metric::gauge(
                "cairn_store_used_bytes",
                "disk bytes not free (data, metadata, superblocks)",
                disk_bytes.saturating_sub(free),
            ),
            Metric::gauge(
                "cairn_store_checkpoint_height",
                "height of the stored checkpoint (0: none)",
                store.checkpoint_height().unwrap_or(0),
            ),
            Metric::gauge(
                "cairn_store_failed",
                "1 when the store failed and the node stopped sending",
                u64::from(failed),
            ),
            Metric::gauge(
                "cairn_state_sync_target_height",
                "height of the state being synced from peers (0: none)",
                syncing.unwrap_or(0),
            ),
        ];
        if let Some(s) = stats {
            samples.extend([
                Metric::counter(
                    "cairn_store_checkpoints_total",
                    "checkpoints written",
                    s.checkpoints,
                ),
                Metric::counter(
                    "cairn_store_blocks_logged_total",
                    "finalized blocks appended to the pool log",
                    s.blocks_logged,
                ),
                Metric::counter(
                    "cairn_store_blocks_replayed_total",
                    "logged blocks executed again at start",
                    s.blocks_replayed,
                ),
                Metric::counter(
                    "cairn_store_bad_chunks_total",
                    "checkpoint chunks found bad",
                    s.bad_chunks_detected,
                ),
                Metric::counter(
                    "cairn_state_syncs_completed_total",
                    "state syncs completed",
                    s.syncs_completed,
                ),
            ]);
        }
        samples
    }

    /// Renews the driver's `/metrics` samples every [`METRICS_REFRESH_MS`].
    fn refresh_metrics(&mut self) {
        let now_ns = clock::now_ns();
        if now_ns - self.last_metrics_ns < METRICS_REFRESH_MS * NS_PER_MS {
            return;
        }
        self.last_metrics_ns = now_ns;
        let peers_up = self.peers.iter().filter(|p| p.established).count() as u64;
        let reconnects: u64 = self.peers.iter().map(|p| p.connects).sum();
        let queued: usize = self.peers.iter().map(|p| p.out.len()).sum();
        let samples = vec![
            Metric::gauge("cairn_peers_connected", "P2P streams established", peers_up),
            Metric::gauge(
                "cairn_peers",
                "other nodes of the subnet",
                self.n as u64 - 1,
            ),
            Metric::counter(
                "cairn_p2p_streams_started_total",
                "P2P streams (re)started",
                reconnects,
            ),
            Metric::gauge(
                "cairn_p2p_queued_bytes",
                "bytes waiting to be written to peers",
                queued as u64,
            ),
            Metric::gauge(
                "cairn_http_clients",
                "HTTP API connections open in the runtime",
                self.clients.len() as u64,
            ),
            Metric::counter(
                "cairn_http_accepted_total",
                "HTTP API connections accepted",
                self.http_accepted,
            ),
            Metric::gauge(
                "cairn_uptime_seconds",
                "seconds since the runtime started",
                (now_ns - self.started_ns) / NS_PER_S,
            ),
            Metric::gauge(
                "cairn_heap_free_bytes",
                "free kernel heap",
                crate::heap::free_bytes() as u64,
            ),
        ];
        let mut samples = samples;
        samples.extend(self.store_metrics());
        self.stack.set_driver_metrics(samples);
    }
}

/// Writes as much of `out` as the socket takes; Ok(true) when bytes moved, Err when the
/// connection is gone.
fn send_queue(net: &mut Network, conn: TcpId, out: &mut VecDeque<u8>) -> Result<bool, ()> {
    let mut moved = false;
    while !out.is_empty() {
        let (a, _) = out.as_slices();
        match net.tcp_send(conn, a) {
            Ok(0) => break,
            Ok(k) => {
                out.drain(..k);
                moved = true;
            }
            Err(_) => return Err(()),
        }
    }
    Ok(moved)
}
