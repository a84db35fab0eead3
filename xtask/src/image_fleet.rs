//! `cargo xtask image --genesis [--nodes N] [--out DIR] [--ips A,B,… [--prefix LEN]]
//! [--gateway G] [--store-mib N] [--cup-interval H] [--append CMDLINE]`: the disk images of a
//! data-centre subnet, one per node.
//!
//! The nodes sit on one segment (P2P runs there): at the testnet's addresses (`10.0.0.<i+1>/24`)
//! unless `--ips` gives one address per node (and `--prefix` the segment's length, default 24).
//! `--gateway G` adds `cairn.gw=G` to every image's kernel command line: the nodes' default
//! route, so that clients off the segment reach their API.
//!
//! It writes into `DIR` (default `target/cairn/fleet/`) the same genesis the testnet writes
//! ([`crate::testnet_harness::write_genesis`]: keys, one configuration per node, the root key,
//! and `registry.json` with every node's public keys, report_data and expected SEV-SNP launch
//! measurement), then one bootable GPT disk per node, `DIR/node-<i>.img`
//! ([`image::build_disk_image`]), whose `cairn-config` partition holds that node's
//! configuration. Flashed onto a machine (or booted by `NodeBoot::Disk` in the testnet
//! harness), GRUB boots the kernel, the kernel reads its configuration from `cairn-config` and
//! keeps its state in `cairn-store`:
//!
//! ```text
//! DIR/genesis/node-<i>.cfg     node i's configuration and secrets (also inside node-<i>.img)
//! DIR/genesis/registry.json    what governance admits nodes against (`cargo xtask attest admit`)
//! DIR/genesis/root_key.der     the subnet's (root) public key
//! DIR/genesis/nodes            the node count
//! DIR/node-<i>.img             node i's disk: GRUB (BIOS and UEFI), kernel.elf, its config, store
//! ```
//!
//! The registry's measurement is that of the measured direct boot (OVMF + `kernel.efi` with
//! the kernel hashes), which is what SEV-SNP admission checks; a GRUB boot from these images
//! is not measured by SEV-SNP, so a node booted this way cannot present a report that matches.

use crate::testnet_harness::write_genesis;
use crate::{has_flag, kernel_build, option_value, Paths};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Nodes when `--nodes` is not given.
pub const DEFAULT_FLEET_NODES: usize = 4;

/// A written fleet.
pub struct Fleet {
    pub dir: PathBuf,
    /// `DIR/node-<i>.img`, in node order.
    pub images: Vec<PathBuf>,
    /// Size of each node's configuration in its `cairn-config` partition, in node order.
    pub config_bytes: Vec<usize>,
    /// Each image's partition table (node order).
    pub tables: Vec<image::gpt::Gpt>,
    pub root_key_der: Vec<u8>,
    /// The nodes' addresses (node order) and the segment's prefix length.
    pub addressing: image::genesis::Addressing,
    pub registry: PathBuf,
    /// Host time the genesis and the images took.
    pub took: Duration,
}

/// What a fleet is made of.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    pub nodes: usize,
    pub dir: PathBuf,
    pub store_mib: u64,
    pub cup_interval_heights: u64,
    /// The kernel command line, in each image's grub.cfg and in the registry's launch.
    pub cmdline: String,
    /// The nodes' addresses; `None`: the testnet's.
    pub addressing: Option<image::genesis::Addressing>,
}

/// Whether `cargo xtask image <args>` asks for a fleet.
pub fn wants_fleet(args: &[String]) -> bool {
    has_flag(args, "--genesis")
}

fn number<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match option_value(args, name) {
        Some(v) => v.parse().map_err(|_| format!("{name}: not a number: {v}")),
        None => Ok(default),
    }
}

/// `cargo xtask image --genesis …` (module doc).
pub fn fleet_command(paths: &Paths, args: &[String]) -> Result<(), String> {
    let mut cmdline = option_value(args, "--append")
        .unwrap_or(crate::run_vm::DEFAULT_CMDLINE)
        .to_string();
    if let Some(gw) = option_value(args, "--gateway") {
        gw.parse::<std::net::Ipv4Addr>()
            .map_err(|_| format!("--gateway {gw}: not an IPv4 address"))?;
        cmdline = format!("{cmdline} cairn.gw={gw}").trim().to_string();
    }
    let addressing = match option_value(args, "--ips") {
        Some(ips) => Some(
            image::genesis::Addressing::parse(ips, number(args, "--prefix", 24u8)?)
                .map_err(|e| format!("--ips: {e}"))?,
        ),
        None if option_value(args, "--prefix").is_some() => {
            return Err("--prefix needs --ips".into());
        }
        None => None,
    };
    let spec = FleetSpec {
        nodes: number(
            args,
            "--nodes",
            addressing
                .as_ref()
                .map_or(DEFAULT_FLEET_NODES, |a| a.ips.len()),
        )?,
        dir: option_value(args, "--out")
            .map(PathBuf::from)
            .unwrap_or_else(|| paths.out.join("fleet")),
        store_mib: number(args, "--store-mib", image::DEFAULT_STORE_MIB)?,
        cup_interval_heights: number(
            args,
            "--cup-interval",
            image::genesis::ConsensusParams::IC_APPLICATION_SUBNET.cup_interval_heights,
        )?,
        cmdline,
        addressing,
    };
    kernel_build::build_all(paths)?;
    let fleet = write_fleet(paths, &spec)?;
    print_fleet(&fleet);
    Ok(())
}

