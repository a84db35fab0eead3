//! The SEV-SNP attestation report: a typed view of the 1184 bytes the AMD secure processor signs.
//!
//! Layout: AMD SEV-SNP Firmware ABI specification #56860, structure `ATTESTATION_REPORT`
//! ("Table 23" in the revision Project Oak's `oak_sev_snp_attestation_report` cites; the table
//! number shifts between revisions, the offsets do not). Parsing is by explicit offsets, every
//! multi-byte integer little-endian, every read bounds-checked by the single length check in
//! [`AttestationReport::parse`].
//!
//! ```text
//!  off   size  field                      off   size  field
//!  0x00   4    version (2, 3 or 5)        0x140  32   report_id
//!  0x04   4    guest_svn                  0x160  32   report_id_ma
//!  0x08   8    policy                     0x180   8   reported_tcb
//!  0x10  16    family_id                  0x188   3   cpuid fam/model/step (v3+)
//!  0x20  16    image_id                   0x1A0  64   chip_id
//!  0x30   4    vmpl                       0x1E0   8   committed_tcb
//!  0x34   4    signature_algo (1)         0x1E8   4   current build/minor/major/-
//!  0x38   8    current_tcb                0x1EC   4   committed build/minor/major/-
//!  0x40   8    platform_info              0x1F0   8   launch_tcb
//!  0x48   4    flags (signer info)        0x1F8   8   launch_mit_vector (v5)
//!  0x50  64    report_data                0x200   8   current_mit_vector (v5)
//!  0x90  48    measurement                0x2A0 144   signature R ‖ S (72 B each, LE)
//!  0xC0  32    host_data                  0x330 368   reserved
//!  0xE0  48    id_key_digest
//!  0x110 48    author_key_digest          signed region: [0x000, 0x2A0)
//! ```
//!
//! The TCB_VERSION word has two layouts. Milan and Genoa: bytes `[bl, tee, 0, 0, 0, 0, snp,
//! ucode]`; Turin: `[fmc, bl, tee, snp, 0, 0, 0, ucode]` (ABI #56860 "TCB_VERSION"; Turin is
//! the first product with an FMC SPL). The report itself does not say which layout it uses:
//! the product comes from the certificate chain (or, for v3+, the CPUID fields), so decoding
//! a TCB takes a [`Product`].

use core::fmt;

/// Size of an attestation report in bytes.
pub const REPORT_SIZE_BYTES: usize = 0x4A0;
/// End of the region covered by the signature (bytes `[0, SIGNED_REGION_END_BYTES)`).
pub const SIGNED_REGION_END_BYTES: usize = 0x2A0;
/// Size of one signature component field (R or S): 72 bytes, little-endian, top 24 bytes zero.
pub const SIGNATURE_COMPONENT_BYTES: usize = 72;
/// Significant bytes of a P-384 signature component.
pub const P384_SCALAR_BYTES: usize = 48;
/// `signature_algo` value for ECDSA P-384 with SHA-384 (ABI #56860 "Signature Algorithms").
pub const SIGNATURE_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Lowest report version this parser understands.
pub const MIN_REPORT_VERSION: u32 = 2;
/// Highest report version this parser understands.
pub const MAX_REPORT_VERSION: u32 = 5;

/// Field offsets (ABI #56860, ATTESTATION_REPORT).
mod off {
    pub const VERSION: usize = 0x00;
    pub const GUEST_SVN: usize = 0x04;
    pub const POLICY: usize = 0x08;
    pub const FAMILY_ID: usize = 0x10;
    pub const IMAGE_ID: usize = 0x20;
    pub const VMPL: usize = 0x30;
    pub const SIGNATURE_ALGO: usize = 0x34;
    pub const CURRENT_TCB: usize = 0x38;
    pub const PLATFORM_INFO: usize = 0x40;
    pub const FLAGS: usize = 0x48;
    pub const REPORT_DATA: usize = 0x50;
    pub const MEASUREMENT: usize = 0x90;
    pub const HOST_DATA: usize = 0xC0;
    pub const ID_KEY_DIGEST: usize = 0xE0;
    pub const AUTHOR_KEY_DIGEST: usize = 0x110;
    pub const REPORT_ID: usize = 0x140;
    pub const REPORT_ID_MA: usize = 0x160;
    pub const REPORTED_TCB: usize = 0x180;
    pub const CPUID_FAM_ID: usize = 0x188;
    pub const CPUID_MOD_ID: usize = 0x189;
    pub const CPUID_STEP: usize = 0x18A;
    pub const CHIP_ID: usize = 0x1A0;
    pub const COMMITTED_TCB: usize = 0x1E0;
    pub const CURRENT_BUILD: usize = 0x1E8;
    pub const COMMITTED_BUILD: usize = 0x1EC;
    pub const LAUNCH_TCB: usize = 0x1F0;
    pub const LAUNCH_MIT_VECTOR: usize = 0x1F8;
    pub const CURRENT_MIT_VECTOR: usize = 0x200;
    pub const SIGNATURE_R: usize = 0x2A0;
    pub const SIGNATURE_S: usize = 0x2E8;
}

