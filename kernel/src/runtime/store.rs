//! The node's state store in the runtime: the virtio-blk disk (the whole disk or its
//! `cairn-store` partition, as `super::disk` decides, behind `store_device::StoreDevice`)
//! opened at boot and handed to `Stack::with_store`.
//!
//! What boot does with the disk, and why:
//! - a store that opens, with the chunk size the node checkpoints in: recovered as it is
//!   (the stack loads its checkpoint and CUP and replays the logged blocks above it);
//! - no store found (an empty disk, a format cut short, or every superblock copy failing its
//!   checksum, which the store cannot tell apart from a torn format): formatted;
//! - a store that does not open (a corrupt meta, a device error) or was formatted for
//!   something else (another chunk size): logged and
//!   formatted fresh. The node then has nothing of its own and catches up from its peers by
//!   CUP and state sync, which is what the store's design asks of a node that lost its disk;
//!   executing on state it cannot verify is never an option;
//! - a disk that cannot even be formatted (I/O errors): the node runs without a store.
//!
//! Nothing here panics on what the disk holds: every failure is a logged value.

use crate::arch::clock;
use alloc::boxed::Box;
use node::replica::stack::store_config;
use node::store::{BlockDevice, OpenError, Recovery, Store, StoreError, Verify, SUPERBLOCK_COPIES};

/// The store type `Stack::with_store` takes.
pub type NodeStore = Store<Box<dyn BlockDevice>>;

const NS_PER_MS: u64 = 1_000_000;
const MIB: u64 = 1024 * 1024;

/// How the store was obtained at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An existing store, opened.
    Recovered,
    /// An empty disk, formatted.
    Formatted,
    /// A store that could not be used (why), formatted fresh.
    Replaced(Unusable),
}

/// Why an existing store was formatted over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    Open(StoreError),
    /// Formatted with another chunk size (bytes) than the node checkpoints in.
    ChunkBytes(u32),
}

impl core::fmt::Display for Unusable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Unusable::Open(e) => write!(f, "does not open: {e}"),
            Unusable::ChunkBytes(b) => write!(f, "formatted with {b}-byte chunks"),
        }
    }
}

/// The store opened at boot.
pub struct Opened {
    pub store: NodeStore,
    pub recovery: Recovery,
    pub origin: Origin,
    /// Host-visible time the open (and format) took.
    pub open_ms: u64,
    pub device_bytes: u64,
}

/// Opens (or formats) the store on `dev` (the disk, or its store partition:
/// `super::disk::store_device`); `None` when it is unusable even for a format.
/// `format_nonce` must differ for every format (entropy or the TSC).
pub fn open(dev: Box<dyn BlockDevice>, format_nonce: u64) -> Option<Opened> {
    let started = clock::now_ns();
    let device_bytes = dev.sector_count() * dev.sector_bytes() as u64;
    let config = store_config(format_nonce);
    let (device, origin) = match Store::open(dev, Verify::Lazy) {
        Ok((store, recovery)) if store.chunk_bytes() == config.chunk_bytes => {
            return Some(Opened {
                store,
                recovery,
                origin: Origin::Recovered,
                open_ms: (clock::now_ns() - started) / NS_PER_MS,
                device_bytes,
            });
        }
        Ok((store, _)) => {
            let why = Unusable::ChunkBytes(store.chunk_bytes());
            (store.into_device(), Origin::Replaced(why))
        }
        Err(OpenError {
            error: StoreError::NotFormatted,
            device,
        }) => (device, Origin::Formatted),
        Err(OpenError { error, device }) => (device, Origin::Replaced(Unusable::Open(error))),
    };
    if let Origin::Replaced(why) = origin {
        log::error!(
            "runtime: store on the disk {why}; formatting it fresh (state sync refills it)"
        );
    }
    match Store::format(device, config) {
        Ok(store) => Some(Opened {
            recovery: Recovery {
                superblock_sequence: store.sequence(),
                superblock_copies: SUPERBLOCK_COPIES,
                ..Recovery::default()
            },
            store,
            origin,
            open_ms: (clock::now_ns() - started) / NS_PER_MS,
            device_bytes,
        }),
        Err(e) => {
            log::error!(
                "runtime: formatting the {} MiB disk failed: {e}; running without a store",
                device_bytes / MIB
            );
            None
        }
    }
}
