//! The HTTP interface end to end over a test backend: every endpoint, every refusal of
//! acceptance 4 (wrong CBOR, wrong signature, expiry, effective canister id, oversized body,
//! slow clients, replays) and signed query responses checked as ic-agent checks them.

use node::api::auth;
use node::api::cbor::{self, Record, Value, Writer};
use node::api::certificate::{self, Effective};
use node::api::hash_tree::Lookup;
use node::api::request_id::{self, RequestId};
use node::api::server::verify_query_signature;
use node::api::{
    ApiBackend, ApiConfig, CanisterEntry, CertifiedState, HttpApi, IngressMessage, Output, Reject,
    ReplicaHealth, RequestStatus, StateTreeBuilder, SubnetEntry,
};
use node::crypto::bls;
use node::types::Principal;
use std::collections::BTreeMap;

const SEC: u64 = 1_000_000_000;
/// 2026-11-24T00:00:00Z, a realistic wall clock.
const NOW: u64 = 1_795_478_400 * SEC;

// ---------------------------------------------------------------------------------------
// A backend with a toy execution: `echo` replies its argument, `fail` rejects, and
// `inspect_reject` is refused before consensus.

struct TestBackend {
    root_sk: bls::SecretKey,
    root_der: Vec<u8>,
    subnet_id: Principal,
    ranges: Vec<(Principal, Principal)>,
    node_sk: ed25519_dalek::SigningKey,
    node_id: Principal,
    canisters: BTreeMap<Principal, CanisterEntry>,
    statuses: BTreeMap<RequestId, RequestStatus>,
    pending: Vec<IngressMessage>,
    submissions: BTreeMap<RequestId, u32>,
    state: Option<CertifiedState>,
    height: u64,
    health: ReplicaHealth,
}

impl TestBackend {
    fn new() -> TestBackend {
        let root_sk = bls::SecretKey::from_ikm(&[9; 32]);
        let root_der = root_sk.public_key().to_der().to_vec();
        let node_sk = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let node_der = auth::ed25519_der(node_sk.verifying_key().as_bytes());
        let mut canisters = BTreeMap::new();
        canisters.insert(
            canister(1),
            CanisterEntry {
                module_hash: Some([0xab; 32]),
                controllers: vec![Principal::ANONYMOUS],
                certified_data: vec![1, 2, 3],
                metadata: BTreeMap::new(),
            },
        );
        let mut b = TestBackend {
            subnet_id: Principal::self_authenticating(&root_der),
            root_sk,
            root_der,
            ranges: vec![(canister(0), canister(0xfffff))],
            node_id: Principal::self_authenticating(&node_der),
            node_sk,
            canisters,
            statuses: BTreeMap::new(),
            pending: Vec::new(),
            submissions: BTreeMap::new(),
            state: None,
            height: 0,
            health: ReplicaHealth::Healthy,
        };
        b.certify(NOW);
        b
    }

    /// Executes pending calls and certifies a new height at `time_ns`.
    fn execute(&mut self, time_ns: u64) {
        for m in std::mem::take(&mut self.pending) {
            let status = match m.content.method_name.as_str() {
                "echo" => RequestStatus::Replied(m.content.arg.clone()),
                _ => RequestStatus::Rejected {
                    code: 5,
                    message: "canister trapped".into(),
                    error_code: Some("IC0503".into()),
                },
            };
            self.statuses.insert(m.request_id, status);
        }
        self.certify(time_ns);
    }

    fn certify(&mut self, time_ns: u64) {
        let mut b = StateTreeBuilder::new(time_ns);
        for (rid, s) in &self.statuses {
            b.request_status(rid, s);
        }
        for (id, c) in &self.canisters {
            b.canister(id, c);
        }
        let node_der = auth::ed25519_der(self.node_sk.verifying_key().as_bytes());
        b.subnet(&SubnetEntry {
            id: self.subnet_id,
            public_key_der: self.root_der.clone(),
            canister_ranges: self.ranges.clone(),
            nodes: [(self.node_id, node_der.to_vec())].into_iter().collect(),
            subnet_type: Some("system".into()),
        });
        self.height += 1;
        let sk = &self.root_sk;
        self.state = Some(CertifiedState::sign(
            self.height,
            b.build(),
            |m| *sk.sign(m).as_bytes(),
            None,
        ));
    }
}

impl ApiBackend for TestBackend {
    fn root_key_der(&self) -> &[u8] {
        &self.root_der
    }
    fn subnet_id(&self) -> Principal {
        self.subnet_id
    }
    fn canister_ranges(&self) -> &[(Principal, Principal)] {
        &self.ranges
    }
    fn health(&self) -> ReplicaHealth {
        self.health
    }
    fn certified_state(&self) -> Option<&CertifiedState> {
        self.state.as_ref()
    }
    fn submit_ingress(&mut self, msg: IngressMessage) -> Result<(), Reject> {
        *self.submissions.entry(msg.request_id).or_default() += 1;
        if msg.content.method_name == "inspect_reject" {
            return Err(Reject {
                code: 4,
                message: "refused by inspect_message".into(),
                error_code: "IC0516".into(),
            });
        }
        self.statuses
            .insert(msg.request_id, RequestStatus::Received);
        self.pending.push(msg);
        Ok(())
    }
    fn query(&mut self, content: &node::api::envelope::CallContent) -> Result<Vec<u8>, Reject> {
        match content.method_name.as_str() {
            "greet" => Ok([b"hello ".as_slice(), &content.arg].concat()),
            _ => Err(Reject {
                code: 3,
                message: "no such method".into(),
                error_code: "IC0536".into(),
            }),
        }
    }
    fn node_id(&self) -> Principal {
        self.node_id
    }
    fn sign_with_node_key(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.node_sk.sign(message).to_bytes()
    }
}

fn canister(i: u64) -> Principal {
    Principal::from_canister_index(i)
}

// ---------------------------------------------------------------------------------------
// A client: identities, envelopes, HTTP.

enum Identity {
    Anonymous,
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
    K256(k256::ecdsa::SigningKey),
}

impl Identity {
    fn der(&self) -> Option<Vec<u8>> {
        match self {
            Identity::Anonymous => None,
            Identity::Ed25519(k) => Some(auth::ed25519_der(k.verifying_key().as_bytes()).to_vec()),
            Identity::P256(k) => {
                let prefix = hex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
                Some(
                    [
                        prefix,
                        k.verifying_key().to_sec1_point(false).as_bytes().to_vec(),
                    ]
                    .concat(),
                )
            }
            Identity::K256(k) => {
                let prefix = hex("3056301006072a8648ce3d020106052b8104000a034200");
                Some(
                    [
                        prefix,
                        k.verifying_key().to_sec1_point(false).as_bytes().to_vec(),
                    ]
                    .concat(),
                )
            }
        }
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            Identity::Anonymous => vec![],
            Identity::Ed25519(k) => {
                use ed25519_dalek::Signer;
                k.sign(msg).to_bytes().to_vec()
            }
            Identity::P256(k) => {
                use p256::ecdsa::signature::Signer;
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_bytes().to_vec()
            }
            Identity::K256(k) => {
                use k256::ecdsa::signature::Signer;
                let s: k256::ecdsa::Signature = k.sign(msg);
                s.to_bytes().to_vec()
            }
        }
    }

    fn principal(&self) -> Principal {
        match self.der() {
            None => Principal::ANONYMOUS,
            Some(d) => Principal::self_authenticating(&d),
        }
    }
}

