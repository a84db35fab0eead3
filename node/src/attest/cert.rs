//! AMD SEV-SNP certificates: the ARK (root), ASK/ASVK (intermediate) and VCEK/VLEK (leaf).
//!
//! All three are X.509 v3 certificates signed with RSASSA-PSS, SHA-384, MGF1-SHA-384 and a
//! 48-byte salt (AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface
//! Specification" #57230, §"Certificate signing"). The VCEK/VLEK carries an ECDSA P-384 public
//! key and AMD extensions under `1.3.6.1.4.1.3704.1`:
//!
//! | OID suffix | content                                  | DER type inside extnValue |
//! |------------|------------------------------------------|---------------------------|
//! | `.1`       | structVersion                            | INTEGER                   |
//! | `.2`       | productName (`Milan-B0`, `Genoa`, …)     | IA5String                 |
//! | `.3.1`     | blSPL                                    | INTEGER                   |
//! | `.3.2`     | teeSPL                                   | INTEGER                   |
//! | `.3.3`     | snpSPL                                   | INTEGER                   |
//! | `.3.8`     | ucodeSPL                                 | INTEGER                   |
//! | `.3.9`     | fmcSPL (Turin)                           | INTEGER                   |
//! | `.4`       | hwID (64 bytes; 8 on Turin) — VCEK only  | raw bytes (some tools wrap them in an OCTET STRING) |
//! | `.5`       | CSP id — VLEK only                       | IA5String                 |
//!
//! Signatures are checked over the certificate's own `tbsCertificate` bytes as they appear in
//! the input (never a re-encoding), so any change to a signed byte is caught.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use der::asn1::{Ia5StringRef, ObjectIdentifier, UintRef};
use der::{Decode, Sequence};
use rsa::signature::Verifier;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;

/// RSASSA-PSS (RFC 8017 / RFC 4055).
const OID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
/// MGF1 (RFC 8017).
const OID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
/// SHA-384 (NIST).
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
/// rsaEncryption public keys.
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// id-ecPublicKey (RFC 5480).
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp384r1 (RFC 5480).
const OID_SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

const OID_AMD_PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
const OID_AMD_BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const OID_AMD_TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const OID_AMD_SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const OID_AMD_UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
const OID_AMD_FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
const OID_AMD_HWID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
const OID_AMD_CSP_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.5");

/// The PSS salt length AMD uses (bytes; equal to the SHA-384 output).
pub const AMD_PSS_SALT_BYTES: usize = 48;
/// Largest certificate accepted, in bytes (AMD's are under 2 KiB).
pub const MAX_CERT_BYTES: usize = 16 * 1024;
/// Largest RSA modulus accepted, in bits (AMD's ARK/ASK keys are 4096-bit).
pub const MAX_RSA_MODULUS_BITS: u32 = 4096;

/// Why a certificate could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertError {
    /// The input is longer than [`MAX_CERT_BYTES`].
    TooLarge {
        /// Its length.
        got_bytes: usize,
    },
    /// The DER does not decode as an X.509 certificate.
    Der(String),
    /// The signature algorithm is not RSASSA-PSS/SHA-384/MGF1-SHA-384/salt 48.
    UnexpectedSignatureAlgorithm(String),
    /// The issuer's key is not a usable RSA key.
    BadIssuerKey(String),
    /// The signature does not verify under the issuer's key.
    BadSignature,
    /// The subject key is not an ECDSA P-384 key.
    NotP384Key,
    /// An AMD extension has an unexpected encoding.
    BadExtension(&'static str),
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::TooLarge { got_bytes } => {
                write!(
                    f,
                    "certificate of {got_bytes} bytes exceeds {MAX_CERT_BYTES}"
                )
            }
            CertError::Der(e) => write!(f, "not a DER X.509 certificate: {e}"),
            CertError::UnexpectedSignatureAlgorithm(e) => {
                write!(f, "signature algorithm is not RSA-PSS/SHA-384/salt 48: {e}")
            }
            CertError::BadIssuerKey(e) => write!(f, "issuer key is not a usable RSA key: {e}"),
            CertError::BadSignature => f.write_str("RSA-PSS signature does not verify"),
            CertError::NotP384Key => f.write_str("subject key is not an ECDSA P-384 key"),
            CertError::BadExtension(which) => write!(f, "AMD extension {which} is malformed"),
        }
    }
}

