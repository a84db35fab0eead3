//! The expected SEV-SNP launch measurement of a QEMU guest booted with OVMF and `-kernel`.
//!
//! When QEMU launches an SNP guest it hands the secure processor, page by page, the firmware
//! image, the pages named by the firmware's SEV metadata, and one VMSA (initial register state)
//! per vCPU. The processor folds each page into the launch digest (ABI #56860, SNP_LAUNCH_UPDATE
//! and the PAGE_INFO structure, "Table 67" in the revision `sev-snp-measure` cites):
//!
//! ```text
//! PAGE_INFO (0x70 bytes)                         digest' = SHA-384(PAGE_INFO)
//!   0x00  48  digest so far (starts at zero)
//!   0x30  48  SHA-384 of the page contents (zero for zero/secrets/CPUID pages)
//!   0x60   2  length = 0x70
//!   0x62   1  page type: 1 normal, 2 VMSA, 3 zero, 4 unmeasured, 5 secrets, 6 CPUID
//!   0x63   1  is_imi = 0
//!   0x64   3  VMPL3/2/1 permissions = 0
//!   0x67   1  reserved
//!   0x68   8  guest physical address (VMSAs: 0xFFFF_FFFF_F000)
//! ```
//!
//! The firmware is mapped to end at 4 GiB. Its footer table (a list of GUID-tagged entries that
//! ends 32 bytes before the end of the image, walked backwards) locates the SEV metadata
//! (`ASEV` header + sections: SNP_SEC_MEM, SECRETS, CPUID, SNP_KERNEL_HASHES, SVSM_CAA), the
//! SEV hashes table and the SEV-ES reset vector the APs start at. With `-kernel`, QEMU writes
//! the SHA-256 of the kernel, initrd and command line (`cmdline ‖ NUL`) into the
//! SNP_KERNEL_HASHES page, each entry GUID-tagged (QEMU `target/i386/sev.c`,
//! `SevHashTable`), and OVMF later refuses a kernel whose hash differs.
//!
//! This module reproduces `sev-snp-measure --mode snp` (virtee, PyPI 0.0.13) for the QEMU VMM
//! type; the xtask test runs both and compares the digests byte for byte.

use alloc::vec::Vec;
use core::fmt;

use sha2::{Digest, Sha256, Sha384};

/// Size of a guest page in bytes.
pub const PAGE_BYTES: usize = 4096;
/// Size of a launch digest (SHA-384) in bytes.
pub const LAUNCH_DIGEST_BYTES: usize = 48;
/// The firmware image ends at this guest physical address (4 GiB).
pub const FIRMWARE_END_GPA: u64 = 0x1_0000_0000;
/// The GPA recorded for VMSA pages: (u64)-1, page-aligned, bits above 51 clear.
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
/// The BSP starts at the reset vector.
pub const BSP_EIP: u32 = 0xFFFF_FFF0;
/// Most vCPUs a measurement may be computed for.
pub const MAX_VCPUS: u32 = 512;
/// Largest firmware image accepted, in bytes.
pub const MAX_FIRMWARE_BYTES: usize = 64 * 1024 * 1024;
/// Default SEV features in the VMSA (`sev-snp-measure`'s default `--guest-features`: SNPActive).
pub const DEFAULT_GUEST_FEATURES: u64 = 0x1;

