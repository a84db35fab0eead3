//! AMD SEV-ES / SEV-SNP machine support: the C-bit, the instructions (`PVALIDATE`,
//! `VMGEXIT`, the GHCB MSR) and the GHCB exits that replace intercepted instructions.
//!
//! Everything here is a strict no-op unless the UEFI entry found SEV-SNP active
//! ([`detect_c_bit_mask`], before ExitBootServices): the PVH and multiboot2 paths never set
//! the mask, and every caller checks [`snp_active`] / [`es_active`] first. The byte layouts
//! and encodings (GHCB page, NAE exit codes, the #VC instruction decoder, the CPUID page) are
//! pure code in `node::attest::ghcb` and the `sev` crate, unit-tested on the host;
//! this file only executes them. Policy (attestation) lives in `crate::tee`.
//!
//! Facts (AMD APM vol. 2 §15.34–15.36; GHCB spec #56421 rev 2.03):
//! - CPUID `0x8000_001F` EBX[5:0] is the C-bit position; `SEV_STATUS` (MSR `0xC001_0131`)
//!   bit 1 = SEV-ES active, bit 2 = SEV-SNP active. Neither read is intercepted.
//! - Under SEV-ES/SNP the hypervisor cannot see guest registers: CPUID, IN/OUT, RDMSR/WRMSR,
//!   RDTSC(P) and MMIO raise #VC (vector 29, error code = the exit code), and the guest
//!   performs them through the GHCB, a shared page registered by GPA, with `VMGEXIT`.
//! - `PVALIDATE` (F2 0F 01 FF) validates or rescinds a page in the RMP; a page is made shared
//!   by rescinding it and asking the hypervisor for the shared state (page state change),
//!   and private again the other way round.
//!
//! None of this has run on SEV hardware: QEMU here is TCG, without SEV.

use core::arch::asm;
use core::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, Ordering};

use ::sev::cpuid_page::CpuidPage;
use ::sev::ghcb_page::{self, GhcbExit, IoDirection, IoSize, NaeError};
use ::sev::vc::{
    self, MmioAccess, MmioOp, PortOperand, Register, VcError, VcRequest, MAX_INSTRUCTION_BYTES,
};
use node::attest::ghcb::{self, Ghcb, PageState};

use raw_cpuid::native_cpuid::cpuid_count;

/// `SEV_STATUS` MSR.
pub const MSR_SEV_STATUS: u32 = 0xC001_0131;
/// `SEV_STATUS` bit 0: SEV is active.
const SEV_STATUS_SEV_BIT: u64 = 1 << 0;
/// `SEV_STATUS` bit 1: SEV-ES is active.
const SEV_STATUS_ES_BIT: u64 = 1 << 1;
/// `SEV_STATUS` bit 2: SEV-SNP is active.
const SEV_STATUS_SNP_BIT: u64 = 1 << 2;
/// CPUID leaf giving the highest extended leaf.
const CPUID_LEAF_MAX_EXTENDED: u32 = 0x8000_0000;
/// CPUID leaf with the memory-encryption capabilities.
const CPUID_LEAF_SEV: u32 = 0x8000_001F;
/// CPUID `0x8000_001F` EAX bit 1: SEV supported.
const CPUID_SEV_BIT: u32 = 1 << 1;
/// CPUID `0x8000_001F` EAX bit 4: SEV-SNP supported.
const CPUID_SNP_BIT: u32 = 1 << 4;
/// CPUID `0x8000_001F` EBX bits 5:0: the C-bit position.
const CPUID_CBIT_MASK: u32 = 0x3F;

/// What CPUID `0x8000_001F` and `SEV_STATUS` say about memory encryption (AMD APM vol. 3,
/// CPUID Fn8000_001F; vol. 2 §15.34.10).
#[derive(Debug, Clone, Copy, Default)]
pub struct Probe {
    /// CPUID `0x8000_001F` exists.
    pub leaf_present: bool,
    /// CPUID says SEV is supported.
    pub sev_supported: bool,
    /// CPUID says SEV-SNP is supported.
    pub snp_supported: bool,
    /// The C-bit position (CPUID `0x8000_001F` EBX[5:0]).
    pub c_bit: u8,
    /// `SEV_STATUS`, read only when CPUID says SEV exists (elsewhere the MSR does not exist
    /// and `rdmsr` would raise #GP).
    pub sev_status: Option<u64>,
}

impl Probe {
    /// SEV-SNP is active for this guest.
    pub fn snp_active(&self) -> bool {
        self.sev_status.is_some_and(|s| s & SEV_STATUS_SNP_BIT != 0)
    }

