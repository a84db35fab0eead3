//! A typed QEMU command line.
//!
//! Every device is data: a [`QemuCommand`] is built from typed parts and rendered to an argument
//! vector by [`QemuCommand::args`], so tests can check the exact command line and callers never
//! concatenate strings. The option syntax follows QEMU 7.2's `qemu-system-x86_64(1)` and
//! `docs/system/invocation.rst` (`-netdev stream`/`dgram` are new in 7.2).
//!
//! Invariants the builder keeps:
//! - the serial console (COM1) is always on QEMU's stdout (`-chardev stdio`), which the
//!   [`crate::Vm`] handle reads; there is no other display, monitor or default device;
//! - a guest reset never reboots (`-no-reboot`): a triple fault ends the run instead of looping.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;

/// The `isa-debug-exit` I/O port base cairn's kernel writes its exit code to (HELPERS.md).
pub const DEBUG_EXIT_IOBASE: u16 = 0xf4;
/// Width of the `isa-debug-exit` port in bytes.
pub const DEBUG_EXIT_IOSIZE: u16 = 4;
/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// The QEMU binary used unless the builder is told otherwise.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The emulated board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// i440FX + PIIX: the classic PC.
    Pc,
    /// Q35 + ICH9: PCIe with an ECAM window described by ACPI MCFG.
    Q35,
}

impl Machine {
    fn name(self) -> &'static str {
        match self {
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
        }
    }
}

/// How the CPU is executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation; works everywhere. Use with [`Cpu::Max`] (DESIGN.md).
    Tcg,
    /// Hardware virtualization through `/dev/kvm`. Use with [`Cpu::Host`].
    Kvm,
}

/// The CPU model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cpu {
    /// Every feature the accelerator can offer.
    Max,
    /// The host CPU (KVM only).
    Host,
    /// A named QEMU model, e.g. `EPYC-v4`.
    Named(String),
}

/// How a disk's bytes reach the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskInterface {
    /// virtio-blk on PCI: what cairn's kernel drives; SeaBIOS and OVMF boot from it too.
    Virtio,
    /// IDE (AHCI on q35): the most conservative choice for firmware.
    Ide,
}

/// A raw disk image file attached to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    pub interface: DiskInterface,
    pub read_only: bool,
    /// Writes go to a temporary overlay and are discarded when QEMU exits.
    pub snapshot: bool,
}

impl Drive {
    /// A writable raw image on virtio-blk.
    pub fn raw(path: impl Into<PathBuf>) -> Self {
        Drive {
            path: path.into(),
            interface: DiskInterface::Virtio,
            read_only: false,
            snapshot: false,
        }
    }
}

/// UEFI firmware as two flash chips: read-only code and a per-VM writable variable store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pflash {
    pub code: PathBuf,
    /// Must be a private copy: the firmware writes to it.
    pub vars: PathBuf,
}

/// One host-to-guest port forward of a user-mode network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostForward {
    pub protocol: Protocol,
    /// Port on the host's 127.0.0.1: nothing is exposed beyond loopback.
    pub host_port: u16,
    pub guest_port: u16,
}

/// A transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Where a stream or datagram netdev's socket lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketEndpoint {
    Inet(SocketAddr),
    Unix(PathBuf),
}

/// The host side of a guest network card. No variant needs root, a tap device or traffic off
/// the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Netdev {
    /// QEMU's user-mode (slirp) network: the guest gets 10.0.2.15 by DHCP and the listed ports
    /// are forwarded from 127.0.0.1.
    User { forwards: Vec<HostForward> },
    /// A user-mode network with `restrict=on`: the listed forwards (and QEMU's DHCP) work,
    /// but no packet from the guest's segment is routed to the host or beyond. Use it when a
    /// test injects arbitrary frames onto the segment (see [`Netdev::Hub`]).
    IsolatedUser { forwards: Vec<HostForward> },
    /// `-netdev stream`: an Ethernet frame stream over a TCP or unix socket; one side listens.
    Stream {
        endpoint: SocketEndpoint,
        server: bool,
    },
    /// `-netdev dgram`: one Ethernet frame per datagram between two sockets (a virtual switch
    /// on the host relays between VMs).
    Dgram {
        local: SocketEndpoint,
        remote: SocketEndpoint,
    },
    /// `netdev`, plus raw Ethernet frames a host test writes to the card: QEMU connects a
    /// socket chardev to `injector` (a listener on 127.0.0.1) and a `filter-redirector` puts
    /// every frame read from it (4-byte big-endian length, then the frame) on the netdev's
    /// path to the guest only; the netdev itself (e.g. a user-mode network) never sees them.
    Injected {
        netdev: Box<Netdev>,
        injector: SocketAddr,
    },
}

