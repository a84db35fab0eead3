//! `testnet-image`: a 4-node subnet booted from the disk images `cargo xtask image --genesis`
//! writes, as data-centre machines would boot them ([`NodeBoot::Disk`]: SeaBIOS → GRUB →
//! multiboot2 from virtio-blk, each image also the node's only disk, written in place).
//!
//! The images are written as a data centre would ask for them: the nodes at their own addresses
//! ([`TEST_IPS`], not the testnet's) with a default route ([`TEST_GATEWAY`], `--gateway`).
//!
//! What it requires:
//! - the fleet's `registry.json` lists the 4 nodes at those addresses;
//! - on every node's console: its primary card at its address with the gateway as its route;
//! - on every node's console: the multiboot2 boot (GRUB), its configuration read from the
//!   image's `cairn-config` partition (as many bytes as genesis wrote for it), the store on the
//!   `cairn-store` partition (the size and first sector of the image's table), and the
//!   report_data of its keys equal to registry.json's for that node;
//! - the subnet finalizes; the counter is installed through node 0, `set` through node 1,
//!   `inc` through node 2, and `get` through node 3 reads 43;
//! - every VM is killed and booted again from the same images: GRUB still boots them (the store
//!   did not write over the boot partitions; the bytes before `cairn-store` and the backup GPT
//!   are also compared, by hash, with what was there before the first boot), they recover the
//!   counter (43 through node 1) and an `inc` through node 0 reads 44 through node 2.

use crate::image_fleet::{write_fleet, Fleet, FleetSpec};
use crate::testnet_harness::{NodeBoot, Ports, Spec, Testnet};
use crate::testnet_steps::{
    counter_reads, counter_update, install_counter, wait_serving, NODES, VM_LIMIT_S,
};
use crate::testnet_uefi::{check_report_data, console_lines, registry_report_data};
use crate::Paths;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

/// The console line of a node whose configuration came from its disk image.
const DISK_CONFIG_MARK: &str = "cairn: node config from disk partition cairn-config (";
/// The console line of a store confined to the image's store partition.
const STORE_PARTITION_MARK: &str = "store: partition cairn-store";
/// The banner line of a kernel GRUB started (multiboot2).
const MULTIBOOT2_MARK: &str = "boot: Multiboot2 protocol";
/// The nodes' addresses in this test (`--ips`), on a /[`TEST_PREFIX_LEN`] segment.
const TEST_IPS: &str = "192.168.77.10,192.168.77.11,192.168.77.12,192.168.77.13";
const TEST_PREFIX_LEN: u8 = 24;
/// The nodes' default route in this test (`--gateway`).
const TEST_GATEWAY: &str = "192.168.77.1";
/// Store partition of the test's images (sparse, so its size costs nothing).
const TEST_STORE_MIB: u64 = image::DEFAULT_STORE_MIB;

/// `testnet-image` (module doc).
pub fn testnet_image(paths: &Paths) -> Result<String, String> {
    let dir = paths.run_dir("test-testnet-image");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let cup_interval_heights =
        image::genesis::ConsensusParams::IC_APPLICATION_SUBNET.cup_interval_heights;
    let fleet = write_fleet(
        paths,
        &FleetSpec {
            nodes: NODES,
            dir: dir.clone(),
            store_mib: TEST_STORE_MIB,
            cup_interval_heights,
            cmdline: format!("cairn.gw={TEST_GATEWAY}"),
            addressing: Some(
                image::genesis::Addressing::parse(TEST_IPS, TEST_PREFIX_LEN)
                    .map_err(|e| e.to_string())?,
            ),
        },
    )?;
    let expected = registry_report_data(&fleet.registry)?;
    if expected.len() != NODES {
        return Err(format!(
            "{} lists {} nodes, not {NODES}",
            fleet.registry.display(),
            expected.len()
        ));
    }
    check_registry_ips(&fleet)?;
    let pristine = boot_area_hashes(&fleet)?;
    let spec = Spec {
        boot: NodeBoot::Disk,
        nodes: NODES,
        dir: dir.clone(),
        fresh: false,
        ports: Ports::Ephemeral,
        limit: Duration::from_secs(VM_LIMIT_S),
        append: String::new(),
        cup_interval_heights,
    };
    let mut net = Testnet::create(paths, &spec)?;
    let all: Vec<usize> = (0..NODES).collect();

    let booted = Instant::now();
    net.start_all()?;
    wait_serving(&mut net, &all)?;
    let serving = booted.elapsed();
    check_consoles(&mut net, &fleet, &expected, "first boot")?;
    let id = install_counter(paths, &net, 0)?;
    counter_update(&net, 1, &id, "set")?;
    counter_update(&net, 2, &id, "inc")?;
    let before = counter_reads(&net, 3, &id, 43)
        .map_err(|e| format!("set(42) via node1, inc via node2: {e}"))?;
    net.poll_all()?;
    let height = net.heights();

    net.kill_all();
    let restarted = Instant::now();
    net.start_all()?;
    wait_serving(&mut net, &all).map_err(|e| format!("after the restart: {e}"))?;
    let serving_again = restarted.elapsed();
    check_consoles(&mut net, &fleet, &expected, "restart")?;
    let after = counter_reads(&net, 1, &id, before)
        .map_err(|e| format!("after killing and rebooting every VM: {e}"))?;
    counter_update(&net, 0, &id, "inc")?;
    let next =
        counter_reads(&net, 2, &id, before + 1).map_err(|e| format!("inc after restart: {e}"))?;
    net.poll_all()?;
    let heights = net.heights();
    net.kill_all();
    if boot_area_hashes(&fleet)? != pristine {
        return Err(
            "the bytes before cairn-store (GPT, GRUB, ESP, configuration) or the backup GPT \
             changed while the nodes ran"
                .into(),
        );
    }
    let (lba, mib) = store_partition(&fleet, 0)?;
    Ok(format!(
        "{NODES} disk images written in {:.1} s ({} MiB each, config {} bytes in cairn-config; \
         registry.json lists {NODES} nodes at {TEST_IPS}/{TEST_PREFIX_LEN}, consoles show them \
         with gw {TEST_GATEWAY}); SeaBIOS → GRUB → multiboot2 from virtio-blk: \
         serving in {:.1} s, every node's config from its cairn-config partition, store on \
         cairn-store ({mib} MiB at sector {lba}), report_data = registry.json's; counter set/inc \
         via node1/2, get via node3 = {before} (heights {height:?}); all VMs killed and booted \
         again from the same images: GRUB boots them, serving again in {:.1} s, get via node1 = \
         {after}, inc via node0 → {next} via node2 (heights {heights:?}); boot partitions and \
         configs unchanged",
        fleet.took.as_secs_f64(),
        fleet.tables[0].disk_sectors * image::gpt::SECTOR_BYTES / (1024 * 1024),
        fleet.config_bytes[0],
        serving.as_secs_f64(),
        serving_again.as_secs_f64(),
    ))
}

