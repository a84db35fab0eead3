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
use node::crypto::bls;
use node::types::Principal;
use std::time::Instant;

const SEC: u64 = 1_000_000_000;
const NOW: u64 = 1_795_478_400 * SEC;

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

/// A complete HTTP request carrying a signed envelope.
fn request(kind: &str, key: &Key, nonce: u64) -> Vec<u8> {
    let cid = Principal::from_canister_index(1);
    let sender = key
        .der()
        .map(|d| Principal::self_authenticating(&d))
        .unwrap_or(Principal::ANONYMOUS);
    let mut c = Writer::new();
    c.map(7).text("request_type").text(kind);
    c.text("nonce").bytes(&nonce.to_be_bytes());
    c.text("ingress_expiry").u64(NOW + 120 * SEC);
    c.text("sender").bytes(sender.as_slice());
    c.text("canister_id").bytes(cid.as_slice());
    c.text("method_name").text("m");
    c.text("arg").bytes(b"DIDL\x00\x01\x71\x05hello");
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
    let body = w.into_bytes();
    let endpoint = if kind == "call" { "call" } else { "query" };
    let version = if kind == "call" { 2 } else { 3 };
    let head = format!(
        "POST /api/v{version}/canister/{}/{endpoint} HTTP/1.1\r\nContent-Type: application/cbor\r\nContent-Length: {}\r\n\r\n",
        cid.to_text(),
        body.len()
    );
    [head.into_bytes(), body].concat()
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

fn time_per_op(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

struct Row {
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
            name: format!("hash state tree, {k} request statuses (once per height)"),
            us,
        });
        let reps = 20;
        let message = certificate::state_root_message(&tree.digest());
        let us = time_per_op(reps, |_| {
            std::hint::black_box(root_sk.sign(&message));
        });
        rows.push(Row {
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
            name: format!("witness + certificate for 1 request of {k}"),
            us,
        });
        let cid = Principal::from_canister_index(1);
        let us = time_per_op(reps, |_| {
            certificate::verify(&cert, &root, Effective::Canister(cid)).unwrap();
        });
        rows.push(Row {
            name: "verify certificate (BLS pairing, client side)".into(),
            us,
        });
    }

    let base = rows[0].us;
    println!("bench api: n = {n} requests per row; ratio = time per op / anonymous query v3");
    println!(
        "{:<68} {:>12} {:>12} {:>8}",
        "operation", "µs/op", "ops/s", "ratio"
    );
    for r in &rows {
        println!(
            "{:<68} {:>12.2} {:>12.0} {:>8.2}",
            r.name,
            r.us,
            1e6 / r.us,
            r.us / base
        );
    }
}