fn der_err(e: der::Error) -> CertError {
    CertError::Der(e.to_string())
}

/// RSASSA-PSS-params (RFC 4055 §3.1). The defaults (SHA-1) are never acceptable here, so an
/// absent field simply fails the check.
#[derive(Sequence)]
struct PssParams {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    hash: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    mask_gen: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
    salt_len: Option<u32>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    trailer_field: Option<u32>,
}

/// RSAPublicKey (RFC 8017 A.1.1).
#[derive(Sequence)]
struct RsaPublicKeyDer<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

/// Checks that an AlgorithmIdentifier is exactly AMD's RSA-PSS profile.
fn check_pss_profile(alg: &AlgorithmIdentifierOwned) -> Result<(), CertError> {
    let bad = |why: &str| CertError::UnexpectedSignatureAlgorithm(why.to_string());
    if alg.oid != OID_RSASSA_PSS {
        return Err(bad("not RSASSA-PSS"));
    }
    let params: PssParams = alg
        .parameters
        .as_ref()
        .ok_or_else(|| bad("PSS parameters missing"))?
        .decode_as()
        .map_err(|e: der::Error| bad(&e.to_string()))?;
    let hash_ok = params.hash.as_ref().is_some_and(|h| h.oid == OID_SHA384);
    let mgf_ok = params.mask_gen.as_ref().is_some_and(|m| {
        m.oid == OID_MGF1
            && m.parameters
                .as_ref()
                .and_then(|p| p.decode_as::<AlgorithmIdentifierOwned>().ok())
                .is_some_and(|inner| inner.oid == OID_SHA384)
    });
    let salt_ok = params.salt_len == Some(AMD_PSS_SALT_BYTES as u32);
    let trailer_ok = matches!(params.trailer_field, None | Some(1));
    if !(hash_ok && mgf_ok && salt_ok && trailer_ok) {
        return Err(bad("hash, MGF, salt or trailer differ"));
    }
    Ok(())
}

/// Returns the bytes of the first element inside the outer SEQUENCE of `der` (the
/// `tbsCertificate` TLV of a certificate), exactly as encoded.
fn first_inner_tlv(der: &[u8]) -> Result<&[u8], CertError> {
    let malformed = || CertError::Der("malformed outer SEQUENCE".to_string());
    let (_, outer_header_len) = tlv_header(der).ok_or_else(malformed)?;
    let inner = der.get(outer_header_len..).ok_or_else(malformed)?;
    let (content_len, header_len) = tlv_header(inner).ok_or_else(malformed)?;
    let end = header_len.checked_add(content_len).ok_or_else(malformed)?;
    inner.get(..end).ok_or_else(malformed)
}

/// Parses a DER tag + definite length; returns (content length, header length).
fn tlv_header(bytes: &[u8]) -> Option<(usize, usize)> {
    let first_len = *bytes.get(1)?;
    if first_len < 0x80 {
        return Some((usize::from(first_len), 2));
    }
    let count = usize::from(first_len & 0x7F);
    if count == 0 || count > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..count {
        len = (len << 8) | usize::from(*bytes.get(2 + i)?);
    }
    Some((len, 2 + count))
}

/// The AMD values a VCEK or VLEK certifies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AmdExtensions {
    /// productName (`Milan-B0`, `Genoa`, `Turin`, …).
    pub product_name: Option<String>,
    /// blSPL.
    pub bl_spl: Option<u8>,
    /// teeSPL.
    pub tee_spl: Option<u8>,
    /// snpSPL.
    pub snp_spl: Option<u8>,
    /// ucodeSPL.
    pub ucode_spl: Option<u8>,
    /// fmcSPL (Turin only).
    pub fmc_spl: Option<u8>,
    /// hwID: the chip id (64 bytes; 8 bytes on Turin). VCEK only.
    pub hwid: Option<Vec<u8>>,
    /// The cloud provider a VLEK was issued to. VLEK only.
    pub csp_id: Option<String>,
}

/// A parsed AMD certificate, keeping its DER so signatures are checked over the input bytes.
#[derive(Clone, Debug)]
pub struct AmdCert {
    der: Vec<u8>,
    cert: Certificate,
}

impl PartialEq for AmdCert {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}
impl Eq for AmdCert {}

