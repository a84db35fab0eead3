//! The node's disk: which part of it the store may use, and the configuration it may carry.
//!
//! A node boots either from a disk image (`cargo xtask image`: GRUB, the kernel, a
//! `cairn-config` partition with the node's configuration and a `cairn-store` partition) or
//! by direct boot with a separate blank disk (the testnet). What the first sectors say decides
//! what the node may write:
//!
//! | first sectors                        | config                  | store                      |
//! |--------------------------------------|-------------------------|----------------------------|
//! | no MBR signature, no GPT             | none from the disk      | the whole disk             |
//! | a GPT (`gpt::read` accepts it)       | `cairn-config`, if set  | `cairn-store` only, if any |
//! | a GPT that fails its checks          | none                    | none: the disk is not touched |
//! | a classic MBR (another system's disk)| none                    | none: the disk is not touched |
//!
//! The store never formats over a partition table: a disk with boot partitions on it keeps
//! booting (`node::store::Window` refuses every request outside the partition).

use crate::runtime::config::{ConfigError, NodeConfig};
use crate::store_device::StoreDevice;
use alloc::boxed::Box;
use alloc::vec;
use core::fmt;
use gpt::{Partition, ReadError, GPT_HEAD_SECTORS};
use node::store::{BlockDevice, DeviceError, Window};

/// The partitions' names in the console lines (the images name them so; the kernel finds
/// them by type GUID).
pub const CONFIG_PARTITION: &str = "cairn-config";
pub const STORE_PARTITION: &str = "cairn-store";

/// What the disk's first sectors say.
#[derive(Debug)]
pub enum Layout {
    /// No partition table: the store owns the whole disk.
    Whole,
    /// A GPT, and the cairn partitions it has.
    Gpt {
        config: Option<Partition>,
        store: Option<Partition>,
    },
    /// A disk the node must not write.
    Foreign(Foreign),
}

/// Why a disk is left alone.
#[derive(Clone, Copy, Debug)]
pub enum Foreign {
    /// A classic MBR with partitions.
    Mbr,
    /// A GPT signature or protective MBR, but the table fails its checks.
    BadGpt(ReadError),
    /// A partitioned disk with sectors other than the 512 bytes GPTs are read with here.
    SectorBytes(usize),
    /// The first sectors could not be read.
    Read(DeviceError),
}

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Foreign::Mbr => f.write_str("it has a classic MBR partition table"),
            Foreign::BadGpt(e) => write!(f, "its GPT is unusable: {e}"),
            Foreign::SectorBytes(n) => write!(f, "it is partitioned with {n}-byte sectors"),
            Foreign::Read(e) => write!(f, "its first sectors do not read: {e}"),
        }
    }
}

/// Reads the disk's first sectors and classifies them (module table; `gpt::classify`).
pub fn layout(disk: &mut impl BlockDevice) -> Layout {
    let sector = disk.sector_bytes();
    let sectors = disk.sector_count();
    let head_sectors = GPT_HEAD_SECTORS.min(sectors);
    if head_sectors == 0 {
        return Layout::Whole;
    }
    let mut head = vec![0u8; head_sectors as usize * sector];
    if let Err(e) = disk.read(0, &mut head) {
        return Layout::Foreign(Foreign::Read(e));
    }
    match gpt::classify(&head, sector, sectors) {
        gpt::Disk::Blank => Layout::Whole,
        gpt::Disk::Gpt(table) => Layout::Gpt {
            config: table.find(gpt::TYPE_CAIRN_CONFIG).cloned(),
            store: table.find(gpt::TYPE_CAIRN_STORE).cloned(),
        },
        gpt::Disk::Mbr => Layout::Foreign(Foreign::Mbr),
        gpt::Disk::BadGpt(e) => Layout::Foreign(Foreign::BadGpt(e)),
        gpt::Disk::SectorBytes(n) => Layout::Foreign(Foreign::SectorBytes(n)),
    }
}

/// Why the configuration partition gave no configuration.
#[derive(Debug)]
pub enum DiskConfigError {
    Read(DeviceError),
    Config(ConfigError),
    /// The header claims more bytes than the partition holds.
    PastPartition(usize),
}

impl fmt::Display for DiskConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskConfigError::Read(e) => write!(f, "read: {e}"),
            DiskConfigError::Config(e) => e.fmt(f),
            DiskConfigError::PastPartition(n) => {
                write!(f, "its header claims {n} bytes, more than the partition")
            }
        }
    }
}

/// The node configuration at the start of the `cairn-config` partition, and its length in
/// bytes; `None` when the partition does not start with one (zeroed: an image written
/// without `--genesis`).
pub fn config(
    disk: &mut impl BlockDevice,
    part: &Partition,
) -> Option<Result<(NodeConfig, usize), DiskConfigError>> {
    let sector = disk.sector_bytes();
    let mut first = vec![0u8; sector];
    if let Err(e) = disk.read(part.first_lba, &mut first) {
        return Some(Err(DiskConfigError::Read(e)));
    }
    let len = match NodeConfig::stored_len(&first)? {
        Ok(len) => len,
        Err(e) => return Some(Err(DiskConfigError::Config(e))),
    };
    if len as u64 > part.size_bytes() {
        return Some(Err(DiskConfigError::PastPartition(len)));
    }
    let mut bytes = vec![0u8; len.div_ceil(sector) * sector];
    if let Err(e) = disk.read(part.first_lba, &mut bytes) {
        return Some(Err(DiskConfigError::Read(e)));
    }
    Some(
        NodeConfig::decode(&bytes[..len])
            .map(|c| (c, len))
            .map_err(DiskConfigError::Config),
    )
}

/// The device the store may use on this disk, logged; `None` when it may use none.
pub fn store_device(disk: StoreDevice, layout: &Layout) -> Option<Box<dyn BlockDevice>> {
    match layout {
        Layout::Whole => Some(Box::new(disk)),
        Layout::Gpt {
            store: Some(part), ..
        } => {
            let window = Window::new(disk, part.first_lba, part.sectors());
            match window {
                Some(w) => {
                    log::info!(
                        "store: partition {STORE_PARTITION}, {} MiB at sector {}",
                        part.size_bytes() / (1024 * 1024),
                        part.first_lba
                    );
                    Some(Box::new(w))
                }
                None => {
                    log::error!(
                        "store: partition {STORE_PARTITION} (sectors {}..={}) is not on the \
                         disk; running without a store",
                        part.first_lba,
                        part.last_lba
                    );
                    None
                }
            }
        }
        Layout::Gpt { store: None, .. } => {
            log::error!(
                "store: the disk has a GPT without a {STORE_PARTITION} partition; not touching \
                 it, running without a store"
            );
            None
        }
        Layout::Foreign(why) => {
            log::error!("store: not touching the disk ({why}); running without a store");
            None
        }
    }
}
