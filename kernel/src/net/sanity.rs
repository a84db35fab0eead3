//! A receive filter in front of smoltcp: every frame the device hands up is checked here
//! first, and a frame that is malformed, oversized, fragmented or of an unknown EtherType is
//! dropped and counted (the counters are in `/health`). smoltcp checks the same things and
//! drops silently; this filter only makes the drops visible and keeps garbage away from the
//! stack. Every check reads through smoltcp's bounds-checked `wire` accessors.

use smoltcp::wire::{
    ArpPacket, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet,
    TcpPacket, UdpPacket,
};

/// The largest frame accepted (an Ethernet MTU of 1500 plus the 14-byte header).
pub const MAX_RX_FRAME_BYTES: usize = 1514;
/// ARP over Ethernet/IPv4: hardware and protocol address lengths.
const ARP_ETHERNET_ADDR_BYTES: u8 = 6;
const ARP_IPV4_ADDR_BYTES: u8 = 4;

/// Why a received frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Truncated or inconsistent headers, or a bad IPv4/TCP/UDP checksum.
    Malformed,
    /// Longer than [`MAX_RX_FRAME_BYTES`].
    Oversized,
    /// An IPv4 fragment (the stack does not reassemble).
    Fragment,
    /// An EtherType the stack does not speak.
    Unsupported,
}

/// Receive-filter counters, for `/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters {
    pub malformed: u64,
    pub oversized: u64,
    pub fragments: u64,
    pub unsupported: u64,
}

impl DropCounters {
    pub fn count(&mut self, why: Drop) {
        let c = match why {
            Drop::Malformed => &mut self.malformed,
            Drop::Oversized => &mut self.oversized,
            Drop::Fragment => &mut self.fragments,
            Drop::Unsupported => &mut self.unsupported,
        };
        *c += 1;
    }
}

/// None when the frame may go to smoltcp.
pub fn check(frame: &[u8]) -> Option<Drop> {
    if frame.len() > MAX_RX_FRAME_BYTES {
        return Some(Drop::Oversized);
    }
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Some(Drop::Malformed);
    };
    match eth.ethertype() {
        EthernetProtocol::Arp => check_arp(eth.payload()),
        EthernetProtocol::Ipv4 => check_ipv4(eth.payload()),
        EthernetProtocol::Ipv6 => check_ipv6(eth.payload()),
        EthernetProtocol::Unknown(_) => Some(Drop::Unsupported),
    }
}

fn check_arp(payload: &[u8]) -> Option<Drop> {
    let Ok(arp) = ArpPacket::new_checked(payload) else {
        return Some(Drop::Malformed);
    };
    let sane = arp.hardware_len() == ARP_ETHERNET_ADDR_BYTES
        && arp.protocol_len() == ARP_IPV4_ADDR_BYTES
        && arp.protocol_type() == EthernetProtocol::Ipv4;
    (!sane).then_some(Drop::Malformed)
}

fn check_ipv4(payload: &[u8]) -> Option<Drop> {
    let Ok(ip) = Ipv4Packet::new_checked(payload) else {
        return Some(Drop::Malformed);
    };
    if ip.version() != 4 || !ip.verify_checksum() {
        return Some(Drop::Malformed);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Some(Drop::Fragment);
    }
    let (src, dst) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    check_transport(ip.next_header(), ip.payload(), &src, &dst)
}

fn check_ipv6(payload: &[u8]) -> Option<Drop> {
    let Ok(ip) = Ipv6Packet::new_checked(payload) else {
        return Some(Drop::Malformed);
    };
    if ip.version() != 6 {
        return Some(Drop::Malformed);
    }
    let (src, dst) = (
        IpAddress::Ipv6(ip.src_addr()),
        IpAddress::Ipv6(ip.dst_addr()),
    );
    // Extension headers are left to smoltcp; TCP and UDP directly after the header are checked.
    check_transport(ip.next_header(), ip.payload(), &src, &dst)
}

fn check_transport(
    protocol: IpProtocol,
    payload: &[u8],
    src: &IpAddress,
    dst: &IpAddress,
) -> Option<Drop> {
    let ok = match protocol {
        // check_len also rejects a data offset below 5 words or beyond the segment.
        IpProtocol::Tcp => TcpPacket::new_checked(payload)
            .map(|tcp| tcp.verify_checksum(src, dst))
            .unwrap_or(false),
        IpProtocol::Udp => UdpPacket::new_checked(payload)
            .map(|udp| udp.verify_checksum(src, dst))
            .unwrap_or(false),
        _ => true,
    };
    (!ok).then_some(Drop::Malformed)
}
