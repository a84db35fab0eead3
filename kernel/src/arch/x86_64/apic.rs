//! The local APIC timer, used only to wake the CPU from `hlt` while the kernel idles
//! (Intel SDM vol. 3A §11.5.4). Device interrupts stay masked: the runtime polls, and the
//! timer bounds how long an idle CPU sleeps before it polls again.
//!
//! Registers are reached by MMIO (xAPIC, base from IA32_APIC_BASE) or by MSR 0x800 + reg/16
//! when the firmware left the APIC in x2APIC mode. Under SEV-ES/SNP both go through the GHCB
//! (MMIO read/write exits; `cpu::rdmsr`/`wrmsr` route MSRs there), and the timer vector
//! takes the full exception path, whose handler ([`timer_tick`]) acknowledges the same way.

use super::{clock, cpu};
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

pub const TIMER_VECTOR: u8 = 0x30;
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// The wake-up period while idle.
pub const IDLE_TICK_US: u64 = 1_000;
/// How long the timer is calibrated against the TSC clock.
const CALIBRATION_NS: u64 = 10_000_000;

const IA32_APIC_BASE_MSR: u32 = 0x1b;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const REG_EOI: u32 = 0xb0;
const REG_SPURIOUS: u32 = 0xf0;
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3e0;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
const DIVIDE_BY_16: u32 = 0b0011;

/// The address the timer stub writes to acknowledge (EOI); 0 in x2APIC mode, where the
/// stub uses the EOI MSR.
#[unsafe(no_mangle)]
static CAIRN_LAPIC_EOI_ADDR: AtomicU64 = AtomicU64::new(0);
/// Timer interrupts taken.
#[unsafe(no_mangle)]
static CAIRN_TIMER_TICKS: AtomicU64 = AtomicU64::new(0);

/// Why the timer is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicError {
    /// The timer did not count during calibration.
    TimerDead,
}

impl core::fmt::Display for ApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("local APIC timer did not count")
    }
}

#[derive(Clone, Copy)]
enum Access {
    Mmio(u64),
    X2apic,
}

impl Access {
    fn read(self, reg: u32) -> u32 {
        match self {
            Access::Mmio(base) if super::sev::use_ghcb() => {
                super::sev::mmio_read32(base + u64::from(reg))
            }
            // SAFETY: the xAPIC page is identity-mapped uncached (low 4 GiB, not RAM).
            Access::Mmio(base) => unsafe {
                core::ptr::read_volatile((base + u64::from(reg)) as *const u32)
            },
            // SAFETY: x2APIC mode is on, so MSR 0x800 + reg/16 exists.
            Access::X2apic => unsafe { cpu::rdmsr(0x800 + (reg >> 4)) as u32 },
        }
    }

    fn write(self, reg: u32, value: u32) {
        match self {
            Access::Mmio(base) if super::sev::use_ghcb() => {
                super::sev::mmio_write32(base + u64::from(reg), value)
            }
            // SAFETY: as in `read`.
            Access::Mmio(base) => unsafe {
                core::ptr::write_volatile((base + u64::from(reg)) as *mut u32, value)
            },
            // SAFETY: as in `read`.
            Access::X2apic => unsafe { cpu::wrmsr(0x800 + (reg >> 4), u64::from(value)) },
        }
    }
}

/// Enables the local APIC and starts a periodic [`IDLE_TICK_US`] timer on [`TIMER_VECTOR`].
/// Interrupts stay masked (IF = 0) except inside [`idle`]. Returns the timer's Hz.
pub fn init() -> Result<u64, ApicError> {
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
    let base_msr = unsafe { cpu::rdmsr(IA32_APIC_BASE_MSR) };
    let access = if base_msr & APIC_BASE_X2APIC != 0 {
        Access::X2apic
    } else {
        // SAFETY: setting the global enable bit keeps the base; the APIC is ours.
        unsafe { cpu::wrmsr(IA32_APIC_BASE_MSR, base_msr | APIC_BASE_ENABLE) };
        let base = base_msr & 0x000f_ffff_ffff_f000;
        CAIRN_LAPIC_EOI_ADDR.store(base + u64::from(REG_EOI), Ordering::SeqCst);
        Access::Mmio(base)
    };
    access.write(REG_SPURIOUS, 0x100 | u32::from(SPURIOUS_VECTOR));
    access.write(REG_TIMER_DIVIDE, DIVIDE_BY_16);
    access.write(REG_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    access.write(REG_TIMER_INITIAL, u32::MAX);
    clock::spin_ns(CALIBRATION_NS);
    let counted = u64::from(u32::MAX - access.read(REG_TIMER_CURRENT));
    if counted == 0 {
        return Err(ApicError::TimerDead);
    }
    let hz = counted * 1_000_000_000 / CALIBRATION_NS;
    let period = (hz * IDLE_TICK_US / 1_000_000).clamp(1, u64::from(u32::MAX)) as u32;
    access.write(REG_LVT_TIMER, LVT_PERIODIC | u32::from(TIMER_VECTOR));
    access.write(REG_TIMER_INITIAL, period);
    Ok(hz)
}

/// Sleeps until the next interrupt (the idle timer at the latest). `sti; hlt` is atomic: STI
/// takes effect after the next instruction, so no interrupt slips in before HLT.
pub fn idle() {
    // SAFETY: the only unmasked interrupt sources are the timer and spurious vectors, whose
    // stubs acknowledge and return on an IST stack without touching this context.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// The timer interrupt through the full exception path (SEV-ES/SNP only, see `idt::init`):
/// counts it and acknowledges it (EOI) through the same register access as [`init`] chose.
pub fn timer_tick() {
    CAIRN_TIMER_TICKS.fetch_add(1, Ordering::Relaxed);
    let eoi = CAIRN_LAPIC_EOI_ADDR.load(Ordering::SeqCst);
    let access = if eoi == 0 {
        Access::X2apic
    } else {
        Access::Mmio(eoi - u64::from(REG_EOI))
    };
    access.write(REG_EOI, 0);
}

/// Timer interrupts taken so far.
pub fn ticks() -> u64 {
    CAIRN_TIMER_TICKS.load(Ordering::Relaxed)
}