    /// SEV-ES is active for this guest.
    pub fn es_active(&self) -> bool {
        self.sev_status.is_some_and(|s| s & SEV_STATUS_ES_BIT != 0)
    }

    /// SEV is active for this guest.
    pub fn sev_active(&self) -> bool {
        self.sev_status.is_some_and(|s| s & SEV_STATUS_SEV_BIT != 0)
    }
}

/// Reads CPUID and, only when CPUID says SEV exists, the `SEV_STATUS` MSR. Under SEV-ES/SNP
/// the CPUID raises #VC (the firmware's handler or ours serves it); `SEV_STATUS` is never
/// intercepted.
pub fn probe() -> Probe {
    if cpuid_count(CPUID_LEAF_MAX_EXTENDED, 0).eax < CPUID_LEAF_SEV {
        return Probe::default();
    }
    let leaf = cpuid_count(CPUID_LEAF_SEV, 0);
    let sev_supported = leaf.eax & CPUID_SEV_BIT != 0;
    let sev_status = if sev_supported {
        // SAFETY: CPUID says the processor implements SEV, so SEV_STATUS exists (APM vol. 2
        // §15.34.10); reading it has no side effects and is never intercepted.
        Some(unsafe { native_rdmsr(MSR_SEV_STATUS) })
    } else {
        None
    };
    Probe {
        leaf_present: true,
        sev_supported,
        snp_supported: leaf.eax & CPUID_SNP_BIT != 0,
        c_bit: (leaf.ebx & CPUID_CBIT_MASK) as u8,
        sev_status,
    }
}

/// The C-bit mask ORed into every private page-table entry: 0 without SNP.
static C_BIT_MASK: AtomicU64 = AtomicU64::new(0);
/// `SEV_STATUS` as read at boot when SNP is active (0 otherwise).
static SEV_STATUS: AtomicU64 = AtomicU64::new(0);

/// Reads CPUID and `SEV_STATUS` (only when CPUID says SEV exists: the MSR does not exist on
/// other CPUs) and returns the C-bit mask: `1 << C-bit position` when SEV-SNP is active,
/// else 0. Records the answer for [`c_bit_mask`]. Called once by the UEFI entry before
/// ExitBootServices (the firmware's #VC handler serves the CPUID under SEV-ES/SNP).
pub fn detect_c_bit_mask() -> u64 {
    let probe = probe();
    let (true, Some(status)) = (probe.snp_active(), probe.sev_status) else {
        return 0;
    };
    let mask = 1u64 << probe.c_bit;
    SEV_STATUS.store(status, Ordering::SeqCst);
    C_BIT_MASK.store(mask, Ordering::SeqCst);
    mask
}

/// The C-bit mask for private mappings (0 without SNP).
#[inline]
pub fn c_bit_mask() -> u64 {
    C_BIT_MASK.load(Ordering::Relaxed)
}

/// True when the kernel runs as an SEV-SNP guest (detected by the UEFI entry).
#[inline]
pub fn snp_active() -> bool {
    c_bit_mask() != 0
}

/// True when SEV-ES semantics apply (intercepted instructions raise #VC and go through the
/// GHCB). Only ever true together with SNP here: an SEV-ES-only guest is not supported.
#[inline]
pub fn es_active() -> bool {
    snp_active() && SEV_STATUS.load(Ordering::Relaxed) & SEV_STATUS_ES_BIT != 0
}

/// `RDMSR` without the SEV-ES routing of `cpu::rdmsr`: for MSRs that are never intercepted
/// (`SEV_STATUS`, the GHCB MSR).
///
/// # Safety
/// `msr` must exist and reading it must have no side effects.
pub unsafe fn native_rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// `WRMSR` without the SEV-ES routing of `cpu::wrmsr` (the GHCB MSR is never intercepted).
///
/// # Safety
/// `msr` must exist and the write must keep the machine in a state the kernel expects.
pub unsafe fn native_wrmsr(msr: u32, value: u64) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    };
}

// ---------------------------------------------------------------------------------------
// Instructions.

/// `VMGEXIT` (`rep vmmcall`, F3 0F 01 D9; APM vol. 3): exit to the hypervisor, which reads
/// the GHCB MSR (and the GHCB it points at).
///
/// # Safety
/// Only under SEV-ES/SNP, with the GHCB MSR holding a request of the protocol.
pub unsafe fn vmgexit() {
    // SAFETY: per the caller's contract; the exit changes no guest state but the GHCB and
    // the GHCB MSR, which the compiler is told about by the memory clobber.
    unsafe { asm!(".byte 0xf3, 0x0f, 0x01, 0xd9", options(nostack)) };
}

