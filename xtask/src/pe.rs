//! The UEFI form of the kernel: wraps the linked ELF into a PE32+ EFI application.
//!
//! OVMF's measured direct boot (SEV-SNP with kernel hashes) loads `-kernel` only through
//! `LoadImage`, i.e. as a PE image (DESIGN.md "Boot paths", 3). The kernel is a static,
//! non-relocatable ELF linked at 32 MiB (boot/linker.ld), so the PE image says exactly that:
//!
//! - `ImageBase` is 64 KiB below the first loadable byte (room for the headers, and the
//!   64 KiB alignment PE/COFF asks of an image base), and each section's RVA is its link
//!   address minus `ImageBase`; the firmware places every byte where the ELF wants it;
//! - no `.reloc` section and `IMAGE_FILE_RELOCS_STRIPPED`: EDK2's loader then allocates the
//!   image at `ImageBase` or refuses it; it never moves it (the kernel is not
//!   position-independent);
//! - one section per group of `PT_LOAD` segments that share a page, with the group's
//!   permissions (code: execute/read; read-only data; data: read/write); `.bss` becomes
//!   uninitialized data the loader zero-fills;
//! - the entry point is the ELF symbol `cairn_efi_entry` (boot/src/entry.rs);
//! - subsystem EFI application (10), machine x86-64.
//!
//! Layout written (PE/COFF specification, "MS-DOS Stub", "Signature", "COFF File Header",
//! "Optional Header (Image Only)", "Section Table"):
//!
//! ```text
//!  0x00  MZ header, e_lfanew (0x3C) = 0x80      0x40  DOS stub program + message
//!  0x80  "PE\0\0"   0x84  COFF header (20)      0x98  optional header PE32+ (240)
//! 0x188  section headers (40 each)              FILE_ALIGNMENT: section raw data
//! ```
//!
//! QEMU, given a `-kernel` that is neither a Linux bzImage nor multiboot nor PVH, still
//! writes its old-protocol command-line pointer into bytes 0x20..0x24 of the file before it
//! hands it to the firmware through fw_cfg; those are MZ-header `e_res` bytes no PE loader
//! reads, so they are left zero here.

use std::fmt;

/// Section alignment in memory (one page).
pub const SECTION_ALIGNMENT_BYTES: u64 = 0x1000;
/// Raw-data alignment in the file.
pub const FILE_ALIGNMENT_BYTES: u64 = 0x200;
/// PE/COFF wants an image base that is a multiple of 64 KiB.
pub const IMAGE_BASE_ALIGNMENT_BYTES: u64 = 0x1_0000;
/// The ELF symbol that is the PE entry point.
pub const ENTRY_SYMBOL: &str = "cairn_efi_entry";

const PE_HEADER_OFFSET: usize = 0x80;
const COFF_HEADER_BYTES: usize = 20;
const OPTIONAL_HEADER_BYTES: usize = 240;
const SECTION_HEADER_BYTES: usize = 40;
const DATA_DIRECTORY_COUNT: u32 = 16;

const MACHINE_AMD64: u16 = 0x8664;
const FILE_RELOCS_STRIPPED: u16 = 0x0001;
const FILE_EXECUTABLE_IMAGE: u16 = 0x0002;
const FILE_LARGE_ADDRESS_AWARE: u16 = 0x0020;
const FILE_DEBUG_STRIPPED: u16 = 0x0200;
const OPTIONAL_MAGIC_PE32_PLUS: u16 = 0x20B;
/// IMAGE_SUBSYSTEM_EFI_APPLICATION.
pub const SUBSYSTEM_EFI_APPLICATION: u16 = 10;

const SCN_CNT_CODE: u32 = 0x0000_0020;
const SCN_CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
const SCN_CNT_UNINITIALIZED_DATA: u32 = 0x0000_0080;
const SCN_MEM_EXECUTE: u32 = 0x2000_0000;
const SCN_MEM_READ: u32 = 0x4000_0000;
const SCN_MEM_WRITE: u32 = 0x8000_0000;

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const SHT_SYMTAB: u32 = 2;

/// The DOS program: print the message at DS:000E with INT 21h/09h, exit with INT 21h/4Ch.
const DOS_STUB_CODE: [u8; 14] = [
    0x0E, 0x1F, 0xBA, 0x0E, 0x00, 0xB4, 0x09, 0xCD, 0x21, 0xB8, 0x01, 0x4C, 0xCD, 0x21,
];
const DOS_STUB_MESSAGE: &[u8] = b"This program cannot be run in DOS mode.\r\r\n$";

