//! A block device on virtio-blk (virtio 1.2 §5.2): 512-byte sectors, bounds-checked, every
//! device failure returned as a [`BlockError`].

use super::virtio::VirtioBlk;

/// The sector size of the device interface.
pub const SECTOR_BYTES: usize = 512;

/// Why a block operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The request reaches past the end of the device.
    OutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    /// The buffer is not a whole number of sectors.
    Unaligned,
    /// The device is read-only.
    ReadOnly,
    /// The device reported an error.
    Device(virtio_drivers::Error),
}

impl core::fmt::Display for BlockError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlockError::OutOfRange {
                sector,
                sectors,
                capacity,
            } => write!(
                f,
                "sectors {sector}+{sectors} past the end ({capacity} sectors)"
            ),
            BlockError::Unaligned => f.write_str("buffer is not a whole number of sectors"),
            BlockError::ReadOnly => f.write_str("device is read-only"),
            BlockError::Device(e) => write!(f, "device error: {e}"),
        }
    }
}

/// The virtio-blk disk.
pub struct VirtioBlock {
    dev: VirtioBlk,
}

impl VirtioBlock {
    pub fn new(dev: VirtioBlk) -> VirtioBlock {
        VirtioBlock { dev }
    }

    /// Capacity in sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.dev.capacity()
    }

    fn check(&self, sector: u64, len: usize) -> Result<(), BlockError> {
        if !len.is_multiple_of(SECTOR_BYTES) {
            return Err(BlockError::Unaligned);
        }
        let sectors = (len / SECTOR_BYTES) as u64;
        let capacity = self.capacity_sectors();
        if sector.checked_add(sectors).is_none_or(|end| end > capacity) {
            return Err(BlockError::OutOfRange {
                sector,
                sectors,
                capacity,
            });
        }
        Ok(())
    }

    /// Reads whole sectors starting at `sector` into `buf`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check(sector, buf.len())?;
        self.dev
            .read_blocks(sector as usize, buf)
            .map_err(BlockError::Device)
    }

    /// Writes whole sectors starting at `sector` from `buf`.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.check(sector, buf.len())?;
        if self.dev.readonly() {
            return Err(BlockError::ReadOnly);
        }
        self.dev
            .write_blocks(sector as usize, buf)
            .map_err(BlockError::Device)
    }

    /// Makes completed writes durable.
    pub fn flush(&mut self) -> Result<(), BlockError> {
        self.dev.flush().map_err(BlockError::Device)
    }
}
