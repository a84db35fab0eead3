//! BLS multi-signatures of individual node keys, for notarization and finalization
//! (reference §4.1: `n−f` signers; DESIGN.md "Crypto roles").
//!
//! Every signer signs the same message with its own key; the aggregate signature is the sum of
//! the individual signatures in G1 and verifies against the sum of the signers' public keys in
//! G2. Rogue-key attacks do not apply: every key comes from the registry (the genesis dealer or,
//! later, the DKG), never from the signer at signing time.
//!
//! Verification costs two pairings (~1 ms), so the consensus layer verifies an aggregate once
//! instead of each share; [`verify_batch`] is the randomized batch check for a set of shares on
//! one message (each share weighted by a 64-bit coefficient, so invalid shares cannot cancel).

use super::bls::{BlsError, PublicKey, Signature, DST};
use alloc::vec::Vec;
use blst::min_sig as bls;
use blst::BLST_ERROR;
use sha2::{Digest, Sha256};

/// Bits of each random coefficient in a batch verification (soundness error 2^-64).
pub const BATCH_COEFFICIENT_BITS: usize = 64;

/// Public keys decompressed once, so that verification does not pay for decompression.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<bls::PublicKey>,
}

impl KeySet {
    /// Decompresses and subgroup-checks every key.
    pub fn new(keys: &[PublicKey]) -> Result<KeySet, BlsError> {
        let keys = keys
            .iter()
            .map(|k| bls::PublicKey::key_validate(k.as_bytes()).map_err(|_| BlsError::BadEncoding))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies one signer's signature.
    pub fn verify_one(
        &self,
        signer: usize,
        message: &[u8],
        sig: &Signature,
    ) -> Result<(), BlsError> {
        let key = self.keys.get(signer).ok_or(BlsError::Invalid)?;
        let sig = decode_sig(sig)?;
        check(sig.verify(false, message, DST, &[], key, false))
    }

    /// Verifies an aggregate signature by `signers` (distinct indices) on `message`.
    pub fn verify_aggregate(
        &self,
        signers: &[usize],
        message: &[u8],
        sig: &Signature,
    ) -> Result<(), BlsError> {
        let keys = signers
            .iter()
            .map(|&i| self.keys.get(i).ok_or(BlsError::Invalid))
            .collect::<Result<Vec<_>, _>>()?;
        let agg =
            bls::AggregatePublicKey::aggregate(&keys, false).map_err(|_| BlsError::Invalid)?;
        let sig = decode_sig(sig)?;
        check(sig.verify(false, message, DST, &[], &agg.to_public_key(), false))
    }

    /// Randomized batch verification of shares `(signer, sig)` on one message: checks
    /// `e(Σ rᵢ·σᵢ, g2) = e(H(m), Σ rᵢ·pkᵢ)` with coefficients `rᵢ` derived from the shares
    /// themselves (Fiat–Shamir), so a set with any invalid share fails except with
    /// probability 2^-64. Returns `Ok` only if every share is valid.
    pub fn verify_batch(
        &self,
        message: &[u8],
        shares: &[(usize, Signature)],
    ) -> Result<(), BlsError> {
        if shares.is_empty() {
            return Ok(());
        }
        let mut sigs = Vec::with_capacity(shares.len());
        let mut keys = Vec::with_capacity(shares.len());
        let mut transcript = Sha256::new();
        transcript.update(message);
        for (signer, sig) in shares {
            keys.push(*self.keys.get(*signer).ok_or(BlsError::Invalid)?);
            sigs.push(decode_sig(sig)?);
            transcript.update((*signer as u64).to_le_bytes());
            transcript.update(sig.as_bytes());
        }
        let seed: [u8; 32] = transcript.finalize().into();
        let mut coefficients = Vec::with_capacity(shares.len() * 8);
        for i in 0..shares.len() as u64 {
            let mut h = Sha256::new();
            h.update(seed);
            h.update(i.to_le_bytes());
            let d: [u8; 32] = h.finalize().into();
            // Force the coefficient non-zero (and odd) so no share can be weighted away.
            let mut c = [0u8; 8];
            c.copy_from_slice(&d[..8]);
            c[0] |= 1;
            coefficients.extend_from_slice(&c);
        }
        let agg_sig = bls::AggregateSignature::aggregate_with_randomness(
            &sigs,
            &coefficients,
            BATCH_COEFFICIENT_BITS,
            false,
        )
        .map_err(|_| BlsError::Invalid)?
        .to_signature();
        let agg_key = bls::AggregatePublicKey::aggregate_with_randomness(
            &keys,
            &coefficients,
            BATCH_COEFFICIENT_BITS,
            false,
        )
        .map_err(|_| BlsError::Invalid)?
        .to_public_key();
        check(agg_sig.verify(false, message, DST, &[], &agg_key, false))
    }
}

/// The sum of signatures (each must decode to a curve point). Only the sum is checked for
/// subgroup membership, by [`KeySet::verify_aggregate`]: an aggregate is valid or not as a
/// whole, whatever its parts, and skipping the per-share check saves one scalar
/// multiplication per share.
pub fn aggregate(sigs: &[Signature]) -> Result<Signature, BlsError> {
    let decoded = sigs
        .iter()
        .map(decode_sig_on_curve)
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&bls::Signature> = decoded.iter().collect();
    let agg = bls::AggregateSignature::aggregate(&refs, false).map_err(|_| BlsError::Invalid)?;
    Signature::from_bytes(&agg.to_signature().compress())
}

/// Decompresses a signature and checks it lies in G1's prime-order subgroup.
pub(crate) fn decode_sig(sig: &Signature) -> Result<bls::Signature, BlsError> {
    bls::Signature::sig_validate(sig.as_bytes(), true).map_err(|_| BlsError::BadEncoding)
}

/// Decompresses a signature, checking only that it is on the curve (see [`aggregate`]).
pub(crate) fn decode_sig_on_curve(sig: &Signature) -> Result<bls::Signature, BlsError> {
    bls::Signature::from_bytes(sig.as_bytes()).map_err(|_| BlsError::BadEncoding)
}

fn check(e: BLST_ERROR) -> Result<(), BlsError> {
    match e {
        BLST_ERROR::BLST_SUCCESS => Ok(()),
        _ => Err(BlsError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::super::bls::SecretKey;
    use super::*;

    fn keys(n: u8) -> (Vec<SecretKey>, KeySet) {
        let sks: Vec<_> = (0..n).map(|i| SecretKey::from_ikm(&[i + 1; 32])).collect();
        let pks: Vec<_> = sks.iter().map(|k| k.public_key()).collect();
        (sks, KeySet::new(&pks).unwrap())
    }

    #[test]
    fn aggregate_and_batch() {
        let (sks, set) = keys(5);
        let msg = b"notarize h=7";
        let sigs: Vec<_> = sks.iter().map(|k| k.sign(msg)).collect();
        let agg = aggregate(&sigs[..4]).unwrap();
        assert_eq!(set.verify_aggregate(&[0, 1, 2, 3], msg, &agg), Ok(()));
        assert!(set.verify_aggregate(&[0, 1, 2, 4], msg, &agg).is_err());
        assert!(set.verify_aggregate(&[0, 1, 2, 3], b"other", &agg).is_err());
        let shares: Vec<_> = sigs.iter().copied().enumerate().collect();
        assert_eq!(set.verify_batch(msg, &shares), Ok(()));
        // Two shares that cancel in a plain sum must still fail the randomized batch.
        let mut bad = shares.clone();
        bad[1].1 = sks[1].sign(b"something else");
        assert!(set.verify_batch(msg, &bad).is_err());
        assert!(set.verify_one(1, msg, &bad[1].1).is_err());
        assert!(set.verify_one(2, msg, &bad[2].1).is_ok());
        assert!(set.verify_one(99, msg, &bad[2].1).is_err());
    }
}