/// Why an ELF could not be wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeError {
    /// Not a little-endian ELF64 x86-64 executable, or a header runs past the file.
    BadElf(&'static str),
    /// No `PT_LOAD` segment.
    NoLoadableSegment,
    /// The entry symbol is not in the symbol table.
    NoEntrySymbol,
    /// The image does not fit the 32-bit RVAs of PE32+ or lies below its headers.
    Layout(&'static str),
}

impl fmt::Display for PeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeError::BadElf(why) => write!(f, "not a usable kernel ELF: {why}"),
            PeError::NoLoadableSegment => write!(f, "the ELF has no PT_LOAD segment"),
            PeError::NoEntrySymbol => write!(f, "the ELF has no `{ENTRY_SYMBOL}` symbol"),
            PeError::Layout(why) => write!(f, "cannot lay the image out as PE32+: {why}"),
        }
    }
}

/// One `PT_LOAD` program header.
#[derive(Debug, Clone, Copy)]
struct Segment {
    offset: u64,
    vaddr: u64,
    file_bytes: u64,
    mem_bytes: u64,
    flags: u32,
}

/// A PE section made of the segments that share its pages.
#[derive(Debug, Clone)]
pub struct Section {
    pub name: [u8; 8],
    /// Link (and load) address of the first byte.
    pub vaddr: u64,
    /// Bytes in memory (zero-filled past `data`).
    pub mem_bytes: u64,
    /// The initialized bytes.
    pub data: Vec<u8>,
    pub characteristics: u32,
}

/// What [`wrap`] produced, for the build log and the tests.
#[derive(Debug, Clone)]
pub struct PeImage {
    pub bytes: Vec<u8>,
    pub image_base: u64,
    pub entry: u64,
    pub sections: Vec<Section>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, PeError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(PeError::BadElf("truncated"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, PeError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(PeError::BadElf("truncated"))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, PeError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(PeError::BadElf("truncated"))
}

fn check_elf_header(elf: &[u8]) -> Result<(), PeError> {
    const EM_X86_64: u16 = 62;
    const ET_EXEC: u16 = 2;
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(PeError::BadElf("no ELF magic"));
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(PeError::BadElf("not ELF64 little-endian"));
    }
    if u16_at(elf, 0x10)? != ET_EXEC || u16_at(elf, 0x12)? != EM_X86_64 {
        return Err(PeError::BadElf("not an x86-64 executable"));
    }
    Ok(())
}

fn load_segments(elf: &[u8]) -> Result<Vec<Segment>, PeError> {
    let phoff = u64_at(elf, 0x20)? as usize;
    let phentsize = u16_at(elf, 0x36)? as usize;
    let phnum = u16_at(elf, 0x38)? as usize;
    let mut out = Vec::new();
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        if u32_at(elf, at)? != PT_LOAD {
            continue;
        }
        let seg = Segment {
            flags: u32_at(elf, at + 4)?,
            offset: u64_at(elf, at + 8)?,
            vaddr: u64_at(elf, at + 16)?,
            file_bytes: u64_at(elf, at + 32)?,
            mem_bytes: u64_at(elf, at + 40)?,
        };
        let end = seg.offset.checked_add(seg.file_bytes);
        if end.is_none_or(|e| e > elf.len() as u64) || seg.file_bytes > seg.mem_bytes {
            return Err(PeError::BadElf("segment outside the file"));
        }
        if seg.mem_bytes > 0 {
            out.push(seg);
        }
    }
    out.sort_by_key(|s| s.vaddr);
    Ok(out)
}

/// The value of symbol `name` from `.symtab`.
pub fn symbol(elf: &[u8], name: &str) -> Result<u64, PeError> {
    let shoff = u64_at(elf, 0x28)? as usize;
    let shentsize = u16_at(elf, 0x3A)? as usize;
    let shnum = u16_at(elf, 0x3C)? as usize;
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        if u32_at(elf, sh + 4)? != SHT_SYMTAB {
            continue;
        }
        let (off, size) = (
            u64_at(elf, sh + 24)? as usize,
            u64_at(elf, sh + 32)? as usize,
        );
        let entsize = (u64_at(elf, sh + 56)? as usize).max(24);
        let strtab = shoff + u32_at(elf, sh + 40)? as usize * shentsize;
        let str_off = u64_at(elf, strtab + 24)? as usize;
        let str_size = u64_at(elf, strtab + 32)? as usize;
        let strings = elf
            .get(str_off..str_off + str_size)
            .ok_or(PeError::BadElf("string table outside the file"))?;
        for s in (off..off + size).step_by(entsize) {
            let name_at = u32_at(elf, s)? as usize;
            let sym = strings.get(name_at..).unwrap_or(&[]);
            let end = sym.iter().position(|&c| c == 0).unwrap_or(sym.len());
            if &sym[..end] == name.as_bytes() {
                return u64_at(elf, s + 8);
            }
        }
    }
    Err(PeError::NoEntrySymbol)
}