/// The AMD EPYC product line a report comes from; it fixes the TCB_VERSION layout and the root
/// certificate (ARK) that anchors the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Product {
    /// 3rd generation EPYC (family 19h, models 00h–0Fh).
    Milan,
    /// 4th generation EPYC (family 19h, models 10h–1Fh and A0h–AFh).
    Genoa,
    /// 5th generation EPYC (family 1Ah).
    Turin,
}

impl Product {
    /// The product whose name appears in an AMD certificate common name (`ARK-Milan`,
    /// `SEV-VLEK-Genoa`, …) or in the VCEK `productName` extension (`Milan-B0`).
    pub fn from_name(name: &str) -> Option<Product> {
        [Product::Milan, Product::Genoa, Product::Turin]
            .into_iter()
            .find(|p| name.contains(p.name()))
    }

    /// The name AMD uses for the product.
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// Whether a CPUID family/model (as carried by v3+ reports) belongs to this product.
    pub fn matches_cpuid(self, family: u8, model: u8) -> bool {
        match self {
            Product::Milan => family == 0x19 && model <= 0x0F,
            Product::Genoa => {
                family == 0x19 && ((0x10..=0x1F).contains(&model) || (0xA0..=0xAF).contains(&model))
            }
            Product::Turin => family == 0x1A,
        }
    }

    /// Whether the TCB_VERSION word uses the Turin layout (with an FMC SPL).
    pub fn has_fmc(self) -> bool {
        self == Product::Turin
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded TCB_VERSION: the security patch level (SPL) of each firmware component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Tcb {
    /// Firmware root of trust (Turin only; `None` on Milan/Genoa).
    pub fmc: Option<u8>,
    /// PSP bootloader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// CPU microcode SPL.
    pub microcode: u8,
}

impl Tcb {
    /// Decodes the raw 64-bit little-endian TCB_VERSION word with the product's layout.
    pub fn decode(raw: u64, product: Product) -> Tcb {
        let b = raw.to_le_bytes();
        if product.has_fmc() {
            Tcb {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            }
        } else {
            Tcb {
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            }
        }
    }

    /// Whether every component of `self` is at least the matching component of `min`
    /// (a missing FMC in `min` imposes nothing).
    pub fn meets(&self, min: &Tcb) -> bool {
        let fmc_ok = match (self.fmc, min.fmc) {
            (_, None) => true,
            (Some(have), Some(need)) => have >= need,
            (None, Some(_)) => false,
        };
        fmc_ok
            && self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
    }
}

impl fmt::Display for Tcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bl={} tee={} snp={} ucode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// The guest policy word (ABI #56860 "Guest Policy" table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestPolicy(pub u64);

impl GuestPolicy {
    /// Bit 16: SMT is allowed.
    pub const SMT_BIT: u64 = 1 << 16;
    /// Bit 17: reserved, must be one.
    pub const RESERVED_ONE_BIT: u64 = 1 << 17;
    /// Bit 18: association with a migration agent is allowed.
    pub const MIGRATE_MA_BIT: u64 = 1 << 18;
    /// Bit 19: debugging is allowed (the hypervisor can read and write guest memory).
    pub const DEBUG_BIT: u64 = 1 << 19;
    /// Bit 20: the guest may run on one socket only.
    pub const SINGLE_SOCKET_BIT: u64 = 1 << 20;

    /// Whether the guest allowed debugging.
    pub fn debug(self) -> bool {
        self.0 & Self::DEBUG_BIT != 0
    }
    /// Whether the guest allowed SMT.
    pub fn smt(self) -> bool {
        self.0 & Self::SMT_BIT != 0
    }
    /// Whether the guest allowed a migration agent.
    pub fn migrate_ma(self) -> bool {
        self.0 & Self::MIGRATE_MA_BIT != 0
    }
    /// Whether the guest is restricted to a single socket.
    pub fn single_socket(self) -> bool {
        self.0 & Self::SINGLE_SOCKET_BIT != 0
    }
    /// The minimum ABI (major, minor) the guest requires.
    pub fn abi(self) -> (u8, u8) {
        (((self.0 >> 8) & 0xFF) as u8, (self.0 & 0xFF) as u8)
    }
}

/// Which key signed the report (flags bits 2..4, ABI #56860 "SIGNING_KEY").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningKey {
    /// The chip's versioned chip endorsement key.
    Vcek,
    /// A versioned loaded endorsement key (issued to a cloud provider).
    Vlek,
    /// No key (7): the report is unsigned.
    None,
    /// A reserved value.
    Reserved(u8),
}

impl fmt::Display for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigningKey::Vcek => f.write_str("VCEK"),
            SigningKey::Vlek => f.write_str("VLEK"),
            SigningKey::None => f.write_str("none"),
            SigningKey::Reserved(v) => write!(f, "reserved({v})"),
        }
    }
}

