//! The kernel's page tables (Intel SDM vol. 3A §4.5, 4-level paging).
//!
//! Invariants:
//! - Physical memory is identity-mapped (virtual = physical) with 2 MiB pages: all of
//!   `[0, 4 GiB)` (RAM, firmware, the PCI MMIO hole with the IOAPIC/HPET/LAPIC at
//!   0xFE00_0000..), and every RAM region of the memory map above 4 GiB. 2 MiB pages that hold no RAM
//!   are mapped uncached (PCD|PWT), RAM is write-back.
//! - The lowest 4 KiB page of the boot stack is unmapped: a stack overflow faults (#PF on the
//!   IST stack) instead of silently overwriting `.data`.
//! - Page-table frames come from a static pool in `.bss` (no allocator is needed to map the
//!   heap itself), then from the heap. Frames are identity-mapped, so a table's physical
//!   address is its pointer.
//! - Virtual addresses at or above [`DYNAMIC_MAP_BASE`] are never identity-mapped; they are
//!   for explicit 4 KiB mappings ([`map_4k`]).
//! - Under SEV-SNP (`sev::c_bit_mask() != 0`, UEFI entry only) every private mapping carries
//!   the C-bit: table pointers, RAM, the firmware's CPUID/secrets pages, unaccepted memory
//!   (accepted before use), write-back [`map_4k`] pages. MMIO (uncached pages, [`map_mmio`])
//!   and pages made shared with [`make_shared`] (the GHCB, DMA buffers) have it clear. The
//!   C-bit lies inside the address bits (bit 51 or 47), so frame addresses are read with it
//!   masked off. Without SNP the mask is 0 and nothing changes.

use super::cpu;
use super::memory;
use super::sev;
use alloc::alloc::{alloc_zeroed, Layout};
use boot::{BootInfo, MemoryKind};
use spin::Mutex;

const PAGE_4K: u64 = 4096;
const PAGE_2M: u64 = 2 << 20;
const ENTRIES: usize = 512;
const LOW_IDENTITY_BYTES: u64 = 4 << 30;
/// Page-table frames available before the heap exists (1 MiB: enough for the low 4 GiB and
/// about 250 GiB of RAM above it with 2 MiB pages).
const STATIC_TABLE_FRAMES: usize = 256;
/// Where explicit 4 KiB mappings live (PML4 slot 128), far from any identity-mapped RAM.
pub const DYNAMIC_MAP_BASE: u64 = 0x0000_4000_0000_0000;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Why a mapping request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// The address is not page-aligned.
    Unaligned,
    /// The virtual page is already mapped.
    AlreadyMapped,
    /// The virtual page is not mapped.
    NotMapped,
    /// The page lies inside a 2 MiB mapping; it must be split first.
    InsideHugePage,
    /// No frame for a page table.
    OutOfFrames,
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MapError::Unaligned => "address not page-aligned",
            MapError::AlreadyMapped => "page already mapped",
            MapError::NotMapped => "page not mapped",
            MapError::InsideHugePage => "page inside a 2 MiB mapping",
            MapError::OutOfFrames => "no frame for a page table",
        })
    }
}

/// Whether a mapping may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caching {
    WriteBack,
    Uncached,
}

impl Caching {
    fn bits(self) -> u64 {
        match self {
            Caching::WriteBack => 0,
            Caching::Uncached => CACHE_DISABLE | WRITE_THROUGH,
        }
    }

    /// The C-bit for this kind of mapping: write-back mappings are private memory, uncached
    /// ones are MMIO (shared: the device is emulated by the hypervisor).
    fn encryption(self) -> u64 {
        match self {
            Caching::WriteBack => c_bit(),
            Caching::Uncached => 0,
        }
    }
}

#[repr(C, align(4096))]
struct Table([u64; ENTRIES]);

struct StaticFrames {
    frames: [Table; STATIC_TABLE_FRAMES],
    used: usize,
}

