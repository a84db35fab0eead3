//! The network stack: smoltcp on every virtio-net card (one `Interface` per card), the
//! primary card addressed by the node configuration (with `cairn.gw=` from the command line
//! as its default route, if given) or from the kernel command line (`cairn.ip=10.0.0.2/24
//! cairn.gw=10.0.0.1`, optional `cairn.ip6=fd00::2/64`) or by DHCPv4, a second card from
//! `cairn.ip2=`/`cairn.gw2=` or slirp's defaults (see [`NetConfig::second_from_boot`]),
//! the services that prove it (TCP/UDP echo on port 7, `GET /health` on port 8080), the
//! socket layer the runtime uses (`socket`), and the optional peer check client built on it
//! (`cairn.net-check=…`, see `check`).
//!
//! The stack is polled (interrupts stay masked): [`Network::poll`] moves frames between the
//! device and smoltcp and runs the services; the caller loops on it.

pub mod check;
mod device;
mod echo;
mod sanity;
mod services;
pub mod socket;

use crate::drivers::virtio::VirtioNet;
use alloc::vec;
use alloc::vec::Vec;
use boot::BootInfo;
use core::str::FromStr;
use device::NetDevice;
use services::Services;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv4Cidr, Ipv6Cidr,
};

/// How the interface got its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    Static,
    Dhcp,
}

/// Why the command line's network options were rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetConfigError {
    BadIpv4(alloc::string::String),
    BadGateway(alloc::string::String),
    BadIpv6(alloc::string::String),
}

impl core::fmt::Display for NetConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NetConfigError::BadIpv4(s) => write!(f, "cairn.ip={s}: expected a.b.c.d/len"),
            NetConfigError::BadGateway(s) => write!(f, "cairn.gw={s}: expected a.b.c.d"),
            NetConfigError::BadIpv6(s) => write!(f, "cairn.ip6={s}: expected an IPv6 CIDR"),
        }
    }
}

/// The addressing the command line asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetConfig {
    pub ipv4: Option<Ipv4Cidr>,
    pub gateway: Option<Ipv4Address>,
    pub ipv6: Option<Ipv6Cidr>,
}

impl NetConfig {
    pub fn from_boot(info: &BootInfo) -> Result<NetConfig, NetConfigError> {
        let parse = |key: &str| info.option(key).filter(|v| !v.is_empty());
        let ipv4 = parse("cairn.ip")
            .map(|s| Ipv4Cidr::from_str(s).map_err(|_| NetConfigError::BadIpv4(s.into())))
            .transpose()?;
        let gateway = Self::gateway_from_boot(info)?;
        let ipv6 = parse("cairn.ip6")
            .map(|s| Ipv6Cidr::from_str(s).map_err(|_| NetConfigError::BadIpv6(s.into())))
            .transpose()?;
        Ok(NetConfig {
            ipv4,
            gateway,
            ipv6,
        })
    }
}

impl NetConfig {
    /// The primary card's default route from `cairn.gw=a.b.c.d`, if the command line gives
    /// one: with `cairn.ip` when the command line addresses the card, or beside the node
    /// configuration's address (a data-centre node whose clients are off its segment).
    pub fn gateway_from_boot(info: &BootInfo) -> Result<Option<Ipv4Address>, NetConfigError> {
        info.option("cairn.gw")
            .filter(|v| !v.is_empty())
            .map(|s| Ipv4Address::from_str(s).map_err(|_| NetConfigError::BadGateway(s.into())))
            .transpose()
    }
}

/// IPv4 address of a second network card when the command line gives none: QEMU user-mode
/// networking's (slirp's) default guest address, `10.0.2.15/24`.
pub const SECOND_NIC_IPV4: ([u8; 4], u8) = ([10, 0, 2, 15], 24);
/// Gateway of a second network card when the command line gives none: slirp's host, 10.0.2.2.
pub const SECOND_NIC_GATEWAY: [u8; 4] = [10, 0, 2, 2];

