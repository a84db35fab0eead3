//! PCI configuration space access (PCI Local Bus 3.0 §3.2.2.3.2 "configuration mechanism #1"
//! on ports 0xCF8/0xCFC; PCI Express base 5.0 §7.2.2 ECAM when the ACPI MCFG lists a window)
//! and bus enumeration from bus 0 through PCI-to-PCI bridges.
//!
//! The firmware (SeaBIOS, OVMF) has assigned BARs by the time the kernel runs; the kernel does
//! not reassign them. ECAM windows lie below 4 GiB on the PC platforms QEMU models and are
//! identity-mapped uncached (`paging::map_mmio`) before use.

use super::{paging, port::Port};
use alloc::vec::Vec;
use virtio_drivers::transport::pci::bus::{
    Command, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, HeaderType, PciRoot,
};

const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
const CONFIG_DATA_PORT: u16 = 0xcfc;
/// Config-space offset of the bridge bus numbers (primary, secondary, subordinate).
const BRIDGE_BUS_NUMBERS_OFFSET: u8 = 0x18;
/// The most buses visited (a bridge loop in broken firmware must not hang the scan).
const MAX_BUSES_SCANNED: usize = 256;
const ECAM_BYTES_PER_BUS: u64 = 1 << 20;

/// How configuration space is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciCam {
    /// Ports 0xCF8/0xCFC (256 bytes per function).
    Ports,
    /// Memory-mapped ECAM at `base` for buses starting at `bus_start` (4 KiB per function).
    Ecam {
        base: u64,
        bus_start: u8,
        bus_end: u8,
    },
}

impl PciCam {
    /// ECAM when the ACPI MCFG describes segment 0, else the legacy ports.
    pub fn detect() -> PciCam {
        let window = super::acpi::get()
            .map(|a| a.ecam_windows())
            .unwrap_or_default()
            .into_iter()
            .find(|w| w.segment == 0);
        let Some(w) = window else {
            return PciCam::Ports;
        };
        let buses = u64::from(w.bus_end - w.bus_start) + 1;
        match paging::map_mmio(w.base, buses * ECAM_BYTES_PER_BUS) {
            Ok(()) => PciCam::Ecam {
                base: w.base,
                bus_start: w.bus_start,
                bus_end: w.bus_end,
            },
            Err(e) => {
                log::warn!("pci: ECAM at {:#x} not mappable ({e}); using ports", w.base);
                PciCam::Ports
            }
        }
    }

    fn ecam_address(&self, df: DeviceFunction, offset: u8) -> Option<u64> {
        let PciCam::Ecam {
            base,
            bus_start,
            bus_end,
        } = *self
        else {
            return None;
        };
        if df.bus < bus_start || df.bus > bus_end {
            return None;
        }
        let bdf = (u64::from(df.bus - bus_start) << 20)
            | (u64::from(df.device) << 15)
            | (u64::from(df.function) << 12);
        Some(base + bdf + u64::from(offset & 0xfc))
    }

    fn port_address(df: DeviceFunction, offset: u8) -> u32 {
        0x8000_0000
            | (u32::from(df.bus) << 16)
            | (u32::from(df.device) << 11)
            | (u32::from(df.function) << 8)
            | u32::from(offset & 0xfc)
    }
}

impl ConfigurationAccess for PciCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        if let Some(addr) = self.ecam_address(df, offset) {
            // SAFETY: the ECAM window is identity-mapped uncached (see `detect`); the address
            // is inside it and 4-byte aligned.
            return unsafe { core::ptr::read_volatile(addr as *const u32) };
        }
        if matches!(self, PciCam::Ecam { .. }) {
            return u32::MAX; // outside the window: "no device"
        }
        // SAFETY: 0xCF8/0xCFC are the configuration mechanism #1 ports, used only here; the
        // kernel runs on one CPU with interrupts masked, so the address/data pair is atomic.
        let (address, data) = unsafe {
            (
                Port::<u32>::new(CONFIG_ADDRESS_PORT),
                Port::<u32>::new(CONFIG_DATA_PORT),
            )
        };
        address.write(Self::port_address(df, offset));
        data.read()
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, value: u32) {
        if let Some(addr) = self.ecam_address(df, offset) {
            // SAFETY: as in `read_word`.
            unsafe { core::ptr::write_volatile(addr as *mut u32, value) };
            return;
        }
        if matches!(self, PciCam::Ecam { .. }) {
            return;
        }
        // SAFETY: as in `read_word`.
        let (address, data) = unsafe {
            (
                Port::<u32>::new(CONFIG_ADDRESS_PORT),
                Port::<u32>::new(CONFIG_DATA_PORT),
            )
        };
        address.write(Self::port_address(df, offset));
        data.write(value);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        *self
    }
}

/// One function found by [`enumerate`].
#[derive(Debug, Clone)]
pub struct PciFunction {
    pub address: DeviceFunction,
    pub info: DeviceFunctionInfo,
}

/// Lists every function reachable from bus 0 through PCI-to-PCI bridges.
pub fn enumerate(root: &PciRoot<PciCam>, cam: &PciCam) -> Vec<PciFunction> {
    let mut found = Vec::new();
    let mut buses = alloc::vec![0u8];
    let mut visited = [false; 256];
    while let Some(bus) = buses.pop() {
        if visited[usize::from(bus)] || found.len() > MAX_BUSES_SCANNED * 32 {
            continue;
        }
        visited[usize::from(bus)] = true;
        for (address, info) in root.enumerate_bus(bus) {
            if info.header_type == HeaderType::PciPciBridge {
                let numbers = cam.read_word(address, BRIDGE_BUS_NUMBERS_OFFSET);
                buses.push((numbers >> 8) as u8);
            }
            found.push(PciFunction { address, info });
        }
    }
    found
}

/// Lets a function decode its BARs and master DMA (virtio devices need both).
pub fn enable_device(root: &mut PciRoot<PciCam>, address: DeviceFunction) {
    let (_, command) = root.get_status_command(address);
    root.set_command(
        address,
        command | Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER,
    );
}
