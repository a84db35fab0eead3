//! The monotonic clock: the TSC, calibrated at boot against PIT channel 2 (Intel 8254 data
//! sheet: counter latch command, mode 0; the PC wiring of channel 2's gate to port 0x61
//! bit 0), with CPUID leaf 0x15 as the fallback when the PIT gives no answer.
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
/// The longest interval [`measure_pit_interval`] measures, about 50 ms: well inside the
/// 55 ms before the counter, started at 0xFFFF, passes zero.
pub const MAX_INTERVAL_TICKS: u16 = 60_000;
/// PIT reads per end of an interval; the narrowest bracket is used.
const SAMPLE_TRIES: usize = 5;
/// Attempts at an interval with tight brackets (each ≤ 1/1000 of the interval).
const INTERVAL_TRIES: usize = 40;
/// When no attempt is tight (a host so loaded that every port read waits), the attempt with
/// the narrowest brackets is used if they are within 1/`LOOSE_BRACKET_DIVISOR` of the
/// interval (2%): a slightly rough clock beats a node that cannot boot.
const LOOSE_BRACKET_DIVISOR: u64 = 50;
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
        let (cycles, ticks) = measure_pit_interval(CALIBRATION_TICKS)?;
        *run = cycles * PIT_HZ / ticks;
    }
    runs.sort_unstable();
    Some(runs[CALIBRATION_RUNS / 2])
}

/// PIT channel 2 and its gate, driven only by the calibration code (interrupts masked).
struct Pit {
    counter: Port<u8>,
    mode: Port<u8>,
    gate: Port<u8>,
}

/// One reading of the PIT counter bracketed by two TSC reads.
#[derive(Clone, Copy)]
struct PitSample {
    /// The TSC half-way through the bracket.
    tsc: u64,
    count: u16,
    /// The bracket's width in cycles: the timing uncertainty of this sample.
    width: u64,
}

impl Pit {
    fn new() -> Pit {
        // SAFETY: ports 0x42/0x43 (PIT channel 2, mode register) and 0x61 (gate/speaker) are
        // used only by the clock code, with interrupts masked.
        unsafe {
            Pit {
                counter: Port::new(0x42),
                mode: Port::new(0x43),
                gate: Port::new(0x61),
            }
        }
    }

    /// Starts channel 2 counting down from 0xFFFF (mode 0, lobyte/hibyte, binary).
    fn start(&self) {
        self.gate.write((self.gate.read() & !0x02) | 0x01); // gate high, speaker off
        self.mode.write(0b1011_0000);
        self.counter.write(0xff);
        self.counter.write(0xff);
    }

    /// OUT2 (port 0x61 bit 5): high once the count passed zero since [`Pit::start`].
    fn reached_zero(&self) -> bool {
        self.gate.read() & 0x20 != 0
    }

    fn read_count(&self) -> u16 {
        self.mode.write(0b1000_0000); // latch channel 2
        let lo = self.counter.read();
        let hi = self.counter.read();
        u16::from_le_bytes([lo, hi])
    }

    fn sample(&self) -> PitSample {
        let t0 = cpu::rdtsc();
        let count = self.read_count();
        let t1 = cpu::rdtsc();
        PitSample {
            tsc: t0 + (t1 - t0) / 2,
            count,
            width: t1 - t0,
        }
    }

    /// The narrowest of a few samples: a vCPU preempted mid-read gives a wide bracket.
    fn narrow_sample(&self) -> PitSample {
        let mut best = self.sample();
        for _ in 1..SAMPLE_TRIES {
            let s = self.sample();
            if s.width < best.width {
                best = s;
            }
        }
        best
    }
}

/// Measures at least `ticks` PIT ticks against the TSC: returns (TSC cycles, PIT ticks).
///
/// The PIT counter is read (latched) at both ends, each read bracketed by TSC reads, so a
/// host preemption between programming the PIT and the first read costs nothing (under QEMU
/// TCG a port access can wait milliseconds for the device lock). An interval is retried when
/// a bracket exceeds 1/1000 of it, or when the counter may have wrapped (OUT2 high).
pub fn measure_pit_interval(ticks: u16) -> Option<(u64, u64)> {
    let ticks = ticks.min(MAX_INTERVAL_TICKS);
    let pit = Pit::new();
    // (bracket width, cycles, ticks) of the best complete attempt that was not tight.
    let mut loose: Option<(u64, u64, u64)> = None;
    for _ in 0..INTERVAL_TRIES {
        pit.start();
        let first = pit.narrow_sample();
        loop {
            let count = pit.read_count();
            if count > first.count || first.count - count >= ticks {
                break;
            }
            if cpu::rdtsc() - first.tsc > PIT_TIMEOUT_CYCLES {
                return None;
            }
        }
        let last = pit.narrow_sample();
        // OUT2 rises when the counter passes zero (mode 0) and stays high: if it is high, the
        // 16-bit counter may have wrapped during a host preemption and the count is ambiguous.
        if pit.reached_zero() || last.count > first.count {
            continue;
        }
        let cycles = last.tsc - first.tsc;
        let elapsed_ticks = u64::from(first.count - last.count);
        if elapsed_ticks < u64::from(ticks) {
            continue;
        }
        let width = first.width.max(last.width);
        if width * 1000 < cycles {
            return Some((cycles, elapsed_ticks));
        }
        // Compare relative widths: width/cycles < best_width/best_cycles.
        let better = loose.is_none_or(|(w, c, _)| {
            u128::from(width) * u128::from(c) < u128::from(w) * u128::from(cycles)
        });
        if better {
            loose = Some((width, cycles, elapsed_ticks));
        }
    }
    let (width, cycles, elapsed_ticks) = loose?;
    (width * LOOSE_BRACKET_DIVISOR < cycles).then_some((cycles, elapsed_ticks))
}

/// Measures a PIT-timed interval of at least `ticks` with the calibrated clock: returns
/// (the interval by the PIT in ns, the same interval by the TSC clock in ns).
pub fn cross_check_with_pit(ticks: u16) -> Option<(u64, u64)> {
    let (cycles, pit_ticks) = measure_pit_interval(ticks)?;
    let pit_ns = (u128::from(pit_ticks) * NS_PER_S / u128::from(PIT_HZ)) as u64;
    Some((pit_ns, cycles_to_ns(cycles)))
}