/// Footer table entry GUIDs, in the on-disk (little-endian, "bytes_le") form.
const OVMF_TABLE_FOOTER_GUID: [u8; 16] = guid_le(
    0x96b582de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
const SEV_HASH_TABLE_RV_GUID: [u8; 16] = guid_le(
    0x7255371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);
const SEV_ES_RESET_BLOCK_GUID: [u8; 16] = guid_le(
    0x00f771de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);
const OVMF_SEV_META_DATA_GUID: [u8; 16] = guid_le(
    0xdc886566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);
/// SEV hashes table GUIDs (QEMU `target/i386/sev.c`).
const SEV_HASH_TABLE_HEADER_GUID: [u8; 16] = guid_le(
    0x9438d606,
    0x4f22,
    0x4cc9,
    [0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21],
);
const SEV_KERNEL_ENTRY_GUID: [u8; 16] = guid_le(
    0x4de79437,
    0xabd2,
    0x427f,
    [0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b],
);
const SEV_INITRD_ENTRY_GUID: [u8; 16] = guid_le(
    0x44baf731,
    0x3a2f,
    0x4bd7,
    [0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d],
);
const SEV_CMDLINE_ENTRY_GUID: [u8; 16] = guid_le(
    0x97d02dd8,
    0xbd20,
    0x4c94,
    [0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a],
);

/// A GUID in its mixed-endian byte form (first three fields little-endian).
const fn guid_le(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Size of a footer table entry header: u16 size + 16-byte GUID.
const FOOTER_ENTRY_HEADER_BYTES: usize = 18;
/// The footer table ends this many bytes before the end of the image.
const FOOTER_END_FROM_IMAGE_END_BYTES: usize = 32;
/// Size of the `ASEV` metadata header: signature, size, version, number of items.
const SEV_METADATA_HEADER_BYTES: usize = 16;
/// Size of one metadata section descriptor: gpa, size, type (u32 each).
const SEV_METADATA_DESC_BYTES: usize = 12;
/// Most metadata sections accepted.
const MAX_METADATA_SECTIONS: usize = 64;

/// Why a measurement cannot be computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeasureError {
    /// The firmware is empty, too large or not a whole number of pages.
    BadFirmwareSize,
    /// The footer table or SEV metadata is truncated or inconsistent.
    MalformedFooter,
    /// The firmware has no SEV-ES reset block (APs would have no entry point).
    NoResetBlock,
    /// The firmware has no SEV metadata: it cannot launch under SNP.
    NoSevMetadata,
    /// A metadata section has an unknown type.
    UnknownSection(u32),
    /// A section is not page-aligned or the hashes section is not one page.
    BadSection,
    /// A kernel was given, but the firmware has no SNP_KERNEL_HASHES section.
    NoKernelHashesSection,
    /// The firmware has no SEV hash table entry in its footer.
    NoHashTableEntry,
    /// The vCPU count is 0 or above [`MAX_VCPUS`].
    BadVcpuCount,
}

impl fmt::Display for MeasureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeasureError::BadFirmwareSize => {
                f.write_str("firmware size is not a whole number of pages (or is too large)")
            }
            MeasureError::MalformedFooter => {
                f.write_str("OVMF footer table or SEV metadata is malformed")
            }
            MeasureError::NoResetBlock => f.write_str("OVMF has no SEV-ES reset block entry"),
            MeasureError::NoSevMetadata => {
                f.write_str("OVMF has no SEV metadata (not an SNP-capable build)")
            }
            MeasureError::UnknownSection(t) => {
                write!(f, "unknown OVMF metadata section type {t:#x}")
            }
            MeasureError::BadSection => f.write_str("OVMF metadata section is not page-aligned"),
            MeasureError::NoKernelHashesSection => f.write_str(
                "Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section",
            ),
            MeasureError::NoHashTableEntry => {
                f.write_str("OVMF footer has no SEV hash table entry")
            }
            MeasureError::BadVcpuCount => write!(f, "vCPU count must be 1..={MAX_VCPUS}"),
        }
    }
}

/// The kind of an OVMF SEV metadata section (edk2 `OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionKind {
    /// Memory the firmware expects pre-validated and zero.
    SnpSecMem,
    /// The secrets page (VMPCKs), filled by the secure processor.
    SnpSecrets,
    /// The CPUID page, filled by the secure processor.
    Cpuid,
    /// The SVSM calling area.
    SvsmCaa,
    /// The page QEMU fills with the kernel/initrd/cmdline hashes.
    SnpKernelHashes,
}

