//! The protocol-independent boot description.

/// The most memory-map regions kept (after merging adjacent regions of one kind).
pub const MAX_MEMORY_REGIONS: usize = 256;
/// The longest kernel command line kept; longer ones are cut at this length.
pub const MAX_CMDLINE_BYTES: usize = 4096;
/// The most boot modules kept.
pub const MAX_MODULES: usize = 8;
/// The longest module command line kept.
pub const MAX_MODULE_CMDLINE_BYTES: usize = 128;

/// Which protocol booted the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Xen PVH direct boot (`qemu -kernel`).
    Pvh,
    /// Multiboot2 (GRUB, BIOS or UEFI).
    Multiboot2,
    /// The kernel's own UEFI application entry (PE32+, `qemu -kernel kernel.efi` under OVMF).
    Uefi,
}

/// What a physical memory region holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Free RAM (e820 type 1, EFI conventional, loader and boot-services memory).
    Usable,
    /// ACPI tables, reusable once they are read (e820 type 3).
    AcpiReclaimable,
    /// ACPI non-volatile storage (e820 type 4).
    AcpiNvs,
    /// Defective RAM (e820 type 5).
    Bad,
    /// Anything else: firmware, MMIO, holes.
    Reserved,
}

impl MemoryKind {
    /// The kind of an e820 / multiboot2 / PVH memory type.
    pub fn from_e820(kind: u32) -> MemoryKind {
        match kind {
            1 => MemoryKind::Usable,
            3 => MemoryKind::AcpiReclaimable,
            4 => MemoryKind::AcpiNvs,
            5 => MemoryKind::Bad,
            _ => MemoryKind::Reserved,
        }
    }

    /// The kind of a UEFI memory type (UEFI 2.10 §7.2, `EFI_MEMORY_TYPE`), after
    /// ExitBootServices: loader and boot-services memory is free RAM.
    pub fn from_efi(kind: u32) -> MemoryKind {
        match kind {
            1..=4 | 7 => MemoryKind::Usable,
            9 => MemoryKind::AcpiReclaimable,
            10 => MemoryKind::AcpiNvs,
            8 => MemoryKind::Bad,
            _ => MemoryKind::Reserved,
        }
    }
}

/// One physical memory region `[base, base + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    pub base: u64,
    pub len: u64,
    pub kind: MemoryKind,
}

impl MemoryRegion {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.len)
    }
}

/// A boot module (an initrd-like blob) left in memory by the loader.
#[derive(Debug, Clone, Copy)]
pub struct Module {
    pub paddr: u64,
    pub len: u64,
    cmdline: [u8; MAX_MODULE_CMDLINE_BYTES],
    cmdline_len: usize,
}

impl Module {
    pub(crate) fn new(paddr: u64, len: u64, cmdline: &[u8]) -> Module {
        let mut m = Module {
            paddr,
            len,
            cmdline: [0; MAX_MODULE_CMDLINE_BYTES],
            cmdline_len: 0,
        };
        let n = cmdline.len().min(MAX_MODULE_CMDLINE_BYTES);
        m.cmdline[..n].copy_from_slice(&cmdline[..n]);
        m.cmdline_len = n;
        m
    }

    /// The module's command line (lossy: invalid UTF-8 gives "").
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }
}

/// A copy of the ACPI RSDP (ACPI 6.5 §5.2.5.3): 20 bytes for revision 0, 36 for revision 2+.
#[derive(Debug, Clone, Copy)]
pub struct RsdpCopy {
    bytes: [u8; 36],
    len: usize,
}

impl RsdpCopy {
    /// Copies an RSDP if `bytes` starts with one whose checksum is valid.
    pub fn from_bytes(bytes: &[u8]) -> Option<RsdpCopy> {
        let head = bytes.get(..20)?;
        if &head[..8] != b"RSD PTR " || checksum(head) != 0 {
            return None;
        }
        let len = if head[15] >= 2 && bytes.len() >= 36 && checksum(&bytes[..36]) == 0 {
            36
        } else {
            20
        };
        let mut copy = RsdpCopy {
            bytes: [0; 36],
            len,
        };
        copy.bytes[..len].copy_from_slice(&bytes[..len]);
        Some(copy)
    }

    /// The ACPI revision field (0 = ACPI 1.0, RSDT only; 2+ = XSDT present).
    pub fn revision(&self) -> u8 {
        self.bytes[15]
    }

    /// The physical address of the RSDT.
    pub fn rsdt_paddr(&self) -> u64 {
        u64::from(crate::read_u32(&self.bytes, 16).unwrap_or(0))
    }

    /// The physical address of the XSDT, when the RSDP is revision 2+.
    pub fn xsdt_paddr(&self) -> Option<u64> {
        if self.len < 36 {
            return None;
        }
        crate::read_u64(&self.bytes, 24).filter(|&a| a != 0)
    }

