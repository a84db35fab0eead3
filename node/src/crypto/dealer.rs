//! The genesis dealer: every key of a new subnet from one seed, deterministically.
//!
//! Used by `image` (to write each node's configuration) and by the simulator. The dealer knows
//! every secret, so it is for genesis only; a later issue replaces it with the IC's
//! non-interactive DKG (reference §4.3). What it deals, per node `i` of `n` (`f = ⌊(n−1)/3⌋`):
//!
//! | key | scheme | used for |
//! |---|---|---|
//! | node key | Ed25519 | node id, block proposals, channel authentication |
//! | multi-signature key | BLS12-381 | notarization and finalization shares |
//! | beacon key share | threshold BLS, `f+1` of `n` | random beacon |
//! | subnet key share | threshold BLS, `n−f` of `n` | CUPs, state certification |
//!
//! The public side is a [`SubnetRecord`] (the registry entry every node holds); each node's
//! secrets are a [`NodeSecrets`], written only to that node's configuration.

use super::bls::{BlsError, PublicKey, SecretKey};
use super::ed25519::{NodePublicKey, NodeSigningKey};
use super::multisig::KeySet;
use super::threshold::{deal, dealer_rng, ThresholdError, ThresholdPublicKey};
use crate::types::{FixedBytes, NodeId, Principal, SubnetId, Time};
use alloc::vec::Vec;
use core::fmt;
use rand_core::Rng;
use serde::{Deserialize, Serialize};

/// Version of the [`SubnetRecord`] and [`NodeSecrets`] encodings.
pub const RECORD_VERSION: u16 = 1;
/// Largest subnet the dealer and the consensus layer accept.
pub const SUBNET_NODES_MAX: usize = 256;

/// Faults tolerated by a subnet of `n` nodes: `⌊(n−1)/3⌋`.
pub fn faults_tolerated(n: usize) -> usize {
    n.saturating_sub(1) / 3
}

/// One node's public keys in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_key: FixedBytes<32>,
    pub multisig_key: FixedBytes<96>,
    pub beacon_key_share: FixedBytes<96>,
    pub subnet_key_share: FixedBytes<96>,
}

/// A subnet's registry entry: membership (in order: the index is the node's position) and keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetRecord {
    pub version: u16,
    pub nodes: Vec<NodeRecord>,
    pub beacon_threshold: u32,
    pub beacon_key: FixedBytes<96>,
    pub subnet_threshold: u32,
    pub subnet_key: FixedBytes<96>,
    pub genesis_time_ns: u64,
}

/// One node's secrets.
#[derive(Clone, Serialize, Deserialize)]
pub struct NodeSecrets {
    pub version: u16,
    pub index: u32,
    pub node_seed: FixedBytes<32>,
    pub multisig_secret: FixedBytes<32>,
    pub beacon_share_secret: FixedBytes<32>,
    pub subnet_share_secret: FixedBytes<32>,
}

/// Why a record is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    Version,
    Size,
    Threshold,
    Key,
    Dealing(ThresholdError),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Version => f.write_str("unknown record version"),
            RecordError::Size => f.write_str("subnet size out of range"),
            RecordError::Threshold => f.write_str("threshold does not match the subnet size"),
            RecordError::Key => f.write_str("malformed key in record"),
            RecordError::Dealing(e) => write!(f, "dealing failed: {e}"),
        }
    }
}

impl From<BlsError> for RecordError {
    fn from(_: BlsError) -> Self {
        RecordError::Key
    }
}

/// Deals a subnet of `n` nodes from `seed`.
pub fn deal_subnet(
    seed: &[u8; 32],
    n: usize,
    genesis_time: Time,
) -> Result<(SubnetRecord, Vec<NodeSecrets>), RecordError> {
    if n == 0 || n > SUBNET_NODES_MAX {
        return Err(RecordError::Size);
    }
    let f = faults_tolerated(n);
    let mut rng = dealer_rng(seed, "cairn-genesis-dealer");
    let beacon = deal(&mut rng, n, f + 1).map_err(RecordError::Dealing)?;
    let subnet = deal(&mut rng, n, n - f).map_err(RecordError::Dealing)?;
    let mut nodes = Vec::with_capacity(n);
    let mut secrets = Vec::with_capacity(n);
    for i in 0..n {
        let mut node_seed = [0u8; 32];
        rng.fill_bytes(&mut node_seed);
        let mut ikm = [0u8; 32];
        rng.fill_bytes(&mut ikm);
        let multisig = SecretKey::from_ikm(&ikm);
        let node_key = NodeSigningKey::from_seed(&node_seed).public_key();
        nodes.push(NodeRecord {
            node_key: FixedBytes(node_key.to_bytes()),
            multisig_key: FixedBytes(*multisig.public_key().as_bytes()),
            beacon_key_share: FixedBytes(*beacon.public.key_shares[i].as_bytes()),
            subnet_key_share: FixedBytes(*subnet.public.key_shares[i].as_bytes()),
        });
        secrets.push(NodeSecrets {
            version: RECORD_VERSION,
            index: i as u32,
            node_seed: FixedBytes(node_seed),
            multisig_secret: FixedBytes(multisig.to_bytes()),
            beacon_share_secret: FixedBytes(beacon.secret_shares[i].to_bytes()),
            subnet_share_secret: FixedBytes(subnet.secret_shares[i].to_bytes()),
        });
    }
    let record = SubnetRecord {
        version: RECORD_VERSION,
        nodes,
        beacon_threshold: (f + 1) as u32,
        beacon_key: FixedBytes(*beacon.public.group_key.as_bytes()),
        subnet_threshold: (n - f) as u32,
        subnet_key: FixedBytes(*subnet.public.group_key.as_bytes()),
        genesis_time_ns: genesis_time.0,
    };
    Ok((record, secrets))
}

