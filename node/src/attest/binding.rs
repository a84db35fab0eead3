//! report_data: how a cairn node binds its public keys into its attestation report.
//!
//! The guest asks the firmware for a report whose 64-byte `report_data` is
//!
//! ```text
//! SHA-512( "cairn/snp-report-data/v1"              (24 ASCII bytes, no terminator)
//!        ‖ u32_be(number of keys)
//!        ‖ for each key, in ascending byte order of its label:
//!              u32_be(len(label)) ‖ label ‖ u32_be(len(key)) ‖ key )
//! ```
//!
//! The node's Ed25519 signing key is mandatory and has the label `node_signing_ed25519`; the
//! other public keys (committee BLS key, TLS key, …) are added under their own labels. Lengths
//! make the encoding injective; the label order makes it independent of the caller's order.
//! A verifier recomputes the value from the keys in the registry and compares it with the
//! report (check `report_data`).

use alloc::collections::BTreeMap;
use core::fmt;

use sha2::{Digest, Sha512};

/// Domain separator of the encoding (version 1).
pub const REPORT_DATA_DOMAIN: &[u8] = b"cairn/snp-report-data/v1";
/// The label of the mandatory Ed25519 node signing key.
pub const NODE_SIGNING_KEY_LABEL: &str = "node_signing_ed25519";
/// Most keys one binding may hold.
pub const MAX_BOUND_KEYS: usize = 16;
/// Longest key accepted, in bytes.
pub const MAX_BOUND_KEY_BYTES: usize = 4096;
/// Longest label accepted, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;

/// Why a key set cannot be bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingError {
    /// More than [`MAX_BOUND_KEYS`] keys.
    TooManyKeys,
    /// A key or label exceeds its bound.
    TooLong,
    /// The label is used twice, or is the reserved node-signing-key label.
    DuplicateLabel,
}

impl fmt::Display for BindingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindingError::TooManyKeys => write!(f, "more than {MAX_BOUND_KEYS} keys"),
            BindingError::TooLong => write!(
                f,
                "a label exceeds {MAX_LABEL_BYTES} bytes or a key exceeds {MAX_BOUND_KEY_BYTES} bytes"
            ),
            BindingError::DuplicateLabel => f.write_str("a key label is used twice"),
        }
    }
}

/// The report_data for a node with Ed25519 signing key `node_signing_key` and the labelled
/// `other_keys`.
pub fn report_data_for_keys(
    node_signing_key: &[u8; 32],
    other_keys: &[(&str, &[u8])],
) -> Result<[u8; 64], BindingError> {
    let mut keys: BTreeMap<&[u8], &[u8]> = BTreeMap::new();
    keys.insert(NODE_SIGNING_KEY_LABEL.as_bytes(), node_signing_key);
    for (label, key) in other_keys {
        if label.len() > MAX_LABEL_BYTES || key.len() > MAX_BOUND_KEY_BYTES {
            return Err(BindingError::TooLong);
        }
        if keys.insert(label.as_bytes(), key).is_some() {
            return Err(BindingError::DuplicateLabel);
        }
        if keys.len() > MAX_BOUND_KEYS {
            return Err(BindingError::TooManyKeys);
        }
    }
    let mut h = Sha512::new();
    h.update(REPORT_DATA_DOMAIN);
    // Both counts are bounded by the constants above, far below u32::MAX.
    h.update((keys.len() as u32).to_be_bytes());
    for (label, key) in &keys {
        h.update((label.len() as u32).to_be_bytes());
        h.update(label);
        h.update((key.len() as u32).to_be_bytes());
        h.update(key);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_is_order_independent_and_injective() {
        let node = [7u8; 32];
        let a = report_data_for_keys(&node, &[("bls", &[1, 2]), ("tls", &[3])]).unwrap();
        let b = report_data_for_keys(&node, &[("tls", &[3]), ("bls", &[1, 2])]).unwrap();
        assert_eq!(a, b);
        // Moving a byte from one key to the next changes the value (lengths are encoded).
        let c = report_data_for_keys(&node, &[("bls", &[1]), ("tls", &[2, 3])]).unwrap();
        assert_ne!(a, c);
        let d = report_data_for_keys(&[8u8; 32], &[("bls", &[1, 2]), ("tls", &[3])]).unwrap();
        assert_ne!(a, d);
    }

    #[test]
    fn binding_known_answer() {
        // Recomputed by hand: SHA-512 of the documented encoding with only the node key.
        let node = [0u8; 32];
        let mut enc = alloc::vec::Vec::new();
        enc.extend_from_slice(b"cairn/snp-report-data/v1");
        enc.extend_from_slice(&1u32.to_be_bytes());
        enc.extend_from_slice(&20u32.to_be_bytes());
        enc.extend_from_slice(b"node_signing_ed25519");
        enc.extend_from_slice(&32u32.to_be_bytes());
        enc.extend_from_slice(&node);
        let want: [u8; 64] = Sha512::digest(&enc).into();
        assert_eq!(report_data_for_keys(&node, &[]).unwrap(), want);
    }

    #[test]
    fn binding_errors() {
        let node = [0u8; 32];
        assert_eq!(
            report_data_for_keys(&node, &[(NODE_SIGNING_KEY_LABEL, &[1])]),
            Err(BindingError::DuplicateLabel)
        );
        assert_eq!(
            report_data_for_keys(&node, &[("x", &[0u8; 5000])]),
            Err(BindingError::TooLong)
        );
        let labels: alloc::vec::Vec<alloc::string::String> = (0..MAX_BOUND_KEYS)
            .map(|i| alloc::format!("k{i}"))
            .collect();
        let many: alloc::vec::Vec<(&str, &[u8])> =
            labels.iter().map(|l| (l.as_str(), &[1u8][..])).collect();
        assert_eq!(
            report_data_for_keys(&node, &many),
            Err(BindingError::TooManyKeys)
        );
    }
}
