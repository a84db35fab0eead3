//! The SEV-SNP attestation path: the policy half of `node::attest::ghcb` (the machine half,
//! `PVALIDATE`, `VMGEXIT`, the GHCB MSR and page, lives in `arch::sev`).
//!
//! The protocol logic (MSR protocol, the guest-request exit and its errors, the secrets page,
//! the AES-GCM channel and its sequence numbers) lives in `node::attest::{ghcb, guest_msg}`
//! and is tested on the host against recorded exchanges; this file only drives it:
//!
//! - the secrets page comes from OVMF's confidential-computing blob (EFI configuration table,
//!   `kernel/src/efi.rs`, parsed by the `sev` crate's `snp_boot::CcBlob`), as Linux's EFI stub
//!   finds it;
//! - the request and response pages are heap pages made shared with `arch::paging::make_shared`
//!   (rescind, page state change, C-bit cleared); the exit goes through the GHCB page that
//!   `arch::sev::early_init` registered at boot.
//!
//! What the kernel does under SNP (all guarded by the TEE detected at boot, strict no-ops
//! without it): the UEFI entry sets the C-bit in every private page-table entry
//! (`arch::paging`), MMIO and shared pages have it clear; the GHCB is shared and registered
//! before the first port access; a #VC handler serves CPUID from the SNP CPUID page and
//! IN/OUT, RDMSR/WRMSR and RDTSC(P) through the GHCB (the `sev` crate's `vc` decodes them), while
//! the serial console, MSR accessors and the local APIC use the GHCB directly; virtio DMA
//! goes through a shared pool with bounce buffers (`drivers::virtio`); unaccepted memory is
//! accepted before the heap takes it (`heap`).
//!
//! **None of this has run on SEV-SNP hardware**: QEMU here is 7.2 TCG without SEV (and the
//! SNP guest support QEMU needs starts with 9.1). What is tested: the pure layouts and
//! protocols in `node::attest` on the host, and that every existing boot path still boots
//! with the SNP code present and inactive. MMIO (PCI ECAM, the virtio BARs) raises #VC
//! with the NPF exit; the handler emulates the MOV/MOVZX forms compiled volatile accesses
//! use (the `sev` crate's `vc`) and refuses others. The virtio devices QEMU gives an SEV guest
//! (`iommu_platform=on`) are negotiated through `drivers::virtio::PlatformTransport`, and
//! `testnet-uefi` runs its VMs that way (without SEV). A 4 KiB rescind inside a page the firmware
//! validated as 2 MiB needs no guest PSMASH request: the RMP check raises a nested page fault
//! with the size-mismatch bit (bit 35 of the #NPF error code), which the hypervisor resolves
//! by PSMASH and a retry (KVM's RMP fault handler); PVALIDATE's own FAIL_SIZEMISMATCH is the
//! reverse case (2 MiB over 4 KiB RMP entries), where `arch::sev` falls back to 4 KiB. CPUID
//! leaves are served from the CPUID page as they are, without Linux's fix-ups (APIC IDs,
//! OSXSAVE, XSAVE sizes): the kernel reads only feature, TSC and brand leaves
//! (`arch::cpu`) and neither XSAVE nor APIC IDs from CPUID, so the fix-ups are due with SMP
//! or XSAVE. Known gap: only one CPU. Only the path into [`attestation_report`] reaches the
//! firmware, and it refuses when [`super::detect`] found no SNP.

use ::sev::snp_boot::{CcBlob, CC_BLOB_BYTES};
use node::attest::ghcb::{
    self, request_report, GhcbError, GuestRequestPages, SecretsPage, SECRETS_PAGE_BYTES,
};
use node::attest::guest_msg::{GuestChannel, GUEST_MESSAGE_PAGE_BYTES};
use node::attest::report::REPORT_SIZE_BYTES;
use spin::Mutex;

use crate::arch::paging::{self, ShareError};
use crate::arch::sev::{self, MsrProtocol};

/// The VMPL cairn runs at (no SVSM below it): its reports are requested at this level and
/// sealed with the VMPCK of the same index.
pub const GUEST_VMPL: u8 = 0;

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
    /// The GHCB protocol failed.
    Ghcb(GhcbError),
    /// The request/response pages could not be made shared.
    Share(ShareError),
}

impl core::fmt::Display for AttestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AttestError::NoSnp => f.write_str("not an SEV-SNP guest: no attestation report"),
            AttestError::NoSecretsPage => f.write_str("no SNP secrets page from the firmware"),
            AttestError::BadSecretsPage => f.write_str("SNP secrets page not understood"),
            AttestError::NoKey => f.write_str("no usable VMPCK for this VMPL"),
            AttestError::Ghcb(e) => write!(f, "{e}"),
            AttestError::Share(e) => write!(f, "guest request pages: {e}"),
        }
    }
}

impl From<GhcbError> for AttestError {
    fn from(e: GhcbError) -> AttestError {
        AttestError::Ghcb(e)
    }
}

#[repr(C, align(4096))]
struct Page([u8; GUEST_MESSAGE_PAGE_BYTES]);

/// The two guest-request pages, made shared once (the GHCB is `arch::sev`'s).
struct Pages {
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
    // SAFETY: OVMF's blob, in reserved memory the identity map covers (with the C-bit:
    // `arch::sev::firmware_private_pages`).
    let bytes = unsafe { core::slice::from_raw_parts(blob as *const u8, CC_BLOB_BYTES) };
    let blob = CcBlob::parse(bytes).map_err(|_| AttestError::BadSecretsPage)?;
    if (blob.secrets_len as usize) < SECRETS_PAGE_BYTES {
        return Err(AttestError::BadSecretsPage);
    }
    // SAFETY: the secrets page the firmware installed at launch (private, validated, reserved
    // in the memory map), identity-mapped private.
    let page = unsafe { &*(blob.secrets_phys as *const [u8; SECRETS_PAGE_BYTES]) };
    SecretsPage::parse(page).map_err(|_| AttestError::BadSecretsPage)
}

fn prepare() -> Result<SnpState, AttestError> {
    ghcb::sev_info(&mut MsrProtocol)?;
    ghcb::hypervisor_features(&mut MsrProtocol)?;
    let secrets = secrets_page()?;
    let channel = secrets.channel(GUEST_VMPL).ok_or(AttestError::NoKey)?;
    let pages = alloc::boxed::Box::leak(alloc::boxed::Box::new(Pages {
        request: Page([0; GUEST_MESSAGE_PAGE_BYTES]),
        response: Page([0; GUEST_MESSAGE_PAGE_BYTES]),
    }));
    for page in [
        &raw const pages.request as u64,
        &raw const pages.response as u64,
    ] {
        // The pages are leaked, so never returned to the heap as private memory.
        paging::make_shared(page, GUEST_MESSAGE_PAGE_BYTES as u64).map_err(AttestError::Share)?;
    }
    pages.request.0.fill(0);
    pages.response.0.fill(0);
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
    let Pages { request, response } = &mut *s.pages;
    let mut pages = GuestRequestPages {
        request: &mut request.0,
        request_gpa,
        response: &mut response.0,
        response_gpa,
    };
    let channel = &mut s.channel;
    Ok(sev::with_ghcb(|ghcb, _| {
        request_report(
            &mut MsrProtocol,
            ghcb,
            &mut pages,
            channel,
            report_data,
            u32::from(GUEST_VMPL),
        )
    })?)
}
