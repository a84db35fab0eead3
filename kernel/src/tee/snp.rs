//! The SEV-SNP guest's instructions and pages: the machine half of `node::attest::ghcb`.
//!
//! The protocol logic (MSR protocol, the guest-request exit and its errors, the secrets page,
//! the AES-GCM channel and its sequence numbers) lives in `node::attest::{ghcb, guest_msg}`
//! and is tested on the host against recorded exchanges; this file only executes it:
//!
//! - [`Machine`] implements `Hypervisor` with `wrmsr`/`rdmsr` of the GHCB MSR and `VMGEXIT`
//!   (`rep vmmcall`, F3 0F 01 D9; APM vol. 3);
//! - [`pvalidate`] wraps `PVALIDATE` (F2 0F 01 FF: RAX = virtual address, ECX = page size
//!   0/1 for 4 KiB/2 MiB, EDX = 1 validate / 0 rescind; EAX = status, CF = 1 when the page
//!   was already in that state; APM vol. 3);
//! - [`make_shared`] turns a kernel page into a page the hypervisor may read: rescind its
//!   validation, then ask for the shared state (MSR protocol page state change). The GHCB and
//!   the two guest-request pages are such pages;
//! - the secrets page comes from OVMF's confidential-computing blob (EFI configuration table,
//!   `kernel/src/efi.rs`), as Linux's EFI stub finds it.
//!
//! What is not here yet (and so no SNP guest boots this kernel today): the kernel's page
//! tables must carry the C-bit on every private page and leave it clear on the shared pages
//! (`arch::paging`), and memory OVMF hands over as unaccepted (EFI type 15, treated as
//! reserved today) would be accepted with [`pvalidate`]. None of this code runs under TCG: the
//! only path into it is [`attestation_report`], which refuses when [`super::detect`] found no
//! SNP.

use core::arch::asm;
use core::sync::atomic::{compiler_fence, Ordering};

use node::attest::ghcb::{
    self, request_report, GhcbError, GuestRequestPages, Hypervisor, PageState, SecretsPage,
    MSR_GHCB, SECRETS_PAGE_BYTES,
};
use node::attest::guest_msg::{GuestChannel, GUEST_MESSAGE_PAGE_BYTES};
use node::attest::report::REPORT_SIZE_BYTES;
use spin::Mutex;

use crate::arch::cpu;

/// The VMPL cairn runs at (no SVSM below it): its reports are requested at this level and
/// sealed with the VMPCK of the same index.
pub const GUEST_VMPL: u8 = 0;
/// The `cc_blob_sev_info` magic ("AMDE"): OVMF's description of the secrets and CPUID pages.
const CC_BLOB_MAGIC: u32 = 0x4544_4D41;

/// Why no report could be obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestError {
    /// The kernel does not run under SEV-SNP: there is no report to give.
    NoSnp,
    /// The firmware left no confidential-computing blob (no secrets page address).
    NoSecretsPage,
    /// The secrets page is not one this guest understands.
    BadSecretsPage,
    /// The VMPCK for our VMPL is absent (zero) or was wiped after an earlier failure.
    NoKey,
    /// PVALIDATE failed with this status.
    Pvalidate(u32),
    /// The GHCB protocol failed.
    Ghcb(GhcbError),
}

impl core::fmt::Display for AttestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AttestError::NoSnp => f.write_str("not an SEV-SNP guest: no attestation report"),
            AttestError::NoSecretsPage => f.write_str("no SNP secrets page from the firmware"),
            AttestError::BadSecretsPage => f.write_str("SNP secrets page not understood"),
            AttestError::NoKey => f.write_str("no usable VMPCK for this VMPL"),
            AttestError::Pvalidate(s) => write!(f, "PVALIDATE failed: {s}"),
            AttestError::Ghcb(e) => write!(f, "{e}"),
        }
    }
}

impl From<GhcbError> for AttestError {
    fn from(e: GhcbError) -> AttestError {
        AttestError::Ghcb(e)
    }
}

/// `VMGEXIT`: hand control to the hypervisor, which reads the GHCB MSR.
fn vmgexit() {
    // SAFETY: only reached under SEV-SNP (see `attestation_report`), where VMGEXIT is the
    // defined way to exit to the hypervisor; it changes no guest state but the GHCB and the
    // MSR the protocol says it may.
    unsafe { asm!(".byte 0xf3, 0x0f, 0x01, 0xd9", options(nostack)) };
}

/// The hardware under the GHCB protocol.
struct Machine;

impl Hypervisor for Machine {
    fn msr_protocol(&mut self, request: u64) -> u64 {
        // SAFETY: the GHCB MSR exists on every SEV-ES/SNP guest; the MSR protocol is the
        // defined use of it, and nothing else uses it concurrently (one CPU, under the lock).
        unsafe {
            cpu::wrmsr(MSR_GHCB, request);
            vmgexit();
            cpu::rdmsr(MSR_GHCB)
        }
    }

    fn vmgexit(&mut self, ghcb: &mut ghcb::Ghcb, pages: &mut GuestRequestPages<'_>) {
        let gpa = ghcb as *mut ghcb::Ghcb as u64;
        // The hypervisor reads the GHCB and the request page and writes the response page:
        // every write before the exit must be done, every read after it must be fresh.
        compiler_fence(Ordering::SeqCst);
        let _ = (pages.request.as_ptr(), pages.response.as_mut_ptr());
        // SAFETY: the GHCB page is registered and shared (see `Pages::prepare`).
        unsafe { cpu::wrmsr(MSR_GHCB, gpa) };
        vmgexit();
        compiler_fence(Ordering::SeqCst);
    }
}

