//! How a QEMU process ended, and what that means for a test.
//!
//! The map is explicit (STYLE.md, after Hermit's xtask): `isa-debug-exit` turns a guest write of
//! `v` into the QEMU exit status `(v << 1) | 1`, so the guest's two codes come back as odd
//! numbers, and status 0 is left for a normal shutdown. cairn's kernel writes
//! [`GUEST_EXIT_SUCCESS`] when its tests pass and [`GUEST_EXIT_FAILURE`] when anything failed.

use std::fmt;
use std::process::ExitStatus;

/// The value cairn's kernel writes to `isa-debug-exit` on success.
pub const GUEST_EXIT_SUCCESS: u32 = 0x10;
/// The value cairn's kernel writes to `isa-debug-exit` on failure.
pub const GUEST_EXIT_FAILURE: u32 = 0x11;
/// QEMU's exit status after the guest wrote [`GUEST_EXIT_SUCCESS`].
pub const QEMU_EXIT_PASS: i32 = debug_exit_status(GUEST_EXIT_SUCCESS);
/// QEMU's exit status after the guest wrote [`GUEST_EXIT_FAILURE`].
pub const QEMU_EXIT_FAIL: i32 = debug_exit_status(GUEST_EXIT_FAILURE);

const _: () = assert!(QEMU_EXIT_PASS == 33 && QEMU_EXIT_FAIL == 35);

/// The QEMU exit status that follows a guest write of `value` to `isa-debug-exit`.
pub const fn debug_exit_status(value: u32) -> i32 {
    ((value << 1) | 1) as i32
}

/// What a QEMU exit means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitOutcome {
    /// Exit 33: the guest reported success through `isa-debug-exit`.
    Pass,
    /// Exit 35: the guest reported failure through `isa-debug-exit`.
    Fail,
    /// Exit 0: the guest powered off (ACPI S5) — or, with `-no-reboot`, reset itself (a triple
    /// fault looks the same). Only a test that expects a power-off may count this as success.
    PowerOff,
    /// Any other exit status: a different `isa-debug-exit` value, or QEMU itself failed (1).
    Unexpected(i32),
    /// QEMU was killed by a signal (by the timeout, by Ctrl-C, or from outside).
    Signal(i32),
}

impl ExitOutcome {
    /// Classify a finished QEMU process.
    pub fn from_status(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::from_code(code),
            (None, Some(signal)) => ExitOutcome::Signal(signal),
            (None, None) => ExitOutcome::Unexpected(-1),
        }
    }

    /// Classify a QEMU exit status.
    pub fn from_code(code: i32) -> Self {
        match code {
            QEMU_EXIT_PASS => ExitOutcome::Pass,
            QEMU_EXIT_FAIL => ExitOutcome::Fail,
            0 => ExitOutcome::PowerOff,
            other => ExitOutcome::Unexpected(other),
        }
    }
}

impl fmt::Display for ExitOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitOutcome::Pass => write!(f, "exit {QEMU_EXIT_PASS} (guest reported pass)"),
            ExitOutcome::Fail => write!(f, "exit {QEMU_EXIT_FAIL} (guest reported failure)"),
            ExitOutcome::PowerOff => write!(f, "exit 0 (guest powered off or reset)"),
            ExitOutcome::Unexpected(code) if code & 1 == 1 && *code > 1 => write!(
                f,
                "exit {code} (unexpected isa-debug-exit value {:#x})",
                code >> 1
            ),
            ExitOutcome::Unexpected(code) => write!(f, "exit {code} (QEMU error)"),
            ExitOutcome::Signal(signal) => write!(f, "killed by signal {signal}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn code_map() {
        assert_eq!(ExitOutcome::from_code(33), ExitOutcome::Pass);
        assert_eq!(ExitOutcome::from_code(35), ExitOutcome::Fail);
        assert_eq!(ExitOutcome::from_code(0), ExitOutcome::PowerOff);
        assert_eq!(ExitOutcome::from_code(1), ExitOutcome::Unexpected(1));
        assert_eq!(ExitOutcome::from_code(3), ExitOutcome::Unexpected(3));
        assert_eq!(debug_exit_status(0x10), 33);
        assert_eq!(debug_exit_status(0x11), 35);
    }

    #[test]
    fn from_wait_status() {
        // A raw wait status: exit code in bits 8..16, terminating signal in bits 0..7.
        assert_eq!(
            ExitOutcome::from_status(ExitStatus::from_raw(33 << 8)),
            ExitOutcome::Pass
        );
        assert_eq!(
            ExitOutcome::from_status(ExitStatus::from_raw(9)),
            ExitOutcome::Signal(9)
        );
    }

    #[test]
    fn display_names_the_debug_exit_value() {
        assert_eq!(
            ExitOutcome::Unexpected(5).to_string(),
            "exit 5 (unexpected isa-debug-exit value 0x2)"
        );
        assert_eq!(
            ExitOutcome::Unexpected(1).to_string(),
            "exit 1 (QEMU error)"
        );
    }
}
