//! What an SEV-SNP guest learns from the firmware at boot, as pure parsers: OVMF's
//! confidential-computing blob (where the secrets and CPUID pages are) and the unaccepted
//! memory (EFI type 15) in the memory map the kernel's UEFI entry hands over.
//!
//! `cc_blob_sev_info` (Linux `arch/x86/include/asm/sev.h`, published by OVMF in the EFI
//! configuration table under `EFI_CC_BLOB_GUID`), 40 bytes, little-endian:
//!
//! ```text
//!  0x00 u32 magic ("AMDE" = 0x4544_4D41)   0x04 u16 version   0x06 u16 reserved
//!  0x08 u64 secrets_phys                    0x10 u32 secrets_len   0x14 u32 reserved
//!  0x18 u64 cpuid_phys                      0x20 u32 cpuid_len     0x24 u32 reserved
//! ```
//!
//! The handoff is the multiboot2-form structure of `kernel/src/efi.rs`: `u32 total_size`,
//! `u32 reserved`, then 8-aligned tags `u32 type`, `u32 size`; tag 17 (EFI memory map) holds
//! `u32 descriptor_size`, `u32 descriptor_version`, then `EFI_MEMORY_DESCRIPTOR`s (UEFI 2.10
//! §7.2: `u32 Type`, pad, `u64 PhysicalStart`, `u64 VirtualStart`, `u64 NumberOfPages`,
//! `u64 Attribute`). Type 15 is `EfiUnacceptedMemoryType` (UEFI 2.10): RAM the guest must
//! accept (SNP: page state change to private, then `PVALIDATE`) before using it.

use core::fmt;

/// The blob's magic, "AMDE".
pub const CC_BLOB_MAGIC: u32 = 0x4544_4D41;
/// Size of `cc_blob_sev_info`.
pub const CC_BLOB_BYTES: usize = 40;
/// `EfiUnacceptedMemoryType`.
pub const EFI_UNACCEPTED_MEMORY: u32 = 15;
/// The multiboot2 tag of the EFI memory map.
const TAG_EFI_MMAP: u32 = 17;
/// The multiboot2 end tag.
const TAG_END: u32 = 0;
/// The smallest EFI memory descriptor (the UEFI 2.10 layout; firmware may use larger ones).
const MIN_DESCRIPTOR_BYTES: usize = 40;
/// The UEFI page size.
const EFI_PAGE_BYTES: u64 = 4096;

/// Why boot data was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnpBootError {
    /// Fewer bytes than the structure needs.
    Truncated,
    /// The blob's magic is not "AMDE".
    BadMagic(u32),
    /// A tag or descriptor size that breaks the format.
    BadLayout,
}

