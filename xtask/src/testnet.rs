//! A subnet of cairn VMs: `cargo xtask qemu --nodes N` and the `testnet-subnet` test step
//! (`testnet_tests::testnet_subnet`).
//!
//! Genesis (`image::genesis`) writes `node-<i>.cfg` for each node; VM `i` boots the kernel
//! (PVH) with its file as `-initrd`, which makes the kernel run the node runtime at
//! 10.0.0.`i+1`. Networking, without root: each VM has two virtio-net cards:
//! 1. the testnet segment (a `dgram` port of the qemu crate's [`Switch`]), the kernel's
//!    primary card: P2P (:4100) and the API (:8080) at 10.0.0.`i+1`;
//! 2. with `http`, a user-mode (slirp) card ([`qemu::Nic::host_forward`]) forwarding
//!    127.0.0.1:`http_ports[i]` on the host to the guest's :8080; the kernel addresses it
//!    10.0.2.15/24 (slirp's default) and serves the API there too, never P2P.
//!
//! Port scheme: node `i`'s API is `http://127.0.0.1:<http_ports[i]>`; the ports are picked by
//! the caller of [`boot_subnet`] (free ports from the OS by default).
use crate::boot_paths::{accel, failure_report, READY_LINE};
use crate::{kernel_build, Paths};
use image::genesis::{node_ip, ConsensusParams};
use qemu::{Echo, LinePattern, MacAddr, QemuCommand, RunConfig, Switch, Vm};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Nodes of the `testnet-subnet` step.
pub const TEST_NODES: usize = 4;
/// The finalized height every node must report in the test.
pub const TEST_HEIGHT: u64 = 5;
/// Host time for the test's subnet to reach [`TEST_HEIGHT`] on every node.
pub const TEST_TIMEOUT_S: u64 = 600;
/// `cargo xtask qemu --nodes N` waits this long for the first finalized block.
pub const FIRST_BLOCK_TIMEOUT_S: u64 = 600;
/// Most nodes `--nodes` accepts.
pub const NODES_MAX: usize = 16;
/// Guest memory of each node.
pub const NODE_MEMORY_MIB: u32 = 512;
const GUEST_HTTP_PORT: u16 = 8080;
const HTTP_TIMEOUT_S: u64 = 60;

/// A booted subnet.
pub struct Subnet {
    pub switch: Switch,
    pub vms: Vec<Vm>,
    /// Host port forwarded to each node's :8080.
    pub http_ports: Vec<u16>,
    pub root_key_der: Vec<u8>,
    pub config_paths: Vec<PathBuf>,
    pub started: Instant,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ip_text(ip: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
}

/// Writes genesis and boots `n` nodes; each VM's console goes to its run dir (and to stdout
/// with a `[node i]` prefix when `echo`).
pub fn boot_subnet(
    paths: &Paths,
    n: usize,
    name: &str,
    echo: bool,
    http: bool,
    limit: Duration,
) -> Result<Subnet, String> {
    let genesis = crate::testnet_harness::new_genesis(
        n,
        ConsensusParams::IC_APPLICATION_SUBNET.cup_interval_heights,
    )?;
    let root_key_der = genesis.root_key_der().map_err(|e| e.to_string())?;
    let dir = paths.run_dir(name);
    let config_paths = genesis
        .write(&dir.join("genesis"))
        .map_err(|e| e.to_string())?;
    genesis
        .write_registry(
            &dir.join("genesis"),
            &crate::testnet_harness::testnet_launch(paths, ""),
        )
        .map_err(|e| e.to_string())?;
    let switch = Switch::start(n).map_err(|e| format!("switch: {e}"))?;
    let started = Instant::now();
    let mut vms = Vec::new();
    let mut http_ports = Vec::new();
    for (i, cfg) in config_paths.iter().enumerate() {
        let http_port = qemu::free_local_port().map_err(|e| format!("no free local port: {e}"))?;
        let mut cmd = QemuCommand::pvh(paths.kernel())
            .accel(accel())
            .memory_mib(NODE_MEMORY_MIB)
            .initrd(cfg);
        cmd = cmd.nic(qemu::Nic {
            netdev: switch.netdev(i),
            mac: MacAddr::local(0x200 + i as u16),
        });
        if http {
            let mac = MacAddr::local(0x300 + i as u16);
            cmd = cmd.nic(qemu::Nic::host_forward(mac, http_port, GUEST_HTTP_PORT));
        }
        let config = RunConfig {
            name: format!("node{i}"),
            log_path: dir.join(format!("node{i}.log")),
            echo: if echo {
                Echo::Stdout {
                    prefix: format!("[node{i}] "),
                }
            } else {
                Echo::Quiet
            },
            timeout: limit,
        };
        vms.push(Vm::spawn(&cmd, config).map_err(|e| e.to_string())?);
        http_ports.push(http_port);
    }
    Ok(Subnet {
        switch,
        vms,
        http_ports,
        root_key_der,
        config_paths,
        started,
    })
}

/// The height in a `runtime: finalized height=H …` line.
pub fn finalized_height(line: &str) -> Option<u64> {
    let rest = line.split("runtime: finalized height=").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Waits until every node printed a finalized height ≥ `height`; returns, per node, the host
/// time of its first finalized block and of reaching `height`.
pub fn wait_for_height(
    subnet: &mut Subnet,
    height: u64,
    limit: Duration,
) -> Result<Vec<(Duration, Duration)>, String> {
    let deadline = Instant::now() + limit;
    let mut times = Vec::new();
    for vm in subnet.vms.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        let first = match vm.wait_for(&LinePattern::substring("runtime: first finalized"), left) {
            Ok(line) => line.at,
            Err(e) => return Err(failure_report(vm, &e.to_string())),
        };
        let reached = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match vm.wait_for(&LinePattern::substring("runtime: finalized height="), left) {
                Ok(line) if finalized_height(&line.text).is_some_and(|h| h >= height) => {
                    break line.at
                }
                Ok(_) => {}
                Err(e) => return Err(failure_report(vm, &e.to_string())),
            }
        };
        times.push((first, reached));
    }
    Ok(times)
}

