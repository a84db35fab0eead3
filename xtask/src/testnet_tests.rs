//! A testnet network: VMs on one virtual L2 segment joined by the qemu crate's [`Switch`].
//!
//! - `testnet`: the host takes a port of the switch itself and asks, by ARP, for each VM's
//!   static address; every VM must answer with its own MAC. That proves each VM's virtio-net,
//!   the `dgram` netdevs and the switch's flooding and unicast forwarding, with no root and no
//!   tap device.
//! - `testnet-streams`: every VM runs the kernel's `cairn.net-check` client against the other
//!   two (kernel/src/net/check.rs): a 16 MiB TCP stream to each peer's echo port, every echoed
//!   byte checked against the pattern, then UDP datagrams to each peer's UDP echo.

use crate::boot_paths::{accel, failure_report, spawn_quiet, READY_LINE};
use crate::Paths;
use qemu::{LinePattern, MacAddr, Nic, QemuCommand, Switch, Vm};
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

/// VMs on the segment.
pub const TESTNET_VMS: usize = 3;
/// Host time for all VMs to boot and answer.
pub const TESTNET_TIMEOUT_S: u64 = 120;
/// Bytes each VM streams to each peer (issue 5: 16 MiB, pairwise).
pub const STREAM_BYTES: u64 = 16 * 1024 * 1024;
/// Host time for the pairwise streams (TCG moves a few MB/s per VM).
pub const STREAMS_TIMEOUT_S: u64 = 600;
/// The segment's /24; VM `i` is `.i+1`, the host's port `.254`.
const SUBNET: [u8; 3] = [10, 0, 0];
const HOST_IP_LAST: u8 = 254;
const HOST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xca, 0xff, 0xfe];
const ARP_RETRY_MS: u64 = 300;
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];

fn vm_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], i as u8 + 1)
}

/// Boot [`TESTNET_VMS`] VMs on `switch` ports `0..TESTNET_VMS` with static addresses and
/// `extra(i)` on VM `i`'s command line; wait until all are ready.
fn boot_testnet(
    paths: &Paths,
    switch: &Switch,
    step: &str,
    limit: Duration,
    extra: impl Fn(usize) -> String,
) -> Result<Vec<Vm>, String> {
    let mut vms: Vec<Vm> = Vec::new();
    for i in 0..TESTNET_VMS {
        let cmd = QemuCommand::pvh(paths.kernel())
            .accel(accel())
            .append(format!("cairn.ip={}/24 {}", vm_ip(i), extra(i)))
            .nic(Nic {
                netdev: switch.netdev(i),
                mac: MacAddr::local(0x100 + i as u16),
            });
        let name = format!("{step}-node{i}");
        vms.push(spawn_quiet(
            &name,
            &cmd,
            &paths.run_dir(&format!("test-{name}")),
            limit,
        )?);
    }
    for vm in &mut vms {
        if let Err(err) = vm.wait_for(&LinePattern::substring(READY_LINE), limit) {
            return Err(failure_report(vm, &err.to_string()));
        }
    }
    Ok(vms)
}

pub fn testnet(paths: &Paths) -> Result<String, String> {
    let limit = Duration::from_secs(TESTNET_TIMEOUT_S);
    let switch = Switch::start(TESTNET_VMS + 1).map_err(|e| format!("switch: {e}"))?;
    let mut vms = boot_testnet(paths, &switch, "testnet", limit, |_| String::new())?;
    let host =
        UdpSocket::bind(switch.port_addr(TESTNET_VMS)).map_err(|e| format!("host port: {e}"))?;
    host.set_read_timeout(Some(Duration::from_millis(ARP_RETRY_MS)))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + limit;
    for (i, vm) in vms.iter_mut().enumerate() {
        let want = MacAddr::local(0x100 + i as u16).0;
        match arp_resolve(&host, switch.addr(), vm_ip(i), deadline) {
            Ok(mac) if mac == want => {}
            Ok(mac) => {
                return Err(failure_report(
                    vm,
                    &format!("{} answered with MAC {}", vm_ip(i), MacAddr(mac)),
                ))
            }
            Err(err) => return Err(failure_report(vm, &format!("ARP for {}: {err}", vm_ip(i)))),
        }
    }
    let stats = switch.stats();
    Ok(format!(
        "{TESTNET_VMS} VMs answered ARP through the switch ({} frames in, {} out, {} MACs learned)",
        stats.frames_in,
        stats.frames_out,
        stats.macs.len()
    ))
}

