//! State certification: every node signs the root of its certified state tree at each height
//! with its share of the subnet key (threshold `n−f`), shares are exchanged, and `n−f` shares
//! on the same root combine into the subnet's signature, which is what IC certificates carry
//! (`BLS(subnet key, "\x0Dic-state-root" ‖ root)`, reference §2.1).
//!
//! [`Certifier`] is sans-IO and knows nothing about the tree: the caller hands it the root of
//! each height it executed ([`Certifier::on_local_root`]) and the shares peers sent
//! ([`Certifier::on_share`]); it yields the shares to send and each newly certified height.
//!
//! Guarantees:
//! - a combined signature is only released after it verifies against the subnet's group key,
//!   so a certification always verifies like an IC certificate;
//! - shares are checked together (combine, one pairing check) and one by one only when the
//!   combination fails; a signer whose share fails is ignored at that height;
//! - memory is bounded: shares are kept only for heights in
//!   `(certified, executed + CERTIFICATION_HEIGHTS_AHEAD_MAX]`, one per signer and height.

use crate::crypto::bls::{PublicKey, SecretKey, Signature, SIGNATURE_BYTES};
use crate::crypto::threshold::{self, ThresholdPublicKey};
use crate::types::{CryptoHash, FixedBytes, NodeIndex};
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Domain separator of the state root signature (reference §1.5).
pub const DS_STATE_ROOT: &[u8] = b"\x0Dic-state-root";
/// Heights above the locally executed height for which peers' shares are buffered.
pub const CERTIFICATION_HEIGHTS_AHEAD_MAX: u64 = 64;
/// Executed heights kept waiting for shares (older ones are dropped once a later one certifies).
pub const PENDING_HEIGHTS_MAX: usize = 128;

/// One node's signature share on the state root of one height.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificationShare {
    pub height: u64,
    pub root: CryptoHash,
    pub signer: NodeIndex,
    pub signature: FixedBytes<SIGNATURE_BYTES>,
}

/// A certified height: the subnet's combined signature on `root`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Certification {
    pub height: u64,
    pub root: CryptoHash,
    pub signature: [u8; SIGNATURE_BYTES],
}

/// The message every share signs: `"\x0Dic-state-root" ‖ root`.
pub fn state_root_message(root: &CryptoHash) -> Vec<u8> {
    let mut m = Vec::with_capacity(DS_STATE_ROOT.len() + 32);
    m.extend_from_slice(DS_STATE_ROOT);
    m.extend_from_slice(root);
    m
}

/// Counters for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CertifierStats {
    pub heights_certified: u64,
    pub shares_received: u64,
    pub shares_rejected: u64,
    /// Combinations that did not verify (forcing one-by-one share checks).
    pub combine_failures: u64,
    /// Pairing-based checks performed.
    pub bls_verifications: u64,
}

/// Shares of one height, by signer (each with the root it signed).
#[derive(Default)]
struct HeightShares {
    shares: BTreeMap<NodeIndex, (CryptoHash, Signature)>,
    /// Signers whose share failed verification at this height.
    bad: BTreeSet<NodeIndex>,
}

/// The certification component of one node.
pub struct Certifier {
    index: NodeIndex,
    share_key: SecretKey,
    subnet: ThresholdPublicKey,
    /// Locally executed heights and their roots, not yet certified.
    local: BTreeMap<u64, CryptoHash>,
    shares: BTreeMap<u64, HeightShares>,
    executed: u64,
    certified: u64,
    outbox: VecDeque<CertificationShare>,
    done: VecDeque<Certification>,
    stats: CertifierStats,
}

impl Certifier {
    /// `subnet_share` is this node's secret share of the subnet key, `index` its position.
    pub fn new(index: NodeIndex, subnet_share: SecretKey, subnet: ThresholdPublicKey) -> Self {
        Certifier {
            index,
            share_key: subnet_share,
            subnet,
            local: BTreeMap::new(),
            shares: BTreeMap::new(),
            executed: 0,
            certified: 0,
            outbox: VecDeque::new(),
            done: VecDeque::new(),
            stats: CertifierStats::default(),
        }
    }

    pub fn certified_height(&self) -> u64 {
        self.certified
    }