/// A subnet record parsed into checked, ready-to-verify keys.
#[derive(Clone)]
pub struct SubnetKeys {
    pub subnet_id: SubnetId,
    pub node_ids: Vec<NodeId>,
    pub node_keys: Vec<NodePublicKey>,
    pub multisig: KeySet,
    pub beacon: ThresholdPublicKey,
    pub subnet: ThresholdPublicKey,
    pub genesis_time: Time,
}

impl SubnetKeys {
    pub fn from_record(record: &SubnetRecord) -> Result<SubnetKeys, RecordError> {
        if record.version != RECORD_VERSION {
            return Err(RecordError::Version);
        }
        let n = record.nodes.len();
        if n == 0 || n > SUBNET_NODES_MAX {
            return Err(RecordError::Size);
        }
        let f = faults_tolerated(n);
        if record.beacon_threshold as usize != f + 1 || record.subnet_threshold as usize != n - f {
            return Err(RecordError::Threshold);
        }
        let mut node_keys = Vec::with_capacity(n);
        let mut multisig = Vec::with_capacity(n);
        let mut beacon_shares = Vec::with_capacity(n);
        let mut subnet_shares = Vec::with_capacity(n);
        for node in &record.nodes {
            node_keys
                .push(NodePublicKey::from_bytes(&node.node_key.0).map_err(|_| RecordError::Key)?);
            multisig.push(PublicKey::from_bytes(&node.multisig_key.0)?);
            beacon_shares.push(PublicKey::from_bytes(&node.beacon_key_share.0)?);
            subnet_shares.push(PublicKey::from_bytes(&node.subnet_key_share.0)?);
        }
        let subnet_key = PublicKey::from_bytes(&record.subnet_key.0)?;
        Ok(SubnetKeys {
            subnet_id: SubnetId(Principal::self_authenticating(&subnet_key.to_der())),
            node_ids: node_keys.iter().map(|k| k.node_id()).collect(),
            multisig: KeySet::new(&multisig)?,
            beacon: ThresholdPublicKey {
                threshold: f + 1,
                group_key: PublicKey::from_bytes(&record.beacon_key.0)?,
                key_shares: beacon_shares,
            },
            subnet: ThresholdPublicKey {
                threshold: n - f,
                group_key: subnet_key,
                key_shares: subnet_shares,
            },
            node_keys,
            genesis_time: Time(record.genesis_time_ns),
        })
    }

    pub fn n(&self) -> usize {
        self.node_keys.len()
    }

    pub fn f(&self) -> usize {
        faults_tolerated(self.n())
    }

    pub fn index_of(&self, node: &NodeId) -> Option<u32> {
        self.node_ids
            .iter()
            .position(|id| id == node)
            .map(|i| i as u32)
    }
}

/// One node's secrets, parsed.
#[derive(Clone)]
pub struct NodeKeys {
    pub index: u32,
    pub node_key: NodeSigningKey,
    pub multisig: SecretKey,
    pub beacon_share: SecretKey,
    pub subnet_share: SecretKey,
}

impl NodeKeys {
    pub fn from_secrets(secrets: &NodeSecrets) -> Result<NodeKeys, RecordError> {
        if secrets.version != RECORD_VERSION {
            return Err(RecordError::Version);
        }
        Ok(NodeKeys {
            index: secrets.index,
            node_key: NodeSigningKey::from_seed(&secrets.node_seed.0),
            multisig: SecretKey::from_bytes(&secrets.multisig_secret.0)?,
            beacon_share: SecretKey::from_bytes(&secrets.beacon_share_secret.0)?,
            subnet_share: SecretKey::from_bytes(&secrets.subnet_share_secret.0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dealing_is_deterministic_and_consistent() {
        let (a, sa) = deal_subnet(&[1; 32], 4, Time(5)).unwrap();
        let (b, _) = deal_subnet(&[1; 32], 4, Time(5)).unwrap();
        let (c, _) = deal_subnet(&[2; 32], 4, Time(5)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let keys = SubnetKeys::from_record(&a).unwrap();
        assert_eq!(
            (
                keys.n(),
                keys.f(),
                keys.beacon.threshold,
                keys.subnet.threshold
            ),
            (4, 1, 2, 3)
        );
        let bytes = postcard::to_allocvec(&a).unwrap();
        assert_eq!(postcard::from_bytes::<SubnetRecord>(&bytes).unwrap(), a);
        for (i, s) in sa.iter().enumerate() {
            let nk = NodeKeys::from_secrets(s).unwrap();
            assert_eq!(nk.node_key.public_key().node_id(), keys.node_ids[i]);
            let sig = nk.multisig.sign(b"m");
            assert!(keys.multisig.verify_one(i, b"m", &sig).is_ok());
            assert!(keys.beacon.key_shares[i]
                .verify(b"m", &nk.beacon_share.sign(b"m"))
                .is_ok());
        }
        let shares: Vec<_> = sa[1..]
            .iter()
            .map(|s| {
                let nk = NodeKeys::from_secrets(s).unwrap();
                (nk.index as usize, nk.subnet_share.sign(b"root"))
            })
            .collect();
        let sig = super::super::threshold::combine(&shares, 3).unwrap();
        assert!(keys.subnet.group_key.verify(b"root", &sig).is_ok());
    }
}
