//! Certificates: parse, verify (delegations, canister ranges, `/time`), and build
//! (spec `certification.md`, `certificates.cddl`; reference §2).
//!
//! ```text
//! certificate = 55799({ tree: hash-tree, signature: bytes(48),
//!                       ? delegation: { subnet_id: bytes, certificate: bytes } })
//! signature   = BLS(subnet or root key, "\x0Dic-state-root" ‖ reconstruct(tree))
//! ```
//!
//! A delegation is itself a certificate signed by the root key, never with a nested
//! delegation; it proves the subnet's key (`/subnet/<sid>/public_key`) and which canisters the
//! subnet may speak for (`/canister_ranges/<sid>/<shard>` or the older flat
//! `/subnet/<sid>/canister_ranges`). Verification order and outcomes follow the checks of
//! `../shared/testdata/ic-certificates/SOURCES.md` and ic-agent's `verify_cert`.

use super::cbor::{self, Record, Value, Writer};
use super::hash_tree::{HashTree, Lookup, SubtreeLookup};
use crate::crypto::bls;
use crate::types::Principal;
use alloc::vec::Vec;
use core::fmt;

/// Domain separator of the state-root signature.
pub const DS_STATE_ROOT: &[u8] = b"\x0Dic-state-root";

/// A decoded certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    pub tree: HashTree,
    pub signature: Vec<u8>,
    pub delegation: Option<Delegation>,
}

/// The `delegation` field: the subnet and the root-signed certificate about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegation {
    pub subnet_id: Principal,
    /// CBOR of the delegation certificate, as received.
    pub certificate: Vec<u8>,
}

/// What the certificate must be authorized for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effective {
    /// A canister-effective request: the canister must lie in the subnet's ranges.
    Canister(Principal),
    /// A subnet-effective request: the delegation must be for that subnet.
    Subnet(Principal),
}

/// Why a certificate is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertError {
    /// Not CBOR, or not the certificate record, or a malformed tree.
    Malformed,
    /// The delegation certificate carries a delegation of its own.
    NestedDelegation,
    /// The delegation names a different subnet than the subnet-effective request.
    DelegationForAnotherSubnet,
    /// The delegation does not reveal the subnet's canister ranges (absent or pruned).
    CanisterRangesNotFound,
    /// No range shard starts at or below the canister.
    NotAuthorizedNoShard,
    /// The canister lies outside the subnet's ranges.
    NotAuthorizedOutsideRanges,
    /// The delegation does not reveal `/subnet/<sid>/public_key`, or it is not a BLS key.
    SubnetKeyMissing,
    /// The BLS signature does not verify (or is not a valid point).
    BlsInvalid,
    /// `/time` is missing or not a LEB128 nat.
    TimeMissing,
    /// `/time` is older than the allowed age.
    Stale,
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertError::Malformed => "malformed certificate",
            CertError::NestedDelegation => "nested delegation",
            CertError::DelegationForAnotherSubnet => "delegation for another subnet",
            CertError::CanisterRangesNotFound => "canister ranges not found",
            CertError::NotAuthorizedNoShard => "not authorized (no shard)",
            CertError::NotAuthorizedOutsideRanges => "not authorized (canister outside ranges)",
            CertError::SubnetKeyMissing => "subnet public key not found in delegation",
            CertError::BlsInvalid => "BLS signature invalid",
            CertError::TimeMissing => "certificate has no /time",
            CertError::Stale => "certificate is too old",
        })
    }
}

impl Certificate {
    /// Decodes certificate CBOR (tagged or not).
    pub fn parse(bytes: &[u8]) -> Result<Certificate, CertError> {
        let value = cbor::decode(bytes).map_err(|_| CertError::Malformed)?;
        let rec = Record::new(value.untagged()).map_err(|_| CertError::Malformed)?;
        let tree = rec.get("tree").ok_or(CertError::Malformed)?;
        let tree = HashTree::from_cbor(tree).map_err(|_| CertError::Malformed)?;
        let signature = rec.bytes("signature").map_err(|_| CertError::Malformed)?;
        // Old serde_cbor encoders wrote an absent delegation as `null` (mainnet, 2022).
        let delegation = match rec.get("delegation") {
            None | Some(Value::Null) => None,
            Some(d) => Some(parse_delegation(d)?),
        };
        Ok(Certificate {
            tree,
            signature: signature.to_vec(),
            delegation,
        })
    }

