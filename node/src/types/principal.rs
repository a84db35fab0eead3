//! Principals: the IC's identifiers for users, canisters, nodes and subnets.
//!
//! A principal is 0 to 29 bytes; its last byte names its class (IC interface spec, §Principals;
//! `../shared/reference/ic-interface.md` §1.6). The textual form is
//! `Grouped5(lower(Base32_nopad(CRC32_BE(bytes) ‖ bytes)))`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use sha2::{Digest, Sha224};

/// Longest principal, in bytes.
pub const PRINCIPAL_BYTES_MAX: usize = 29;

const CLASS_OPAQUE: u8 = 0x01;
const CLASS_SELF_AUTHENTICATING: u8 = 0x02;
const CLASS_ANONYMOUS: u8 = 0x04;

/// An IC principal, stored inline (no allocation) so ids are cheap to copy and compare.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal {
    len: u8,
    bytes: [u8; PRINCIPAL_BYTES_MAX],
}

/// Why bytes or text are not a principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrincipalError {
    /// More than 29 bytes.
    TooLong,
    /// The text has a character outside base32's alphabet, or a dash out of place.
    BadText,
    /// The text decodes, but its CRC32 does not match its bytes.
    BadChecksum,
}

impl fmt::Display for PrincipalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrincipalError::TooLong => "principal longer than 29 bytes",
            PrincipalError::BadText => "malformed principal text",
            PrincipalError::BadChecksum => "principal text checksum mismatch",
        })
    }
}

impl Principal {
    /// The management canister `aaaaa-aa`: the empty principal.
    pub const MANAGEMENT: Principal = Principal {
        len: 0,
        bytes: [0; PRINCIPAL_BYTES_MAX],
    };

    /// The anonymous principal `2vxsx-fae`.
    pub const ANONYMOUS: Principal = {
        let mut bytes = [0; PRINCIPAL_BYTES_MAX];
        bytes[0] = CLASS_ANONYMOUS;
        Principal { len: 1, bytes }
    };

    /// A principal from raw bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Principal, PrincipalError> {
        if bytes.len() > PRINCIPAL_BYTES_MAX {
            return Err(PrincipalError::TooLong);
        }
        let mut p = Principal::MANAGEMENT;
        p.len = bytes.len() as u8;
        p.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(p)
    }

    /// The self-authenticating id of a DER-encoded public key: `SHA-224(der) ‖ 0x02`.
    /// Node ids, user ids and the root subnet id are all of this class.
    pub fn self_authenticating(der_public_key: &[u8]) -> Principal {
        let digest = Sha224::digest(der_public_key);
        let mut p = Principal::MANAGEMENT;
        p.bytes[..28].copy_from_slice(&digest);
        p.bytes[28] = CLASS_SELF_AUTHENTICATING;
        p.len = 29;
        p
    }

    /// The id of the canister with index `index`: `u64_BE ‖ 0x01 0x01`, as the IC allocates them.
    pub fn from_canister_index(index: u64) -> Principal {
        let mut p = Principal::MANAGEMENT;
        p.bytes[..8].copy_from_slice(&index.to_be_bytes());
        p.bytes[8] = CLASS_OPAQUE;
        p.bytes[9] = CLASS_OPAQUE;
        p.len = 10;
        p
    }

    /// The canister index if this is an IC canister id (`u64_BE ‖ 0x01 0x01`).
    pub fn canister_index(&self) -> Option<u64> {
        let b = self.as_slice();
        if b.len() != 10 || b[8] != CLASS_OPAQUE || b[9] != CLASS_OPAQUE {
            return None;
        }
        let mut be = [0u8; 8];
        be.copy_from_slice(&b[..8]);
        Some(u64::from_be_bytes(be))
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn to_vec(&self) -> Vec<u8> {
        self.as_slice().to_vec()
    }

    pub fn is_anonymous(&self) -> bool {
        self.as_slice() == [CLASS_ANONYMOUS]
    }

    pub fn is_management(&self) -> bool {
        self.len == 0
    }

    /// Parses the textual form, checking grouping and checksum.
    pub fn from_text(text: &str) -> Result<Principal, PrincipalError> {
        let mut raw = Vec::with_capacity(text.len());
        for (i, c) in text.bytes().enumerate() {
            // A dash stands after every group of five characters, and nowhere else.
            if (i + 1) % 6 == 0 {
                if c != b'-' {
                    return Err(PrincipalError::BadText);
                }
                continue;
            }
            raw.push(c);
        }
        if text.ends_with('-') {
            return Err(PrincipalError::BadText);
        }
        let decoded = base32_decode(&raw).ok_or(PrincipalError::BadText)?;
        if decoded.len() < 4 {
            return Err(PrincipalError::BadText);
        }
        let (crc, bytes) = decoded.split_at(4);
        let p = Principal::from_slice(bytes)?;
        if crc != crc32(bytes).to_be_bytes() {
            return Err(PrincipalError::BadChecksum);
        }
        // Reject non-canonical encodings (stray padding bits, upper case): one text per principal.
        if p.to_text() != text {
            return Err(PrincipalError::BadText);
        }
        Ok(p)
    }

    /// The textual form, e.g. `ryjl3-tyaaa-aaaaa-aaaba-cai`.
    pub fn to_text(&self) -> String {
        let mut data = Vec::with_capacity(4 + self.len as usize);
        data.extend_from_slice(&crc32(self.as_slice()).to_be_bytes());
        data.extend_from_slice(self.as_slice());
        let plain = base32_encode(&data);
        let mut out = String::with_capacity(plain.len() + plain.len() / 5);
        for (i, c) in plain.chars().enumerate() {
            if i > 0 && i % 5 == 0 {
                out.push('-');
            }
            out.push(c);
        }
        out
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({})", self.to_text())
    }
}

