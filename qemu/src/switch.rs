//! A virtual Ethernet switch for testnets: N QEMU VMs on one L2 segment without root, tap
//! devices or traffic off the machine.
//!
//! Each port is a UDP endpoint on 127.0.0.1. A VM joins with `-netdev dgram` (one Ethernet
//! frame per datagram) whose local address is its port and whose remote address is the
//! switch's socket ([`Switch::netdev`]). The switch learns which port each source MAC lives
//! behind and forwards a unicast frame to that port only; broadcast, multicast and unknown
//! destinations are flooded to every other port. Datagrams from addresses that are not ports
//! are dropped, so nothing else on the host can inject frames. A port need not be a VM: a host
//! test may bind a port's address itself and speak Ethernet on the segment.

use crate::{Netdev, SocketEndpoint};
use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest frame relayed (jumbo frames are not used; this bounds the receive buffer).
pub const MAX_FRAME_BYTES: usize = 65_536;
/// MAC addresses remembered at most; beyond this, unknown destinations are flooded.
pub const MAX_LEARNED_MACS: usize = 4096;
/// How often the switch thread looks at its stop flag.
const STOP_POLL_MS: u64 = 50;
/// Ethernet header: destination MAC, source MAC, EtherType.
const ETHERNET_HEADER_BYTES: usize = 14;

pub type Mac = [u8; 6];

/// Counters and the learned MAC table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchStats {
    pub frames_in: u64,
    pub frames_out: u64,
    /// Datagrams from an address that is not a port, or shorter than an Ethernet header.
    pub dropped: u64,
    /// Source MAC → port it was last seen on.
    pub macs: BTreeMap<Mac, usize>,
}

/// The forwarding decision for one frame from `in_port` among `ports` ports; learns the source.
pub fn route(stats: &mut SwitchStats, ports: usize, in_port: usize, frame: &[u8]) -> Vec<usize> {
    if frame.len() < ETHERNET_HEADER_BYTES || in_port >= ports {
        stats.dropped += 1;
        return Vec::new();
    }
    stats.frames_in += 1;
    let mut dst: Mac = [0; 6];
    let mut src: Mac = [0; 6];
    dst.copy_from_slice(&frame[0..6]);
    src.copy_from_slice(&frame[6..12]);
    let is_group = |mac: &Mac| mac[0] & 1 == 1;
    if !is_group(&src) && (stats.macs.len() < MAX_LEARNED_MACS || stats.macs.contains_key(&src)) {
        stats.macs.insert(src, in_port);
    }
    let out = match stats.macs.get(&dst) {
        Some(&port) if !is_group(&dst) => {
            if port == in_port {
                Vec::new()
            } else {
                vec![port]
            }
        }
        _ => (0..ports).filter(|&p| p != in_port).collect(),
    };
    stats.frames_out += out.len() as u64;
    out
}

