//! What a node with a store ([`super::stack::Stack::with_store`]) keeps on disk, and how.
//!
//! # Records of the pool log (`Store::pool_append`)
//!
//! | kind | height | bytes |
//! |---|---|---|
//! | [`RECORD_FINALIZED_BLOCK`] | the block's height | postcard [`LoggedBlock`] (version, hash, block, maker's signature) |
//! | [`RECORD_SIGNING_WATERMARK`] | the watermark | the watermark, u64 little-endian |
//! | [`RECORD_OWN_ARTIFACT`] | the artifact's height | `Artifact::encode` of what this node signed, or of a block it notarized |
//! | [`RECORD_SIGNING_FLOOR`] | a height | that height, u64 LE: an own artifact there was too large to log |
//! | [`RECORD_FINALITY`] | the artifact's height | [`FINALITY_RECORD_VERSION`] ‖ `Artifact::encode` of a finalized block's random beacon or notarization, of the finalization that finalized it, or of the block itself when this node did not notarize it ([`encode_finality`]) |
//!
//! The stack appends a finalized block when consensus delivers it, every artifact consensus
//! signed (`Replica::poll_signed`), and the signing watermark whenever it rose. Before any
//! byte leaves the node (`Stack::poll_transmit`) it calls `pool_sync`: so nothing this node
//! signed reaches a peer before it is durable.
//!
//! # Restart
//!
//! The consensus pool above the CUP is persistent in the part that matters: a restarted node
//! puts its own artifacts back (`Consensus::restore_signed`), which both restores what it
//! may still sign (no second block at a height, no share for a conflicting block: it never
//! equivocates) and lets it gossip them again, so a subnet whose nodes *all* restarted
//! completes the heights they had signed. The signing floor is then the CUP (and any
//! [`RECORD_SIGNING_FLOOR`]); a log without own artifacts up to the watermark (an older
//! format) keeps the watermark as the floor: nothing at or below it is signed again.
//!
//! What made the heights above the CUP final is persistent too: with the finalized blocks the
//! log keeps their random beacons, notarizations and the finalizations
//! (`Consensus::poll_finality`), and a restarted node puts them back into its pool with the
//! finalized blocks as block proposals (through validation, like received artifacts). So it
//! finalizes those heights again with the same blocks, and serves them to peers that did not
//! see them. A finalized block is delivered (and logged as [`RECORD_FINALIZED_BLOCK`]) only
//! once the beacon above it exists; a block this node did not notarize (it finalized it from
//! its peers' shares) goes into the log with its finalization, so a node that lost power in
//! between does not depend on its peers for it
//! (`finalized_but_undelivered_blocks_are_final_again_from_the_log_alone` in
//! `consensus::engine`). Without them a subnet of which some nodes restarted (with the CUP below heights
//! they had finalized) and one node stayed down could stall for good: the restarted nodes
//! had finalization-signed blocks of the absent node, a node that was behind notarized
//! another block at the same height first, and no block could gather n − f finalization
//! shares any more (`three_of_four_restart_after_checkpoint_before_its_cup_and_go_on` in
//! `tests/stack_store_restart.rs`).
//!
//! # Checkpoints and what the CUP certifies
//!
//! At every height `h` that is a multiple of the CUP interval, every replica alike aborts the
//! paused executions, writes the state as files (`StateMachine::checkpoint_files`) into the
//! store and hands consensus, as the state hash of `h`, not the execution hash `s` but
//! `bind(h, s, r) = H("cairn-checkpoint-state" ‖ h (u64 BE) ‖ s ‖ r)` with `r` the manifest root
//! of the files ([`bind_checkpoint`]). The CUP at `h` so certifies the manifest: a node that
//! syncs checks a peer's manifest and claimed `s` against the CUP, and each chunk against the
//! manifest.
//!
//! # The checkpoint of the latest CUP is kept until a newer CUP
//!
//! The store holds the latest checkpoint and, while that one is newer than the stored CUP,
//! also the checkpoint at the CUP height (`Store::put_cup_at`, the *retained* checkpoint), as
//! the IC's state manager never removes the checkpoint of the latest CUP. A node that adopts
//! the CUP (restarted behind it, or joining) syncs that state from any peer; without it, a
//! subnet whose CUP needs that very node to execute (n − f nodes up, one of them behind the
//! CUP) would wait forever for a state every peer had replaced. Peers serve both checkpoints
//! by height (`UpperMessage::ManifestRequest`); the state hash of a retained checkpoint is
//! remembered from when it was the latest, or recomputed from its files once after a
//! restart. The pool log keeps every finalized block above `min(checkpoint, CUP)`, so the
//! blocks above the retained height stay too.

