//! `cargo xtask bench api` (node side): throughput of the HTTP interface's request path and
//! the CPU cost of its cryptography, measured separately.
//!
//! Rows: full requests through `HttpApi` (HTTP parse, CBOR decode, request id, expiry,
//! authentication, backend, response encoding and, for queries, the node's Ed25519 response
//! signature) against a backend that does no execution; then signature verification alone
//! per scheme; then certification (state tree hashing, BLS signing, witness + certificate
//! per read_state, certificate verification). Ratios are against the first row, an anonymous
//! query, measured in the same run.

use node::api::auth;
use node::api::cbor::Writer;
use node::api::certificate::{self, Effective};
use node::api::envelope::CallContent;
use node::api::request_id;
use node::api::{
    ApiBackend, ApiConfig, CertifiedState, HttpApi, IngressMessage, Reject, ReplicaHealth,
    RequestStatus, StateTreeBuilder, SubnetEntry,
};
use node::crypto::{bls, threshold};
use node::types::Principal;
use std::time::Instant;

const SEC: u64 = 1_000_000_000;
const NOW: u64 = 1_795_478_400 * SEC;
/// Nodes of the simulated subnet (f = 1).
const SUBNET_NODES: usize = 4;

struct Backend {
    root_der: Vec<u8>,
    subnet: Principal,
    ranges: Vec<(Principal, Principal)>,
    node_sk: ed25519_dalek::SigningKey,
    node_id: Principal,
    state: CertifiedState,
    accepted: u64,
}

impl ApiBackend for Backend {
    fn root_key_der(&self) -> &[u8] {
        &self.root_der
    }
    fn subnet_id(&self) -> Principal {
        self.subnet
    }
    fn canister_ranges(&self) -> &[(Principal, Principal)] {
        &self.ranges
    }
    fn health(&self) -> ReplicaHealth {
        ReplicaHealth::Healthy
    }
    fn certified_state(&self) -> Option<&CertifiedState> {
        Some(&self.state)
    }
    fn submit_ingress(&mut self, _msg: IngressMessage) -> Result<(), Reject> {
        self.accepted += 1;
        Ok(())
    }
    fn query(&mut self, content: &CallContent) -> Result<Vec<u8>, Reject> {
        Ok(content.arg.clone())
    }
    fn node_id(&self) -> Principal {
        self.node_id
    }
    fn sign_with_node_key(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.node_sk.sign(message).to_bytes()
    }
}

enum Key {
    Anonymous,
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
    K256(k256::ecdsa::SigningKey),
}

impl Key {
    fn der(&self) -> Option<Vec<u8>> {
        let sec1 = |prefix: &str, point: &[u8]| {
            let mut d: Vec<u8> = (0..prefix.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&prefix[i..i + 2], 16).unwrap())
                .collect();
            d.extend_from_slice(point);
            d
        };
        match self {
            Key::Anonymous => None,
            Key::Ed25519(k) => Some(auth::ed25519_der(k.verifying_key().as_bytes()).to_vec()),
            Key::P256(k) => Some(sec1(
                "3059301306072a8648ce3d020106082a8648ce3d030107034200",
                k.verifying_key().to_sec1_point(false).as_bytes(),
            )),
            Key::K256(k) => Some(sec1(
                "3056301006072a8648ce3d020106052b8104000a034200",
                k.verifying_key().to_sec1_point(false).as_bytes(),
            )),
        }
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            Key::Anonymous => Vec::new(),
            Key::Ed25519(k) => {
                use ed25519_dalek::Signer;
                k.sign(msg).to_bytes().to_vec()
            }
            Key::P256(k) => {
                use p256::ecdsa::signature::Signer;
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_bytes().to_vec()
            }
            Key::K256(k) => {
                use k256::ecdsa::signature::Signer;
                let s: k256::ecdsa::Signature = k.sign(msg);
                s.to_bytes().to_vec()
            }
        }
    }
}