/// A running switch; stops when dropped.
pub struct Switch {
    addr: SocketAddr,
    ports: Vec<SocketAddr>,
    stats: Arc<Mutex<SwitchStats>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Switch {
    /// Start a switch with `ports` ports on 127.0.0.1.
    pub fn start(ports: usize) -> io::Result<Switch> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        socket.set_read_timeout(Some(Duration::from_millis(STOP_POLL_MS)))?;
        let addr = socket.local_addr()?;
        // Each port's address is one the OS just handed out; QEMU (or a test) binds it next.
        let port_addrs = (0..ports)
            .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr())
            .collect::<io::Result<Vec<_>>>()?;
        let stats = Arc::new(Mutex::new(SwitchStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ports, stats, stop) = (port_addrs.clone(), Arc::clone(&stats), Arc::clone(&stop));
            std::thread::spawn(move || relay(socket, ports, stats, stop))
        };
        Ok(Switch {
            addr,
            ports: port_addrs,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// The switch's own socket.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address port `index` must send from.
    pub fn port_addr(&self, index: usize) -> SocketAddr {
        self.ports[index]
    }

    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// The netdev that plugs a VM into port `index`.
    pub fn netdev(&self, index: usize) -> Netdev {
        Netdev::Dgram {
            local: SocketEndpoint::Inet(self.ports[index]),
            remote: SocketEndpoint::Inet(self.addr),
        }
    }

    pub fn stats(&self) -> SwitchStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn relay(
    socket: UdpSocket,
    ports: Vec<SocketAddr>,
    stats: Arc<Mutex<SwitchStats>>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; MAX_FRAME_BYTES];
    while !stop.load(Ordering::SeqCst) {
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            // ICMP port-unreachable from a port whose VM is not up yet surfaces here; ignore.
            Err(_) => continue,
        };
        let Ok(mut stats) = stats.lock() else { return };
        let Some(in_port) = ports.iter().position(|p| *p == from) else {
            stats.dropped += 1;
            continue;
        };
        let targets = route(&mut stats, ports.len(), in_port, &buf[..len]);
        drop(stats);
        for port in targets {
            // A port whose VM is not running simply loses the frame, like an unplugged cable.
            let _ = socket.send_to(&buf[..len], ports[port]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: Mac, src: Mac) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0u8; 28]);
        f
    }

    const A: Mac = [0x52, 0x54, 0, 0, 0, 1];
    const B: Mac = [0x52, 0x54, 0, 0, 0, 2];
    const BROADCAST: Mac = [0xff; 6];

    #[test]
    fn floods_unknown_and_broadcast_then_forwards_learned_unicast() {
        let mut stats = SwitchStats::default();
        assert_eq!(route(&mut stats, 3, 0, &frame(BROADCAST, A)), [1, 2]);
        assert_eq!(route(&mut stats, 3, 1, &frame(A, B)), [0]);
        assert_eq!(route(&mut stats, 3, 0, &frame(B, A)), [1]);
        assert_eq!(
            route(&mut stats, 3, 2, &frame([0x52, 0x54, 0, 0, 0, 9], A)),
            [0, 1]
        );
        assert_eq!(stats.macs.get(&A), Some(&2), "A moved to port 2");
        assert_eq!(
            route(&mut stats, 3, 2, &frame(A, B)),
            Vec::<usize>::new(),
            "same port: no echo"
        );
        assert!(route(&mut stats, 3, 0, &[0u8; 10]).is_empty());
        assert_eq!(stats.dropped, 1);
        assert_eq!(stats.frames_in, 5);
    }

    #[test]
    fn relays_datagrams_between_ports_and_ignores_strangers() {
        let switch = Switch::start(3).unwrap();
        let bind = |i: usize| {
            let s = UdpSocket::bind(switch.port_addr(i)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        };
        let (p0, p1, p2) = (bind(0), bind(1), bind(2));
        let mut buf = [0u8; 2048];
        p0.send_to(&frame(BROADCAST, A), switch.addr()).unwrap();
        for p in [&p1, &p2] {
            let (n, from) = p.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], frame(BROADCAST, A).as_slice());
            assert_eq!(from, switch.addr());
        }
        p1.send_to(&frame(A, B), switch.addr()).unwrap();
        let (n, _) = p0.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], frame(A, B).as_slice());
        p2.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(
            p2.recv_from(&mut buf).is_err(),
            "unicast to A must not reach port 2"
        );
        let stranger = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        stranger
            .send_to(&frame(BROADCAST, B), switch.addr())
            .unwrap();
        assert!(
            p2.recv_from(&mut buf).is_err(),
            "frames from non-ports are dropped"
        );
        let stats = switch.stats();
        assert_eq!(stats.macs.len(), 2);
        assert_eq!(stats.dropped, 1);
        assert_eq!(
            switch.netdev(1),
            Netdev::Dgram {
                local: SocketEndpoint::Inet(switch.port_addr(1)),
                remote: SocketEndpoint::Inet(switch.addr()),
            }
        );
    }
}