/// A guest network card and its host side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    pub netdev: Netdev,
    pub mac: MacAddr,
}

impl Nic {
    /// A user-mode (slirp) card whose only purpose is to let the host in: TCP
    /// `127.0.0.1:host_port` on the host reaches the guest's `guest_port`. The guest sees
    /// slirp's defaults (10.0.2.15/24, gateway 10.0.2.2); cairn's kernel gives a second card
    /// exactly that address without DHCP. A testnet node has this as its second card, beside
    /// its segment card, so its API is reachable while P2P stays on the segment.
    pub fn host_forward(mac: MacAddr, host_port: u16, guest_port: u16) -> Nic {
        Nic {
            netdev: Netdev::User {
                forwards: vec![HostForward {
                    protocol: Protocol::Tcp,
                    host_port,
                    guest_port,
                }],
            },
            mac,
        }
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered unicast address (QEMU's 52:54:00 prefix) numbered `index`.
    pub fn local(index: u16) -> Self {
        let [hi, lo] = index.to_be_bytes();
        MacAddr([0x52, 0x54, 0x00, 0xca, hi, lo])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// How the guest is started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// Direct kernel boot: QEMU loads an ELF with a PVH note (`-kernel`), with an optional
    /// command line and initial ramdisk / boot module.
    Kernel {
        elf: PathBuf,
        append: Option<String>,
        initrd: Option<PathBuf>,
    },
    /// The firmware boots from the first disk (BIOS via SeaBIOS, or UEFI with [`Pflash`]).
    Disk,
}

/// A QEMU invocation for one cairn VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuCommand {
    pub binary: PathBuf,
    pub machine: Machine,
    pub accel: Accel,
    pub cpu: Cpu,
    pub smp: u16,
    pub memory_mib: u32,
    pub boot: Boot,
    pub firmware: Option<Pflash>,
    pub drives: Vec<Drive>,
    pub nics: Vec<Nic>,
    /// Attach `isa-debug-exit` at [`DEBUG_EXIT_IOBASE`] so the guest can end the run with a code.
    pub debug_exit: bool,
    /// A virtio entropy source.
    pub virtio_rng: bool,
    /// Every virtio device with `iommu_platform=on`: it offers `VIRTIO_F_ACCESS_PLATFORM` and
    /// requires the driver to accept it, as QEMU makes the devices of an SEV guest do.
    pub access_platform: bool,
    /// Extra arguments appended verbatim, for experiments; prefer adding a typed field.
    pub extra: Vec<String>,
}

impl QemuCommand {
    /// Direct (PVH) boot of a kernel ELF with the defaults cairn tests use.
    pub fn pvh(elf: impl Into<PathBuf>) -> Self {
        Self::new(Boot::Kernel {
            elf: elf.into(),
            append: None,
            initrd: None,
        })
    }

    /// Firmware boot from a disk image (SeaBIOS unless [`QemuCommand::uefi`] is called).
    pub fn disk(image: impl Into<PathBuf>) -> Self {
        let mut cmd = Self::new(Boot::Disk);
        cmd.drives.push(Drive::raw(image));
        cmd
    }

    fn new(boot: Boot) -> Self {
        QemuCommand {
            binary: PathBuf::from(QEMU_BINARY),
            machine: Machine::Q35,
            accel: Accel::Tcg,
            cpu: Cpu::Max,
            smp: 1,
            memory_mib: DEFAULT_MEMORY_MIB,
            boot,
            firmware: None,
            drives: Vec::new(),
            nics: Vec::new(),
            debug_exit: true,
            virtio_rng: false,
            access_platform: false,
            extra: Vec::new(),
        }
    }

    pub fn machine(mut self, machine: Machine) -> Self {
        self.machine = machine;
        self
    }

    /// Choose the accelerator and the CPU model that goes with it.
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self.cpu = match accel {
            Accel::Tcg => Cpu::Max,
            Accel::Kvm => Cpu::Host,
        };
        self
    }

    pub fn cpu(mut self, cpu: Cpu) -> Self {
        self.cpu = cpu;
        self
    }

    pub fn smp(mut self, cpus: u16) -> Self {
        self.smp = cpus;
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// The kernel command line (direct boot only; ignored for disk boot).
    pub fn append(mut self, cmdline: impl Into<String>) -> Self {
        if let Boot::Kernel { append, .. } = &mut self.boot {
            *append = Some(cmdline.into());
        }
        self
    }

    /// A boot module / initial ramdisk (direct boot only).
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        if let Boot::Kernel { initrd, .. } = &mut self.boot {
            *initrd = Some(path.into());
        }
        self
    }

    /// Boot through UEFI firmware (OVMF) instead of SeaBIOS.
    pub fn uefi(mut self, firmware: Pflash) -> Self {
        self.firmware = Some(firmware);
        self
    }

    /// Every virtio device with `iommu_platform=on`, as under SEV (the field's docs).
    pub fn access_platform(mut self) -> Self {
        self.access_platform = true;
        self
    }

    pub fn drive(mut self, drive: Drive) -> Self {
        self.drives.push(drive);
        self
    }

    pub fn nic(mut self, nic: Nic) -> Self {
        self.nics.push(nic);
        self
    }

    pub fn debug_exit(mut self, on: bool) -> Self {
        self.debug_exit = on;
        self
    }

    pub fn virtio_rng(mut self, on: bool) -> Self {
        self.virtio_rng = on;
        self
    }

    /// The argument vector, without the binary.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let machine = format!("{},accel={}", self.machine.name(), accel_name(self.accel));
        kv(&mut a, "-machine", machine);
        kv(&mut a, "-cpu", cpu_name(&self.cpu));
        kv(&mut a, "-smp", self.smp.to_string());
        kv(&mut a, "-m", format!("{}M", self.memory_mib));
        for flag in ["-nodefaults", "-no-user-config", "-no-reboot"] {
            a.push(flag.to_string());
        }
        kv(&mut a, "-display", "none");
        kv(&mut a, "-monitor", "none");
        kv(&mut a, "-chardev", "stdio,id=com1,signal=off");
        kv(&mut a, "-serial", "chardev:com1");
        self.boot_args(&mut a);
        let platform = if self.access_platform {
            ",disable-legacy=on,iommu_platform=on"
        } else {
            ""
        };
        for (i, drive) in self.drives.iter().enumerate() {
            a.push("-drive".into());
            if self.access_platform && drive.interface == DiskInterface::Virtio {
                // The device's properties need an explicit -device for the drive.
                a.push(
                    format!("{},id=drive{i}", drive_arg(i, drive)).replace("if=virtio", "if=none"),
                );
                a.push("-device".into());
                a.push(format!("virtio-blk-pci,drive=drive{i}{platform}"));
            } else {
                a.push(drive_arg(i, drive));
            }
        }
        for (i, nic) in self.nics.iter().enumerate() {
            a.push("-netdev".into());
            a.push(netdev_arg(&format!("net{i}"), &nic.netdev));
            if let Netdev::Injected { injector, .. } = &nic.netdev {
                a.push("-chardev".into());
                a.push(format!(
                    "socket,id=net{i}inj,host={},port={},server=off",
                    injector.ip(),
                    injector.port()
                ));
                a.push("-object".into());
                a.push(format!(
                    "filter-redirector,id=net{i}injf,netdev=net{i},queue=tx,indev=net{i}inj"
                ));
            }
            a.push("-device".into());
            a.push(format!(
                "virtio-net-pci,netdev=net{i},mac={}{platform}",
                nic.mac
            ));
        }
        if self.debug_exit {
            a.push("-device".into());
            a.push(format!(
                "isa-debug-exit,iobase={:#x},iosize={:#x}",
                DEBUG_EXIT_IOBASE, DEBUG_EXIT_IOSIZE
            ));
        }
        if self.virtio_rng {
            a.push("-device".into());
            a.push(format!("virtio-rng-pci{platform}"));
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    fn boot_args(&self, a: &mut Vec<String>) {
        if let Some(fw) = &self.firmware {
            a.push("-drive".into());
            a.push(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                qemu_path(&fw.code)
            ));
            a.push("-drive".into());
            a.push(format!(
                "if=pflash,format=raw,unit=1,file={}",
                qemu_path(&fw.vars)
            ));
        }
        match &self.boot {
            Boot::Kernel {
                elf,
                append,
                initrd,
            } => {
                a.push("-kernel".into());
                a.push(elf.display().to_string());
                if let Some(cmdline) = append {
                    a.push("-append".into());
                    a.push(cmdline.clone());
                }
                if let Some(path) = initrd {
                    a.push("-initrd".into());
                    a.push(path.display().to_string());
                }
            }
            Boot::Disk => {
                a.push("-boot".into());
                a.push("order=c,strict=on".into());
            }
        }
    }

    /// A `std::process::Command` ready to spawn (stdio is set up by [`crate::Vm::spawn`]).
    pub fn to_command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.args());
        cmd
    }

    /// The command line as a shell would show it, for logs and error messages.
    pub fn display(&self) -> String {
        let mut s = self.binary.display().to_string();
        for arg in self.args() {
            s.push(' ');
            if arg.contains([' ', '"', '\'']) {
                s.push('\'');
                s.push_str(&arg.replace('\'', r"'\''"));
                s.push('\'');
            } else {
                s.push_str(&arg);
            }
        }
        s
    }
}

