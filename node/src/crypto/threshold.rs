//! Threshold BLS over BLS12-381: Shamir shares of a secret scalar, share signatures that
//! verify against per-node public key shares, and Lagrange combination in G1.
//!
//! A `t`-of-`n` key is a polynomial `p` of degree `t−1` over the scalar field Fr; node `i`
//! (0-based) holds `p(i+1)`, its public key share is `p(i+1)·g2`, the group key is `p(0)·g2`.
//! A share signature is an ordinary BLS signature with the share key. Any `t` valid shares
//! `σⱼ = p(xⱼ)·H(m)` combine to `Σ λⱼ·σⱼ = p(0)·H(m)`, with `λⱼ = Π_{k≠j} xₖ/(xₖ−xⱼ)` the
//! Lagrange coefficients at 0, so the result is a plain BLS signature under the group key and
//! verifies with [`PublicKey::verify`] (which is what IC certificates need).
//!
//! Used for the random beacon (`t = f+1`) and the subnet key (`t = n−f`), reference §4.1.

use super::bls::{BlsError, PublicKey, SecretKey, Signature};
use super::multisig::decode_sig_on_curve;
use alloc::vec::Vec;
use blst::min_sig as bls;
use blst::{blst_fr, blst_scalar};
use core::fmt;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// Why shares could not be combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThresholdError {
    /// Fewer shares than the threshold, or none at all.
    TooFewShares,
    /// Two shares name the same signer.
    DuplicateSigner,
    /// A share is not a point of G1.
    BadShare,
    /// The dealer drew a zero share (probability 2^-255); deal again with another seed.
    ZeroShare,
}

impl fmt::Display for ThresholdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThresholdError::TooFewShares => "fewer signature shares than the threshold",
            ThresholdError::DuplicateSigner => "two signature shares from one signer",
            ThresholdError::BadShare => "signature share is not a G1 point",
            ThresholdError::ZeroShare => "dealer drew a zero share",
        })
    }
}

/// The public side of a threshold key: group key and one key share per node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThresholdPublicKey {
    pub threshold: usize,
    pub group_key: PublicKey,
    pub key_shares: Vec<PublicKey>,
}

/// A dealt threshold key: the public side and each node's secret share.
pub struct DealtKey {
    pub public: ThresholdPublicKey,
    pub secret_shares: Vec<SecretKey>,
}

/// Deals a `threshold`-of-`n` key from the deterministic RNG `rng` (genesis only).
pub fn deal(rng: &mut ChaCha20Rng, n: usize, threshold: usize) -> Result<DealtKey, ThresholdError> {
    assert!(
        threshold >= 1 && threshold <= n,
        "threshold {threshold} of {n}"
    );
    let coefficients: Vec<blst_fr> = (0..threshold).map(|_| random_fr(rng)).collect();
    let group_secret = fr_to_secret_key(&coefficients[0])?;
    let mut secret_shares = Vec::with_capacity(n);
    let mut key_shares = Vec::with_capacity(n);
    for i in 0..n {
        let x = fr_from_u64(i as u64 + 1);
        let sk = fr_to_secret_key(&poly_eval(&coefficients, &x))?;
        key_shares.push(sk.public_key());
        secret_shares.push(sk);
    }
    Ok(DealtKey {
        public: ThresholdPublicKey {
            threshold,
            group_key: group_secret.public_key(),
            key_shares,
        },
        secret_shares,
    })
}

/// Combines exactly `threshold` shares `(signer index, share)` into the group signature.
/// Shares are not verified here (nor checked for subgroup membership): verify the result
/// with [`PublicKey::verify`], which checks the combined point's subgroup and the pairing
/// once, and fall back to per-share verification only if it fails.
pub fn combine(
    shares: &[(usize, Signature)],
    threshold: usize,
) -> Result<Signature, ThresholdError> {
    if shares.len() < threshold || threshold == 0 {
        return Err(ThresholdError::TooFewShares);
    }
    let shares = &shares[..threshold];
    let xs: Vec<blst_fr> = shares
        .iter()
        .map(|(i, _)| fr_from_u64(*i as u64 + 1))
        .collect();
    for (a, (i, _)) in shares.iter().enumerate() {
        if shares[..a].iter().any(|(j, _)| j == i) {
            return Err(ThresholdError::DuplicateSigner);
        }
    }
    let mut scalars = Vec::with_capacity(32 * shares.len());
    for j in 0..xs.len() {
        scalars.extend_from_slice(&fr_to_le_bytes(&lagrange_at_zero(&xs, j)));
    }
    let sigs = shares
        .iter()
        .map(|(_, s)| decode_sig_on_curve(s))
        .collect::<Result<Vec<_>, BlsError>>()
        .map_err(|_| ThresholdError::BadShare)?;
    // Scalars are below the group order r < 2^255.
    let combined = bls::AggregateSignature::aggregate_with_randomness(&sigs, &scalars, 255, false)
        .map_err(|_| ThresholdError::BadShare)?
        .to_signature();
    Signature::from_bytes(&combined.compress()).map_err(|_| ThresholdError::BadShare)
}

