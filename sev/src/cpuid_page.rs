//! The SEV-SNP CPUID page: the CPUID values the firmware (the PSP) checked at launch, which
//! an SNP guest uses instead of asking the untrusted hypervisor.
//!
//! Layout (SNP firmware ABI #56860 rev 1.55, "CPUID_FUNCTION" / the CPUID page table; Linux
//! `struct snp_cpuid_table`): a 4 KiB page, little-endian.
//!
//! ```text
//!  0x00  u32 count            number of valid entries (at most 64)
//!  0x04  u32 reserved
//!  0x08  u64 reserved
//!  0x10  entries[64], 48 bytes each:
//!        +0x00 u32 eax_in     leaf
//!        +0x04 u32 ecx_in     subleaf (meaningful for indexed leaves only)
//!        +0x08 u64 xcr0_in    XCR0 the entry was computed for (leaf 0xD)
//!        +0x10 u64 xss_in     XSS the entry was computed for (leaf 0xD)
//!        +0x18 u32 eax, +0x1C u32 ebx, +0x20 u32 ecx, +0x24 u32 edx
//!        +0x28 u64 reserved
//! ```
//!
//! Lookup follows Linux's `snp_cpuid`: a leaf matches on `eax_in`, and on `ecx_in` too when
//! the leaf is indexed by ECX; for leaf 0xD subleaves 0 and 1 only the entry describing the
//! legacy XSAVE area (XCR0 = 1 or 3, XSS = 0) is used. A leaf the page does not list reads as
//! all zeros (the caller decides; [`CpuidPage::lookup`] says `None`).

use core::fmt;

use super::ghcb_page::CpuidRegs;

/// Size of the CPUID page.
pub const CPUID_PAGE_BYTES: usize = 4096;
/// The most entries the page holds.
pub const CPUID_MAX_ENTRIES: usize = 64;
/// Size of one entry.
pub const CPUID_ENTRY_BYTES: usize = 48;
/// Offset of the first entry.
pub const CPUID_ENTRIES_OFFSET: usize = 16;

/// Leaves whose output depends on ECX (Linux `cpuid_function_is_indexed`).
const INDEXED_LEAVES: [u32; 15] = [
    0x4,
    0x7,
    0xB,
    0xD,
    0xF,
    0x10,
    0x12,
    0x14,
    0x17,
    0x18,
    0x1D,
    0x1E,
    0x1F,
    0x24,
    0x8000_001D,
];
/// The XSAVE leaf.
const LEAF_XSAVE: u32 = 0xD;

/// Why the CPUID page cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuidPageError {
    /// Fewer bytes than a CPUID page.
    TooShort(usize),
    /// The count exceeds [`CPUID_MAX_ENTRIES`].
    TooManyEntries(u32),
}

impl fmt::Display for CpuidPageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuidPageError::TooShort(n) => write!(f, "CPUID page of {n} bytes"),
            CpuidPageError::TooManyEntries(n) => {
                write!(
                    f,
                    "CPUID page lists {n} entries (at most {CPUID_MAX_ENTRIES})"
                )
            }
        }
    }
}

/// One entry of the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidEntry {
    /// The leaf.
    pub eax_in: u32,
    /// The subleaf.
    pub ecx_in: u32,
    /// XCR0 input (leaf 0xD).
    pub xcr0_in: u64,
    /// XSS input (leaf 0xD).
    pub xss_in: u64,
    /// The output.
    pub regs: CpuidRegs,
}

/// A validated view of a CPUID page.
#[derive(Clone, Copy, Debug)]
pub struct CpuidPage<'a> {
    bytes: &'a [u8],
    count: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// Whether CPUID `leaf` depends on ECX.
pub fn is_indexed(leaf: u32) -> bool {
    INDEXED_LEAVES.contains(&leaf)
}

