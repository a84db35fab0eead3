//! The full node stack (consensus + execution + certification + HTTP API) on a deterministic
//! in-memory subnet of 4 nodes: an update call submitted over HTTP to one node is gossiped,
//! finalized, executed by every node, certified by n−f threshold shares, and answered with a
//! certificate that verifies against the subnet's root key; another node serves the same
//! certified status through read_state.

use node::api::cbor::{self, Writer};
use node::api::certificate::{self, Effective};
use node::api::envelope::{Envelope, RequestKind};
use node::api::hash_tree::Lookup;
use node::api::ApiConfig;
use node::candid::{self, record, Type, Value};
use node::consensus::ConsensusParams;
use node::crypto::bls::PublicKey;
use node::replica::stack::{genesis_configs, Stack};
use node::types::{NodeId, Principal, Time};
use std::collections::BTreeMap;

const LATENCY_MS: u64 = 5;
const GENESIS_NS: u64 = 1_700_000_000_000_000_000;
/// Simulated time the whole scenario may take.
const SCENARIO_LIMIT_MS: u64 = 60_000;

struct Net {
    stacks: Vec<Stack>,
    ids: Vec<NodeId>,
    /// (delivery time, sequence) → (to, from, bytes)
    queue: BTreeMap<(u64, u64), (usize, NodeId, Vec<u8>)>,
    seq: u64,
    now: Time,
    /// HTTP bytes received per (node, connection).
    http: BTreeMap<(usize, u64), Vec<u8>>,
}

impl Net {
    fn new(n: usize) -> Net {
        let now = Time(GENESIS_NS);
        let configs = genesis_configs(
            &[42; 32],
            n,
            now,
            ConsensusParams::FAST,
            ApiConfig::default(),
        )
        .unwrap();
        let stacks: Vec<Stack> = configs
            .into_iter()
            .map(|c| Stack::new(c, now).unwrap())
            .collect();
        let ids = stacks.iter().map(|s| s.node_id()).collect();
        Net {
            stacks,
            ids,
            queue: BTreeMap::new(),
            seq: 0,
            now,
            http: BTreeMap::new(),
        }
    }

