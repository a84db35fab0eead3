//! PVH `hvm_start_info` (Xen `include/public/arch-x86/hvm/start_info.h`).
//!
//! ```text
//! hvm_start_info (version 1)          hvm_modlist_entry        hvm_memmap_table_entry
//!  0 u32 magic = 0x336ec578            0 u64 paddr              0 u64 addr
//!  4 u32 version                       8 u64 size               8 u64 size
//!  8 u32 flags                        16 u64 cmdline_paddr     16 u32 type (e820)
//! 12 u32 nr_modules                   24 u64 reserved          20 u32 reserved
//! 16 u64 modlist_paddr
//! 24 u64 cmdline_paddr
//! 32 u64 rsdp_paddr
//! 40 u64 memmap_paddr     (version >= 1)
//! 48 u32 memmap_entries   (version >= 1)
//! 52 u32 reserved
//! ```

use crate::{
    c_string, info::Module, read_u32, read_u64, BootError, BootInfo, BootProtocol, MemoryKind,
    PhysMemory, RsdpCopy, MAX_CMDLINE_BYTES, MAX_MEMORY_REGIONS, MAX_MODULES,
    MAX_MODULE_CMDLINE_BYTES,
};

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const START_MAGIC: u32 = 0x336e_c578;
const START_INFO_V0_BYTES: usize = 40;
const START_INFO_V1_BYTES: usize = 56;
const MODLIST_ENTRY_BYTES: usize = 32;
const MEMMAP_ENTRY_BYTES: usize = 24;
/// The most memory-map entries read from the start info (more are ignored).
const MAX_MEMMAP_ENTRIES: usize = 4 * MAX_MEMORY_REGIONS;

/// Parses the start info at `paddr`.
pub fn parse(paddr: u64, mem: &dyn PhysMemory) -> Result<BootInfo, BootError> {
    let head = mem
        .bytes(paddr, START_INFO_V0_BYTES)
        .ok_or(BootError::Unreadable(paddr))?;
    let magic = read_u32(head, 0).ok_or(BootError::Truncated)?;
    if magic != START_MAGIC {
        return Err(BootError::BadMagic(magic));
    }
    let version = read_u32(head, 4).ok_or(BootError::Truncated)?;
    let mut info = BootInfo::new(BootProtocol::Pvh, paddr);

    let cmdline_paddr = read_u64(head, 24).ok_or(BootError::Truncated)?;
    if cmdline_paddr != 0 {
        info.set_cmdline(c_string(mem, cmdline_paddr, MAX_CMDLINE_BYTES));
    }
    let rsdp_paddr = read_u64(head, 32).ok_or(BootError::Truncated)?;
    if rsdp_paddr != 0 {
        info.rsdp = mem.bytes(rsdp_paddr, 36).and_then(RsdpCopy::from_bytes);
    }
    parse_modules(&mut info, head, mem)?;
    if version >= 1 {
        let v1 = mem
            .bytes(paddr, START_INFO_V1_BYTES)
            .ok_or(BootError::Unreadable(paddr))?;
        parse_memmap(&mut info, v1, mem)?;
    }
    Ok(info)
}

fn parse_modules(info: &mut BootInfo, head: &[u8], mem: &dyn PhysMemory) -> Result<(), BootError> {
    let count = read_u32(head, 12).ok_or(BootError::Truncated)? as usize;
    let list = read_u64(head, 16).ok_or(BootError::Truncated)?;
    for i in 0..count.min(MAX_MODULES) {
        let at = list + (i * MODLIST_ENTRY_BYTES) as u64;
        let e = mem
            .bytes(at, MODLIST_ENTRY_BYTES)
            .ok_or(BootError::Unreadable(at))?;
        let (base, size, cmd) = (
            read_u64(e, 0).ok_or(BootError::Truncated)?,
            read_u64(e, 8).ok_or(BootError::Truncated)?,
            read_u64(e, 16).ok_or(BootError::Truncated)?,
        );
        let cmdline = if cmd == 0 {
            &[][..]
        } else {
            c_string(mem, cmd, MAX_MODULE_CMDLINE_BYTES)
        };
        info.add_module(Module::new(base, size, cmdline));
    }
    Ok(())
}

fn parse_memmap(info: &mut BootInfo, v1: &[u8], mem: &dyn PhysMemory) -> Result<(), BootError> {
    let table = read_u64(v1, 40).ok_or(BootError::Truncated)?;
    let count = read_u32(v1, 48).ok_or(BootError::Truncated)? as usize;
    for i in 0..count.min(MAX_MEMMAP_ENTRIES) {
        let at = table + (i * MEMMAP_ENTRY_BYTES) as u64;
        let e = mem
            .bytes(at, MEMMAP_ENTRY_BYTES)
            .ok_or(BootError::Unreadable(at))?;
        let base = read_u64(e, 0).ok_or(BootError::Truncated)?;
        let len = read_u64(e, 8).ok_or(BootError::Truncated)?;
        let kind = read_u32(e, 16).ok_or(BootError::Truncated)?;
        info.add_region(base, len, MemoryKind::from_e820(kind));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests_support::FakeMemory;

    #[test]
    fn parses_qemu_like_start_info() {
        let mut m = FakeMemory::new(0x1000, 0x1000);
        // start info at 0x1000, cmdline at 0x1100, memmap at 0x1200, modlist at 0x1300.
        m.put_u32(0x1000, START_MAGIC);
        m.put_u32(0x1004, 1);
        m.put_u32(0x100c, 1);
        m.put_u64(0x1010, 0x1300);
        m.put_u64(0x1018, 0x1100);
        m.put(0x1100, b"cairn.exit=1\0");
        m.put_u64(0x1028, 0x1200);
        m.put_u32(0x1030, 2);
        m.put_u64(0x1200, 0);
        m.put_u64(0x1208, 0x9fc00);
        m.put_u32(0x1210, 1);
        m.put_u64(0x1218, 0x10_0000);
        m.put_u64(0x1220, 0x1ff0_0000);
        m.put_u32(0x1228, 1);
        m.put_u64(0x1300, 0x40_0000);
        m.put_u64(0x1308, 0x1234);
        let info = parse(0x1000, &m).expect("parse");
        assert_eq!(info.protocol, BootProtocol::Pvh);
        assert_eq!(info.option("cairn.exit"), Some("1"));
        assert_eq!(info.memory_map().len(), 2);
        assert_eq!(info.usable_bytes(), 0x9fc00 + 0x1ff0_0000);
        assert_eq!(info.modules().len(), 1);
        assert_eq!(info.modules()[0].len, 0x1234);
        assert!(info.rsdp.is_none());
    }

    #[test]
    fn rejects_bad_magic() {
        let m = FakeMemory::new(0x1000, 0x100);
        assert!(matches!(parse(0x1000, &m), Err(BootError::BadMagic(0))));
        assert!(matches!(parse(0x9000, &m), Err(BootError::Unreadable(_))));
    }
}
