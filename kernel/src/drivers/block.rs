//! `node::store::BlockDevice` on virtio-blk (virtio 1.2 §5.2): 512-byte sectors,
//! bounds-checked with the store's own `check_request`, every device failure returned as a
//! `DeviceError` (the virtio error is logged), never a panic.

use super::virtio::VirtioBlk;
use node::store::{check_request, BlockDevice, DeviceError};

/// The sector size virtio-blk transfers in.
pub const SECTOR_BYTES: usize = virtio_drivers::device::blk::SECTOR_SIZE;

/// The virtio-blk disk.
pub struct VirtioBlock {
    dev: VirtioBlk,
}

impl VirtioBlock {
    pub fn new(dev: VirtioBlk) -> VirtioBlock {
        VirtioBlock { dev }
    }

    fn io_error(what: &str, lba: u64, e: virtio_drivers::Error) -> DeviceError {
        log::warn!("virtio-blk: {what} at sector {lba} failed: {e}");
        DeviceError::Io
    }
}

impl BlockDevice for VirtioBlock {
    fn sector_bytes(&self) -> usize {
        SECTOR_BYTES
    }

    fn sector_count(&self) -> u64 {
        self.dev.capacity()
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        check_request(SECTOR_BYTES, self.sector_count(), lba, buf.len())?;
        let block = usize::try_from(lba).map_err(|_| DeviceError::OutOfRange)?;
        self.dev
            .read_blocks(block, buf)
            .map_err(|e| Self::io_error("read", lba, e))
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DeviceError> {
        check_request(SECTOR_BYTES, self.sector_count(), lba, buf.len())?;
        if self.dev.readonly() {
            return Err(DeviceError::Io);
        }
        let block = usize::try_from(lba).map_err(|_| DeviceError::OutOfRange)?;
        self.dev
            .write_blocks(block, buf)
            .map_err(|e| Self::io_error("write", lba, e))
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        self.dev.flush().map_err(|e| Self::io_error("flush", 0, e))
    }
}
