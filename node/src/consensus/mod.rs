//! IC consensus (Camenisch et al., "Internet Computer Consensus", PODC 2022; reference §4):
//! random beacon, block-maker ranking, block making with rank delays, notarization and
//! finalization by `n−f` multi-signature shares, catch-up packages and purging.
//!
//! Invariants this module keeps, and the simulator checks:
//! - an honest node sends a notarization share at height `h` only while it knows no
//!   notarization at `h`, and never for two blocks of one rank or a block of higher rank
//!   than one it already supported;
//! - it sends a finalization share for `B` at `h` only if `B` is notarized and `B` is the
//!   only block it supported at `h` — so a finalized block has no notarized sibling, and two
//!   honest nodes never finalize different blocks at one height;
//! - every artifact is validated before it is used; an aggregate is verified once, and
//!   shares are verified together (one aggregate or combined signature) and one by one only
//!   when that fails;
//! - everything below the latest catch-up package is purged.
//!
//! The layer is sans-IO: artifacts and the time come in, artifacts to send and finalized
//! blocks go out (see [`crate::replica`]).

pub mod artifacts;
pub mod certification;
pub mod ranking;

mod engine;

pub use artifacts::*;
pub use engine::{
    Consensus, ConsensusStats, FinalizedBlock, Outgoing, CATCH_UP_BATCH_HEIGHTS, HEIGHTS_AHEAD_MAX,
};
pub use ranking::{ConsensusParams, Ranking};

#[cfg(feature = "sim")]
pub use engine::Fault;

use crate::p2p::{ArtifactId, PoolArtifact};

impl PoolArtifact for Artifact {
    fn id(&self) -> ArtifactId {
        Artifact::id(self)
    }
    fn size_bytes(&self) -> usize {
        Artifact::size_bytes(self)
    }
}

/// Largest encoded artifact a decoder accepts.
pub const ARTIFACT_BYTES_MAX: usize = crate::p2p::WIRE_MESSAGE_BYTES_MAX;

/// Why bytes are not an artifact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    TooLarge,
    Malformed,
    Version,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            DecodeError::TooLarge => "artifact too large",
            DecodeError::Malformed => "malformed artifact",
            DecodeError::Version => "unknown block version",
        })
    }
}

impl Artifact {
    pub fn encode(&self) -> alloc::vec::Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes an artifact from untrusted bytes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Artifact, DecodeError> {
        if bytes.len() > ARTIFACT_BYTES_MAX {
            return Err(DecodeError::TooLarge);
        }
        let a: Artifact = postcard::from_bytes(bytes).map_err(|_| DecodeError::Malformed)?;
        let version_ok = match &a {
            Artifact::Block(p) => p.block.version == BLOCK_VERSION,
            Artifact::CatchUpPackage(c) => c.content.block.version == BLOCK_VERSION,
            _ => true,
        };
        if !version_ok {
            return Err(DecodeError::Version);
        }
        Ok(a)
    }
}