/// `PVALIDATE` page size operand (ECX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB.
    Small = 0,
    /// 2 MiB.
    Huge = 1,
}

/// `PVALIDATE` status: the RMP entry is a 4 KiB one while 2 MiB was asked (or the reverse).
pub const PVALIDATE_FAIL_SIZEMISMATCH: u32 = 6;

/// `PVALIDATE` (F2 0F 01 FF: RAX = virtual address, ECX = page size, EDX = 1 validate /
/// 0 rescind; EAX = status, CF = 1 when the page already was in that state; APM vol. 3).
/// `Ok(true)` when its state changed, `Ok(false)` when it already was in that state.
///
/// # Safety
/// Only under SEV-SNP. Rescinding a page the kernel still uses as private memory makes every
/// later access to it fault; validating a page twice at two addresses breaks the guarantee
/// that each guest page is mapped once.
pub unsafe fn pvalidate(vaddr: u64, size: PageSize, validate: bool) -> Result<bool, u32> {
    let status: u64;
    let unchanged: u8;
    // SAFETY: per the caller's contract.
    unsafe {
        asm!(
            ".byte 0xf2, 0x0f, 0x01, 0xff",
            "setc {unchanged}",
            unchanged = out(reg_byte) unchanged,
            inout("rax") vaddr => status,
            in("ecx") size as u32,
            in("edx") u32::from(validate),
            options(nostack),
        )
    };
    // The status is EAX (the upper half of RAX is not defined by the instruction).
    match status as u32 {
        0 => Ok(unchanged == 0),
        s => Err(s),
    }
}

/// The GHCB MSR protocol: writes `request` to the GHCB MSR, exits, returns the MSR.
///
/// # Safety
/// Only under SEV-ES/SNP; nothing else may use the GHCB MSR concurrently (one CPU, and the
/// GHCB lock is not held across a call of this).
pub unsafe fn msr_protocol(request: u64) -> u64 {
    // SAFETY: the GHCB MSR exists on every SEV-ES/SNP guest; per the caller's contract.
    unsafe {
        native_wrmsr(ghcb::MSR_GHCB, request);
        vmgexit();
        native_rdmsr(ghcb::MSR_GHCB)
    }
}

/// The MSR protocol as `node::attest::ghcb` drives it (no GHCB page involved).
pub struct MsrProtocol;

impl ghcb::Hypervisor for MsrProtocol {
    fn msr_protocol(&mut self, request: u64) -> u64 {
        // SAFETY: only constructed under SNP (callers check `snp_active`).
        unsafe { msr_protocol(request) }
    }

    fn vmgexit(&mut self, g: &mut Ghcb, pages: &mut ghcb::GuestRequestPages<'_>) {
        let _ = (pages.request.as_ptr(), pages.response.as_mut_ptr());
        GhcbMachine.vmgexit(g);
    }
}

/// Asks the hypervisor to terminate the guest (MSR protocol 0x100, reason set 0) and stops:
/// used when the GHCB itself is unusable, so nothing can be printed.
pub fn terminate(reason_code: u8) -> ! {
    if snp_active() {
        ghcb::request_termination(&mut MsrProtocol, reason_code);
    }
    super::cpu::halt_forever()
}

// ---------------------------------------------------------------------------------------
// The GHCB page.

/// Termination reason codes (reason set 0, general; GHCB spec §4.1.13).
const TERMINATE_GHCB_SETUP: u8 = 1;
const TERMINATE_GHCB_BUSY: u8 = 2;
const TERMINATE_GHCB_EXIT: u8 = 3;
const TERMINATE_PAGE_STATE: u8 = 4;

/// The one CPU's GHCB (4 KiB, 4 KiB-aligned, in `.bss`): shared with the hypervisor once
/// [`early_init`] ran.
static mut GHCB_PAGE: Ghcb = Ghcb([0; ghcb::GHCB_PAGE_BYTES]);
/// Set while a GHCB exchange is in progress (a #VC then cannot use the page).
static GHCB_BUSY: AtomicBool = AtomicBool::new(false);
/// Set once the GHCB is shared and registered.
static GHCB_READY: AtomicBool = AtomicBool::new(false);

/// The GHCB's guest-physical address (identity-mapped: its address).
pub fn ghcb_gpa() -> u64 {
    (&raw const GHCB_PAGE) as u64
}

