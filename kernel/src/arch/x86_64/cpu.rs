//! CPU registers and identification.

use alloc::string::String;
use core::arch::asm;
use core::fmt::Write;
use raw_cpuid::CpuId;

/// The time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC reads a counter; CR4.TSD is clear so it is allowed at CPL 0 anyway.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The faulting linear address of the last page fault.
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// The physical address of the active PML4 (with its flag bits).
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Switches to the page tables rooted at `pml4_paddr`.
///
/// # Safety
/// The new tables must map everything the kernel uses (code, stacks, data) as before.
pub unsafe fn write_cr3(pml4_paddr: u64) {
    // SAFETY: the caller guarantees the new tables are a superset of what is in use.
    unsafe { asm!("mov cr3, {}", in(reg) pml4_paddr, options(nostack, preserves_flags)) };
}

/// Drops the TLB entry for the page holding `vaddr`.
pub fn invlpg(vaddr: u64) {
    // SAFETY: invalidating a TLB entry only makes the next access walk the tables again.
    unsafe { asm!("invlpg [{}]", in(reg) vaddr, options(nostack, preserves_flags)) };
}

/// Masks maskable interrupts.
pub fn disable_interrupts() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Halts until the next interrupt (forever when interrupts are masked).
pub fn halt() {
    // SAFETY: HLT only waits.
    unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    disable_interrupts();
    loop {
        halt();
    }
}

/// Raises a breakpoint exception (#BP, vector 3); the handler counts it and resumes.
pub fn breakpoint() {
    // SAFETY: the IDT's #BP handler resumes after the INT3 with all registers restored.
    unsafe { asm!("int3", options(nomem, nostack)) };
}

/// Reads a model-specific register (through the GHCB under SEV-ES/SNP, where RDMSR of an
/// intercepted MSR would raise #VC).
///
/// # Safety
/// `msr` must exist on this CPU (else #GP) and reading it must have no side effects.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    if super::sev::use_ghcb() && !super::sev::msr_is_native(msr) {
        return super::sev::rdmsr(msr);
    }
    let (lo, hi): (u32, u32);
    // SAFETY: the caller checked the MSR exists.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// `msr` must exist and the write must keep the machine in a state the kernel expects.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    if super::sev::use_ghcb() && !super::sev::msr_is_native(msr) {
        return super::sev::wrmsr(msr, value);
    }
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    };
}

/// What the kernel needs to know about the CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuFeatures {
    pub rdrand: bool,
    pub rdseed: bool,
    pub invariant_tsc: bool,
    pub page_1g: bool,
    /// CPUID leaf 0x15: TSC frequency in Hz when the CPU reports both ratio and crystal.
    pub tsc_hz_cpuid: Option<u64>,
}

/// Reads the features the kernel uses.
pub fn features() -> CpuFeatures {
    let id = CpuId::new();
    let f = id.get_feature_info();
    let e = id.get_extended_feature_info();
    let p = id.get_extended_processor_and_feature_identifiers();
    let tsc_hz_cpuid = id
        .get_tsc_info()
        .and_then(|t| t.tsc_frequency())
        .filter(|&hz| hz > 0);
    CpuFeatures {
        rdrand: f.as_ref().is_some_and(|f| f.has_rdrand()),
        rdseed: e.as_ref().is_some_and(|e| e.has_rdseed()),
        invariant_tsc: id
            .get_advanced_power_mgmt_info()
            .is_some_and(|a| a.has_invariant_tsc()),
        page_1g: p.as_ref().is_some_and(|p| p.has_1gib_pages()),
        tsc_hz_cpuid,
    }
}

/// "vendor brand (family f model m stepping s)" for the banner.
pub fn model() -> String {
    let id = CpuId::new();
    let mut s = String::new();
    let vendor = id.get_vendor_info();
    let brand = id.get_processor_brand_string();
    let _ = write!(
        s,
        "{} {}",
        vendor.as_ref().map_or("unknown", |v| v.as_str()),
        brand.as_ref().map_or("", |b| b.as_str().trim())
    );
    if let Some(f) = id.get_feature_info() {
        let _ = write!(
            s,
            " (family {:#x} model {:#x} stepping {})",
            f.family_id(),
            f.model_id(),
            f.stepping_id()
        );
    }
    s
}

/// A space-separated list of notable features, for the banner.
pub fn feature_list() -> String {
    let id = CpuId::new();
    let mut names: alloc::vec::Vec<&str> = alloc::vec::Vec::new();
    if let Some(f) = id.get_feature_info() {
        let flags = [
            (f.has_sse2(), "sse2"),
            (f.has_sse3(), "sse3"),
            (f.has_ssse3(), "ssse3"),
            (f.has_sse41(), "sse4.1"),
            (f.has_sse42(), "sse4.2"),
            (f.has_popcnt(), "popcnt"),
            (f.has_aesni(), "aes"),
            (f.has_pclmulqdq(), "pclmulqdq"),
            (f.has_avx(), "avx"),
            (f.has_rdrand(), "rdrand"),
            (f.has_x2apic(), "x2apic"),
            (f.has_hypervisor(), "hypervisor"),
        ];
        names.extend(flags.iter().filter(|(on, _)| *on).map(|(_, n)| *n));
    }
    if let Some(e) = id.get_extended_feature_info() {
        let flags = [
            (e.has_avx2(), "avx2"),
            (e.has_bmi1(), "bmi1"),
            (e.has_bmi2(), "bmi2"),
            (e.has_adx(), "adx"),
            (e.has_sha(), "sha"),
            (e.has_rdseed(), "rdseed"),
            (e.has_avx512f(), "avx512f"),
        ];
        names.extend(flags.iter().filter(|(on, _)| *on).map(|(_, n)| *n));
    }
    let cpu = features();
    if cpu.page_1g {
        names.push("pdpe1gb");
    }
    if cpu.invariant_tsc {
        names.push("invtsc");
    }
    names.join(" ")
}
