//! Request envelopes and contents (spec `requests.cddl`; reference §1.2), decoded into owned,
//! typed values with every bound checked.
//!
//! ```text
//! envelope = 55799?({ content, ? sender_pubkey: bytes, ? sender_delegation: [* signed-delegation],
//!                     ? sender_sig: bytes })
//! call / query content = { request_type, ? nonce, ingress_expiry, sender, canister_id,
//!                          method_name, arg, ? sender_info }
//! read_state content   = { request_type: "read_state", ? nonce, ingress_expiry, sender, paths }
//! ```
//! The request id is the representation-independent hash of the content map exactly as
//! received (every field present, unknown ones included), so it matches what the agent signed.

use super::cbor::{self, CborError, FieldError, Record, Value};
use super::request_id::{self, RequestId};
use crate::types::Principal;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Longest nonce, in bytes (IC: 32).
pub const NONCE_BYTES_MAX: usize = 32;
/// Most paths in one read_state request.
pub const READ_STATE_PATHS_MAX: usize = 1000;
/// Most labels in one read_state path.
pub const READ_STATE_PATH_LABELS_MAX: usize = 127;
/// Most delegations in one chain (IC `MAXIMUM_NUMBER_OF_DELEGATIONS`).
pub const DELEGATIONS_MAX: usize = 20;
/// Most targets in one delegation.
pub const DELEGATION_TARGETS_MAX: usize = 1000;

/// The three kinds of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Call,
    Query,
    ReadState,
}

/// The content of a call or query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallContent {
    pub nonce: Option<Vec<u8>>,
    pub ingress_expiry_ns: u64,
    pub sender: Principal,
    pub canister_id: Principal,
    pub method_name: String,
    pub arg: Vec<u8>,
}

/// The content of a read_state request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadStateContent {
    pub nonce: Option<Vec<u8>>,
    pub ingress_expiry_ns: u64,
    pub sender: Principal,
    pub paths: Vec<Vec<Vec<u8>>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Call(CallContent),
    Query(CallContent),
    ReadState(ReadStateContent),
}

/// What a delegation may be used for (`permissions`, spec 0.64.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permissions {
    All,
    QueriesOnly,
}

/// One link of a delegation chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedDelegation {
    pub pubkey: Vec<u8>,
    pub expiration_ns: u64,
    pub targets: Option<Vec<Principal>>,
    pub permissions: Permissions,
    pub signature: Vec<u8>,
    /// `hash_of_map(delegation)`, the signed payload after the domain separator.
    pub hash: [u8; 32],
}

/// A decoded request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub content: Content,
    pub sender_pubkey: Option<Vec<u8>>,
    pub sender_sig: Option<Vec<u8>>,
    pub sender_delegation: Vec<SignedDelegation>,
    pub request_id: RequestId,
}

/// Why a body is not a valid request envelope (all are HTTP 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    Cbor(CborError),
    Field(FieldError),
    /// `request_type` is not the one the endpoint serves.
    WrongRequestType,
    BadPrincipal,
    NonceTooLong,
    TooManyPaths,
    PathTooLong,
    TooManyDelegations,
    TooManyTargets,
    BadPermissions,
    /// The content has no representation-independent hash (a float, a non-text key).
    Unhashable,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::Cbor(e) => write!(f, "could not parse body as CBOR: {e}"),
            EnvelopeError::Field(e) => write!(f, "invalid request: {e}"),
            EnvelopeError::WrongRequestType => f.write_str("request_type does not match endpoint"),
            EnvelopeError::BadPrincipal => f.write_str("invalid principal"),
            EnvelopeError::NonceTooLong => f.write_str("nonce longer than 32 bytes"),
            EnvelopeError::TooManyPaths => f.write_str("too many read_state paths"),
            EnvelopeError::PathTooLong => f.write_str("read_state path has too many labels"),
            EnvelopeError::TooManyDelegations => f.write_str("delegation chain too long"),
            EnvelopeError::TooManyTargets => f.write_str("delegation has too many targets"),
            EnvelopeError::BadPermissions => f.write_str("invalid delegation permissions"),
            EnvelopeError::Unhashable => f.write_str("content cannot be hashed"),
        }
    }
}

impl From<CborError> for EnvelopeError {
    fn from(e: CborError) -> Self {
        EnvelopeError::Cbor(e)
    }
}

impl From<FieldError> for EnvelopeError {
    fn from(e: FieldError) -> Self {
        EnvelopeError::Field(e)
    }
}

fn principal(bytes: &[u8]) -> Result<Principal, EnvelopeError> {
    Principal::from_slice(bytes).map_err(|_| EnvelopeError::BadPrincipal)
}