impl NetConfig {
    /// The addressing of the second card (the host-access NIC of a testnet node):
    /// `cairn.ip2=a.b.c.d/len` and `cairn.gw2=a.b.c.d`, else slirp's defaults
    /// ([`SECOND_NIC_IPV4`], [`SECOND_NIC_GATEWAY`]), which need no DHCP round trip.
    pub fn second_from_boot(info: &BootInfo) -> Result<NetConfig, NetConfigError> {
        let parse = |key: &str| info.option(key).filter(|v| !v.is_empty());
        let (ip, len) = SECOND_NIC_IPV4;
        let ipv4 = match parse("cairn.ip2") {
            Some(s) => Ipv4Cidr::from_str(s).map_err(|_| NetConfigError::BadIpv4(s.into()))?,
            None => Ipv4Cidr::new(Ipv4Address::from(ip), len),
        };
        let gateway = match parse("cairn.gw2") {
            Some(s) => {
                Ipv4Address::from_str(s).map_err(|_| NetConfigError::BadGateway(s.into()))?
            }
            None => Ipv4Address::from(SECOND_NIC_GATEWAY),
        };
        Ok(NetConfig {
            ipv4: Some(ipv4),
            gateway: Some(gateway),
            ipv6: None,
        })
    }
}

/// One network card: its smoltcp interface, device and socket set. Each card has its own
/// socket set, so a socket only ever sends through the card its connection arrived on.
pub struct Nic {
    iface: Interface,
    device: NetDevice,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    /// The IPv4 default gateway (configured or from DHCP), for choosing a card to dial from.
    gateway: Option<Ipv4Address>,
    pub mac: EthernetAddress,
    pub addressing: Addressing,
}

/// The network cards (the first is the primary one), the services and the socket layer.
///
/// The services (UDP echo, `GET /health`) and UDP sockets live on the primary card; TCP
/// listeners listen on every card or on one ([`Network::tcp_listen_on`]); an outgoing
/// connection leaves through the card whose subnet holds the remote address, else the first
/// card with a gateway, else the primary one.
pub struct Network {
    nics: Vec<Nic>,
    services: Services,
    table: socket::SocketTable,
    echo: Option<echo::TcpEcho>,
}

fn now() -> Instant {
    Instant::from_micros((crate::arch::clock::now_ns() / 1_000) as i64)
}