static mut STATIC_FRAMES: StaticFrames = StaticFrames {
    frames: [const { Table([0; ENTRIES]) }; STATIC_TABLE_FRAMES],
    used: 0,
};

/// The active address space: the PML4's physical (= virtual) address, 0 before `init`.
static SPACE: Mutex<u64> = Mutex::new(0);

/// Summary of what [`init`] mapped.
#[derive(Debug, Clone, Copy)]
pub struct MapSummary {
    pub identity_bytes: u64,
    pub table_frames: usize,
}

fn new_table() -> Result<*mut u64, MapError> {
    // SAFETY: the pool is only touched here, under the SPACE lock or during single-threaded
    // init; frames are handed out once.
    unsafe {
        let pool = &raw mut STATIC_FRAMES;
        if (*pool).used < STATIC_TABLE_FRAMES {
            let t = &raw mut (*pool).frames[(*pool).used];
            (*pool).used += 1;
            return Ok(t.cast());
        }
    }
    let layout = Layout::from_size_align(PAGE_4K as usize, PAGE_4K as usize)
        .map_err(|_| MapError::OutOfFrames)?;
    // SAFETY: a non-zero-sized layout; the frame is leaked to the page tables for good.
    let frame = unsafe { alloc_zeroed(layout) };
    if frame.is_null() {
        return Err(MapError::OutOfFrames);
    }
    Ok(frame.cast())
}

/// The C-bit mask for private entries (0 without SNP).
fn c_bit() -> u64 {
    sev::c_bit_mask()
}

/// The frame an entry points at (address bits without the C-bit).
fn frame_of(entry: u64) -> u64 {
    entry & ADDRESS_MASK & !c_bit()
}

fn index(vaddr: u64, level: u32) -> usize {
    ((vaddr >> (12 + 9 * level)) & 0x1ff) as usize
}

/// The entry for `vaddr` at `level` (3 = PML4 … 0 = PT), creating missing tables above it.
///
/// # Safety
/// `pml4` must be a live page table of this module.
unsafe fn entry(pml4: *mut u64, vaddr: u64, level: u32) -> Result<*mut u64, MapError> {
    let mut table = pml4;
    for l in (level + 1..=3).rev() {
        // SAFETY: `table` is a live table; the index is < 512.
        let e = unsafe { table.add(index(vaddr, l)) };
        // SAFETY: `e` points into a live table.
        let value = unsafe { *e };
        if value & PRESENT == 0 {
            let t = new_table()?;
            // SAFETY: `e` points into a live table; `t` is a zeroed frame.
            unsafe { *e = t as u64 | PRESENT | WRITABLE | c_bit() };
            table = t;
        } else if value & HUGE != 0 {
            return Err(MapError::InsideHugePage);
        } else {
            table = frame_of(value) as *mut u64;
        }
    }
    // SAFETY: `table` is a live table at `level`.
    Ok(unsafe { table.add(index(vaddr, level)) })
}

fn is_ram(kind: MemoryKind) -> bool {
    matches!(
        kind,
        MemoryKind::Usable | MemoryKind::AcpiReclaimable | MemoryKind::AcpiNvs
    )
}

fn overlaps_ram(info: &BootInfo, base: u64, len: u64) -> bool {
    info.memory_map()
        .iter()
        .any(|r| is_ram(r.kind) && r.base < base + len && r.end() > base)
        || sev::unaccepted_ranges().any(|(s, e)| s < base + len && e > base)
        || sev::firmware_private_pages()
            .iter()
            .any(|&p| p != 0 && p >= base && p < base + len)
}

