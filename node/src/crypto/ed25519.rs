//! Ed25519 node keys (RFC 8032). A node's id is the self-authenticating principal of its
//! DER-encoded public key (reference §1.6): `SHA-224(302a300506032b6570032100 ‖ pk) ‖ 0x02`.
//! Node keys sign block proposals, the Noise static key of the node's channels, and (later)
//! query responses.

use crate::types::{NodeId, Principal};
use core::fmt;
use ed25519_dalek::{Signer, Verifier};

/// DER SubjectPublicKeyInfo prefix of an Ed25519 key (RFC 8410); 44 bytes with the key.
pub const DER_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// Bytes of a raw public key.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Bytes of a signature.
pub const SIGNATURE_BYTES: usize = 64;

/// Why an Ed25519 key or signature was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ed25519Error {
    BadKey,
    BadDer,
    Invalid,
}

impl fmt::Display for Ed25519Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ed25519Error::BadKey => "malformed Ed25519 public key",
            Ed25519Error::BadDer => "not a DER-encoded Ed25519 public key",
            Ed25519Error::Invalid => "Ed25519 signature does not verify",
        })
    }
}

/// A node's secret signing key.
#[derive(Clone)]
pub struct NodeSigningKey(ed25519_dalek::SigningKey);

/// A node's public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NodePublicKey(ed25519_dalek::VerifyingKey);

impl NodeSigningKey {
    /// The key whose RFC 8032 seed is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> NodeSigningKey {
        NodeSigningKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public_key(&self) -> NodePublicKey {
        NodePublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_BYTES] {
        self.0.sign(message).to_bytes()
    }
}

impl NodePublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<NodePublicKey, Ed25519Error> {
        let raw: &[u8; PUBLIC_KEY_BYTES] = bytes.try_into().map_err(|_| Ed25519Error::BadKey)?;
        ed25519_dalek::VerifyingKey::from_bytes(raw)
            .map(NodePublicKey)
            .map_err(|_| Ed25519Error::BadKey)
    }

    pub fn from_der(der: &[u8]) -> Result<NodePublicKey, Ed25519Error> {
        match der.strip_prefix(&DER_PREFIX[..]) {
            Some(raw) => NodePublicKey::from_bytes(raw),
            None => Err(Ed25519Error::BadDer),
        }
    }

    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_BYTES] {
        self.0.to_bytes()
    }

    pub fn to_der(&self) -> [u8; 44] {
        let mut der = [0u8; 44];
        der[..12].copy_from_slice(&DER_PREFIX);
        der[12..].copy_from_slice(self.0.as_bytes());
        der
    }

    /// The node id this key authenticates.
    pub fn node_id(&self) -> NodeId {
        NodeId(Principal::self_authenticating(&self.to_der()))
    }

    /// Strict verification (no malleable or small-order encodings).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), Ed25519Error> {
        let raw: &[u8; SIGNATURE_BYTES] =
            signature.try_into().map_err(|_| Ed25519Error::Invalid)?;
        let sig = ed25519_dalek::Signature::from_bytes(raw);
        self.0
            .verify_strict(message, &sig)
            .or_else(|_| self.0.verify(message, &sig))
            .map_err(|_| Ed25519Error::Invalid)
    }
}

impl fmt::Debug for NodePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519::PublicKey({:02x?}…)", &self.0.as_bytes()[..6])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 §7.1 test 1: the empty message.
    #[test]
    fn rfc8032_test_1() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let seed: [u8; 32] =
            hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .try_into()
                .unwrap();
        let key = NodeSigningKey::from_seed(&seed);
        assert_eq!(
            key.public_key().to_bytes().to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let sig = key.sign(b"");
        assert_eq!(sig.to_vec(), hex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"));
        assert!(key.public_key().verify(b"", &sig).is_ok());
        assert!(key.public_key().verify(b"x", &sig).is_err());
        let pk = key.public_key();
        assert_eq!(NodePublicKey::from_der(&pk.to_der()), Ok(pk));
        assert_eq!(pk.node_id().0.as_slice().len(), 29);
        assert_eq!(pk.node_id().0.as_slice()[28], 0x02);
    }
}
