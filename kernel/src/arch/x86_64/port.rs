//! x86 port I/O.
//!
//! A [`Port`] is created with `unsafe` (the creator asserts the port belongs to the device it
//! drives and that accesses have no memory-safety effect); reads and writes are then safe.
//! Under SEV-ES/SNP, IN/OUT would raise #VC: they go through the GHCB instead
//! (`sev::io_in`/`io_out`, the IOIO exit).

use core::arch::asm;
use core::marker::PhantomData;

use super::sev;
use ::sev::ghcb_page::IoSize;

/// A value that can be moved through an I/O port.
pub trait PortValue: Copy {
    /// # Safety
    /// The port must be owned by the caller's device (see [`Port::new`]).
    unsafe fn read_from(port: u16) -> Self;
    /// # Safety
    /// The port must be owned by the caller's device (see [`Port::new`]).
    unsafe fn write_to(port: u16, value: Self);
}

impl PortValue for u8 {
    unsafe fn read_from(port: u16) -> u8 {
        if sev::use_ghcb() {
            return sev::io_in(port, IoSize::Byte) as u8;
        }
        let v: u8;
        // SAFETY: the caller owns the port; `in` has no memory effects.
        unsafe {
            asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
        };
        v
    }
    unsafe fn write_to(port: u16, value: u8) {
        if sev::use_ghcb() {
            return sev::io_out(port, IoSize::Byte, u64::from(value));
        }
        // SAFETY: the caller owns the port; `out` has no memory effects.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
        };
    }
}

impl PortValue for u16 {
    unsafe fn read_from(port: u16) -> u16 {
        if sev::use_ghcb() {
            return sev::io_in(port, IoSize::Word) as u16;
        }
        let v: u16;
        // SAFETY: as for u8.
        unsafe {
            asm!("in ax, dx", out("ax") v, in("dx") port, options(nomem, nostack, preserves_flags))
        };
        v
    }
    unsafe fn write_to(port: u16, value: u16) {
        if sev::use_ghcb() {
            return sev::io_out(port, IoSize::Word, u64::from(value));
        }
        // SAFETY: as for u8.
        unsafe {
            asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
        };
    }
}

impl PortValue for u32 {
    unsafe fn read_from(port: u16) -> u32 {
        if sev::use_ghcb() {
            return sev::io_in(port, IoSize::Dword) as u32;
        }
        let v: u32;
        // SAFETY: as for u8.
        unsafe {
            asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags))
        };
        v
    }
    unsafe fn write_to(port: u16, value: u32) {
        if sev::use_ghcb() {
            return sev::io_out(port, IoSize::Dword, u64::from(value));
        }
        // SAFETY: as for u8.
        unsafe {
            asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
        };
    }
}

/// One I/O port carrying values of type `T`.
#[derive(Debug, Clone, Copy)]
pub struct Port<T: PortValue> {
    port: u16,
    _value: PhantomData<T>,
}

impl<T: PortValue> Port<T> {
    /// # Safety
    /// `port` must belong to a device the caller drives, and accesses to it must not change
    /// memory the compiler can see (no legacy DMA set-up through it).
    pub const unsafe fn new(port: u16) -> Port<T> {
        Port {
            port,
            _value: PhantomData,
        }
    }

    pub fn read(&self) -> T {
        // SAFETY: ownership of the port was asserted in `new`.
        unsafe { T::read_from(self.port) }
    }

    pub fn write(&self, value: T) {
        // SAFETY: ownership of the port was asserted in `new`.
        unsafe { T::write_to(self.port, value) }
    }
}