fn page_down(a: u64) -> u64 {
    a & !(SECTION_ALIGNMENT_BYTES - 1)
}

fn align_up(a: u64, to: u64) -> u64 {
    a.div_ceil(to) * to
}

/// Groups the segments into sections: segments whose pages overlap share one section.
fn sections_of(elf: &[u8], segments: &[Segment]) -> Vec<Section> {
    let mut groups: Vec<Vec<Segment>> = Vec::new();
    for seg in segments {
        match groups.last_mut() {
            Some(g)
                if page_down(seg.vaddr)
                    < align_up(
                        g.iter().map(|s| s.vaddr + s.mem_bytes).max().unwrap_or(0),
                        SECTION_ALIGNMENT_BYTES,
                    ) =>
            {
                g.push(*seg)
            }
            _ => groups.push(vec![*seg]),
        }
    }
    groups
        .iter()
        .map(|g| {
            let start = page_down(g[0].vaddr);
            let end = g
                .iter()
                .map(|s| s.vaddr + s.mem_bytes)
                .max()
                .unwrap_or(start);
            let file_end = g
                .iter()
                .filter(|s| s.file_bytes > 0)
                .map(|s| s.vaddr + s.file_bytes)
                .max()
                .unwrap_or(start);
            let mut data = vec![0u8; (file_end - start) as usize];
            for s in g {
                let at = (s.vaddr - start) as usize;
                let src = &elf[s.offset as usize..(s.offset + s.file_bytes) as usize];
                data[at..at + src.len()].copy_from_slice(src);
            }
            let flags = g.iter().fold(0, |f, s| f | s.flags);
            let (name, characteristics) = if flags & PF_X != 0 {
                (
                    *b".text\0\0\0",
                    SCN_CNT_CODE | SCN_MEM_EXECUTE | SCN_MEM_READ,
                )
            } else if flags & PF_W != 0 && data.is_empty() {
                (
                    *b".bss\0\0\0\0",
                    SCN_CNT_UNINITIALIZED_DATA | SCN_MEM_READ | SCN_MEM_WRITE,
                )
            } else if flags & PF_W != 0 {
                (
                    *b".data\0\0\0",
                    SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ | SCN_MEM_WRITE,
                )
            } else {
                (*b".rdata\0\0", SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ)
            };
            Section {
                name,
                vaddr: start,
                mem_bytes: end - start,
                data,
                characteristics,
            }
        })
        .collect()
}