/// registry.json lists every node at the address the fleet gave it.
fn check_registry_ips(fleet: &Fleet) -> Result<(), String> {
    let path = &fleet.registry;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for (i, ip) in fleet.addressing.ips.iter().enumerate() {
        let want = std::net::Ipv4Addr::from(*ip).to_string();
        let listed = json["nodes"][i]["ip"].as_str();
        if listed != Some(want.as_str()) {
            return Err(format!(
                "{}: node {i} listed at {listed:?}, not {want}",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Node `i`'s store partition in its image: (first sector, MiB).
fn store_partition(fleet: &Fleet, i: usize) -> Result<(u64, u64), String> {
    let part = image::partition(&fleet.tables[i], image::PART_STORE)
        .ok_or_else(|| format!("node{i}: its image has no {}", image::PART_STORE))?;
    Ok((part.first_lba, part.size_bytes() / (1024 * 1024)))
}

/// Every node's console of this boot shows GRUB's multiboot2 boot, its configuration from
/// the image, the store on the image's store partition, and the registry's report_data.
fn check_consoles(
    net: &mut Testnet,
    fleet: &Fleet,
    expected: &[String],
    when: &str,
) -> Result<(), String> {
    for i in 0..NODES {
        let console = console_lines(net, i);
        let has = |mark: &str| console.iter().any(|l| l.contains(mark));
        let (lba, mib) = store_partition(fleet, i)?;
        let config = format!("{DISK_CONFIG_MARK}{} bytes)", fleet.config_bytes[i]);
        let store = format!("{STORE_PARTITION_MARK}, {mib} MiB at sector {lba}");
        let ip = fleet
            .addressing
            .ips
            .get(i)
            .map(|ip| std::net::Ipv4Addr::from(*ip))
            .ok_or_else(|| format!("node{i}: no address in the fleet"))?;
        let address = format!("ipv4 {ip}/{TEST_PREFIX_LEN} gw {TEST_GATEWAY}");
        for want in [
            MULTIBOOT2_MARK,
            config.as_str(),
            store.as_str(),
            address.as_str(),
        ] {
            if !has(want) {
                return Err(format!(
                    "{when}: node{i}: no `{want}` line on its console{}",
                    net.console_tails()
                ));
            }
        }
        check_report_data(i, &console, expected).map_err(|e| format!("{when}: {e}"))?;
    }
    Ok(())
}

/// Per image, a hash of everything the store must never write: the bytes before the
/// `cairn-store` partition (protective MBR with GRUB's code, the GPT, core.img, the ESP, the
/// configuration) and the backup GPT after it.
fn boot_area_hashes(fleet: &Fleet) -> Result<Vec<[u8; 32]>, String> {
    fleet
        .images
        .iter()
        .zip(&fleet.tables)
        .map(|(path, gpt)| {
            let store = image::partition(gpt, image::PART_STORE)
                .ok_or_else(|| format!("{}: no {}", path.display(), image::PART_STORE))?;
            let end = store.offset_bytes() + store.size_bytes();
            let total = gpt.disk_sectors * image::gpt::SECTOR_BYTES;
            let mut bytes = read_range(path, 0, store.offset_bytes())?;
            bytes.extend(read_range(path, end, total - end)?);
            Ok(node::api::request_id::sha256(&bytes))
        })
        .collect()
}

fn read_range(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::fs::File::open(path).map_err(err)?;
    file.seek(SeekFrom::Start(offset)).map_err(err)?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact(&mut buf).map_err(err)?;
    Ok(buf)
}