impl SectionKind {
    fn from_raw(raw: u32) -> Result<SectionKind, MeasureError> {
        match raw {
            1 => Ok(SectionKind::SnpSecMem),
            2 => Ok(SectionKind::SnpSecrets),
            3 => Ok(SectionKind::Cpuid),
            4 => Ok(SectionKind::SvsmCaa),
            0x10 => Ok(SectionKind::SnpKernelHashes),
            other => Err(MeasureError::UnknownSection(other)),
        }
    }
}

/// One SEV metadata section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    /// Guest physical address.
    pub gpa: u32,
    /// Size in bytes.
    pub size: u32,
    /// Kind.
    pub kind: SectionKind,
}

/// The parts of an OVMF image that determine the measurement.
#[derive(Clone, Debug)]
pub struct Ovmf<'a> {
    image: &'a [u8],
    sections: Vec<Section>,
    reset_eip: Option<u32>,
    hash_table_gpa: Option<u32>,
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

impl<'a> Ovmf<'a> {
    /// Parses the footer table and the SEV metadata of a firmware image.
    pub fn parse(image: &'a [u8]) -> Result<Ovmf<'a>, MeasureError> {
        if image.is_empty()
            || !image.len().is_multiple_of(PAGE_BYTES)
            || image.len() > MAX_FIRMWARE_BYTES
        {
            return Err(MeasureError::BadFirmwareSize);
        }
        let mut ovmf = Ovmf {
            image,
            sections: Vec::new(),
            reset_eip: None,
            hash_table_gpa: None,
        };
        let mut metadata_offset = None;
        for (guid, data) in footer_entries(image)? {
            let first_u32 = le_u32(data, 0);
            match guid {
                g if g == SEV_ES_RESET_BLOCK_GUID => ovmf.reset_eip = first_u32,
                g if g == SEV_HASH_TABLE_RV_GUID => ovmf.hash_table_gpa = first_u32,
                g if g == OVMF_SEV_META_DATA_GUID => metadata_offset = first_u32,
                _ => {}
            }
        }
        if let Some(offset_from_end) = metadata_offset {
            ovmf.sections = parse_metadata(image, offset_from_end)?;
        }
        Ok(ovmf)
    }

    /// The SEV metadata sections, in firmware order.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The GPA the image starts at (it ends at 4 GiB).
    pub fn gpa(&self) -> u64 {
        FIRMWARE_END_GPA - self.image.len() as u64
    }
}

/// The footer table entries as (GUID, data), last entry first. Absent table → no entries.
/// One footer table entry: its GUID and its data.
type FooterEntry<'a> = ([u8; 16], &'a [u8]);

fn footer_entries(image: &[u8]) -> Result<Vec<FooterEntry<'_>>, MeasureError> {
    let bad = MeasureError::MalformedFooter;
    let footer_start = image
        .len()
        .checked_sub(FOOTER_END_FROM_IMAGE_END_BYTES + FOOTER_ENTRY_HEADER_BYTES)
        .ok_or(bad)?;
    let footer = &image[footer_start..footer_start + FOOTER_ENTRY_HEADER_BYTES];
    if footer[2..18] != OVMF_TABLE_FOOTER_GUID {
        return Ok(Vec::new());
    }
    let table_size = usize::from(le_u16(footer, 0).ok_or(bad)?);
    let Some(table_size) = table_size.checked_sub(FOOTER_ENTRY_HEADER_BYTES) else {
        return Ok(Vec::new());
    };
    let table_start = footer_start.checked_sub(table_size).ok_or(bad)?;
    let mut table = &image[table_start..footer_start];
    let mut entries = Vec::new();
    while table.len() >= FOOTER_ENTRY_HEADER_BYTES {
        let header = &table[table.len() - FOOTER_ENTRY_HEADER_BYTES..];
        let size = usize::from(le_u16(header, 0).ok_or(bad)?);
        if size < FOOTER_ENTRY_HEADER_BYTES || size > table.len() {
            return Err(bad);
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&header[2..18]);
        let entry_start = table.len() - size;
        entries.push((
            guid,
            &table[entry_start..table.len() - FOOTER_ENTRY_HEADER_BYTES],
        ));
        table = &table[..entry_start];
    }
    Ok(entries)
}