/// A signed (or anonymous) CBOR envelope, and its request id.
fn envelope(
    kind: &str,
    key: &Key,
    cid: Principal,
    method: &str,
    arg: &[u8],
    nonce: u64,
    expiry_ns: u64,
) -> (Vec<u8>, [u8; 32]) {
    let sender = key
        .der()
        .map(|d| Principal::self_authenticating(&d))
        .unwrap_or(Principal::ANONYMOUS);
    let mut c = Writer::new();
    c.map(7).text("request_type").text(kind);
    c.text("nonce").bytes(&nonce.to_be_bytes());
    c.text("ingress_expiry").u64(expiry_ns);
    c.text("sender").bytes(sender.as_slice());
    c.text("canister_id").bytes(cid.as_slice());
    c.text("method_name").text(method);
    c.text("arg").bytes(arg);
    let content = c.into_bytes();
    let rid = request_id::request_id(&node::api::cbor::decode(&content).unwrap()).unwrap();
    let mut w = Writer::self_describing();
    match key.der() {
        None => {
            w.map(1).text("content").raw(&content);
        }
        Some(der) => {
            w.map(3).text("content").raw(&content);
            w.text("sender_pubkey").bytes(&der);
            let sig = key.sign(&[auth::DS_REQUEST, &rid].concat());
            w.text("sender_sig").bytes(&sig);
        }
    }
    (w.into_bytes(), rid)
}

/// An HTTP/1.1 POST of `body` to `path`.
fn http_post(path: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nContent-Type: application/cbor\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    [head.into_bytes(), body.to_vec()].concat()
}

/// A complete HTTP request carrying a signed envelope.
fn request(kind: &str, key: &Key, nonce: u64) -> Vec<u8> {
    let cid = Principal::from_canister_index(1);
    let (body, _) = envelope(
        kind,
        key,
        cid,
        "m",
        b"DIDL\x00\x01\x71\x05hello",
        nonce,
        NOW + 120 * SEC,
    );
    let endpoint = if kind == "call" { "call" } else { "query" };
    let version = if kind == "call" { 2 } else { 3 };
    http_post(
        &format!("/api/v{version}/canister/{}/{endpoint}", cid.to_text()),
        &body,
    )
}

fn backend() -> Backend {
    let root_sk = bls::SecretKey::from_ikm(&[1; 32]);
    let root_der = root_sk.public_key().to_der().to_vec();
    let node_sk = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
    let node_id =
        Principal::self_authenticating(&auth::ed25519_der(node_sk.verifying_key().as_bytes()));
    let tree = StateTreeBuilder::new(NOW).build();
    Backend {
        subnet: Principal::self_authenticating(&root_der),
        root_der,
        ranges: vec![(
            Principal::from_canister_index(0),
            Principal::from_canister_index(0xfffff),
        )],
        node_sk,
        node_id,
        state: CertifiedState::sign(1, tree, |m| *root_sk.sign(m).as_bytes(), None),
        accepted: 0,
    }
}

/// Pushes `requests` through one keep-alive connection; returns µs per request.
fn through_api(requests: &[Vec<u8>]) -> f64 {
    let mut b = backend();
    let mut api = HttpApi::new(ApiConfig::default());
    api.connect(1, NOW);
    let start = Instant::now();
    let mut answered = 0;
    for r in requests {
        api.receive(&mut b, 1, r, NOW);
        for o in api.take_outputs() {
            assert!(
                o.bytes.starts_with(b"HTTP/1.1 20"),
                "{:?}",
                String::from_utf8_lossy(&o.bytes[..40])
            );
            answered += 1;
        }
    }
    assert_eq!(answered, requests.len());
    start.elapsed().as_secs_f64() * 1e6 / requests.len() as f64
}

const REQUEST: &str = "request path (HTTP, CBOR, auth; 1 node, no execution)";
const SIGS: &str = "signature verification / signing (per request)";
const CERT: &str = "certification (state tree, BLS; per height per node unless noted)";

