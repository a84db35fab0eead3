//! AMD SEV-ES / SEV-SNP machine support: the C-bit, the instructions (`PVALIDATE`,
//! `VMGEXIT`, the GHCB MSR) and the GHCB exits that replace intercepted instructions.
//!
//! Everything here is a strict no-op unless the UEFI entry found SEV-SNP active
//! ([`detect_c_bit_mask`], before ExitBootServices): the PVH and multiboot2 paths never set
//! the mask, and every caller checks [`snp_active`] / [`es_active`] first. The byte layouts
//! and encodings (GHCB page, NAE exit codes, the #VC instruction decoder, the CPUID page) are
//! pure code in `node::attest::{ghcb, ghcb_page, vc, cpuid_page}`, unit-tested on the host;
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
use core::sync::atomic::{AtomicU64, Ordering};

use raw_cpuid::native_cpuid::cpuid_count;

/// `SEV_STATUS` MSR.
pub const MSR_SEV_STATUS: u32 = 0xC001_0131;
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
/// CPUID `0x8000_001F` EBX bits 5:0: the C-bit position.
const CPUID_CBIT_MASK: u32 = 0x3F;

/// The C-bit mask ORed into every private page-table entry: 0 without SNP.
static C_BIT_MASK: AtomicU64 = AtomicU64::new(0);
/// `SEV_STATUS` as read at boot when SNP is active (0 otherwise).
static SEV_STATUS: AtomicU64 = AtomicU64::new(0);

/// Reads CPUID and `SEV_STATUS` (only when CPUID says SEV exists: the MSR does not exist on
/// other CPUs) and returns the C-bit mask: `1 << C-bit position` when SEV-SNP is active,
/// else 0. Records the answer for [`c_bit_mask`]. Called once by the UEFI entry before
/// ExitBootServices (the firmware's #VC handler serves the CPUID under SEV-ES/SNP).
pub fn detect_c_bit_mask() -> u64 {
    if cpuid_count(CPUID_LEAF_MAX_EXTENDED, 0).eax < CPUID_LEAF_SEV {
        return 0;
    }
    let leaf = cpuid_count(CPUID_LEAF_SEV, 0);
    if leaf.eax & CPUID_SEV_BIT == 0 {
        return 0;
    }
    // SAFETY: CPUID says the processor implements SEV, so SEV_STATUS exists (APM vol. 2
    // §15.34.10); reading it has no side effects and is never intercepted.
    let status = unsafe { native_rdmsr(MSR_SEV_STATUS) };
    if status & SEV_STATUS_SNP_BIT == 0 {
        return 0;
    }
    let mask = 1u64 << (leaf.ebx & CPUID_CBIT_MASK);
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