/// Wraps a linked kernel ELF into a PE32+ EFI application (see the module documentation).
pub fn wrap(elf: &[u8]) -> Result<PeImage, PeError> {
    check_elf_header(elf)?;
    let segments = load_segments(elf)?;
    let first = segments.first().ok_or(PeError::NoLoadableSegment)?;
    let entry = symbol(elf, ENTRY_SYMBOL)?;
    let sections = sections_of(elf, &segments);
    let headers_bytes = PE_HEADER_OFFSET
        + 4
        + COFF_HEADER_BYTES
        + OPTIONAL_HEADER_BYTES
        + SECTION_HEADER_BYTES * sections.len();
    let size_of_headers = align_up(headers_bytes as u64, FILE_ALIGNMENT_BYTES);
    let image_base = page_down(first.vaddr)
        .checked_sub(align_up(size_of_headers, SECTION_ALIGNMENT_BYTES))
        .ok_or(PeError::Layout(
            "the kernel is linked too low for its headers",
        ))?
        / IMAGE_BASE_ALIGNMENT_BYTES
        * IMAGE_BASE_ALIGNMENT_BYTES;
    let image_end = sections
        .iter()
        .map(|s| s.vaddr + s.mem_bytes)
        .max()
        .unwrap_or(image_base);
    let size_of_image = align_up(image_end - image_base, SECTION_ALIGNMENT_BYTES);
    let rva = |a: u64| -> Result<u32, PeError> {
        u32::try_from(a - image_base).map_err(|_| PeError::Layout("RVA beyond 4 GiB"))
    };
    if !(first.vaddr..image_end).contains(&entry) {
        return Err(PeError::Layout("entry symbol outside the image"));
    }
    let mut out = vec![0u8; size_of_headers as usize];
    write_dos_stub(&mut out);
    let mut raw_at = size_of_headers;
    let mut table = Vec::new();
    let (mut code, mut init, mut uninit) = (0u64, 0u64, 0u64);
    for s in &sections {
        let raw_bytes = align_up(s.data.len() as u64, FILE_ALIGNMENT_BYTES);
        let mut h = Vec::with_capacity(SECTION_HEADER_BYTES);
        h.extend_from_slice(&s.name);
        h.extend_from_slice(&(s.mem_bytes as u32).to_le_bytes());
        h.extend_from_slice(&rva(s.vaddr)?.to_le_bytes());
        h.extend_from_slice(&(raw_bytes as u32).to_le_bytes());
        let pointer = if raw_bytes == 0 { 0 } else { raw_at as u32 };
        h.extend_from_slice(&pointer.to_le_bytes());
        h.extend_from_slice(&[0u8; 12]);
        h.extend_from_slice(&s.characteristics.to_le_bytes());
        table.extend_from_slice(&h);
        raw_at += raw_bytes;
        match s.characteristics {
            c if c & SCN_CNT_CODE != 0 => code += s.mem_bytes,
            c if c & SCN_CNT_UNINITIALIZED_DATA != 0 => uninit += s.mem_bytes,
            _ => init += s.mem_bytes,
        }
    }
    let base_of_code = sections
        .iter()
        .find(|s| s.characteristics & SCN_CNT_CODE != 0)
        .map_or(Ok(0), |s| rva(s.vaddr))?;
    let mut w = HeaderWriter {
        out: &mut out,
        at: PE_HEADER_OFFSET,
    };
    w.bytes(b"PE\0\0");
    // COFF file header.
    w.u16(MACHINE_AMD64);
    w.u16(sections.len() as u16);
    w.u32(0); // TimeDateStamp: 0 keeps the build reproducible.
    w.u32(0);
    w.u32(0);
    w.u16(OPTIONAL_HEADER_BYTES as u16);
    w.u16(
        FILE_RELOCS_STRIPPED
            | FILE_EXECUTABLE_IMAGE
            | FILE_LARGE_ADDRESS_AWARE
            | FILE_DEBUG_STRIPPED,
    );
    // Optional header, standard fields (PE32+).
    w.u16(OPTIONAL_MAGIC_PE32_PLUS);
    w.bytes(&[0, 0]); // linker version
    w.u32(code as u32);
    w.u32(init as u32);
    w.u32(uninit as u32);
    w.u32(rva(entry)?);
    w.u32(base_of_code);
    // Windows-specific fields.
    w.u64(image_base);
    w.u32(SECTION_ALIGNMENT_BYTES as u32);
    w.u32(FILE_ALIGNMENT_BYTES as u32);
    w.bytes(&[0; 8]); // OS and image versions
    w.u16(0); // subsystem version
    w.u16(0);
    w.u32(0); // Win32VersionValue
    w.u32(u32::try_from(size_of_image).map_err(|_| PeError::Layout("image beyond 4 GiB"))?);
    w.u32(size_of_headers as u32);
    w.u32(0); // CheckSum: not checked for EFI applications
    w.u16(SUBSYSTEM_EFI_APPLICATION);
    w.u16(0); // DllCharacteristics
    for _ in 0..4 {
        w.u64(0); // stack and heap reserve/commit: meaningless for EFI
    }
    w.u32(0); // LoaderFlags
    w.u32(DATA_DIRECTORY_COUNT);
    w.bytes(&[0; 8 * DATA_DIRECTORY_COUNT as usize]);
    w.bytes(&table);
    debug_assert!(w.at == headers_bytes);
    for s in &sections {
        let raw_bytes = align_up(s.data.len() as u64, FILE_ALIGNMENT_BYTES) as usize;
        out.extend_from_slice(&s.data);
        out.resize(out.len() + raw_bytes - s.data.len(), 0);
    }
    Ok(PeImage {
        bytes: out,
        image_base,
        entry,
        sections,
    })
}