fn ed25519(seed: u8) -> Identity {
    Identity::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// name, chain, request kind, expected status.
type DelegationCase<'a> = (
    &'static str,
    Vec<(DelegationSpec, &'a Identity)>,
    &'static str,
    u16,
);

struct DelegationSpec {
    to: Vec<u8>,
    expiration: u64,
    targets: Option<Vec<Principal>>,
    permissions: Option<&'static str>,
}

/// Writes the delegation map and returns its bytes.
fn delegation_map(d: &DelegationSpec) -> Vec<u8> {
    let mut w = Writer::new();
    let n = 2 + d.targets.is_some() as usize + d.permissions.is_some() as usize;
    w.map(n)
        .text("pubkey")
        .bytes(&d.to)
        .text("expiration")
        .u64(d.expiration);
    if let Some(t) = &d.targets {
        w.text("targets").array(t.len());
        t.iter().for_each(|p| {
            w.bytes(p.as_slice());
        });
    }
    if let Some(p) = d.permissions {
        w.text("permissions").text(p);
    }
    w.into_bytes()
}

struct Req<'a> {
    kind: &'static str,
    sender: &'a Identity,
    /// The key that signs the request (the last delegated key), if not the sender's own.
    signer: Option<&'a Identity>,
    delegations: Vec<(DelegationSpec, &'a Identity)>,
    canister: Principal,
    method: &'a str,
    arg: Vec<u8>,
    paths: Vec<Vec<Vec<u8>>>,
    expiry: u64,
    nonce: Option<Vec<u8>>,
}

impl<'a> Req<'a> {
    fn new(kind: &'static str, sender: &'a Identity) -> Req<'a> {
        Req {
            kind,
            sender,
            signer: None,
            delegations: vec![],
            canister: canister(1),
            method: "echo",
            arg: b"DIDL\x00\x00".to_vec(),
            paths: vec![],
            expiry: NOW + 3 * 60 * SEC,
            nonce: None,
        }
    }

    fn content(&self) -> Vec<u8> {
        let mut w = Writer::new();
        let rs = self.kind == "read_state";
        let n = if rs { 4 } else { 6 } + self.nonce.is_some() as usize;
        w.map(n).text("request_type").text(self.kind);
        if let Some(nonce) = &self.nonce {
            w.text("nonce").bytes(nonce);
        }
        w.text("ingress_expiry").u64(self.expiry);
        w.text("sender").bytes(self.sender.principal().as_slice());
        if rs {
            w.text("paths").array(self.paths.len());
            for p in &self.paths {
                w.array(p.len());
                p.iter().for_each(|l| {
                    w.bytes(l);
                });
            }
        } else {
            w.text("canister_id").bytes(self.canister.as_slice());
            w.text("method_name").text(self.method);
            w.text("arg").bytes(&self.arg);
        }
        w.into_bytes()
    }

    fn request_id(&self) -> RequestId {
        request_id::request_id(&cbor::decode(&self.content()).unwrap()).unwrap()
    }

    fn envelope(&self) -> Vec<u8> {
        let content = self.content();
        let rid = self.request_id();
        let mut w = Writer::self_describing();
        let Some(der) = self.sender.der() else {
            w.map(1).text("content").raw(&content);
            return w.into_bytes();
        };
        let signer = self.signer.unwrap_or(self.sender);
        let has_d = !self.delegations.is_empty();
        w.map(3 + has_d as usize).text("content").raw(&content);
        w.text("sender_pubkey").bytes(&der);
        if has_d {
            w.text("sender_delegation").array(self.delegations.len());
            for (spec, by) in &self.delegations {
                let map = delegation_map(spec);
                let hash = request_id::hash_value(&cbor::decode(&map).unwrap()).unwrap();
                let sig = by.sign(&[auth::DS_DELEGATION, &hash].concat());
                w.map(2)
                    .text("delegation")
                    .raw(&map)
                    .text("signature")
                    .bytes(&sig);
            }
        }
        let sig = signer.sign(&[auth::DS_REQUEST, &rid].concat());
        w.text("sender_sig").bytes(&sig);
        w.into_bytes()
    }
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/cbor\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

struct Resp {
    status: u16,
    body: Vec<u8>,
    close: bool,
}

fn parse_responses(outputs: &[Output]) -> Vec<Resp> {
    let mut out = Vec::new();
    for o in outputs {
        if o.bytes.is_empty() {
            continue;
        }
        let split = o.bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = std::str::from_utf8(&o.bytes[..split]).unwrap();
        let status: u16 = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        let body = o.bytes[split + 4..].to_vec();
        assert_eq!(body.len(), len);
        out.push(Resp {
            status,
            body,
            close: o.close,
        });
    }
    out
}

struct Harness {
    api: HttpApi,
    backend: TestBackend,
    next_conn: u64,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            api: HttpApi::new(ApiConfig::default()),
            backend: TestBackend::new(),
            next_conn: 0,
        }
    }

    /// One request on a fresh connection; returns the single response.
    fn exchange(&mut self, bytes: &[u8], now: u64) -> Resp {
        let conn = self.open(now);
        self.api.receive(&mut self.backend, conn, bytes, now);
        let mut r = parse_responses(&self.api.take_outputs());
        assert_eq!(r.len(), 1, "expected one response");
        r.remove(0)
    }

    fn open(&mut self, now: u64) -> u64 {
        self.next_conn += 1;
        self.api.connect(self.next_conn, now);
        self.next_conn
    }

    fn call(&mut self, version: u8, ecid: Principal, req: &Req<'_>) -> Resp {
        let path = format!("/api/v{version}/canister/{}/call", ecid.to_text());
        self.exchange(&post(&path, &req.envelope()), NOW)
    }

    fn query(&mut self, version: u8, ecid: Principal, req: &Req<'_>) -> Resp {
        let path = format!("/api/v{version}/canister/{}/query", ecid.to_text());
        self.exchange(&post(&path, &req.envelope()), NOW)
    }

    fn read_state(&mut self, path: &str, req: &Req<'_>) -> Resp {
        self.exchange(&post(path, &req.envelope()), NOW)
    }

    fn root_key(&self) -> bls::PublicKey {
        bls::PublicKey::from_der(&self.backend.root_der).unwrap()
    }
}

fn record(body: &[u8]) -> Value<'_> {
    let v = cbor::decode(body).unwrap();
    assert!(
        matches!(v, Value::Tag(55799, _)),
        "responses carry the self-describe tag"
    );
    v
}

fn field<'a>(v: &'a Value<'a>, key: &'static str) -> &'a Value<'a> {
    Record::new(v.untagged())
        .unwrap()
        .get(key)
        .unwrap_or_else(|| panic!("no {key}"))
}

// ---------------------------------------------------------------------------------------