impl Envelope {
    /// Decodes a request body that must be of `kind`.
    pub fn decode(body: &[u8], kind: RequestKind) -> Result<Envelope, EnvelopeError> {
        let value = cbor::decode(body)?;
        let env = Record::new(value.untagged())?;
        let content_value = env.get("content").ok_or(FieldError::Missing("content"))?;
        let content = Record::new(content_value.untagged())?;
        let request_id =
            request_id::request_id(content_value).map_err(|_| EnvelopeError::Unhashable)?;
        let content = match (content.text("request_type")?, kind) {
            ("call", RequestKind::Call) => Content::Call(call_content(&content)?),
            ("query", RequestKind::Query) => Content::Query(call_content(&content)?),
            ("read_state", RequestKind::ReadState) => {
                Content::ReadState(read_state_content(&content)?)
            }
            _ => return Err(EnvelopeError::WrongRequestType),
        };
        let sender_delegation = match env.get("sender_delegation") {
            None => Vec::new(),
            Some(v) => delegations(v)?,
        };
        Ok(Envelope {
            content,
            sender_pubkey: env.opt_bytes("sender_pubkey")?.map(<[u8]>::to_vec),
            sender_sig: env.opt_bytes("sender_sig")?.map(<[u8]>::to_vec),
            sender_delegation,
            request_id,
        })
    }

    pub fn sender(&self) -> Principal {
        match &self.content {
            Content::Call(c) | Content::Query(c) => c.sender,
            Content::ReadState(r) => r.sender,
        }
    }

    pub fn ingress_expiry_ns(&self) -> u64 {
        match &self.content {
            Content::Call(c) | Content::Query(c) => c.ingress_expiry_ns,
            Content::ReadState(r) => r.ingress_expiry_ns,
        }
    }

    pub fn kind(&self) -> RequestKind {
        match &self.content {
            Content::Call(_) => RequestKind::Call,
            Content::Query(_) => RequestKind::Query,
            Content::ReadState(_) => RequestKind::ReadState,
        }
    }
}

fn nonce(rec: &Record<'_, '_>) -> Result<Option<Vec<u8>>, EnvelopeError> {
    match rec.opt_bytes("nonce")? {
        Some(n) if n.len() > NONCE_BYTES_MAX => Err(EnvelopeError::NonceTooLong),
        n => Ok(n.map(<[u8]>::to_vec)),
    }
}

fn call_content(rec: &Record<'_, '_>) -> Result<CallContent, EnvelopeError> {
    Ok(CallContent {
        nonce: nonce(rec)?,
        ingress_expiry_ns: rec.u64("ingress_expiry")?,
        sender: principal(rec.bytes("sender")?)?,
        canister_id: principal(rec.bytes("canister_id")?)?,
        method_name: rec.text("method_name")?.to_string(),
        arg: rec.bytes("arg")?.to_vec(),
    })
}

fn read_state_content(rec: &Record<'_, '_>) -> Result<ReadStateContent, EnvelopeError> {
    let raw = rec.get("paths").ok_or(FieldError::Missing("paths"))?;
    let raw = raw.as_array().ok_or(FieldError::WrongType("paths"))?;
    if raw.len() > READ_STATE_PATHS_MAX {
        return Err(EnvelopeError::TooManyPaths);
    }
    let mut paths = Vec::with_capacity(raw.len());
    for p in raw {
        let labels = p.as_array().ok_or(FieldError::WrongType("paths"))?;
        if labels.len() > READ_STATE_PATH_LABELS_MAX {
            return Err(EnvelopeError::PathTooLong);
        }
        let path = labels
            .iter()
            .map(|l| l.as_bytes().map(<[u8]>::to_vec))
            .collect::<Option<Vec<_>>>()
            .ok_or(FieldError::WrongType("paths"))?;
        paths.push(path);
    }
    Ok(ReadStateContent {
        nonce: nonce(rec)?,
        ingress_expiry_ns: rec.u64("ingress_expiry")?,
        sender: principal(rec.bytes("sender")?)?,
        paths,
    })
}

fn delegations(v: &Value<'_>) -> Result<Vec<SignedDelegation>, EnvelopeError> {
    let items = v
        .as_array()
        .ok_or(FieldError::WrongType("sender_delegation"))?;
    if items.len() > DELEGATIONS_MAX {
        return Err(EnvelopeError::TooManyDelegations);
    }
    items.iter().map(signed_delegation).collect()
}

fn signed_delegation(v: &Value<'_>) -> Result<SignedDelegation, EnvelopeError> {
    let signed = Record::new(v.untagged())?;
    let dv = signed
        .get("delegation")
        .ok_or(FieldError::Missing("delegation"))?;
    let d = Record::new(dv.untagged())?;
    let hash = request_id::hash_value(dv).map_err(|_| EnvelopeError::Unhashable)?;
    let targets = match d.get("targets") {
        None => None,
        Some(t) => {
            let t = t.as_array().ok_or(FieldError::WrongType("targets"))?;
            if t.len() > DELEGATION_TARGETS_MAX {
                return Err(EnvelopeError::TooManyTargets);
            }
            let ids = t
                .iter()
                .map(|p| p.as_bytes().ok_or(EnvelopeError::BadPrincipal));
            Some(ids.map(|b| principal(b?)).collect::<Result<Vec<_>, _>>()?)
        }
    };
    let permissions = match d.get("permissions").map(|p| p.as_text()) {
        None => Permissions::All,
        Some(Some("all")) => Permissions::All,
        Some(Some("queries")) => Permissions::QueriesOnly,
        Some(_) => return Err(EnvelopeError::BadPermissions),
    };
    Ok(SignedDelegation {
        pubkey: d.bytes("pubkey")?.to_vec(),
        expiration_ns: d.u64("expiration")?,
        targets,
        permissions,
        signature: signed.bytes("signature")?.to_vec(),
        hash,
    })
}