impl AmdCert {
    /// Parses one DER certificate (the whole input must be that certificate).
    pub fn from_der(der: &[u8]) -> Result<AmdCert, CertError> {
        if der.len() > MAX_CERT_BYTES {
            return Err(CertError::TooLarge {
                got_bytes: der.len(),
            });
        }
        let cert = Certificate::from_der(der).map_err(der_err)?;
        // Make sure the TBS bytes are reachable before anyone relies on them.
        first_inner_tlv(der)?;
        Ok(AmdCert {
            der: der.to_vec(),
            cert,
        })
    }

    /// Parses every certificate in a PEM text (e.g. `asvk_ark_milan.pem`, ASVK then ARK).
    pub fn from_pem_chain(pem: &[u8]) -> Result<Vec<AmdCert>, CertError> {
        let certs = Certificate::load_pem_chain(pem).map_err(der_err)?;
        certs
            .into_iter()
            .map(|c| {
                let der = der::Encode::to_der(&c).map_err(der_err)?;
                AmdCert::from_der(&der)
            })
            .collect()
    }

    /// The certificate's DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The subject, RFC 4514 form.
    pub fn subject(&self) -> String {
        self.cert.tbs_certificate().subject().to_string()
    }

    /// The issuer, RFC 4514 form.
    pub fn issuer(&self) -> String {
        self.cert.tbs_certificate().issuer().to_string()
    }

    /// The subject's common name, if any.
    pub fn subject_cn(&self) -> Option<String> {
        common_name(self.cert.tbs_certificate().subject())
    }

    /// The issuer's common name, if any.
    pub fn issuer_cn(&self) -> Option<String> {
        common_name(self.cert.tbs_certificate().issuer())
    }

    /// Whether `issuer`'s subject is this certificate's issuer name.
    pub fn names_issuer(&self, issuer: &AmdCert) -> bool {
        self.cert.tbs_certificate().issuer() == issuer.cert.tbs_certificate().subject()
    }

    /// Whether subject and issuer are the same name (a root).
    pub fn is_self_issued(&self) -> bool {
        self.names_issuer(self)
    }

    /// notBefore and notAfter as Unix seconds.
    pub fn validity_unix_s(&self) -> (u64, u64) {
        let v = self.cert.tbs_certificate().validity();
        (
            v.not_before.to_unix_duration().as_secs(),
            v.not_after.to_unix_duration().as_secs(),
        )
    }

    /// Verifies that `issuer`'s RSA key signed this certificate with AMD's PSS profile.
    pub fn verify_signed_by(&self, issuer: &AmdCert) -> Result<(), CertError> {
        check_pss_profile(self.cert.signature_algorithm())?;
        if self.cert.signature_algorithm() != self.cert.tbs_certificate().signature() {
            return Err(CertError::UnexpectedSignatureAlgorithm(
                "outer and TBS algorithms differ".to_string(),
            ));
        }
        let key = issuer.rsa_public_key()?;
        let sig_bytes = self
            .cert
            .signature()
            .as_bytes()
            .ok_or(CertError::BadSignature)?;
        let signature =
            rsa::pss::Signature::try_from(sig_bytes).map_err(|_| CertError::BadSignature)?;
        let verifier =
            rsa::pss::VerifyingKey::<rsa::sha2::Sha384>::new_with_salt_len(key, AMD_PSS_SALT_BYTES);
        let tbs = first_inner_tlv(&self.der)?;
        verifier
            .verify(tbs, &signature)
            .map_err(|_| CertError::BadSignature)
    }