/// Write the genesis and one disk image per node into `spec.dir` (module doc). A genesis or
/// images already there are replaced. The kernel must be built.
pub fn write_fleet(paths: &Paths, spec: &FleetSpec) -> Result<Fleet, String> {
    let started = Instant::now();
    if spec.nodes == 0 || spec.nodes > image::genesis::TESTNET_NODES_MAX {
        return Err(format!(
            "--nodes {}: expected 1..={}",
            spec.nodes,
            image::genesis::TESTNET_NODES_MAX
        ));
    }
    if spec.store_mib == 0 {
        return Err("--store-mib 0: the store needs a partition".into());
    }
    let dir = &spec.dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let root_key_der = write_genesis(
        paths,
        dir,
        spec.nodes,
        spec.cup_interval_heights,
        &spec.cmdline,
        spec.addressing.as_ref(),
    )?;
    let genesis = dir.join("genesis");
    let work = dir.join(".image-work");
    let mut images = Vec::with_capacity(spec.nodes);
    let mut config_bytes = Vec::with_capacity(spec.nodes);
    let mut tables = Vec::with_capacity(spec.nodes);
    for i in 0..spec.nodes {
        let cfg = genesis.join(format!("node-{i}.cfg"));
        let config = std::fs::read(&cfg).map_err(|e| format!("{}: {e}", cfg.display()))?;
        config_bytes.push(config.len());
        let disk = image::DiskSpec {
            kernel: paths.kernel(),
            cmdline: spec.cmdline.clone(),
            store_mib: spec.store_mib,
            label: format!("node{i}"),
            config: Some(config),
        };
        let out = dir.join(format!("node-{i}.img"));
        let gpt = image::build_disk_image(&disk, &out, &work)
            .map_err(|e| format!("{}: {e}", out.display()))?;
        images.push(out);
        tables.push(gpt);
    }
    let _ = std::fs::remove_dir_all(&work);
    remove_stale_nodes(dir, spec.nodes)?;
    Ok(Fleet {
        dir: dir.clone(),
        images,
        config_bytes,
        tables,
        root_key_der,
        addressing: spec
            .addressing
            .clone()
            .unwrap_or_else(|| image::genesis::Addressing::testnet(spec.nodes)),
        registry: genesis.join(image::genesis::REGISTRY_FILE),
        took: started.elapsed(),
    })
}

/// Remove the images and configurations of nodes `n..` that an earlier, larger fleet left in
/// `dir`, so the directory holds exactly this genesis's nodes.
fn remove_stale_nodes(dir: &Path, n: usize) -> Result<(), String> {
    for i in n.. {
        let stale = [
            dir.join(format!("node-{i}.img")),
            dir.join("genesis").join(format!("node-{i}.cfg")),
        ];
        if !stale.iter().any(|p| p.exists()) {
            return Ok(());
        }
        for path in stale.iter().filter(|p| p.exists()) {
            std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the registry says of node 0's measurement: the hex, or why there is none.
fn registry_measurement(registry: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(registry).map_err(|e| format!("{}: {e}", registry.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", registry.display()))?;
    let node = &json["nodes"][0];
    Ok(
        match (
            node["measurement"].as_str(),
            node["measurement_missing"].as_str(),
        ) {
            (Some(m), _) => m.to_string(),
            (None, Some(why)) => format!("none ({why})"),
            (None, None) => "none".to_string(),
        },
    )
}

fn print_fleet(fleet: &Fleet) {
    let mib = 1024 * 1024;
    println!(
        "cairn: a {}-node subnet's disk images in {} ({:.1} s):",
        fleet.images.len(),
        fleet.dir.display(),
        fleet.took.as_secs_f64()
    );
    for (i, img) in fleet.images.iter().enumerate() {
        let size = fleet.tables[i].disk_sectors * image::gpt::SECTOR_BYTES / mib;
        let ip = fleet
            .addressing
            .ips
            .get(i)
            .map_or_else(String::new, |ip| std::net::Ipv4Addr::from(*ip).to_string());
        println!(
            "  node{i}: {} ({size} MiB; its configuration, {} bytes, in {}; ip {ip}/{})",
            img.display(),
            fleet.config_bytes[i],
            image::PART_CONFIG,
            fleet.addressing.prefix_len,
        );
    }
    println!("  root key (DER, hex): {}", hex(&fleet.root_key_der));
    println!(
        "  registry: {} (per node: keys, report_data, expected SEV-SNP launch measurement)",
        fleet.registry.display()
    );
    match registry_measurement(&fleet.registry) {
        Ok(m) => println!("  expected launch measurement (every node's): {m}"),
        Err(e) => println!("  expected launch measurement: unreadable registry: {e}"),
    }
    println!(
        "Write node-<i>.img to machine i's disk (`dd if=node-<i>.img of=/dev/sdX bs=1M`); it \
         boots through GRUB on BIOS or UEFI, reads its configuration from {} and keeps its \
         state in {}.",
        image::PART_CONFIG,
        image::PART_STORE
    );
    println!(
        "Note: registry.json's measurement is that of the measured direct boot (OVMF + \
         kernel.efi with its kernel hashes, as `cargo xtask qemu --uefi-kernel` boots), which \
         is what SEV-SNP admission checks. A GRUB boot from these images is not measured by \
         SEV-SNP: a node booted from them cannot present a report that matches, so \
         `cargo xtask attest admit` refuses it. Run nodes that must be admitted as OVMF + \
         kernel.efi with their configuration through fw_cfg."
    );
}