use crate::consensus::{Artifact, ArtifactKind, Block, FinalizedBlock};
use crate::execution::ExecutionConfig;
use crate::routing::StateMachine;
use crate::store::{StateFile, StoreError, CHUNK_BYTES_DEFAULT};
use crate::types::{domain_hash, CryptoHash, FixedBytes, Height};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// Pool log record: a finalized block ([`LoggedBlock`]).
pub const RECORD_FINALIZED_BLOCK: u32 = 1;
/// Pool log record: the signing watermark (u64 LE).
pub const RECORD_SIGNING_WATERMARK: u32 = 2;
/// Pool log record: an artifact this node signed, or a block it notarized (`Artifact::encode`).
pub const RECORD_OWN_ARTIFACT: u32 = 3;
/// Pool log record: a height at and below which the node signs nothing after a restart (u64
/// LE), written when an own artifact there was too large for a record.
pub const RECORD_SIGNING_FLOOR: u32 = 4;
/// Pool log record: what made a finalized height final ([`encode_finality`]).
pub const RECORD_FINALITY: u32 = 5;
/// Version of [`RECORD_FINALITY`] records (their first byte).
pub const FINALITY_RECORD_VERSION: u8 = 1;
/// Version of [`LoggedBlock`].
pub const LOGGED_BLOCK_VERSION: u8 = 2;
/// Chunk size every store of a subnet must be formatted with: the manifest root, and so the
/// state hash certified by CUPs, depends on it.
pub const CHECKPOINT_CHUNK_BYTES: u32 = CHUNK_BYTES_DEFAULT;
/// Domain of [`bind_checkpoint`].
pub const DOMAIN_CHECKPOINT_STATE: &str = "cairn-checkpoint-state";
/// Finalized blocks held in memory while the state they apply to is being synced.
pub const BUFFERED_BLOCKS_MAX: usize = 1_000;
/// Bytes of those blocks' payloads.
pub const BUFFERED_BLOCK_BYTES_MAX: usize = 64 << 20;

/// The state hash consensus certifies at a checkpoint height (see the module docs).
pub fn bind_checkpoint(
    height: u64,
    state_hash: &CryptoHash,
    manifest_root: &CryptoHash,
) -> CryptoHash {
    let mut v = Vec::with_capacity(72);
    v.extend_from_slice(&height.to_be_bytes());
    v.extend_from_slice(state_hash);
    v.extend_from_slice(manifest_root);
    domain_hash(DOMAIN_CHECKPOINT_STATE, &v)
}

/// Whether the node checkpoints after executing `height` (every replica alike).
pub fn is_checkpoint_height(height: u64, cup_interval_heights: u64) -> bool {
    height > 0 && height.is_multiple_of(cup_interval_heights.max(1))
}

/// A finalized block as the pool log holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedBlock {
    pub version: u8,
    pub hash: CryptoHash,
    pub block: Block,
    pub signature: FixedBytes<64>,
    /// The beacon of the next height, the source of the batch's randomness: a replayed block
    /// must execute with the randomness it had the first time.
    pub next_beacon_hash: CryptoHash,
}

impl LoggedBlock {
    pub fn encode(b: &FinalizedBlock) -> Vec<u8> {
        postcard::to_allocvec(&LoggedBlock {
            version: LOGGED_BLOCK_VERSION,
            hash: b.hash,
            block: b.block.clone(),
            signature: b.signature,
            next_beacon_hash: b.next_beacon_hash,
        })
        .unwrap_or_default()
    }

    /// Decodes a record of height `height`; `None` unless it is consistent (hash, height).
    pub fn decode(height: u64, bytes: &[u8]) -> Option<FinalizedBlock> {
        let l: LoggedBlock = postcard::from_bytes(bytes).ok()?;
        if l.version != LOGGED_BLOCK_VERSION
            || l.block.height != Height(height)
            || l.block.hash() != l.hash
        {
            return None;
        }
        Some(FinalizedBlock {
            height: l.block.height,
            hash: l.hash,
            block: l.block,
            signature: l.signature,
            next_beacon_hash: l.next_beacon_hash,
        })
    }
}

/// Why a [`RECORD_FINALITY`] record was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalityRecordError {
    /// Empty, or of a version this build does not know.
    Version,
    /// The artifact does not decode.
    Decode,
    /// Not a block, random beacon, notarization or finalization, or not of the record's
    /// height.
    Unexpected,
}

impl fmt::Display for FinalityRecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FinalityRecordError::Version => f.write_str("finality record of an unknown version"),
            FinalityRecordError::Decode => f.write_str("finality record does not decode"),
            FinalityRecordError::Unexpected => {
                f.write_str("finality record holds an unexpected artifact")
            }
        }
    }
}

/// The bytes of a [`RECORD_FINALITY`] record.
pub fn encode_finality(artifact: &Artifact) -> Vec<u8> {
    let mut v = Vec::from([FINALITY_RECORD_VERSION]);
    v.extend_from_slice(&artifact.encode());
    v
}

