//! virtio 1.x devices over PCI (virtio 1.2 §4.1) through the `virtio-drivers` crate: the
//! kernel supplies the [`KernelHal`] (DMA memory and address translation) and finds devices.
//!
//! DMA model: the heap is identity-mapped RAM, so a buffer's physical address is its pointer
//! and sharing a buffer with a device needs no bounce copy (no IOMMU).
//!
//! Under SEV-SNP the heap is private (encrypted) memory the hypervisor's device model cannot
//! read, so DMA memory comes from [`SharedPool`]: 2 MiB chunks taken from the heap and made
//! shared once (`paging::make_shared`), handed out in pages by a bitmap kept in private
//! memory (the hypervisor can write the shared pages, never the allocator's bookkeeping).
//! `dma_alloc` takes pages from it; `share` copies a driver buffer into a bounce buffer from
//! it (for device-readable directions) and `unshare` copies back (for device-writable ones)
//! and frees it. Without SNP all of this is skipped and DMA works as before.
//!
//! `VIRTIO_F_ACCESS_PLATFORM` (virtio 1.2 §6, bit 33): QEMU offers it, and requires the
//! driver to accept it, on the devices of a confidential guest (`iommu_platform=on`, forced
//! under SEV). virtio-drivers 0.13 never accepts it, so every device is driven through
//! [`PlatformTransport`], which accepts it whenever the device offers it: with no IOMMU the
//! "platform" translation is the identity, and under SNP the buffers are in shared memory
//! already (above). `cargo xtask test testnet-uefi` runs its VMs with `iommu_platform=on`.
//! The PCI BARs are MMIO that raises #VC under SNP, emulated by `arch::sev`.

use crate::arch::{paging, pci, sev};
use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::vec::Vec;
use core::ptr::NonNull;
use spin::Mutex;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::pci::bus::PciRoot;
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// Descriptors per virtio-net queue.
pub const NET_QUEUE_SIZE: usize = 64;
/// Bytes per virtio-net receive buffer: an Ethernet frame (1514) plus the virtio header.
pub const NET_BUFFER_BYTES: usize = 2048;

pub type VirtioNet = VirtIONetRaw<KernelHal, PlatformTransport, NET_QUEUE_SIZE>;
pub type VirtioBlk = VirtIOBlk<KernelHal, PlatformTransport>;
pub type VirtioRng = VirtIORng<KernelHal, PlatformTransport>;

/// `VIRTIO_F_ACCESS_PLATFORM` (virtio 1.2 §6): the device accesses memory through the
/// platform's translation (an IOMMU, or the shared pages of a confidential guest).
const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;

/// A PCI transport whose driver also accepts [`VIRTIO_F_ACCESS_PLATFORM`] when the device
/// offers it; everything else is the PCI transport's.
pub struct PlatformTransport {
    inner: PciTransport,
    /// The features the device offered (read during `begin_init`).
    offered: u64,
}

impl PlatformTransport {
    fn new(inner: PciTransport) -> PlatformTransport {
        PlatformTransport { inner, offered: 0 }
    }
}

impl Transport for PlatformTransport {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        self.offered = self.inner.read_device_features();
        self.offered
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        let platform = self.offered & VIRTIO_F_ACCESS_PLATFORM;
        if platform != 0 {
            let kind = self.inner.device_type();
            log::info!("virtio {kind:?}: VIRTIO_F_ACCESS_PLATFORM accepted");
        }
        self.inner.write_driver_features(driver_features | platform);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }

    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue)
    }

    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status)
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }

    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area)
    }

    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }

    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }

    fn read_config_space<T: zerocopy::FromBytes + zerocopy::IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        self.inner.read_config_space(offset)
    }

    fn write_config_space<T: zerocopy::IntoBytes + zerocopy::Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        self.inner.write_config_space(offset, value)
    }
}

/// The kernel's `Hal` for virtio-drivers.
pub struct KernelHal;

fn dma_layout(pages: usize) -> Layout {
    // PAGE_SIZE is a power of two and `pages` is small: a valid layout, asserted loudly.
    Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE).expect("DMA layout")
}

/// Bytes of one shared chunk (2 MiB: one page state change entry, one PVALIDATE).
const SHARED_CHUNK_BYTES: usize = 2 << 20;
/// Pages of one shared chunk.
const SHARED_CHUNK_PAGES: usize = SHARED_CHUNK_BYTES / PAGE_SIZE;
/// The most shared chunks (128 MiB of DMA memory under SNP).
const MAX_SHARED_CHUNKS: usize = 64;

/// One shared chunk and which of its pages are in use (bit set = used).
struct SharedChunk {
    base: usize,
    used: [u64; SHARED_CHUNK_PAGES / 64],
}

impl SharedChunk {
    fn is_used(&self, page: usize) -> bool {
        self.used[page / 64] & (1 << (page % 64)) != 0
    }

    fn mark(&mut self, first: usize, pages: usize, used: bool) {
        for p in first..first + pages {
            if used {
                self.used[p / 64] |= 1 << (p % 64);
            } else {
                self.used[p / 64] &= !(1 << (p % 64));
            }
        }
    }