fn write_dos_stub(out: &mut [u8]) {
    out[0..2].copy_from_slice(b"MZ");
    // e_cblp, e_cp: bytes on the last 512-byte page and the page count of the DOS program;
    // e_cparhdr: header paragraphs (0x40 bytes = 4); e_lfanew at 0x3C.
    out[2..4].copy_from_slice(&0x90u16.to_le_bytes());
    out[4..6].copy_from_slice(&1u16.to_le_bytes());
    out[8..10].copy_from_slice(&4u16.to_le_bytes());
    out[0x3C..0x40].copy_from_slice(&(PE_HEADER_OFFSET as u32).to_le_bytes());
    out[0x40..0x40 + DOS_STUB_CODE.len()].copy_from_slice(&DOS_STUB_CODE);
    let msg = 0x40 + DOS_STUB_CODE.len();
    out[msg..msg + DOS_STUB_MESSAGE.len()].copy_from_slice(DOS_STUB_MESSAGE);
}

struct HeaderWriter<'a> {
    out: &'a mut Vec<u8>,
    at: usize,
}

impl HeaderWriter<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.out[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 executable: the given PT_LOADs (vaddr, file bytes, mem bytes, flags)
    /// with their data, and a symbol table holding `cairn_efi_entry` at `entry`.
    fn elf(loads: &[(u64, Vec<u8>, u64, u32)], entry: u64) -> Vec<u8> {
        let phoff = 64usize;
        let mut data_at = phoff + 56 * loads.len();
        let mut out = vec![0u8; data_at];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[0x10..0x12].copy_from_slice(&2u16.to_le_bytes());
        out[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        out[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
        out[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        out[0x38..0x3A].copy_from_slice(&(loads.len() as u16).to_le_bytes());
        for (i, (vaddr, bytes, mem, flags)) in loads.iter().enumerate() {
            let ph = phoff + 56 * i;
            out[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            out[ph + 4..ph + 8].copy_from_slice(&flags.to_le_bytes());
            out[ph + 8..ph + 16].copy_from_slice(&(data_at as u64).to_le_bytes());
            out[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
            out[ph + 32..ph + 40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            out[ph + 40..ph + 48].copy_from_slice(&mem.to_le_bytes());
            data_at += bytes.len();
        }
        for (_, bytes, _, _) in loads {
            out.extend_from_slice(bytes);
        }
        // .strtab, .symtab, then the section headers: null, symtab, strtab.
        let strtab_off = out.len();
        let strings = b"\0cairn_efi_entry\0other\0";
        out.extend_from_slice(strings);
        let symtab_off = out.len();
        let sym = |name: u32, value: u64| {
            let mut s = vec![0u8; 24];
            s[..4].copy_from_slice(&name.to_le_bytes());
            s[8..16].copy_from_slice(&value.to_le_bytes());
            s
        };
        let syms = [sym(0, 0), sym(17, 0x1234), sym(1, entry)].concat();
        out.extend_from_slice(&syms);
        let shoff = out.len();
        let sh = |kind: u32, off: usize, size: usize, link: u32| {
            let mut h = vec![0u8; 64];
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            h[40..44].copy_from_slice(&link.to_le_bytes());
            h[56..64].copy_from_slice(&24u64.to_le_bytes());
            h
        };
        let headers = [
            sh(0, 0, 0, 0),
            sh(SHT_SYMTAB, symtab_off, syms.len(), 2),
            sh(3, strtab_off, strings.len(), 0),
        ]
        .concat();
        out.extend_from_slice(&headers);
        out[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        out[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        out[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        out
    }

    fn kernel_like() -> Vec<u8> {
        elf(
            &[
                (0x100_0000, vec![0xAA; 0x20], 0x20, PF_X | 4),
                (0x100_0040, vec![0xBB; 0x10], 0x10, 4),
                (0x100_1000, vec![0xCC; 0x1800], 0x1800, PF_X | 4),
                (0x100_3000, vec![0xDD; 0x100], 0x100, 4),
                (0x100_4000, vec![0xEE; 0x80], 0x80, PF_W | 4),
                (0x100_5000, vec![], 0x3000, PF_W | 4),
            ],
            0x100_0010,
        )
    }

    fn le16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn le64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn headers_say_pe32_plus_efi_application_at_a_fixed_base() {
        let pe = wrap(&kernel_like()).unwrap();
        let b = &pe.bytes;
        assert_eq!(&b[..2], b"MZ");
        let pe_at = le32(b, 0x3C) as usize;
        assert_eq!(&b[pe_at..pe_at + 4], b"PE\0\0");
        let coff = pe_at + 4;
        assert_eq!(le16(b, coff), 0x8664);
        assert_eq!(le16(b, coff + 2), 5, "boot+note share a page: 5 sections");
        assert_eq!(le16(b, coff + 16), 240);
        let chars = le16(b, coff + 18);
        assert_ne!(chars & FILE_RELOCS_STRIPPED, 0);
        assert_ne!(chars & FILE_EXECUTABLE_IMAGE, 0);
        let opt = coff + 20;
        assert_eq!(le16(b, opt), 0x20B);
        assert_eq!(
            le32(b, opt + 16),
            0x100_0010 - 0xFF_0000,
            "entry RVA = symbol - base"
        );
        assert_eq!(le64(b, opt + 24), 0xFF_0000);
        assert_eq!(pe.image_base, 0xFF_0000);
        assert_eq!(le32(b, opt + 32), 0x1000);
        assert_eq!(le32(b, opt + 36), 0x200);
        assert_eq!(le32(b, opt + 56), 0x100_8000 - 0xFF_0000, "SizeOfImage");
        let size_of_headers = le32(b, opt + 60);
        assert_eq!(size_of_headers % 0x200, 0);
        assert_eq!(le16(b, opt + 68), SUBSYSTEM_EFI_APPLICATION);
        assert_eq!(le32(b, opt + 108), 16);
        // No base relocation directory (index 5).
        assert_eq!(le64(b, opt + 112 + 5 * 8), 0);
    }

    #[test]
    fn sections_put_every_byte_at_its_link_address() {
        let elf_bytes = kernel_like();
        let pe = wrap(&elf_bytes).unwrap();
        let b = &pe.bytes;
        let table = 0x80 + 4 + 20 + 240;
        // Load the image the way a PE loader does and compare with the ELF's memory image.
        let base = le64(b, 0x80 + 24 + 24) as usize;
        let mut memory = vec![0u8; le32(b, 0x80 + 24 + 56) as usize];
        let mut names = Vec::new();
        for i in 0..le16(b, 0x86) as usize {
            let h = table + 40 * i;
            names.push(
                String::from_utf8_lossy(&b[h..h + 8])
                    .trim_end_matches('\0')
                    .to_string(),
            );
            let (vsize, rva) = (le32(b, h + 8) as usize, le32(b, h + 12) as usize);
            let (raw, ptr) = (le32(b, h + 16) as usize, le32(b, h + 20) as usize);
            assert_eq!(rva % 0x1000, 0);
            assert_eq!(ptr % 0x200, 0);
            let n = raw.min(vsize);
            memory[rva..rva + n].copy_from_slice(&b[ptr..ptr + n]);
        }
        assert_eq!(names, [".text", ".text", ".rdata", ".data", ".bss"]);
        let at = |a: usize| memory[a - base];
        assert_eq!(at(0x100_0000), 0xAA);
        assert_eq!(at(0x100_001F), 0xAA);
        assert_eq!(at(0x100_0040), 0xBB);
        assert_eq!(at(0x100_1000), 0xCC);
        assert_eq!(at(0x100_27FF), 0xCC);
        assert_eq!(at(0x100_3000), 0xDD);
        assert_eq!(at(0x100_4000), 0xEE);
        assert_eq!(at(0x100_7FFF), 0);
        assert_eq!(pe.sections[4].data.len(), 0, ".bss has no raw data");
    }

    #[test]
    fn rejects_what_it_cannot_wrap() {
        assert!(matches!(wrap(b"MZ\0\0"), Err(PeError::BadElf(_))));
        let mut no_entry = kernel_like();
        let at = no_entry
            .windows(15)
            .position(|w| w == b"cairn_efi_entry")
            .unwrap();
        no_entry[at] = b'x';
        assert_eq!(wrap(&no_entry).unwrap_err(), PeError::NoEntrySymbol);
        let low = elf(&[(0x800, vec![1; 16], 16, PF_X)], 0x800);
        assert!(matches!(wrap(&low), Err(PeError::Layout(_))));
        // A segment claiming bytes past the end of the file.
        let mut bad = kernel_like();
        bad[64 + 32..64 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(wrap(&bad).is_err());
    }
}
