//! Where the kernel image and its boot stack lie (symbols from `boot/linker.ld` and
//! `boot::entry`), and reads of identity-mapped physical memory.

use boot::PhysMemory;

unsafe extern "C" {
    static __cairn_kernel_start: u8;
    static __cairn_kernel_end: u8;
    static __cairn_text_start: u8;
    static __cairn_text_end: u8;
    static cairn_boot_stack_bottom: u8;
    static cairn_boot_stack_top: u8;
}

/// `[start, end)` of the loaded kernel image, `.bss` included.
pub fn kernel_image_range() -> (u64, u64) {
    (
        (&raw const __cairn_kernel_start) as u64,
        (&raw const __cairn_kernel_end) as u64,
    )
}

/// `[start, end)` of kernel code.
pub fn kernel_text_range() -> (u64, u64) {
    (
        (&raw const __cairn_text_start) as u64,
        (&raw const __cairn_text_end) as u64,
    )
}

/// `[bottom, top)` of the boot stack the kernel runs on.
pub fn boot_stack_range() -> (u64, u64) {
    (
        (&raw const cairn_boot_stack_bottom) as u64,
        (&raw const cairn_boot_stack_top) as u64,
    )
}

/// The highest physical address the early (boot) page tables map.
pub const EARLY_IDENTITY_MAP_BYTES: u64 = 4 << 30;

/// Physical memory as the identity map shows it, limited to what the early tables map.
pub struct EarlyIdentityMemory;

impl PhysMemory for EarlyIdentityMemory {
    fn bytes(&self, paddr: u64, len: usize) -> Option<&[u8]> {
        let end = paddr.checked_add(len as u64)?;
        if paddr == 0 || end > EARLY_IDENTITY_MAP_BYTES {
            return None;
        }
        // SAFETY: the boot tables identity-map [0, 4 GiB); the range is inside it and the
        // boot information it holds is not written while the kernel parses it.
        Some(unsafe { core::slice::from_raw_parts(paddr as *const u8, len) })
    }
}

/// A read-only view of `len` bytes of physical memory at `paddr`.
///
/// # Safety
/// The range must be mapped (the identity map covers RAM from the memory map and the low
/// 4 GiB) and not be written by anyone while the slice lives.
pub unsafe fn phys_bytes(paddr: u64, len: usize) -> &'static [u8] {
    // SAFETY: per the caller's contract.
    unsafe { core::slice::from_raw_parts(paddr as *const u8, len) }
}
