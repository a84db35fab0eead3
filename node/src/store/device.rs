//! The sector device the store sits on: `BlockDevice`.
//!
//! This is the one sector-device seam of cairn. The kernel implements it on virtio-blk, the
//! simulator with [`SimDisk`](super::SimDisk), the host benchmark with a file. The contract is
//! the one a real disk with a volatile write cache gives, and nothing more:
//!
//! - `read`/`write` move whole sectors (`buf.len()` a non-zero multiple of `sector_bytes()`),
//!   starting at logical block address `lba`;
//! - a write that returned `Ok` is visible to later reads, but survives a power cut only after
//!   a later `flush` returned `Ok`; writes issued between two flushes may reach the medium in
//!   any order, and a multi-sector write may be torn at a sector boundary;
//! - no method panics, whatever the arguments: every misuse is an error value.

use core::fmt;

/// Sector sizes the store accepts. The store's own block (4 KiB) is a multiple of each.
pub const SECTOR_BYTES_ALLOWED: [usize; 2] = [512, 4096];

/// Why a device operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// The medium failed to read or write (a latent sector error, a failed request).
    Io,
    /// `lba + sectors` runs past the end of the device.
    OutOfRange,
    /// The buffer is empty or not a whole number of sectors.
    Misaligned,
    /// The device is gone (power was cut in the simulator; the host closed the disk).
    Offline,
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceError::Io => "device i/o error",
            DeviceError::OutOfRange => "sector range past the end of the device",
            DeviceError::Misaligned => "buffer is not a whole number of sectors",
            DeviceError::Offline => "device offline",
        })
    }
}

impl core::error::Error for DeviceError {}

/// A synchronous sector device (see the module docs for the durability contract).
pub trait BlockDevice {
    /// Bytes per sector: 512 or 4096.
    fn sector_bytes(&self) -> usize;
    /// Number of sectors on the device.
    fn sector_count(&self) -> u64;
    /// Reads `buf.len() / sector_bytes()` sectors starting at `lba` into `buf`.
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError>;
    /// Writes `buf` to the sectors starting at `lba` (volatile until `flush`).
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DeviceError>;
    /// Makes every write that returned `Ok` before this call durable.
    fn flush(&mut self) -> Result<(), DeviceError>;
}

impl<D: BlockDevice + ?Sized> BlockDevice for &mut D {
    fn sector_bytes(&self) -> usize {
        (**self).sector_bytes()
    }
    fn sector_count(&self) -> u64 {
        (**self).sector_count()
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        (**self).read(lba, buf)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DeviceError> {
        (**self).write(lba, buf)
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        (**self).flush()
    }
}

impl<D: BlockDevice + ?Sized> BlockDevice for alloc::boxed::Box<D> {
    fn sector_bytes(&self) -> usize {
        (**self).sector_bytes()
    }
    fn sector_count(&self) -> u64 {
        (**self).sector_count()
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        (**self).read(lba, buf)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DeviceError> {
        (**self).write(lba, buf)
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        (**self).flush()
    }
}

/// A run of sectors of a device seen as a device of its own: a partition.
///
/// Sector `lba` of the window is sector `first + lba` of the device; a request that would
/// reach past the window is [`DeviceError::OutOfRange`] and never touches the device, so a
/// store in a partition cannot write over its neighbours (a disk's boot partitions).
#[derive(Debug)]
pub struct Window<D> {
    dev: D,
    first: u64,
    sectors: u64,
}

impl<D: BlockDevice> Window<D> {
    /// Sectors `first..first + sectors` of `dev`; `None` if that run is empty or does not lie
    /// on the device.
    pub fn new(dev: D, first: u64, sectors: u64) -> Option<Window<D>> {
        let end = first.checked_add(sectors)?;
        (sectors > 0 && end <= dev.sector_count()).then_some(Window {
            dev,
            first,
            sectors,
        })
    }

    /// The device's sector where the window starts.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The whole device back.
    pub fn into_inner(self) -> D {
        self.dev
    }

    fn device_lba(&self, lba: u64, buf_len: usize) -> Result<u64, DeviceError> {
        check_request(self.dev.sector_bytes(), self.sectors, lba, buf_len)?;
        self.first.checked_add(lba).ok_or(DeviceError::OutOfRange)
    }
}

impl<D: BlockDevice> BlockDevice for Window<D> {
    fn sector_bytes(&self) -> usize {
        self.dev.sector_bytes()
    }
    fn sector_count(&self) -> u64 {
        self.sectors
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let at = self.device_lba(lba, buf.len())?;
        self.dev.read(at, buf)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let at = self.device_lba(lba, buf.len())?;
        self.dev.write(at, buf)
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        self.dev.flush()
    }
}

/// Checks a request against the device geometry; returns the byte offset and length.
///
/// Shared by the device implementations in this crate so they reject misuse identically.
pub fn check_request(
    sector_bytes: usize,
    sector_count: u64,
    lba: u64,
    buf_len: usize,
) -> Result<(usize, usize), DeviceError> {
    if buf_len == 0 || sector_bytes == 0 || !buf_len.is_multiple_of(sector_bytes) {
        return Err(DeviceError::Misaligned);
    }
    let sectors = (buf_len / sector_bytes) as u64;
    let end = lba.checked_add(sectors).ok_or(DeviceError::OutOfRange)?;
    if end > sector_count {
        return Err(DeviceError::OutOfRange);
    }
    let offset = usize::try_from(lba)
        .ok()
        .and_then(|l| l.checked_mul(sector_bytes))
        .ok_or(DeviceError::OutOfRange)?;
    Ok((offset, buf_len))
}

/// Reads whole store blocks (`BLOCK_BYTES` each) starting at block `block`.
pub(crate) fn read_blocks<D: BlockDevice + ?Sized>(
    dev: &mut D,
    block: u64,
    buf: &mut [u8],
) -> Result<(), DeviceError> {
    let lba = block_lba(dev.sector_bytes(), block)?;
    dev.read(lba, buf)
}

/// Writes whole store blocks starting at block `block`.
pub(crate) fn write_blocks<D: BlockDevice + ?Sized>(
    dev: &mut D,
    block: u64,
    buf: &[u8],
) -> Result<(), DeviceError> {
    let lba = block_lba(dev.sector_bytes(), block)?;
    dev.write(lba, buf)
}

fn block_lba(sector_bytes: usize, block: u64) -> Result<u64, DeviceError> {
    if sector_bytes == 0 || !super::format::BLOCK_BYTES.is_multiple_of(sector_bytes) {
        return Err(DeviceError::Misaligned);
    }
    let sectors_per_block = (super::format::BLOCK_BYTES / sector_bytes) as u64;
    block
        .checked_mul(sectors_per_block)
        .ok_or(DeviceError::OutOfRange)
}
