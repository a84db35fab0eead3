//! x86_64 (PC platform) support: the only place that touches the machine directly.

pub mod acpi;
pub mod apic;
pub mod clock;
pub mod cpu;
pub mod entropy;
pub mod fw_cfg;
mod gdt;
pub mod idt;
mod mem;
pub mod memory;
pub mod paging;
pub mod pci;
mod port;
pub mod power;
pub mod rtc;
pub mod serial;
pub mod sev;

use port::Port;

/// Masks both legacy 8259 PICs: the kernel polls, and a stray timer IRQ 0 would otherwise
/// arrive on vector 8 (#DF) in the BIOS's default mapping.
fn mask_legacy_pic() {
    // SAFETY: 0x21 and 0xa1 are the PIC data (mask) ports; masking all lines is harmless.
    let (master, slave) = unsafe { (Port::<u8>::new(0x21), Port::<u8>::new(0xa1)) };
    master.write(0xff);
    slave.write(0xff);
}

/// Early CPU set-up: interrupts masked, descriptor tables and exception handlers loaded.
/// Runs before the heap exists.
pub fn init_cpu() {
    cpu::disable_interrupts();
    mask_legacy_pic();
    gdt::init();
    idt::init();
}