    /// The OEM id, for the banner.
    pub fn oem_id(&self) -> &str {
        core::str::from_utf8(&self.bytes[9..15]).unwrap_or("?")
    }
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// Everything the kernel learns from its boot loader, copied into bounded storage.
#[derive(Clone)]
pub struct BootInfo {
    pub protocol: BootProtocol,
    regions: [MemoryRegion; MAX_MEMORY_REGIONS],
    region_count: usize,
    /// Regions that did not fit in `MAX_MEMORY_REGIONS` (they are dropped, not merged).
    pub regions_dropped: usize,
    cmdline: [u8; MAX_CMDLINE_BYTES],
    cmdline_len: usize,
    modules: [Module; MAX_MODULES],
    module_count: usize,
    /// The ACPI RSDP the loader passed, if any.
    pub rsdp: Option<RsdpCopy>,
    /// The physical address of the protocol's information structure (for the banner).
    pub info_paddr: u64,
}

impl BootInfo {
    pub(crate) fn new(protocol: BootProtocol, info_paddr: u64) -> BootInfo {
        BootInfo {
            protocol,
            regions: [MemoryRegion {
                base: 0,
                len: 0,
                kind: MemoryKind::Reserved,
            }; MAX_MEMORY_REGIONS],
            region_count: 0,
            regions_dropped: 0,
            cmdline: [0; MAX_CMDLINE_BYTES],
            cmdline_len: 0,
            modules: [Module::new(0, 0, &[]); MAX_MODULES],
            module_count: 0,
            rsdp: None,
            info_paddr,
        }
    }

    /// Adds a region in sorted position, merging it into an adjacent region of the same kind.
    pub(crate) fn add_region(&mut self, base: u64, len: u64, kind: MemoryKind) {
        if len == 0 {
            return;
        }
        let at = self.regions[..self.region_count].partition_point(|r| r.base < base);
        if at > 0 {
            let prev = &mut self.regions[at - 1];
            if prev.kind == kind && prev.end() == base {
                prev.len += len;
                return;
            }
        }
        if at < self.region_count {
            let next = &mut self.regions[at];
            if next.kind == kind && base.saturating_add(len) == next.base {
                next.base = base;
                next.len += len;
                return;
            }
        }
        if self.region_count == MAX_MEMORY_REGIONS {
            self.regions_dropped += 1;
            return;
        }
        self.regions.copy_within(at..self.region_count, at + 1);
        self.regions[at] = MemoryRegion { base, len, kind };
        self.region_count += 1;
    }

    pub(crate) fn set_cmdline(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(MAX_CMDLINE_BYTES);
        self.cmdline[..n].copy_from_slice(&bytes[..n]);
        self.cmdline_len = n;
    }

    pub(crate) fn add_module(&mut self, module: Module) {
        if self.module_count < MAX_MODULES {
            self.modules[self.module_count] = module;
            self.module_count += 1;
        }
    }

    /// The memory map, sorted by base address.
    pub fn memory_map(&self) -> &[MemoryRegion] {
        &self.regions[..self.region_count]
    }

    /// The loaded modules.
    pub fn modules(&self) -> &[Module] {
        &self.modules[..self.module_count]
    }

    /// The kernel command line (lossy: invalid UTF-8 gives "").
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// The value of `key=value` on the command line (the last one wins); `Some("")` for a
    /// bare `key`.
    pub fn option(&self, key: &str) -> Option<&str> {
        let mut found = None;
        for word in self.cmdline().split_ascii_whitespace() {
            match word.split_once('=') {
                Some((k, v)) if k == key => found = Some(v),
                None if word == key => found = Some(""),
                _ => {}
            }
        }
        found
    }

    /// Total bytes of usable RAM.
    pub fn usable_bytes(&self) -> u64 {
        self.memory_map()
            .iter()
            .filter(|r| r.kind == MemoryKind::Usable)
            .map(|r| r.len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_sort_and_merge() {
        let mut info = BootInfo::new(BootProtocol::Pvh, 0);
        info.add_region(0x10_0000, 0x10_0000, MemoryKind::Usable);
        info.add_region(0, 0x9_f000, MemoryKind::Usable);
        info.add_region(0x20_0000, 0x10_0000, MemoryKind::Usable);
        info.add_region(0xf_0000, 0x1_0000, MemoryKind::Reserved);
        let map = info.memory_map();
        assert_eq!(map.len(), 3);
        assert_eq!(map[0].base, 0);
        assert_eq!(map[1].kind, MemoryKind::Reserved);
        assert_eq!((map[2].base, map[2].len), (0x10_0000, 0x20_0000));
        assert_eq!(info.usable_bytes(), 0x9_f000 + 0x20_0000);
    }

    #[test]
    fn cmdline_options() {
        let mut info = BootInfo::new(BootProtocol::Pvh, 0);
        info.set_cmdline(b"/boot/kernel.elf cairn.ip=10.0.0.2/24 cairn.exit=1 quiet");
        assert_eq!(info.option("cairn.ip"), Some("10.0.0.2/24"));
        assert_eq!(info.option("cairn.exit"), Some("1"));
        assert_eq!(info.option("quiet"), Some(""));
        assert_eq!(info.option("cairn.gw"), None);
    }

    #[test]
    fn rsdp_checksum_checked() {
        let mut r = [0u8; 36];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[9..15].copy_from_slice(b"BOCHS ");
        r[16..20].copy_from_slice(&0x7fe_1234u32.to_le_bytes());
        let sum = r[..20].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        r[8] = 0u8.wrapping_sub(sum);
        let copy = RsdpCopy::from_bytes(&r).expect("valid RSDP");
        assert_eq!(copy.rsdt_paddr(), 0x7fe_1234);
        assert_eq!(copy.xsdt_paddr(), None);
        assert_eq!(copy.oem_id(), "BOCHS ");
        r[8] ^= 1;
        assert!(RsdpCopy::from_bytes(&r).is_none());
    }
}
