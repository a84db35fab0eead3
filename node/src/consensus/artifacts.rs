//! Consensus artifacts: what nodes sign, gossip and validate (IC consensus, PODC 2022 §3;
//! reference §4.2). Every signed message is `domain ‖ postcard(content)` with a cairn domain
//! separator, so no signature for one purpose verifies for another.
//!
//! Encoding: postcard, inside a versioned [`crate::p2p::WireMessage`]; blocks carry their own
//! version too. Decoding never panics: bytes from the network are untrusted.

use crate::p2p::ArtifactId;
use crate::types::{domain_hash, CryptoHash, FixedBytes, Height, NodeIndex, Rank, Time};
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Version of the block format.
pub const BLOCK_VERSION: u16 = 1;

pub const DOMAIN_BLOCK: &str = "cairn-block";
pub const DOMAIN_BLOCK_PROPOSAL: &str = "cairn-block-proposal";
pub const DOMAIN_NOTARIZATION: &str = "cairn-notarization";
pub const DOMAIN_FINALIZATION: &str = "cairn-finalization";
pub const DOMAIN_BEACON: &str = "cairn-random-beacon";
pub const DOMAIN_CUP: &str = "cairn-catch-up-package";
pub const DOMAIN_RANKING: &str = "cairn-blockmaker-ranking";

/// The artifact kinds, as they appear in [`ArtifactId::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum ArtifactKind {
    Block = 1,
    Notarization = 2,
    NotarizationShare = 3,
    Finalization = 4,
    FinalizationShare = 5,
    RandomBeacon = 6,
    RandomBeaconShare = 7,
    CatchUpPackage = 8,
    CatchUpShare = 9,
}

impl ArtifactKind {
    pub fn from_u8(v: u8) -> Option<ArtifactKind> {
        use ArtifactKind::*;
        Some(match v {
            1 => Block,
            2 => Notarization,
            3 => NotarizationShare,
            4 => Finalization,
            5 => FinalizationShare,
            6 => RandomBeacon,
            7 => RandomBeaconShare,
            8 => CatchUpPackage,
            9 => CatchUpShare,
            _ => return None,
        })
    }

    pub fn is_share(self) -> bool {
        matches!(
            self,
            ArtifactKind::NotarizationShare
                | ArtifactKind::FinalizationShare
                | ArtifactKind::RandomBeaconShare
                | ArtifactKind::CatchUpShare
        )
    }
}

/// A block's payload. Ingress messages are opaque bytes here; the integration with message
/// routing gives them meaning (and adds xnet, DKG and the other IC payload sections).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub ingress: Vec<Vec<u8>>,
}

impl Payload {
    pub fn size_bytes(&self) -> usize {
        self.ingress.iter().map(|m| m.len() + 4).sum()
    }
}

/// A block (reference §4.2: version, parent hash, height, rank, context time, payload).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub version: u16,
    pub parent: CryptoHash,
    pub height: Height,
    pub rank: Rank,
    pub maker: NodeIndex,
    /// The block maker's clock; strictly greater than the parent's.
    pub time: Time,
    pub payload: Payload,
}

impl Block {
    pub fn hash(&self) -> CryptoHash {
        // postcard of an in-memory block cannot fail (no maps, no non-string keys).
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        domain_hash(DOMAIN_BLOCK, &bytes)
    }
}

/// A block signed by its maker's node key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockProposal {
    pub block: Block,
    pub signature: FixedBytes<64>,
}

impl BlockProposal {
    pub fn signed_message(hash: &CryptoHash) -> Vec<u8> {
        signed_message(DOMAIN_BLOCK_PROPOSAL, hash)
    }
}

/// What notaries and finalizers sign: a block at a height.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockRef {
    pub height: Height,
    pub block: CryptoHash,
}

impl BlockRef {
    pub fn notarization_message(&self) -> Vec<u8> {
        signed_message(DOMAIN_NOTARIZATION, &self.encode())
    }

    pub fn finalization_message(&self) -> Vec<u8> {
        signed_message(DOMAIN_FINALIZATION, &self.encode())
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&self.height.0.to_be_bytes());
        v.extend_from_slice(&self.block);
        v
    }
}

/// One node's multi-signature share (notarization or finalization).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub content: BlockRef,
    pub signer: NodeIndex,
    pub signature: FixedBytes<48>,
}

/// `n−f` shares aggregated (notarization or finalization). Signers are sorted and distinct.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    pub content: BlockRef,
    pub signers: Vec<NodeIndex>,
    pub signature: FixedBytes<48>,
}

/// The random beacon at `height`: the unique `f+1` threshold signature on the previous
/// beacon (reference §4.2 step 1). `parent` is the previous beacon's hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RandomBeacon {
    pub height: Height,
    pub parent: CryptoHash,
    pub signature: FixedBytes<48>,
}

impl RandomBeacon {
    pub fn hash(&self) -> CryptoHash {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        domain_hash(DOMAIN_BEACON, &bytes)
    }

    pub fn signed_message(height: Height, parent: &CryptoHash) -> Vec<u8> {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&height.0.to_be_bytes());
        v.extend_from_slice(parent);
        signed_message(DOMAIN_BEACON, &v)
    }
}

