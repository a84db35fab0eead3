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
//! Under the UEFI kernel (`kernel.efi` booted by OVMF's `-kernel`), QEMU cannot pass an
//! initrd, so the file comes through QEMU's fw_cfg device as `opt/cairn/node.cfg`
//! (`-fw_cfg name=opt/cairn/node.cfg,file=node-<i>.cfg`): `kernel/src/efi.rs` reads it before
//! ExitBootServices, finding it with [`fw_cfg_find`], and hands it on as a boot module.
//!
//! Parsing checks every field's bounds and returns a typed [`ConfigError`]; it never panics on
//! bad bytes. Only the node's own secrets are in its file.

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;
use node::attest::binding::{report_data_for_keys, BindingError};
use node::consensus::ConsensusParams;
use node::crypto::dealer::{NodeRecord, NodeSecrets, SubnetRecord};
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

/// Labels under which a node's committee keys (BLS12-381, G2, compressed) are bound into
/// its attestation report's report_data, beside its Ed25519 node signing key
/// (`node::attest::binding`).
pub const REPORT_KEY_MULTISIG: &str = "committee_multisig_bls12381";
pub const REPORT_KEY_BEACON_SHARE: &str = "committee_beacon_share_bls12381";
pub const REPORT_KEY_SUBNET_SHARE: &str = "committee_subnet_share_bls12381";

/// The report_data a node with these registered public keys puts into its SEV-SNP report:
/// its Ed25519 signing key and its three committee keys, labelled. The kernel (from its own
/// record entry, which the replica checked against its secrets) and genesis (for the
/// registry that admission checks against) both compute it here.
pub fn report_data_for_node(node: &NodeRecord) -> Result<[u8; 64], BindingError> {
    report_data_for_keys(&node.node_key.0, &report_keys(node))
}

/// The labelled committee keys of [`report_data_for_node`], in a fixed order.
pub fn report_keys(node: &NodeRecord) -> [(&'static str, &[u8]); 3] {
    [
        (REPORT_KEY_MULTISIG, &node.multisig_key.0[..]),
        (REPORT_KEY_BEACON_SHARE, &node.beacon_key_share.0[..]),
        (REPORT_KEY_SUBNET_SHARE, &node.subnet_key_share.0[..]),
    ]
}

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

/// The fw_cfg file name of a node's configuration (QEMU reserves the `opt/` prefix for
/// user files; `-fw_cfg name=…,file=…`).
pub const FW_CFG_CONFIG_NAME: &str = "opt/cairn/node.cfg";
/// fw_cfg selector of the 4-byte signature, `QEMU` on every QEMU machine
/// (QEMU docs/specs/fw_cfg.rst).
pub const FW_CFG_SIGNATURE_SELECTOR: u16 = 0x0000;
pub const FW_CFG_SIGNATURE: &[u8; 4] = b"QEMU";
/// fw_cfg selector of the file directory:
///
/// ```text
/// count u32 BE ‖ count × { size u32 BE ‖ select u16 BE ‖ reserved u16 ‖ name [56] (NUL-padded) }
/// ```
pub const FW_CFG_FILE_DIR_SELECTOR: u16 = 0x0019;
/// Bytes of one directory entry and of its name field.
pub const FW_CFG_FILE_ENTRY_BYTES: usize = 64;
pub const FW_CFG_FILE_NAME_BYTES: usize = 56;
/// Most directory entries looked at (QEMU's machines have a few dozen).
pub const FW_CFG_FILES_MAX: u32 = 4096;

/// A file in the fw_cfg directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwCfgFile {
    /// The selector to read it through.
    pub select: u16,
    /// Its size in bytes, 1..=[`CONFIG_MAX_BYTES`].
    pub size: u32,
}

/// Why no configuration came through fw_cfg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwCfgError {
    /// The fw_cfg signature is not `QEMU` (no fw_cfg device: not QEMU).
    NoDevice,
    /// The directory claims more entries than [`FW_CFG_FILES_MAX`].
    TooManyFiles(u32),
    /// No file named [`FW_CFG_CONFIG_NAME`] (the VM was started without one).
    NoFile,
    /// The file is empty.
    Empty,
    /// The file is larger than [`CONFIG_MAX_BYTES`].
    TooLarge(u32),
    /// The firmware had no pages below 4 GiB for it.
    NoMemory,
    /// The boot information buffer has no room for its module tag.
    NoRoom,
}

