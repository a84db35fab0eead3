//! The store's device in the kernel: `node::store::BlockDevice` over virtio-blk, with every
//! request split into pieces of at most [`MAX_TRANSFER_BYTES`].
//!
//! The store issues single requests of up to 1 MiB (checkpoint chunks) and 4 MiB (pool
//! segments); a virtio-blk device may limit a request's size (`size_max`, `seg_max`, and the
//! host's own transfer limit), so large requests go to the driver in bounded pieces. The
//! durability contract is unchanged: a split write may be torn between pieces, which the
//! store's contract already allows (a multi-sector write may be torn at any sector boundary),
//! and nothing is durable before `flush`.
//!
//! Errors are the driver's (`drivers::block::VirtioBlock` already maps every virtio failure to
//! a `DeviceError`: a bounds failure to `OutOfRange`, a partial sector to `Misaligned`, a
//! read-only device or a failed request to `Io`); the whole request is checked before the
//! first piece, so a bad request never leaves a partial write behind.

use crate::drivers::block::VirtioBlock;
use node::store::{check_request, BlockDevice, DeviceError};

/// Largest transfer handed to the driver in one request, in bytes (a multiple of every
/// sector size the store accepts).
pub const MAX_TRANSFER_BYTES: usize = 128 * 1024;

/// The store's device: the virtio-blk disk behind a request splitter.
pub struct StoreDevice {
    disk: VirtioBlock,
}

impl StoreDevice {
    pub fn new(disk: VirtioBlock) -> StoreDevice {
        StoreDevice { disk }
    }

    /// Sectors per piece of a split request.
    fn piece_sectors(&self) -> u64 {
        (MAX_TRANSFER_BYTES / self.disk.sector_bytes()).max(1) as u64
    }
}

impl BlockDevice for StoreDevice {
    fn sector_bytes(&self) -> usize {
        self.disk.sector_bytes()
    }

    fn sector_count(&self) -> u64 {
        self.disk.sector_count()
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let sector = self.sector_bytes();
        check_request(sector, self.sector_count(), lba, buf.len())?;
        let step = self.piece_sectors();
        for (i, piece) in buf.chunks_mut(step as usize * sector).enumerate() {
            self.disk.read(lba + i as u64 * step, piece)?;
        }
        Ok(())
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let sector = self.sector_bytes();
        check_request(sector, self.sector_count(), lba, buf.len())?;
        let step = self.piece_sectors();
        for (i, piece) in buf.chunks(step as usize * sector).enumerate() {
            self.disk.write(lba + i as u64 * step, piece)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        self.disk.flush()
    }
}
