//! Sender authentication and the ingress expiry window (spec §Authentication, §Signatures;
//! reference §1.5–§1.8).
//!
//! A request is authentic when: the sender is anonymous and carries no key, signature or
//! delegation; or the sender is `SA(sender_pubkey)`, each delegation is signed by the key
//! before it over `"\x1Aic-request-auth-delegation" ‖ hash_of_map(delegation)` and has not
//! expired, and the last key signs `"\x0Aic-request" ‖ request_id`. Targets of every link
//! restrict the canisters the request may address; `permissions: "queries"` forbids calls.
//!
//! Key schemes by DER SubjectPublicKeyInfo: Ed25519, ECDSA P-256, ECDSA secp256k1 (high-s
//! signatures are accepted as well, normalised first), and canister signatures (verified
//! against the root key through a certificate). WebAuthn keys are refused as unsupported.

use super::cbor::{self, Record};
use super::certificate::{self, Effective};
use super::envelope::{Content, Envelope, Permissions, RequestKind};
use super::hash_tree::{HashTree, Lookup};
use super::request_id::sha256;
use crate::crypto::bls;
use crate::types::Principal;
use alloc::vec::Vec;
use core::fmt;

/// Domain separator of a request signature.
pub const DS_REQUEST: &[u8] = b"\x0Aic-request";
/// Domain separator of a delegation signature (0x1A = 26 characters).
pub const DS_DELEGATION: &[u8] = b"\x1Aic-request-auth-delegation";

/// The IC's `MAX_INGRESS_TTL`: an expiry at most this far ahead is accepted (5 min).
pub const MAX_INGRESS_TTL_NS: u64 = 5 * 60 * 1_000_000_000;
/// The IC's `PERMITTED_DRIFT_AT_VALIDATOR`: extra tolerance for client clocks (30 s).
pub const PERMITTED_DRIFT_NS: u64 = 30 * 1_000_000_000;

const DER_ED25519: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const DER_P256: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const DER_SECP256K1: &[u8] = &[
    0x30, 0x56, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x0a, 0x03, 0x42, 0x00,
];
/// AlgorithmIdentifier of canister signatures (OID 1.3.6.1.4.1.56387.1.2).
const DER_CANISTER_SIG_ALG: &[u8] = &[
    0x30, 0x0c, 0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xb8, 0x43, 0x01, 0x02,
];
/// Domain separator of canister signatures' tree path `["sig", H(seed), H(msg)]`.
const CANISTER_SIG_LABEL: &[u8] = b"sig";

/// Why a request is not authentic or not timely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// `ingress_expiry` is in the past.
    Expired,
    /// `ingress_expiry` is beyond `now + MAX_INGRESS_TTL + drift`.
    ExpiryTooFar,
    /// An anonymous request carries a key, signature or delegation, or a signed one lacks them.
    MissingOrExtraAuth,
    /// `sender` is not the self-authenticating id of `sender_pubkey`.
    SenderMismatch,
    /// The key is not one of the supported DER encodings.
    UnsupportedKey,
    /// A signature does not verify.
    BadSignature,
    /// A delegation signature does not verify.
    BadDelegation,
    /// A delegation has expired.
    DelegationExpired,
    /// A key appears twice in the chain.
    DelegationCycle,
    /// The addressed canister is outside a delegation's targets.
    TargetNotAllowed,
    /// A queries-only delegation was used for a call.
    QueriesOnly,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::Expired => "Specified ingress_expiry not within expected range: expired",
            AuthError::ExpiryTooFar => {
                "Specified ingress_expiry not within expected range: too far in the future"
            }
            AuthError::MissingOrExtraAuth => "missing pubkey or signature, or anonymous with auth",
            AuthError::SenderMismatch => "sender is not the principal of sender_pubkey",
            AuthError::UnsupportedKey => "unsupported public key type",
            AuthError::BadSignature => "invalid signature",
            AuthError::BadDelegation => "invalid delegation signature",
            AuthError::DelegationExpired => "delegation expired",
            AuthError::DelegationCycle => "delegation chain contains a cycle",
            AuthError::TargetNotAllowed => "canister not in delegation targets",
            AuthError::QueriesOnly => "delegation restricted to queries",
        })
    }
}

impl AuthError {
    /// The HTTP status the IC answers with: 400 for timing, 403 for authentication.
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::Expired | AuthError::ExpiryTooFar | AuthError::DelegationExpired => 400,
            _ => 403,
        }
    }
}