fn time_per_op(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

struct Row {
    section: &'static str,
    name: String,
    us: f64,
}

fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let keys = [
        ("anonymous", Key::Anonymous),
        (
            "Ed25519",
            Key::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[3; 32])),
        ),
        (
            "ECDSA P-256",
            Key::P256(p256::ecdsa::SigningKey::from_slice(&[4; 32]).unwrap()),
        ),
        (
            "ECDSA secp256k1",
            Key::K256(k256::ecdsa::SigningKey::from_slice(&[5; 32]).unwrap()),
        ),
    ];
    let mut rows: Vec<Row> = Vec::new();
    for kind in ["query", "call"] {
        for (name, key) in &keys {
            let reqs: Vec<Vec<u8>> = (0..n as u64).map(|i| request(kind, key, i)).collect();
            let us = through_api(&reqs);
            let what = if kind == "query" {
                "query v3 (signed response)"
            } else {
                "update call v2 (202)"
            };
            rows.push(Row {
                section: REQUEST,
                name: format!("{what}, {name} sender"),
                us,
            });
        }
    }

    // Signature verification alone.
    let msg = [auth::DS_REQUEST, &[7u8; 32]].concat();
    let root = bls::SecretKey::from_ikm(&[1; 32]).public_key();
    let root_der = root.to_der();
    for (name, key) in keys.iter().skip(1) {
        let der = key.der().unwrap();
        let sig = key.sign(&msg);
        let us = time_per_op(n, |_| {
            auth::verify_signature(&der, &msg, &sig, &root_der).unwrap();
        });
        rows.push(Row {
            section: SIGS,
            name: format!("verify {name} signature"),
            us,
        });
    }
    let node_sk = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
    let us = time_per_op(n, |i| {
        use ed25519_dalek::Signer;
        std::hint::black_box(node_sk.sign(&i.to_le_bytes()));
    });
    rows.push(Row {
        section: SIGS,
        name: "node Ed25519 sign (query response)".into(),
        us,
    });

    // Certification: hash a state tree of `k` request statuses, sign its root (BLS), cut a
    // witness for one request plus /time, verify the certificate as a client does.
    let root_sk = bls::SecretKey::from_ikm(&[1; 32]);
    for k in [1_000usize, 10_000] {
        let mut b = StateTreeBuilder::new(NOW);
        for i in 0..k {
            let mut rid = [0u8; 32];
            rid[..8].copy_from_slice(&(i as u64).to_be_bytes());
            b.request_status(&rid, &RequestStatus::Replied(vec![0x44; 64]));
        }
        b.subnet(&SubnetEntry {
            id: Principal::self_authenticating(&root.to_der()),
            public_key_der: root.to_der().to_vec(),
            canister_ranges: vec![],
            nodes: Default::default(),
            subnet_type: Some("system".into()),
        });
        let start = Instant::now();
        let tree = b.build();
        let us = start.elapsed().as_secs_f64() * 1e6;
        rows.push(Row {
            section: CERT,
            name: format!("hash state tree, {k} request statuses (once per height)"),
            us,
        });
        let reps = 20;
        let message = certificate::state_root_message(&tree.digest());
        let us = time_per_op(reps, |_| {
            std::hint::black_box(root_sk.sign(&message));
        });
        rows.push(Row {
            section: CERT,
            name: "BLS sign state root (single key)".into(),
            us,
        });
        let state = CertifiedState::sign(1, tree, |m| *root_sk.sign(m).as_bytes(), None);
        let rid = [0u8; 32];
        let mut cert = Vec::new();
        let us = time_per_op(n, |_| {
            let path: [&[u8]; 2] = [b"request_status", &rid];
            cert = state.certificate_for(&[&path[..]]);
        });
        rows.push(Row {
            section: CERT,
            name: format!("witness + certificate for 1 request of {k}"),
            us,
        });
        let cid = Principal::from_canister_index(1);
        let us = time_per_op(reps, |_| {
            certificate::verify(&cert, &root, Effective::Canister(cid)).unwrap();
        });
        rows.push(Row {
            section: CERT,
            name: "verify certificate (BLS pairing, client side)".into(),
            us,
        });
    }

    // The subnet key as the simulated subnet uses it: n = 4, threshold n − f = 3.
    let mut rng = threshold::dealer_rng(&[9; 32], "bench-api");
    let dealt = threshold::deal(&mut rng, SUBNET_NODES, SUBNET_NODES - 1).expect("deal");
    let message = certificate::state_root_message(&[0x5a; 32]);
    let reps = 50;
    let us = time_per_op(reps, |i| {
        std::hint::black_box(dealt.secret_shares[i % SUBNET_NODES].sign(&message));
    });
    rows.push(Row {
        section: CERT,
        name: "BLS threshold share: sign state root (1 per height)".into(),
        us,
    });
    let shares: Vec<(usize, bls::Signature)> = (0..SUBNET_NODES)
        .map(|i| (i, dealt.secret_shares[i].sign(&message)))
        .collect();
    let us = time_per_op(reps, |i| {
        let (k, sig) = &shares[i % SUBNET_NODES];
        dealt.public.key_shares[*k].verify(&message, sig).unwrap();
    });
    rows.push(Row {
        section: CERT,
        name: "BLS threshold share: verify one (only when a combination fails)".into(),
        us,
    });
    let t = dealt.public.threshold;
    let mut combined = None;
    let us = time_per_op(reps, |_| {
        combined = Some(threshold::combine(&shares, t).unwrap());
    });
    rows.push(Row {
        section: CERT,
        name: format!("BLS threshold: aggregate {t} of {SUBNET_NODES} shares (Lagrange)"),
        us,
    });
    let combined = combined.expect("combined");
    let us = time_per_op(reps, |_| {
        dealt.public.group_key.verify(&message, &combined).unwrap();
    });
    rows.push(Row {
        section: CERT,
        name: "BLS threshold: verify the aggregate (1 per height)".into(),
        us,
    });

    let base = rows[0].us;
    println!("bench api: n = {n} requests per row; ratio = time per op / anonymous query v3");
    let mut section = "";
    for r in &rows {
        if r.section != section {
            section = r.section;
            println!("\n{section}");
            println!(
                "  {:<68} {:>12} {:>12} {:>8}",
                "operation", "µs/op", "ops/s", "ratio"
            );
        }
        println!(
            "  {:<68} {:>12.2} {:>12.0} {:>8.2}",
            r.name,
            r.us,
            1e6 / r.us,
            r.us / base
        );
    }
    for r in &rows {
        bench_row(r.section, &r.name, r.us, "µs/op");
    }
    println!();
    subnet::run();
}

