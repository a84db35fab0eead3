//! smoltcp's `Device` on virtio-net. A received frame is copied out of the virtio buffer and
//! the buffer is returned to the device at once, so the receive queue never runs dry while
//! smoltcp holds a token. Frames larger than the buffer are dropped by the device.

use crate::drivers::virtio::VirtioNet;
use alloc::vec::Vec;
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

/// The largest Ethernet frame (without FCS) the interface sends or accepts.
pub const MAX_FRAME_BYTES: usize = 1514;

/// Frame counters, for /health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameCounters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
}

pub struct NetDevice {
    net: VirtioNet,
    counters: FrameCounters,
}

impl NetDevice {
    pub fn new(net: VirtioNet) -> NetDevice {
        NetDevice {
            net,
            counters: FrameCounters::default(),
        }
    }

    pub fn counters(&self) -> FrameCounters {
        self.counters
    }
}

pub struct NetRxToken(Vec<u8>);

pub struct NetTxToken<'a>(&'a mut NetDevice);

impl RxToken for NetRxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for NetTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let dev = self.0;
        let mut buf = dev.net.new_tx_buffer(len);
        let result = f(buf.packet_mut());
        match dev.net.send(buf) {
            Ok(()) => dev.counters.tx_frames += 1,
            Err(e) => {
                dev.counters.tx_errors += 1;
                log::warn!("virtio-net: send failed: {e}");
            }
        }
        result
    }
}

impl Device for NetDevice {
    type RxToken<'a> = NetRxToken;
    type TxToken<'a> = NetTxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(NetRxToken, NetTxToken<'_>)> {
        let rx = match self.net.receive() {
            Ok(rx) => rx,
            Err(virtio_drivers::Error::NotReady) => return None,
            Err(e) => {
                self.counters.rx_errors += 1;
                log::warn!("virtio-net: receive failed: {e}");
                return None;
            }
        };
        let frame = rx.packet().to_vec();
        if let Err(e) = self.net.recycle_rx_buffer(rx) {
            self.counters.rx_errors += 1;
            log::warn!("virtio-net: recycling a receive buffer failed: {e}");
        }
        self.counters.rx_frames += 1;
        Some((NetRxToken(frame), NetTxToken(self)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<NetTxToken<'_>> {
        self.net.can_send().then_some(NetTxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME_BYTES;
        caps
    }
}
