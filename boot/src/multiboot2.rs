//! The multiboot2 boot information (multiboot2 spec 1.6, §3.6).
//!
//! ```text
//! info:  0 u32 total_size   4 u32 reserved   8.. tags, each 8-byte aligned
//! tag:   0 u32 type         4 u32 size (header included, padding excluded)
//!   1 command line       8: NUL-terminated string
//!   3 module             8: u32 mod_start, 12: u32 mod_end, 16: string
//!   6 memory map         8: u32 entry_size, 12: u32 entry_version,
//!                       16: entries { u64 base, u64 length, u32 type (e820), u32 reserved }
//!  14 ACPI old RSDP      8: RSDP v1 copy      15 ACPI new RSDP   8: RSDP v2 copy
//!  17 EFI memory map     8: u32 descriptor_size, 12: u32 descriptor_version,
//!                       16: EFI_MEMORY_DESCRIPTORs { u32 type, u32 pad, u64 phys_start,
//!                            u64 virt_start, u64 pages, u64 attribute }
//!   0 end
//! ```
//! The memory map tag is used when present; the EFI memory map only when it is not (GRUB on
//! UEFI derives tag 6 from the EFI map).

use crate::{
    info::Module, read_u32, read_u64, BootError, BootInfo, BootProtocol, MemoryKind, PhysMemory,
    RsdpCopy,
};

/// The value of EAX at a multiboot2 entry.
pub const BOOT_MAGIC: u32 = 0x36d7_6289;
/// The largest information structure accepted.
pub const MAX_INFO_BYTES: usize = 1024 * 1024;
const EFI_PAGE_BYTES: u64 = 4096;

const TAG_END: u32 = 0;
const TAG_CMDLINE: u32 = 1;
const TAG_MODULE: u32 = 3;
const TAG_MMAP: u32 = 6;
const TAG_ACPI_OLD: u32 = 14;
const TAG_ACPI_NEW: u32 = 15;
const TAG_EFI_MMAP: u32 = 17;

/// Parses the information structure at `paddr`.
pub fn parse(paddr: u64, mem: &dyn PhysMemory) -> Result<BootInfo, BootError> {
    let head = mem.bytes(paddr, 8).ok_or(BootError::Unreadable(paddr))?;
    let total = read_u32(head, 0).ok_or(BootError::Truncated)? as usize;
    if !(16..=MAX_INFO_BYTES).contains(&total) {
        return Err(BootError::Truncated);
    }
    let all = mem
        .bytes(paddr, total)
        .ok_or(BootError::Unreadable(paddr))?;
    let mut info = BootInfo::new(BootProtocol::Multiboot2, paddr);
    let mut efi_mmap = None;
    let mut have_mmap = false;
    for tag in Tags::new(all) {
        let (kind, body) = tag?;
        match kind {
            TAG_CMDLINE => info.set_cmdline(until_nul(body)),
            TAG_MODULE => parse_module(&mut info, body)?,
            TAG_MMAP => {
                have_mmap = true;
                parse_mmap(&mut info, body)?;
            }
            // A v2 RSDP (tag 15) wins over a v1 copy (tag 14), whatever their order.
            TAG_ACPI_OLD if info.rsdp.is_none() => info.rsdp = RsdpCopy::from_bytes(body),
            TAG_ACPI_NEW => info.rsdp = RsdpCopy::from_bytes(body).or(info.rsdp),
            TAG_EFI_MMAP => efi_mmap = Some(body),
            _ => {}
        }
    }
    if let (false, Some(body)) = (have_mmap, efi_mmap) {
        parse_efi_mmap(&mut info, body)?;
    }
    Ok(info)
}

/// Iterates over (type, body) of the tags after the 8-byte header, up to the end tag.
struct Tags<'a> {
    all: &'a [u8],
    at: usize,
    done: bool,
}

impl<'a> Tags<'a> {
    fn new(all: &'a [u8]) -> Tags<'a> {
        Tags {
            all,
            at: 8,
            done: false,
        }
    }
}

impl<'a> Iterator for Tags<'a> {
    type Item = Result<(u32, &'a [u8]), BootError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.at + 8 > self.all.len() {
            return None;
        }
        let kind = read_u32(self.all, self.at)?;
        let size = read_u32(self.all, self.at + 4)? as usize;
        if kind == TAG_END {
            self.done = true;
            return None;
        }
        let Some(body) = self.all.get(self.at + 8..self.at + size.max(8)) else {
            self.done = true;
            return Some(Err(BootError::Truncated));
        };
        if size < 8 {
            self.done = true;
            return Some(Err(BootError::Truncated));
        }
        self.at += (size + 7) & !7;
        Some(Ok((kind, body)))
    }
}