impl<'a> CpuidPage<'a> {
    /// Checks the size and the count.
    pub fn parse(bytes: &'a [u8]) -> Result<CpuidPage<'a>, CpuidPageError> {
        if bytes.len() < CPUID_PAGE_BYTES {
            return Err(CpuidPageError::TooShort(bytes.len()));
        }
        let count = u32_at(bytes, 0);
        if count as usize > CPUID_MAX_ENTRIES {
            return Err(CpuidPageError::TooManyEntries(count));
        }
        Ok(CpuidPage {
            bytes: &bytes[..CPUID_PAGE_BYTES],
            count: count as usize,
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the page lists nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entry `i` (`i < len()`), else `None`.
    pub fn entry(&self, i: usize) -> Option<CpuidEntry> {
        if i >= self.count {
            return None;
        }
        let at = CPUID_ENTRIES_OFFSET + i * CPUID_ENTRY_BYTES;
        let b = self.bytes;
        Some(CpuidEntry {
            eax_in: u32_at(b, at),
            ecx_in: u32_at(b, at + 0x04),
            xcr0_in: u64_at(b, at + 0x08),
            xss_in: u64_at(b, at + 0x10),
            regs: CpuidRegs {
                eax: u32_at(b, at + 0x18),
                ebx: u32_at(b, at + 0x1C),
                ecx: u32_at(b, at + 0x20),
                edx: u32_at(b, at + 0x24),
            },
        })
    }

    /// The values for CPUID `leaf`/`subleaf`, or `None` when the page does not list it (the
    /// guest then reads zeros).
    pub fn lookup(&self, leaf: u32, subleaf: u32) -> Option<CpuidRegs> {
        (0..self.count)
            .filter_map(|i| self.entry(i))
            .find(|e| {
                e.eax_in == leaf
                    && (!is_indexed(leaf) || e.ecx_in == subleaf)
                    && !(leaf == LEAF_XSAVE
                        && subleaf <= 1
                        && (!matches!(e.xcr0_in, 1 | 3) || e.xss_in != 0))
            })
            .map(|e| e.regs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// A page built byte by byte at the spec's offsets.
    fn page(entries: &[(u32, u32, u64, u64, [u32; 4])]) -> Vec<u8> {
        let mut p = alloc::vec![0u8; CPUID_PAGE_BYTES];
        p[0..4].copy_from_slice(&(entries.len() as u32).to_le_bytes());
        // Reserved header words hold junk: they must be ignored.
        p[4..16].fill(0xEE);
        for (i, &(leaf, sub, xcr0, xss, regs)) in entries.iter().enumerate() {
            let at = 16 + 48 * i;
            p[at..at + 4].copy_from_slice(&leaf.to_le_bytes());
            p[at + 4..at + 8].copy_from_slice(&sub.to_le_bytes());
            p[at + 8..at + 16].copy_from_slice(&xcr0.to_le_bytes());
            p[at + 16..at + 24].copy_from_slice(&xss.to_le_bytes());
            for (k, r) in regs.iter().enumerate() {
                p[at + 24 + 4 * k..at + 28 + 4 * k].copy_from_slice(&r.to_le_bytes());
            }
            p[at + 40..at + 48].fill(0xEE);
        }
        p
    }

    fn regs(r: [u32; 4]) -> CpuidRegs {
        CpuidRegs {
            eax: r[0],
            ebx: r[1],
            ecx: r[2],
            edx: r[3],
        }
    }

    #[test]
    fn entry_layout_is_exact() {
        let mut p = alloc::vec![0u8; CPUID_PAGE_BYTES];
        p[0] = 2;
        // Entry 1 starts at 16 + 48 = 0x40: leaf 0x8000_001F, EBX (at +0x1C) = C-bit 51.
        p[0x40..0x44].copy_from_slice(&[0x1F, 0, 0, 0x80]);
        p[0x40 + 0x18..0x40 + 0x1C].copy_from_slice(&0x0001_781Fu32.to_le_bytes());
        p[0x40 + 0x1C] = 51;
        let page = CpuidPage::parse(&p).unwrap();
        assert_eq!(page.len(), 2);
        let e = page.entry(1).unwrap();
        assert_eq!(e.eax_in, 0x8000_001F);
        assert_eq!(e.regs.eax, 0x0001_781F);
        assert_eq!(e.regs.ebx, 51);
        assert_eq!(page.entry(2), None);
        assert_eq!(
            page.lookup(0x8000_001F, 5).map(|r| r.ebx & 0x3F),
            Some(51),
            "not indexed: any subleaf"
        );
        // The last entry ends at 16 + 64 * 48 = 3088, inside the page.
        assert_eq!(
            CPUID_ENTRIES_OFFSET + CPUID_MAX_ENTRIES * CPUID_ENTRY_BYTES,
            3088
        );
    }

    #[test]
    fn lookup_rules() {
        let p = page(&[
            (0x0, 0, 0, 0, [0x10, 0x6874_7541, 0x444D_4163, 0x6974_6E65]),
            (0x7, 0, 0, 0, [1, 0x219C_95A9, 0, 0]),
            (0x7, 1, 0, 0, [0x10, 0, 0, 0]),
            // Leaf 0xD subleaf 0: an entry for XCR0 = 7 (skipped), then the legacy one.
            (0xD, 0, 7, 0, [7, 0x340, 0x340, 0]),
            (0xD, 0, 1, 0, [7, 0x240, 0x340, 0]),
            (0xD, 1, 3, 1, [0xF, 0x240, 0, 0]),
            (0xD, 2, 0, 0, [0x100, 0x240, 0, 0]),
        ]);
        let page = CpuidPage::parse(&p).unwrap();
        assert_eq!(
            page.lookup(0, 9),
            Some(regs([0x10, 0x6874_7541, 0x444D_4163, 0x6974_6E65]))
        );
        assert_eq!(page.lookup(7, 1), Some(regs([0x10, 0, 0, 0])));
        assert_eq!(page.lookup(7, 2), None, "indexed leaf, subleaf not listed");
        assert_eq!(page.lookup(0xD, 0), Some(regs([7, 0x240, 0x340, 0])));
        assert_eq!(page.lookup(0xD, 1), None, "XSS != 0: not the legacy entry");
        assert_eq!(page.lookup(0xD, 2), Some(regs([0x100, 0x240, 0, 0])));
        assert_eq!(page.lookup(0x4000_0000, 0), None);
    }

    #[test]
    fn malformed_pages_are_refused() {
        let mut p = page(&[]);
        assert!(CpuidPage::parse(&p).unwrap().is_empty());
        p[0..4].copy_from_slice(&65u32.to_le_bytes());
        assert_eq!(
            CpuidPage::parse(&p).unwrap_err(),
            CpuidPageError::TooManyEntries(65)
        );
        p[0..4].copy_from_slice(&64u32.to_le_bytes());
        assert_eq!(CpuidPage::parse(&p).unwrap().len(), 64);
        assert_eq!(
            CpuidPage::parse(&p[..4095]).unwrap_err(),
            CpuidPageError::TooShort(4095)
        );
        assert!(!alloc::format!("{}", CpuidPageError::TooManyEntries(65)).is_empty());
    }
}
