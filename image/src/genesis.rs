//! Genesis of a testnet subnet: the subnet record and each node's secrets from a seed
//! (`node::crypto::dealer`), node addresses on the testnet segment (`10.0.0.1..=N`), and one
//! configuration file per node (`node-<i>.cfg`, format in `kernel/src/runtime/config.rs`,
//! shared with the kernel through `#[path]`). A node's secrets are written only to its own
//! file.

#[path = "../../kernel/src/runtime/config.rs"]
pub mod config;

use config::NodeConfig;
use node::consensus::ConsensusParams;
use node::crypto::dealer::{deal_subnet, RecordError, SubnetRecord};
use node::types::Time;
use std::fmt;
use std::path::{Path, PathBuf};

/// The testnet segment's first three octets; node `i` is `.i+1`.
pub const TESTNET_PREFIX: [u8; 3] = [10, 0, 0];
/// The segment's prefix length.
pub const TESTNET_PREFIX_LEN: u8 = 24;
/// Most nodes a testnet segment numbers (leaves room for host-side addresses).
pub const TESTNET_NODES_MAX: usize = 64;

/// Why genesis failed.
#[derive(Debug)]
pub enum GenesisError {
    Nodes(usize),
    Record(RecordError),
    Io(PathBuf, std::io::Error),
}

impl fmt::Display for GenesisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenesisError::Nodes(n) => write!(f, "{n} nodes: expected 1..={TESTNET_NODES_MAX}"),
            GenesisError::Record(e) => write!(f, "subnet record: {e}"),
            GenesisError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for GenesisError {}

/// The address of node `i` on the testnet segment.
pub fn node_ip(i: usize) -> [u8; 4] {
    [
        TESTNET_PREFIX[0],
        TESTNET_PREFIX[1],
        TESTNET_PREFIX[2],
        (i + 1) as u8,
    ]
}

/// A dealt subnet: the public record and every node's configuration.
pub struct Genesis {
    pub record: SubnetRecord,
    pub nodes: Vec<NodeConfig>,
}

impl Genesis {
    /// Deals `n` nodes from `seed` with genesis time `genesis_time_ns` (Unix ns).
    pub fn new(
        seed: &[u8; 32],
        n: usize,
        genesis_time_ns: u64,
        params: ConsensusParams,
    ) -> Result<Genesis, GenesisError> {
        if n == 0 || n > TESTNET_NODES_MAX {
            return Err(GenesisError::Nodes(n));
        }
        let (record, secrets) =
            deal_subnet(seed, n, Time(genesis_time_ns)).map_err(GenesisError::Record)?;
        let ips: Vec<[u8; 4]> = (0..n).map(node_ip).collect();
        let nodes = secrets
            .into_iter()
            .map(|s| NodeConfig {
                index: s.index,
                ips: ips.clone(),
                prefix_len: TESTNET_PREFIX_LEN,
                record: record.clone(),
                secrets: s,
                params,
            })
            .collect();
        Ok(Genesis { record, nodes })
    }

    /// DER of the subnet (root) public key, as `/api/v2/status` serves it.
    pub fn root_key_der(&self) -> Result<Vec<u8>, GenesisError> {
        let keys = node::crypto::dealer::SubnetKeys::from_record(&self.record)
            .map_err(GenesisError::Record)?;
        Ok(keys.subnet.group_key.to_der().to_vec())
    }

    /// Writes `dir/node-<i>.cfg` for every node; returns the paths in node order.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, GenesisError> {
        std::fs::create_dir_all(dir).map_err(|e| GenesisError::Io(dir.to_path_buf(), e))?;
        let mut paths = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let path = dir.join(format!("node-{i}.cfg"));
            std::fs::write(&path, node.encode()).map_err(|e| GenesisError::Io(path.clone(), e))?;
            paths.push(path);
        }
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::config::ConfigError;
    use super::*;

    #[test]
    fn configs_round_trip_and_hold_only_their_own_secrets() {
        let g = Genesis::new(&[7; 32], 4, 1, ConsensusParams::FAST).unwrap();
        for (i, node) in g.nodes.iter().enumerate() {
            let bytes = node.encode();
            let back = NodeConfig::decode(&bytes).unwrap();
            assert_eq!(back.index as usize, i);
            assert_eq!(back.ips[i], node_ip(i));
            assert_eq!(back.record, g.record);
            assert_eq!(back.secrets.node_seed, node.secrets.node_seed);
            for (j, other) in g.nodes.iter().enumerate() {
                if j != i {
                    let secret = &other.secrets.subnet_share_secret.0[..];
                    assert!(!bytes.windows(secret.len()).any(|w| w == secret));
                }
            }
        }
        assert_eq!(g.root_key_der().unwrap().len(), 133);
    }

    #[test]
    fn bad_files_are_typed_errors() {
        let g = Genesis::new(&[1; 32], 1, 1, ConsensusParams::FAST).unwrap();
        let good = g.nodes[0].encode();
        assert_eq!(NodeConfig::decode(&[]).err(), Some(ConfigError::TooShort));
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert_eq!(NodeConfig::decode(&bad).err(), Some(ConfigError::BadMagic));
        let mut bad = good.clone();
        let last = bad.len() - 40;
        bad[last] ^= 1;
        assert_eq!(
            NodeConfig::decode(&bad).err(),
            Some(ConfigError::BadChecksum)
        );
        let mut bad = good.clone();
        bad[8] = 9;
        assert_eq!(
            NodeConfig::decode(&bad).err(),
            Some(ConfigError::UnsupportedVersion(9))
        );
        for cut in 0..good.len() {
            assert!(NodeConfig::decode(&good[..cut]).is_err());
        }
    }
}
