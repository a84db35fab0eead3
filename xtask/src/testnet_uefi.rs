//! `testnet-uefi`: the 4-node testnet booted from `kernel.efi` under OVMF (the shape of
//! SEV-SNP measured direct boot), each node's configuration passed through QEMU's fw_cfg
//! (`opt/cairn/node.cfg`, read by the UEFI entry before ExitBootServices).
//!
//! What it requires, on every node unless said otherwise:
//! - every virtio device runs with `iommu_platform=on`, as under SEV, and the console says the
//!   driver accepted `VIRTIO_F_ACCESS_PLATFORM` on both cards and the disk;
//! - the console says the configuration came through fw_cfg, and the report_data the node
//!   computed from its keys (`runtime: report_data …`) is the one genesis wrote into
//!   `registry.json` for that node;
//! - the subnet finalizes; an update through node 1 and another through node 2 (certified
//!   replies) change a counter installed through node 0, a query through node 3 reads it, and
//!   every node answers a `read_state` of `/time` with a certificate that verifies against
//!   the root key;
//! - `/api/v2/status` says `tee: none` and `GET /_/attestation` is 404 with the no-TEE reason
//!   (TCG has no SEV-SNP, so no report of any kind may be served).

use crate::testnet_harness::{NodeBoot, Ports, Spec, Testnet};
use crate::testnet_steps::{
    client, counter_reads, counter_update, install_counter, wait_serving, NODES, VM_LIMIT_S,
};
use crate::testnet_tests::{check_attestation, get_status};
use crate::Paths;
use std::time::{Duration, Instant};

/// The console line of a node whose configuration came through fw_cfg.
const FW_CFG_CONFIG_MARK: &str = "cairn: node config from fw_cfg (";
/// The console line of a virtio device that accepted `VIRTIO_F_ACCESS_PLATFORM`, after the
/// device type.
const ACCESS_PLATFORM_MARK: &str = ": VIRTIO_F_ACCESS_PLATFORM accepted";
/// The devices that must say so: two cards and the disk.
const ACCESS_PLATFORM_DEVICES: [(&str, usize); 2] = [("virtio Network", 2), ("virtio Block", 1)];
/// The console line with the node's report_data.
const REPORT_DATA_MARK: &str = "runtime: report_data ";

/// The report_data of every node in a registry file, by index.
pub fn registry_report_data(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let nodes = json["nodes"]
        .as_array()
        .ok_or_else(|| format!("{}: no nodes", path.display()))?;
    nodes
        .iter()
        .map(|n| {
            n["report_data"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("{}: a node without report_data", path.display()))
        })
        .collect()
}

/// `testnet-uefi` (module doc).
pub fn testnet_uefi(paths: &Paths) -> Result<String, String> {
    let spec = Spec {
        boot: NodeBoot::UefiKernel,
        nodes: NODES,
        dir: paths.run_dir("test-testnet-uefi"),
        fresh: true,
        ports: Ports::Ephemeral,
        limit: Duration::from_secs(VM_LIMIT_S),
        append: String::new(),
        cup_interval_heights: image::genesis::ConsensusParams::IC_APPLICATION_SUBNET
            .cup_interval_heights,
    };
    let started = Instant::now();
    let mut net = Testnet::create(paths, &spec)?;
    net.start_all()?;
    wait_serving(&mut net, &(0..NODES).collect::<Vec<_>>())?;
    let serving = started.elapsed();
    let first_block = net
        .nodes
        .iter()
        .filter_map(|n| n.first_block)
        .max()
        .unwrap_or_default();
    let registry = spec.dir.join("genesis").join(image::genesis::REGISTRY_FILE);
    let expected = registry_report_data(&registry)?;
    let mut config_bytes = Vec::new();
    for i in 0..NODES {
        let console = console_lines(&mut net, i);
        let fw_cfg = console
            .iter()
            .find_map(|l| l.split(FW_CFG_CONFIG_MARK).nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| {
                format!(
                    "node{i}: no `{FW_CFG_CONFIG_MARK}…` line{}",
                    net.console_tails()
                )
            })?;
        config_bytes.push(fw_cfg.to_string());
        for (device, want) in ACCESS_PLATFORM_DEVICES {
            let mark = format!("{device}{ACCESS_PLATFORM_MARK}");
            let seen = console.iter().filter(|l| l.contains(&mark)).count();
            if seen != want {
                return Err(format!("node{i}: `{mark}` {seen} times, not {want}"));
            }
        }
        check_report_data(i, &console, &expected)?;
    }
    let calls = Instant::now();
    let id = install_counter(paths, &net, 0)?;
    counter_update(&net, 1, &id, "set")?;
    counter_update(&net, 2, &id, "inc")?;
    let value = counter_reads(&net, 3, &id, 43)
        .map_err(|e| format!("set(42) via node1, inc via node2: {e}"))?;
    for i in 0..NODES {
        client(&net, i)?
            .certified_time(&id)
            .map_err(|e| format!("node{i}: read_state /time: {e}"))?;
        let (status, _) = get_status(net.nodes[i].http_port, &net.root_key_der)?;
        if status.tee.as_deref() != Some("none") {
            return Err(format!("node{i}: /api/v2/status tee {:?}", status.tee));
        }
        check_attestation(i, net.nodes[i].http_port, "none")?;
    }
    let calls = calls.elapsed();
    net.poll_all()?;
    let heights = net.heights();
    net.kill_all();
    Ok(format!(
        "{NODES} VMs: OVMF + kernel.efi, configs through fw_cfg ({} bytes); every node's \
         report_data = registry.json's; serving {:.1} s after start, first block finalized on \
         all by {:.1} s after QEMU start; counter installed via node0, set/inc via node1/2 \
         (certified), get via node3 = {value}, read_state /time verified on all ({:.1} s); \
         tee none and /_/attestation 404 on all; heights {heights:?}",
        config_bytes.join("/"),
        serving.as_secs_f64(),
        first_block.as_secs_f64(),
        calls.as_secs_f64(),
    ))
}

/// Node `i`'s `runtime: report_data …` console line must carry the report_data the registry
/// lists for node `i` (`expected`: [`registry_report_data`]).
pub fn check_report_data(i: usize, console: &[String], expected: &[String]) -> Result<(), String> {
    let said = console
        .iter()
        .find_map(|l| l.split(REPORT_DATA_MARK).nth(1))
        .map(str::trim)
        .ok_or_else(|| format!("node{i}: no `{REPORT_DATA_MARK}…` line"))?;
    if expected.get(i).map(String::as_str) != Some(said) {
        return Err(format!(
            "node{i}: report_data {said} is not the registry's {:?}",
            expected.get(i)
        ));
    }
    Ok(())
}

/// Node `i`'s console lines of this boot (empty if it is not running).
pub fn console_lines(net: &mut Testnet, i: usize) -> Vec<String> {
    net.nodes[i]
        .vm
        .as_mut()
        .map(|vm| vm.console().iter().map(|l| l.text.clone()).collect())
        .unwrap_or_default()
}