/// One machine-readable row for `cargo xtask bench api` (tab-separated).
fn bench_row(section: &str, name: &str, value: f64, unit: &str) {
    println!("bench-row\t{section}\t{name}\t{value:.3}\t{unit}");
}

/// The whole request path on a simulated 4-node subnet of the full node stack
/// ([`Stack`](node::replica::stack::Stack)): HTTP bytes in, responses out, with consensus
/// (the IC's application-subnet delays), gossip, execution of the Motoko counter from
/// testdata, and threshold certification. One thread drives all four nodes over a simulated
/// network with a virtual clock, so wall time is the CPU cost of the whole subnet on one core
/// and latency is in simulated time.
mod subnet {
    use super::*;
    use node::api::cbor;
    use node::api::hash_tree::Lookup;
    use node::candid::{self, record, Type, Value};
    use node::consensus::ConsensusParams;
    use node::replica::stack::{genesis_configs, management_target, Stack};
    use node::types::{NodeId, Time};
    use std::collections::BTreeMap;

    /// One-way delay between two nodes.
    const LINK_DELAY_MS: u64 = 10;
    /// Sequential update calls timed for latency.
    const SEQUENTIAL_UPDATES: usize = 30;
    /// Update calls submitted at once (spread over the nodes) for throughput.
    const CONCURRENT_UPDATES: usize = 400;
    /// Query calls for throughput.
    const QUERIES: usize = 2_000;
    /// Simulated time any one phase may take.
    const PHASE_LIMIT_MS: u64 = 120_000;
    /// Ingress expiry set on requests, from the current simulated time.
    const EXPIRY_AHEAD_NS: u64 = 120 * SEC;

