//! AMD root (ARK) and intermediate (ASK, ASVK) certificates pinned into the binary.
//!
//! These are public AMD certificates, kept as data in `roots/` (DER). Their SHA-256
//! fingerprints match AMD's KDS and the copies in virtee/sev (`src/certs/snp/builtin/`) and
//! google/go-sev-guest (`verify/trust/`); `../shared/testdata/sev-snp/SOURCES.md` records the
//! provenance. Only the ARKs are trust anchors: every ASK/ASVK is re-verified against its ARK
//! on each use, so they are here for convenience (a node need not fetch them from the KDS).

use alloc::vec::Vec;

use super::cert::{AmdCert, CertError};

/// ARK-Milan, self-signed, SHA-256 `69d063b45344d26a…`.
pub const ARK_MILAN_DER: &[u8] = include_bytes!("roots/ark_milan.der");
/// ARK-Genoa, self-signed, SHA-256 `4c6598d19c18719c…`.
pub const ARK_GENOA_DER: &[u8] = include_bytes!("roots/ark_genoa.der");
/// ARK-Turin, self-signed, SHA-256 `1f084161a44bb6d9…`.
pub const ARK_TURIN_DER: &[u8] = include_bytes!("roots/ark_turin.der");
/// SEV-Milan ASK (issues VCEKs), SHA-256 `67d303bd3905fd38…`.
pub const ASK_MILAN_DER: &[u8] = include_bytes!("roots/ask_milan.der");
/// SEV-Genoa ASK, SHA-256 `5464738c1546aed5…`.
pub const ASK_GENOA_DER: &[u8] = include_bytes!("roots/ask_genoa.der");
/// SEV-Turin ASK, SHA-256 `5b77ef5fe7a7a004…`.
pub const ASK_TURIN_DER: &[u8] = include_bytes!("roots/ask_turin.der");
/// SEV-VLEK-Milan ASVK (issues VLEKs), SHA-256 `c5e081f59b7efab1…`.
pub const ASVK_MILAN_DER: &[u8] = include_bytes!("roots/asvk_milan.der");
/// SEV-VLEK-Genoa ASVK, SHA-256 `197e610743a917d6…`.
pub const ASVK_GENOA_DER: &[u8] = include_bytes!("roots/asvk_genoa.der");
/// SEV-VLEK-Turin ASVK, SHA-256 `104e10a8bd060a3c…`.
pub const ASVK_TURIN_DER: &[u8] = include_bytes!("roots/asvk_turin.der");

/// The pinned ARKs: the only roots a verdict calls "AMD".
pub const PINNED_ARKS_DER: [&[u8]; 3] = [ARK_MILAN_DER, ARK_GENOA_DER, ARK_TURIN_DER];

/// The pinned intermediates.
pub const PINNED_INTERMEDIATES_DER: [&[u8]; 6] = [
    ASK_MILAN_DER,
    ASK_GENOA_DER,
    ASK_TURIN_DER,
    ASVK_MILAN_DER,
    ASVK_GENOA_DER,
    ASVK_TURIN_DER,
];

/// A set of roots (self-issued certificates) and intermediates a leaf may chain to.
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    roots: Vec<AmdCert>,
    intermediates: Vec<AmdCert>,
}

impl TrustAnchors {
    /// AMD's Milan, Genoa and Turin ARKs with their ASKs and ASVKs.
    pub fn pinned_amd() -> Result<TrustAnchors, CertError> {
        let certs = PINNED_ARKS_DER
            .iter()
            .chain(PINNED_INTERMEDIATES_DER.iter())
            .map(|der| AmdCert::from_der(der))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustAnchors::from_certs(certs))
    }

    /// Sorts the given certificates into roots (self-issued) and intermediates.
    pub fn from_certs(certs: Vec<AmdCert>) -> TrustAnchors {
        let (roots, intermediates) = certs.into_iter().partition(AmdCert::is_self_issued);
        TrustAnchors {
            roots,
            intermediates,
        }
    }

    /// The root certificates.
    pub fn roots(&self) -> &[AmdCert] {
        &self.roots
    }

    /// The intermediate certificates.
    pub fn intermediates(&self) -> &[AmdCert] {
        &self.intermediates
    }

    /// The intermediate named as `leaf`'s issuer, else the first intermediate (so that a
    /// mismatched chain is still checked, and fails, rather than silently skipped).
    pub fn intermediate_for(&self, leaf: &AmdCert) -> Option<(&AmdCert, bool)> {
        match self.intermediates.iter().find(|c| leaf.names_issuer(c)) {
            Some(c) => Some((c, true)),
            None => self.intermediates.first().map(|c| (c, false)),
        }
    }

    /// The root named as `cert`'s issuer, else the first root.
    pub fn root_for(&self, cert: &AmdCert) -> Option<(&AmdCert, bool)> {
        match self.roots.iter().find(|c| cert.names_issuer(c)) {
            Some(c) => Some((c, true)),
            None => self.roots.first().map(|c| (c, false)),
        }
    }
}

/// Whether `cert` is byte for byte one of the pinned AMD ARKs.
pub fn is_pinned_ark(cert: &AmdCert) -> bool {
    PINNED_ARKS_DER.contains(&cert.der())
}