#[test]
fn status_reports_root_key_version_and_health() {
    let mut h = Harness::new();
    let r = h.exchange(b"GET /api/v2/status HTTP/1.1\r\nHost: x\r\n\r\n", NOW);
    assert_eq!(r.status, 200);
    let v = record(&r.body);
    assert_eq!(
        field(&v, "root_key").as_bytes().unwrap(),
        &h.backend.root_der[..]
    );
    assert!(field(&v, "impl_version")
        .as_text()
        .unwrap()
        .starts_with("cairn-"));
    assert_eq!(
        field(&v, "replica_health_status").as_text(),
        Some("healthy")
    );
    assert_eq!(field(&v, "certified_height").as_u64(), Some(1));
    // The root subnet id is SA(root key DER), as ic-agent assumes.
    assert_eq!(
        h.backend.subnet_id,
        Principal::self_authenticating(&h.backend.root_der)
    );
    // While the replica starts, status still answers and everything else is 503.
    h.backend.health = ReplicaHealth::WaitingForCertifiedState;
    let r = h.exchange(b"GET /api/v2/status HTTP/1.1\r\n\r\n", NOW);
    let v = record(&r.body);
    assert_eq!(
        field(&v, "replica_health_status").as_text(),
        Some("waiting_for_certified_state")
    );
    let mut q = Req::new("query", &Identity::Anonymous);
    q.method = "greet";
    assert_eq!(h.query(3, canister(1), &q).status, 503);
    h.backend.health = ReplicaHealth::Healthy;
    assert_eq!(h.query(3, canister(1), &q).status, 200);
    // CORS preflight.
    let r = h.exchange(b"OPTIONS /api/v2/status HTTP/1.1\r\n\r\n", NOW);
    assert_eq!(r.status, 204);
}

/// Query responses are signed by the node over the spec's hash, and the node key is
/// certified under `/subnet/<sid>/node/<nid>/public_key`: the check ic-agent makes.
#[test]
fn signed_query_responses_verify_against_certified_node_key() {
    let mut h = Harness::new();
    let anon = Identity::Anonymous;
    // The node key, read from a certified /subnet read_state.
    let mut rs = Req::new("read_state", &anon);
    rs.paths = vec![vec![b"subnet".to_vec(), h.backend.subnet_id.to_vec()]];
    let path = format!(
        "/api/v3/subnet/{}/read_state",
        h.backend.subnet_id.to_text()
    );
    let r = h.read_state(&path, &rs);
    assert_eq!(r.status, 200);
    let v = record(&r.body);
    let cert_bytes = field(&v, "certificate").as_bytes().unwrap();
    let cert = certificate::verify(
        cert_bytes,
        &h.root_key(),
        Effective::Subnet(h.backend.subnet_id),
    )
    .unwrap();
    let sid = h.backend.subnet_id.to_vec();
    let nid = h.backend.node_id.to_vec();
    let Lookup::Found(node_key) =
        cert.tree
            .lookup(&[b"subnet".as_slice(), &sid, b"node", &nid, b"public_key"])
    else {
        panic!("node key not certified");
    };
    let node_key = node_key.to_vec();
    assert_eq!(
        cert.tree
            .lookup(&[b"subnet".as_slice(), &sid, b"public_key"]),
        Lookup::Found(&h.backend.root_der)
    );

    for (version, method, expect) in [
        (2, "greet", true),
        (3, "greet", true),
        (3, "missing", false),
    ] {
        let mut q = Req::new("query", &anon);
        q.method = method;
        let r = h.query(version, canister(1), &q);
        assert_eq!(r.status, 200);
        let v = record(&r.body);
        let sigs = field(&v, "signatures").as_array().unwrap();
        assert_eq!(sigs.len(), 1);
        let s = Record::new(sigs[0].untagged()).unwrap();
        assert_eq!(s.bytes("identity").unwrap(), &nid[..]);
        let ts = s.u64("timestamp").unwrap();
        let outcome = if expect {
            assert_eq!(field(&v, "status").as_text(), Some("replied"));
            let arg = field(field(&v, "reply"), "arg")
                .as_bytes()
                .unwrap()
                .to_vec();
            assert_eq!(arg, b"hello DIDL\x00\x00");
            Ok(arg)
        } else {
            assert_eq!(field(&v, "status").as_text(), Some("rejected"));
            Err(Reject {
                code: field(&v, "reject_code").as_u64().unwrap(),
                message: field(&v, "reject_message").as_text().unwrap().into(),
                error_code: field(&v, "error_code").as_text().unwrap().into(),
            })
        };
        let sig = s.bytes("signature").unwrap();
        let rid = q.request_id();
        assert_eq!(
            verify_query_signature(&node_key, &outcome, &rid, ts, sig),
            Ok(())
        );
        let mut bad = sig.to_vec();
        bad[0] ^= 1;
        assert!(verify_query_signature(&node_key, &outcome, &rid, ts, &bad).is_err());
    }
}

#[test]
fn update_call_v2_then_read_state_certifies_the_reply() {
    let mut h = Harness::new();
    let id = ed25519(1);
    let call = Req::new("call", &id);
    let r = h.call(2, canister(1), &call);
    assert_eq!(r.status, 202);
    assert!(r.body.is_empty());
    h.backend.execute(NOW + SEC);
    let rid = call.request_id();
    let mut rs = Req::new("read_state", &id);
    rs.paths = vec![vec![b"request_status".to_vec(), rid.to_vec()]];
    let path = format!("/api/v2/canister/{}/read_state", canister(1).to_text());
    let r = h.read_state(&path, &rs);
    assert_eq!(r.status, 200);
    let v = record(&r.body);
    let cert = certificate::verify(
        field(&v, "certificate").as_bytes().unwrap(),
        &h.root_key(),
        Effective::Canister(canister(1)),
    )
    .unwrap();
    let base = [b"request_status".as_slice(), &rid];
    assert_eq!(
        cert.tree.lookup(&[base[0], base[1], b"status"]),
        Lookup::Found(b"replied")
    );
    assert_eq!(
        cert.tree.lookup(&[base[0], base[1], b"reply"]),
        Lookup::Found(b"DIDL\x00\x00")
    );
    assert_eq!(cert.time_ns(), Ok(NOW + SEC));
    assert_eq!(
        certificate::check_freshness(&cert, NOW + 2 * SEC, 180 * SEC),
        Ok(())
    );
    // A request id that does not exist is proven absent.
    let mut rs = Req::new("read_state", &id);
    rs.paths = vec![vec![b"request_status".to_vec(), vec![0x55; 32]]];
    let v = h.read_state(&path, &rs);
    let v = record(&v.body);
    let cert = certificate::verify(
        field(&v, "certificate").as_bytes().unwrap(),
        &h.root_key(),
        Effective::Canister(canister(1)),
    )
    .unwrap();
    assert_eq!(
        cert.tree
            .lookup(&[b"request_status".as_slice(), &[0x55; 32], b"status"]),
        Lookup::Absent
    );
    // module_hash and controllers of the effective canister.
    let mut rs = Req::new("read_state", &id);
    rs.paths = vec![
        vec![
            b"canister".to_vec(),
            canister(1).to_vec(),
            b"module_hash".to_vec(),
        ],
        vec![
            b"canister".to_vec(),
            canister(1).to_vec(),
            b"controllers".to_vec(),
        ],
    ];
    let v = h.read_state(&path, &rs);
    assert_eq!(v.status, 200);
    let v = record(&v.body);
    let cert = certificate::verify(
        field(&v, "certificate").as_bytes().unwrap(),
        &h.root_key(),
        Effective::Canister(canister(1)),
    )
    .unwrap();
    let c1 = canister(1).to_vec();
    assert_eq!(
        cert.tree
            .lookup(&[b"canister".as_slice(), &c1, b"module_hash"]),
        Lookup::Found(&[0xab; 32])
    );
    let Lookup::Found(ctrl) = cert
        .tree
        .lookup(&[b"canister".as_slice(), &c1, b"controllers"])
    else {
        panic!()
    };
    assert_eq!(
        cbor::decode(ctrl).unwrap().as_array().unwrap()[0].as_bytes(),
        Some(&[4u8][..])
    );
    // certified_data is not readable through read_state.
    let mut rs = Req::new("read_state", &id);
    rs.paths = vec![vec![
        b"canister".to_vec(),
        c1.clone(),
        b"certified_data".to_vec(),
    ]];
    assert_eq!(h.read_state(&path, &rs).status, 403);
    // Another canister's data through this effective canister: refused.
    let mut rs = Req::new("read_state", &id);
    rs.paths = vec![vec![
        b"canister".to_vec(),
        canister(2).to_vec(),
        b"module_hash".to_vec(),
    ]];
    assert_eq!(h.read_state(&path, &rs).status, 403);
    // Someone else's request status: refused.
    let other = ed25519(2);
    let mut rs = Req::new("read_state", &other);
    rs.paths = vec![vec![b"request_status".to_vec(), rid.to_vec()]];
    assert_eq!(h.read_state(&path, &rs).status, 403);
}