/// Executes one exchange with the registered GHCB.
struct GhcbMachine;

impl GhcbExit for GhcbMachine {
    fn vmgexit(&mut self, g: &mut Ghcb) {
        let gpa = g as *mut Ghcb as u64;
        compiler_fence(Ordering::SeqCst);
        // SAFETY: `g` is the registered, shared GHCB (only `with_ghcb` hands it out, and the
        // guest request path passes the same page); the exit is the protocol's use of it.
        unsafe {
            native_wrmsr(ghcb::MSR_GHCB, gpa);
            vmgexit();
        }
        compiler_fence(Ordering::SeqCst);
    }
}

/// Runs `f` with exclusive use of the GHCB. Terminates the guest if the GHCB is not set up
/// or already in use (a #VC inside a GHCB exchange: nothing can report it).
pub fn with_ghcb<R>(f: impl FnOnce(&mut Ghcb, u64) -> R) -> R {
    if !GHCB_READY.load(Ordering::Acquire) {
        terminate(TERMINATE_GHCB_SETUP);
    }
    if GHCB_BUSY.swap(true, Ordering::Acquire) {
        terminate(TERMINATE_GHCB_BUSY);
    }
    // SAFETY: the busy flag makes this the only reference to the page (one CPU; a nested
    // #VC takes the terminate path above).
    let raw: *mut Ghcb = &raw mut GHCB_PAGE;
    // SAFETY: as above.
    let page = unsafe { &mut *raw };
    let r = f(page, ghcb_gpa());
    GHCB_BUSY.store(false, Ordering::Release);
    r
}

/// Runs one GHCB exchange and terminates the guest when the hypervisor fails it: the
/// callers (port I/O, MSRs, the APIC) have no way to report an error, and the console
/// itself depends on this path.
fn exchange<R>(f: impl FnOnce(&mut GhcbMachine, &mut Ghcb, u64) -> Result<R, NaeError>) -> R {
    match with_ghcb(|g, gpa| f(&mut GhcbMachine, g, gpa)) {
        Ok(r) => r,
        Err(_) => terminate(TERMINATE_GHCB_EXIT),
    }
}

/// Makes the GHCB page shared and registers it (GHCB spec §2.3.1, §4.1.1): rescind its
/// validation, page state change to shared (MSR protocol), clear its C-bit in the active
/// page tables, zero it, register its GPA. Terminates the guest on failure.
fn init_ghcb() {
    let page = ghcb_gpa();
    let mut hv = MsrProtocol;
    if ghcb::sev_info(&mut hv).is_err() {
        terminate(TERMINATE_GHCB_SETUP);
    }
    // SAFETY: under SNP; the GHCB page is used only as a shared page from now on.
    let rescinded = unsafe { pvalidate(page, PageSize::Small, false) };
    let ok = rescinded.is_ok()
        && ghcb::page_state_change(&mut hv, page, PageState::Shared).is_ok()
        && super::paging::set_encrypted(page, false).is_ok();
    if !ok {
        terminate(TERMINATE_GHCB_SETUP);
    }
    // SAFETY: nothing uses the page yet; it is now mapped shared.
    let raw: *mut Ghcb = &raw mut GHCB_PAGE;
    // SAFETY: as above.
    unsafe { (*raw).0.fill(0) };
    if ghcb::register_ghcb(&mut hv, page).is_err() {
        terminate(TERMINATE_GHCB_SETUP);
    }
    GHCB_READY.store(true, Ordering::Release);
}

/// Pages the kernel keeps shared from boot on (the GHCB): `paging::init` maps them without
/// the C-bit in the tables it builds.
pub fn static_shared_pages() -> impl Iterator<Item = u64> {
    GHCB_READY
        .load(Ordering::Acquire)
        .then(ghcb_gpa)
        .into_iter()
}

// ---------------------------------------------------------------------------------------
// Early boot: the #VC handler and the GHCB before the first intercepted instruction.

/// The most unaccepted-memory ranges remembered from the boot memory map.
pub const MAX_UNACCEPTED_RANGES: usize = 32;
static UNACCEPTED: spin::Mutex<([(u64, u64); MAX_UNACCEPTED_RANGES], usize)> =
    spin::Mutex::new(([(0, 0); MAX_UNACCEPTED_RANGES], 0));
/// Where OVMF's `cc_blob_sev_info` said the CPUID page is (0: none).
static CPUID_PAGE_PADDR: AtomicU64 = AtomicU64::new(0);
/// Where the secrets page is (0: none).
static SECRETS_PAGE_PADDR: AtomicU64 = AtomicU64::new(0);

