//! The AMD SEV-ES/SNP guest's machine protocols, as pure code tested on the host (GHCB spec,
//! AMD pub. 56421; SNP firmware ABI, pub. 56860; APM vol. 2 and 3). The kernel's `arch::sev`
//! executes them with the real instructions; nothing here touches hardware.
//!
//! - [`ghcb_page`]: the GHCB page's save-area fields and the non-automatic exits the kernel
//!   makes through it (IOIO, MSR, CPUID, RDTSC(P), MMIO, page state change);
//! - [`vc`]: decoding the instruction behind a #VC exception;
//! - [`cpuid_page`]: the SNP CPUID page the firmware measured;
//! - [`snp_boot`]: OVMF's confidential-computing blob and unaccepted memory ranges.
//!
//! The GHCB itself, its MSR protocol and the SNP guest request are `node::attest::ghcb`,
//! where the attestation report they carry is verified too.
#![no_std]

extern crate alloc;

pub mod cpuid_page;
pub mod ghcb_page;
pub mod snp_boot;
pub mod vc;
