//! The certified state tree of the spec (reference §2.2), built from the replica's state, and
//! the certified state one height exposes to the API: the tree with cached digests, the
//! subnet's signature over its root and the optional delegation.
//!
//! ```text
//! /time                                        LEB128 ns
//! /request_status/<rid>/status|reply|reject_code|reject_message|error_code
//! /canister/<cid>/certified_data|module_hash|controllers|metadata/<name>
//! /subnet/<sid>/public_key|canister_ranges|node/<nid>/public_key
//! /canister_ranges/<sid>/<first canister of the shard>
//! ```
//! Nats are LEB128, texts UTF-8, controllers and ranges CBOR with tag 55799. Every node of a
//! subnet builds the same bytes from the same state (BTreeMaps, fixed fork shape), so they
//! sign the same root.

use super::cbor::Writer;
use super::certificate::{self, Delegation};
use super::hash_tree::HashTree;
use super::labeled_tree::{HashedTree, LabeledTree};
use super::request_id::{uleb128, RequestId};
use crate::crypto::bls;
use crate::types::Principal;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

/// The status of an ingress message in the state tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestStatus {
    Received,
    Processing,
    Replied(Vec<u8>),
    Rejected {
        code: u64,
        message: String,
        error_code: Option<String>,
    },
    /// The reply was pruned after expiry; only the status remains.
    Done,
}

impl RequestStatus {
    pub fn label(&self) -> &'static str {
        match self {
            RequestStatus::Received => "received",
            RequestStatus::Processing => "processing",
            RequestStatus::Replied(_) => "replied",
            RequestStatus::Rejected { .. } => "rejected",
            RequestStatus::Done => "done",
        }
    }

    /// Replied, rejected or done: nothing will change any more.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RequestStatus::Replied(_) | RequestStatus::Rejected { .. } | RequestStatus::Done
        )
    }
}

/// What the tree shows of one canister.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CanisterEntry {
    /// SHA-256 of the installed module; `None` for an empty canister.
    pub module_hash: Option<[u8; 32]>,
    pub controllers: Vec<Principal>,
    /// At most 32 bytes, set by `ic0.certified_data_set`.
    pub certified_data: Vec<u8>,
    /// `icp:public` / `icp:private` custom sections by name.
    pub metadata: BTreeMap<String, Vec<u8>>,
}

/// What the tree shows of one subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEntry {
    pub id: Principal,
    /// 133-byte DER of the subnet's BLS key.
    pub public_key_der: Vec<u8>,
    /// Closed intervals, sorted.
    pub canister_ranges: Vec<(Principal, Principal)>,
    /// Node id → 44-byte Ed25519 DER key.
    pub nodes: BTreeMap<Principal, Vec<u8>>,
    /// `application`, `system`, `verified_application` or `cloud_engine`; canister
    /// signatures need it present (spec 0.60.0).
    pub subnet_type: Option<String>,
}

/// Builds the labeled tree of one height.
pub struct StateTreeBuilder {
    tree: LabeledTree,
}

impl StateTreeBuilder {
    pub fn new(time_ns: u64) -> StateTreeBuilder {
        let mut tree = LabeledTree::empty();
        tree.insert(&[b"time"], leb(time_ns));
        StateTreeBuilder { tree }
    }

    pub fn request_status(&mut self, rid: &RequestId, status: &RequestStatus) -> &mut Self {
        let base: [&[u8]; 2] = [b"request_status", rid];
        let at = |field: &'static [u8]| [base[0], base[1], field];
        self.tree
            .insert(&at(b"status"), status.label().as_bytes().to_vec());
        match status {
            RequestStatus::Replied(reply) => self.tree.insert(&at(b"reply"), reply.clone()),
            RequestStatus::Rejected {
                code,
                message,
                error_code,
            } => {
                self.tree.insert(&at(b"reject_code"), leb(*code));
                self.tree
                    .insert(&at(b"reject_message"), message.as_bytes().to_vec());
                if let Some(e) = error_code {
                    self.tree.insert(&at(b"error_code"), e.as_bytes().to_vec());
                }
            }
            _ => {}
        }
        self
    }

    pub fn canister(&mut self, id: &Principal, c: &CanisterEntry) -> &mut Self {
        let cid = id.as_slice();
        let at = |field: &'static [u8]| [b"canister".as_slice(), cid, field];
        self.tree
            .insert(&at(b"certified_data"), c.certified_data.clone());
        if let Some(h) = c.module_hash {
            self.tree.insert(&at(b"module_hash"), h.to_vec());
        }
        self.tree
            .insert(&at(b"controllers"), encode_principals(&c.controllers));
        for (name, value) in &c.metadata {
            let path = [b"canister".as_slice(), cid, b"metadata", name.as_bytes()];
            self.tree.insert(&path, value.clone());
        }
        self
    }