impl fmt::Display for FwCfgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FwCfgError::NoDevice => f.write_str("no QEMU fw_cfg device (signature)"),
            FwCfgError::TooManyFiles(n) => {
                write!(f, "fw_cfg lists {n} files, more than {FW_CFG_FILES_MAX}")
            }
            FwCfgError::NoFile => write!(f, "fw_cfg has no file {FW_CFG_CONFIG_NAME}"),
            FwCfgError::Empty => write!(f, "fw_cfg file {FW_CFG_CONFIG_NAME} is empty"),
            FwCfgError::TooLarge(n) => write!(
                f,
                "fw_cfg file {FW_CFG_CONFIG_NAME} has {n} bytes, more than {CONFIG_MAX_BYTES}"
            ),
            FwCfgError::NoMemory => f.write_str("no memory below 4 GiB for the fw_cfg file"),
            FwCfgError::NoRoom => f.write_str("no room for its boot module tag"),
        }
    }
}

/// Finds `name` in the fw_cfg file directory, read through `read` (which fills its buffer
/// with the next bytes of the selected item, the directory; past its end fw_cfg yields
/// zeros). Reads at most the count and [`FW_CFG_FILES_MAX`] entries; the file found must
/// hold 1..=[`CONFIG_MAX_BYTES`] bytes. Never panics on what the host put there.
pub fn fw_cfg_find(read: &mut dyn FnMut(&mut [u8]), name: &str) -> Result<FwCfgFile, FwCfgError> {
    let mut count = [0u8; 4];
    read(&mut count);
    let count = u32::from_be_bytes(count);
    if count > FW_CFG_FILES_MAX {
        return Err(FwCfgError::TooManyFiles(count));
    }
    let want = name.as_bytes();
    for _ in 0..count {
        let mut entry = [0u8; FW_CFG_FILE_ENTRY_BYTES];
        read(&mut entry);
        let (head, field) = entry.split_at(FW_CFG_FILE_ENTRY_BYTES - FW_CFG_FILE_NAME_BYTES);
        let len = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        if &field[..len] != want {
            continue;
        }
        let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let select = u16::from_be_bytes([head[4], head[5]]);
        return match size {
            0 => Err(FwCfgError::Empty),
            n if n as usize > CONFIG_MAX_BYTES => Err(FwCfgError::TooLarge(n)),
            _ => Ok(FwCfgFile { select, size }),
        };
    }
    Err(FwCfgError::NoFile)
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

    /// This node's report_data ([`report_data_for_node`] of its record entry); `None` when
    /// the index is outside the record (a decoded configuration never is).
    pub fn report_data(&self) -> Option<Result<[u8; 64], BindingError>> {
        let node = self.record.nodes.get(self.index as usize)?;
        Some(report_data_for_node(node))
    }

    /// The length of the configuration that a region of a disk (the `cairn-config` partition)
    /// starts with, read from its header (`head`: at least the first 14 bytes): `None` when
    /// the region does not start with [`CONFIG_MAGIC`] (a zeroed partition holds no
    /// configuration), [`ConfigError::TooLarge`] when the header claims more than
    /// [`CONFIG_MAX_BYTES`] in all. [`NodeConfig::decode`] then checks those bytes.
    #[allow(
        dead_code,
        reason = "the kernel reads disks; the host only writes them"
    )]
    pub fn stored_len(head: &[u8]) -> Option<Result<usize, ConfigError>> {
        if !head.starts_with(CONFIG_MAGIC) {
            return None;
        }
        let Some(len) = head.get(10..HEADER_BYTES) else {
            return Some(Err(ConfigError::TooShort));
        };
        let body = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let total = body.saturating_add(HEADER_BYTES + CHECKSUM_BYTES);
        Some(if total > CONFIG_MAX_BYTES {
            Err(ConfigError::TooLarge)
        } else {
            Ok(total)
        })
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