    pub fn root_hash(&self) -> [u8; 32] {
        self.tree.digest()
    }

    /// `/time` in nanoseconds since 1970.
    pub fn time_ns(&self) -> Result<u64, CertError> {
        match self.tree.lookup(&[b"time"]) {
            Lookup::Found(v) => decode_uleb128(v).ok_or(CertError::TimeMissing),
            _ => Err(CertError::TimeMissing),
        }
    }

    /// Encodes as the IC does: tag 55799, fields `tree`, `signature`, then `delegation`.
    pub fn encode(&self) -> Vec<u8> {
        encode_parts(&self.tree, &self.signature, self.delegation.as_ref())
    }
}

fn parse_delegation(value: &Value<'_>) -> Result<Delegation, CertError> {
    let rec = Record::new(value.untagged()).map_err(|_| CertError::Malformed)?;
    let subnet = rec.bytes("subnet_id").map_err(|_| CertError::Malformed)?;
    let certificate = rec.bytes("certificate").map_err(|_| CertError::Malformed)?;
    Ok(Delegation {
        subnet_id: Principal::from_slice(subnet).map_err(|_| CertError::Malformed)?,
        certificate: certificate.to_vec(),
    })
}

/// Encodes a certificate from its parts.
pub fn encode_parts(tree: &HashTree, signature: &[u8], delegation: Option<&Delegation>) -> Vec<u8> {
    let mut w = Writer::self_describing();
    w.map(if delegation.is_some() { 3 } else { 2 });
    w.text("tree");
    tree.encode(&mut w);
    w.text("signature").bytes(signature);
    if let Some(d) = delegation {
        w.text("delegation").map(2);
        w.text("subnet_id").bytes(d.subnet_id.as_slice());
        w.text("certificate").bytes(&d.certificate);
    }
    w.into_bytes()
}

/// The message the subnet signs for a state root.
pub fn state_root_message(root: &[u8; 32]) -> [u8; 46] {
    let mut m = [0u8; 46];
    m[..14].copy_from_slice(DS_STATE_ROOT);
    m[14..].copy_from_slice(root);
    m
}

/// Builds a certificate for `tree`, signing its root with `sign` (the subnet's threshold key
/// in a replica; any BLS key in tests).
pub fn certify(
    tree: HashTree,
    sign: impl FnOnce(&[u8]) -> [u8; bls::SIGNATURE_BYTES],
    delegation: Option<Delegation>,
) -> Vec<u8> {
    let signature = sign(&state_root_message(&tree.digest()));
    encode_parts(&tree, &signature, delegation.as_ref())
}

/// Verifies a certificate against the root key: the delegation (if any) and its scope for
/// `effective`, then the BLS signature. Time is not checked here; see [`check_freshness`].
pub fn verify(
    bytes: &[u8],
    root_key: &bls::PublicKey,
    effective: Effective,
) -> Result<Certificate, CertError> {
    let cert = Certificate::parse(bytes)?;
    let key = match &cert.delegation {
        None => *root_key,
        Some(d) => delegated_key(d, root_key, effective)?,
    };
    verify_signature(&cert, &key)?;
    Ok(cert)
}

fn verify_signature(cert: &Certificate, key: &bls::PublicKey) -> Result<(), CertError> {
    let sig = bls::Signature::from_bytes(&cert.signature).map_err(|_| CertError::BlsInvalid)?;
    key.verify(&state_root_message(&cert.root_hash()), &sig)
        .map_err(|_| CertError::BlsInvalid)
}