fn kv(args: &mut Vec<String>, key: &str, value: impl Into<String>) {
    args.push(key.to_string());
    args.push(value.into());
}

fn accel_name(accel: Accel) -> &'static str {
    match accel {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
    }
}

fn cpu_name(cpu: &Cpu) -> &str {
    match cpu {
        Cpu::Max => "max",
        Cpu::Host => "host",
        Cpu::Named(name) => name,
    }
}

/// QEMU's `-drive` option splits on commas; a literal comma in a value is written twice.
fn qemu_path(path: &std::path::Path) -> String {
    path.display().to_string().replace(',', ",,")
}

fn drive_arg(index: usize, drive: &Drive) -> String {
    let interface = match drive.interface {
        DiskInterface::Virtio => "virtio",
        DiskInterface::Ide => "ide",
    };
    let mut s = format!(
        "file={},format=raw,if={interface},index={index}",
        qemu_path(&drive.path)
    );
    if drive.read_only {
        s.push_str(",readonly=on");
    }
    if drive.snapshot {
        s.push_str(",snapshot=on");
    }
    s
}

fn endpoint_arg(prefix: &str, endpoint: &SocketEndpoint) -> String {
    match endpoint {
        SocketEndpoint::Inet(addr) => format!(
            "{prefix}.type=inet,{prefix}.host={},{prefix}.port={}",
            addr.ip(),
            addr.port()
        ),
        SocketEndpoint::Unix(path) => {
            format!("{prefix}.type=unix,{prefix}.path={}", qemu_path(path))
        }
    }
}

