//! smoltcp's `Device` on virtio-net (virtio 1.2 §5.1.6), without blocking:
//!
//! - receive: every descriptor of the receive queue holds one of our buffers; a completed
//!   frame is copied out and its buffer goes straight back to the queue, so the queue never
//!   runs dry while smoltcp holds a token;
//! - transmit: a frame is queued and the call returns; buffers of completed sends are
//!   reclaimed on the next call. Waiting for each send (as `VirtIONet::send` does) would cost
//!   a round trip through QEMU's I/O thread per frame.
//!
//! Frames larger than a buffer are dropped by the device; malformed frames by smoltcp.

use crate::drivers::virtio::{VirtioNet, NET_BUFFER_BYTES, NET_QUEUE_SIZE};
use alloc::boxed::Box;
use alloc::vec;
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
    /// Frames the receive filter (`sanity`) dropped, by reason.
    pub rx_dropped: super::sanity::DropCounters,
}

type Buffer = Box<[u8]>;

pub struct NetDevice {
    net: VirtioNet,
    /// Receive buffers owned by the device, by descriptor token.
    rx: Vec<Option<Buffer>>,
    /// Frames being sent (buffer, frame length), by descriptor token.
    tx: Vec<Option<(Buffer, usize)>>,
    /// Transmit buffers free for reuse.
    tx_free: Vec<Buffer>,
    counters: FrameCounters,
}

fn new_buffer() -> Buffer {
    vec![0u8; NET_BUFFER_BYTES].into_boxed_slice()
}

impl NetDevice {
    pub fn new(net: VirtioNet) -> NetDevice {
        let mut dev = NetDevice {
            net,
            rx: (0..NET_QUEUE_SIZE).map(|_| None).collect(),
            tx: (0..NET_QUEUE_SIZE).map(|_| None).collect(),
            tx_free: Vec::new(),
            counters: FrameCounters::default(),
        };
        for _ in 0..NET_QUEUE_SIZE {
            dev.post_rx(new_buffer());
        }
        dev
    }

    pub fn mac_address(&self) -> [u8; 6] {
        self.net.mac_address()
    }

    pub fn counters(&self) -> FrameCounters {
        self.counters
    }

    /// Gives `buf` to the receive queue.
    fn post_rx(&mut self, mut buf: Buffer) {
        // SAFETY: the buffer is heap memory kept in `self.rx[token]` (a Box does not move its
        // contents) and not touched until `receive_complete` returns it.
        match unsafe { self.net.receive_begin(&mut buf) } {
            Ok(token) => match self.rx.get_mut(usize::from(token)) {
                Some(slot) => *slot = Some(buf),
                None => self.counters.rx_errors += 1,
            },
            Err(e) => {
                self.counters.rx_errors += 1;
                log::warn!("virtio-net: posting a receive buffer failed: {e}");
            }
        }
    }

    /// Takes one received frame off the queue.
    fn take_frame(&mut self) -> Option<Vec<u8>> {
        let token = self.net.poll_receive()?;
        let mut buf = self.rx.get_mut(usize::from(token))?.take()?;
        // SAFETY: `buf` is the buffer posted with this token.
        let frame = match unsafe { self.net.receive_complete(token, &mut buf) } {
            Ok((header, len)) => buf.get(header..header + len).map(<[u8]>::to_vec),
            Err(e) => {
                log::warn!("virtio-net: receive failed: {e}");
                None
            }
        };
        self.post_rx(buf);
        match frame {
            Some(_) => self.counters.rx_frames += 1,
            None => self.counters.rx_errors += 1,
        }
        frame
    }

    /// Reclaims the buffers of completed sends.
    fn reclaim_tx(&mut self) {
        while let Some(token) = self.net.poll_transmit() {
            let Some((buf, len)) = self.tx.get_mut(usize::from(token)).and_then(Option::take)
            else {
                self.counters.tx_errors += 1;
                return;
            };
            // SAFETY: `buf[..len]` is exactly the slice queued with this token.
            if let Err(e) = unsafe { self.net.transmit_complete(token, &buf[..len]) } {
                self.counters.tx_errors += 1;
                log::warn!("virtio-net: completing a send failed: {e}");
            }
            self.tx_free.push(buf);
        }
    }

    /// Builds a frame of `len` bytes with `fill` and queues it; returns what `fill` returned.
    fn send<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut buf = self.tx_free.pop().unwrap_or_else(new_buffer);
        let header = self.net.fill_buffer_header(&mut buf).unwrap_or(buf.len());
        if header + len > buf.len() {
            // Larger than an MTU frame: smoltcp never asks for that; build it and drop it.
            self.counters.tx_errors += 1;
            self.tx_free.push(buf);
            return fill(&mut vec![0u8; len]);
        }
        let total = header + len;
        let result = fill(&mut buf[header..total]);
        // SAFETY: the buffer is kept in `self.tx[token]` until `reclaim_tx` completes it.
        match unsafe { self.net.transmit_begin(&buf[..total]) } {
            Ok(token) => match self.tx.get_mut(usize::from(token)) {
                Some(slot) => {
                    *slot = Some((buf, total));
                    self.counters.tx_frames += 1;
                }
                None => self.counters.tx_errors += 1,
            },
            Err(e) => {
                self.counters.tx_errors += 1;
                log::warn!("virtio-net: send failed: {e}");
                self.tx_free.push(buf);
            }
        }
        result
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
        self.0.send(len, f)
    }
}

impl Device for NetDevice {
    type RxToken<'a> = NetRxToken;
    type TxToken<'a> = NetTxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(NetRxToken, NetTxToken<'_>)> {
        self.reclaim_tx();
        // Bounded by the queue: every rejected frame's buffer went straight back to the device.
        for _ in 0..NET_QUEUE_SIZE {
            let frame = self.take_frame()?;
            match super::sanity::check(&frame) {
                None => return Some((NetRxToken(frame), NetTxToken(self))),
                Some(why) => self.counters.rx_dropped.count(why),
            }
        }
        None
    }

    fn transmit(&mut self, _now: Instant) -> Option<NetTxToken<'_>> {
        self.reclaim_tx();
        self.net.can_send().then_some(NetTxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME_BYTES;
        caps
    }
}