    struct Net {
        stacks: Vec<Stack>,
        ids: Vec<NodeId>,
        /// (delivery time, sequence) → (to, from, bytes)
        queue: BTreeMap<(u64, u64), (usize, NodeId, Vec<u8>)>,
        seq: u64,
        now: Time,
        /// Response bytes per (node, connection) not yet taken.
        http: BTreeMap<(usize, u64), Vec<u8>>,
        next_conn: u64,
    }

    /// A request in flight: where, and when it was sent (simulated ns).
    struct Pending {
        node: usize,
        conn: u64,
        sent_ns: u64,
        rid: [u8; 32],
    }

    impl Net {
        fn new() -> Net {
            let now = Time(NOW);
            let configs = genesis_configs(
                &[42; 32],
                SUBNET_NODES,
                now,
                ConsensusParams::IC_APPLICATION_SUBNET,
                node::api::ApiConfig::default(),
            )
            .expect("genesis");
            let stacks: Vec<Stack> = configs
                .into_iter()
                .map(|c| Stack::new(c, now).expect("stack"))
                .collect();
            let ids = stacks.iter().map(|s| s.node_id()).collect();
            Net {
                stacks,
                ids,
                queue: BTreeMap::new(),
                seq: 0,
                now,
                http: BTreeMap::new(),
                next_conn: 1,
            }
        }

        fn flush(&mut self) {
            for i in 0..self.stacks.len() {
                while let Some((peer, bytes)) = self.stacks[i].poll_transmit() {
                    let Some(to) = self.ids.iter().position(|id| *id == peer) else {
                        continue;
                    };
                    let at = self.now.plus_millis(LINK_DELAY_MS).0;
                    self.seq += 1;
                    self.queue.insert((at, self.seq), (to, self.ids[i], bytes));
                }
                for out in self.stacks[i].take_http_outputs() {
                    self.http
                        .entry((i, out.conn))
                        .or_default()
                        .extend_from_slice(&out.bytes);
                }
            }
        }

        /// Advances simulated time until `done` holds; panics past `PHASE_LIMIT_MS`.
        fn run_until(&mut self, what: &str, mut done: impl FnMut(&mut Net) -> bool) {
            let limit = self.now.plus_millis(PHASE_LIMIT_MS).0;
            loop {
                self.flush();
                if done(self) {
                    return;
                }
                let next_msg = self.queue.keys().next().map(|k| k.0);
                let next_wake = self.stacks.iter().map(|s| s.poll_deadline().0).min();
                let next = match (next_msg, next_wake) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => a.or(b).expect("something to do"),
                };
                assert!(next <= limit, "{what}: not done after {PHASE_LIMIT_MS} ms");
                self.now = Time(next.max(self.now.0));
                while let Some((&(t, s), _)) = self.queue.iter().next() {
                    if t > self.now.0 {
                        break;
                    }
                    let (to, from, bytes) = self.queue.remove(&(t, s)).expect("queued");
                    self.stacks[to].handle_peer_bytes(from, &bytes, self.now);
                }
                for s in &mut self.stacks {
                    if s.poll_deadline() <= self.now {
                        s.handle_timeout(self.now);
                    }
                }
            }
        }

        fn send(&mut self, node: usize, path: &str, body: &[u8], rid: [u8; 32]) -> Pending {
            let conn = self.next_conn;
            self.next_conn += 1;
            let now = self.now;
            self.stacks[node].http_connect(conn, now);
            self.stacks[node].http_receive(conn, &http_post(path, body), now);
            Pending {
                node,
                conn,
                sent_ns: now.0,
                rid,
            }
        }

