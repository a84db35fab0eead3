//! `cargo xtask bench net [--mib N] [--runs N]`: TCP throughput out of the guest, beside host
//! loopback TCP measured in the same run.
//!
//! - baseline: host loopback TCP between two threads, one writing N MiB, the other reading;
//! - guest→host: the kernel's `cairn.net-bench=source` (kernel/src/net_bench.rs) streams N MiB
//!   to each host connection through QEMU's user-mode network and a 127.0.0.1 forward; the
//!   host times connect → end of stream;
//! - VM→VM: two VMs on the qemu crate's switch; one is the source, the other
//!   (`cairn.net-bench=sink:<ip>`) reads the stream and prints what it measured with its TSC
//!   clock (checked against the host's by the kernel-tests step).

use crate::boot_paths::{accel, failure_report, spawn_quiet, READY_LINE};
use crate::{kernel_build, option_value, Paths};
use qemu::{HostForward, LinePattern, MacAddr, Netdev, Nic, Protocol, QemuCommand, Switch, Vm};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The kernel's bench port (kernel/src/net_bench.rs `NET_BENCH_PORT`).
pub const GUEST_BENCH_PORT: u16 = 5001;
pub const DEFAULT_NET_MIB: u64 = 64;
pub const DEFAULT_NET_RUNS: usize = 3;
/// Host time a bench VM may run.
const BENCH_VM_TIMEOUT_S: u64 = 300;
const CONNECT_RETRY_MS: u64 = 200;
const READ_CHUNK_BYTES: usize = 256 * 1024;
const MIB: u64 = 1024 * 1024;
const VM_SUBNET: [u8; 3] = [10, 0, 9];

/// One measured transfer.
struct Figure {
    what: String,
    bytes: u64,
    seconds: f64,
}

pub fn run(paths: &Paths, args: &[String]) -> Result<(), String> {
    let mib: u64 = parse_opt(args, "--mib", DEFAULT_NET_MIB)?;
    let runs: usize = parse_opt(args, "--runs", DEFAULT_NET_RUNS)?;
    let bytes = mib.max(1) * MIB;
    kernel_build::build_all(paths)?;
    let mut figures = Vec::new();
    let baseline = best(
        (0..runs.max(1))
            .map(|_| host_loopback(bytes))
            .collect::<Result<_, _>>()?,
    );
    figures.push(baseline);
    figures.push(best(guest_to_host(paths, bytes, runs.max(1))?));
    figures.push(vm_to_vm(paths, bytes)?);
    print_table(
        &format!(
            "TCP throughput, {mib} MiB per stream ({:?}; best of {runs} where repeated)",
            accel()
        ),
        &figures,
    );
    Ok(())
}

pub(crate) fn parse_opt<T: std::str::FromStr>(
    args: &[String],
    name: &str,
    default: T,
) -> Result<T, String> {
    match option_value(args, name) {
        Some(v) => v.parse().map_err(|_| format!("{name}: not a number: {v}")),
        None => Ok(default),
    }
}

fn best(mut figures: Vec<Figure>) -> Figure {
    figures.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    figures.swap_remove(0)
}

/// Prints `figures` with each one's ratio to the first (the baseline).
pub(crate) fn print_table_rows(title: &str, rows: &[(String, u64, f64)]) {
    println!("\n{title}");
    println!(
        "{:<44} {:>9} {:>9} {:>10} {:>10}",
        "path", "MiB", "seconds", "MB/s", "vs base"
    );
    let base = rows.first().map_or(1.0, |r| r.1 as f64 / r.2);
    for (what, bytes, seconds) in rows {
        let rate = *bytes as f64 / seconds;
        println!(
            "{:<44} {:>9} {:>9.3} {:>10.1} {:>10.3}",
            what,
            bytes / MIB,
            seconds,
            rate / 1e6,
            rate / base
        );
    }
}

fn print_table(title: &str, figures: &[Figure]) {
    let rows: Vec<(String, u64, f64)> = figures
        .iter()
        .map(|f| (f.what.clone(), f.bytes, f.seconds))
        .collect();
    print_table_rows(title, &rows);
}

/// Reads `stream` to its end; the byte count.
fn drain(mut stream: TcpStream) -> Result<u64, String> {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) => return Err(format!("read after {total} bytes: {e}")),
        }
    }
}

fn host_loopback(bytes: u64) -> Result<Figure, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let writer = std::thread::spawn(move || -> Result<(), String> {
        let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
        let chunk = vec![0x5au8; READ_CHUNK_BYTES];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            s.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
            left -= n as u64;
        }
        Ok(())
    });
    let started = Instant::now();
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let got = drain(stream)?;
    let seconds = started.elapsed().as_secs_f64();
    writer
        .join()
        .map_err(|_| "writer thread panicked".to_string())??;
    if got != bytes {
        return Err(format!("host loopback: read {got} of {bytes} bytes"));
    }
    Ok(Figure {
        what: "host loopback TCP (two threads) = base".into(),
        bytes,
        seconds,
    })
}