impl serde::Serialize for Principal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_slice())
    }
}

impl<'de> serde::Deserialize<'de> for Principal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Principal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("at most 29 bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Principal, E> {
                Principal::from_slice(v).map_err(E::custom)
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

const BASE32_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32_ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32_ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base32_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &c in text {
        let value = BASE32_ALPHABET.iter().position(|&a| a == c)? as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as the principal checksum uses.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
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

    /// Every vector of `ic-spec-vectors/principal_text.json` round-trips.
    #[test]
    fn spec_vectors() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/testdata/ic-spec-vectors/principal_text.json"
        ))
        .expect("shared testdata");
        // The file is small and flat: pull out each "bytes"/"text" pair without a JSON crate.
        let mut count = 0;
        let mut rest = text.as_str();
        while let Some(i) = rest.find("\"bytes\": \"") {
            rest = &rest[i + 10..];
            let bytes = &rest[..rest.find('"').unwrap()];
            let j = rest.find("\"text\": \"").unwrap();
            rest = &rest[j + 9..];
            let want = &rest[..rest.find('"').unwrap()];
            let p = Principal::from_slice(&hex(bytes)).unwrap();
            assert_eq!(p.to_text(), want);
            assert_eq!(Principal::from_text(want).unwrap(), p);
            count += 1;
        }
        assert!(count >= 6, "found {count} vectors");
    }

    #[test]
    fn crc_of_spec_example() {
        assert_eq!(crc32(&hex("abcd01")), 0x233f_f206);
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(
            Principal::from_text("em77e-bvlzu-ab"),
            Err(PrincipalError::BadChecksum)
        );
        assert_eq!(
            Principal::from_text("em77ebvlzuaq"),
            Err(PrincipalError::BadText)
        );
        assert_eq!(
            Principal::from_text("EM77E-BVLZU-AQ"),
            Err(PrincipalError::BadText)
        );
        assert_eq!(
            Principal::from_text("aaaaa-aa-"),
            Err(PrincipalError::BadText)
        );
        assert_eq!(Principal::from_text(""), Err(PrincipalError::BadText));
    }

    #[test]
    fn classes() {
        assert_eq!(Principal::ANONYMOUS.to_text(), "2vxsx-fae");
        assert_eq!(Principal::MANAGEMENT.to_text(), "aaaaa-aa");
        let ledger = Principal::from_canister_index(2);
        assert_eq!(ledger.to_text(), "ryjl3-tyaaa-aaaaa-aaaba-cai");
        assert_eq!(ledger.canister_index(), Some(2));
        assert_eq!(Principal::ANONYMOUS.canister_index(), None);
    }

    /// The mainnet root key's self-authenticating id is the NNS subnet id (reference §2.3).
    #[test]
    fn root_subnet_id() {
        let der = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/testdata/ic-certificates/ic_root_key_mainnet.der"
        ))
        .expect("shared testdata");
        assert_eq!(
            Principal::self_authenticating(&der).to_text(),
            "tdb26-jop6k-aogll-7ltgs-eruif-6kk7m-qpktf-gdiqx-mxtrf-vb5e6-eqe"
        );
    }
}