        /// The status and body of the complete response to `p`, taken (the connection is
        /// closed), if it has arrived.
        fn take_response(&mut self, p: &Pending) -> Option<(u16, Vec<u8>)> {
            let bytes = self.http.get(&(p.node, p.conn))?;
            let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
            let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
            let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let body = bytes.get(head_end + 4..head_end + 4 + len)?.to_vec();
            self.http.remove(&(p.node, p.conn));
            self.stacks[p.node].http_disconnect(p.conn);
            Some((status, body))
        }

        fn expiry(&self) -> u64 {
            self.now.0 + EXPIRY_AHEAD_NS
        }

        /// Sends a v3 call for `method` on `cid` to `node`.
        fn call(
            &mut self,
            node: usize,
            key: &Key,
            cid: Principal,
            method: &str,
            arg: &[u8],
            nonce: u64,
        ) -> Pending {
            let (body, rid) = envelope("call", key, cid, method, arg, nonce, self.expiry());
            let ecid = if cid.is_management() {
                management_target(method, arg).unwrap_or(cid)
            } else {
                cid
            };
            self.send(node, &format!("/api/v3/canister/{ecid}/call"), &body, rid)
        }

        fn query(&mut self, node: usize, key: &Key, cid: Principal, nonce: u64) -> Pending {
            let (body, rid) = envelope(
                "query",
                key,
                cid,
                "get",
                b"DIDL\x00\x00",
                nonce,
                self.expiry(),
            );
            self.send(node, &format!("/api/v2/canister/{cid}/query"), &body, rid)
        }

