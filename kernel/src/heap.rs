//! The kernel heap: talc over every usable RAM region of the boot memory map, minus the low
//! 1 MiB (firmware data, real-mode structures), the kernel image and the boot modules.
//!
//! Regions smaller than [`MIN_HEAP_SPAN_BYTES`] are left alone. All claimed RAM is inside the
//! identity map (paging maps every memory-map region), so a heap pointer is its physical
//! address; DMA buffers rely on that.
//!
//! Under SEV-SNP, memory the firmware left unaccepted (EFI type 15, which the boot memory
//! map calls reserved) is accepted (`arch::sev::accept`: page state change to private, then
//! `PVALIDATE`) and then claimed too. Without SNP there is none (the kernel never asks OVMF
//! for unaccepted memory, and OVMF accepts everything at ExitBootServices unless asked), and
//! type 15 stays reserved as before.

use crate::arch;
use boot::{BootInfo, MemoryKind};
use spinning_top::RawSpinlock;
use talc::source::Manual;

/// Memory below this address is never used for the heap.
const LOW_MEMORY_RESERVED_BYTES: u64 = 1 << 20;
/// Spans smaller than this are not worth a talc heap.
const MIN_HEAP_SPAN_BYTES: u64 = 64 * 1024;
/// The most excluded ranges (kernel image + modules).
const MAX_EXCLUSIONS: usize = 1 + boot::MAX_MODULES;

#[global_allocator]
static ALLOCATOR: talc::TalcLock<RawSpinlock, Manual> = talc::TalcLock::new(Manual);

/// What the heap was given.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeapSummary {
    pub bytes: u64,
    pub spans: usize,
    /// Unaccepted memory accepted for the heap (SEV-SNP only).
    pub accepted_bytes: u64,
}

/// Claims the free RAM of `info`'s memory map.
pub fn init(info: &BootInfo) -> HeapSummary {
    let mut excluded = [(0u64, 0u64); MAX_EXCLUSIONS];
    excluded[0] = arch::memory::kernel_image_range();
    for (slot, m) in excluded[1..].iter_mut().zip(info.modules()) {
        *slot = (m.paddr, m.paddr.saturating_add(m.len));
    }
    let mut summary = HeapSummary::default();
    for region in info
        .memory_map()
        .iter()
        .filter(|r| r.kind == MemoryKind::Usable)
    {
        let start = region.base.max(LOW_MEMORY_RESERVED_BYTES);
        claim_excluding(start, region.end(), &excluded, &mut summary);
    }
    for (base, end) in arch::sev::unaccepted_ranges() {
        let start = base.max(LOW_MEMORY_RESERVED_BYTES);
        if start < end {
            arch::sev::accept(start, end);
            summary.accepted_bytes += end - start;
            claim_excluding(start, end, &excluded, &mut summary);
        }
    }
    summary
}

/// Claims `[start, end)` minus the `excluded` ranges.
fn claim_excluding(start: u64, end: u64, excluded: &[(u64, u64)], summary: &mut HeapSummary) {
    if end <= start {
        return;
    }
    // Cut at the first exclusion that overlaps; recurse on both sides.
    if let Some(&(xs, xe)) = excluded.iter().find(|&&(xs, xe)| xs < end && xe > start) {
        claim_excluding(start, xs, excluded, summary);
        claim_excluding(xe, end, excluded, summary);
        return;
    }
    let len = end - start;
    if len < MIN_HEAP_SPAN_BYTES {
        return;
    }
    // SAFETY: `[start, end)` is usable RAM from the memory map, identity-mapped, and disjoint
    // from the kernel image, the modules and the low 1 MiB; nothing else owns it.
    let claimed = unsafe { ALLOCATOR.lock().claim(start as *mut u8, len as usize) };
    if claimed.is_some() {
        summary.bytes += len;
        summary.spans += 1;
    }
}

/// Bytes currently free in the heap (an upper bound: fragmentation is not subtracted).
pub fn free_bytes() -> usize {
    ALLOCATOR.lock().counters().available_bytes
}