/// One node's beacon share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RandomBeaconShare {
    pub height: Height,
    pub parent: CryptoHash,
    pub signer: NodeIndex,
    pub signature: FixedBytes<48>,
}

/// What a catch-up package certifies (reference §4.3, reduced to what this layer has): the
/// finalized block at a CUP height, the beacon there, and the hash of the replicated state
/// after executing that block (supplied by the replica's hook; a placeholder until execution).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpContent {
    pub block: Block,
    pub beacon: RandomBeacon,
    pub state_hash: CryptoHash,
}

impl CatchUpContent {
    pub fn height(&self) -> Height {
        self.block.height
    }

    pub fn hash(&self) -> CryptoHash {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        domain_hash(DOMAIN_CUP, &bytes)
    }

    pub fn signed_message(hash: &CryptoHash) -> Vec<u8> {
        signed_message(DOMAIN_CUP, hash)
    }
}

/// A catch-up package: content signed by the subnet's `n−f` threshold key. The genesis CUP
/// (height 0) is unsigned and trusted from the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpPackage {
    pub content: CatchUpContent,
    pub signature: FixedBytes<48>,
}

/// One node's CUP share: a signature on the content hash it computed locally.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpShare {
    pub height: Height,
    pub content: CryptoHash,
    pub signer: NodeIndex,
    pub signature: FixedBytes<48>,
}

/// Every consensus artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Artifact {
    Block(BlockProposal),
    Notarization(Aggregate),
    NotarizationShare(Share),
    Finalization(Aggregate),
    FinalizationShare(Share),
    RandomBeacon(RandomBeacon),
    RandomBeaconShare(RandomBeaconShare),
    CatchUpPackage(CatchUpPackage),
    CatchUpShare(CatchUpShare),
}

/// Signer field of ids of artifacts that are not shares.
pub const NO_SIGNER: u32 = u32::MAX;

impl Artifact {
    pub fn kind(&self) -> ArtifactKind {
        match self {
            Artifact::Block(_) => ArtifactKind::Block,
            Artifact::Notarization(_) => ArtifactKind::Notarization,
            Artifact::NotarizationShare(_) => ArtifactKind::NotarizationShare,
            Artifact::Finalization(_) => ArtifactKind::Finalization,
            Artifact::FinalizationShare(_) => ArtifactKind::FinalizationShare,
            Artifact::RandomBeacon(_) => ArtifactKind::RandomBeacon,
            Artifact::RandomBeaconShare(_) => ArtifactKind::RandomBeaconShare,
            Artifact::CatchUpPackage(_) => ArtifactKind::CatchUpPackage,
            Artifact::CatchUpShare(_) => ArtifactKind::CatchUpShare,
        }
    }

    pub fn height(&self) -> Height {
        match self {
            Artifact::Block(p) => p.block.height,
            Artifact::Notarization(a) | Artifact::Finalization(a) => a.content.height,
            Artifact::NotarizationShare(s) | Artifact::FinalizationShare(s) => s.content.height,
            Artifact::RandomBeacon(b) => b.height,
            Artifact::RandomBeaconShare(s) => s.height,
            Artifact::CatchUpPackage(c) => c.content.height(),
            Artifact::CatchUpShare(s) => s.height,
        }
    }

    /// The gossip id. Ids name the *logical* artifact: two aggregates on the same block have
    /// one id (whichever signer subset), so a node verifies at most one of them; a signer's
    /// share on a block has one id, so a second share from that signer is not even requested.
    pub fn id(&self) -> ArtifactId {
        let (key, signer) = match self {
            Artifact::Block(p) => (p.block.hash(), NO_SIGNER),
            Artifact::Notarization(a) | Artifact::Finalization(a) => (a.content.block, NO_SIGNER),
            Artifact::NotarizationShare(s) | Artifact::FinalizationShare(s) => {
                (s.content.block, s.signer)
            }
            Artifact::RandomBeacon(b) => (b.parent, NO_SIGNER),
            Artifact::RandomBeaconShare(s) => (s.parent, s.signer),
            Artifact::CatchUpPackage(c) => (c.content.hash(), NO_SIGNER),
            Artifact::CatchUpShare(s) => (s.content, s.signer),
        };
        ArtifactId {
            kind: self.kind() as u8,
            height: self.height().0,
            key,
            signer,
        }
    }

    /// Bytes this artifact occupies in a pool (an estimate for memory bounds).
    pub fn size_bytes(&self) -> usize {
        match self {
            Artifact::Block(p) => 256 + p.block.payload.size_bytes(),
            Artifact::Notarization(a) | Artifact::Finalization(a) => 128 + 4 * a.signers.len(),
            Artifact::CatchUpPackage(c) => 512 + c.content.block.payload.size_bytes(),
            _ => 128,
        }
    }
}

fn signed_message(domain: &str, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + domain.len() + data.len());
    v.push(domain.len() as u8);
    v.extend_from_slice(domain.as_bytes());
    v.extend_from_slice(data);
    v
}