/// `PVALIDATE` of the 4 KiB page at `vaddr` (identity-mapped); `Ok(true)` when its state
/// changed, `Ok(false)` when it already was in that state.
///
/// # Safety
/// Only under SEV-SNP. Rescinding a page the kernel still uses as private memory makes every
/// later access to it fault (#VC); validating a page twice at two addresses breaks the
/// guarantee that each page is validated once.
pub unsafe fn pvalidate(vaddr: u64, validate: bool) -> Result<bool, AttestError> {
    const PAGE_SIZE_4K: u32 = 0;
    let status: u64;
    let unchanged: u8;
    // SAFETY: per the caller's contract.
    unsafe {
        asm!(
            ".byte 0xf2, 0x0f, 0x01, 0xff",
            "setc {unchanged}",
            unchanged = out(reg_byte) unchanged,
            inout("rax") vaddr => status,
            in("ecx") PAGE_SIZE_4K,
            in("edx") u32::from(validate),
            options(nostack),
        )
    };
    // The status is EAX (the upper half of RAX is not defined by the instruction).
    match status as u32 {
        0 => Ok(unchanged == 0),
        s => Err(AttestError::Pvalidate(s)),
    }
}

/// Makes the identity-mapped page at `vaddr` shared with the hypervisor.
///
/// # Safety
/// Only under SEV-SNP, for a page the kernel will from now on use only as shared memory.
unsafe fn make_shared(vaddr: u64) -> Result<(), AttestError> {
    // SAFETY: per the caller's contract.
    unsafe { pvalidate(vaddr, false)? };
    ghcb::page_state_change(&mut Machine, vaddr, PageState::Shared)?;
    Ok(())
}

#[repr(C, align(4096))]
struct Page([u8; GUEST_MESSAGE_PAGE_BYTES]);

/// The GHCB and the two guest-request pages, made shared once.
struct Pages {
    ghcb: ghcb::Ghcb,
    request: Page,
    response: Page,
}

/// The guest-request state: the shared pages and the channel (its sequence number lives
/// here between requests; a failure disables it for good).
struct SnpState {
    pages: &'static mut Pages,
    channel: GuestChannel,
}

static STATE: Mutex<Option<SnpState>> = Mutex::new(None);

/// The secrets page, found through OVMF's `cc_blob_sev_info` (recorded by the UEFI entry).
fn secrets_page() -> Result<SecretsPage, AttestError> {
    let blob = crate::efi::cc_blob_paddr().ok_or(AttestError::NoSecretsPage)?;
    // SAFETY: OVMF's blob, in reserved memory the identity map covers: u32 magic, u16
    // version, u16 reserved, u64 secrets_phys, u32 secrets_len.
    let (magic, secrets_phys, secrets_len) = unsafe {
        (
            core::ptr::read_unaligned(blob as *const u32),
            core::ptr::read_unaligned((blob + 8) as *const u64),
            core::ptr::read_unaligned((blob + 16) as *const u32),
        )
    };
    if magic != CC_BLOB_MAGIC || (secrets_len as usize) < SECRETS_PAGE_BYTES {
        return Err(AttestError::BadSecretsPage);
    }
    // SAFETY: the secrets page the firmware installed at launch (private, validated, reserved
    // in the memory map), identity-mapped.
    let page = unsafe { &*(secrets_phys as *const [u8; SECRETS_PAGE_BYTES]) };
    SecretsPage::parse(page).map_err(|_| AttestError::BadSecretsPage)
}

fn prepare() -> Result<SnpState, AttestError> {
    ghcb::sev_info(&mut Machine)?;
    ghcb::hypervisor_features(&mut Machine)?;
    let secrets = secrets_page()?;
    let channel = secrets.channel(GUEST_VMPL).ok_or(AttestError::NoKey)?;
    let pages = alloc::boxed::Box::leak(alloc::boxed::Box::new(Pages {
        ghcb: ghcb::Ghcb::default(),
        request: Page([0; GUEST_MESSAGE_PAGE_BYTES]),
        response: Page([0; GUEST_MESSAGE_PAGE_BYTES]),
    }));
    for page in [
        &raw const pages.ghcb as u64,
        &raw const pages.request as u64,
        &raw const pages.response as u64,
    ] {
        // SAFETY: under SNP (checked by the caller); these pages are used only as shared
        // pages from now on, and they are leaked, so never returned to the heap.
        unsafe { make_shared(page)? };
    }
    ghcb::register_ghcb(&mut Machine, &raw const pages.ghcb as u64)?;
    Ok(SnpState { pages, channel })
}

/// Asks the AMD secure processor for an attestation report carrying `report_data` (the
/// node's keys hash, `node::attest::binding`). Without SNP: [`AttestError::NoSnp`], never a
/// report of any other kind.
pub fn attestation_report(report_data: &[u8; 64]) -> Result<[u8; REPORT_SIZE_BYTES], AttestError> {
    if !super::current().can_attest() {
        return Err(AttestError::NoSnp);
    }
    let mut state = STATE.lock();
    if state.is_none() {
        *state = Some(prepare()?);
    }
    let Some(s) = state.as_mut() else {
        return Err(AttestError::NoKey);
    };
    if s.channel.is_disabled() {
        return Err(AttestError::NoKey);
    }
    let request_gpa = &raw const s.pages.request as u64;
    let response_gpa = &raw const s.pages.response as u64;
    let Pages {
        ghcb,
        request,
        response,
    } = &mut *s.pages;
    let mut pages = GuestRequestPages {
        request: &mut request.0,
        request_gpa,
        response: &mut response.0,
        response_gpa,
    };
    Ok(request_report(
        &mut Machine,
        ghcb,
        &mut pages,
        &mut s.channel,
        report_data,
        u32::from(GUEST_VMPL),
    )?)
}
