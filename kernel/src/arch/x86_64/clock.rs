//! The monotonic clock: the TSC, calibrated at boot against PIT channel 2 (Intel 8254 data
//! sheet; the PC wiring of channel 2's gate and output to port 0x61 bits 0 and 5), with
//! CPUID leaf 0x15 as the fallback when the PIT gives no answer.
//!
//! Guarantees: [`now_ns`] is nanoseconds since [`init`] and never goes backwards (the last
//! value returned is kept, so a TSC that steps back reads as a pause, never as reversal).

use super::cpu;
use super::port::Port;
use core::sync::atomic::{AtomicU64, Ordering};

/// The PIT input clock.
pub const PIT_HZ: u64 = 1_193_182;
/// One calibration interval: 15 ms of PIT ticks (fits the 16-bit counter). The polling
/// error is a few port reads (~µs), far below 0.1% of this.
const CALIBRATION_TICKS: u16 = 17_898;
/// Calibration intervals measured; the median is used (a host preemption spoils one).
const CALIBRATION_RUNS: usize = 3;
/// TSC cycles after which a PIT countdown is declared dead (about 10 s at 10 GHz).
const PIT_TIMEOUT_CYCLES: u64 = 100_000_000_000;
const NS_PER_S: u128 = 1_000_000_000;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_AT_INIT: AtomicU64 = AtomicU64::new(0);
static LAST_NS: AtomicU64 = AtomicU64::new(0);
/// The TSC at kernel entry, for "boot to ready".
static TSC_AT_ENTRY: AtomicU64 = AtomicU64::new(0);

/// Where the TSC frequency came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockSource {
    /// Measured against PIT channel 2.
    Pit,
    /// Reported by CPUID leaf 0x15.
    Cpuid15,
}

/// Why the clock could not be calibrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockError {
    /// The PIT never counted down and CPUID gives no TSC frequency.
    NoReference,
}

impl core::fmt::Display for ClockError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("no PIT and no CPUID 0x15 TSC frequency: cannot calibrate the TSC")
    }
}

/// Records the TSC at kernel entry (call first thing).
pub fn mark_entry() {
    TSC_AT_ENTRY.store(cpu::rdtsc(), Ordering::Relaxed);
}

/// Nanoseconds from kernel entry to now (valid after [`init`]).
pub fn ns_since_entry() -> u64 {
    cycles_to_ns(cpu::rdtsc().saturating_sub(TSC_AT_ENTRY.load(Ordering::Relaxed)))
}

/// Calibrates the TSC; returns its frequency in Hz and the source.
pub fn init() -> Result<(u64, ClockSource), ClockError> {
    let (hz, source) = match calibrate_with_pit() {
        Some(hz) => (hz, ClockSource::Pit),
        None => (
            cpu::features()
                .tsc_hz_cpuid
                .ok_or(ClockError::NoReference)?,
            ClockSource::Cpuid15,
        ),
    };
    TSC_HZ.store(hz, Ordering::SeqCst);
    TSC_AT_INIT.store(cpu::rdtsc(), Ordering::SeqCst);
    Ok((hz, source))
}

/// The calibrated TSC frequency in Hz (0 before [`init`]).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

fn cycles_to_ns(cycles: u64) -> u64 {
    match tsc_hz() {
        0 => 0,
        hz => (u128::from(cycles) * NS_PER_S / u128::from(hz)) as u64,
    }
}

/// Monotonic nanoseconds since [`init`].
pub fn now_ns() -> u64 {
    let raw = cycles_to_ns(cpu::rdtsc().saturating_sub(TSC_AT_INIT.load(Ordering::Relaxed)));
    let last = LAST_NS.fetch_max(raw, Ordering::SeqCst);
    raw.max(last)
}

/// Busy-waits `ns` nanoseconds.
pub fn spin_ns(ns: u64) {
    let until = now_ns().saturating_add(ns);
    while now_ns() < until {
        core::hint::spin_loop();
    }
}

fn calibrate_with_pit() -> Option<u64> {
    let mut runs = [0u64; CALIBRATION_RUNS];
    for run in runs.iter_mut() {
        *run = pit_countdown_cycles(CALIBRATION_TICKS)?;
    }
    runs.sort_unstable();
    let cycles = runs[CALIBRATION_RUNS / 2];
    Some(cycles * PIT_HZ / u64::from(CALIBRATION_TICKS))
}

/// Counts TSC cycles while PIT channel 2 counts `ticks` down in mode 0 (interrupt on
/// terminal count: OUT2, read at port 0x61 bit 5, rises when the count reaches zero).
pub fn pit_countdown_cycles(ticks: u16) -> Option<u64> {
    // SAFETY: ports 0x42/0x43 (PIT channel 2, mode register) and 0x61 (gate/speaker) are
    // used only by this calibration, with interrupts masked.
    let (ch2, mode, gate) = unsafe {
        (
            Port::<u8>::new(0x42),
            Port::<u8>::new(0x43),
            Port::<u8>::new(0x61),
        )
    };
    // Gate high, speaker off; channel 2, lobyte/hibyte, mode 0, binary.
    gate.write((gate.read() & !0x02) | 0x01);
    mode.write(0b1011_0000);
    ch2.write(ticks as u8);
    ch2.write((ticks >> 8) as u8);
    let start = cpu::rdtsc();
    loop {
        let now = cpu::rdtsc();
        if gate.read() & 0x20 != 0 {
            return Some(now - start);
        }
        if now - start > PIT_TIMEOUT_CYCLES {
            return None;
        }
    }
}

/// Measures a PIT-timed interval of `ticks` with the calibrated clock: returns
/// (the interval by the PIT in ns, the interval by `now_ns` in ns).
pub fn cross_check_with_pit(ticks: u16) -> Option<(u64, u64)> {
    let t0 = now_ns();
    pit_countdown_cycles(ticks)?;
    let t1 = now_ns();
    let pit_ns = (u128::from(ticks) * NS_PER_S / u128::from(PIT_HZ)) as u64;
    Some((pit_ns, t1 - t0))
}