fn parse_metadata(image: &[u8], offset_from_end: u32) -> Result<Vec<Section>, MeasureError> {
    let bad = MeasureError::MalformedFooter;
    let start = image
        .len()
        .checked_sub(offset_from_end as usize)
        .ok_or(bad)?;
    let header = image
        .get(start..start + SEV_METADATA_HEADER_BYTES)
        .ok_or(bad)?;
    let (size, version, count) = (
        le_u32(header, 4).ok_or(bad)?,
        le_u32(header, 8).ok_or(bad)?,
        le_u32(header, 12).ok_or(bad)?,
    );
    if &header[..4] != b"ASEV" || version != 1 || count as usize > MAX_METADATA_SECTIONS {
        return Err(bad);
    }
    let items = image
        .get(start + SEV_METADATA_HEADER_BYTES..start.checked_add(size as usize).ok_or(bad)?)
        .ok_or(bad)?;
    (0..count as usize)
        .map(|i| {
            let at = i * SEV_METADATA_DESC_BYTES;
            let (gpa, size, kind) = (
                le_u32(items, at).ok_or(bad)?,
                le_u32(items, at + 4).ok_or(bad)?,
                le_u32(items, at + 8).ok_or(bad)?,
            );
            Ok(Section {
                gpa,
                size,
                kind: SectionKind::from_raw(kind)?,
            })
        })
        .collect()
}

/// What `-kernel/-initrd/-append` put into the SEV hashes table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelHashes {
    /// SHA-256 of the kernel file.
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd file (of nothing when absent).
    pub initrd: [u8; 32],
    /// SHA-256 of the command line followed by a NUL byte (just the NUL when absent).
    pub cmdline: [u8; 32],
}

/// Size of QEMU's `SevHashTable`: header GUID + u16 length + three 50-byte entries.
const SEV_HASH_TABLE_BYTES: usize = 16 + 2 + 3 * SEV_HASH_ENTRY_BYTES;
/// Size of one `SevHashTableEntry`: GUID + u16 length + SHA-256.
const SEV_HASH_ENTRY_BYTES: usize = 16 + 2 + 32;
/// The table is padded to a multiple of 16 bytes.
const SEV_HASH_TABLE_PADDED_BYTES: usize = SEV_HASH_TABLE_BYTES.div_ceil(16) * 16;

impl KernelHashes {
    /// Hashes the kernel, the optional initrd and the optional command line.
    pub fn new(kernel: &[u8], initrd: Option<&[u8]>, cmdline: Option<&str>) -> KernelHashes {
        let mut cmd = Sha256::new();
        cmd.update(cmdline.unwrap_or("").as_bytes());
        cmd.update([0u8]);
        KernelHashes {
            kernel: Sha256::digest(kernel).into(),
            initrd: Sha256::digest(initrd.unwrap_or(&[])).into(),
            cmdline: cmd.finalize().into(),
        }
    }

    /// QEMU's padded `SevHashTable`: header, then the cmdline, initrd and kernel entries.
    pub fn table(&self) -> [u8; SEV_HASH_TABLE_PADDED_BYTES] {
        let mut t = [0u8; SEV_HASH_TABLE_PADDED_BYTES];
        t[..16].copy_from_slice(&SEV_HASH_TABLE_HEADER_GUID);
        t[16..18].copy_from_slice(&(SEV_HASH_TABLE_BYTES as u16).to_le_bytes());
        let entries = [
            (SEV_CMDLINE_ENTRY_GUID, &self.cmdline),
            (SEV_INITRD_ENTRY_GUID, &self.initrd),
            (SEV_KERNEL_ENTRY_GUID, &self.kernel),
        ];
        for (i, (guid, hash)) in entries.iter().enumerate() {
            let at = 18 + i * SEV_HASH_ENTRY_BYTES;
            t[at..at + 16].copy_from_slice(guid);
            t[at + 16..at + 18].copy_from_slice(&(SEV_HASH_ENTRY_BYTES as u16).to_le_bytes());
            t[at + 18..at + 50].copy_from_slice(*hash);
        }
        t
    }
}