/// Checks a delegation and returns the subnet key it vouches for.
fn delegated_key(
    d: &Delegation,
    root_key: &bls::PublicKey,
    effective: Effective,
) -> Result<bls::PublicKey, CertError> {
    let inner = Certificate::parse(&d.certificate)?;
    if inner.delegation.is_some() {
        return Err(CertError::NestedDelegation);
    }
    match effective {
        Effective::Subnet(sid) if sid != d.subnet_id => {
            return Err(CertError::DelegationForAnotherSubnet)
        }
        Effective::Subnet(_) => {}
        Effective::Canister(cid) => check_canister_in_ranges(&inner.tree, &d.subnet_id, &cid)?,
    }
    verify_signature(&inner, root_key)?;
    let sid = d.subnet_id.as_slice();
    match inner.tree.lookup(&[b"subnet", sid, b"public_key"]) {
        Lookup::Found(der) => {
            bls::PublicKey::from_der(der).map_err(|_| CertError::SubnetKeyMissing)
        }
        _ => Err(CertError::SubnetKeyMissing),
    }
}

/// The canister must lie in a range of the subnet: the sharded form
/// `/canister_ranges/<sid>/<start>` (the shard with the largest start ≤ canister) first, the
/// flat `/subnet/<sid>/canister_ranges` otherwise.
pub fn check_canister_in_ranges(
    tree: &HashTree,
    subnet: &Principal,
    canister: &Principal,
) -> Result<(), CertError> {
    let cid = canister.as_slice();
    if let SubtreeLookup::Found(shards) =
        tree.lookup_subtree(&[b"canister_ranges", subnet.as_slice()])
    {
        let mut best: Option<&[u8]> = None;
        for item in shards.flatten_forks() {
            if let HashTree::Labeled(start, value) = item {
                if start.as_slice() <= cid {
                    if let HashTree::Leaf(v) = value.as_ref() {
                        best = Some(v);
                    }
                }
            }
        }
        let ranges = best.ok_or(CertError::NotAuthorizedNoShard)?;
        return in_ranges(ranges, cid);
    }
    match tree.lookup(&[b"subnet", subnet.as_slice(), b"canister_ranges"]) {
        Lookup::Found(ranges) => in_ranges(ranges, cid),
        _ => Err(CertError::CanisterRangesNotFound),
    }
}

fn in_ranges(encoded: &[u8], cid: &[u8]) -> Result<(), CertError> {
    let ranges = decode_ranges(encoded).ok_or(CertError::Malformed)?;
    if ranges
        .iter()
        .any(|(lo, hi)| lo.as_slice() <= cid && cid <= hi.as_slice())
    {
        Ok(())
    } else {
        Err(CertError::NotAuthorizedOutsideRanges)
    }
}

/// Decodes `55799([* [principal, principal]])`.
pub fn decode_ranges(encoded: &[u8]) -> Option<Vec<(Principal, Principal)>> {
    let value = cbor::decode(encoded).ok()?;
    let mut out = Vec::new();
    for pair in value.as_array()? {
        match pair.as_array()? {
            [lo, hi] => out.push((
                Principal::from_slice(lo.as_bytes()?).ok()?,
                Principal::from_slice(hi.as_bytes()?).ok()?,
            )),
            _ => return None,
        }
    }
    Some(out)
}

/// Encodes canister ranges as the state tree holds them.
pub fn encode_ranges(ranges: &[(Principal, Principal)]) -> Vec<u8> {
    let mut w = Writer::self_describing();
    w.array(ranges.len());
    for (lo, hi) in ranges {
        w.array(2).bytes(lo.as_slice()).bytes(hi.as_slice());
    }
    w.into_bytes()
}

/// Refuses a certificate whose `/time` is more than `max_age_ns` before `now_ns` (ic-agent
/// uses its ingress expiry, 3 minutes by default).
pub fn check_freshness(cert: &Certificate, now_ns: u64, max_age_ns: u64) -> Result<(), CertError> {
    let t = cert.time_ns()?;
    if t < now_ns.saturating_sub(max_age_ns) {
        return Err(CertError::Stale);
    }
    Ok(())
}

/// Decodes an unsigned LEB128 nat that fits u64 and uses all of `bytes`.
pub fn decode_uleb128(bytes: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        let shift = 7 * i as u32;
        let part = u64::from(b & 0x7f);
        if shift >= 64 || (shift > 0 && part >> (64 - shift) != 0) {
            return None;
        }
        n |= part << shift;
        if b & 0x80 == 0 {
            return (i + 1 == bytes.len()).then_some(n);
        }
    }
    None
}
