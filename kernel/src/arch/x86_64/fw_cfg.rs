//! QEMU's firmware configuration device (fw_cfg) through its x86 I/O ports (QEMU's
//! `docs/specs/fw_cfg.rst`): writing a 16-bit key to the selector port selects an item, and
//! each read of the 8-bit data port returns its next byte.
//!
//! The UEFI entry reads the node configuration file with it before ExitBootServices (see
//! `efi.rs`); under SEV-SNP the accesses then trap to OVMF's #VC handler, later ones go
//! through the GHCB (`port`).

use super::port::Port;

/// The selector port (16-bit key, little-endian on x86).
const SELECTOR_PORT: u16 = 0x510;
/// The data port (one byte per read).
const DATA_PORT: u16 = 0x511;

/// The fw_cfg device's two ports.
pub struct FwCfg {
    selector: Port<u16>,
    data: Port<u8>,
}

impl FwCfg {
    pub fn new() -> FwCfg {
        // SAFETY: 0x510/0x511 are fw_cfg's ports on QEMU's x86 machines and nothing else's;
        // selecting an item and reading its bytes change no memory (on a machine without
        // fw_cfg the reads return 0xff, which the signature check rejects).
        unsafe {
            FwCfg {
                selector: Port::new(SELECTOR_PORT),
                data: Port::new(DATA_PORT),
            }
        }
    }

    /// Selects item `key`; the next reads start at its first byte.
    pub fn select(&self, key: u16) {
        self.selector.write(key);
    }

    /// Fills `buf` with the selected item's next bytes (0 past its end).
    pub fn read(&self, buf: &mut [u8]) {
        for byte in buf.iter_mut() {
            *byte = self.data.read();
        }
    }
}