#[test]
fn read_state_of_nothing_reveals_only_time_and_ranges_on_subnet_form() {
    let mut h = Harness::new();
    let anon = Identity::Anonymous;
    let sid = h.backend.subnet_id;
    let canister_path = format!("/api/v2/canister/{}/read_state", canister(1).to_text());
    for paths in [vec![], vec![vec![]]] {
        let mut rs = Req::new("read_state", &anon);
        rs.paths = paths;
        let r = h.read_state(&canister_path, &rs);
        assert_eq!(r.status, 200);
        let v = record(&r.body);
        let cert = certificate::verify(
            field(&v, "certificate").as_bytes().unwrap(),
            &h.root_key(),
            Effective::Canister(canister(1)),
        )
        .unwrap();
        assert_eq!(cert.time_ns(), Ok(NOW));
        assert_eq!(cert.tree.lookup(&[b"subnet".as_slice()]), Lookup::Unknown);
    }
    // The IC's own delegation request: key and both forms of the ranges, on the subnet form.
    let mut rs = Req::new("read_state", &anon);
    rs.paths = vec![
        vec![b"subnet".to_vec(), sid.to_vec(), b"public_key".to_vec()],
        vec![
            b"subnet".to_vec(),
            sid.to_vec(),
            b"canister_ranges".to_vec(),
        ],
        vec![b"canister_ranges".to_vec(), sid.to_vec()],
    ];
    let r = h.read_state(&format!("/api/v3/subnet/{}/read_state", sid.to_text()), &rs);
    assert_eq!(r.status, 200);
    let v = record(&r.body);
    let cert = certificate::verify(
        field(&v, "certificate").as_bytes().unwrap(),
        &h.root_key(),
        Effective::Subnet(sid),
    )
    .unwrap();
    // Our own certificate, used as a delegation, authorizes exactly our ranges (both forms).
    certificate::check_canister_in_ranges(&cert.tree, &sid, &canister(5)).unwrap();
    assert!(certificate::check_canister_in_ranges(&cert.tree, &sid, &canister(0x100000)).is_err());
    // The canister form may not read canister_ranges/<sid>.
    assert_eq!(h.read_state(&canister_path, &rs).status, 403);
    // data_certificate for canisters: certified_data and time, verifiable for the canister.
    let dc = h
        .backend
        .state
        .as_ref()
        .unwrap()
        .data_certificate(&canister(1));
    let cert = certificate::verify(&dc, &h.root_key(), Effective::Canister(canister(1))).unwrap();
    let c1 = canister(1).to_vec();
    assert_eq!(
        cert.tree
            .lookup(&[b"canister".as_slice(), &c1, b"certified_data"]),
        Lookup::Found(&[1, 2, 3])
    );
    assert_eq!(
        cert.tree
            .lookup(&[b"subnet".as_slice(), &sid.to_vec(), b"type"]),
        Lookup::Unknown
    );
}

#[test]
fn sync_calls_v3_v4_return_certificate_or_202_after_timeout() {
    let mut h = Harness::new();
    let id = ed25519(1);
    for version in [3u8, 4] {
        let mut call = Req::new("call", &id);
        call.nonce = Some(vec![version]);
        let conn = h.open(NOW);
        let path = format!("/api/v{version}/canister/{}/call", canister(1).to_text());
        h.api
            .receive(&mut h.backend, conn, &post(&path, &call.envelope()), NOW);
        assert!(h.api.take_outputs().is_empty(), "parked until certified");
        assert_eq!(h.api.next_deadline_ns(), Some(NOW + 10 * SEC));
        h.backend.execute(NOW + SEC);
        h.api.poll(&mut h.backend, NOW + SEC);
        let r = parse_responses(&h.api.take_outputs()).remove(0);
        assert_eq!(r.status, 200);
        let v = record(&r.body);
        assert_eq!(field(&v, "status").as_text(), Some("replied"));
        let cert = certificate::verify(
            field(&v, "certificate").as_bytes().unwrap(),
            &h.root_key(),
            Effective::Canister(canister(1)),
        )
        .unwrap();
        let rid = call.request_id();
        assert_eq!(
            cert.tree
                .lookup(&[b"request_status".as_slice(), &rid, b"reply"]),
            Lookup::Found(b"DIDL\x00\x00")
        );
        assert!(cert.time_ns().is_ok());
        h.api.disconnect(conn);
    }
    // No certified reply within the timeout: 202, and the connection stays usable.
    let mut call = Req::new("call", &id);
    call.nonce = Some(b"slow".to_vec());
    let conn = h.open(NOW);
    let path = format!("/api/v3/canister/{}/call", canister(1).to_text());
    h.api
        .receive(&mut h.backend, conn, &post(&path, &call.envelope()), NOW);
    h.api.poll(&mut h.backend, NOW + 9 * SEC);
    assert!(h.api.take_outputs().is_empty());
    h.api.poll(&mut h.backend, NOW + 10 * SEC);
    let r = parse_responses(&h.api.take_outputs()).remove(0);
    assert_eq!(r.status, 202);
    assert!(!r.close);
    h.api.receive(
        &mut h.backend,
        conn,
        b"GET /api/v2/status HTTP/1.1\r\n\r\n",
        NOW + 11 * SEC,
    );
    assert_eq!(parse_responses(&h.api.take_outputs())[0].status, 200);
}