/// `λⱼ = Π_{k≠j} xₖ / (xₖ − xⱼ)`.
fn lagrange_at_zero(xs: &[blst_fr], j: usize) -> blst_fr {
    let mut num = fr_from_u64(1);
    let mut den = fr_from_u64(1);
    for (k, xk) in xs.iter().enumerate() {
        if k == j {
            continue;
        }
        num = fr_mul(&num, xk);
        den = fr_mul(&den, &fr_sub(xk, &xs[j]));
    }
    fr_mul(&num, &fr_inverse(&den))
}

fn poly_eval(coefficients: &[blst_fr], x: &blst_fr) -> blst_fr {
    let mut acc = blst_fr::default();
    for c in coefficients.iter().rev() {
        acc = fr_add(&fr_mul(&acc, x), c);
    }
    acc
}

fn random_fr(rng: &mut ChaCha20Rng) -> blst_fr {
    let mut wide = [0u8; 64];
    rng.fill_bytes(&mut wide);
    let mut s = blst_scalar::default();
    // SAFETY: `s` is a valid out-pointer and `wide` is 64 readable bytes; the call reduces the
    // 512-bit big-endian integer modulo r, so the output is a canonical scalar.
    unsafe { blst::blst_scalar_from_be_bytes(&mut s, wide.as_ptr(), wide.len()) };
    let mut r = blst_fr::default();
    // SAFETY: both pointers are valid for the duration of the call.
    unsafe { blst::blst_fr_from_scalar(&mut r, &s) };
    r
}

fn fr_from_u64(v: u64) -> blst_fr {
    let limbs = [v, 0, 0, 0];
    let mut r = blst_fr::default();
    // SAFETY: `limbs` is the four 64-bit limbs the function reads.
    unsafe { blst::blst_fr_from_uint64(&mut r, limbs.as_ptr()) };
    r
}

fn fr_add(a: &blst_fr, b: &blst_fr) -> blst_fr {
    let mut r = blst_fr::default();
    // SAFETY: valid pointers to initialized field elements.
    unsafe { blst::blst_fr_add(&mut r, a, b) };
    r
}

fn fr_sub(a: &blst_fr, b: &blst_fr) -> blst_fr {
    let mut r = blst_fr::default();
    // SAFETY: valid pointers to initialized field elements.
    unsafe { blst::blst_fr_sub(&mut r, a, b) };
    r
}

fn fr_mul(a: &blst_fr, b: &blst_fr) -> blst_fr {
    let mut r = blst_fr::default();
    // SAFETY: valid pointers to initialized field elements.
    unsafe { blst::blst_fr_mul(&mut r, a, b) };
    r
}

fn fr_inverse(a: &blst_fr) -> blst_fr {
    let mut r = blst_fr::default();
    // SAFETY: valid pointers; the inverse of 0 is 0, which callers never pass (distinct xs).
    unsafe { blst::blst_fr_eucl_inverse(&mut r, a) };
    r
}

fn fr_to_le_bytes(a: &blst_fr) -> [u8; 32] {
    let mut s = blst_scalar::default();
    // SAFETY: valid pointers; blst_scalar holds the little-endian canonical form.
    unsafe { blst::blst_scalar_from_fr(&mut s, a) };
    s.b
}

fn fr_to_secret_key(a: &blst_fr) -> Result<SecretKey, ThresholdError> {
    let mut be = fr_to_le_bytes(a);
    be.reverse();
    SecretKey::from_bytes(&be).map_err(|_| ThresholdError::ZeroShare)
}

/// A deterministic RNG for dealing, from a seed and a purpose label.
pub fn dealer_rng(seed: &[u8; 32], purpose: &str) -> ChaCha20Rng {
    let digest = crate::types::domain_hash(purpose, seed);
    ChaCha20Rng::from_seed(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_subset_combines_to_the_group_signature() {
        let mut rng = dealer_rng(&[3; 32], "test");
        let key = deal(&mut rng, 7, 5).unwrap();
        let msg = b"beacon 12";
        let shares: Vec<(usize, Signature)> = key
            .secret_shares
            .iter()
            .enumerate()
            .map(|(i, sk)| (i, sk.sign(msg)))
            .collect();
        for (i, s) in &shares {
            assert!(key.public.key_shares[*i].verify(msg, s).is_ok());
        }
        let a = combine(&shares[..5], 5).unwrap();
        let b = combine(&shares[2..], 5).unwrap();
        let picked = [shares[6], shares[0], shares[3], shares[5], shares[1]];
        let c = combine(&picked, 5).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(key.public.group_key.verify(msg, &a), Ok(()));
        // Four shares are not enough, and a wrong share spoils the result.
        assert_eq!(combine(&shares[..4], 5), Err(ThresholdError::TooFewShares));
        let mut bad = shares.clone();
        bad[0].1 = key.secret_shares[0].sign(b"other");
        let d = combine(&bad[..5], 5).unwrap();
        assert!(key.public.group_key.verify(msg, &d).is_err());
        let dup = [shares[0], shares[0], shares[1], shares[2], shares[3]];
        assert_eq!(combine(&dup, 5), Err(ThresholdError::DuplicateSigner));
    }
}
