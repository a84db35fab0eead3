//! cairn boot: how the machine hands control to the kernel, and what it tells it.
//!
//! Three entries reach the same kernel (DESIGN.md "Boot paths"):
//! - PVH direct boot (`qemu -kernel`, Xen `hvm_start_info`),
//! - multiboot2 (GRUB on BIOS and UEFI),
//! - the kernel's own UEFI application entry (`kernel.efi`, PE32+), which builds a
//!   multiboot2-form structure from the firmware's tables and enters as protocol 3.
//!
//! [`entry`] holds the entry code (assembled only for the kernel binary, feature `entry`);
//! [`BootInfo`] is the protocol-independent description the kernel receives: the memory map,
//! the command line, the loaded modules and a copy of the ACPI RSDP. It is built from bounded,
//! copied data, so the kernel may reuse every byte of boot-loader memory once it holds it.
//! Parsing is pure (it reads physical memory through [`PhysMemory`]) and host-tested.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(all(feature = "entry", target_arch = "x86_64", not(test)))]
pub mod entry;
mod info;
pub mod multiboot2;
pub mod pvh;

pub use info::{
    BootInfo, BootProtocol, MemoryKind, MemoryRegion, Module, RsdpCopy, MAX_CMDLINE_BYTES,
    MAX_MEMORY_REGIONS, MAX_MODULES, MAX_MODULE_CMDLINE_BYTES,
};

/// Read access to physical memory while the boot information is parsed.
pub trait PhysMemory {
    /// The `len` bytes at physical address `paddr`, or `None` when they are not readable.
    fn bytes(&self, paddr: u64, len: usize) -> Option<&[u8]>;
}

/// Why the boot information could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootError {
    /// The protocol number from the entry code is unknown.
    UnknownProtocol(u64),
    /// The information structure is not readable at its address.
    Unreadable(u64),
    /// A magic number or version did not match.
    BadMagic(u32),
    /// A structure is shorter than its fixed part or runs past its container.
    Truncated,
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootError::UnknownProtocol(p) => write!(f, "unknown boot protocol {p}"),
            BootError::Unreadable(a) => write!(f, "boot information unreadable at {a:#x}"),
            BootError::BadMagic(m) => write!(f, "bad boot information magic {m:#x}"),
            BootError::Truncated => write!(f, "truncated boot information"),
        }
    }
}

/// Parses the boot information the entry code found, for protocol `protocol` (1 = PVH,
/// 2 = multiboot2, 3 = the kernel's UEFI entry, which hands over a multiboot2-form structure
/// it built from the firmware's memory map, load options and configuration table) at
/// physical address `info_paddr`.
pub fn parse(protocol: u64, info_paddr: u64, mem: &dyn PhysMemory) -> Result<BootInfo, BootError> {
    match protocol {
        1 => pvh::parse(info_paddr, mem),
        2 => multiboot2::parse(info_paddr, mem),
        3 => multiboot2::parse(info_paddr, mem).map(|mut info| {
            info.protocol = BootProtocol::Uefi;
            info
        }),
        other => Err(BootError::UnknownProtocol(other)),
    }
}

pub(crate) fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The bytes of a NUL-terminated string at `paddr`, at most `max` long.
pub(crate) fn c_string(mem: &dyn PhysMemory, paddr: u64, max: usize) -> &[u8] {
    // Read in small steps so a string near the end of readable memory is still found.
    let mut len = 0;
    while len < max {
        match mem.bytes(paddr + len as u64, 1) {
            Some([0]) | None => break,
            Some(_) => len += 1,
        }
    }
    mem.bytes(paddr, len).unwrap_or(&[])
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// A window of fake physical memory for parser tests.
    pub struct FakeMemory {
        base: u64,
        bytes: Vec<u8>,
    }

    impl FakeMemory {
        pub fn new(base: u64, len: usize) -> FakeMemory {
            FakeMemory {
                base,
                bytes: vec![0; len],
            }
        }

        pub fn put(&mut self, paddr: u64, data: &[u8]) {
            let at = (paddr - self.base) as usize;
            self.bytes[at..at + data.len()].copy_from_slice(data);
        }

        pub fn put_u32(&mut self, paddr: u64, v: u32) {
            self.put(paddr, &v.to_le_bytes());
        }

        pub fn put_u64(&mut self, paddr: u64, v: u64) {
            self.put(paddr, &v.to_le_bytes());
        }
    }

    impl super::PhysMemory for FakeMemory {
        fn bytes(&self, paddr: u64, len: usize) -> Option<&[u8]> {
            let at = usize::try_from(paddr.checked_sub(self.base)?).ok()?;
            self.bytes.get(at..at.checked_add(len)?)
        }
    }
}
