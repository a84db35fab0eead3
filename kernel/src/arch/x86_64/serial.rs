//! The 16550 UART console on COM1 (0x3f8): 115200 baud, 8N1, FIFOs on, polled (no IRQ).
//!
//! Register offsets (PC16550D datasheet, table II): 0 THR/RBR (DLL with DLAB), 1 IER (DLM with
//! DLAB), 2 FCR, 3 LCR, 4 MCR, 5 LSR (bit 5 = THR empty).

use super::port::Port;
use spin::Mutex;

/// The COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// How many LSR polls to wait for an empty transmitter before dropping a byte (a machine
/// without a UART must not hang the kernel).
const TX_SPIN_LIMIT: u32 = 1_000_000;

const LSR_THR_EMPTY: u8 = 1 << 5;

/// A 16550 at a base port.
pub struct Uart {
    data: Port<u8>,
    ier: Port<u8>,
    fcr: Port<u8>,
    lcr: Port<u8>,
    mcr: Port<u8>,
    lsr: Port<u8>,
}

impl Uart {
    /// # Safety
    /// `base..base + 8` must be a 16550's registers, driven by no one else concurrently
    /// (the emergency path in [`emergency_write`] is the one documented exception).
    pub const unsafe fn new(base: u16) -> Uart {
        // SAFETY: the caller owns the UART's eight ports.
        unsafe {
            Uart {
                data: Port::new(base),
                ier: Port::new(base + 1),
                fcr: Port::new(base + 2),
                lcr: Port::new(base + 3),
                mcr: Port::new(base + 4),
                lsr: Port::new(base + 5),
            }
        }
    }

    /// Programs 115200 8N1 with FIFOs enabled and interrupts off.
    pub fn init(&self) {
        self.ier.write(0x00);
        self.lcr.write(0x80); // DLAB: the next two writes set the divisor.
        self.data.write(0x01); // divisor 1 = 115200 baud
        self.ier.write(0x00);
        self.lcr.write(0x03); // 8 bits, no parity, 1 stop bit
        self.fcr.write(0xc7); // enable and clear FIFOs, 14-byte threshold
        self.mcr.write(0x0b); // DTR, RTS, OUT2
    }

    pub fn write_byte(&self, byte: u8) {
        for _ in 0..TX_SPIN_LIMIT {
            if self.lsr.read() & LSR_THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        self.data.write(byte);
    }

    /// Writes `s`, turning `\n` into `\r\n`.
    pub fn write_str(&self, s: &str) {
        for b in s.bytes() {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
    }
}

impl core::fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        Uart::write_str(self, s);
        Ok(())
    }
}

// SAFETY: COM1 is owned by this module; every normal access goes through the mutex.
static CONSOLE: Mutex<Uart> = Mutex::new(unsafe { Uart::new(COM1_PORT) });

/// Initialises COM1.
pub fn init() {
    CONSOLE.lock().init();
}

/// Writes to the console under its lock.
pub fn write_str(s: &str) {
    CONSOLE.lock().write_str(s);
}

/// Formats to the console under its lock.
pub fn write_fmt(args: core::fmt::Arguments<'_>) {
    let _ = core::fmt::Write::write_fmt(&mut *CONSOLE.lock(), args);
}

/// Formats to the console without taking its lock: for the panic and exception paths, which
/// may have interrupted a holder of the lock (one CPU, so the worst case is interleaved text).
pub fn emergency_write(args: core::fmt::Arguments<'_>) {
    // SAFETY: see above: a deliberate, documented second owner used only on the way down.
    let mut uart = unsafe { Uart::new(COM1_PORT) };
    let _ = core::fmt::Write::write_fmt(&mut uart, args);
}
