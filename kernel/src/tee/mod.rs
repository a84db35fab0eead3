//! The trusted execution environment the kernel runs in, if any: AMD SEV-SNP or none.
//!
//! Detection (AMD APM vol. 3, CPUID Fn8000_001F; APM vol. 2 §15.34.10, `SEV_STATUS`):
//! - CPUID `0x8000_0000` EAX must reach `0x8000_001F`, else the CPU knows nothing of SEV;
//! - CPUID `0x8000_001F` EAX bit 1 says the processor supports SEV (bit 4: SEV-SNP), and
//!   EBX[5:0] is the position of the C-bit in a page table entry;
//! - only then is the `SEV_STATUS` MSR (`0xC001_0131`) read: on a CPU without SEV (Intel,
//!   QEMU TCG) that MSR does not exist and `rdmsr` would raise #GP. Bit 0 is "SEV active",
//!   bit 1 "SEV-ES active", bit 2 "SEV-SNP active" for this guest.
//!
//! Under SNP the CPUID values come from the hypervisor (or the measured CPUID page) and are
//! not trusted for anything but this decision: a hypervisor that hides SEV gets a guest that
//! says "none" and produces no attestation report, which governance then refuses to admit.
//! A hypervisor that fakes SEV cannot fake the AMD-signed report.

use raw_cpuid::native_cpuid::cpuid_count;

#[allow(
    dead_code,
    reason = "the runtime asks for a report with the node's keys hash (issue 9)"
)]
pub mod snp;

use crate::arch::cpu;

/// `SEV_STATUS` MSR: which memory-encryption features are active for this guest.
pub const MSR_SEV_STATUS: u32 = 0xC001_0131;
/// `SEV_STATUS` bit 0: SEV is active.
const SEV_STATUS_SEV_BIT: u64 = 1 << 0;
/// `SEV_STATUS` bit 1: SEV-ES is active.
const SEV_STATUS_ES_BIT: u64 = 1 << 1;
/// `SEV_STATUS` bit 2: SEV-SNP is active.
const SEV_STATUS_SNP_BIT: u64 = 1 << 2;
/// CPUID leaf with the memory-encryption capabilities.
const CPUID_LEAF_SEV: u32 = 0x8000_001F;
/// CPUID leaf giving the highest extended leaf.
const CPUID_LEAF_MAX_EXTENDED: u32 = 0x8000_0000;
/// CPUID `0x8000_001F` EAX bit 1: SEV supported.
const CPUID_SEV_BIT: u32 = 1 << 1;
/// CPUID `0x8000_001F` EAX bit 4: SEV-SNP supported.
const CPUID_SNP_BIT: u32 = 1 << 4;
/// CPUID `0x8000_001F` EBX bits 5:0: the C-bit position.
const CPUID_CBIT_MASK: u32 = 0x3F;

/// The TEE this kernel runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tee {
    /// No memory encryption active (or only SEV/SEV-ES, which cannot attest with SNP
    /// reports): the node says so and produces no report.
    None,
    /// AMD SEV-SNP is active for this guest.
    SevSnp {
        /// The C-bit position in page table entries (CPUID `0x8000_001F` EBX[5:0]).
        c_bit: u8,
        /// The raw `SEV_STATUS` MSR value (features active beyond SNP itself).
        sev_status: u64,
    },
}

impl Tee {
    /// Short name for logs, `/api/v2/status` and `/metrics`: `"none"` or `"sev-snp"`.
    pub fn name(&self) -> &'static str {
        match self {
            Tee::None => "none",
            Tee::SevSnp { .. } => "sev-snp",
        }
    }

    #[allow(dead_code, reason = "used by the attestation path (issue 9)")]
    /// True when this guest can ask the AMD secure processor for an attestation report.
    pub fn can_attest(&self) -> bool {
        matches!(self, Tee::SevSnp { .. })
    }
}