/// Builds the kernel's identity map from the memory map and switches to it.
pub fn init(info: &BootInfo) -> Result<MapSummary, MapError> {
    let pml4 = new_table()?;
    let mut mapped = 0u64;
    let mut page = 0u64;
    while page < LOW_IDENTITY_BYTES {
        let caching = if overlaps_ram(info, page, PAGE_2M) {
            Caching::WriteBack
        } else {
            Caching::Uncached
        };
        let flags = PRESENT | WRITABLE | HUGE | caching.bits() | caching.encryption();
        // SAFETY: `pml4` is the new, live root table.
        unsafe { *entry(pml4, page, 1)? = page | flags };
        page += PAGE_2M;
        mapped += PAGE_2M;
    }
    // Above 4 GiB only RAM is mapped up front; device windows come through `map_mmio`.
    // Unaccepted memory (SNP only) is RAM too: mapped private, accepted before the heap
    // takes it (`heap::init`).
    let high_ram = info
        .memory_map()
        .iter()
        .filter(|r| is_ram(r.kind))
        .map(|r| (r.base, r.end()))
        .chain(sev::unaccepted_ranges());
    for (base, end) in high_ram.filter(|&(_, end)| end > LOW_IDENTITY_BYTES) {
        let caching = Caching::WriteBack;
        let mut page = base.max(LOW_IDENTITY_BYTES) & !(PAGE_2M - 1);
        while page < end {
            // SAFETY: `pml4` is the new, live root table.
            let e = unsafe { entry(pml4, page, 1)? };
            // SAFETY: `e` points into a live table.
            if unsafe { *e } & PRESENT == 0 {
                let flags = PRESENT | WRITABLE | HUGE | caching.bits() | caching.encryption();
                // SAFETY: as above.
                unsafe { *e = page | flags };
                mapped += PAGE_2M;
            }
            page += PAGE_2M;
        }
    }
    guard_boot_stack(pml4)?;
    // Pages already shared with the hypervisor (the GHCB) stay shared in the new tables.
    for page in sev::static_shared_pages() {
        // SAFETY: `pml4` is the new, live root table.
        unsafe { set_encrypted_in(pml4, page, false)? };
    }
    // SAFETY: the new tables identity-map everything the early tables did (the low 4 GiB)
    // except the stack guard page, which nothing uses.
    unsafe { cpu::write_cr3(pml4 as u64 | c_bit()) };
    *SPACE.lock() = pml4 as u64;
    // SAFETY: the pool counter is read after init, single-threaded.
    let table_frames = unsafe { STATIC_FRAMES.used };
    Ok(MapSummary {
        identity_bytes: mapped,
        table_frames,
    })
}

/// Replaces the 2 MiB page holding the boot stack's bottom with 4 KiB pages, the lowest one
/// not present.
fn guard_boot_stack(pml4: *mut u64) -> Result<(), MapError> {
    let (bottom, _) = memory::boot_stack_range();
    // SAFETY: `pml4` is live; the low 4 GiB are mapped with 2 MiB pages.
    unsafe { split_2m(pml4, bottom & !(PAGE_2M - 1))? };
    // SAFETY: the split made a page table for the range.
    let e = unsafe { entry(pml4, bottom, 0)? };
    // SAFETY: `e` points into a live table.
    unsafe { *e = 0 };
    Ok(())
}

/// Replaces the 2 MiB mapping at `vaddr` with 512 identical 4 KiB mappings.
///
/// # Safety
/// `pml4` must be live and `vaddr` 2 MiB-aligned and mapped by a huge page.
unsafe fn split_2m(pml4: *mut u64, vaddr: u64) -> Result<(), MapError> {
    // SAFETY: per the contract.
    let pd_entry = unsafe { entry(pml4, vaddr, 1)? };
    // SAFETY: `pd_entry` points into a live table.
    let old = unsafe { *pd_entry };
    if old & (PRESENT | HUGE) != PRESENT | HUGE {
        return Err(MapError::NotMapped);
    }
    let table = new_table()?;
    let flags = old & (WRITABLE | CACHE_DISABLE | WRITE_THROUGH | c_bit()) | PRESENT;
    let base = frame_of(old) & !(PAGE_2M - 1);
    for i in 0..ENTRIES {
        // SAFETY: `table` is a fresh frame of 512 entries.
        unsafe { *table.add(i) = (base + i as u64 * PAGE_4K) | flags };
    }
    // SAFETY: `pd_entry` points into a live table; the new table maps the same frames.
    unsafe { *pd_entry = table as u64 | PRESENT | WRITABLE | c_bit() };
    let mut page = vaddr;
    while page < vaddr + PAGE_2M {
        cpu::invlpg(page);
        page += PAGE_4K;
    }
    Ok(())
}