/// Every VM streams [`STREAM_BYTES`] over TCP to each other VM's echo service and checks the
/// echo, then exchanges UDP datagrams with it; all must succeed.
pub fn testnet_streams(paths: &Paths) -> Result<String, String> {
    let limit = Duration::from_secs(STREAMS_TIMEOUT_S);
    let switch = Switch::start(TESTNET_VMS).map_err(|e| format!("switch: {e}"))?;
    let peers = |i: usize| -> String {
        let others: Vec<String> = (0..TESTNET_VMS)
            .filter(|&j| j != i)
            .map(|j| vm_ip(j).to_string())
            .collect();
        format!(
            "cairn.net-check={} cairn.net-check-bytes={STREAM_BYTES}",
            others.join(",")
        )
    };
    let started = Instant::now();
    let mut vms = boot_testnet(paths, &switch, "testnet-streams", limit, peers)?;
    let mut summary = Vec::new();
    for (i, vm) in vms.iter_mut().enumerate() {
        let done = match vm.wait_for(&LinePattern::substring("net-check: done"), limit) {
            Ok(line) => line,
            Err(err) => return Err(failure_report(vm, &err.to_string())),
        };
        let want = format!("net-check: done ({} ok, 0 failed)", TESTNET_VMS - 1);
        let lines: Vec<String> = vm.console().iter().map(|l| l.text.clone()).collect();
        let udp_ok = lines
            .iter()
            .filter(|l| l.contains("net-check: udp"))
            .filter(|l| udp_counts(l).is_some_and(|(sent, received)| sent > 0 && received > 0))
            .count();
        if !done.text.contains(&want) || udp_ok != TESTNET_VMS - 1 {
            let why = format!(
                "node{i}: expected {want:?} and {} UDP exchanges with echoes",
                TESTNET_VMS - 1
            );
            return Err(failure_report(vm, &why));
        }
        summary.push(format!("node{i} done at {:.1} s", done.at.as_secs_f64()));
    }
    let stats = switch.stats();
    Ok(format!(
        "{} checked 16 MiB TCP streams and UDP both ways in {:.1} s ({}; switch relayed {} frames)",
        TESTNET_VMS * (TESTNET_VMS - 1),
        started.elapsed().as_secs_f64(),
        summary.join(", "),
        stats.frames_out
    ))
}

/// Host time for every node's certified height (status) and finalized height (metrics) to
/// grow after the first look.
pub const SUBNET_PROGRESS_TIMEOUT_S: u64 = 120;
/// Pause between two looks at a node's heights.
const PROGRESS_POLL_MS: u64 = 500;

/// What `/api/v2/status` of one node said.
pub struct Status {
    pub certified_height: Option<u64>,
    pub health: String,
    pub tee: Option<String>,
}

/// `GET /api/v2/status` through `port`: 200, CBOR with the self-describe tag, the genesis
/// root key; returns the fields the test follows and the request's latency.
pub fn get_status(port: u16, root_key: &[u8]) -> Result<(Status, Duration), String> {
    let started = Instant::now();
    let (code, head, body) = crate::testnet::http_get(port, "/api/v2/status")?;
    let latency = started.elapsed();
    // CBOR self-describe tag 55799 (d9 d9 f7) opens every IC status answer.
    if code != 200 || !body.starts_with(&[0xd9, 0xd9, 0xf7]) {
        return Err(format!("GET /api/v2/status: status {code}\n{head}"));
    }
    let value = node::api::cbor::decode(&body).map_err(|e| format!("status CBOR: {e:?}"))?;
    let map =
        node::api::cbor::Record::new(value.untagged()).map_err(|e| format!("status map: {e:?}"))?;
    if map.bytes("root_key").ok() != Some(root_key) {
        return Err("status: root_key is not the genesis root key".into());
    }
    let status = Status {
        certified_height: map.u64("certified_height").ok(),
        health: map.text("replica_health_status").unwrap_or("?").to_string(),
        tee: map.text("tee").ok().map(str::to_string),
    };
    Ok((status, latency))
}