    /// Writes the subnet's key, its ranges (flat and one sharded shard) and its node keys.
    pub fn subnet(&mut self, s: &SubnetEntry) -> &mut Self {
        let sid = s.id.as_slice();
        let ranges = certificate::encode_ranges(&s.canister_ranges);
        self.tree.insert(
            &[b"subnet".as_slice(), sid, b"public_key"],
            s.public_key_der.clone(),
        );
        self.tree.insert(
            &[b"subnet".as_slice(), sid, b"canister_ranges"],
            ranges.clone(),
        );
        if let Some(t) = &s.subnet_type {
            self.tree
                .insert(&[b"subnet".as_slice(), sid, b"type"], t.as_bytes().to_vec());
        }
        for (node, key) in &s.nodes {
            let path = [
                b"subnet".as_slice(),
                sid,
                b"node",
                node.as_slice(),
                b"public_key",
            ];
            self.tree.insert(&path, key.clone());
        }
        if let Some((first, _)) = s.canister_ranges.first() {
            let path = [b"canister_ranges".as_slice(), sid, first.as_slice()];
            self.tree.insert(&path, ranges);
        }
        self
    }

    pub fn build(self) -> HashedTree {
        HashedTree::new(self.tree)
    }
}

fn leb(n: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(10);
    uleb128(n, &mut v);
    v
}

/// `55799([* principal])`, the encoding of `/canister/<cid>/controllers`.
pub fn encode_principals(ps: &[Principal]) -> Vec<u8> {
    let mut w = Writer::self_describing();
    w.array(ps.len());
    for p in ps {
        w.bytes(p.as_slice());
    }
    w.into_bytes()
}

/// The certified state of one height: the tree, the subnet's signature over its root, and the
/// delegation from the root subnet (none on the root subnet itself).
#[derive(Clone, Debug)]
pub struct CertifiedState {
    pub height: u64,
    pub tree: HashedTree,
    pub signature: [u8; bls::SIGNATURE_BYTES],
    pub delegation: Option<Delegation>,
}

impl CertifiedState {
    /// Certifies `tree` by signing its root with `sign` (the threshold-combined subnet
    /// signature in a replica; one BLS key in tests and the simulator).
    pub fn sign(
        height: u64,
        tree: HashedTree,
        sign: impl FnOnce(&[u8]) -> [u8; bls::SIGNATURE_BYTES],
        delegation: Option<Delegation>,
    ) -> CertifiedState {
        let signature = sign(&certificate::state_root_message(&tree.digest()));
        CertifiedState {
            height,
            tree,
            signature,
            delegation,
        }
    }

    pub fn time_ns(&self) -> u64 {
        self.tree
            .get_value(&[b"time"])
            .and_then(certificate::decode_uleb128)
            .unwrap_or(0)
    }

    /// The status of `rid`, if the tree has one.
    pub fn request_status(&self, rid: &RequestId) -> Option<&str> {
        let v = self
            .tree
            .get_value(&[b"request_status".as_slice(), rid, b"status"])?;
        core::str::from_utf8(v).ok()
    }

    /// The certificate `ic0.data_certificate_copy` hands to canister `canister` in a query:
    /// it reveals `/canister/<id>/certified_data` and `/time`.
    pub fn data_certificate(&self, canister: &Principal) -> Vec<u8> {
        let path: [&[u8]; 3] = [b"canister", canister.as_slice(), b"certified_data"];
        self.certificate_for(&[&path[..]])
    }

    /// A certificate revealing `paths` (and always `/time`).
    pub fn certificate_for<L: AsRef<[u8]>>(&self, paths: &[&[L]]) -> Vec<u8> {
        let time: &[&[u8]] = &[b"time"];
        let mut all: Vec<Vec<&[u8]>> = paths
            .iter()
            .map(|p| p.iter().map(|l| l.as_ref()).collect())
            .collect();
        all.push(time.to_vec());
        let refs: Vec<&[&[u8]]> = all.iter().map(|p| p.as_slice()).collect();
        let witness: HashTree = self.tree.witness(&refs);
        certificate::encode_parts(&witness, &self.signature, self.delegation.as_ref())
    }
}