fn root_of(space: u64) -> Result<*mut u64, MapError> {
    if space == 0 {
        return Err(MapError::NotMapped);
    }
    Ok(space as *mut u64)
}

/// Maps the 4 KiB page at `vaddr` to the frame at `paddr`.
pub fn map_4k(vaddr: u64, paddr: u64, caching: Caching) -> Result<(), MapError> {
    if !vaddr.is_multiple_of(PAGE_4K) || !paddr.is_multiple_of(PAGE_4K) {
        return Err(MapError::Unaligned);
    }
    let guard = SPACE.lock();
    let root = root_of(*guard)?;
    // SAFETY: `root` is the live PML4; the lock serialises table edits.
    let e = unsafe { entry(root, vaddr, 0)? };
    // SAFETY: `e` points into a live table.
    unsafe {
        if *e & PRESENT != 0 {
            return Err(MapError::AlreadyMapped);
        }
        *e = paddr | PRESENT | WRITABLE | caching.bits() | caching.encryption();
    }
    cpu::invlpg(vaddr);
    Ok(())
}

/// Unmaps the 4 KiB page at `vaddr` and returns the frame it mapped.
pub fn unmap_4k(vaddr: u64) -> Result<u64, MapError> {
    if !vaddr.is_multiple_of(PAGE_4K) {
        return Err(MapError::Unaligned);
    }
    let guard = SPACE.lock();
    let root = root_of(*guard)?;
    // SAFETY: `root` is the live PML4; the lock serialises table edits.
    let e = unsafe { entry(root, vaddr, 0)? };
    // SAFETY: `e` points into a live table.
    let old = unsafe { core::ptr::replace(e, 0) };
    if old & PRESENT == 0 {
        return Err(MapError::NotMapped);
    }
    cpu::invlpg(vaddr);
    Ok(frame_of(old))
}

/// The physical address `vaddr` maps to, if it is mapped.
pub fn translate(vaddr: u64) -> Option<u64> {
    let guard = SPACE.lock();
    let root = root_of(*guard).ok()?;
    let mut table = root;
    for level in (0..=3u32).rev() {
        // SAFETY: `table` is a live table and the index is < 512.
        let e = unsafe { *table.add(index(vaddr, level)) };
        if e & PRESENT == 0 {
            return None;
        }
        if level == 0 || e & HUGE != 0 {
            let page = 1u64 << (12 + 9 * level);
            return Some((frame_of(e) & !(page - 1)) | (vaddr & (page - 1)));
        }
        table = frame_of(e) as *mut u64;
    }
    None
}

/// Identity-maps `[paddr, paddr + len)` uncached if it is not mapped yet (device MMIO, e.g.
/// a 64-bit PCI BAR above RAM), with 2 MiB pages.
pub fn map_mmio(paddr: u64, len: u64) -> Result<(), MapError> {
    let guard = SPACE.lock();
    let root = root_of(*guard)?;
    let mut page = paddr & !(PAGE_2M - 1);
    while page < paddr.saturating_add(len) {
        // SAFETY: `root` is the live PML4; the lock serialises table edits.
        let e = unsafe { entry(root, page, 1) };
        match e {
            // SAFETY: `e` points into a live table.
            Ok(e) if unsafe { *e } & PRESENT == 0 => unsafe {
                *e = page | PRESENT | WRITABLE | HUGE | Caching::Uncached.bits();
                cpu::invlpg(page);
            },
            Ok(_) | Err(MapError::InsideHugePage) => {}
            Err(other) => return Err(other),
        }
        page += PAGE_2M;
    }
    Ok(())
}