/// What CPUID and `SEV_STATUS` said, kept for the boot log.
#[derive(Debug, Clone, Copy, Default)]
pub struct Probe {
    /// CPUID `0x8000_001F` exists.
    pub leaf_present: bool,
    /// CPUID says SEV is supported.
    pub sev_supported: bool,
    /// CPUID says SEV-SNP is supported.
    pub snp_supported: bool,
    /// `SEV_STATUS`, when it was read.
    pub sev_status: Option<u64>,
}

/// Reads CPUID and, only when CPUID says SEV exists, the `SEV_STATUS` MSR.
pub fn probe() -> Probe {
    let max_extended = cpuid_count(CPUID_LEAF_MAX_EXTENDED, 0).eax;
    if max_extended < CPUID_LEAF_SEV {
        return Probe::default();
    }
    let leaf = cpuid_count(CPUID_LEAF_SEV, 0);
    let sev_supported = leaf.eax & CPUID_SEV_BIT != 0;
    let sev_status = if sev_supported {
        // SAFETY: CPUID 0x8000_001F EAX bit 1 says the processor implements SEV, and every
        // SEV-capable processor implements SEV_STATUS (APM vol. 2 §15.34.10); reading it has
        // no side effects. Under SEV-ES/SNP the read is not intercepted (no #VC).
        Some(unsafe { cpu::rdmsr(MSR_SEV_STATUS) })
    } else {
        None
    };
    Probe {
        leaf_present: true,
        sev_supported,
        snp_supported: leaf.eax & CPUID_SNP_BIT != 0,
        sev_status,
    }
}

/// Detects the TEE: SEV-SNP when `SEV_STATUS` says SNP is active, else none.
pub fn detect() -> Tee {
    let probe = probe();
    match probe.sev_status {
        Some(status) if status & SEV_STATUS_SNP_BIT != 0 => Tee::SevSnp {
            c_bit: (cpuid_count(CPUID_LEAF_SEV, 0).ebx & CPUID_CBIT_MASK) as u8,
            sev_status: status,
        },
        _ => Tee::None,
    }
}

/// Detects the TEE and logs the one line that says what it is (`tee: none (no SEV-SNP)`).
pub fn detect_and_log() -> Tee {
    let probe = probe();
    let tee = detect();
    let name = tee.name();
    match tee {
        Tee::SevSnp { c_bit, sev_status } => {
            let s = crate::arch::sev::summary();
            log::info!(
                "tee: {name} (SEV_STATUS {sev_status:#x}, C-bit {c_bit}; page tables C-bit mask \
                 {:#x}, GHCB at {:#x} {}, CPUID page {:#x}, {} unaccepted ranges)",
                s.c_bit_mask,
                s.ghcb_gpa,
                if s.ghcb_ready {
                    "registered"
                } else {
                    "not registered"
                },
                s.cpuid_page,
                s.unaccepted_ranges
            )
        }
        Tee::None => {
            let why = match probe.sev_status {
                None if !probe.leaf_present || !probe.sev_supported => "no SEV-SNP",
                None => "no SEV-SNP; SEV_STATUS not read",
                Some(s) if s & SEV_STATUS_ES_BIT != 0 => "no SEV-SNP; SEV-ES guest",
                Some(s) if s & SEV_STATUS_SEV_BIT != 0 => "no SEV-SNP; SEV guest",
                Some(_) if probe.snp_supported => "no SEV-SNP; SNP-capable CPU, not an SNP guest",
                Some(_) => "no SEV-SNP; SEV-capable CPU, not an SEV guest",
            };
            log::info!("tee: {name} ({why})")
        }
    }
    tee
}

static DETECTED: spin::Once<Tee> = spin::Once::new();

/// Detects the TEE once at boot (logging it) and remembers the answer for [`current`].
pub fn init() -> Tee {
    *DETECTED.call_once(detect_and_log)
}

/// The TEE detected at boot by [`init`] (detected now if `init` has not run yet).
#[allow(
    dead_code,
    reason = "read by the runtime for /api/v2/status and /metrics"
)]
pub fn current() -> Tee {
    *DETECTED.call_once(detect)
}