/// The largest handoff structure scanned for unaccepted memory.
const MAX_HANDOFF_BYTES: usize = 64 * 1024;

/// First thing in `cairn_boot64`: a no-op without SNP. Under SNP every port access (the
/// serial console), MSR access, CPUID and possibly RDTSC needs the #VC handler or the GHCB,
/// so this loads the GDT/IDT (with the #VC gate), reads the firmware's CPUID and secrets
/// page addresses and the unaccepted memory of the handoff (UEFI entry only), and sets up
/// the GHCB.
pub fn early_init(info_paddr: u64, protocol: u64) {
    if !snp_active() {
        return;
    }
    super::gdt::init();
    super::idt::init();
    if let Some(blob) = crate::efi::cc_blob_paddr() {
        // SAFETY: OVMF's blob, in firmware-reserved memory the boot identity map covers.
        let bytes = unsafe { core::slice::from_raw_parts(blob as *const u8, 40) };
        if let Ok(b) = ::sev::snp_boot::CcBlob::parse(bytes) {
            CPUID_PAGE_PADDR.store(b.cpuid_phys, Ordering::SeqCst);
            SECRETS_PAGE_PADDR.store(b.secrets_phys, Ordering::SeqCst);
        }
    }
    if protocol == boot::entry::PROTOCOL_UEFI {
        record_unaccepted(info_paddr);
    }
    init_ghcb();
}

fn record_unaccepted(info_paddr: u64) {
    // SAFETY: the handoff buffer in `.bss` (efi.rs), identity-mapped; the size word first.
    let total = unsafe { core::ptr::read_unaligned(info_paddr as *const u32) } as usize;
    let len = total.min(MAX_HANDOFF_BYTES);
    // SAFETY: as above, `len` bytes of the buffer (it is HANDOFF_BYTES = 64 KiB long).
    let info = unsafe { core::slice::from_raw_parts(info_paddr as *const u8, len) };
    let mut list = UNACCEPTED.lock();
    let (ranges, n) = &mut *list;
    let _ = ::sev::snp_boot::for_each_unaccepted(info, |base, len| {
        if *n < MAX_UNACCEPTED_RANGES {
            ranges[*n] = (base, base + len);
            *n += 1;
        }
    });
}

/// The unaccepted-memory ranges `[start, end)` of the boot memory map (empty without SNP).
/// A copy, not a heap allocation: `paging::init` asks before the heap exists.
pub fn unaccepted_ranges() -> impl Iterator<Item = (u64, u64)> + Clone {
    let (ranges, n) = *UNACCEPTED.lock();
    ranges.into_iter().take(n)
}

/// Firmware pages the kernel reads as private memory (CPUID and secrets pages, the
/// cc_blob): `paging::init` maps them with the C-bit whatever the memory map calls them.
pub fn firmware_private_pages() -> [u64; 3] {
    [
        CPUID_PAGE_PADDR.load(Ordering::Relaxed),
        SECRETS_PAGE_PADDR.load(Ordering::Relaxed),
        crate::efi::cc_blob_paddr().unwrap_or(0),
    ]
}

// ---------------------------------------------------------------------------------------
// Intercepted instructions through the GHCB.

/// MSRs that are never intercepted under SEV-ES (read and written natively).
pub fn msr_is_native(msr: u32) -> bool {
    msr == ghcb::MSR_GHCB || msr == MSR_SEV_STATUS
}

/// True when intercepted instructions must go through the GHCB.
#[inline]
pub fn use_ghcb() -> bool {
    es_active() && GHCB_READY.load(Ordering::Relaxed)
}

/// IN through the GHCB.
pub fn io_in(port: u16, size: IoSize) -> u64 {
    exchange(|hv, g, _| ghcb_page::io_in(hv, g, port, size))
}

/// OUT through the GHCB.
pub fn io_out(port: u16, size: IoSize, value: u64) {
    exchange(|hv, g, _| ghcb_page::io_out(hv, g, port, size, value))
}

/// RDMSR through the GHCB.
pub fn rdmsr(msr: u32) -> u64 {
    exchange(|hv, g, _| ghcb_page::rdmsr(hv, g, msr))
}

/// WRMSR through the GHCB.
pub fn wrmsr(msr: u32, value: u64) {
    exchange(|hv, g, _| ghcb_page::wrmsr(hv, g, msr, value))
}