/// The running launch digest (the guest context's LD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDigest([u8; LAUNCH_DIGEST_BYTES]);

/// PAGE_INFO page types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum PageType {
    Normal = 1,
    Vmsa = 2,
    Zero = 3,
    Secrets = 5,
    Cpuid = 6,
}

/// Size of PAGE_INFO.
const PAGE_INFO_BYTES: usize = 0x70;

impl LaunchDigest {
    /// The digest before any page: all zero.
    pub fn new() -> LaunchDigest {
        LaunchDigest([0; LAUNCH_DIGEST_BYTES])
    }

    /// The digest value.
    pub fn bytes(&self) -> [u8; LAUNCH_DIGEST_BYTES] {
        self.0
    }

    fn update(&mut self, page_type: PageType, gpa: u64, contents: &[u8; LAUNCH_DIGEST_BYTES]) {
        let mut info = [0u8; PAGE_INFO_BYTES];
        info[..48].copy_from_slice(&self.0);
        info[48..96].copy_from_slice(contents);
        info[0x60..0x62].copy_from_slice(&(PAGE_INFO_BYTES as u16).to_le_bytes());
        info[0x62] = page_type as u8;
        info[0x68..0x70].copy_from_slice(&gpa.to_le_bytes());
        self.0 = Sha384::digest(info).into();
    }

    fn update_normal_pages(&mut self, start_gpa: u64, data: &[u8]) {
        debug_assert!(data.len().is_multiple_of(PAGE_BYTES));
        for (i, page) in data.chunks_exact(PAGE_BYTES).enumerate() {
            let hash: [u8; 48] = Sha384::digest(page).into();
            self.update(PageType::Normal, start_gpa + (i * PAGE_BYTES) as u64, &hash);
        }
    }

    fn update_zero_pages(&mut self, gpa: u64, len_bytes: u64) {
        for offset in (0..len_bytes).step_by(PAGE_BYTES) {
            self.update(PageType::Zero, gpa + offset, &[0; 48]);
        }
    }
}

impl Default for LaunchDigest {
    fn default() -> Self {
        Self::new()
    }
}

/// The CPUID signature (CPUID Fn0000_0001_EAX) of a family/model/stepping (AMD #25481).
pub fn cpu_signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (family_low, family_high) = if family > 0xF {
        (0xF, (family - 0xF) & 0xFF)
    } else {
        (family, 0)
    };
    (family_high << 20)
        | (((model >> 4) & 0xF) << 16)
        | (family_low << 8)
        | ((model & 0xF) << 4)
        | (stepping & 0xF)
}

/// The CPUID signature of a QEMU CPU model name (those of QEMU's `builtin_x86_defs` that
/// `sev-snp-measure` knows).
pub fn vcpu_type_signature(name: &str) -> Option<u32> {
    let (family, model, stepping) = match name {
        "EPYC" | "EPYC-v1" | "EPYC-v2" | "EPYC-IBPB" | "EPYC-v3" | "EPYC-v4" => (23, 1, 2),
        "EPYC-Rome" | "EPYC-Rome-v1" | "EPYC-Rome-v2" | "EPYC-Rome-v3" => (23, 49, 0),
        "EPYC-Milan" | "EPYC-Milan-v1" | "EPYC-Milan-v2" => (25, 1, 1),
        "EPYC-Genoa" | "EPYC-Genoa-v1" => (25, 17, 0),
        "EPYC-Turin" => (26, 0, 0),
        _ => return None,
    };
    Some(cpu_signature(family, model, stepping))
}