/// The reason a node without SEV-SNP gives at `GET /_/attestation`
/// (kernel/src/runtime `NO_TEE_REASON`).
pub const NO_TEE_REASON: &str = "no TEE: this node does not run under SEV-SNP";

/// `GET /_/attestation` through `port` of a node whose status says `tee`: with `none`, 404,
/// plain text, exactly [`NO_TEE_REASON`] (no report of any kind); with `sev-snp`, 200 and a
/// whole raw report.
pub fn check_attestation(i: usize, port: u16, tee: &str) -> Result<(), String> {
    let (code, head, body) = crate::testnet::http_get(port, "/_/attestation")?;
    let head_lower = head.to_ascii_lowercase();
    if tee == "sev-snp" {
        let raw = head_lower.contains("content-type: application/octet-stream");
        if code != 200 || !raw || body.len() != node::attest::report::REPORT_SIZE_BYTES {
            return Err(format!(
                "node{i} (sev-snp): GET /_/attestation: {code}, {} bytes\n{head}",
                body.len()
            ));
        }
        return Ok(());
    }
    let text = String::from_utf8_lossy(&body);
    let plain = head_lower.contains("content-type: text/plain");
    if code != 404 || !plain || text != NO_TEE_REASON {
        return Err(format!(
            "node{i}: GET /_/attestation: expected 404 {NO_TEE_REASON:?}, got {code} \
             {text:?}\n{head}"
        ));
    }
    Ok(())
}

/// `GET /metrics` through `port`: 200 Prometheus text; returns the body and the latency.
fn get_metrics(port: u16) -> Result<(String, Duration), String> {
    let started = Instant::now();
    let (code, head, body) = crate::testnet::http_get(port, "/metrics")?;
    let latency = started.elapsed();
    if code != 200
        || !head
            .to_ascii_lowercase()
            .contains("content-type: text/plain")
    {
        return Err(format!("GET /metrics: status {code}\n{head}"));
    }
    String::from_utf8(body)
        .map(|b| (b, latency))
        .map_err(|_| "GET /metrics: body is not UTF-8".into())
}

/// The value of the sample `name` (exact name with labels, e.g. `cairn_tee_info{tee="none"}`)
/// in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

/// Polls `look` on node `i` until it returns a height above `above`.
fn wait_for_growth(
    what: &str,
    i: usize,
    above: u64,
    mut look: impl FnMut() -> Result<u64, String>,
) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(SUBNET_PROGRESS_TIMEOUT_S);
    loop {
        let h = look()?;
        if h > above {
            return Ok(h);
        }
        if Instant::now() > deadline {
            return Err(format!("node{i}: {what} stayed at {h} (was {above})"));
        }
        std::thread::sleep(Duration::from_millis(PROGRESS_POLL_MS));
    }
}

/// The samples every node's `/metrics` must have.
const REQUIRED_METRICS: &[&str] = &[
    "cairn_finalized_height",
    "cairn_executed_height",
    "cairn_certified_height",
    "cairn_batches_executed_total",
    "cairn_ingress_accepted_total",
    "cairn_ingress_executed_total",
    "cairn_instructions_executed_total",
    "cairn_peers_connected",
    "cairn_uptime_seconds",
];

/// Latencies of every request the test made to the nodes' APIs.
#[derive(Default)]
struct Latencies {
    status: Vec<Duration>,
    metrics: Vec<Duration>,
}