/// A 32-bit MMIO read through the GHCB (the local APIC).
pub fn mmio_read32(gpa: u64) -> u32 {
    let mut b = [0u8; 4];
    exchange(|hv, g, ghcb_gpa| ghcb_page::mmio_read(hv, g, ghcb_gpa, gpa, &mut b));
    u32::from_le_bytes(b)
}

/// A 32-bit MMIO write through the GHCB (the local APIC).
pub fn mmio_write32(gpa: u64, value: u32) {
    exchange(|hv, g, ghcb_gpa| ghcb_page::mmio_write(hv, g, ghcb_gpa, gpa, &value.to_le_bytes()));
}

// ---------------------------------------------------------------------------------------
// Page states.

/// Why a page state change failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStateError {
    /// `PVALIDATE` failed with this status at this address.
    Pvalidate(u64, u32),
    /// The hypervisor refused (MSR protocol).
    Msr(ghcb::GhcbError),
    /// The hypervisor refused (GHCB page state change exit).
    Nae(NaeError),
}

impl core::fmt::Display for PageStateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PageStateError::Pvalidate(a, s) => write!(f, "PVALIDATE {a:#x} failed: {s}"),
            PageStateError::Msr(e) => write!(f, "{e}"),
            PageStateError::Nae(e) => write!(f, "{e}"),
        }
    }
}

const PAGE_4K: u64 = 4096;
const PAGE_2M: u64 = 2 << 20;

/// Asks the hypervisor to make the 4 KiB pages of `[start, end)` `state`: through the GHCB
/// page state change exit in batches, or the MSR protocol page by page before the GHCB
/// exists.
fn hypervisor_page_state(start: u64, end: u64, state: PageState) -> Result<(), PageStateError> {
    if !GHCB_READY.load(Ordering::Acquire) {
        let mut page = start;
        while page < end {
            ghcb::page_state_change(&mut MsrProtocol, page, state).map_err(PageStateError::Msr)?;
            page += PAGE_4K;
        }
        return Ok(());
    }
    ghcb_page::psc_batches(start, end, state, |batch| {
        with_ghcb(|g, gpa| ghcb_page::page_state_change(&mut GhcbMachine, g, gpa, batch))
            .map_err(PageStateError::Nae)
    })
}

/// `PVALIDATE`s (or rescinds) every page of `[start, end)`, 2 MiB at a time where aligned
/// and the RMP agrees, else 4 KiB.
fn pvalidate_range(start: u64, end: u64, validate: bool) -> Result<(), PageStateError> {
    let mut page = start;
    while page < end {
        if page.is_multiple_of(PAGE_2M) && end - page >= PAGE_2M {
            // SAFETY: the caller (`make_shared`/`accept`) owns the range.
            match unsafe { pvalidate(page, PageSize::Huge, validate) } {
                Ok(_) => {
                    page += PAGE_2M;
                    continue;
                }
                Err(PVALIDATE_FAIL_SIZEMISMATCH) => {}
                Err(s) => return Err(PageStateError::Pvalidate(page, s)),
            }
        }
        let stop = ((page & !(PAGE_2M - 1)) + PAGE_2M).min(end);
        while page < stop {
            // SAFETY: as above.
            unsafe { pvalidate(page, PageSize::Small, validate) }
                .map_err(|s| PageStateError::Pvalidate(page, s))?;
            page += PAGE_4K;
        }
    }
    Ok(())
}

/// Flushes the cache lines of `[start, end)` (before the page changes key: a dirty line
/// written back later under the old key would corrupt the page; APM vol. 2 §15.34.7).
fn flush_range(start: u64, end: u64) {
    const LINE: u64 = 64;
    let mut a = start;
    while a < end {
        // SAFETY: CLFLUSH of a mapped address has no architectural effect but the flush.
        unsafe { asm!("clflush [{}]", in(reg) a, options(nostack, preserves_flags)) };
        a += LINE;
    }
}

/// RMP side of making `[start, end)` shared: flush, rescind, page state change to shared.
/// The caller clears the C-bit in the page tables afterwards.
///
/// # Safety
/// Under SNP, for pages the kernel will use only as shared memory until made private again.
pub unsafe fn rmp_to_shared(start: u64, end: u64) -> Result<(), PageStateError> {
    flush_range(start, end);
    pvalidate_range(start, end, false)?;
    hypervisor_page_state(start, end, PageState::Shared)
}

/// RMP side of making `[start, end)` private (or accepting unaccepted memory): page state
/// change to private, then validate. The caller sets the C-bit in the page tables first.
///
/// # Safety
/// Under SNP, for pages mapped once (identity) that nothing else validated.
pub unsafe fn rmp_to_private(start: u64, end: u64) -> Result<(), PageStateError> {
    hypervisor_page_state(start, end, PageState::Private)?;
    pvalidate_range(start, end, true)
}

