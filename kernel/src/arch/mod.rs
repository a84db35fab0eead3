//! The one seam between the kernel and the machine (STYLE.md "One seam for the machine").
//!
//! Everything that touches registers, port I/O, MSRs, descriptor tables or page tables lives
//! in the active architecture's module; the rest of the kernel calls `arch::…` only.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;
