//! `cairn-sim`: a simulated cairn subnet on the host, serving the IC HTTP interface on
//! 127.0.0.1 so that real agents (ic-agent, @dfinity/agent) can be pointed at it.
//!
//! N full nodes ([`node::replica::stack::Stack`]) run in this process on one thread with the
//! wall clock, joined by in-memory links; each serves HTTP on its own 127.0.0.1 port through
//! non-blocking std sockets. Genesis keys come from the dealer with `--seed`.
//!
//! ```text
//! cargo run -p node --features sim --bin cairn-sim -- [--nodes 4] [--seed 0] [--port 0] [--fast]
//! cairn-sim: node 0 http://127.0.0.1:PORT   (one line per node)
//! cairn-sim: root key 3081…                 (DER, hex; what /api/v2/status returns)
//! cairn-sim: ready                          (every node has finalized and certified a height)
//! ```
//! `--port 0` (the default) picks free ports; `--port P` uses P, P+1, ….

use node::api::ApiConfig;
use node::consensus::ConsensusParams;
use node::replica::stack::{genesis_configs, Stack};
use node::types::{NodeId, Time};
use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default subnet size.
const DEFAULT_NODES: usize = 4;
/// Bytes read from a client socket at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Sleep when a loop iteration found nothing to do.
const IDLE_SLEEP_US: u64 = 500;
/// Client connections served at once per node (beyond that, new ones are closed).
const CONNECTIONS_PER_NODE_MAX: usize = 512;
/// Bytes buffered for one slow client before it is dropped.
const CLIENT_BUFFER_BYTES_MAX: usize = 64 * 1024 * 1024;

struct Args {
    nodes: usize,
    seed: u64,
    port: u16,
    fast: bool,
}

fn usage() -> &'static str {
    "usage: cairn-sim [--nodes N] [--seed S] [--port P] [--fast]\n\
     \x20 --nodes N  subnet size (default 4)\n\
     \x20 --seed S   genesis key seed, a number (default 0)\n\
     \x20 --port P   first HTTP port, node i listens on P+i (default 0: free ports)\n\
     \x20 --fast     short consensus delays (60 ms notary delay) instead of the IC's"
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        nodes: DEFAULT_NODES,
        seed: 0,
        port: 0,
        fast: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--nodes" => {
                args.nodes = value("--nodes")?
                    .parse()
                    .map_err(|e| format!("--nodes: {e}"))?
            }
            "--seed" => {
                args.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--port" => {
                args.port = value("--port")?
                    .parse()
                    .map_err(|e| format!("--port: {e}"))?
            }
            "--fast" => args.fast = true,
            "-h" | "--help" => return Err(usage().to_string()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    if args.nodes == 0 {
        return Err("--nodes must be at least 1".to_string());
    }
    Ok(args)
}

struct Client {
    node: usize,
    stream: TcpStream,
    out: VecDeque<u8>,
    close_after_write: bool,
}

/// Wall-clock time as UTC nanoseconds, kept monotonic by measuring from a fixed start.
struct Clock {
    start_utc_ns: u64,
    start: Instant,
}

impl Clock {
    fn new() -> Clock {
        let utc = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Clock {
            start_utc_ns: utc,
            start: Instant::now(),
        }
    }