    fn rsa_public_key(&self) -> Result<rsa::PublicKey, CertError> {
        let spki = self.cert.tbs_certificate().subject_public_key_info();
        if spki.algorithm.oid != OID_RSA_ENCRYPTION {
            return Err(CertError::BadIssuerKey(
                "not an rsaEncryption key".to_string(),
            ));
        }
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| CertError::BadIssuerKey("unaligned key bits".to_string()))?;
        let parsed =
            RsaPublicKeyDer::from_der(bits).map_err(|e| CertError::BadIssuerKey(e.to_string()))?;
        let n_bytes = parsed.modulus.as_bytes();
        let modulus_bits = u32::try_from(n_bytes.len().saturating_mul(8)).unwrap_or(u32::MAX);
        if modulus_bits > MAX_RSA_MODULUS_BITS {
            return Err(CertError::BadIssuerKey("modulus too large".to_string()));
        }
        let n = rsa::BoxedUint::from_be_slice_vartime(n_bytes);
        let e = rsa::BoxedUint::from_be_slice_vartime(parsed.public_exponent.as_bytes());
        rsa::PublicKey::new(n, e).map_err(|e| CertError::BadIssuerKey(e.to_string()))
    }

    /// The subject's ECDSA P-384 key (VCEK/VLEK).
    pub fn p384_public_key(&self) -> Result<p384::ecdsa::VerifyingKey, CertError> {
        let spki = self.cert.tbs_certificate().subject_public_key_info();
        let curve: Option<ObjectIdentifier> = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as().ok());
        if spki.algorithm.oid != OID_EC_PUBLIC_KEY || curve != Some(OID_SECP384R1) {
            return Err(CertError::NotP384Key);
        }
        let point = spki
            .subject_public_key
            .as_bytes()
            .ok_or(CertError::NotP384Key)?;
        p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| CertError::NotP384Key)
    }

    /// The AMD extensions of a VCEK/VLEK (absent ones are `None`).
    pub fn amd_extensions(&self) -> Result<AmdExtensions, CertError> {
        let mut out = AmdExtensions::default();
        let Some(exts) = self.cert.tbs_certificate().extensions() else {
            return Ok(out);
        };
        for ext in exts.iter() {
            let value = ext.extn_value.as_bytes();
            let spl = |which| decode_spl(value).ok_or(CertError::BadExtension(which));
            match ext.extn_id {
                OID_AMD_PRODUCT_NAME => out.product_name = Some(decode_ia5(value, "productName")?),
                OID_AMD_BL_SPL => out.bl_spl = Some(spl("blSPL")?),
                OID_AMD_TEE_SPL => out.tee_spl = Some(spl("teeSPL")?),
                OID_AMD_SNP_SPL => out.snp_spl = Some(spl("snpSPL")?),
                OID_AMD_UCODE_SPL => out.ucode_spl = Some(spl("ucodeSPL")?),
                OID_AMD_FMC_SPL => out.fmc_spl = Some(spl("fmcSPL")?),
                OID_AMD_HWID => out.hwid = Some(decode_hwid(value)),
                OID_AMD_CSP_ID => out.csp_id = Some(decode_ia5(value, "cspId")?),
                _ => {}
            }
        }
        Ok(out)
    }
}

fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    name.common_name()
        .ok()
        .flatten()
        .map(|cn| cn.value().into_owned())
}

/// An SPL extension: a DER INTEGER in 0..=255.
fn decode_spl(value: &[u8]) -> Option<u8> {
    let n = u64::from_der(value).ok()?;
    u8::try_from(n).ok()
}

fn decode_ia5(value: &[u8], which: &'static str) -> Result<String, CertError> {
    Ia5StringRef::from_der(value)
        .map(|s| s.as_str().to_string())
        .map_err(|_| CertError::BadExtension(which))
}

/// The hwID: AMD's KDS puts the raw chip id in extnValue; some tools wrap it once more in an
/// OCTET STRING. Both forms are read; the chip-id comparison then decides.
fn decode_hwid(value: &[u8]) -> Vec<u8> {
    match der::asn1::OctetString::from_der(value) {
        Ok(inner) if matches!(inner.as_bytes().len(), 8 | 64) => inner.as_bytes().to_vec(),
        _ => value.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_header_bounds() {
        assert_eq!(tlv_header(&[0x30, 0x05]), Some((5, 2)));
        assert_eq!(tlv_header(&[0x30, 0x82, 0x01, 0x00]), Some((256, 4)));
        assert_eq!(tlv_header(&[0x30, 0x82, 0x01]), None);
        assert_eq!(tlv_header(&[0x30, 0x80]), None);
        assert_eq!(tlv_header(&[0x30]), None);
        assert!(first_inner_tlv(&[0x30, 0x04, 0x30, 0x09, 0, 0]).is_err());
    }

    #[test]
    fn spl_values() {
        assert_eq!(decode_spl(&[0x02, 0x01, 0x73]), Some(115));
        assert_eq!(decode_spl(&[0x02, 0x02, 0x00, 0xDB]), Some(219));
        assert_eq!(decode_spl(&[0x02, 0x02, 0x01, 0x00]), None);
        assert_eq!(decode_spl(&[0x04, 0x01, 0x01]), None);
    }
}