/// Accepts unaccepted memory `[start, end)` (already mapped private by `paging::init`).
/// Terminates the guest on failure: memory the firmware handed over cannot be refused.
pub fn accept(start: u64, end: u64) {
    // SAFETY: unaccepted memory from the firmware's map: owned by the kernel, never
    // validated before (UEFI: the OS accepts it), identity-mapped once.
    if unsafe { rmp_to_private(start, end) }.is_err() {
        terminate(TERMINATE_PAGE_STATE);
    }
}

// ---------------------------------------------------------------------------------------
// The #VC handler.

/// Why a #VC could not be handled (the exception path prints it and stops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcFailure {
    /// #VC without SEV-ES (cannot happen on a sane machine).
    NotEs,
    /// RIP is not in kernel text: the instruction bytes are not readable as code.
    RipOutsideText(u64),
    /// The instruction is not one the kernel emulates.
    Decode(VcError),
}

impl core::fmt::Display for VcFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VcFailure::NotEs => f.write_str("#VC without SEV-ES"),
            VcFailure::RipOutsideText(r) => write!(f, "#VC at {r:#x} outside kernel text"),
            VcFailure::Decode(e) => write!(f, "{e}"),
        }
    }
}

/// The CPUID page, if the firmware gave one.
fn cpuid_page() -> Option<CpuidPage<'static>> {
    let paddr = CPUID_PAGE_PADDR.load(Ordering::Relaxed);
    if paddr == 0 {
        return None;
    }
    // SAFETY: the firmware's CPUID page: private, validated at launch, identity-mapped with
    // the C-bit (`firmware_private_pages`), never written by the kernel.
    let bytes = unsafe { core::slice::from_raw_parts(paddr as *const u8, 4096) };
    CpuidPage::parse(bytes).ok()
}

/// Handles a #VC: decodes the instruction at RIP with the `sev` crate's `vc`, performs it (CPUID
/// from the CPUID page, the rest through the GHCB), writes the results into the interrupted
/// registers and moves RIP past the instruction.
pub fn handle_vc(frame: &mut super::idt::TrapFrame) -> Result<(), VcFailure> {
    if !es_active() {
        return Err(VcFailure::NotEs);
    }
    let (text_start, text_end) = super::memory::kernel_text_range();
    if frame.rip < text_start || frame.rip >= text_end {
        return Err(VcFailure::RipOutsideText(frame.rip));
    }
    let available = ((text_end - frame.rip) as usize).min(MAX_INSTRUCTION_BYTES);
    // SAFETY: `[rip, rip + available)` lies inside kernel text, mapped and never written.
    let bytes = unsafe { core::slice::from_raw_parts(frame.rip as *const u8, available) };
    let insn = vc::decode(frame.error_code, bytes).map_err(VcFailure::Decode)?;
    let lo32 = |v: u64| v & 0xFFFF_FFFF;
    match insn.request {
        VcRequest::Cpuid => {
            let (leaf, subleaf) = (frame.rax as u32, frame.rcx as u32);
            let regs = match cpuid_page() {
                // A leaf the page does not list reads as zeros (as Linux's `snp_cpuid`).
                Some(page) => page.lookup(leaf, subleaf).unwrap_or_default(),
                // SEV-ES without a CPUID page: the hypervisor's (untrusted) answer.
                None => exchange(|hv, g, _| ghcb_page::cpuid(hv, g, leaf, subleaf, None)),
            };
            frame.rax = u64::from(regs.eax);
            frame.rbx = u64::from(regs.ebx);
            frame.rcx = u64::from(regs.ecx);
            frame.rdx = u64::from(regs.edx);
        }
        VcRequest::Rdmsr => {
            let v = rdmsr(frame.rcx as u32);
            frame.rax = lo32(v);
            frame.rdx = v >> 32;
        }
        VcRequest::Wrmsr => wrmsr(frame.rcx as u32, (lo32(frame.rdx) << 32) | lo32(frame.rax)),
        VcRequest::Rdtsc => {
            let t = exchange(|hv, g, _| ghcb_page::rdtsc(hv, g));
            frame.rax = lo32(t);
            frame.rdx = t >> 32;
        }
        VcRequest::Rdtscp => {
            let (t, aux) = exchange(|hv, g, _| ghcb_page::rdtscp(hv, g));
            frame.rax = lo32(t);
            frame.rdx = t >> 32;
            frame.rcx = u64::from(aux);
        }
        VcRequest::Io {
            direction,
            size,
            port,
        } => {
            let port = match port {
                PortOperand::Dx => frame.rdx as u16,
                PortOperand::Imm(p) => u16::from(p),
            };
            match direction {
                IoDirection::In => {
                    let v = io_in(port, size);
                    frame.rax = ghcb_page::merge_in(frame.rax, v, size);
                }
                IoDirection::Out => io_out(port, size, frame.rax),
            }
        }
        VcRequest::Mmio(access) => mmio(frame, access, insn.len as u64),
    }
    frame.rip += insn.len as u64;
    Ok(())
}