/// Why a byte string is not an attestation report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportError {
    /// The input is not exactly [`REPORT_SIZE_BYTES`] long.
    WrongLength {
        /// The length given.
        got_bytes: usize,
    },
    /// The version is outside [`MIN_REPORT_VERSION`]..=[`MAX_REPORT_VERSION`].
    UnsupportedVersion(u32),
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportError::WrongLength { got_bytes } => {
                write!(f, "an attestation report is {REPORT_SIZE_BYTES} bytes, got {got_bytes}")
            }
            ReportError::UnsupportedVersion(v) => write!(
                f,
                "report version {v} is not supported (supported: {MIN_REPORT_VERSION}..={MAX_REPORT_VERSION})"
            ),
        }
    }
}

/// A parsed attestation report. It keeps the raw bytes, so the signed region is exactly what
/// the firmware signed.
#[derive(Clone, PartialEq, Eq)]
pub struct AttestationReport {
    raw: [u8; REPORT_SIZE_BYTES],
}

impl fmt::Debug for AttestationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestationReport")
            .field("version", &self.version())
            .field("policy", &self.policy())
            .field("vmpl", &self.vmpl())
            .finish_non_exhaustive()
    }
}

impl AttestationReport {
    /// Parses a report: exactly [`REPORT_SIZE_BYTES`] bytes of a supported version.
    pub fn parse(bytes: &[u8]) -> Result<AttestationReport, ReportError> {
        let raw: [u8; REPORT_SIZE_BYTES] =
            bytes.try_into().map_err(|_| ReportError::WrongLength {
                got_bytes: bytes.len(),
            })?;
        let report = AttestationReport { raw };
        let version = report.version();
        if !(MIN_REPORT_VERSION..=MAX_REPORT_VERSION).contains(&version) {
            return Err(ReportError::UnsupportedVersion(version));
        }
        Ok(report)
    }