    pub fn stats(&self) -> CertifierStats {
        self.stats
    }

    /// This node executed `height` and its state tree has root `root`: sign it, queue the
    /// share for the peers, and certify if enough shares are already here.
    pub fn on_local_root(&mut self, height: u64, root: CryptoHash) {
        if height <= self.certified {
            return;
        }
        self.executed = self.executed.max(height);
        self.local.insert(height, root);
        while self.local.len() > PENDING_HEIGHTS_MAX {
            self.local.pop_first();
        }
        let signature = self.share_key.sign(&state_root_message(&root));
        let share = CertificationShare {
            height,
            root,
            signer: self.index,
            signature: FixedBytes(*signature.as_bytes()),
        };
        self.shares
            .entry(height)
            .or_default()
            .shares
            .insert(self.index, (root, signature));
        self.outbox.push_back(share);
        self.try_certify(height);
    }

    /// A share from peer `from` (the channel authenticated it). Shares naming another signer,
    /// for certified heights or too far ahead are dropped.
    pub fn on_share(&mut self, from: NodeIndex, share: CertificationShare) {
        self.stats.shares_received += 1;
        let ahead = self
            .executed
            .saturating_add(CERTIFICATION_HEIGHTS_AHEAD_MAX);
        if share.signer != from
            || share.signer as usize >= self.subnet.key_shares.len()
            || share.height <= self.certified
            || share.height > ahead
        {
            self.stats.shares_rejected += 1;
            return;
        }
        let Ok(signature) = Signature::from_bytes(&share.signature.0) else {
            self.stats.shares_rejected += 1;
            return;
        };
        let entry = self.shares.entry(share.height).or_default();
        if entry.bad.contains(&share.signer) || entry.shares.contains_key(&share.signer) {
            return;
        }
        entry.shares.insert(share.signer, (share.root, signature));
        self.try_certify(share.height);
    }

    /// The own share of the highest uncertified executed height (to send again when peers
    /// may have missed it).
    pub fn latest_own_share(&self) -> Option<CertificationShare> {
        let (&height, root) = self.local.last_key_value()?;
        let (r, sig) = self.shares.get(&height)?.shares.get(&self.index)?;
        (r == root).then(|| CertificationShare {
            height,
            root: *root,
            signer: self.index,
            signature: FixedBytes(*sig.as_bytes()),
        })
    }

    /// Next share to send to every peer.
    pub fn poll_outgoing(&mut self) -> Option<CertificationShare> {
        self.outbox.pop_front()
    }

    /// Next newly certified height, in increasing order.
    pub fn poll_certified(&mut self) -> Option<Certification> {
        self.done.pop_front()
    }

    fn try_certify(&mut self, height: u64) {
        let Some(&root) = self.local.get(&height) else {
            return;
        };
        let threshold = self.subnet.threshold;
        loop {
            let Some(entry) = self.shares.get(&height) else {
                return;
            };
            let matching: Vec<(usize, Signature)> = entry
                .shares
                .iter()
                .filter(|(_, (r, _))| *r == root)
                .map(|(i, (_, s))| (*i as usize, *s))
                .collect();
            if matching.len() < threshold {
                return;
            }
            let message = state_root_message(&root);
            if let Ok(sig) = threshold::combine(&matching, threshold) {
                self.stats.bls_verifications += 1;
                if self.subnet.group_key.verify(&message, &sig).is_ok() {
                    self.finish(Certification {
                        height,
                        root,
                        signature: *sig.as_bytes(),
                    });
                    return;
                }
            }
            self.stats.combine_failures += 1;
            // Find the bad shares one by one and forget them; retry with the rest.
            let mut bad = Vec::new();
            for (i, s) in &matching {
                self.stats.bls_verifications += 1;
                let key: Option<&PublicKey> = self.subnet.key_shares.get(*i);
                if key.is_none_or(|k| k.verify(&message, s).is_err()) {
                    bad.push(*i as NodeIndex);
                }
            }
            let Some(entry) = self.shares.get_mut(&height) else {
                return;
            };
            if bad.is_empty() {
                // Every share verifies but the combination does not: cannot happen with a
                // consistent dealing; give up on this height rather than loop.
                return;
            }
            for i in bad {
                entry.shares.remove(&i);
                entry.bad.insert(i);
                self.stats.shares_rejected += 1;
            }
        }
    }