/// A [`RECORD_FINALITY`] record of height `height`.
pub fn decode_finality(height: u64, bytes: &[u8]) -> Result<Artifact, FinalityRecordError> {
    let Some((&version, rest)) = bytes.split_first() else {
        return Err(FinalityRecordError::Version);
    };
    if version != FINALITY_RECORD_VERSION {
        return Err(FinalityRecordError::Version);
    }
    let artifact = Artifact::decode(rest).map_err(|_| FinalityRecordError::Decode)?;
    let id = artifact.id();
    let kind_ok = matches!(
        ArtifactKind::from_u8(id.kind),
        Some(
            ArtifactKind::Block
                | ArtifactKind::RandomBeacon
                | ArtifactKind::Notarization
                | ArtifactKind::Finalization
        )
    );
    if !kind_ok || id.height != height {
        return Err(FinalityRecordError::Unexpected);
    }
    Ok(artifact)
}

/// Why the state could not be written as files or read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateFilesError {
    /// The state codec rejected the state or the files.
    Codec,
    /// The files decode to a state of another height or hash than expected.
    Mismatch,
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for StateFilesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateFilesError::Codec => f.write_str("state codec failed"),
            StateFilesError::Mismatch => f.write_str("checkpoint is not the state expected"),
            StateFilesError::Store(e) => write!(f, "store: {e}"),
        }
    }
}

/// The state as named files (the codec of `routing::checkpoint`).
pub fn state_files(sm: &StateMachine) -> Result<Vec<(String, Vec<u8>)>, StateFilesError> {
    sm.checkpoint_files().map_err(|_| StateFilesError::Codec)
}

/// A state machine from a checkpoint's files.
pub fn state_from_files(
    config: ExecutionConfig,
    files: &[(String, Vec<u8>)],
) -> Result<StateMachine, StateFilesError> {
    StateMachine::from_checkpoint_files(config, files).map_err(|_| StateFilesError::Codec)
}

/// Borrowed view of owned files, as the store takes them.
pub fn as_state_files(files: &[(String, Vec<u8>)]) -> Vec<StateFile<'_>> {
    files
        .iter()
        .map(|(name, bytes)| StateFile { name, bytes })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::{Aggregate, BlockProposal, BlockRef, Share};

    fn finalization(height: u64) -> Artifact {
        Artifact::Finalization(Aggregate {
            content: BlockRef {
                height: Height(height),
                block: [7; 32],
            },
            signers: alloc::vec![0, 1, 2],
            signature: FixedBytes([3; 48]),
        })
    }

    #[test]
    fn store_finality_records_round_trip_and_bad_ones_are_typed_errors() {
        let a = finalization(41);
        let bytes = encode_finality(&a);
        assert_eq!(decode_finality(41, &bytes), Ok(a));
        // Another height than the record's.
        assert_eq!(
            decode_finality(40, &bytes),
            Err(FinalityRecordError::Unexpected)
        );
        assert_eq!(decode_finality(41, &[]), Err(FinalityRecordError::Version));
        let mut other_version = bytes.clone();
        other_version[0] = FINALITY_RECORD_VERSION + 1;
        assert_eq!(
            decode_finality(41, &other_version),
            Err(FinalityRecordError::Version)
        );
        // Every truncation and a flipped byte anywhere: an error or another valid artifact
        // of the kinds allowed, never a panic.
        for len in 1..bytes.len() {
            assert!(decode_finality(41, &bytes[..len]).is_err());
        }
        for i in 1..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            if let Ok(x) = decode_finality(41, &b) {
                assert_eq!(x.id().height, 41);
            }
        }
        // A share is not what made a height final.
        let share = Artifact::FinalizationShare(Share {
            content: BlockRef {
                height: Height(41),
                block: [7; 32],
            },
            signer: 1,
            signature: FixedBytes([3; 48]),
        });
        assert_eq!(
            decode_finality(41, &encode_finality(&share)),
            Err(FinalityRecordError::Unexpected)
        );
        // A block this node finalized without notarizing it is logged with its finality.
        let block = Artifact::Block(BlockProposal {
            block: Block {
                version: crate::consensus::BLOCK_VERSION,
                parent: [1; 32],
                height: Height(41),
                rank: crate::types::Rank(2),
                maker: 3,
                time: crate::types::Time::from_millis(1_700_000_000_000),
                payload: crate::consensus::Payload::default(),
            },
            signature: FixedBytes([4; 64]),
        });
        let bytes = encode_finality(&block);
        assert_eq!(decode_finality(41, &bytes), Ok(block));
        assert_eq!(
            decode_finality(42, &bytes),
            Err(FinalityRecordError::Unexpected)
        );
        assert!(!FinalityRecordError::Decode.to_string().is_empty());
    }
}
