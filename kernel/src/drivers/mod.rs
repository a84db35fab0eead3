//! Device drivers. Each owns its device and exposes a narrow API; hardware access goes through
//! `arch` (PCI configuration space, MMIO mapping) and virtio-drivers' transports.

pub mod block;
pub mod virtio;
