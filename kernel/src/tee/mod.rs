//! The trusted execution environment the kernel runs in, if any: AMD SEV-SNP or none.
//!
//! The machine says what is active (`arch::sev::probe`: CPUID `0x8000_001F` and the
//! `SEV_STATUS` MSR); this module decides what that means for the node: SEV-SNP is the only
//! TEE whose reports cairn accepts, anything else is "none".
//!
//! Under SNP the CPUID values come from the hypervisor (or the measured CPUID page) and are
//! not trusted for anything but this decision: a hypervisor that hides SEV gets a guest that
//! says "none" and produces no attestation report, which governance then refuses to admit.
//! A hypervisor that fakes SEV cannot fake the AMD-signed report.

pub mod snp;

use crate::arch::sev::{self, Probe};

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

    /// True when this guest can ask the AMD secure processor for an attestation report.
    pub fn can_attest(&self) -> bool {
        matches!(self, Tee::SevSnp { .. })
    }
}

/// Detects the TEE: SEV-SNP when `SEV_STATUS` says SNP is active, else none.
pub fn detect() -> Tee {
    tee_of(&sev::probe())
}

fn tee_of(probe: &Probe) -> Tee {
    match probe.sev_status {
        Some(status) if probe.snp_active() => Tee::SevSnp {
            c_bit: probe.c_bit,
            sev_status: status,
        },
        _ => Tee::None,
    }
}

/// Detects the TEE and logs the one line that says what it is (`tee: none (no SEV-SNP)`).
pub fn detect_and_log() -> Tee {
    let probe = sev::probe();
    let tee = tee_of(&probe);
    let name = tee.name();
    match tee {
        Tee::SevSnp { c_bit, sev_status } => {
            let s = sev::summary();
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
                Some(_) if probe.es_active() => "no SEV-SNP; SEV-ES guest",
                Some(_) if probe.sev_active() => "no SEV-SNP; SEV guest",
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
pub fn current() -> Tee {
    *DETECTED.call_once(detect)
}