    fn finish(&mut self, c: Certification) {
        self.certified = c.height;
        self.stats.heights_certified += 1;
        self.shares = self.shares.split_off(&(c.height + 1));
        self.local = self.local.split_off(&(c.height + 1));
        self.done.push_back(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::dealer::{deal_subnet, NodeKeys, SubnetKeys};
    use crate::types::Time;

    fn certifiers(n: usize) -> (SubnetKeys, Vec<Certifier>) {
        let (record, secrets) = deal_subnet(&[7; 32], n, Time(1)).unwrap();
        let keys = SubnetKeys::from_record(&record).unwrap();
        let cs = secrets
            .iter()
            .map(|s| {
                let nk = NodeKeys::from_secrets(s).unwrap();
                Certifier::new(nk.index, nk.subnet_share, keys.subnet.clone())
            })
            .collect();
        (keys, cs)
    }

    #[test]
    fn n_minus_f_shares_certify_and_verify_against_the_subnet_key() {
        let (keys, mut cs) = certifiers(4);
        let root = [9u8; 32];
        for c in cs.iter_mut().take(3) {
            c.on_local_root(1, root);
        }
        let shares: Vec<CertificationShare> = cs
            .iter_mut()
            .take(3)
            .map(|c| c.poll_outgoing().unwrap())
            .collect();
        // Node 3 has not executed height 1 yet: it buffers the shares.
        for s in &shares {
            cs[3].on_share(s.signer, s.clone());
        }
        assert!(cs[3].poll_certified().is_none());
        cs[3].on_local_root(1, root);
        let cert = cs[3].poll_certified().expect("certified");
        assert_eq!(cert.height, 1);
        let sig = Signature::from_bytes(&cert.signature).unwrap();
        assert!(keys
            .subnet
            .group_key
            .verify(&state_root_message(&root), &sig)
            .is_ok());
        // Two shares are not enough for node 0.
        cs[0].on_share(1, shares[1].clone());
        assert!(cs[0].poll_certified().is_none());
        cs[0].on_share(2, shares[2].clone());
        assert_eq!(
            cs[0].poll_certified().map(|c| c.signature),
            Some(cert.signature)
        );
    }

    #[test]
    fn bad_and_mismatched_shares_are_ignored() {
        let (_, mut cs) = certifiers(4);
        let root = [1u8; 32];
        for c in cs.iter_mut() {
            c.on_local_root(5, root);
        }
        let mut shares: Vec<CertificationShare> =
            cs.iter_mut().map(|c| c.poll_outgoing().unwrap()).collect();
        // Node 1 signs garbage (another node's signature), node 3 another root.
        shares[1].signature = shares[2].signature;
        shares[3].root = [2u8; 32];
        cs[0].on_share(1, shares[1].clone());
        cs[0].on_share(3, shares[3].clone());
        assert!(cs[0].poll_certified().is_none());
        // A share relayed by someone else than its signer is dropped.
        cs[0].on_share(1, shares[2].clone());
        assert!(cs[0].poll_certified().is_none());
        // Node 2's share makes three on the root; the combination fails, node 1 is found
        // bad, and two good shares remain (node 3 signed another root): not certified.
        cs[0].on_share(2, shares[2].clone());
        assert!(cs[0].poll_certified().is_none());
        assert_eq!(cs[0].stats().combine_failures, 1);
        // At a later height nodes 1 and 2 send good shares: it certifies, superseding 5.
        for c in cs.iter_mut() {
            c.on_local_root(6, root);
        }
        let later: Vec<CertificationShare> =
            cs.iter_mut().map(|c| c.poll_outgoing().unwrap()).collect();
        cs[0].on_share(1, later[1].clone());
        cs[0].on_share(2, later[2].clone());
        let c = cs[0].poll_certified().expect("height 6 certified");
        assert_eq!(c.height, 6);
        assert_eq!(cs[0].certified_height(), 6);
        // Shares for the certified height and below are now dropped.
        cs[0].on_share(3, later[3].clone());
        assert!(cs[0].poll_certified().is_none());
    }
}
