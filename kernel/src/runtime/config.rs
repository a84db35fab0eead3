//! A node's configuration file (`node-<i>.cfg`): which node of which subnet it is, where its
//! peers are, and its secrets. Written on the host by `image::genesis` (which includes this
//! very file with `#[path]`, so writer and reader share one definition) and read by the
//! kernel's runtime from a boot module (`-initrd node-<i>.cfg` under PVH).
//!
//! Layout (version 1):
//!
//! ```text
//! magic "CAIRNCFG" (8) ‖ version u16 LE ‖ body length u32 LE ‖ body (postcard NodeConfig)
//!   ‖ SHA-256 of "cairn-node-config" ‖ everything before (32, see node::types::domain_hash)
//! ```
//!
//! Parsing checks every field's bounds and returns a typed [`ConfigError`]; it never panics on
//! bad bytes. Only the node's own secrets are in its file.

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;
use node::consensus::ConsensusParams;
use node::crypto::dealer::{NodeSecrets, SubnetRecord};
use serde::{Deserialize, Serialize};

/// The first bytes of every configuration file.
pub const CONFIG_MAGIC: &[u8; 8] = b"CAIRNCFG";
/// The format version this code reads and writes.
pub const CONFIG_VERSION: u16 = 1;
/// The largest configuration file accepted (a 64-node record is a few tens of KiB).
pub const CONFIG_MAX_BYTES: usize = 1024 * 1024;
/// Domain separator of the trailing checksum.
pub const CONFIG_CHECKSUM_DOMAIN: &str = "cairn-node-config";
/// The TCP port of the peer-to-peer streams.
pub const P2P_PORT: u16 = 4100;
/// The TCP port of the HTTP API.
pub const HTTP_PORT: u16 = 8080;
const HEADER_BYTES: usize = 8 + 2 + 4;
const CHECKSUM_BYTES: usize = 32;

/// One node's configuration.
#[derive(Clone, Serialize, Deserialize)]
pub struct NodeConfig {
    /// This node's index in the subnet record (its secrets' index).
    pub index: u32,
    /// IPv4 address of every node, in record order (this node's included).
    pub ips: Vec<[u8; 4]>,
    /// Prefix length of the testnet segment (e.g. 24).
    pub prefix_len: u8,
    pub record: SubnetRecord,
    pub secrets: NodeSecrets,
    pub params: ConsensusParams,
}

/// Why a configuration file was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    TooShort,
    TooLarge,
    BadMagic,
    UnsupportedVersion(u16),
    LengthMismatch,
    BadChecksum,
    Decode,
    /// The address list does not have one entry per node of the record.
    AddressCount,
    /// The index is out of range or disagrees with the secrets.
    Index,
    PrefixLength,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::TooShort => f.write_str("shorter than header and checksum"),
            ConfigError::TooLarge => write!(f, "larger than {CONFIG_MAX_BYTES} bytes"),
            ConfigError::BadMagic => f.write_str("not a cairn node configuration (magic)"),
            ConfigError::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
            ConfigError::LengthMismatch => f.write_str("body length does not match the file"),
            ConfigError::BadChecksum => f.write_str("checksum mismatch"),
            ConfigError::Decode => f.write_str("body does not decode"),
            ConfigError::AddressCount => f.write_str("address list does not match the record"),
            ConfigError::Index => f.write_str("node index out of range or not the secrets'"),
            ConfigError::PrefixLength => f.write_str("prefix length above 32"),
        }
    }
}

impl NodeConfig {
    /// The file bytes (written by the host's `image::genesis`; the kernel only reads).
    #[allow(dead_code, reason = "only the host (image::genesis) writes configs")]
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data into a growable buffer does not fail.
        let body = postcard::to_allocvec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_BYTES + body.len() + CHECKSUM_BYTES);
        out.extend_from_slice(CONFIG_MAGIC);
        out.extend_from_slice(&CONFIG_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let sum = node::types::domain_hash(CONFIG_CHECKSUM_DOMAIN, &out);
        out.extend_from_slice(&sum);
        out
    }

    /// Parses and checks a file.
    pub fn decode(bytes: &[u8]) -> Result<NodeConfig, ConfigError> {
        if bytes.len() > CONFIG_MAX_BYTES {
            return Err(ConfigError::TooLarge);
        }
        if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
            return Err(ConfigError::TooShort);
        }
        let (head, sum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        if !head.starts_with(CONFIG_MAGIC) {
            return Err(ConfigError::BadMagic);
        }
        let version = u16::from_le_bytes([head[8], head[9]]);
        if version != CONFIG_VERSION {
            return Err(ConfigError::UnsupportedVersion(version));
        }
        let len = u32::from_le_bytes([head[10], head[11], head[12], head[13]]) as usize;
        if head.len() - HEADER_BYTES != len {
            return Err(ConfigError::LengthMismatch);
        }
        if node::types::domain_hash(CONFIG_CHECKSUM_DOMAIN, head) != sum {
            return Err(ConfigError::BadChecksum);
        }
        let config: NodeConfig =
            postcard::from_bytes(&head[HEADER_BYTES..]).map_err(|_| ConfigError::Decode)?;
        if config.ips.len() != config.record.nodes.len() {
            return Err(ConfigError::AddressCount);
        }
        if config.index as usize >= config.ips.len() || config.index != config.secrets.index {
            return Err(ConfigError::Index);
        }
        if config.prefix_len > 32 {
            return Err(ConfigError::PrefixLength);
        }
        Ok(config)
    }
}