    /// First fit of `pages` free pages in a row.
    fn find(&self, pages: usize) -> Option<usize> {
        let mut run = 0;
        for p in 0..SHARED_CHUNK_PAGES {
            run = if self.is_used(p) { 0 } else { run + 1 };
            if run == pages {
                return Some(p + 1 - pages);
            }
        }
        None
    }
}

/// DMA memory shared with the hypervisor (SEV-SNP only); see the module documentation.
pub struct SharedPool;

static SHARED_POOL: Mutex<Vec<SharedChunk>> = Mutex::new(Vec::new());

impl SharedPool {
    /// `pages` zeroed, page-aligned shared pages; panics when the pool is exhausted (as the
    /// non-SNP path does when the heap is).
    fn alloc(pages: usize) -> NonNull<u8> {
        let pages = pages.max(1);
        if pages > SHARED_CHUNK_PAGES {
            panic!("virtio: {pages} DMA pages exceed a shared chunk");
        }
        let mut pool = SHARED_POOL.lock();
        let found = pool
            .iter()
            .enumerate()
            .find_map(|(i, c)| c.find(pages).map(|p| (i, p)));
        let (chunk, first) = match found {
            Some(hit) => hit,
            None => {
                if pool.len() == MAX_SHARED_CHUNKS {
                    panic!("virtio: shared DMA pool exhausted");
                }
                pool.push(SharedChunk {
                    base: new_shared_chunk(),
                    used: [0; SHARED_CHUNK_PAGES / 64],
                });
                (pool.len() - 1, 0)
            }
        };
        pool[chunk].mark(first, pages, true);
        let addr = pool[chunk].base + first * PAGE_SIZE;
        // SAFETY: the pages are shared, identity-mapped and now reserved for the caller.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, pages * PAGE_SIZE) };
        NonNull::new(addr as *mut u8).unwrap_or_else(|| panic!("virtio: shared page at 0"))
    }

    /// Returns pages from [`SharedPool::alloc`].
    fn free(addr: usize, pages: usize) {
        let pages = pages.max(1);
        let mut pool = SHARED_POOL.lock();
        let chunk = pool
            .iter_mut()
            .find(|c| addr >= c.base && addr < c.base + SHARED_CHUNK_BYTES);
        match chunk {
            Some(c) => c.mark((addr - c.base) / PAGE_SIZE, pages, false),
            None => panic!("virtio: freeing {addr:#x}, not shared DMA memory"),
        }
    }
}

/// A 2 MiB heap chunk made shared for good (never returned to the heap).
fn new_shared_chunk() -> usize {
    let layout = Layout::from_size_align(SHARED_CHUNK_BYTES, SHARED_CHUNK_BYTES)
        .unwrap_or_else(|_| panic!("virtio: shared chunk layout"));
    // SAFETY: a non-zero-sized layout; the chunk is leaked to the pool.
    let ptr = unsafe { alloc_zeroed(layout) };
    if ptr.is_null() {
        panic!("virtio: out of memory for a shared DMA chunk");
    }
    if let Err(e) = paging::make_shared(ptr as u64, SHARED_CHUNK_BYTES as u64) {
        panic!("virtio: cannot share DMA memory: {e}");
    }
    ptr as usize
}

fn bounce_pages(len: usize) -> usize {
    len.div_ceil(PAGE_SIZE)
}

// SAFETY: allocations are page-aligned, zeroed, identity-mapped RAM (shared with the
// hypervisor under SEV-SNP) that stays valid until `dma_dealloc`; `share` returns the
// identity physical address of memory the kernel owns (the buffer itself, or under SNP a
// shared bounce buffer holding its contents until `unshare`).
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        if sev::snp_active() {
            let nn = SharedPool::alloc(pages);
            return (nn.as_ptr() as PhysAddr, nn);
        }
        // SAFETY: the layout is non-zero-sized.
        let ptr = unsafe { alloc_zeroed(dma_layout(pages)) };
        let Some(nn) = NonNull::new(ptr) else {
            panic!("virtio: out of memory for {pages} DMA pages");
        };
        (ptr as PhysAddr, nn)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        if sev::snp_active() {
            SharedPool::free(vaddr.as_ptr() as usize, pages);
            return 0;
        }
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

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        if !sev::snp_active() {
            return buffer.as_ptr().cast::<u8>() as PhysAddr;
        }
        let len = buffer.len();
        let bounce = SharedPool::alloc(bounce_pages(len));
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: the caller's buffer is valid for `len` bytes (Hal contract); the bounce
            // buffer holds at least `len` bytes and does not overlap it.
            unsafe {
                core::ptr::copy_nonoverlapping(buffer.as_ptr().cast::<u8>(), bounce.as_ptr(), len)
            };
        }
        bounce.as_ptr() as PhysAddr
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        if !sev::snp_active() {
            return;
        }
        let len = buffer.len();
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: `paddr` is the bounce buffer `share` returned for this buffer
            // (identity-mapped, `len` bytes); the caller's buffer is valid for `len` bytes.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    paddr as *const u8,
                    buffer.as_ptr().cast::<u8>(),
                    len,
                )
            };
        }
        SharedPool::free(paddr as usize, bounce_pages(len));
    }
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
    let transport = PlatformTransport::new(transport);
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