#[test]
fn every_signature_scheme_authenticates_and_wrong_signatures_get_403() {
    let mut h = Harness::new();
    let ids = [
        ed25519(3),
        Identity::P256(p256::ecdsa::SigningKey::from_slice(&[5; 32]).unwrap()),
        Identity::K256(k256::ecdsa::SigningKey::from_slice(&[6; 32]).unwrap()),
    ];
    for (i, id) in ids.iter().enumerate() {
        let mut call = Req::new("call", id);
        call.nonce = Some(vec![i as u8]);
        assert_eq!(h.call(2, canister(1), &call).status, 202, "scheme {i}");
        let q = Req::new("query", id);
        let mut q = q;
        q.method = "greet";
        assert_eq!(h.query(3, canister(1), &q).status, 200, "scheme {i}");
        // Flip one byte of the signature: 403.
        let mut call = Req::new("call", id);
        call.nonce = Some(vec![100 + i as u8]);
        let mut env = call.envelope();
        let n = env.len();
        env[n - 1] ^= 1;
        let path = format!("/api/v2/canister/{}/call", canister(1).to_text());
        let r = h.exchange(&post(&path, &env), NOW);
        assert_eq!(
            r.status,
            403,
            "scheme {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
        // Signed by a different key of the same scheme.
        let mut call = Req::new("call", id);
        let other = ed25519(99);
        call.signer = Some(&other);
        assert_eq!(h.call(2, canister(1), &call).status, 403);
    }
    // A sender that is not SA(pubkey).
    let id = ed25519(4);
    let call = Req::new("call", &id);
    let env = call.envelope();
    let v = cbor::decode(&env).unwrap();
    let rec = Record::new(v.untagged()).unwrap();
    let mut w = Writer::self_describing();
    let mut content = Writer::new();
    let mut c2 = Req::new("call", &id);
    let impostor = ed25519(5);
    c2.sender = &impostor;
    content.raw(&c2.content());
    w.map(3).text("content").raw(content.as_slice());
    w.text("sender_pubkey")
        .bytes(rec.bytes("sender_pubkey").unwrap());
    w.text("sender_sig").bytes(rec.bytes("sender_sig").unwrap());
    let r = h.exchange(
        &post(
            &format!("/api/v2/canister/{}/call", canister(1).to_text()),
            &w.into_bytes(),
        ),
        NOW,
    );
    assert_eq!(r.status, 403);
    // Anonymous sender with a signature: refused.
    let anon = Identity::Anonymous;
    let mut w = Writer::self_describing();
    w.map(3)
        .text("content")
        .raw(&Req::new("call", &anon).content());
    w.text("sender_pubkey")
        .bytes(&ed25519(1).der().unwrap())
        .text("sender_sig")
        .bytes(&[0; 64]);
    let r = h.exchange(
        &post(
            &format!("/api/v2/canister/{}/call", canister(1).to_text()),
            &w.into_bytes(),
        ),
        NOW,
    );
    assert_eq!(r.status, 403);
}

#[test]
fn delegation_chains_with_targets_expiry_and_permissions() {
    let mut h = Harness::new();
    let root = ed25519(10);
    let session = Identity::P256(p256::ecdsa::SigningKey::from_slice(&[11; 32]).unwrap());
    let leaf = Identity::K256(k256::ecdsa::SigningKey::from_slice(&[12; 32]).unwrap());
    let spec = |to: &Identity, targets: Option<Vec<Principal>>, exp: u64, perm| DelegationSpec {
        to: to.der().unwrap(),
        expiration: exp,
        targets,
        permissions: perm,
    };
    let far = NOW + 3600 * SEC;
    let cases: Vec<DelegationCase<'_>> = vec![
        (
            "two links",
            vec![
                (spec(&session, None, far, None), &root),
                (spec(&leaf, None, far, None), &session),
            ],
            "call",
            202,
        ),
        (
            "target ok",
            vec![(spec(&session, Some(vec![canister(1)]), far, None), &root)],
            "call",
            202,
        ),
        (
            "target wrong",
            vec![(spec(&session, Some(vec![canister(2)]), far, None), &root)],
            "call",
            403,
        ),
        (
            "expired",
            vec![(spec(&session, None, NOW - SEC, None), &root)],
            "call",
            400,
        ),
        (
            "queries only, call",
            vec![(spec(&session, None, far, Some("queries")), &root)],
            "call",
            403,
        ),
        (
            "queries only, query",
            vec![(spec(&session, None, far, Some("queries")), &root)],
            "query",
            200,
        ),
        (
            "bad permissions",
            vec![(spec(&session, None, far, Some("everything")), &root)],
            "call",
            400,
        ),
        (
            "signed by wrong key",
            vec![(spec(&session, None, far, None), &leaf)],
            "call",
            403,
        ),
        (
            "cycle",
            vec![
                (spec(&session, None, far, None), &root),
                (spec(&root, None, far, None), &session),
            ],
            "call",
            403,
        ),
    ];
    for (i, (name, delegations, kind, want)) in cases.into_iter().enumerate() {
        let signer = match delegations.last() {
            Some((d, _)) if d.to == leaf.der().unwrap() => &leaf,
            Some((d, _)) if d.to == root.der().unwrap() => &root,
            _ => &session,
        };
        let mut req = Req::new(kind, &root);
        req.signer = Some(signer);
        req.delegations = delegations;
        req.nonce = Some(vec![i as u8]);
        if kind == "query" {
            req.method = "greet";
        }
        let r = if kind == "call" {
            h.call(2, canister(1), &req)
        } else {
            h.query(2, canister(1), &req)
        };
        assert_eq!(
            r.status,
            want,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

#[test]
fn expiry_window_is_enforced() {
    let mut h = Harness::new();
    let id = ed25519(1);
    let cases = [
        (NOW - 1, 400),
        (NOW, 202),
        (NOW + 5 * 60 * SEC + 30 * SEC, 202),
        (NOW + 5 * 60 * SEC + 30 * SEC + 1, 400),
        (u64::MAX, 400),
    ];
    for (i, (expiry, want)) in cases.into_iter().enumerate() {
        let mut call = Req::new("call", &id);
        call.expiry = expiry;
        call.nonce = Some(vec![i as u8]);
        let r = h.call(2, canister(1), &call);
        assert_eq!(
            r.status,
            want,
            "expiry {expiry}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // Anonymous queries and read_state may carry any expiry; anonymous calls may not.
    let anon = Identity::Anonymous;
    let mut q = Req::new("query", &anon);
    q.method = "greet";
    q.expiry = 1;
    assert_eq!(h.query(3, canister(1), &q).status, 200);
    let mut c = Req::new("call", &anon);
    c.expiry = 1;
    assert_eq!(h.call(2, canister(1), &c).status, 400);
    // A signed query with an expired expiry is refused.
    let mut q = Req::new("query", &id);
    q.expiry = 1;
    assert_eq!(h.query(3, canister(1), &q).status, 400);
}

#[test]
fn malformed_bodies_and_wrong_effective_ids_get_400() {
    let mut h = Harness::new();
    let id = ed25519(1);
    let path = format!("/api/v2/canister/{}/call", canister(1).to_text());
    for body in [
        &b""[..],
        b"\xff\xff",
        b"\xd9\xd9\xf7",
        b"\xa1\x61x\x01",
        b"\x83\x01\x02",
    ] {
        assert_eq!(h.exchange(&post(&path, body), NOW).status, 400);
    }
    // A query envelope on the call endpoint.
    let q = Req::new("query", &id);
    assert_eq!(h.exchange(&post(&path, &q.envelope()), NOW).status, 400);
    // canister_id ≠ effective canister id.
    let call = Req::new("call", &id);
    assert_eq!(h.call(2, canister(2), &call).status, 400);
    assert_eq!(h.query(3, canister(2), &Req::new("query", &id)).status, 400);
    // Effective canister outside the subnet's ranges.
    let mut far = Req::new("call", &id);
    far.canister = canister(0x100000);
    assert_eq!(h.call(2, canister(0x100000), &far).status, 400);
    // Management canister calls: any effective id in range.
    let mut mgmt = Req::new("call", &id);
    mgmt.canister = Principal::MANAGEMENT;
    mgmt.method = "provisional_create_canister_with_cycles";
    assert_eq!(h.call(2, canister(7), &mgmt).status, 202);
    // ... and the management canister itself as effective id (older ic-utils).
    mgmt.nonce = Some(vec![1]);
    assert_eq!(h.call(2, Principal::MANAGEMENT, &mgmt).status, 202);
    // A non-management canister addressed through aaaaa-aa: refused.
    assert_eq!(
        h.call(2, Principal::MANAGEMENT, &Req::new("call", &id))
            .status,
        400
    );
    // Unknown endpoints and bad principals in the path.
    assert_eq!(
        h.exchange(&post("/api/v2/canister/xyz/call", b""), NOW)
            .status,
        400
    );
    assert_eq!(
        h.exchange(&post("/api/v9/canister/aaaaa-aa/call", b""), NOW)
            .status,
        404
    );
    assert_eq!(
        h.exchange(b"GET /api/v2/canister/aaaaa-aa/call HTTP/1.1\r\n\r\n", NOW)
            .status,
        405
    );
    // Subnet read_state for another subnet.
    let mut rs = Req::new("read_state", &id);
    rs.paths = vec![vec![b"time".to_vec()]];
    let p = format!("/api/v3/subnet/{}/read_state", canister(5).to_text());
    assert_eq!(h.read_state(&p, &rs).status, 404);
    // Too many labels in a path.
    rs.paths = vec![vec![b"x".to_vec(); 128]];
    let p = format!("/api/v3/canister/{}/read_state", canister(1).to_text());
    assert_eq!(h.read_state(&p, &rs).status, 400);
}

#[test]
fn oversized_bodies_get_413_without_buffering() {
    let mut h = Harness::new();
    let conn = h.open(NOW);
    let head = format!(
        "POST /api/v2/canister/{}/call HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        canister(1).to_text(),
        5 * 1024 * 1024 + 1
    );
    h.api.receive(&mut h.backend, conn, head.as_bytes(), NOW);
    let r = parse_responses(&h.api.take_outputs());
    assert_eq!(r[0].status, 413);
    assert!(r[0].close);
    assert_eq!(h.api.connections(), 0);
    // An update call over the ingress limit (but under the HTTP limit): 413.
    let mut big = Req::new("call", &Identity::Anonymous);
    big.arg = vec![0; 4 * 1024 * 1024];
    let r = h.call(2, canister(1), &big);
    assert_eq!(r.status, 413);
    // `Expect: 100-continue` gets the interim response, then the answer.
    let conn = h.open(NOW);
    let q = Req::new("query", &Identity::Anonymous).envelope();
    let path = format!("/api/v2/canister/{}/query", canister(1).to_text());
    let full = post(&path, &q);
    let split = full.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = [&full[..split], b"\r\nExpect: 100-continue\r\n\r\n"].concat();
    h.api.receive(&mut h.backend, conn, &head, NOW);
    let out = h.api.take_outputs();
    assert_eq!(out[0].bytes, b"HTTP/1.1 100 Continue\r\n\r\n");
    h.api.receive(&mut h.backend, conn, &q, NOW);
    assert_eq!(parse_responses(&h.api.take_outputs())[0].status, 200);
    // Huge headers: 431.
    let r = h.exchange(
        &[
            b"GET /api/v2/status HTTP/1.1\r\nX: ".as_slice(),
            &[b'a'; 20_000],
        ]
        .concat(),
        NOW,
    );
    assert_eq!(r.status, 431);
}

#[test]
fn slow_loris_clients_are_cut_off_at_their_deadline() {
    let mut h = Harness::new();
    let deadline = ApiConfig::default().request_timeout_ns;
    let conn = h.open(NOW);
    // One byte per second never completes a request; the deadline counts from the first byte.
    let req = b"GET /api/v2/status HTTP/1.1\r\nHost: slow\r\n\r\n";
    let mut t = NOW;
    for b in req.iter().take(20) {
        h.api.receive(&mut h.backend, conn, &[*b], t);
        t += SEC;
        h.api.poll(&mut h.backend, t);
    }
    assert!(h.api.take_outputs().is_empty());
    assert_eq!(h.api.next_deadline_ns(), Some(NOW + deadline));
    h.api.poll(&mut h.backend, NOW + deadline + 1);
    let r = parse_responses(&h.api.take_outputs());
    assert_eq!(r[0].status, 408);
    assert!(r[0].close);
    assert_eq!(h.api.connections(), 0);
    // An idle keep-alive connection is closed silently after the idle timeout.
    let conn = h.open(NOW);
    h.api.receive(
        &mut h.backend,
        conn,
        b"GET /api/v2/status HTTP/1.1\r\n\r\n",
        NOW,
    );
    assert_eq!(parse_responses(&h.api.take_outputs())[0].status, 200);
    h.api.poll(
        &mut h.backend,
        NOW + ApiConfig::default().idle_timeout_ns + 1,
    );
    let out = h.api.take_outputs();
    assert!(out.len() == 1 && out[0].close && out[0].bytes.is_empty());
    assert_eq!(h.api.connections(), 0);
    // Many connections: the excess is refused, nothing grows without bound.
    for i in 0..node::api::server::CONNECTIONS_MAX as u64 + 5 {
        h.api.connect(1000 + i, NOW);
    }
    assert_eq!(h.api.connections(), node::api::server::CONNECTIONS_MAX);
    let refused = parse_responses(&h.api.take_outputs());
    assert_eq!(refused.len(), 5);
    assert!(refused.iter().all(|r| r.status == 503));
}

#[test]
fn replayed_requests_are_never_submitted_twice() {
    let mut h = Harness::new();
    let id = ed25519(1);
    let call = Req::new("call", &id);
    let rid = call.request_id();
    assert_eq!(h.call(2, canister(1), &call).status, 202);
    assert_eq!(h.call(2, canister(1), &call).status, 202);
    assert_eq!(h.backend.submissions[&rid], 1);
    h.backend.execute(NOW + SEC);
    // A v3 replay after execution answers at once with the certified reply.
    let r = h.call(3, canister(1), &call);
    assert_eq!(r.status, 200);
    let v = record(&r.body);
    let cert = certificate::verify(
        field(&v, "certificate").as_bytes().unwrap(),
        &h.root_key(),
        Effective::Canister(canister(1)),
    )
    .unwrap();
    assert_eq!(
        cert.tree
            .lookup(&[b"request_status".as_slice(), &rid, b"status"]),
        Lookup::Found(b"replied")
    );
    assert_eq!(h.backend.submissions[&rid], 1);
    // After its expiry the replay is refused outright.
    let path = format!("/api/v2/canister/{}/call", canister(1).to_text());
    let late = h.exchange(&post(&path, &call.envelope()), call.expiry + 1);
    assert_eq!(late.status, 400);
    assert_eq!(h.backend.submissions[&rid], 1);
}

#[test]
fn non_replicated_rejections() {
    let mut h = Harness::new();
    let id = ed25519(1);
    let mut call = Req::new("call", &id);
    call.method = "inspect_reject";
    let r = h.call(2, canister(1), &call);
    assert_eq!(r.status, 200);
    let v = record(&r.body);
    assert_eq!(field(&v, "reject_code").as_u64(), Some(4));
    call.nonce = Some(vec![1]);
    let r = h.call(4, canister(1), &call);
    assert_eq!(r.status, 200);
    let v = record(&r.body);
    assert_eq!(
        field(&v, "status").as_text(),
        Some("non_replicated_rejection")
    );
    assert_eq!(field(&v, "error_code").as_text(), Some("IC0516"));
}

#[test]
fn pipelined_requests_get_answers_in_order() {
    let mut h = Harness::new();
    let anon = Identity::Anonymous;
    let mut q = Req::new("query", &anon);
    q.method = "greet";
    let path = format!("/api/v2/canister/{}/query", canister(1).to_text());
    let bytes = [
        b"GET /api/v2/status HTTP/1.1\r\n\r\n".to_vec(),
        post(&path, &q.envelope()),
    ]
    .concat();
    let conn = h.open(NOW);
    h.api.receive(&mut h.backend, conn, &bytes, NOW);
    let r = parse_responses(&h.api.take_outputs());
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].status, 200);
    assert_eq!(
        field(&record(&r[1].body), "status").as_text(),
        Some("replied")
    );
}

/// Random and mutated bytes: every answer is a well-formed response or nothing; no panic.
#[test]
fn garbage_never_crashes() {
    let mut h = Harness::new();
    let id = ed25519(1);
    let valid = post(
        &format!("/api/v3/canister/{}/query", canister(1).to_text()),
        &Req::new("query", &id).envelope(),
    );
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..3000 {
        let mut bytes = valid.clone();
        match round % 3 {
            0 => {
                for _ in 0..1 + rnd() % 8 {
                    let i = (rnd() as usize) % bytes.len();
                    bytes[i] = rnd() as u8;
                }
            }
            1 => bytes.truncate((rnd() as usize) % bytes.len()),
            _ => bytes = (0..rnd() % 300).map(|_| rnd() as u8).collect(),
        }
        let conn = h.open(NOW);
        h.api.receive(&mut h.backend, conn, &bytes, NOW);
        for r in parse_responses(&h.api.take_outputs()) {
            assert!(
                [200, 400, 403, 404, 405, 411, 413, 431].contains(&r.status),
                "status {}",
                r.status
            );
        }
        h.api.disconnect(conn);
    }
}

// ---------------------------------------------------------------------------------------
// Byte compatibility with DFINITY's agent-side types (the code ic-agent runs): envelopes
// they encode are accepted with the same request id, and the responses and certificates
// we produce parse and verify with their code.

mod agent_compat {
    use super::*;
    use ic_transport_types::{
        Delegation, Envelope, EnvelopeContent, QueryResponse, ReadStateResponse, SignedDelegation,
        TransportCallResponse,
    };
    use std::borrow::Cow;

    type Cert = ic_certification::Certificate;

    fn cp(p: Principal) -> candid::Principal {
        candid::Principal::from_slice(p.as_slice())
    }

    fn encode(
        content: EnvelopeContent,
        id: &Identity,
        signer: &Identity,
        chain: Option<Vec<SignedDelegation>>,
    ) -> (Vec<u8>, [u8; 32]) {
        let rid: [u8; 32] = *content.to_request_id();
        let der = id.der();
        let sig = der
            .as_ref()
            .map(|_| signer.sign(&[auth::DS_REQUEST, &rid].concat()));
        let env = Envelope {
            content: Cow::Owned(content),
            sender_pubkey: der,
            sender_sig: sig,
            sender_delegation: chain,
        };
        (env.encode_bytes(), rid)
    }

    /// Checks a certificate with ic-certification's tree and ic-verify-bls-signature.
    fn dfinity_verify(cert: &[u8], root_der: &[u8]) -> Cert {
        let cert: Cert = serde_cbor::from_slice(cert).unwrap();
        let msg = [certificate::DS_STATE_ROOT, &cert.tree.digest()].concat();
        ic_verify_bls_signature::verify_bls_signature(&cert.signature, &msg, &root_der[37..])
            .unwrap();
        cert
    }

    #[test]
    fn agent_envelopes_and_our_responses_interoperate() {
        let mut h = Harness::new();
        let root = ed25519(20);
        let session = Identity::P256(p256::ecdsa::SigningKey::from_slice(&[21; 32]).unwrap());
        let c1 = canister(1);
        // Call through a delegation, v2.
        let delegation = Delegation {
            pubkey: session.der().unwrap(),
            expiration: NOW + 600 * SEC,
            targets: Some(vec![cp(c1)]),
            permissions: None,
        };
        let signed = SignedDelegation {
            signature: root.sign(&delegation.signable()),
            delegation,
        };
        let call = EnvelopeContent::Call {
            nonce: Some(vec![1, 2, 3]),
            ingress_expiry: NOW + 180 * SEC,
            sender: cp(root.principal()),
            canister_id: cp(c1),
            method_name: "echo".into(),
            arg: b"DIDL\x00\x01\x71\x02hi".to_vec(),
            sender_info: None,
        };
        let (body, rid) = encode(call, &root, &session, Some(vec![signed]));
        let path = format!("/api/v2/canister/{}/call", c1.to_text());
        let r = h.exchange(&post(&path, &body), NOW);
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            h.backend.submissions.get(&rid),
            Some(&1),
            "same request id as the agent's"
        );
        h.backend.execute(NOW + SEC);

        // read_state of its status, parsed and verified by DFINITY's code.
        let rs = EnvelopeContent::ReadState {
            ingress_expiry: NOW + 180 * SEC,
            sender: cp(root.principal()),
            paths: vec![vec!["request_status".into(), rid[..].into()]],
        };
        // read_state is signed by the session key through the same chain.
        let delegation = Delegation {
            pubkey: session.der().unwrap(),
            expiration: NOW + 600 * SEC,
            targets: None,
            permissions: None,
        };
        let signed = SignedDelegation {
            signature: root.sign(&delegation.signable()),
            delegation,
        };
        let (body, _) = encode(rs, &root, &session, Some(vec![signed]));
        let r = h.exchange(
            &post(
                &format!("/api/v3/canister/{}/read_state", c1.to_text()),
                &body,
            ),
            NOW,
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let resp: ReadStateResponse = serde_cbor::from_slice(&r.body).unwrap();
        let cert = dfinity_verify(&resp.certificate, &h.backend.root_der);
        let reply = cert
            .tree
            .lookup_path([b"request_status".as_slice(), &rid, b"reply"]);
        assert_eq!(
            reply,
            ic_certification::LookupResult::Found(b"DIDL\x00\x01\x71\x02hi".as_slice())
        );

        // A v4 call answered synchronously: TransportCallResponse::Replied.
        let call = EnvelopeContent::Call {
            nonce: None,
            ingress_expiry: NOW + 180 * SEC,
            sender: cp(Principal::ANONYMOUS),
            canister_id: cp(c1),
            method_name: "echo".into(),
            arg: vec![7],
            sender_info: None,
        };
        let anon = Identity::Anonymous;
        let (body, rid) = encode(call, &anon, &anon, None);
        let conn = h.open(NOW);
        h.api.receive(
            &mut h.backend,
            conn,
            &post(&format!("/api/v4/canister/{}/call", c1.to_text()), &body),
            NOW,
        );
        h.backend.execute(NOW + SEC);
        h.api.poll(&mut h.backend, NOW + SEC);
        let r = parse_responses(&h.api.take_outputs()).remove(0);
        match serde_cbor::from_slice::<TransportCallResponse>(&r.body).unwrap() {
            TransportCallResponse::Replied { certificate } => {
                let cert = dfinity_verify(&certificate, &h.backend.root_der);
                let status = cert
                    .tree
                    .lookup_path([b"request_status".as_slice(), &rid, b"status"]);
                assert_eq!(
                    status,
                    ic_certification::LookupResult::Found(b"replied".as_slice())
                );
            }
            other => panic!("{other:?}"),
        }

        // Queries: the response and its node signature, checked as ic-agent checks them.
        use ed25519_dalek::Verifier;
        let node_key = h.backend.node_sk.verifying_key();
        for method in ["greet", "missing"] {
            let q = EnvelopeContent::Query {
                ingress_expiry: NOW + 180 * SEC,
                sender: cp(Principal::ANONYMOUS),
                canister_id: cp(c1),
                method_name: method.into(),
                arg: vec![],
                nonce: None,
                sender_info: None,
            };
            let (body, rid) = encode(q, &anon, &anon, None);
            let r = h.exchange(
                &post(&format!("/api/v3/canister/{}/query", c1.to_text()), &body),
                NOW,
            );
            let resp: QueryResponse = serde_cbor::from_slice(&r.body).unwrap();
            let sig = &resp.signatures()[0];
            assert_eq!(sig.identity, cp(h.backend.node_id));
            let signable = resp.signable(ic_transport_types::RequestId::new(&rid), sig.timestamp);
            let s = ed25519_dalek::Signature::from_slice(&sig.signature).unwrap();
            node_key.verify(&signable, &s).unwrap();
            match (&resp, method) {
                (QueryResponse::Replied { reply, .. }, "greet") => assert_eq!(reply.arg, b"hello "),
                (QueryResponse::Rejected { reject, .. }, "missing") => {
                    assert_eq!(reject.error_code.as_deref(), Some("IC0536"))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// Certificates we build (root-signed, as a single-subnet node serves them) hash the same
    /// under ic-certification and verify under DFINITY's BLS verifier.
    #[test]
    fn our_certificates_verify_with_dfinity_code() {
        let h = Harness::new();
        let state = h.backend.state.as_ref().unwrap();
        let sid = h.backend.subnet_id.to_vec();
        let cert = state.certificate_for(&[&[b"subnet".as_slice(), &sid][..]]);
        let parsed = dfinity_verify(&cert, &h.backend.root_der);
        assert_eq!(parsed.tree.digest(), state.tree.digest());
        let key = parsed
            .tree
            .lookup_path([b"subnet".as_slice(), &sid, b"public_key"]);
        assert_eq!(
            key,
            ic_certification::LookupResult::Found(h.backend.root_der.as_slice())
        );
    }
}

/// Internet Identity style: the sender key is a canister signature key, whose "signature" on
/// a delegation is a certificate over the canister's certified data.
#[test]
fn canister_signature_delegations_authenticate() {
    use node::api::labeled_tree::{HashedTree, LabeledTree};
    let mut h = Harness::new();
    let ii = canister(9);
    let seed = b"user anchor 10000".to_vec();
    // DER: SEQUENCE { AlgorithmIdentifier(1.3.6.1.4.1.56387.1.2), BIT STRING(0 ‖ len ‖ cid ‖ seed) }
    let payload = [&[ii.as_slice().len() as u8][..], ii.as_slice(), &seed].concat();
    let alg = hex("300c060a2b0601040183b8430102");
    let bits = [&[0x03, payload.len() as u8 + 1, 0x00][..], &payload].concat();
    let der = [&[0x30, (alg.len() + bits.len()) as u8][..], &alg, &bits].concat();
    let sender = Principal::self_authenticating(&der);

    let session = ed25519(30);
    let spec = DelegationSpec {
        to: session.der().unwrap(),
        expiration: NOW + 600 * SEC,
        targets: None,
        permissions: None,
    };
    let map = delegation_map(&spec);
    let hash = request_id::hash_value(&cbor::decode(&map).unwrap()).unwrap();
    let signed_msg = [auth::DS_DELEGATION, &hash].concat();

    // The canister's signature tree: ["sig", H(seed), H(msg)] = "".
    let mut sig_tree = LabeledTree::empty();
    sig_tree.insert(
        &[
            b"sig".as_slice(),
            &request_id::sha256(&seed),
            &request_id::sha256(&signed_msg),
        ],
        vec![],
    );
    let sig_tree = HashedTree::new(sig_tree);
    // The subnet certifies the canister's certified_data = root of that tree.
    h.backend.canisters.insert(
        ii,
        CanisterEntry {
            certified_data: sig_tree.digest().to_vec(),
            ..Default::default()
        },
    );
    h.backend.certify(NOW);
    let canister_sig = |tree: &HashedTree, backend: &TestBackend| {
        let cert = backend.state.as_ref().unwrap().data_certificate(&ii);
        let mut w = Writer::self_describing();
        w.map(2).text("certificate").bytes(&cert).text("tree");
        tree.to_hash_tree().encode(&mut w);
        w.into_bytes()
    };
    let good = canister_sig(&sig_tree, &h.backend);

    // The request's sender is SA(canister-sig key); the session key signs the request.
    let mut req = Req::new("call", &session);
    req.nonce = Some(vec![1]);
    let body_for = |sig: &[u8], req: &Req<'_>| {
        let mut c = Writer::new();
        c.map(7)
            .text("request_type")
            .text("call")
            .text("nonce")
            .bytes(req.nonce.as_ref().unwrap());
        c.text("ingress_expiry")
            .u64(req.expiry)
            .text("sender")
            .bytes(sender.as_slice());
        c.text("canister_id")
            .bytes(req.canister.as_slice())
            .text("method_name")
            .text(req.method);
        c.text("arg").bytes(&req.arg);
        let content = c.into_bytes();
        let rid = request_id::request_id(&cbor::decode(&content).unwrap()).unwrap();
        let mut w = Writer::self_describing();
        w.map(4)
            .text("content")
            .raw(&content)
            .text("sender_pubkey")
            .bytes(&der);
        w.text("sender_delegation")
            .array(1)
            .map(2)
            .text("delegation")
            .raw(&map)
            .text("signature")
            .bytes(sig);
        w.text("sender_sig")
            .bytes(&session.sign(&[auth::DS_REQUEST, &rid].concat()));
        w.into_bytes()
    };
    let path = format!("/api/v2/canister/{}/call", canister(1).to_text());
    let r = h.exchange(&post(&path, &body_for(&good, &req)), NOW);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));

    // A tree for another message: refused.
    let mut other = LabeledTree::empty();
    other.insert(
        &[b"sig".as_slice(), &request_id::sha256(&seed), &[0; 32]],
        vec![],
    );
    let bad = canister_sig(&HashedTree::new(other), &h.backend);
    req.nonce = Some(vec![2]);
    assert_eq!(
        h.exchange(&post(&path, &body_for(&bad, &req)), NOW).status,
        403
    );
}