fn netdev_arg(id: &str, netdev: &Netdev) -> String {
    match netdev {
        Netdev::User { forwards } | Netdev::IsolatedUser { forwards } => {
            let mut s = format!("user,id={id}");
            if matches!(netdev, Netdev::IsolatedUser { .. }) {
                s.push_str(",restrict=on");
            }
            for fwd in forwards {
                s.push_str(&format!(
                    ",hostfwd={}:{}:{}-:{}",
                    fwd.protocol.name(),
                    Ipv4Addr::LOCALHOST,
                    fwd.host_port,
                    fwd.guest_port
                ));
            }
            s
        }
        Netdev::Stream { endpoint, server } => format!(
            "stream,id={id},server={},{}",
            if *server { "on" } else { "off" },
            endpoint_arg("addr", endpoint)
        ),
        Netdev::Dgram { local, remote } => format!(
            "dgram,id={id},{},{}",
            endpoint_arg("local", local),
            endpoint_arg("remote", remote)
        ),
        // The injector's chardev and filter are rendered after the netdev.
        Netdev::Injected { netdev, .. } => netdev_arg(id, netdev),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(args: &[String], key: &str) -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == key)
            .map(|w| w[1].clone())
            .collect()
    }

    #[test]
    fn pvh_boot_has_kernel_cmdline_serial_and_debug_exit() {
        let args = QemuCommand::pvh("/t/kernel.elf")
            .append("cairn.test=panic x=1")
            .args();
        assert_eq!(pairs(&args, "-kernel"), ["/t/kernel.elf"]);
        assert_eq!(pairs(&args, "-append"), ["cairn.test=panic x=1"]);
        assert_eq!(pairs(&args, "-machine"), ["q35,accel=tcg"]);
        assert_eq!(pairs(&args, "-cpu"), ["max"]);
        assert_eq!(pairs(&args, "-m"), ["512M"]);
        assert_eq!(pairs(&args, "-serial"), ["chardev:com1"]);
        assert_eq!(pairs(&args, "-chardev"), ["stdio,id=com1,signal=off"]);
        assert_eq!(
            pairs(&args, "-device"),
            ["isa-debug-exit,iobase=0xf4,iosize=0x4"]
        );
        assert!(args.iter().any(|a| a == "-no-reboot"));
        assert!(args.iter().any(|a| a == "-nodefaults"));
        assert!(pairs(&args, "-boot").is_empty());
    }

    #[test]
    fn initrd_and_append_are_ignored_for_disk_boot() {
        let args = QemuCommand::disk("/d/disk.img")
            .append("ignored")
            .initrd("/x")
            .args();
        assert!(pairs(&args, "-append").is_empty());
        assert!(pairs(&args, "-initrd").is_empty());
        assert_eq!(pairs(&args, "-boot"), ["order=c,strict=on"]);
        assert_eq!(
            pairs(&args, "-drive"),
            ["file=/d/disk.img,format=raw,if=virtio,index=0"]
        );
    }

    #[test]
    fn pvh_initrd() {
        let args = QemuCommand::pvh("/k").initrd("/cfg.bin").args();
        assert_eq!(pairs(&args, "-initrd"), ["/cfg.bin"]);
    }

    #[test]
    fn uefi_firmware_is_two_pflash_drives_before_the_disk() {
        let fw = Pflash {
            code: "/fw/CODE.fd".into(),
            vars: "/run/VARS,1.fd".into(),
        };
        let args = QemuCommand::disk("/d/disk.img").uefi(fw).args();
        assert_eq!(
            pairs(&args, "-drive"),
            [
                "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd",
                "if=pflash,format=raw,unit=1,file=/run/VARS,,1.fd",
                "file=/d/disk.img,format=raw,if=virtio,index=0",
            ]
        );
    }

    #[test]
    fn access_platform_puts_every_virtio_device_behind_the_platform() {
        let args = QemuCommand::pvh("/k")
            .drive(Drive::raw("/b.img"))
            .virtio_rng(true)
            .access_platform()
            .args();
        assert_eq!(
            pairs(&args, "-drive"),
            ["file=/b.img,format=raw,if=none,index=0,id=drive0"]
        );
        assert_eq!(
            pairs(&args, "-device"),
            [
                "virtio-blk-pci,drive=drive0,disable-legacy=on,iommu_platform=on",
                "isa-debug-exit,iobase=0xf4,iosize=0x4",
                "virtio-rng-pci,disable-legacy=on,iommu_platform=on",
            ]
        );
    }

    #[test]
    fn drives_flags() {
        let drive = Drive {
            path: "/a.img".into(),
            interface: DiskInterface::Ide,
            read_only: true,
            snapshot: true,
        };
        let args = QemuCommand::pvh("/k")
            .drive(drive)
            .drive(Drive::raw("/b.img"))
            .args();
        assert_eq!(
            pairs(&args, "-drive"),
            [
                "file=/a.img,format=raw,if=ide,index=0,readonly=on,snapshot=on",
                "file=/b.img,format=raw,if=virtio,index=1",
            ]
        );
    }

    #[test]
    fn user_net_forwards_loopback_ports_only() {
        let nic = Nic {
            netdev: Netdev::User {
                forwards: vec![
                    HostForward {
                        protocol: Protocol::Tcp,
                        host_port: 18080,
                        guest_port: 8080,
                    },
                    HostForward {
                        protocol: Protocol::Udp,
                        host_port: 1234,
                        guest_port: 53,
                    },
                ],
            },
            mac: MacAddr::local(1),
        };
        let args = QemuCommand::pvh("/k").nic(nic).args();
        assert_eq!(
            pairs(&args, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:18080-:8080,hostfwd=udp:127.0.0.1:1234-:53"]
        );
        assert_eq!(
            pairs(&args, "-device")[0],
            "virtio-net-pci,netdev=net0,mac=52:54:00:ca:00:01"
        );
    }

    #[test]
    fn stream_and_dgram_netdevs() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let cmd = QemuCommand::pvh("/k")
            .nic(Nic {
                netdev: Netdev::Stream {
                    endpoint: SocketEndpoint::Unix("/s/sw.sock".into()),
                    server: false,
                },
                mac: MacAddr::local(2),
            })
            .nic(Nic {
                netdev: Netdev::Dgram {
                    local: SocketEndpoint::Inet(a),
                    remote: SocketEndpoint::Inet(b),
                },
                mac: MacAddr::local(0x1ff),
            });
        let args = cmd.args();
        assert_eq!(
            pairs(&args, "-netdev"),
            [
                "stream,id=net0,server=off,addr.type=unix,addr.path=/s/sw.sock",
                "dgram,id=net1,local.type=inet,local.host=127.0.0.1,local.port=4000,\
                 remote.type=inet,remote.host=127.0.0.1,remote.port=4001",
            ]
        );
        assert_eq!(
            pairs(&args, "-device")[1],
            "virtio-net-pci,netdev=net1,mac=52:54:00:ca:01:ff"
        );
    }

    #[test]
    fn testnet_node_has_segment_card_then_host_forward_card() {
        let segment = SocketAddr::from(([127, 0, 0, 1], 5000));
        let switch = SocketAddr::from(([127, 0, 0, 1], 5001));
        let args = QemuCommand::pvh("/k")
            .nic(Nic {
                netdev: Netdev::Dgram {
                    local: SocketEndpoint::Inet(segment),
                    remote: SocketEndpoint::Inet(switch),
                },
                mac: MacAddr::local(0x200),
            })
            .nic(Nic::host_forward(MacAddr::local(0x300), 28080, 8080))
            .args();
        let netdevs = pairs(&args, "-netdev");
        assert!(netdevs[0].starts_with("dgram,id=net0,"));
        assert_eq!(netdevs[1], "user,id=net1,hostfwd=tcp:127.0.0.1:28080-:8080");
        assert_eq!(
            pairs(&args, "-device")[..2],
            [
                "virtio-net-pci,netdev=net0,mac=52:54:00:ca:02:00",
                "virtio-net-pci,netdev=net1,mac=52:54:00:ca:03:00"
            ]
        );
    }

    #[test]
    fn injected_frames_enter_through_a_redirector_on_the_guest_path() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let nic = Nic {
            netdev: Netdev::Injected {
                netdev: Box::new(Netdev::IsolatedUser { forwards: vec![] }),
                injector: a,
            },
            mac: MacAddr::local(1),
        };
        let args = QemuCommand::pvh("/k").nic(nic).args();
        assert_eq!(pairs(&args, "-netdev"), ["user,id=net0,restrict=on"]);
        assert_eq!(
            pairs(&args, "-chardev")[1],
            "socket,id=net0inj,host=127.0.0.1,port=4000,server=off"
        );
        assert_eq!(
            pairs(&args, "-object"),
            ["filter-redirector,id=net0injf,netdev=net0,queue=tx,indev=net0inj"]
        );
        assert_eq!(
            pairs(&args, "-device")[0],
            "virtio-net-pci,netdev=net0,mac=52:54:00:ca:00:01"
        );
    }

    #[test]
    fn kvm_selects_host_cpu_and_options() {
        let args = QemuCommand::pvh("/k")
            .accel(Accel::Kvm)
            .smp(2)
            .memory_mib(2048)
            .machine(Machine::Pc)
            .debug_exit(false)
            .virtio_rng(true)
            .args();
        assert_eq!(pairs(&args, "-machine"), ["pc,accel=kvm"]);
        assert_eq!(pairs(&args, "-cpu"), ["host"]);
        assert_eq!(pairs(&args, "-smp"), ["2"]);
        assert_eq!(pairs(&args, "-m"), ["2048M"]);
        assert_eq!(pairs(&args, "-device"), ["virtio-rng-pci"]);
    }

    #[test]
    fn display_quotes_arguments_with_spaces() {
        let shown = QemuCommand::pvh("/k").append("a b").display();
        assert!(shown.starts_with("qemu-system-x86_64 -machine q35,accel=tcg "));
        assert!(shown.contains(" -append 'a b'"));
    }
}