    // Every accessor reads inside `raw`, whose length is the constant REPORT_SIZE_BYTES; all
    // offsets are constants below it, so the slicing cannot fail.
    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.raw[at..at + N]);
        out
    }
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.array(at))
    }
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.array(at))
    }

    /// The whole report.
    pub fn as_bytes(&self) -> &[u8; REPORT_SIZE_BYTES] {
        &self.raw
    }
    /// The bytes covered by the signature.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_REGION_END_BYTES]
    }
    /// Report format version.
    pub fn version(&self) -> u32 {
        self.u32_at(off::VERSION)
    }
    /// The guest SVN from the ID block.
    pub fn guest_svn(&self) -> u32 {
        self.u32_at(off::GUEST_SVN)
    }
    /// The guest policy.
    pub fn policy(&self) -> GuestPolicy {
        GuestPolicy(self.u64_at(off::POLICY))
    }
    /// The family id from the ID block.
    pub fn family_id(&self) -> [u8; 16] {
        self.array(off::FAMILY_ID)
    }
    /// The image id from the ID block.
    pub fn image_id(&self) -> [u8; 16] {
        self.array(off::IMAGE_ID)
    }
    /// The VMPL the report was requested from.
    pub fn vmpl(&self) -> u32 {
        self.u32_at(off::VMPL)
    }
    /// The signature algorithm (1 = ECDSA P-384 with SHA-384).
    pub fn signature_algo(&self) -> u32 {
        self.u32_at(off::SIGNATURE_ALGO)
    }
    /// The raw current TCB word.
    pub fn current_tcb_raw(&self) -> u64 {
        self.u64_at(off::CURRENT_TCB)
    }
    /// Platform info flags (SMT enabled, TSME enabled, …).
    pub fn platform_info(&self) -> u64 {
        self.u64_at(off::PLATFORM_INFO)
    }
    /// The raw signer-info flags word.
    pub fn flags(&self) -> u32 {
        self.u32_at(off::FLAGS)
    }
    /// Whether the author key digest is present (flags bit 0).
    pub fn author_key_en(&self) -> bool {
        self.flags() & 1 != 0
    }
    /// Whether chip_id was masked to zero (flags bit 1).
    pub fn mask_chip_id(&self) -> bool {
        self.flags() & 2 != 0
    }
    /// Which key signed the report (flags bits 2..4).
    pub fn signing_key(&self) -> SigningKey {
        match (self.flags() >> 2) & 0b111 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            v => SigningKey::Reserved(v as u8),
        }
    }
    /// The 64 bytes the guest asked to be bound into the report.
    pub fn report_data(&self) -> [u8; 64] {
        self.array(off::REPORT_DATA)
    }
    /// The launch measurement (SHA-384 chain over the launched pages).
    pub fn measurement(&self) -> [u8; 48] {
        self.array(off::MEASUREMENT)
    }
    /// Data the host supplied at launch.
    pub fn host_data(&self) -> [u8; 32] {
        self.array(off::HOST_DATA)
    }
    /// SHA-384 of the ID key.
    pub fn id_key_digest(&self) -> [u8; 48] {
        self.array(off::ID_KEY_DIGEST)
    }
    /// SHA-384 of the author key.
    pub fn author_key_digest(&self) -> [u8; 48] {
        self.array(off::AUTHOR_KEY_DIGEST)
    }
    /// The guest's report id.
    pub fn report_id(&self) -> [u8; 32] {
        self.array(off::REPORT_ID)
    }
    /// The migration agent's report id.
    pub fn report_id_ma(&self) -> [u8; 32] {
        self.array(off::REPORT_ID_MA)
    }
    /// The raw reported TCB word: the TCB the VCEK was derived from.
    pub fn reported_tcb_raw(&self) -> u64 {
        self.u64_at(off::REPORTED_TCB)
    }
    /// The reported TCB decoded with the product's layout.
    pub fn reported_tcb(&self, product: Product) -> Tcb {
        Tcb::decode(self.reported_tcb_raw(), product)
    }
    /// CPUID family, model and stepping (v3+ only).
    pub fn cpuid(&self) -> Option<(u8, u8, u8)> {
        (self.version() >= 3).then(|| {
            (
                self.raw[off::CPUID_FAM_ID],
                self.raw[off::CPUID_MOD_ID],
                self.raw[off::CPUID_STEP],
            )
        })
    }
    /// The chip identifier (zero when masked or when signed by a VLEK).
    pub fn chip_id(&self) -> [u8; 64] {
        self.array(off::CHIP_ID)
    }
    /// The raw committed TCB word.
    pub fn committed_tcb_raw(&self) -> u64 {
        self.u64_at(off::COMMITTED_TCB)
    }
    /// Current firmware version (major, minor, build).
    pub fn current_version(&self) -> (u8, u8, u8) {
        let b = off::CURRENT_BUILD;
        (self.raw[b + 2], self.raw[b + 1], self.raw[b])
    }
    /// Committed firmware version (major, minor, build).
    pub fn committed_version(&self) -> (u8, u8, u8) {
        let b = off::COMMITTED_BUILD;
        (self.raw[b + 2], self.raw[b + 1], self.raw[b])
    }
    /// The raw launch TCB word.
    pub fn launch_tcb_raw(&self) -> u64 {
        self.u64_at(off::LAUNCH_TCB)
    }
    /// Launch and current mitigation vectors (v5+ only).
    pub fn mit_vectors(&self) -> Option<(u64, u64)> {
        (self.version() >= 5).then(|| {
            (
                self.u64_at(off::LAUNCH_MIT_VECTOR),
                self.u64_at(off::CURRENT_MIT_VECTOR),
            )
        })
    }
    /// The signature's R component as the raw 72-byte little-endian field.
    pub fn signature_r_field(&self) -> [u8; SIGNATURE_COMPONENT_BYTES] {
        self.array(off::SIGNATURE_R)
    }
    /// The signature's S component as the raw 72-byte little-endian field.
    pub fn signature_s_field(&self) -> [u8; SIGNATURE_COMPONENT_BYTES] {
        self.array(off::SIGNATURE_S)
    }

    /// The signature as 96 big-endian bytes (R ‖ S), or `None` when a component's padding
    /// (bytes 48..72 of its field) is not zero, i.e. the value is not a P-384 scalar encoding.
    pub fn signature_p384_be(&self) -> Option<[u8; 2 * P384_SCALAR_BYTES]> {
        let mut out = [0u8; 2 * P384_SCALAR_BYTES];
        for (i, field) in [self.signature_r_field(), self.signature_s_field()]
            .iter()
            .enumerate()
        {
            let (value, padding) = field.split_at(P384_SCALAR_BYTES);
            if padding.iter().any(|&b| b != 0) {
                return None;
            }
            let dst = &mut out[i * P384_SCALAR_BYTES..(i + 1) * P384_SCALAR_BYTES];
            for (d, s) in dst.iter_mut().zip(value.iter().rev()) {
                *d = *s;
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(version: u32) -> [u8; REPORT_SIZE_BYTES] {
        let mut raw = [0u8; REPORT_SIZE_BYTES];
        raw[..4].copy_from_slice(&version.to_le_bytes());
        raw
    }

    #[test]
    fn rejects_wrong_length_and_version() {
        assert_eq!(
            AttestationReport::parse(&[0u8; 100]),
            Err(ReportError::WrongLength { got_bytes: 100 })
        );
        assert_eq!(
            AttestationReport::parse(&blank(1)),
            Err(ReportError::UnsupportedVersion(1))
        );
        assert_eq!(
            AttestationReport::parse(&blank(6)),
            Err(ReportError::UnsupportedVersion(6))
        );
        for v in [2, 3, 5] {
            assert!(AttestationReport::parse(&blank(v)).is_ok());
        }
    }

    #[test]
    fn tcb_layouts_differ_between_milan_and_turin() {
        // The Turin sample's raw reported_tcb, 0001000200000047 as bytes.
        let raw = u64::from_le_bytes([0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x47]);
        let turin = Tcb::decode(raw, Product::Turin);
        assert_eq!(
            turin,
            Tcb {
                fmc: Some(0),
                bootloader: 1,
                tee: 0,
                snp: 2,
                microcode: 71
            }
        );
        let misread = Tcb::decode(raw, Product::Milan);
        assert_eq!(
            misread,
            Tcb {
                fmc: None,
                bootloader: 0,
                tee: 1,
                snp: 0,
                microcode: 71
            }
        );
        let milan = u64::from_le_bytes([3, 0, 0, 0, 0, 0, 8, 0x73]);
        assert_eq!(
            Tcb::decode(milan, Product::Genoa),
            Tcb {
                fmc: None,
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115
            }
        );
    }

    #[test]
    fn signature_padding_must_be_zero() {
        let mut raw = blank(2);
        raw[0x2A0] = 0xAB; // least significant byte of R
        raw[0x2E8 + 47] = 0xCD; // most significant byte of S
        let report = AttestationReport::parse(&raw).unwrap();
        let sig = report.signature_p384_be().unwrap();
        assert_eq!(sig[47], 0xAB);
        assert_eq!(sig[48], 0xCD);
        raw[0x2A0 + 50] = 1;
        assert_eq!(
            AttestationReport::parse(&raw).unwrap().signature_p384_be(),
            None
        );
    }

    #[test]
    fn product_from_names_and_cpuid() {
        assert_eq!(Product::from_name("ARK-Milan"), Some(Product::Milan));
        assert_eq!(Product::from_name("SEV-VLEK-Genoa"), Some(Product::Genoa));
        assert_eq!(Product::from_name("Milan-B0"), Some(Product::Milan));
        assert_eq!(Product::from_name("Rome"), None);
        assert!(Product::Genoa.matches_cpuid(0x19, 0x11));
        assert!(!Product::Milan.matches_cpuid(0x19, 0x11));
        assert!(Product::Turin.matches_cpuid(0x1A, 0x02));
    }
}