/// Checks one node's API through its forwarded port: status, then metrics, each looked at
/// until its height grows. Returns the TEE the node reports.
fn check_node_api(
    i: usize,
    port: u16,
    root_key: &[u8],
    lat: &mut Latencies,
) -> Result<String, String> {
    let (first, t) = get_status(port, root_key)?;
    lat.status.push(t);
    let certified = first
        .certified_height
        .ok_or_else(|| format!("node{i}: status has no certified_height ({})", first.health))?;
    let tee = first
        .tee
        .ok_or_else(|| format!("node{i}: status has no tee field"))?;
    wait_for_growth("certified_height (status)", i, certified, || {
        let (s, t) = get_status(port, root_key)?;
        lat.status.push(t);
        Ok(s.certified_height.unwrap_or(0))
    })?;
    let (text, t) = get_metrics(port)?;
    lat.metrics.push(t);
    for name in REQUIRED_METRICS {
        if metric(&text, name).is_none() {
            return Err(format!("node{i}: /metrics lacks {name}:\n{text}"));
        }
    }
    let tee_sample = format!("cairn_tee_info{{tee=\"{tee}\"}}");
    if metric(&text, &tee_sample) != Some(1) {
        return Err(format!("node{i}: /metrics lacks {tee_sample} 1:\n{text}"));
    }
    let finalized = metric(&text, "cairn_finalized_height").unwrap_or(0);
    wait_for_growth("cairn_finalized_height (metrics)", i, finalized, || {
        let (text, t) = get_metrics(port)?;
        lat.metrics.push(t);
        metric(&text, "cairn_finalized_height").ok_or_else(|| "no cairn_finalized_height".into())
    })?;
    Ok(tee)
}

/// "median M ms, max X ms over N requests".
fn latency_text(mut xs: Vec<Duration>) -> String {
    xs.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    format!(
        "median {:.1} ms, max {:.1} ms over {} requests",
        ms(xs.get(xs.len() / 2)),
        ms(xs.last()),
        xs.len()
    )
}

/// The `testnet-subnet` step: [`TEST_NODES`] nodes, each with its testnet card and a
/// host-access card, finalize [`TEST_HEIGHT`] blocks each; then, through every node's own
/// forwarded port, `/api/v2/status` (CBOR, genesis root key, a TEE field) and `/metrics`
/// (Prometheus text) answer and their heights grow.
pub fn testnet_subnet(paths: &Paths) -> Result<String, String> {
    use crate::testnet::{boot_subnet, wait_for_height, TEST_HEIGHT, TEST_NODES, TEST_TIMEOUT_S};
    let limit = Duration::from_secs(TEST_TIMEOUT_S);
    let mut subnet = boot_subnet(paths, TEST_NODES, "test-testnet-subnet", false, true, limit)?;
    for vm in subnet.vms.iter_mut() {
        if let Err(e) = vm.wait_for(&LinePattern::substring("runtime: node "), limit) {
            return Err(failure_report(vm, &e.to_string()));
        }
    }
    let times = wait_for_height(&mut subnet, TEST_HEIGHT, limit)?;
    let first = times.iter().map(|t| t.0).max().unwrap_or_default();
    let reached = times.iter().map(|t| t.1).max().unwrap_or_default();
    let mut lat = Latencies::default();
    let mut tees = Vec::new();
    for i in 0..TEST_NODES {
        let port = subnet.http_ports[i];
        match check_node_api(i, port, &subnet.root_key_der, &mut lat) {
            Ok(tee) => tees.push(tee),
            Err(e) => return Err(failure_report(&mut subnet.vms[i], &e)),
        }
        let tee = tees.last().cloned().unwrap_or_default();
        if let Err(e) = check_attestation(i, port, &tee) {
            return Err(failure_report(&mut subnet.vms[i], &e));
        }
    }
    let frames = subnet.switch.stats().frames_out;
    for vm in subnet.vms.iter_mut() {
        vm.kill();
    }
    tees.dedup();
    Ok(format!(
        "{TEST_NODES} nodes: first block finalized on all {:.1} s after QEMU start, height \
         ≥{TEST_HEIGHT} on all at {:.1} s (switch relayed {frames} frames); on every node \
         through its forwarded port (127.0.0.1:{:?}): /api/v2/status 200 CBOR with tee {} \
         ({}), certified height growing; /metrics 200 ({}), finalized height growing; \
         /_/attestation 404 \"{NO_TEE_REASON}\"",
        first.as_secs_f64(),
        reached.as_secs_f64(),
        subnet.http_ports,
        tees.join("/"),
        latency_text(lat.status),
        latency_text(lat.metrics),
    ))
}