/// Checks `now ≤ expiry ≤ now + MAX_INGRESS_TTL + drift` (anonymous queries and read_state
/// may carry any expiry).
pub fn check_expiry(env: &Envelope, now_ns: u64) -> Result<(), AuthError> {
    let relaxed = env.sender().is_anonymous() && env.kind() != RequestKind::Call;
    if relaxed {
        return Ok(());
    }
    let expiry = env.ingress_expiry_ns();
    if expiry < now_ns {
        return Err(AuthError::Expired);
    }
    if expiry > now_ns.saturating_add(MAX_INGRESS_TTL_NS + PERMITTED_DRIFT_NS) {
        return Err(AuthError::ExpiryTooFar);
    }
    Ok(())
}

/// Authenticates `env` addressed to `target` (the canister of a call or query, the effective
/// canister of a read_state). `root_key_der` verifies canister signatures; it is parsed (a
/// G2 subgroup check, about 0.1 ms) only when a canister signature needs it.
pub fn authenticate(
    env: &Envelope,
    target: Option<Principal>,
    now_ns: u64,
    root_key_der: &[u8],
) -> Result<(), AuthError> {
    check_expiry(env, now_ns)?;
    let sender = env.sender();
    let (pubkey, sig) = match (&env.sender_pubkey, &env.sender_sig) {
        (None, None) if sender.is_anonymous() && env.sender_delegation.is_empty() => return Ok(()),
        (Some(_), Some(_)) if sender.is_anonymous() => return Err(AuthError::MissingOrExtraAuth),
        (Some(k), Some(s)) => (k, s),
        _ => return Err(AuthError::MissingOrExtraAuth),
    };
    if Principal::self_authenticating(pubkey) != sender {
        return Err(AuthError::SenderMismatch);
    }
    let mut seen: Vec<&[u8]> = alloc::vec![pubkey.as_slice()];
    let mut key: &[u8] = pubkey;
    for d in &env.sender_delegation {
        let mut msg = Vec::with_capacity(DS_DELEGATION.len() + 32);
        msg.extend_from_slice(DS_DELEGATION);
        msg.extend_from_slice(&d.hash);
        verify_signature(key, &msg, &d.signature, root_key_der).map_err(|e| match e {
            AuthError::UnsupportedKey => e,
            _ => AuthError::BadDelegation,
        })?;
        if d.expiration_ns < now_ns {
            return Err(AuthError::DelegationExpired);
        }
        if let (Some(targets), Some(t)) = (&d.targets, target) {
            if !targets.contains(&t) {
                return Err(AuthError::TargetNotAllowed);
            }
        }
        if d.targets.is_some() && target.is_none() {
            return Err(AuthError::TargetNotAllowed);
        }
        if d.permissions == Permissions::QueriesOnly && matches!(env.content, Content::Call(_)) {
            return Err(AuthError::QueriesOnly);
        }
        if seen.contains(&d.pubkey.as_slice()) {
            return Err(AuthError::DelegationCycle);
        }
        seen.push(&d.pubkey);
        key = &d.pubkey;
    }
    let mut msg = Vec::with_capacity(DS_REQUEST.len() + 32);
    msg.extend_from_slice(DS_REQUEST);
    msg.extend_from_slice(&env.request_id);
    verify_signature(key, &msg, sig, root_key_der)
}

/// Verifies `sig` on `msg` under the DER-encoded key `der`.
pub fn verify_signature(
    der: &[u8],
    msg: &[u8],
    sig: &[u8],
    root_key_der: &[u8],
) -> Result<(), AuthError> {
    if let Some(raw) = der.strip_prefix(DER_ED25519) {
        return verify_ed25519(raw, msg, sig);
    }
    if let Some(raw) = der.strip_prefix(DER_P256) {
        use p256::ecdsa::signature::Verifier;
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(raw)
            .map_err(|_| AuthError::UnsupportedKey)?;
        let s = p256::ecdsa::Signature::from_slice(sig).map_err(|_| AuthError::BadSignature)?;
        return vk.verify(msg, &s).map_err(|_| AuthError::BadSignature);
    }
    if let Some(raw) = der.strip_prefix(DER_SECP256K1) {
        use k256::ecdsa::signature::Verifier;
        let vk = k256::ecdsa::VerifyingKey::from_sec1_bytes(raw)
            .map_err(|_| AuthError::UnsupportedKey)?;
        let s = k256::ecdsa::Signature::from_slice(sig).map_err(|_| AuthError::BadSignature)?;
        return vk
            .verify(msg, &s.normalize_s())
            .map_err(|_| AuthError::BadSignature);
    }
    if let Some((canister, seed)) = canister_sig_key(der) {
        let root_key =
            bls::PublicKey::from_der(root_key_der).map_err(|_| AuthError::UnsupportedKey)?;
        return verify_canister_signature(&canister, seed, msg, sig, &root_key);
    }
    Err(AuthError::UnsupportedKey)
}

