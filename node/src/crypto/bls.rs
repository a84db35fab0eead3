//! BLS12-381 signatures in the IC's "minimal-signature-size" variant: signatures in G1
//! (48 bytes compressed), public keys in G2 (96 bytes compressed), hash-to-curve suite
//! `BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_NUL_` (reference §2.3).
//!
//! This is the primitive under certificates (the subnet key), notarization and finalization
//! (multi-signatures) and the random beacon (threshold signatures); the protocols build on it.

use blst::min_sig as bls;
use blst::BLST_ERROR;
use core::fmt;

/// The hash-to-curve domain separation tag the IC uses.
pub const DST: &[u8] = b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_NUL_";

/// Bytes of a compressed G1 signature.
pub const SIGNATURE_BYTES: usize = 48;
/// Bytes of a compressed G2 public key.
pub const PUBLIC_KEY_BYTES: usize = 96;

/// DER prefix of a BLS12-381 public key (OIDs 1.3.6.1.4.1.44668.5.3.1.2.1 and …5.3.2.1).
pub const DER_PREFIX: [u8; 37] = [
    0x30, 0x81, 0x82, 0x30, 0x1d, 0x06, 0x0d, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05,
    0x03, 0x01, 0x02, 0x01, 0x06, 0x0c, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05, 0x03,
    0x02, 0x01, 0x03, 0x61, 0x00,
];

/// Why a BLS key or signature was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlsError {
    /// The bytes are not a point of the right group (or not in its prime-order subgroup).
    BadEncoding,
    /// The DER wrapper is not the IC's BLS12-381 key prefix.
    BadDer,
    /// The signature does not verify.
    Invalid,
}

impl fmt::Display for BlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlsError::BadEncoding => "malformed BLS12-381 point",
            BlsError::BadDer => "not a DER-encoded BLS12-381 public key",
            BlsError::Invalid => "BLS signature does not verify",
        })
    }
}

/// A secret key (a scalar).
#[derive(Clone)]
pub struct SecretKey(bls::SecretKey);

/// A public key in G2.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; PUBLIC_KEY_BYTES]);

/// A signature in G1.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; SIGNATURE_BYTES]);

impl SecretKey {
    /// Derives a key from at least 32 bytes of key material (IKM), per the BLS KeyGen.
    pub fn from_ikm(ikm: &[u8; 32]) -> SecretKey {
        // KeyGen fails only for IKM shorter than 32 bytes, which the type rules out.
        SecretKey(bls::SecretKey::key_gen(ikm, &[]).expect("32-byte IKM"))
    }

    /// A key from its 32-byte big-endian scalar.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<SecretKey, BlsError> {
        bls::SecretKey::from_bytes(bytes)
            .map(SecretKey)
            .map_err(|_| BlsError::BadEncoding)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.sk_to_pk().compress())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message, DST, &[]).compress())
    }

    /// The underlying blst key, for the threshold and multi-signature schemes.
    pub fn as_blst(&self) -> &bls::SecretKey {
        &self.0
    }
}

impl PublicKey {
    /// Bytes to key; the point must decode and lie in G2's prime-order subgroup.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, BlsError> {
        let key = bls::PublicKey::key_validate(bytes).map_err(|_| BlsError::BadEncoding)?;
        Ok(PublicKey(key.compress()))
    }

    /// Strips and checks the IC's DER wrapper (133 bytes in all).
    pub fn from_der(der: &[u8]) -> Result<PublicKey, BlsError> {
        match der.strip_prefix(&DER_PREFIX[..]) {
            Some(raw) if raw.len() == PUBLIC_KEY_BYTES => PublicKey::from_bytes(raw),
            _ => Err(BlsError::BadDer),
        }
    }

    pub fn to_der(&self) -> [u8; 133] {
        let mut der = [0u8; 133];
        der[..37].copy_from_slice(&DER_PREFIX);
        der[37..].copy_from_slice(&self.0);
        der
    }

    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_BYTES] {
        &self.0
    }

    /// Checks `signature` on `message`: `e(sig, g2) == e(H(msg), pk)`.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), BlsError> {
        let key = bls::PublicKey::from_bytes(&self.0).map_err(|_| BlsError::BadEncoding)?;
        let sig =
            bls::Signature::sig_validate(&signature.0, true).map_err(|_| BlsError::BadEncoding)?;
        match sig.verify(false, message, DST, &[], &key, false) {
            BLST_ERROR::BLST_SUCCESS => Ok(()),
            _ => Err(BlsError::Invalid),
        }
    }
}

impl Signature {
    /// Bytes to signature. Group membership is checked when verifying.
    pub fn from_bytes(bytes: &[u8]) -> Result<Signature, BlsError> {
        let raw: [u8; SIGNATURE_BYTES] = bytes.try_into().map_err(|_| BlsError::BadEncoding)?;
        Ok(Signature(raw))
    }

    pub fn as_bytes(&self) -> &[u8; SIGNATURE_BYTES] {
        &self.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bls::PublicKey({:02x?}…)", &self.0[..6])
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bls::Signature({:02x?}…)", &self.0[..6])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Pulls the string value of `"key": "…"` out of a flat JSON object.
    fn field<'a>(obj: &'a str, key: &str) -> Option<&'a str> {
        let pat = format!("\"{key}\": ");
        let rest = &obj[obj.find(&pat)? + pat.len()..];
        let rest = rest.trim_start();
        if let Some(s) = rest.strip_prefix('"') {
            Some(&s[..s.find('"')?])
        } else {
            Some(&rest[..rest.find([',', '\n', '}'])?])
        }
    }

    /// Every vector of `ic-spec-vectors/bls12_381_sig.json` gives its `expected` verdict.
    #[test]
    fn spec_vectors() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/testdata/ic-spec-vectors/bls12_381_sig.json"
        ))
        .expect("shared testdata");
        let verify = &text[text.find("\"verify\"").unwrap()..];
        let mut count = 0;
        for obj in verify.split('{').skip(1) {
            let (Some(expected), Some(sig), Some(msg), Some(key)) = (
                field(obj, "expected"),
                field(obj, "sig"),
                field(obj, "msg"),
                field(obj, "key"),
            ) else {
                continue;
            };
            let expected = expected.trim() == "true";
            let verdict = PublicKey::from_bytes(&hex(key)).and_then(|pk| {
                Signature::from_bytes(&hex(sig)).and_then(|s| pk.verify(&hex(msg), &s))
            });
            assert_eq!(verdict.is_ok(), expected, "vector {obj}");
            count += 1;
        }
        assert!(count >= 4, "found {count} vectors");
    }

    #[test]
    fn sign_verify_round_trip() {
        let sk = SecretKey::from_ikm(&[7; 32]);
        let pk = sk.public_key();
        let sig = sk.sign(b"hello");
        assert_eq!(pk.verify(b"hello", &sig), Ok(()));
        assert_eq!(pk.verify(b"hellp", &sig), Err(BlsError::Invalid));
        let der = pk.to_der();
        assert_eq!(PublicKey::from_der(&der), Ok(pk));
        assert_eq!(PublicKey::from_der(&der[1..]), Err(BlsError::BadDer));
    }
}