/// `(sent, received)` from `net-check: udp <ip>:<port> sent <n> received <m>`.
fn udp_counts(line: &str) -> Option<(u64, u64)> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == "sent")?;
    let sent = words.next()?.parse().ok()?;
    words.find(|w| *w == "received")?;
    let received = words.next()?.parse().ok()?;
    Some((sent, received))
}

/// Broadcast "who has `ip`" from the host's port until a reply arrives; return the MAC.
fn arp_resolve(
    host: &UdpSocket,
    switch: std::net::SocketAddr,
    ip: Ipv4Addr,
    deadline: Instant,
) -> Result<[u8; 6], String> {
    let request = arp_request(ip);
    let mut buf = vec![0u8; qemu::MAX_FRAME_BYTES];
    while Instant::now() < deadline {
        host.send_to(&request, switch)
            .map_err(|e| format!("send: {e}"))?;
        let retry = Instant::now() + Duration::from_millis(ARP_RETRY_MS);
        while Instant::now() < retry {
            let Ok(n) = host.recv(&mut buf) else { break };
            if let Some(mac) = arp_reply_from(&buf[..n], ip) {
                return Ok(mac);
            }
        }
    }
    Err("no ARP reply before the deadline".into())
}

/// An Ethernet frame carrying an ARP request (RFC 826) from the host's port.
fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&ETHERTYPE_ARP);
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4, request
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&[SUBNET[0], SUBNET[1], SUBNET[2], HOST_IP_LAST]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// The sender MAC of an ARP reply for `ip` addressed to the host, if `frame` is one.
fn arp_reply_from(frame: &[u8], ip: Ipv4Addr) -> Option<[u8; 6]> {
    let arp = frame.get(14..42)?;
    let is_reply = frame.get(12..14)? == ETHERTYPE_ARP && arp[6..8] == [0x00, 0x02];
    if !is_reply || arp[14..18] != ip.octets() || arp[18..24] != HOST_MAC {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&arp[8..14]);
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_samples_by_exact_name() {
        let text = "# HELP cairn_finalized_height h\n# TYPE cairn_finalized_height gauge\n\
                    cairn_finalized_height 42\ncairn_finalized_height_x 7\n\
                    cairn_tee_info{tee=\"none\"} 1\n";
        assert_eq!(metric(text, "cairn_finalized_height"), Some(42));
        assert_eq!(metric(text, "cairn_tee_info{tee=\"none\"}"), Some(1));
        assert_eq!(metric(text, "cairn_tee_info{tee=\"sev-snp\"}"), None);
        assert_eq!(metric(text, "cairn_executed_height"), None);
    }

    #[test]
    fn udp_count_parsing() {
        assert_eq!(
            udp_counts("net-check: udp 10.0.0.2:7 sent 64 received 63"),
            Some((64, 63))
        );
        assert_eq!(udp_counts("net-check: tcp 10.0.0.2:7 FAILED: reset"), None);
    }

    #[test]
    fn arp_request_and_reply_layout() {
        let req = arp_request(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(req.len(), 42);
        assert_eq!(&req[12..14], &ETHERTYPE_ARP);
        assert_eq!(&req[38..42], &[10, 0, 0, 2]);
        // Turn the request into the reply a guest would send.
        let vm_mac = [0x52, 0x54, 0, 0xca, 1, 1];
        let mut reply = Vec::new();
        reply.extend_from_slice(&HOST_MAC);
        reply.extend_from_slice(&vm_mac);
        reply.extend_from_slice(&ETHERTYPE_ARP);
        reply.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02]);
        reply.extend_from_slice(&vm_mac);
        reply.extend_from_slice(&[10, 0, 0, 2]);
        reply.extend_from_slice(&HOST_MAC);
        reply.extend_from_slice(&[10, 0, 0, 254]);
        assert_eq!(
            arp_reply_from(&reply, Ipv4Addr::new(10, 0, 0, 2)),
            Some(vm_mac)
        );
        assert_eq!(arp_reply_from(&reply, Ipv4Addr::new(10, 0, 0, 3)), None);
        assert_eq!(arp_reply_from(&req, Ipv4Addr::new(10, 0, 0, 2)), None);
        assert_eq!(
            arp_reply_from(&reply[..20], Ipv4Addr::new(10, 0, 0, 2)),
            None
        );
    }
}