    fn flush(&mut self) {
        for i in 0..self.stacks.len() {
            while let Some((peer, bytes)) = self.stacks[i].poll_transmit() {
                let to = self.ids.iter().position(|id| *id == peer).unwrap();
                let at = self.now.plus_millis(LATENCY_MS).0;
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

    /// Runs until `done` holds or `limit` (simulated) passes; returns whether `done` held.
    fn run_until(&mut self, limit: Time, mut done: impl FnMut(&Net) -> bool) -> bool {
        loop {
            self.flush();
            if done(self) {
                return true;
            }
            let next_msg = self.queue.keys().next().map(|k| k.0);
            let next_wake = self.stacks.iter().map(|s| s.poll_deadline().0).min();
            let next = match (next_msg, next_wake) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap(),
            };
            if next > limit.0 {
                return false;
            }
            self.now = Time(next.max(self.now.0));
            while let Some((&(t, s), _)) = self.queue.iter().next() {
                if t > self.now.0 {
                    break;
                }
                let (to, from, bytes) = self.queue.remove(&(t, s)).unwrap();
                self.stacks[to].handle_peer_bytes(from, &bytes, self.now);
            }
            for s in &mut self.stacks {
                if s.poll_deadline() <= self.now {
                    s.handle_timeout(self.now);
                }
            }
        }
    }

    fn http_request(&mut self, node: usize, conn: u64, path: &str, body: &[u8]) {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: cairn\r\nContent-Type: application/cbor\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        let now = self.now;
        self.stacks[node].http_connect(conn, now);
        self.stacks[node].http_receive(conn, &req, now);
    }

    /// The body of a complete response on `(node, conn)`, with its status.
    fn http_response(&self, node: usize, conn: u64) -> Option<(u16, Vec<u8>)> {
        let bytes = self.http.get(&(node, conn))?;
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
        let body = bytes.get(head_end + 4..head_end + 4 + len)?;
        Some((status, body.to_vec()))
    }
}

fn anonymous_envelope(request_type: &str, fields: impl FnOnce(&mut Writer), n: usize) -> Vec<u8> {
    let mut w = Writer::self_describing();
    w.map(1).text("content").map(n + 3);
    w.text("request_type").text(request_type);
    w.text("sender").bytes(&[4]);
    w.text("ingress_expiry")
        .u64(GENESIS_NS + 120 * 1_000_000_000);
    fields(&mut w);
    w.into_bytes()
}

fn create_canister_call() -> Vec<u8> {
    let arg = candid::encode_args(&[(
        record(&[("amount", candid::opt(Type::Nat))]),
        Value::Record(vec![(
            candid::field_id("amount"),
            Value::Opt(Some(Box::new(Value::nat(10_000_000_000_000)))),
        )]),
    )])
    .unwrap();
    anonymous_envelope(
        "call",
        |w| {
            w.text("canister_id").bytes(&[]);
            w.text("method_name")
                .text("provisional_create_canister_with_cycles");
            w.text("arg").bytes(&arg);
        },
        3,
    )
}

fn certificate_of(body: &[u8]) -> Vec<u8> {
    let v = cbor::decode(body).unwrap();
    let r = cbor::Record::new(v.untagged()).unwrap();
    r.bytes("certificate").unwrap().to_vec()
}

#[test]
fn an_update_call_is_finalized_executed_and_certified_by_four_nodes() {
    let mut net = Net::new(4);
    let root_key = PublicKey::from_der(net.stacks[0].root_key_der()).unwrap();
    // Identity as ic-agent assumes it: subnet id = SA(root key DER).
    assert_eq!(
        net.stacks[0].subnet_id(),
        Principal::self_authenticating(net.stacks[0].root_key_der())
    );
    let limit = Time(GENESIS_NS).plus_millis(SCENARIO_LIMIT_MS);
    assert!(
        net.run_until(limit, |n| n
            .stacks
            .iter()
            .all(|s| s.certified_height() >= 2)),
        "every node certifies heights"
    );

    let call = create_canister_call();
    let rid = Envelope::decode(&call, RequestKind::Call)
        .unwrap()
        .request_id;
    net.http_request(1, 7, "/api/v3/canister/aaaaa-aa/call", &call);
    assert!(
        net.run_until(limit, |n| n.http_response(1, 7).is_some()),
        "the synchronous call is answered"
    );
    let (status, body) = net.http_response(1, 7).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v = cbor::decode(&body).unwrap();
    let r = cbor::Record::new(v.untagged()).unwrap();
    assert_eq!(r.text("status").unwrap(), "replied");
    let cert = certificate::verify(
        &certificate_of(&body),
        &root_key,
        Effective::Canister(Principal::MANAGEMENT),
    )
    .expect("certificate verifies against the root key");
    let status_path: [&[u8]; 3] = [b"request_status", &rid, b"status"];
    assert_eq!(cert.tree.lookup(&status_path), Lookup::Found(b"replied"));
    let reply_path: [&[u8]; 3] = [b"request_status", &rid, b"reply"];
    let Lookup::Found(reply) = cert.tree.lookup(&reply_path) else {
        panic!("reply missing");
    };
    let ty = record(&[("canister_id", Type::Principal)]);
    let decoded = candid::decode_args(reply, &[ty], &Default::default()).unwrap();
    let canister = decoded[0].field("canister_id").unwrap().as_principal();
    assert_eq!(canister, Some(Principal::from_canister_index(0)));

    // Every node executed it: node 3 serves the certified status through read_state.
    let read = anonymous_envelope(
        "read_state",
        |w| {
            w.text("paths").array(1).array(2);
            w.bytes(b"request_status").bytes(&rid);
        },
        1,
    );
    assert!(net.run_until(limit, |n| n.stacks[3]
        .state_machine()
        .request_status(&rid)
        .is_some()
        && n.stacks[3].certified_height() >= n.stacks[3].executed_height()));
    net.http_request(3, 9, "/api/v2/canister/aaaaa-aa/read_state", &read);
    net.flush();
    let (status, body) = net
        .http_response(3, 9)
        .expect("read_state answered at once");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let cert = certificate::verify(
        &certificate_of(&body),
        &root_key,
        Effective::Canister(Principal::MANAGEMENT),
    )
    .unwrap();
    assert_eq!(cert.tree.lookup(&status_path), Lookup::Found(b"replied"));

    // Agreement: equal heights have equal state hashes and certified roots on all nodes.
    let h = net
        .stacks
        .iter()
        .map(|s| s.certified_height())
        .min()
        .unwrap();
    assert!(net.run_until(limit, |n| n
        .stacks
        .iter()
        .all(|s| s.executed_height() >= h + 2)));
    let hashes: Vec<_> = net
        .stacks
        .iter()
        .map(|s| s.state_machine().state_hash(h + 1).unwrap())
        .collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]));
    for s in &net.stacks {
        let stats = s.stats();
        assert_eq!(stats.ingress_entries_invalid, 0);
        assert!(stats.certifier.heights_certified >= 2);
        assert!(!s.stalled());
    }
}