/// The initial VMSA QEMU gives a vCPU starting at `eip` (APM vol. 2 Table B-4 "VMSA layout";
/// the reset state KVM/QEMU set up).
pub fn vmsa_page(eip: u32, vcpu_signature: u32, sev_features: u64) -> [u8; PAGE_BYTES] {
    let mut p = [0u8; PAGE_BYTES];
    let mut put = |at: usize, bytes: &[u8]| p[at..at + bytes.len()].copy_from_slice(bytes);
    // Segment registers: selector u16, attrib u16, limit u32, base u64 (16 bytes each).
    let segments: [(usize, u16, u16, u64); 10] = [
        (0x00, 0, 0x93, 0),                                 // es
        (0x10, 0xF000, 0x9B, u64::from(eip & 0xFFFF_0000)), // cs
        (0x20, 0, 0x93, 0),                                 // ss
        (0x30, 0, 0x93, 0),                                 // ds
        (0x40, 0, 0x93, 0),                                 // fs
        (0x50, 0, 0x93, 0),                                 // gs
        (0x60, 0, 0, 0),                                    // gdtr
        (0x70, 0, 0x82, 0),                                 // ldtr
        (0x80, 0, 0, 0),                                    // idtr
        (0x90, 0, 0x8B, 0),                                 // tr
    ];
    for (at, selector, attrib, base) in segments {
        put(at, &selector.to_le_bytes());
        put(at + 2, &attrib.to_le_bytes());
        put(at + 4, &0xFFFFu32.to_le_bytes());
        put(at + 8, &base.to_le_bytes());
    }
    put(0xD0, &0x1000u64.to_le_bytes()); // EFER.SVME (KVM)
    put(0x148, &0x40u64.to_le_bytes()); // CR4.MCE (KVM)
    put(0x158, &0x10u64.to_le_bytes()); // CR0.ET
    put(0x160, &0x400u64.to_le_bytes()); // DR7
    put(0x168, &0xFFFF_0FF0u64.to_le_bytes()); // DR6
    put(0x170, &0x2u64.to_le_bytes()); // RFLAGS
    put(0x178, &u64::from(eip & 0xFFFF).to_le_bytes()); // RIP
    put(0x268, &0x0007_0406_0007_0406u64.to_le_bytes()); // G_PAT (APM vol. 2 §A.3)
    put(0x310, &u64::from(vcpu_signature).to_le_bytes()); // RDX = CPUID signature
    put(0x3B0, &sev_features.to_le_bytes()); // SEV_FEATURES
    put(0x3E8, &0x1u64.to_le_bytes()); // XCR0
    put(0x408, &0x1F80u32.to_le_bytes()); // MXCSR
    put(0x410, &0x37Fu16.to_le_bytes()); // x87 FCW
    p
}

/// Inputs of a launch measurement besides the firmware.
#[derive(Clone, Copy, Debug)]
pub struct LaunchInputs {
    /// Kernel/initrd/cmdline hashes when booting with `-kernel` (`kernel-hashes=on`).
    pub kernel_hashes: Option<KernelHashes>,
    /// Number of vCPUs (one VMSA each).
    pub vcpus: u32,
    /// The vCPU model's CPUID signature (see [`vcpu_type_signature`]).
    pub vcpu_signature: u32,
    /// The SEV features word in each VMSA.
    pub guest_features: u64,
}

