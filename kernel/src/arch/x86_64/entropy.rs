//! Hardware entropy: RDRAND (DRBG output) and RDSEED (conditioned seed), Intel DRNG guide
//! §5.2 (retry limits) and the known failure where some AMD parts return all-ones with
//! CF=1. A health check at boot rejects a source that fails, repeats, or returns a stuck
//! value; [`fill`] serves only from a source that passed.

use core::arch::asm;
use core::sync::atomic::{AtomicU8, Ordering};

/// Retries per RDRAND word (Intel recommends 10).
const RDRAND_RETRIES: usize = 10;
/// Retries per RDSEED word (it may legitimately run dry for a while).
const RDSEED_RETRIES: usize = 1000;
/// Samples drawn by the health check.
const HEALTH_SAMPLES: usize = 16;

const STATE_UNCHECKED: u8 = 0;
const STATE_HEALTHY: u8 = 1;
const STATE_FAILED: u8 = 2;
static RDRAND_STATE: AtomicU8 = AtomicU8::new(STATE_UNCHECKED);

/// Why entropy could not be produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntropyError {
    /// The CPU lacks the instruction.
    Unsupported,
    /// The instruction kept failing (CF=0) past its retry limit.
    Exhausted,
    /// The output looks stuck (repeats, all zeros or all ones).
    Unhealthy,
}

impl core::fmt::Display for EntropyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            EntropyError::Unsupported => "instruction not supported",
            EntropyError::Exhausted => "no output within the retry limit",
            EntropyError::Unhealthy => "output failed the health check",
        })
    }
}

fn rdrand_once() -> Option<u64> {
    let value: u64;
    let ok: u8;
    // SAFETY: RDRAND only writes the named register and CF; the caller checked CPUID.
    unsafe {
        asm!("rdrand {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok, options(nomem, nostack))
    };
    (ok != 0).then_some(value)
}

fn rdseed_once() -> Option<u64> {
    let value: u64;
    let ok: u8;
    // SAFETY: RDSEED only writes the named register and CF; the caller checked CPUID.
    unsafe {
        asm!("rdseed {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok, options(nomem, nostack))
    };
    (ok != 0).then_some(value)
}

/// One RDRAND word, with retries.
pub fn rdrand64() -> Result<u64, EntropyError> {
    if !super::cpu::features().rdrand {
        return Err(EntropyError::Unsupported);
    }
    (0..RDRAND_RETRIES)
        .find_map(|_| rdrand_once())
        .ok_or(EntropyError::Exhausted)
}

/// One RDSEED word, with retries.
pub fn rdseed64() -> Result<u64, EntropyError> {
    if !super::cpu::features().rdseed {
        return Err(EntropyError::Unsupported);
    }
    (0..RDSEED_RETRIES)
        .find_map(|_| {
            let v = rdseed_once();
            if v.is_none() {
                core::hint::spin_loop();
            }
            v
        })
        .ok_or(EntropyError::Exhausted)
}

/// Draws [`HEALTH_SAMPLES`] words from `source` and rejects stuck output.
pub fn health_check(source: fn() -> Result<u64, EntropyError>) -> Result<(), EntropyError> {
    let mut samples = [0u64; HEALTH_SAMPLES];
    for s in samples.iter_mut() {
        *s = source()?;
    }
    let stuck = samples.iter().any(|&s| s == 0 || s == u64::MAX);
    let repeats = samples.windows(2).any(|w| w[0] == w[1]);
    if stuck || repeats {
        return Err(EntropyError::Unhealthy);
    }
    Ok(())
}

/// Runs the boot health checks; returns (RDRAND, RDSEED) results.
pub fn init() -> (Result<(), EntropyError>, Result<(), EntropyError>) {
    let rdrand = health_check(rdrand64);
    let state = if rdrand.is_ok() {
        STATE_HEALTHY
    } else {
        STATE_FAILED
    };
    RDRAND_STATE.store(state, Ordering::SeqCst);
    (rdrand, health_check(rdseed64))
}

/// Fills `buf` from RDRAND, if it passed the health check.
pub fn fill(buf: &mut [u8]) -> Result<(), EntropyError> {
    if RDRAND_STATE.load(Ordering::SeqCst) != STATE_HEALTHY {
        return Err(EntropyError::Unhealthy);
    }
    let mut last = None;
    for chunk in buf.chunks_mut(8) {
        let word = rdrand64()?;
        // A repeated 64-bit word from a healthy DRBG is vanishingly unlikely: treat it as a
        // failure rather than hand out stuck output.
        if last == Some(word) {
            RDRAND_STATE.store(STATE_FAILED, Ordering::SeqCst);
            return Err(EntropyError::Unhealthy);
        }
        last = Some(word);
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
    Ok(())
}