/// The interrupted context's general register `n` (0..=15 in encoding order).
fn gpr(frame: &mut super::idt::TrapFrame, n: u8) -> &mut u64 {
    match n & 15 {
        0 => &mut frame.rax,
        1 => &mut frame.rcx,
        2 => &mut frame.rdx,
        3 => &mut frame.rbx,
        4 => &mut frame.rsp,
        5 => &mut frame.rbp,
        6 => &mut frame.rsi,
        7 => &mut frame.rdi,
        8 => &mut frame.r8,
        9 => &mut frame.r9,
        10 => &mut frame.r10,
        11 => &mut frame.r11,
        12 => &mut frame.r12,
        13 => &mut frame.r13,
        14 => &mut frame.r14,
        _ => &mut frame.r15,
    }
}

/// Emulates an MMIO MOV through the GHCB MMIO exits. The device pages are identity-mapped,
/// so the effective address is the GPA.
fn mmio(frame: &mut super::idt::TrapFrame, access: MmioAccess, len: u64) {
    let next_rip = frame.rip + len;
    let gpa = {
        let regs = [
            frame.rax, frame.rcx, frame.rdx, frame.rbx, frame.rsp, frame.rbp, frame.rsi, frame.rdi,
            frame.r8, frame.r9, frame.r10, frame.r11, frame.r12, frame.r13, frame.r14, frame.r15,
        ];
        access.mem.address(|r| regs[usize::from(r & 15)], next_rip)
    };
    match access.op {
        MmioOp::Read {
            dst,
            size,
            dst_size,
        } => {
            let mut buf = [0u8; 8];
            let n = usize::from(size);
            exchange(|hv, g, ghcb_gpa| ghcb_page::mmio_read(hv, g, ghcb_gpa, gpa, &mut buf[..n]));
            let value = u64::from_le_bytes(buf);
            match dst {
                Register::Gpr(r) => {
                    let reg = gpr(frame, r);
                    *reg = vc::apply_load(*reg, value, dst_size, false);
                }
                Register::HighByte(r) => {
                    let reg = gpr(frame, r);
                    *reg = vc::apply_load(*reg, value, 1, true);
                }
            }
        }
        MmioOp::WriteRegister { src, size } => {
            let value = match src {
                Register::Gpr(r) => *gpr(frame, r),
                Register::HighByte(r) => *gpr(frame, r) >> 8,
            };
            let bytes = value.to_le_bytes();
            let n = usize::from(size);
            exchange(|hv, g, ghcb_gpa| ghcb_page::mmio_write(hv, g, ghcb_gpa, gpa, &bytes[..n]));
        }
        MmioOp::WriteImmediate { value, size } => {
            let bytes = value.to_le_bytes();
            let n = usize::from(size);
            exchange(|hv, g, ghcb_gpa| ghcb_page::mmio_write(hv, g, ghcb_gpa, gpa, &bytes[..n]));
        }
    }
}

/// What the SEV-SNP set-up did, for the boot log.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// The C-bit mask in page-table entries.
    pub c_bit_mask: u64,
    /// The GHCB's GPA.
    pub ghcb_gpa: u64,
    /// Whether the GHCB is shared and registered.
    pub ghcb_ready: bool,
    /// The CPUID page's address (0: none).
    pub cpuid_page: u64,
    /// How many unaccepted-memory ranges the boot map had.
    pub unaccepted_ranges: usize,
}

/// The SEV-SNP set-up, for the boot log.
pub fn summary() -> Summary {
    Summary {
        c_bit_mask: c_bit_mask(),
        ghcb_gpa: ghcb_gpa(),
        ghcb_ready: GHCB_READY.load(Ordering::Relaxed),
        cpuid_page: CPUID_PAGE_PADDR.load(Ordering::Relaxed),
        unaccepted_ranges: unaccepted_ranges().count(),
    }
}