fn until_nul(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

fn parse_module(info: &mut BootInfo, body: &[u8]) -> Result<(), BootError> {
    let start = read_u32(body, 0).ok_or(BootError::Truncated)?;
    let end = read_u32(body, 4).ok_or(BootError::Truncated)?;
    let cmdline = until_nul(body.get(8..).unwrap_or(&[]));
    let len = u64::from(end.saturating_sub(start));
    info.add_module(Module::new(u64::from(start), len, cmdline));
    Ok(())
}

fn parse_mmap(info: &mut BootInfo, body: &[u8]) -> Result<(), BootError> {
    let entry = read_u32(body, 0).ok_or(BootError::Truncated)? as usize;
    if entry < 24 {
        return Err(BootError::Truncated);
    }
    for e in body.get(8..).unwrap_or(&[]).chunks_exact(entry) {
        let base = read_u64(e, 0).ok_or(BootError::Truncated)?;
        let len = read_u64(e, 8).ok_or(BootError::Truncated)?;
        let kind = read_u32(e, 16).ok_or(BootError::Truncated)?;
        info.add_region(base, len, MemoryKind::from_e820(kind));
    }
    Ok(())
}

fn parse_efi_mmap(info: &mut BootInfo, body: &[u8]) -> Result<(), BootError> {
    let desc = read_u32(body, 0).ok_or(BootError::Truncated)? as usize;
    if desc < 40 {
        return Err(BootError::Truncated);
    }
    for d in body.get(8..).unwrap_or(&[]).chunks_exact(desc) {
        let kind = read_u32(d, 0).ok_or(BootError::Truncated)?;
        let base = read_u64(d, 8).ok_or(BootError::Truncated)?;
        let pages = read_u64(d, 24).ok_or(BootError::Truncated)?;
        let len = pages.saturating_mul(EFI_PAGE_BYTES);
        info.add_region(base, len, MemoryKind::from_efi(kind));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests_support::FakeMemory;

    fn tag(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
    }

    fn info_bytes(tags: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![0u8; 8];
        for (k, b) in tags {
            tag(&mut out, *k, b);
        }
        tag(&mut out, TAG_END, &[]);
        let total = out.len() as u32;
        out[..4].copy_from_slice(&total.to_le_bytes());
        out
    }

    fn e820(base: u64, len: u64, kind: u32) -> Vec<u8> {
        let mut v = base.to_le_bytes().to_vec();
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v
    }

    fn rsdp(revision: u8) -> Vec<u8> {
        let mut r = vec![0u8; 36];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[15] = revision;
        r[16..20].copy_from_slice(&0x7fe_0000u32.to_le_bytes());
        r[24..32].copy_from_slice(&0x7fe_1000u64.to_le_bytes());
        let s = r[..20].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        r[8] = 0u8.wrapping_sub(s);
        let s = r.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        r[32] = 0u8.wrapping_sub(s);
        r
    }

    #[test]
    fn parses_grub_bios_like_info() {
        let mut mmap = 24u32.to_le_bytes().to_vec();
        mmap.extend_from_slice(&0u32.to_le_bytes());
        mmap.extend(e820(0, 0x9fc00, 1));
        mmap.extend(e820(0xf0000, 0x10000, 2));
        mmap.extend(e820(0x10_0000, 0x1fe0_0000, 1));
        let mut module = 0x40_0000u32.to_le_bytes().to_vec();
        module.extend_from_slice(&0x40_1000u32.to_le_bytes());
        module.extend_from_slice(b"config\0");
        let bytes = info_bytes(&[
            (TAG_CMDLINE, b"/boot/kernel.elf cairn.exit=1\0".to_vec()),
            (TAG_MODULE, module),
            (TAG_MMAP, mmap),
            (TAG_ACPI_NEW, rsdp(2)),
            (TAG_ACPI_OLD, rsdp(0)[..20].to_vec()),
        ]);
        let mut m = FakeMemory::new(0x8000, bytes.len());
        m.put(0x8000, &bytes);
        let info = parse(0x8000, &m).expect("parse");
        assert_eq!(info.protocol, BootProtocol::Multiboot2);
        assert_eq!(info.option("cairn.exit"), Some("1"));
        assert_eq!(info.memory_map().len(), 3);
        assert_eq!(info.usable_bytes(), 0x9fc00 + 0x1fe0_0000);
        assert_eq!(info.modules()[0].len, 0x1000);
        assert_eq!(info.modules()[0].cmdline(), "config");
        let r = info.rsdp.expect("rsdp");
        assert_eq!(r.revision(), 2);
        assert_eq!(r.xsdt_paddr(), Some(0x7fe_1000));
    }

    #[test]
    fn falls_back_to_efi_memory_map() {
        let mut efi = 48u32.to_le_bytes().to_vec();
        efi.extend_from_slice(&1u32.to_le_bytes());
        for (kind, base, pages) in [(7u32, 0x10_0000u64, 0x100u64), (4, 0x20_0000, 0x10)] {
            let mut d = vec![0u8; 48];
            d[..4].copy_from_slice(&kind.to_le_bytes());
            d[8..16].copy_from_slice(&base.to_le_bytes());
            d[24..32].copy_from_slice(&pages.to_le_bytes());
            efi.extend(d);
        }
        let bytes = info_bytes(&[(TAG_EFI_MMAP, efi)]);
        let mut m = FakeMemory::new(0x8000, bytes.len());
        m.put(0x8000, &bytes);
        let info = parse(0x8000, &m).expect("parse");
        // Conventional and boot-services memory are adjacent and both usable: one region.
        assert_eq!(info.memory_map().len(), 1);
        assert_eq!(info.usable_bytes(), 0x110 * 4096);
    }

    #[test]
    fn truncated_tag_is_an_error() {
        let mut bytes = info_bytes(&[(TAG_CMDLINE, b"x\0".to_vec())]);
        bytes[12..16].copy_from_slice(&4096u32.to_le_bytes());
        let mut m = FakeMemory::new(0x8000, bytes.len());
        m.put(0x8000, &bytes);
        assert!(matches!(parse(0x8000, &m), Err(BootError::Truncated)));
    }

    #[test]
    fn the_uefi_entry_hands_over_multiboot2_form_as_protocol_3() {
        let bytes = info_bytes(&[(TAG_CMDLINE, b"cairn.exit=1\0".to_vec())]);
        let mut mem = FakeMemory::new(0x9000, 0x1000);
        mem.put(0x9000, &bytes);
        let info = crate::parse(3, 0x9000, &mem).unwrap();
        assert_eq!(info.protocol, BootProtocol::Uefi);
        assert_eq!(info.cmdline(), "cairn.exit=1");
        assert_eq!(
            crate::parse(2, 0x9000, &mem).unwrap().protocol,
            BootProtocol::Multiboot2
        );
    }
}