/// A plain HTTP/1.1 GET; returns (status, headers, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String, Vec<u8>), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_secs(HTTP_TIMEOUT_S);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => response.extend_from_slice(&chunk[..k]),
            Err(e) if response.is_empty() => return Err(format!("receive: {e}")),
            Err(_) => break,
        }
        if let Some(end) = find(&response, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(usize::MAX);
            if response.len() - end - 4 >= len {
                break;
            }
        }
    }
    let end = find(&response, b"\r\n\r\n").ok_or("no complete HTTP response head")?;
    let head = String::from_utf8_lossy(&response[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    Ok((status, head, response[end + 4..].to_vec()))
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `cargo xtask qemu --nodes N`: boot a subnet, wait for the first finalized block, print the
/// endpoints; runs until Ctrl-C (`stop` turns true) or a VM ends.
pub fn qemu_nodes(
    paths: &Paths,
    n: usize,
    timeout: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    if n == 0 || n > NODES_MAX {
        return Err(format!("--nodes {n}: expected 1..={NODES_MAX}"));
    }
    if !paths.kernel().exists() {
        kernel_build::build_all(paths)?;
    }
    let http = true;
    println!(
        "cairn: booting {n} nodes ({:?}); Ctrl-C stops them all",
        accel()
    );
    let mut subnet = boot_subnet(paths, n, "qemu-nodes", true, http, timeout)?;
    for vm in subnet.vms.iter_mut() {
        if let Err(e) = vm.wait_for(&LinePattern::substring(READY_LINE), timeout) {
            return Err(failure_report(vm, &e.to_string()));
        }
    }
    let first = match subnet.vms[0].wait_for(
        &LinePattern::substring("runtime: first finalized"),
        Duration::from_secs(FIRST_BLOCK_TIMEOUT_S),
    ) {
        Ok(line) => line.at,
        Err(e) => return Err(failure_report(&mut subnet.vms[0], &e.to_string())),
    };
    println!("{}", "-".repeat(72));
    println!(
        "cairn: subnet of {n} finalizing ({:.1} s from QEMU start to the first block)",
        first.as_secs_f64()
    );
    for (i, port) in subnet.http_ports.iter().enumerate() {
        let url = format!("http://127.0.0.1:{port}");
        println!(
            "  node{i}: {url}  (guest {}, config {})",
            ip_text(node_ip(i)),
            subnet.config_paths[i].display()
        );
    }
    println!("  root key (DER): {}", hex(&subnet.root_key_der));
    println!("{}", "-".repeat(72));
    loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            for vm in subnet.vms.iter_mut() {
                vm.kill();
            }
            println!(
                "cairn: {n} nodes stopped by Ctrl-C after {:.1} s",
                subnet.started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        for vm in subnet.vms.iter_mut() {
            // Drain the console channel (lines are echoed as they arrive).
            let _ = vm.wait_for(&LinePattern::substring("\u{0}"), Duration::from_millis(10));
            if let Some(outcome) = vm.poll_exit() {
                let name = vm.name().to_string();
                for other in subnet.vms.iter_mut() {
                    other.kill();
                }
                return Err(format!("{name} ended: {outcome}"));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::finalized_height;

    #[test]
    fn reads_the_height_of_a_progress_line() {
        let line = "runtime: finalized height=12 executed=12 certified=11 peers=3/3 t=9 ms";
        assert_eq!(finalized_height(line), Some(12));
        assert_eq!(finalized_height("runtime: first finalized height=1"), None);
    }
}
