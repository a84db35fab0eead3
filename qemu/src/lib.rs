//! `qemu`: cairn's VMs as typed Rust (STYLE.md "QEMU is driven from typed Rust").
//!
//! - [`QemuCommand`]: the command line as data (machine, CPU, memory, direct PVH boot with
//!   `-kernel`/`-append`/`-initrd`, raw disk images, OVMF as pflash, `isa-debug-exit`, the
//!   serial console, user-mode networking with 127.0.0.1 port forwards, and stream/dgram
//!   netdevs for multi-VM networks).
//! - [`Vm`]: a running guest: console captured to a file and streamed to the caller, waiting for
//!   a console line with a timeout, an overall time limit on every run, kill on drop.
//! - [`ExitOutcome`]: the explicit `isa-debug-exit` code map (33 pass, 35 fail, 0 power-off).
//! - [`Firmware`]: where the host's OVMF files are.
//! - [`Switch`]: a virtual Ethernet switch joining VMs' `dgram` netdevs into one L2 segment
//!   on loopback, for testnets.

mod command;
mod exit;
mod firmware;
mod pattern;
mod switch;
mod vm;

pub use command::*;
pub use exit::*;
pub use firmware::*;
pub use pattern::LinePattern;
pub use switch::{route, Mac, Switch, SwitchStats, MAX_FRAME_BYTES, MAX_LEARNED_MACS};
pub use vm::*;

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it), for a host forward.
pub fn free_local_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