/// Ed25519 over the raw 32-byte key (also used for node signatures in tests).
pub fn verify_ed25519(raw: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), AuthError> {
    use ed25519_dalek::Verifier;
    let raw: &[u8; 32] = raw.try_into().map_err(|_| AuthError::UnsupportedKey)?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(raw).map_err(|_| AuthError::UnsupportedKey)?;
    let s = ed25519_dalek::Signature::from_slice(sig).map_err(|_| AuthError::BadSignature)?;
    vk.verify(msg, &s).map_err(|_| AuthError::BadSignature)
}

/// The DER SubjectPublicKeyInfo of a raw Ed25519 key.
pub fn ed25519_der(raw: &[u8; 32]) -> [u8; 44] {
    let mut der = [0u8; 44];
    der[..12].copy_from_slice(DER_ED25519);
    der[12..].copy_from_slice(raw);
    der
}

/// Splits a canister-signature key `SEQUENCE { alg, BIT STRING(0 ‖ len ‖ cid ‖ seed) }`.
fn canister_sig_key(der: &[u8]) -> Option<(Principal, &[u8])> {
    let body = der_take(der, 0x30)?;
    let rest = body.strip_prefix(DER_CANISTER_SIG_ALG)?;
    let bits = der_take(rest, 0x03)?;
    let (&unused, payload) = bits.split_first()?;
    if unused != 0 {
        return None;
    }
    let (&len, rest) = payload.split_first()?;
    let len = usize::from(len);
    if rest.len() < len {
        return None;
    }
    let canister = Principal::from_slice(&rest[..len]).ok()?;
    Some((canister, &rest[len..]))
}

/// The contents of a DER element with tag `tag` that spans all of `bytes`.
fn der_take(bytes: &[u8], tag: u8) -> Option<&[u8]> {
    let (&t, rest) = bytes.split_first()?;
    if t != tag {
        return None;
    }
    let (&l, rest) = rest.split_first()?;
    let (len, rest) = match l {
        0..=0x7f => (usize::from(l), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => {
            let hi = usize::from(*rest.first()?);
            let lo = usize::from(*rest.get(1)?);
            ((hi << 8) | lo, rest.get(2..)?)
        }
        _ => return None,
    };
    (rest.len() == len).then_some(rest)
}

/// A canister signature: `55799({certificate, tree})` where the certificate verifies for the
/// canister, its `/canister/<cid>/certified_data` is the tree's root, and the tree holds
/// `["sig", H(seed), H(msg)]`.
fn verify_canister_signature(
    canister: &Principal,
    seed: &[u8],
    msg: &[u8],
    sig: &[u8],
    root_key: &bls::PublicKey,
) -> Result<(), AuthError> {
    let value = cbor::decode(sig).map_err(|_| AuthError::BadSignature)?;
    let rec = Record::new(value.untagged()).map_err(|_| AuthError::BadSignature)?;
    let cert_bytes = rec
        .bytes("certificate")
        .map_err(|_| AuthError::BadSignature)?;
    let tree = rec.get("tree").ok_or(AuthError::BadSignature)?;
    let tree = HashTree::from_cbor(tree).map_err(|_| AuthError::BadSignature)?;
    let cert = certificate::verify(cert_bytes, root_key, Effective::Canister(*canister))
        .map_err(|_| AuthError::BadSignature)?;
    let certified = cert.tree.lookup(&[
        b"canister".as_slice(),
        canister.as_slice(),
        b"certified_data",
    ]);
    if certified != Lookup::Found(&tree.digest()) {
        return Err(AuthError::BadSignature);
    }
    let path = [CANISTER_SIG_LABEL, &sha256(seed), &sha256(msg)];
    match tree.lookup(&path) {
        Lookup::Found([]) => Ok(()),
        _ => Err(AuthError::BadSignature),
    }
}