impl fmt::Display for SnpBootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnpBootError::Truncated => f.write_str("SNP boot data truncated"),
            SnpBootError::BadMagic(m) => write!(f, "cc_blob magic {m:#x}, expected AMDE"),
            SnpBootError::BadLayout => f.write_str("boot memory map layout broken"),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, SnpBootError> {
    let s = b.get(at..at + 4).ok_or(SnpBootError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, SnpBootError> {
    Ok(u64::from(u32_at(b, at)?) | (u64::from(u32_at(b, at + 4)?) << 32))
}

/// Where the firmware put the SNP secrets and CPUID pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CcBlob {
    /// The blob's version.
    pub version: u16,
    /// Physical address of the secrets page.
    pub secrets_phys: u64,
    /// Its length.
    pub secrets_len: u32,
    /// Physical address of the CPUID page.
    pub cpuid_phys: u64,
    /// Its length.
    pub cpuid_len: u32,
}

impl CcBlob {
    /// Parses the 40-byte blob.
    pub fn parse(b: &[u8]) -> Result<CcBlob, SnpBootError> {
        if b.len() < CC_BLOB_BYTES {
            return Err(SnpBootError::Truncated);
        }
        let magic = u32_at(b, 0)?;
        if magic != CC_BLOB_MAGIC {
            return Err(SnpBootError::BadMagic(magic));
        }
        Ok(CcBlob {
            version: u16::from_le_bytes([b[4], b[5]]),
            secrets_phys: u64_at(b, 0x08)?,
            secrets_len: u32_at(b, 0x10)?,
            cpuid_phys: u64_at(b, 0x18)?,
            cpuid_len: u32_at(b, 0x20)?,
        })
    }
}

/// Calls `found(base, len)` for every unaccepted-memory descriptor of the handoff `info`
/// (bytes from its start, at least `total_size` of them); returns how many there were.
pub fn for_each_unaccepted(
    info: &[u8],
    mut found: impl FnMut(u64, u64),
) -> Result<usize, SnpBootError> {
    let total = u32_at(info, 0)? as usize;
    let info = info.get(..total).ok_or(SnpBootError::Truncated)?;
    let mut at = 8;
    let mut count = 0;
    while at + 8 <= total {
        let kind = u32_at(info, at)?;
        let size = u32_at(info, at + 4)? as usize;
        if size < 8 || at + size > total {
            return Err(SnpBootError::BadLayout);
        }
        if kind == TAG_END {
            break;
        }
        if kind == TAG_EFI_MMAP {
            let desc_size = u32_at(info, at + 8)? as usize;
            if desc_size < MIN_DESCRIPTOR_BYTES {
                return Err(SnpBootError::BadLayout);
            }
            let body = &info[at + 16..at + size];
            for d in body.chunks_exact(desc_size) {
                if u32_at(d, 0)? != EFI_UNACCEPTED_MEMORY {
                    continue;
                }
                let base = u64_at(d, 8)?;
                let len = u64_at(d, 24)?
                    .checked_mul(EFI_PAGE_BYTES)
                    .ok_or(SnpBootError::BadLayout)?;
                base.checked_add(len).ok_or(SnpBootError::BadLayout)?;
                found(base, len);
                count += 1;
            }
        }
        at += size.div_ceil(8) * 8;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn cc_blob_layout() {
        let mut b = [0u8; 40];
        b[0..4].copy_from_slice(b"AMDE");
        b[4] = 1;
        b[0x08..0x10].copy_from_slice(&0x80_D000u64.to_le_bytes());
        b[0x10..0x14].copy_from_slice(&4096u32.to_le_bytes());
        b[0x18..0x20].copy_from_slice(&0x80_E000u64.to_le_bytes());
        b[0x20..0x24].copy_from_slice(&4096u32.to_le_bytes());
        assert_eq!(
            CcBlob::parse(&b),
            Ok(CcBlob {
                version: 1,
                secrets_phys: 0x80_D000,
                secrets_len: 4096,
                cpuid_phys: 0x80_E000,
                cpuid_len: 4096
            })
        );
        assert_eq!(u32::from_le_bytes(*b"AMDE"), CC_BLOB_MAGIC);
        assert_eq!(CcBlob::parse(&b[..39]), Err(SnpBootError::Truncated));
        b[0] = b'X';
        assert!(matches!(CcBlob::parse(&b), Err(SnpBootError::BadMagic(_))));
    }

    fn descriptor(kind: u32, base: u64, pages: u64, size: usize) -> Vec<u8> {
        let mut d = alloc::vec![0u8; size];
        d[0..4].copy_from_slice(&kind.to_le_bytes());
        d[8..16].copy_from_slice(&base.to_le_bytes());
        d[16..24].copy_from_slice(&0xDEAD_0000u64.to_le_bytes());
        d[24..32].copy_from_slice(&pages.to_le_bytes());
        d
    }

    fn handoff(desc_size: usize, descs: &[(u32, u64, u64)]) -> Vec<u8> {
        let mut info = alloc::vec![0u8; 8];
        // A command-line tag first (type 1, 13 bytes, padded to 16).
        info.extend_from_slice(&1u32.to_le_bytes());
        info.extend_from_slice(&13u32.to_le_bytes());
        info.extend_from_slice(b"cairn\0\0\0");
        let mut body = Vec::new();
        body.extend_from_slice(&(desc_size as u32).to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        for &(k, b, p) in descs {
            body.extend(descriptor(k, b, p, desc_size));
        }
        info.extend_from_slice(&17u32.to_le_bytes());
        info.extend_from_slice(&((8 + body.len()) as u32).to_le_bytes());
        info.extend(body);
        while !info.len().is_multiple_of(8) {
            info.push(0);
        }
        info.extend_from_slice(&[0, 0, 0, 0, 8, 0, 0, 0]);
        let total = info.len() as u32;
        info[0..4].copy_from_slice(&total.to_le_bytes());
        info
    }

    #[test]
    fn finds_type_15_descriptors() {
        // OVMF uses 48-byte descriptors; the extra 8 bytes must be skipped.
        let info = handoff(
            48,
            &[
                (7, 0x10_0000, 0x100),
                (15, 0x1_0000_0000, 0x4_0000),
                (4, 0x8000_0000, 1),
                (15, 0x4000_0000, 0x200),
            ],
        );
        let mut seen = Vec::new();
        assert_eq!(for_each_unaccepted(&info, |b, l| seen.push((b, l))), Ok(2));
        assert_eq!(
            seen,
            [(0x1_0000_0000, 0x4000_0000), (0x4000_0000, 0x20_0000)]
        );
        let none = handoff(40, &[(7, 0x10_0000, 0x100)]);
        assert_eq!(for_each_unaccepted(&none, |_, _| panic!()), Ok(0));
    }

    #[test]
    fn broken_handoffs_are_refused() {
        let info = handoff(48, &[(15, 0x1000, 1)]);
        assert_eq!(
            for_each_unaccepted(&info[..info.len() - 1], |_, _| {}),
            Err(SnpBootError::Truncated)
        );
        let mut small = handoff(48, &[(15, 0x1000, 1)]);
        // Descriptor size 16: smaller than a descriptor.
        small[32..36].copy_from_slice(&16u32.to_le_bytes());
        assert_eq!(
            for_each_unaccepted(&small, |_, _| {}),
            Err(SnpBootError::BadLayout)
        );
        let overflow = handoff(48, &[(15, u64::MAX - 0xFFF, 2)]);
        assert_eq!(
            for_each_unaccepted(&overflow, |_, _| {}),
            Err(SnpBootError::BadLayout)
        );
        let mut zero_tag = handoff(48, &[]);
        zero_tag[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            for_each_unaccepted(&zero_tag, |_, _| {}),
            Err(SnpBootError::BadLayout)
        );
    }
}