/// The SNP launch measurement of `firmware` with `inputs`, as QEMU + the secure processor
/// compute it (and `sev-snp-measure --mode snp` predicts it).
pub fn snp_launch_digest(
    firmware: &[u8],
    inputs: &LaunchInputs,
) -> Result<[u8; LAUNCH_DIGEST_BYTES], MeasureError> {
    if inputs.vcpus == 0 || inputs.vcpus > MAX_VCPUS {
        return Err(MeasureError::BadVcpuCount);
    }
    let ovmf = Ovmf::parse(firmware)?;
    if ovmf.sections.is_empty() {
        return Err(MeasureError::NoSevMetadata);
    }
    let mut ld = LaunchDigest::new();
    ld.update_normal_pages(ovmf.gpa(), firmware);
    for section in &ovmf.sections {
        let gpa = u64::from(section.gpa);
        let size = u64::from(section.size);
        if !size.is_multiple_of(PAGE_BYTES as u64) {
            return Err(MeasureError::BadSection);
        }
        match section.kind {
            SectionKind::SnpSecMem | SectionKind::SvsmCaa => ld.update_zero_pages(gpa, size),
            SectionKind::SnpSecrets => ld.update(PageType::Secrets, gpa, &[0; 48]),
            SectionKind::Cpuid => ld.update(PageType::Cpuid, gpa, &[0; 48]),
            SectionKind::SnpKernelHashes => match &inputs.kernel_hashes {
                None => ld.update_zero_pages(gpa, size),
                Some(hashes) => {
                    if size != PAGE_BYTES as u64 {
                        return Err(MeasureError::BadSection);
                    }
                    let table_gpa = ovmf.hash_table_gpa.ok_or(MeasureError::NoHashTableEntry)?;
                    let offset = (table_gpa as usize) & (PAGE_BYTES - 1);
                    let mut page = [0u8; PAGE_BYTES];
                    let table = hashes.table();
                    page.get_mut(offset..offset + table.len())
                        .ok_or(MeasureError::BadSection)?
                        .copy_from_slice(&table);
                    ld.update_normal_pages(gpa, &page);
                }
            },
        }
    }
    if inputs.kernel_hashes.is_some()
        && !ovmf
            .sections
            .iter()
            .any(|s| s.kind == SectionKind::SnpKernelHashes)
    {
        return Err(MeasureError::NoKernelHashesSection);
    }
    let ap_eip = ovmf.reset_eip.ok_or(MeasureError::NoResetBlock)?;
    let bsp = vmsa_page(BSP_EIP, inputs.vcpu_signature, inputs.guest_features);
    let ap = vmsa_page(ap_eip, inputs.vcpu_signature, inputs.guest_features);
    for i in 0..inputs.vcpus {
        let page = if i == 0 { &bsp } else { &ap };
        let hash: [u8; 48] = Sha384::digest(page).into();
        ld.update(PageType::Vmsa, VMSA_GPA, &hash);
    }
    Ok(ld.bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16 KiB firmware with AmdSev's footer/metadata structure, from
    /// `testdata/make_amdsev_like_fd.py`.
    const AMDSEV_LIKE_FD: &[u8] = include_bytes!("testdata/amdsev_like.fd");
    const KERNEL: &[u8] =
        include_bytes!("../../../../shared/testdata/sev-snp/milan-v2-virtee/report.bin");
    const INITRD: &[u8] = include_bytes!("testdata/guest_msg_report_req.bin");

    fn hex(bytes: &[u8]) -> alloc::string::String {
        bytes.iter().map(|b| alloc::format!("{b:02x}")).collect()
    }

    /// Digests printed by `sev-snp-measure` 0.0.13 (PyPI), run in `testdata/` with
    /// `K=../../../../../shared/testdata/sev-snp/milan-v2-virtee/report.bin`:
    /// 1. `--mode snp --ovmf amdsev_like.fd --vcpus 1 --vcpu-type EPYC-v4`
    /// 2. `… --vcpus 4 --vcpu-type EPYC-Milan --kernel $K --append "console=ttyS0"`
    /// 3. `… --vcpus 2 --vcpu-type EPYC-Genoa --kernel $K --initrd guest_msg_report_req.bin
    ///    --guest-features 0x21`
    ///
    /// The xtask test runs sev-snp-measure live on Debian's OVMF and the cairn kernel too.
    #[test]
    fn digests_recorded_from_sev_snp_measure() {
        let cases = [
            (
                LaunchInputs {
                    kernel_hashes: None,
                    vcpus: 1,
                    vcpu_signature: vcpu_type_signature("EPYC-v4").unwrap(),
                    guest_features: DEFAULT_GUEST_FEATURES,
                },
                "bbad12dd978e4209899b049bd5e27e469f491d32574272f5060c686deb38b6f0babdd882705c14d55db53b209c41cfb9",
            ),
            (
                LaunchInputs {
                    kernel_hashes: Some(KernelHashes::new(KERNEL, None, Some("console=ttyS0"))),
                    vcpus: 4,
                    vcpu_signature: vcpu_type_signature("EPYC-Milan").unwrap(),
                    guest_features: DEFAULT_GUEST_FEATURES,
                },
                "4349725a17a69d7a85234d4716e2ecb50bea01536e57622b707b895f985a0c667e52d24a3d3255e01a3825dd8952a139",
            ),
            (
                LaunchInputs {
                    kernel_hashes: Some(KernelHashes::new(KERNEL, Some(INITRD), None)),
                    vcpus: 2,
                    vcpu_signature: vcpu_type_signature("EPYC-Genoa").unwrap(),
                    guest_features: 0x21,
                },
                "b39db62c06eba652fb93a09897ba07c58a09c88aee1606877081c11b2ae08a23c74a25fa5af0ba9a74a0d7c70416c79e",
            ),
        ];
        for (inputs, want) in cases {
            assert_eq!(
                hex(&snp_launch_digest(AMDSEV_LIKE_FD, &inputs).unwrap()),
                want,
                "{inputs:?}"
            );
        }
        let ovmf = Ovmf::parse(AMDSEV_LIKE_FD).unwrap();
        assert_eq!(ovmf.sections().len(), 6);
        assert_eq!(ovmf.gpa(), FIRMWARE_END_GPA - 16 * 1024);
    }

    #[test]
    fn cpu_signatures() {
        // EPYC-v4: family 23 model 1 stepping 2 → 0x00800F12.
        assert_eq!(vcpu_type_signature("EPYC-v4"), Some(0x0080_0F12));
        assert_eq!(vcpu_type_signature("EPYC-Milan"), Some(0x00A0_0F11));
        assert_eq!(vcpu_type_signature("EPYC-Genoa"), Some(0x00A1_0F10));
        assert_eq!(vcpu_type_signature("EPYC-Turin"), Some(0x00B0_0F00));
        assert_eq!(vcpu_type_signature("Skylake"), None);
    }

    #[test]
    fn hash_table_layout() {
        let h = KernelHashes::new(b"kernel", None, None);
        let t = h.table();
        assert_eq!(t.len(), 176);
        assert_eq!(u16::from_le_bytes([t[16], t[17]]), 168);
        // cmdline entry first; the hash of an absent command line is SHA-256 of one NUL byte.
        let nul: [u8; 32] = Sha256::digest([0u8]).into();
        assert_eq!(&t[18 + 18..18 + 50], &nul);
        assert_eq!(&t[18 + 100 + 18..18 + 150], &Sha256::digest(b"kernel")[..]);
        assert!(t[168..].iter().all(|&b| b == 0));
    }

    #[test]
    fn firmware_without_footer_cannot_be_measured() {
        let fw = alloc::vec![0u8; 4 * PAGE_BYTES];
        let inputs = LaunchInputs {
            kernel_hashes: None,
            vcpus: 1,
            vcpu_signature: 0,
            guest_features: 1,
        };
        assert_eq!(
            snp_launch_digest(&fw, &inputs),
            Err(MeasureError::NoSevMetadata)
        );
        assert_eq!(
            snp_launch_digest(&fw[..100], &inputs),
            Err(MeasureError::BadFirmwareSize)
        );
        let zero = LaunchInputs { vcpus: 0, ..inputs };
        assert_eq!(
            snp_launch_digest(&fw, &zero),
            Err(MeasureError::BadVcpuCount)
        );
    }

    #[test]
    fn truncated_footer_entries_are_rejected() {
        // A footer claiming a table larger than the image.
        let mut fw = alloc::vec![0u8; PAGE_BYTES];
        let footer = PAGE_BYTES - 32 - 18;
        fw[footer..footer + 2].copy_from_slice(&0xFFFFu16.to_le_bytes());
        fw[footer + 2..footer + 18].copy_from_slice(&OVMF_TABLE_FOOTER_GUID);
        assert_eq!(Ovmf::parse(&fw).err(), Some(MeasureError::MalformedFooter));
    }
}