fn guest_to_host(paths: &Paths, bytes: u64, runs: usize) -> Result<Vec<Figure>, String> {
    let limit = Duration::from_secs(BENCH_VM_TIMEOUT_S);
    let host_port = qemu::free_local_port().map_err(|e| format!("no free local port: {e}"))?;
    let cmd = QemuCommand::pvh(paths.kernel())
        .accel(accel())
        .append(format!(
            "cairn.net-bench=source cairn.net-bench-bytes={bytes}"
        ))
        .nic(Nic {
            netdev: Netdev::User {
                forwards: vec![HostForward {
                    protocol: Protocol::Tcp,
                    host_port,
                    guest_port: GUEST_BENCH_PORT,
                }],
            },
            mac: MacAddr::local(1),
        });
    let mut vm = spawn_quiet(
        "bench-net-source",
        &cmd,
        &paths.run_dir("bench-net-source"),
        limit,
    )?;
    if let Err(err) = vm.wait_for(&LinePattern::substring(READY_LINE), limit) {
        return Err(failure_report(&mut vm, &err.to_string()));
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, host_port));
    let deadline = Instant::now() + limit;
    let mut figures = Vec::new();
    // QEMU accepts the connection before the guest listens (or has an address): a stream
    // that ends at once is retried.
    while figures.len() < runs {
        if Instant::now() > deadline || vm.timed_out() {
            return Err(failure_report(
                &mut vm,
                "guest→host stream did not complete",
            ));
        }
        let started = Instant::now();
        let got = TcpStream::connect(addr)
            .map_err(|e| e.to_string())
            .and_then(drain);
        let seconds = started.elapsed().as_secs_f64();
        match got {
            Ok(n) if n == bytes => figures.push(Figure {
                what: "guest→host (virtio-net, user-net forward)".into(),
                bytes,
                seconds,
            }),
            Ok(0) | Err(_) => std::thread::sleep(Duration::from_millis(CONNECT_RETRY_MS)),
            Ok(n) => {
                return Err(failure_report(
                    &mut vm,
                    &format!("guest→host stream ended after {n} of {bytes} bytes"),
                ))
            }
        }
    }
    Ok(figures)
}

fn vm_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(VM_SUBNET[0], VM_SUBNET[1], VM_SUBNET[2], i + 1)
}

fn vm_to_vm(paths: &Paths, bytes: u64) -> Result<Figure, String> {
    let limit = Duration::from_secs(BENCH_VM_TIMEOUT_S);
    let switch = Switch::start(2).map_err(|e| format!("switch: {e}"))?;
    let roles = [
        "cairn.net-bench=source".to_string(),
        format!("cairn.net-bench=sink:{}", vm_ip(0)),
    ];
    let mut vms: Vec<Vm> = Vec::new();
    for (i, role) in roles.iter().enumerate() {
        let cmd = QemuCommand::pvh(paths.kernel())
            .accel(accel())
            .append(format!(
                "cairn.ip={}/24 {role} cairn.net-bench-bytes={bytes}",
                vm_ip(i as u8)
            ))
            .nic(Nic {
                netdev: switch.netdev(i),
                mac: MacAddr::local(0x200 + i as u16),
            });
        let name = format!("bench-net-vm{i}");
        vms.push(spawn_quiet(&name, &cmd, &paths.run_dir(&name), limit)?);
    }
    let sink = &mut vms[1];
    let report = LinePattern::regex("net-bench: sink (received|FAILED)")
        .map_err(|e| format!("pattern: {e}"))?;
    let line = match sink.wait_for(&report, limit) {
        Ok(line) => line,
        Err(err) => return Err(failure_report(sink, &err.to_string())),
    };
    match parse_bytes_us(&line.text, "received ") {
        Some((n, us)) if n == bytes && us > 0 => Ok(Figure {
            what: "VM→VM (testnet switch, guest TSC)".into(),
            bytes,
            seconds: us as f64 / 1e6,
        }),
        _ => Err(failure_report(
            sink,
            &format!("unexpected sink report: {:?}", line.text),
        )),
    }
}

/// Parses "<marker><bytes> bytes in <us> us" out of a console line.
pub(crate) fn parse_bytes_us(text: &str, marker: &str) -> Option<(u64, u64)> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let mut words = rest.split_whitespace();
    let bytes = words.next()?.parse().ok()?;
    if words.next()? != "bytes" || words.next()? != "in" {
        return None;
    }
    let us = words.next()?.parse().ok()?;
    Some((bytes, us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_reports() {
        assert_eq!(
            parse_bytes_us(
                "[ 1.0] net-bench: sink received 1048576 bytes in 2500 us",
                "received "
            ),
            Some((1_048_576, 2500))
        );
        assert_eq!(
            parse_bytes_us(
                "blk-bench: write 4096 bytes in 10 us (flush included)",
                "write "
            ),
            Some((4096, 10))
        );
        assert_eq!(
            parse_bytes_us("net-bench: sink FAILED: x", "received "),
            None
        );
    }

    #[test]
    fn host_loopback_moves_every_byte() {
        let f = host_loopback(4 * MIB).unwrap();
        assert_eq!(f.bytes, 4 * MIB);
        assert!(f.seconds > 0.0);
    }
}