    fn now(&self) -> Time {
        Time(self.start_utc_ns + self.start.elapsed().as_nanos() as u64)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let clock = Clock::new();
    let now = clock.now();
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&args.seed.to_le_bytes());
    let params = if args.fast {
        ConsensusParams::FAST
    } else {
        ConsensusParams::IC_APPLICATION_SUBNET
    };
    let configs = genesis_configs(&seed, args.nodes, now, params, ApiConfig::default())
        .map_err(|e| format!("genesis: {e}"))?;
    let mut stacks = Vec::with_capacity(args.nodes);
    for c in configs {
        stacks.push(Stack::new(c, now).map_err(|e| format!("node start: {e}"))?);
    }
    let ids: Vec<NodeId> = stacks.iter().map(|s| s.node_id()).collect();
    let mut listeners = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let port = if args.port == 0 {
            0
        } else {
            args.port.checked_add(i as u16).ok_or("port out of range")?
        };
        let l = TcpListener::bind(("127.0.0.1", port)).map_err(|e| format!("bind: {e}"))?;
        l.set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;
        let addr = l.local_addr().map_err(|e| format!("listener: {e}"))?;
        println!("cairn-sim: node {i} http://{addr}");
        listeners.push(l);
    }
    println!("cairn-sim: subnet {}", stacks[0].subnet_id());
    println!("cairn-sim: root key {}", hex(stacks[0].root_key_der()));
    let _ = std::io::stdout().flush();

    let mut clients: BTreeMap<u64, Client> = BTreeMap::new();
    let mut next_conn: u64 = 1;
    let mut links: VecDeque<(usize, NodeId, Vec<u8>)> = VecDeque::new();
    let mut ready = false;
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let mut busy = false;
        let now = clock.now();
        // New clients.
        for (i, l) in listeners.iter().enumerate() {
            loop {
                match l.accept() {
                    Ok((stream, _)) => {
                        busy = true;
                        let per_node = clients.values().filter(|c| c.node == i).count();
                        if per_node >= CONNECTIONS_PER_NODE_MAX
                            || stream.set_nonblocking(true).is_err()
                        {
                            continue;
                        }
                        let _ = stream.set_nodelay(true);
                        let conn = next_conn;
                        next_conn += 1;
                        stacks[i].http_connect(conn, now);
                        clients.insert(
                            conn,
                            Client {
                                node: i,
                                stream,
                                out: VecDeque::new(),
                                close_after_write: false,
                            },
                        );
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
        // Client bytes.
        let mut closed = Vec::new();
        for (&conn, c) in clients.iter_mut() {
            if c.close_after_write {
                continue;
            }
            match c.stream.read(&mut buf) {
                Ok(0) => closed.push(conn),
                Ok(n) => {
                    busy = true;
                    stacks[c.node].http_receive(conn, &buf[..n], now);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => closed.push(conn),
            }
        }
        for conn in closed {
            if let Some(c) = clients.remove(&conn) {
                stacks[c.node].http_disconnect(conn);
            }
        }
        // Time.
        for s in stacks.iter_mut() {
            if s.poll_deadline() <= now {
                s.handle_timeout(now);
            }
        }
        // Peer bytes: what was sent until now (new sends wait for the next iteration, so
        // that clients are served even when consensus keeps the links busy).
        for (i, s) in stacks.iter_mut().enumerate() {
            while let Some((peer, bytes)) = s.poll_transmit() {
                if let Some(to) = ids.iter().position(|id| *id == peer) {
                    links.push_back((to, ids[i], bytes));
                }
            }
        }
        for _ in 0..links.len() {
            let Some((to, from, bytes)) = links.pop_front() else {
                break;
            };
            busy = true;
            stacks[to].handle_peer_bytes(from, &bytes, clock.now());
        }
        // HTTP output.
        for s in stacks.iter_mut() {
            for out in s.take_http_outputs() {
                if let Some(c) = clients.get_mut(&out.conn) {
                    c.out.extend(out.bytes);
                    c.close_after_write |= out.close;
                }
            }
        }
        let mut done = Vec::new();
        for (&conn, c) in clients.iter_mut() {
            while !c.out.is_empty() {
                let (a, _) = c.out.as_slices();
                match c.stream.write(a) {
                    Ok(0) => break,
                    Ok(n) => {
                        busy = true;
                        c.out.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        done.push(conn);
                        break;
                    }
                }
            }
            if (c.out.is_empty() && c.close_after_write) || c.out.len() > CLIENT_BUFFER_BYTES_MAX {
                done.push(conn);
            }
        }
        for conn in done {
            if let Some(c) = clients.remove(&conn) {
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
                stacks[c.node].http_disconnect(conn);
            }
        }
        if !ready
            && stacks
                .iter()
                .all(|s| s.finalized_height().0 >= 1 && s.certified_height() >= 1)
        {
            ready = true;
            println!("cairn-sim: ready");
            let _ = std::io::stdout().flush();
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(IDLE_SLEEP_US));
        }
    }
}
