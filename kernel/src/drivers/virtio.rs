//! virtio 1.x devices over PCI (virtio 1.2 §4.1) through the `virtio-drivers` crate: the
//! kernel supplies the [`KernelHal`] (DMA memory and address translation) and finds devices.
//!
//! DMA model: the heap is identity-mapped RAM, so a buffer's physical address is its pointer
//! and sharing a buffer with a device needs no bounce copy (no IOMMU, no SEV-SNP yet: with
//! SNP, `share` must bounce through shared pages).

use crate::arch::{paging, pci};
use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::ptr::NonNull;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::pci::bus::PciRoot;
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::DeviceType;
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// Descriptors per virtio-net queue.
pub const NET_QUEUE_SIZE: usize = 64;
/// Bytes per virtio-net receive buffer: an Ethernet frame (1514) plus the virtio header.
pub const NET_BUFFER_BYTES: usize = 2048;

pub type VirtioNet = VirtIONetRaw<KernelHal, PciTransport, NET_QUEUE_SIZE>;
pub type VirtioBlk = VirtIOBlk<KernelHal, PciTransport>;
pub type VirtioRng = VirtIORng<KernelHal, PciTransport>;

/// The kernel's `Hal` for virtio-drivers.
pub struct KernelHal;

fn dma_layout(pages: usize) -> Layout {
    // PAGE_SIZE is a power of two and `pages` is small: a valid layout, asserted loudly.
    Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE).expect("DMA layout")
}

// SAFETY: allocations are page-aligned, zeroed, identity-mapped RAM that stays valid until
// `dma_dealloc`; `share` returns the identity physical address of memory the kernel owns.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout is non-zero-sized.
        let ptr = unsafe { alloc_zeroed(dma_layout(pages)) };
        let Some(nn) = NonNull::new(ptr) else {
            panic!("virtio: out of memory for {pages} DMA pages");
        };
        (ptr as PhysAddr, nn)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: `vaddr` came from `dma_alloc` with the same page count.
        unsafe { dealloc(vaddr.as_ptr(), dma_layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        if let Err(e) = paging::map_mmio(paddr, size as u64) {
            panic!("virtio: cannot map BAR at {paddr:#x}: {e}");
        }
        NonNull::new(paddr as *mut u8).expect("BAR at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Network cards the kernel drives; more are ignored.
pub const NET_DEVICES_MAX: usize = 4;

/// The virtio devices found at boot: every network card (in PCI order, at most
/// [`NET_DEVICES_MAX`]) and the first device of each other kind.
#[derive(Default)]
pub struct Devices {
    pub net: alloc::vec::Vec<VirtioNet>,
    pub blk: Option<VirtioBlk>,
    pub rng: Option<VirtioRng>,
    /// PCI functions seen, for the banner.
    pub pci_functions: usize,
    pub cam: Option<pci::PciCam>,
}

/// Enumerates PCI and initialises the virtio devices it finds.
pub fn probe() -> Devices {
    let cam = pci::PciCam::detect();
    let mut root = PciRoot::new(cam);
    let functions = pci::enumerate(&root, &cam);
    let mut devices = Devices {
        pci_functions: functions.len(),
        cam: Some(cam),
        ..Devices::default()
    };
    for f in &functions {
        log::info!("pci {} {}", f.address, f.info);
        let Some(kind) = virtio_device_type(&f.info) else {
            continue;
        };
        pci::enable_device(&mut root, f.address);
        let transport = match PciTransport::new::<KernelHal, _>(&mut root, f.address) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("virtio {kind:?} at {}: {e}", f.address);
                continue;
            }
        };
        attach(&mut devices, kind, transport);
    }
    devices
}

fn attach(devices: &mut Devices, kind: DeviceType, transport: PciTransport) {
    match kind {
        DeviceType::Network if devices.net.len() < NET_DEVICES_MAX => {
            match VirtioNet::new(transport) {
                Ok(net) => devices.net.push(net),
                Err(e) => log::warn!("virtio-net: {e}"),
            }
        }
        DeviceType::Block if devices.blk.is_none() => match VirtioBlk::new(transport) {
            Ok(blk) => devices.blk = Some(blk),
            Err(e) => log::warn!("virtio-blk: {e}"),
        },
        DeviceType::EntropySource if devices.rng.is_none() => match VirtioRng::new(transport) {
            Ok(rng) => devices.rng = Some(rng),
            Err(e) => log::warn!("virtio-rng: {e}"),
        },
        other => log::info!("virtio {other:?}: no driver, ignored"),
    }
}