        /// Runs until every call in `pending` is answered with a certified reply; returns
        /// the replies and each call's simulated latency (ns).
        fn await_calls(&mut self, what: &str, pending: Vec<Pending>) -> Vec<(Vec<u8>, u64)> {
            let mut done: Vec<Option<(Vec<u8>, u64)>> = vec![None; pending.len()];
            self.run_until(what, |net| {
                for (p, d) in pending.iter().zip(done.iter_mut()) {
                    if d.is_some() {
                        continue;
                    }
                    if let Some((status, body)) = net.take_response(p) {
                        assert_eq!(status, 200, "{what}: {}", String::from_utf8_lossy(&body));
                        *d = Some((certified_reply(&body, &p.rid, what), net.now.0 - p.sent_ns));
                    }
                }
                done.iter().all(Option::is_some)
            });
            done.into_iter().map(|d| d.expect("answered")).collect()
        }
    }

    /// The reply in the certificate of a v3 call response (which must say "replied").
    fn certified_reply(body: &[u8], rid: &[u8; 32], what: &str) -> Vec<u8> {
        let v = cbor::decode(body).expect("cbor");
        let r = cbor::Record::new(v.untagged()).expect("record");
        let cert = certificate::Certificate::parse(r.bytes("certificate").expect("certificate"))
            .expect("certificate parses");
        let path: [&[u8]; 3] = [b"request_status", rid, b"reply"];
        match cert.tree.lookup(&path) {
            Lookup::Found(reply) => reply.to_vec(),
            _ => panic!("{what}: no reply in the certificate"),
        }
    }

    /// The Motoko counter's `get` reply (Candid `nat`, or `int64` in older builds), or None
    /// if it is something else.
    fn counter_value(reply: &[u8]) -> Option<u64> {
        if let Some(v) = reply.strip_prefix(b"DIDL\x00\x01\x74") {
            return Some(u64::from_le_bytes(v.try_into().ok()?));
        }
        let v = reply.strip_prefix(b"DIDL\x00\x01\x7d")?;
        let (mut n, mut shift) = (0u64, 0u32);
        for (i, b) in v.iter().enumerate() {
            n |= u64::from(b & 0x7f).checked_shl(shift)?;
            shift += 7;
            if b & 0x80 == 0 {
                return (i + 1 == v.len()).then_some(n);
            }
        }
        None
    }

    fn query_counter(net: &mut Net, key: &Key, cid: Principal, nonce: u64) -> u64 {
        let p = net.query(0, key, cid, nonce);
        net.flush();
        let (status, body) = net.take_response(&p).expect("queries are answered at once");
        assert_eq!(status, 200);
        let v = cbor::decode(&body).expect("cbor");
        let r = cbor::Record::new(v.untagged()).expect("record");
        assert_eq!(r.text("status").expect("status"), "replied");
        let reply = cbor::Record::new(r.get("reply").expect("reply"))
            .expect("reply record")
            .bytes("arg")
            .expect("arg")
            .to_vec();
        counter_value(&reply).expect("int64 counter")
    }

    fn percentile(sorted: &[u64], p: usize) -> u64 {
        sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
    }

    /// Creates a canister and installs the Motoko counter (anonymous controller).
    fn install_counter(net: &mut Net) -> Principal {
        let create_arg = candid::encode_args(&[(
            record(&[("amount", candid::opt(Type::Nat))]),
            Value::Record(vec![(
                candid::field_id("amount"),
                Value::Opt(Some(Box::new(Value::nat(100_000_000_000_000)))),
            )]),
        )])
        .expect("candid");
        let p = net.call(
            0,
            &Key::Anonymous,
            Principal::MANAGEMENT,
            "provisional_create_canister_with_cycles",
            &create_arg,
            1,
        );
        let reply = net.await_calls("create_canister", vec![p]).remove(0).0;
        let ty = record(&[("canister_id", Type::Principal)]);
        let cid = candid::decode_args(&reply, &[ty], &Default::default()).expect("reply")[0]
            .field("canister_id")
            .and_then(|v| v.as_principal())
            .expect("canister id");
        let wasm = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/testdata/canisters/motoko-counter/module.wasm"
        ))
        .expect("motoko counter");
        let install_ty = record(&[
            ("mode", candid::variant(&[("install", Type::Null)])),
            ("canister_id", Type::Principal),
            ("wasm_module", candid::blob()),
            ("arg", candid::blob()),
        ]);
        let mut fields = vec![
            (
                candid::field_id("mode"),
                Value::Variant(candid::field_id("install"), Box::new(Value::Null)),
            ),
            (candid::field_id("canister_id"), Value::Principal(cid)),
            (candid::field_id("wasm_module"), Value::Blob(wasm)),
            (
                candid::field_id("arg"),
                Value::Blob(b"DIDL\x00\x00".to_vec()),
            ),
        ];
        fields.sort_by_key(|(k, _)| *k);
        let arg = candid::encode_args(&[(install_ty, Value::Record(fields))]).expect("candid");
        let p = net.call(
            0,
            &Key::Anonymous,
            Principal::MANAGEMENT,
            "install_code",
            &arg,
            2,
        );
        net.await_calls("install_code", vec![p]);
        cid
    }

    pub fn run() {
        let user = Key::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[11; 32]));
        let start = Instant::now();
        let mut net = Net::new();
        net.run_until("genesis", |n| {
            n.stacks.iter().all(|s| s.certified_height() >= 1)
        });
        let cid = install_counter(&mut net);
        let initial = query_counter(&mut net, &user, cid, 3);
        let setup_s = start.elapsed().as_secs_f64();

        // 1. Sequential update calls: latency in simulated time.
        let mut latencies = Vec::with_capacity(SEQUENTIAL_UPDATES);
        for i in 0..SEQUENTIAL_UPDATES {
            let p = net.call(
                i % SUBNET_NODES,
                &user,
                cid,
                "inc",
                b"DIDL\x00\x00",
                100 + i as u64,
            );
            latencies.push(net.await_calls("sequential inc", vec![p])[0].1);
        }
        latencies.sort();

        // 2. Concurrent update calls: throughput (wall = CPU of the 4 nodes on one core).
        let expiry = net.expiry();
        let path = format!("/api/v3/canister/{cid}/call");
        let calls: Vec<(Vec<u8>, [u8; 32])> = (0..CONCURRENT_UPDATES)
            .map(|i| {
                let nonce = 10_000 + i as u64;
                envelope("call", &user, cid, "inc", b"DIDL\x00\x00", nonce, expiry)
            })
            .collect();
        let sim_start = net.now.0;
        let wall = Instant::now();
        let pending: Vec<Pending> = calls
            .iter()
            .enumerate()
            .map(|(i, (body, rid))| net.send(i % SUBNET_NODES, &path, body, *rid))
            .collect();
        let answered = net.await_calls("concurrent inc", pending);
        let update_wall_s = wall.elapsed().as_secs_f64();
        let update_sim_s = (net.now.0 - sim_start) as f64 / 1e9;
        let mut burst: Vec<u64> = answered.iter().map(|(_, l)| *l).collect();
        burst.sort();

        // 3. Queries (Ed25519-signed, node-signed responses, executed on one node each).
        // Signed by the client before the clock starts: only the subnet's work is timed.
        let expiry = net.expiry();
        let queries: Vec<(Vec<u8>, [u8; 32])> = (0..QUERIES)
            .map(|i| {
                let nonce = 100_000 + i as u64;
                envelope("query", &user, cid, "get", b"DIDL\x00\x00", nonce, expiry)
            })
            .collect();
        let path = format!("/api/v2/canister/{cid}/query");
        let wall = Instant::now();
        for (i, (body, rid)) in queries.iter().enumerate() {
            let p = net.send(i % SUBNET_NODES, &path, body, *rid);
            net.flush();
            let (status, _) = net.take_response(&p).expect("queries are answered at once");
            assert_eq!(status, 200);
        }
        let query_wall_s = wall.elapsed().as_secs_f64();
        let expected = initial + (SEQUENTIAL_UPDATES + CONCURRENT_UPDATES) as u64;
        let value = query_counter(&mut net, &user, cid, 999_999);
        assert_eq!(
            value, expected,
            "the counter counts every update exactly once"
        );

        let ms = |ns: u64| ns as f64 / 1e6;
        let sec = "simulated subnet: 4 full nodes, IC app-subnet delays, 10 ms links, 1 core";
        println!("{sec} (setup {setup_s:.1} s wall; counter {initial} -> {value}, as expected)");
        let rows: Vec<(String, f64, &str)> = vec![
            (
                format!("update calls/s, {CONCURRENT_UPDATES} concurrent v3 `inc` (Ed25519), CPU-bound"),
                CONCURRENT_UPDATES as f64 / update_wall_s,
                "calls/s",
            ),
            (
                "  same burst, simulated time until the last is certified".into(),
                update_sim_s * 1e3,
                "ms",
            ),
            (
                "  same burst, latency median (simulated)".into(),
                ms(percentile(&burst, 50)),
                "ms",
            ),
            (
                "  same burst, latency p99 (simulated)".into(),
                ms(percentile(&burst, 99)),
                "ms",
            ),
            (
                format!("update latency median, {SEQUENTIAL_UPDATES} sequential (finalized + certified)"),
                ms(percentile(&latencies, 50)),
                "ms",
            ),
            (
                "update latency p99 (simulated)".into(),
                ms(percentile(&latencies, 99)),
                "ms",
            ),
            (
                format!("query calls/s, {QUERIES} v2 `get` (Ed25519), CPU-bound"),
                QUERIES as f64 / query_wall_s,
                "calls/s",
            ),
        ];
        println!("  {:<76} {:>12} {:>8}", "figure", "value", "unit");
        for (name, v, unit) in &rows {
            println!("  {name:<76} {v:>12.1} {unit:>8}");
        }
        for (name, v, unit) in &rows {
            bench_row(sec, name.trim_start(), *v, unit);
        }
    }
}
