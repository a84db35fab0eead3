//! The IC's basic identifiers and quantities, shared by every layer.
//!
//! Node and subnet ids are principals (self-authenticating: `SHA-224(DER key) ‖ 0x02`);
//! heights, ranks and times are plain newtypes so that they cannot be mixed up.

mod bytes;
mod principal;

pub use bytes::FixedBytes;
pub use principal::{Principal, PrincipalError};

use core::fmt;
use serde::{Deserialize, Serialize};

/// A node's id: the self-authenticating principal of its Ed25519 node key (DER).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub Principal);

/// A subnet's id: the self-authenticating principal of its threshold public key (DER).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubnetId(pub Principal);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0.to_text())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_text())
    }
}

impl fmt::Debug for SubnetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubnetId({})", self.0.to_text())
    }
}

impl fmt::Display for SubnetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_text())
    }
}

/// A node's position in its subnet's membership list (0-based). Wire artifacts name signers by
/// index: it is short, and the registry maps it back to a [`NodeId`].
pub type NodeIndex = u32;

/// A block height. Genesis (or the catch-up package the node starts from) is the lowest.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Height(pub u64);

impl Height {
    pub const ZERO: Height = Height(0);

    pub fn next(self) -> Height {
        Height(self.0.saturating_add(1))
    }

    /// The height below, or zero at zero.
    pub fn prev(self) -> Height {
        Height(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A block maker's rank at one height (0 is the leader). Ranks come from the random beacon.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Rank(pub u32);

/// A point in time, nanoseconds since the Unix epoch (the IC's time unit).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Time(pub u64);

/// Nanoseconds per millisecond.
pub const NANOS_PER_MILLI: u64 = 1_000_000;

impl Time {
    pub const ZERO: Time = Time(0);

    pub fn from_millis(ms: u64) -> Time {
        Time(ms.saturating_mul(NANOS_PER_MILLI))
    }

    pub fn as_millis(self) -> u64 {
        self.0 / NANOS_PER_MILLI
    }

    pub fn plus_millis(self, ms: u64) -> Time {
        Time(self.0.saturating_add(ms.saturating_mul(NANOS_PER_MILLI)))
    }

    pub fn saturating_sub(self, other: Time) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

/// A SHA-256 digest naming a block, an artifact or a state.
pub type CryptoHash = [u8; 32];

/// SHA-256 of `domain ‖ data`, where `domain` is a length-prefixed ASCII separator as the IC
/// uses them (`\x0Dic-state-root` and friends).
pub fn domain_hash(domain: &str, data: &[u8]) -> CryptoHash {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // Separators are short ASCII names; a longer one would be a programming error.
    debug_assert!(domain.len() < 256);
    h.update([domain.len() as u8]);
    h.update(domain.as_bytes());
    h.update(data);
    h.finalize().into()
}
