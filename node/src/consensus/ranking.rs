//! Block-maker ranking and the rank delays (reference §4.2 steps 1–3, 5).
//!
//! The beacon at height `h` seeds a deterministic Fisher–Yates shuffle of the node indices
//! (ChaCha20 keyed by `H(domain ‖ beacon hash)`); a node's rank is its position, and the
//! first `f+1` positions are the block makers. Delays are integer milliseconds: no floating
//! point in replicated logic.

use super::artifacts::DOMAIN_RANKING;
use crate::types::{domain_hash, CryptoHash, NodeIndex, Rank};
use alloc::vec::Vec;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Cap on the exponent of the notary delay's growth (`1.5^gap`), so delays stay bounded.
pub const NOTARY_DELAY_GROWTH_STEPS_MAX: u64 = 10;

/// Timing and sizing parameters of a subnet (registry values in the IC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusParams {
    /// `unit_delay` (IC application subnets: 1000 ms).
    pub unit_delay_ms: u64,
    /// `initial_notary_delay` (IC application subnets: 300 ms).
    pub initial_notary_delay_ms: u64,
    /// Heights between catch-up packages (IC: `dkg_interval_length + 1` = 500).
    pub cup_interval_heights: u64,
    /// Largest block payload (IC: 4 MiB).
    pub max_block_payload_bytes: u64,
    /// Most ingress messages in one block (IC: 1000).
    pub max_ingress_messages_per_block: u64,
    /// Notarization pauses when the notarized height runs this far ahead of the finalized
    /// height (IC: 70, relative to certification).
    pub max_notarization_lag_heights: u64,
}

impl ConsensusParams {
    /// The IC's application-subnet values, with CUPs every 100 heights.
    pub const IC_APPLICATION_SUBNET: ConsensusParams = ConsensusParams {
        unit_delay_ms: 1000,
        initial_notary_delay_ms: 300,
        cup_interval_heights: 100,
        max_block_payload_bytes: 4 * 1024 * 1024,
        max_ingress_messages_per_block: 1000,
        max_notarization_lag_heights: 70,
    };

    /// Faster rounds for simulation suites (tests care about logic, not wall-clock pacing).
    pub const FAST: ConsensusParams = ConsensusParams {
        unit_delay_ms: 200,
        initial_notary_delay_ms: 60,
        cup_interval_heights: 10,
        max_block_payload_bytes: 4 * 1024 * 1024,
        max_ingress_messages_per_block: 1000,
        max_notarization_lag_heights: 70,
    };

    /// `block_maker_delay(r) = unit_delay · r`.
    pub fn block_maker_delay_ms(&self, rank: Rank) -> u64 {
        self.unit_delay_ms.saturating_mul(rank.0 as u64)
    }

    /// `notary_delay(r) = initial_notary_delay + unit_delay · r · 1.5^(notarized − finalized)`,
    /// with the power computed as repeated `×3/2` and its exponent capped.
    pub fn notary_delay_ms(&self, rank: Rank, notarized_ahead_of_finalized: u64) -> u64 {
        let mut rank_part = self.unit_delay_ms.saturating_mul(rank.0 as u64);
        for _ in 0..notarized_ahead_of_finalized.min(NOTARY_DELAY_GROWTH_STEPS_MAX) {
            rank_part = rank_part.saturating_mul(3) / 2;
        }
        self.initial_notary_delay_ms.saturating_add(rank_part)
    }
}

/// The ranking at one height: `order[r]` is the node of rank `r`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranking {
    order: Vec<NodeIndex>,
    block_makers: usize,
}

impl Ranking {
    /// Shuffles `n` nodes with the beacon; `f+1` of them make blocks.
    pub fn from_beacon(beacon_hash: &CryptoHash, n: usize, f: usize) -> Ranking {
        let seed = domain_hash(DOMAIN_RANKING, beacon_hash);
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut order: Vec<NodeIndex> = (0..n as NodeIndex).collect();
        for i in (1..order.len()).rev() {
            // Rejection-free bounded draw: the modulo bias over 2^64 is below 2^-56 for n ≤ 256.
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        Ranking {
            order,
            block_makers: (f + 1).min(n),
        }
    }

    /// The rank of `node`, if it is a block maker at this height.
    pub fn block_maker_rank(&self, node: NodeIndex) -> Option<Rank> {
        let pos = self.order.iter().position(|&x| x == node)?;
        (pos < self.block_makers).then_some(Rank(pos as u32))
    }

    pub fn block_maker(&self, rank: Rank) -> Option<NodeIndex> {
        if (rank.0 as usize) < self.block_makers {
            self.order.get(rank.0 as usize).copied()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_is_a_permutation_and_delays_grow() {
        let r = Ranking::from_beacon(&[9; 32], 13, 4);
        let mut seen: Vec<_> = (0..13).filter_map(|i| r.block_maker_rank(i)).collect();
        seen.sort();
        assert_eq!(seen, (0..5).map(Rank).collect::<Vec<_>>());
        for rank in 0..5 {
            let node = r.block_maker(Rank(rank)).unwrap();
            assert_eq!(r.block_maker_rank(node), Some(Rank(rank)));
        }
        assert_ne!(r, Ranking::from_beacon(&[8; 32], 13, 4));
        let p = ConsensusParams::IC_APPLICATION_SUBNET;
        assert_eq!(p.notary_delay_ms(Rank(0), 5), 300);
        assert_eq!(p.notary_delay_ms(Rank(1), 0), 1300);
        assert_eq!(p.notary_delay_ms(Rank(1), 2), 300 + 2250);
        assert_eq!(p.block_maker_delay_ms(Rank(2)), 2000);
    }
}
