//! Leaving the machine: QEMU's isa-debug-exit (tests and benches), ACPI S5 soft-off.
//!
//! isa-debug-exit (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`) ends QEMU with status
//! `(value << 1) | 1`: [`EXIT_SUCCESS`] 0x10 → 33, [`EXIT_FAILURE`] 0x11 → 35 (the team's
//! convention, HELPERS.md). Without the device the write does nothing.

use super::{acpi, cpu, port::Port};

pub const ISA_DEBUG_EXIT_PORT: u16 = 0xf4;
pub const EXIT_SUCCESS: u32 = 0x10;
pub const EXIT_FAILURE: u32 = 0x11;

/// Asks QEMU to exit with `(code << 1) | 1`; returns if the device is absent.
pub fn qemu_exit(code: u32) {
    // SAFETY: port 0xf4 is QEMU's isa-debug-exit; on machines without it the write is ignored.
    let port = unsafe { Port::<u32>::new(ISA_DEBUG_EXIT_PORT) };
    port.write(code);
}

/// Reports failure to a test harness (if any) and stops the CPU.
pub fn fail_and_halt() -> ! {
    qemu_exit(EXIT_FAILURE);
    cpu::halt_forever()
}

/// Powers off: ACPI S5 when the tables describe it, else isa-debug-exit with success, else
/// halts.
pub fn power_off() -> ! {
    if let Err(e) = acpi::enter_s5() {
        log::warn!("acpi: S5 unavailable ({e}); using isa-debug-exit");
    }
    qemu_exit(EXIT_SUCCESS);
    cpu::halt_forever()
}
