//! P2P: the artifact pool, gossip (advert → request → deliver) and authenticated, encrypted
//! node-to-node channels.
//!
//! Guarantees: every buffer is bounded by a named constant (per peer where a peer controls
//! it); decoders never panic on any input; a peer can only be heard through a channel whose
//! Noise static key is signed by that peer's registered Ed25519 node key.
//!
//! Layering: p2p does not know what an artifact *means*. It moves [`ArtifactId`]s and opaque
//! artifact bytes; the consensus layer decodes and validates them.

pub mod channel;
pub mod gossip;
pub mod pool;

pub use pool::{ArtifactPool, PoolArtifact, PoolError};

use crate::types::CryptoHash;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// Version of the wire message format.
pub const WIRE_VERSION: u8 = 1;
/// Largest encoded wire message (a block with a full 4 MiB payload, plus framing slack).
pub const WIRE_MESSAGE_BYTES_MAX: usize = 5 * 1024 * 1024;
/// Most ids in one advert or request message.
pub const IDS_PER_MESSAGE_MAX: usize = 512;
/// Most artifacts in one delivery message.
pub const ARTIFACTS_PER_MESSAGE_MAX: usize = 64;

/// Names one artifact for gossip. Ordered by kind, then height, so a pool keyed by ids keeps
/// each kind's artifacts together and by height (range queries and purging are cheap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ArtifactId {
    pub kind: u8,
    pub height: u64,
    pub key: CryptoHash,
    /// The signer of a share, or `u32::MAX`.
    pub signer: u32,
}

impl ArtifactId {
    /// The smallest id of `kind` at `height` (for range queries).
    pub fn first(kind: u8, height: u64) -> ArtifactId {
        ArtifactId {
            kind,
            height,
            key: [0; 32],
            signer: 0,
        }
    }

    /// The largest id of `kind` at `height`.
    pub fn last(kind: u8, height: u64) -> ArtifactId {
        ArtifactId {
            kind,
            height,
            key: [0xff; 32],
            signer: u32::MAX,
        }
    }
}

/// A peer's progress, sent periodically so that others can re-advertise what it lacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub finalized_height: u64,
    pub cup_height: u64,
}

/// What nodes say to each other inside a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireBody {
    Status(PeerStatus),
    Adverts(Vec<ArtifactId>),
    Requests(Vec<ArtifactId>),
    /// Encoded artifacts (the consensus layer's encoding).
    Artifacts(Vec<Vec<u8>>),
    /// A message of the layers above consensus (certification shares, ingress gossip),
    /// opaque here: see `replica::stack`.
    Upper(Vec<u8>),
}

/// A versioned wire message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMessage {
    pub version: u8,
    pub body: WireBody,
}

/// Why bytes are not a wire message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    TooLarge,
    Malformed,
    Version,
    TooManyItems,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireError::TooLarge => "wire message too large",
            WireError::Malformed => "malformed wire message",
            WireError::Version => "unknown wire message version",
            WireError::TooManyItems => "too many items in wire message",
        })
    }
}

impl WireMessage {
    pub fn new(body: WireBody) -> WireMessage {
        WireMessage {
            version: WIRE_VERSION,
            body,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes and checks limits; never panics.
    pub fn decode(bytes: &[u8]) -> Result<WireMessage, WireError> {
        if bytes.len() > WIRE_MESSAGE_BYTES_MAX {
            return Err(WireError::TooLarge);
        }
        let msg: WireMessage = postcard::from_bytes(bytes).map_err(|_| WireError::Malformed)?;
        if msg.version != WIRE_VERSION {
            return Err(WireError::Version);
        }
        let items = match &msg.body {
            WireBody::Status(_) | WireBody::Upper(_) => 0,
            WireBody::Adverts(ids) | WireBody::Requests(ids) => ids.len(),
            WireBody::Artifacts(a) => a.len() * (IDS_PER_MESSAGE_MAX / ARTIFACTS_PER_MESSAGE_MAX),
        };
        if items > IDS_PER_MESSAGE_MAX {
            return Err(WireError::TooManyItems);
        }
        Ok(msg)
    }
}