/// Sets (`private`) or clears the C-bit of the 4 KiB page at `vaddr` in the tables rooted at
/// `pml4`, splitting its 2 MiB page first if needed.
///
/// # Safety
/// `pml4` must be live; the caller must have moved the page's RMP state accordingly (or be
/// about to, before the page is touched again).
unsafe fn set_encrypted_in(pml4: *mut u64, vaddr: u64, private: bool) -> Result<(), MapError> {
    let page = vaddr & !(PAGE_4K - 1);
    // SAFETY: per the contract.
    let pd_entry = unsafe { entry(pml4, page, 1)? };
    // SAFETY: `pd_entry` points into a live table.
    if unsafe { *pd_entry } & (PRESENT | HUGE) == PRESENT | HUGE {
        // SAFETY: a present huge page maps this range.
        unsafe { split_2m(pml4, page & !(PAGE_2M - 1))? };
    }
    // SAFETY: the range is mapped with 4 KiB pages now.
    let e = unsafe { entry(pml4, page, 0)? };
    // SAFETY: `e` points into a live table.
    unsafe {
        if *e & PRESENT == 0 {
            return Err(MapError::NotMapped);
        }
        *e = if private { *e | c_bit() } else { *e & !c_bit() };
    }
    cpu::invlpg(page);
    Ok(())
}

/// Sets or clears the C-bit of the page at `vaddr` in the active tables (the boot tables
/// before [`init`]). No-op without SNP.
pub fn set_encrypted(vaddr: u64, private: bool) -> Result<(), MapError> {
    if c_bit() == 0 {
        return Ok(());
    }
    let guard = SPACE.lock();
    let root = match *guard {
        0 => frame_of(cpu::read_cr3()) as *mut u64,
        space => space as *mut u64,
    };
    // SAFETY: `root` is the live PML4 (the boot one before `init`); the lock serialises
    // table edits. The RMP side is the caller's (see `make_shared`).
    unsafe { set_encrypted_in(root, vaddr, private) }
}

/// Why a range could not change sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareError {
    /// The range is not 4 KiB-aligned.
    Unaligned,
    /// The page tables could not be changed.
    Map(MapError),
    /// The RMP state could not be changed.
    PageState(sev::PageStateError),
}

impl core::fmt::Display for ShareError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ShareError::Unaligned => f.write_str("range not page-aligned"),
            ShareError::Map(e) => write!(f, "{e}"),
            ShareError::PageState(e) => write!(f, "{e}"),
        }
    }
}

/// Makes the identity-mapped RAM `[vaddr, vaddr + len)` shared with the hypervisor (DMA
/// buffers, the guest-request pages): flush, `PVALIDATE` rescind, page state change to
/// shared, then clear the C-bit (splitting 2 MiB pages) and flush the TLB. Its contents
/// are lost (the hypervisor sees ciphertext): the caller writes it afterwards. No-op without
/// SNP.
pub fn make_shared(vaddr: u64, len: u64) -> Result<(), ShareError> {
    if c_bit() == 0 {
        return Ok(());
    }
    if !vaddr.is_multiple_of(PAGE_4K) || !len.is_multiple_of(PAGE_4K) {
        return Err(ShareError::Unaligned);
    }
    // SAFETY: the caller hands the range over to sharing; nothing uses it as private memory
    // from now on.
    unsafe { sev::rmp_to_shared(vaddr, vaddr + len) }.map_err(ShareError::PageState)?;
    let mut page = vaddr;
    while page < vaddr + len {
        set_encrypted(page, false).map_err(ShareError::Map)?;
        page += PAGE_4K;
    }
    Ok(())
}
