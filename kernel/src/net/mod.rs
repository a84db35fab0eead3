//! The network stack: smoltcp on virtio-net, addressed from the kernel command line
//! (`cairn.ip=10.0.0.2/24 cairn.gw=10.0.0.1`, optional `cairn.ip6=fd00::2/64`) or by DHCPv4,
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
use boot::BootInfo;
use core::str::FromStr;
use device::NetDevice;
use services::Services;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr, Ipv6Cidr};

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
        let gateway = parse("cairn.gw")
            .map(|s| Ipv4Address::from_str(s).map_err(|_| NetConfigError::BadGateway(s.into())))
            .transpose()?;
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

/// The interface, its device, its sockets and the services.
pub struct Network {
    iface: Interface,
    device: NetDevice,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    services: Services,
    table: socket::SocketTable,
    echo: Option<echo::TcpEcho>,
    pub mac: EthernetAddress,
    pub addressing: Addressing,
}

fn now() -> Instant {
    Instant::from_micros((crate::arch::clock::now_ns() / 1_000) as i64)
}

impl Network {
    /// Brings the interface up on `net` with `config` (DHCPv4 when it has no IPv4 address).
    pub fn new(net: VirtioNet, config: NetConfig, random_seed: u64) -> Network {
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
        let services = Services::new(&mut sockets);
        let mut network = Network {
            table: socket::SocketTable::default(),
            echo: None,
            iface,
            device,
            sockets,
            dhcp,
            services,
            mac,
            addressing,
        };
        match echo::TcpEcho::new(&mut network) {
            Ok(e) => network.echo = Some(e),
            Err(e) => log::warn!("tcp echo: {e}"),
        }
        network
    }

    /// Stops the `GET /health` service so that the node runtime can listen on its port.
    pub fn stop_http_service(&mut self) {
        self.services.stop_http(&mut self.sockets);
    }

    /// The interface's IPv4 address, once it has one.
    pub fn ipv4(&self) -> Option<Ipv4Cidr> {
        self.iface.ip_addrs().iter().find_map(|a| match a {
            IpCidr::Ipv4(v4) => Some(*v4),
            _ => None,
        })
    }

    /// One round: device ↔ smoltcp, DHCP, services. Returns true when anything happened.
    pub fn poll(&mut self) -> bool {
        let frames_before = self.device.counters();
        let changed = self.iface.poll(now(), &mut self.device, &mut self.sockets);
        self.poll_dhcp();
        let ip = self.ipv4();
        self.services.counters_mut().tcp_sockets = self.table.tcp_count as u64;
        let served = self
            .services
            .poll(&mut self.sockets, ip, self.mac, self.device.counters());
        let echoed = match self.echo.take() {
            Some(mut echo) => {
                let moved = echo.poll(self);
                self.echo = Some(echo);
                moved
            }
            None => false,
        };
        self.reap_closed();
        changed == PollResult::SocketStateChanged
            || echoed
            || served
            || frames_before != self.device.counters()
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
            }
            Some(dhcpv4::Event::Deconfigured) => {
                log::warn!("dhcp: lease lost");
                self.iface
                    .update_ip_addrs(|addrs| addrs.retain(|a| !matches!(a, IpCidr::Ipv4(_))));
                self.iface.routes_mut().remove_default_ipv4_route();
            }
        }
    }
}