impl Nic {
    fn new(net: VirtioNet, config: NetConfig, random_seed: u64) -> Nic {
        let mut device = NetDevice::new(net);
        let mac = EthernetAddress(device.mac_address());
        let mut iface_config = Config::new(HardwareAddress::Ethernet(mac));
        iface_config.random_seed = random_seed;
        let mut iface = Interface::new(iface_config, &mut device, now());
        let mut sockets = SocketSet::new(vec![]);
        iface.update_ip_addrs(|addrs| {
            if let Some(v4) = config.ipv4 {
                let _ = addrs.push(IpCidr::Ipv4(v4));
            }
            if let Some(v6) = config.ipv6 {
                let _ = addrs.push(IpCidr::Ipv6(v6));
            }
        });
        if let Some(gw) = config.gateway {
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
        let (dhcp, addressing) = match config.ipv4 {
            Some(_) => (None, Addressing::Static),
            None => (Some(sockets.add(dhcpv4::Socket::new())), Addressing::Dhcp),
        };
        Nic {
            iface,
            device,
            sockets,
            dhcp,
            gateway: config.gateway,
            mac,
            addressing,
        }
    }

    /// The card's IPv4 address, once it has one.
    pub fn ipv4(&self) -> Option<Ipv4Cidr> {
        self.iface.ip_addrs().iter().find_map(|a| match a {
            IpCidr::Ipv4(v4) => Some(*v4),
            _ => None,
        })
    }

    /// The card's first IPv6 address, if it has one.
    pub fn ipv6(&self) -> Option<Ipv6Cidr> {
        self.iface.ip_addrs().iter().find_map(|a| match a {
            IpCidr::Ipv6(v6) => Some(*v6),
            _ => None,
        })
    }

    /// The card's IPv4 default gateway, if it has one.
    pub fn gateway(&self) -> Option<Ipv4Address> {
        self.gateway
    }

    /// True when `addr` is on one of the card's own subnets.
    fn on_link(&self, addr: IpAddress) -> bool {
        self.iface
            .ip_addrs()
            .iter()
            .any(|cidr| cidr.contains_addr(&addr))
    }

    /// Device ↔ smoltcp and DHCP; true when anything happened.
    fn poll(&mut self) -> bool {
        let frames_before = self.device.counters();
        let changed = self.iface.poll(now(), &mut self.device, &mut self.sockets);
        self.poll_dhcp();
        changed == PollResult::SocketStateChanged || frames_before != self.device.counters()
    }

    fn poll_dhcp(&mut self) {
        let Some(handle) = self.dhcp else {
            return;
        };
        let event = self.sockets.get_mut::<dhcpv4::Socket>(handle).poll();
        match event {
            None => {}
            Some(dhcpv4::Event::Configured(c)) => {
                log::info!("dhcp: address {} router {:?}", c.address, c.router);
                self.iface.update_ip_addrs(|addrs| {
                    addrs.retain(|a| !matches!(a, IpCidr::Ipv4(_)));
                    let _ = addrs.push(IpCidr::Ipv4(c.address));
                });
                match c.router {
                    Some(r) => {
                        let _ = self.iface.routes_mut().add_default_ipv4_route(r);
                    }
                    None => {
                        self.iface.routes_mut().remove_default_ipv4_route();
                    }
                }
                self.gateway = c.router;
            }
            Some(dhcpv4::Event::Deconfigured) => {
                log::warn!("dhcp: lease lost");
                self.iface
                    .update_ip_addrs(|addrs| addrs.retain(|a| !matches!(a, IpCidr::Ipv4(_))));
                self.iface.routes_mut().remove_default_ipv4_route();
                self.gateway = None;
            }
        }
    }
}

impl Network {
    /// Brings up one interface per card, each with its configuration (DHCPv4 when it has no
    /// IPv4 address). The first card is the primary one. `cards` must not be empty.
    pub fn new(cards: Vec<(VirtioNet, NetConfig)>, random_seed: u64) -> Network {
        assert!(!cards.is_empty(), "a network needs a card");
        let mut nics: Vec<Nic> = cards
            .into_iter()
            .enumerate()
            .map(|(i, (net, config))| Nic::new(net, config, random_seed.wrapping_add(i as u64)))
            .collect();
        let services = Services::new(&mut nics[0].sockets);
        let mut network = Network {
            nics,
            services,
            table: socket::SocketTable::default(),
            echo: None,
        };
        match echo::TcpEcho::new(&mut network) {
            Ok(e) => network.echo = Some(e),
            Err(e) => log::warn!("tcp echo: {e}"),
        }
        network
    }

    /// The cards, primary first.
    pub fn nics(&self) -> &[Nic] {
        &self.nics
    }

    /// Stops the `GET /health` service so that the node runtime can listen on its port.
    pub fn stop_http_service(&mut self) {
        self.services.stop_http(&mut self.nics[0].sockets);
    }

    /// The card an outgoing connection to `addr` leaves through: the first whose subnet holds
    /// `addr`, else the first with a gateway, else the primary.
    fn nic_for(&self, addr: IpAddress) -> usize {
        self.nics
            .iter()
            .position(|n| n.on_link(addr))
            .or_else(|| self.nics.iter().position(|n| n.gateway.is_some()))
            .unwrap_or(0)
    }

    /// One round: device ↔ smoltcp and DHCP on every card, services. Returns true when
    /// anything happened.
    pub fn poll(&mut self) -> bool {
        let mut changed = false;
        for nic in self.nics.iter_mut() {
            changed |= nic.poll();
        }
        self.services.counters_mut().tcp_sockets = self.table.tcp_count as u64;
        let primary = &mut self.nics[0];
        let ip = primary.ipv4();
        let served = self.services.poll(
            &mut primary.sockets,
            ip,
            primary.mac,
            primary.device.counters(),
        );
        let echoed = match self.echo.take() {
            Some(mut echo) => {
                let moved = echo.poll(self);
                self.echo = Some(echo);
                moved
            }
            None => false,
        };
        self.reap_closed();
        changed || echoed || served
    }
}
