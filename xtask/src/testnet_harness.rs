//! A testnet of cairn VMs the host can operate: `cargo xtask qemu --nodes N`, the
//! `testnet-agent`/`-faults`/`-restart` steps and `bench testnet` all use it.
//!
//! Layout of a testnet's directory (`target/cairn/testnet/` for `cargo xtask qemu`, a run
//! directory for the tests), kept between runs so a restart reuses keys and disks:
//!
//! ```text
//! genesis/node-<i>.cfg     node i's configuration and secrets (image::genesis)
//! genesis/registry.json    every node's public keys, report_data and expected SNP launch
//!                          measurement (image::genesis::Registry; `cargo xtask attest admit`)
//! genesis/root_key.der     the subnet's (root) public key
//! genesis/nodes            the node count, as text
//! node-<i>.disk            node i's state store: a sparse raw disk on virtio-blk
//! node-<i>.img             node i's whole disk when it boots from an image (NodeBoot::Disk)
//! logs/node-<i>.log        node i's serial console (this boot)
//! ```
//!
//! A node boots the kernel one of three ways ([`NodeBoot`]): PVH (`-kernel kernel.elf` with its
//! configuration as `-initrd`); as the UEFI application `kernel.efi` under OVMF, the shape
//! of SEV-SNP measured direct boot, with its configuration in the fw_cfg file
//! `opt/cairn/node.cfg` (QEMU refuses `-initrd` for a non-Linux PE image) and its own copy of
//! OVMF's variable store (`ovmf/node-<i>.vars.fd`); or from its disk image `node-<i>.img`
//! (`cargo xtask image --genesis`, [`crate::image_fleet`]) as a data-centre machine does:
//! SeaBIOS → GRUB → multiboot2 from virtio-blk, the configuration in the image's
//! `cairn-config` partition and the store in its `cairn-store` partition. That image is the
//! node's only disk and is written in place (no snapshot), so the node keeps its state across
//! restarts; its kernel command line is the one in the image's grub.cfg.
//!
//! Each VM has two network cards, in this order: (0) the testnet segment, a `dgram` port of the
//! qemu crate's [`Switch`] (P2P between the nodes), and (1) QEMU user-mode networking with one
//! forward, `127.0.0.1:<http port>` → guest `:8080`, so the host reaches every node's HTTP API.
//!
//! Operations: [`Testnet::kill`] (SIGKILL), [`Testnet::start`] (boot again on the same disk),
//! [`Testnet::wipe`] (a fresh empty disk), [`Testnet::pause`] (SIGSTOP) and
//! [`Testnet::resume`] (SIGCONT). Every wait is bounded; every VM has an overall time limit
//! (its watchdog kills it), is killed when its handle is dropped, and dies with the thread
//! that spawned it (`PR_SET_PDEATHSIG`), so no exit path leaves a QEMU behind.
//!
//! Progress is read from the serial console: `runtime: first finalized …` and the periodic
//! `runtime: finalized height=H …` line (kernel/src/runtime); when a line carries
//! `hash=<hex>`, the block hash at `H` is recorded for the agreement (no-fork) check.

use crate::boot_paths::{accel, failure_report};
use crate::Paths;
use image::genesis::{Addressing, ConsensusParams, Genesis, Launch};
use qemu::{
    Drive, Echo, Firmware, HostForward, Line, MacAddr, Netdev, Nic, Protocol, QemuCommand,
    RunConfig, Switch, Vm,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Guest memory of each node.
pub const NODE_MEMORY_MIB: u32 = 512;
/// Size of each node's sparse store disk.
pub const NODE_DISK_BYTES: u64 = 256 * 1024 * 1024;
/// Genesis time is this far before the host's clock (the VMs' RTCs have 1 s resolution).
const GENESIS_BEFORE_NOW_S: u64 = 5;
/// The testnet's genesis seed (testnet keys are not secret).
const GENESIS_SEED: [u8; 32] = *b"cairn testnet genesis seed 00001";
/// The guest's HTTP API port (DESIGN.md "Networking under QEMU").
pub const GUEST_HTTP_PORT: u16 = 8080;
/// Bound on one readiness probe (`GET /api/v2/status`).
pub const PROBE_TIMEOUT_MS: u64 = 3_000;
/// How often waits look at the consoles.
const POLL_INTERVAL_MS: u64 = 100;
/// MAC numbering: node i's segment card is `0x300 + i`, its user-mode card `0x380 + i`.
const MAC_SEGMENT_BASE: u16 = 0x300;
const MAC_USER_BASE: u16 = 0x380;
/// The serial line of the periodic progress report.
pub const FINALIZED_MARK: &str = "runtime: finalized height=";
/// The serial line of the first finalized block.
pub const FIRST_FINALIZED_MARK: &str = "runtime: first finalized";

/// How host ports for the HTTP forwards are chosen.
#[derive(Clone, Copy, Debug)]
pub enum Ports {
    /// Node i listens on `base + i` (stable URLs for `cargo xtask qemu`).
    Fixed(u16),
    /// A port the OS says is free, per node, kept across restarts (tests; no collisions).
    Ephemeral,
}

/// How each node's kernel is booted (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeBoot {
    /// PVH direct boot of `kernel.elf`, configuration as `-initrd`.
    Pvh,
    /// OVMF boots `kernel.efi` from `-kernel`, configuration through fw_cfg.
    UefiKernel,
    /// SeaBIOS boots `node-<i>.img` through GRUB; configuration and store are partitions of
    /// it. The testnet's directory must hold a fleet ([`crate::image_fleet::write_fleet`]).
    Disk,
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct Spec {
    /// PVH or the UEFI kernel under OVMF.
    pub boot: NodeBoot,
    pub nodes: usize,
    /// The testnet's directory (genesis, disks, logs).
    pub dir: PathBuf,
    /// Replace whatever `dir` holds with a new genesis and empty disks.
    pub fresh: bool,
    pub ports: Ports,
    /// Overall time limit of each QEMU run.
    pub limit: Duration,
    /// Extra kernel command line.
    pub append: String,
    /// Heights between catch-up packages (and checkpoints) of a new genesis.
    pub cup_interval_heights: u64,
}

/// One node: its files, its host port and its VM while it runs.
pub struct Node {
    pub index: usize,
    pub config: PathBuf,
    pub disk: PathBuf,
    pub http_port: u16,
    pub vm: Option<Vm>,
    pub paused: bool,
    /// Boots so far, counting the logs of earlier runs (names this boot's log).
    pub boots: usize,
    /// Highest finalized height seen on the console during this boot.
    pub height: u64,
    /// Host time of this boot's start.
    pub booted_at: Option<Instant>,
    /// Host time from this boot's QEMU start to its `runtime: first finalized` line.
    pub first_block: Option<Duration>,
    /// The console time of the last line scanned.
    scanned_to: Option<Duration>,
}

/// A running (or partly running) testnet.
pub struct Testnet {
    pub switch: Switch,
    pub nodes: Vec<Node>,
    pub root_key_der: Vec<u8>,
    pub dir: PathBuf,
    /// Whether genesis and disks were made new by this run.
    pub created: bool,
    /// Block hash at each height, as each node reported it (height → node → hash).
    pub hashes: BTreeMap<u64, BTreeMap<usize, String>>,
    kernel: PathBuf,
    boot: NodeBoot,
    limit: Duration,
    append: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The height in a `runtime: finalized height=H …` line.
pub fn finalized_height(line: &str) -> Option<u64> {
    let rest = line.split(FINALIZED_MARK).nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The `hash=<hex>` of a progress line, if it has one.
pub fn line_hash(line: &str) -> Option<&str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("hash="))
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn io_err(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

/// Create (or truncate to empty) a sparse disk of [`NODE_DISK_BYTES`].
fn empty_disk(path: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let file = std::fs::File::create(path).map_err(|e| io_err(path, e))?;
    file.set_len(NODE_DISK_BYTES).map_err(|e| io_err(path, e))
}

/// A new genesis of `n` nodes, dated [`GENESIS_BEFORE_NOW_S`] ago, with catch-up packages
/// every `cup_interval_heights` (IC application-subnet delays otherwise).
pub fn new_genesis(n: usize, cup_interval_heights: u64) -> Result<Genesis, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    let genesis_ns = (now.as_secs() - GENESIS_BEFORE_NOW_S) * 1_000_000_000;
    Genesis::new(
        &GENESIS_SEED,
        n,
        genesis_ns,
        ConsensusParams {
            cup_interval_heights,
            ..ConsensusParams::IC_APPLICATION_SUBNET
        },
    )
    .map_err(|e| e.to_string())
}

/// The launch every testnet node has, as registry.json records it: one vCPU (QEMU's default
/// `-smp 1`), an empty command line, the built `kernel.efi`, and edk2's AmdSev firmware when
/// this host has it (else the registry says why the measurement is missing).
pub fn testnet_launch(paths: &Paths, append: &str) -> Launch {
    Launch {
        firmware: crate::attest::amdsev_firmware(&paths.root),
        kernel_efi: crate::kernel_build::kernel_efi(paths),
        vcpus: 1,
        vcpu_type: REGISTRY_VCPU_TYPE.to_string(),
        cmdline: (!append.is_empty()).then(|| append.to_string()),
    }
}

/// The vCPU type the registry's measurements assume (an SNP host runs the node as an EPYC).
pub const REGISTRY_VCPU_TYPE: &str = "EPYC-v4";

/// Writes a new genesis (configs and registry) into `dir/genesis` and returns the root key
/// (the testnet's and `cargo xtask image --genesis`'s); the nodes at `addressing`, else at
/// the testnet's addresses.
pub fn write_genesis(
    paths: &Paths,
    dir: &Path,
    n: usize,
    cup_interval_heights: u64,
    append: &str,
    addressing: Option<&Addressing>,
) -> Result<Vec<u8>, String> {
    let mut genesis = new_genesis(n, cup_interval_heights)?;
    if let Some(addressing) = addressing {
        genesis = genesis
            .with_addressing(addressing)
            .map_err(|e| e.to_string())?;
    }
    let root_key = genesis.root_key_der().map_err(|e| e.to_string())?;
    let gdir = dir.join("genesis");
    genesis.write(&gdir).map_err(|e| e.to_string())?;
    genesis
        .write_registry(&gdir, &testnet_launch(paths, append))
        .map_err(|e| e.to_string())?;
    let key_path = gdir.join("root_key.der");
    std::fs::write(&key_path, &root_key).map_err(|e| io_err(&key_path, e))?;
    // Written last: its presence marks a complete genesis.
    let count = gdir.join("nodes");
    std::fs::write(&count, n.to_string()).map_err(|e| io_err(&count, e))?;
    Ok(root_key)
}

/// The node count of the genesis kept in `dir`, if there is a complete one.
pub fn kept_nodes(dir: &Path) -> Option<usize> {
    std::fs::read_to_string(dir.join("genesis").join("nodes"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Testnet {
    /// Prepares the directory (new genesis and disks, or the kept ones) and the switch; boots
    /// nothing yet (see [`Testnet::start_all`]).
    pub fn create(paths: &Paths, spec: &Spec) -> Result<Testnet, String> {
        let n = spec.nodes;
        let kept = kept_nodes(&spec.dir);
        let created = spec.fresh || kept.is_none();
        if created && spec.boot == NodeBoot::Disk {
            return Err(format!(
                "{} holds no disk images to boot; write them with `cargo xtask image --genesis \
                 --out {}`",
                spec.dir.display(),
                spec.dir.display()
            ));
        }
        if !created && kept != Some(n) {
            return Err(format!(
                "{} holds a testnet of {} nodes, not {n}; add --fresh to replace it",
                spec.dir.display(),
                kept.unwrap_or(0)
            ));
        }
        let root_key_der = if created {
            if spec.dir.exists() {
                std::fs::remove_dir_all(&spec.dir).map_err(|e| io_err(&spec.dir, e))?;
            }
            std::fs::create_dir_all(&spec.dir).map_err(|e| io_err(&spec.dir, e))?;
            write_genesis(
                paths,
                &spec.dir,
                n,
                spec.cup_interval_heights,
                &spec.append,
                None,
            )?
        } else {
            let key = spec.dir.join("genesis").join("root_key.der");
            std::fs::read(&key).map_err(|e| io_err(&key, e))?
        };
        let switch = Switch::start(n).map_err(|e| format!("switch: {e}"))?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let config = spec.dir.join("genesis").join(format!("node-{i}.cfg"));
            if !config.exists() {
                return Err(format!("missing {}; try --fresh", config.display()));
            }
            let disk = match spec.boot {
                NodeBoot::Disk => spec.dir.join(format!("node-{i}.img")),
                NodeBoot::Pvh | NodeBoot::UefiKernel => spec.dir.join(format!("node-{i}.disk")),
            };
            if spec.boot == NodeBoot::Disk && !disk.exists() {
                return Err(format!(
                    "missing {}; write the images with `cargo xtask image --genesis --out {}`",
                    disk.display(),
                    spec.dir.display()
                ));
            }
            // Number this run's boots after the logs kept from earlier runs.
            let boots = (0..)
                .find(|k| {
                    !spec
                        .dir
                        .join("logs")
                        .join(format!("node-{i}.boot{k}.log"))
                        .exists()
                })
                .unwrap_or(0);
            if created || !disk.exists() {
                empty_disk(&disk)?;
            }
            let http_port = match spec.ports {
                Ports::Fixed(base) => base
                    .checked_add(i as u16)
                    .ok_or_else(|| format!("port base {base} + {i} overflows"))?,
                Ports::Ephemeral => {
                    qemu::free_local_port().map_err(|e| format!("no free local port: {e}"))?
                }
            };
            nodes.push(Node {
                index: i,
                config,
                disk,
                http_port,
                vm: None,
                paused: false,
                boots,
                height: 0,
                booted_at: None,
                first_block: None,
                scanned_to: None,
            });
        }
        Ok(Testnet {
            switch,
            nodes,
            root_key_der,
            dir: spec.dir.clone(),
            created,
            hashes: BTreeMap::new(),
            kernel: match spec.boot {
                NodeBoot::Pvh | NodeBoot::Disk => paths.kernel(),
                NodeBoot::UefiKernel => crate::kernel_build::kernel_efi(paths),
            },
            boot: spec.boot,
            limit: spec.limit,
            append: spec.append.clone(),
        })
    }

    /// `http://127.0.0.1:<port>` of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].http_port)
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    pub fn root_key_hex(&self) -> String {
        hex(&self.root_key_der)
    }

    /// The QEMU command of node `i` (see the module doc for the boot and the two cards).
    pub fn command(&self, i: usize) -> Result<QemuCommand, String> {
        let node = &self.nodes[i];
        let mut cmd = match self.boot {
            // The firmware boots the image, which is also the node's disk (written in place).
            NodeBoot::Disk => QemuCommand::disk(&node.disk),
            NodeBoot::Pvh | NodeBoot::UefiKernel => {
                QemuCommand::pvh(&self.kernel).drive(Drive::raw(&node.disk))
            }
        }
        .accel(accel())
        .memory_mib(NODE_MEMORY_MIB);
        match self.boot {
            NodeBoot::Disk => {}
            NodeBoot::Pvh => cmd = cmd.initrd(&node.config),
            NodeBoot::UefiKernel => {
                let firmware = Firmware::find_ovmf()
                    .ok_or("no OVMF on this host (apt-get install ovmf) for the UEFI kernel")?;
                let vars = self.dir.join("ovmf").join(format!("node-{i}.vars.fd"));
                let pflash = firmware
                    .pflash(&vars)
                    .map_err(|e| format!("copy OVMF variables to {}: {e}", vars.display()))?;
                // As QEMU makes an SEV guest's devices: iommu_platform=on everywhere.
                cmd = cmd.uefi(pflash).access_platform();
                cmd.extra.extend(fw_cfg_config_args(&node.config));
            }
        }
        let mut cmd = cmd
            .nic(Nic {
                netdev: self.switch.netdev(i),
                mac: MacAddr::local(MAC_SEGMENT_BASE + i as u16),
            })
            .nic(Nic {
                netdev: Netdev::User {
                    forwards: vec![HostForward {
                        protocol: Protocol::Tcp,
                        host_port: node.http_port,
                        guest_port: GUEST_HTTP_PORT,
                    }],
                },
                mac: MacAddr::local(MAC_USER_BASE + i as u16),
            });
        if !self.append.is_empty() {
            cmd = cmd.append(self.append.clone());
        }
        Ok(cmd)
    }

    /// Boot node `i` (on its disk as it is). A VM still running is killed first.
    pub fn start(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        let cmd = self.command(i)?;
        let node = &mut self.nodes[i];
        let log_path = self
            .dir
            .join("logs")
            .join(format!("node-{i}.boot{}.log", node.boots));
        let config = RunConfig {
            name: format!("node{i}"),
            log_path,
            echo: Echo::Quiet,
            timeout: self.limit,
        };
        let vm = Vm::spawn(&cmd, config).map_err(|e| e.to_string())?;
        node.vm = Some(vm);
        node.boots += 1;
        node.paused = false;
        node.booted_at = Some(Instant::now());
        node.first_block = None;
        node.height = 0;
        node.scanned_to = None;
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.start(i)?;
        }
        Ok(())
    }

    /// SIGKILL node `i`'s QEMU (nothing is flushed: a power cut). Idempotent.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut vm) = self.nodes[i].vm.take() {
            vm.kill();
        }
        self.nodes[i].paused = false;
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }

    /// Kill node `i` and give it an empty disk (it must rejoin by state sync when started).
    /// Not for a node that boots its disk image (that would erase its boot partitions).
    pub fn wipe(&mut self, i: usize) -> Result<(), String> {
        if self.boot == NodeBoot::Disk {
            return Err(format!(
                "node{i} boots its disk image, which wipe would erase"
            ));
        }
        self.kill(i);
        empty_disk(&self.nodes[i].disk)
    }

    /// Freeze node `i` (SIGSTOP).
    pub fn pause(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let vm = node.vm.as_mut().ok_or(format!("node{i} is not running"))?;
        vm.pause().map_err(|e| format!("node{i}: SIGSTOP: {e}"))?;
        node.paused = true;
        Ok(())
    }

    /// Let node `i` run again (SIGCONT).
    pub fn resume(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let vm = node.vm.as_mut().ok_or(format!("node{i} is not running"))?;
        vm.resume().map_err(|e| format!("node{i}: SIGCONT: {e}"))?;
        node.paused = false;
        Ok(())
    }

    /// Take in node `i`'s new console lines: heights and hashes. An error if its QEMU ended
    /// (it is then dropped from the running set; the error carries its console's tail).
    pub fn poll(&mut self, i: usize) -> Result<(), String> {
        let since = self.nodes[i].scanned_to;
        let Some(vm) = self.nodes[i].vm.as_mut() else {
            return Ok(());
        };
        if let Some(outcome) = vm.poll_exit() {
            let why = format!("node{i}: QEMU ended ({outcome})");
            let report = failure_report(vm, &why);
            self.nodes[i].vm = None;
            return Err(report);
        }
        let fresh: Vec<Line> = vm
            .console()
            .iter()
            .filter(|l| since.is_none_or(|s| l.at > s))
            .cloned()
            .collect();
        let node = &mut self.nodes[i];
        for line in &fresh {
            node.scanned_to = Some(line.at);
            if node.first_block.is_none() && line.text.contains(FIRST_FINALIZED_MARK) {
                node.first_block = Some(line.at);
                node.height = node.height.max(1);
            }
            let Some(h) = finalized_height(&line.text) else {
                continue;
            };
            node.height = node.height.max(h);
            if let Some(hash) = line_hash(&line.text) {
                self.hashes
                    .entry(h)
                    .or_default()
                    .insert(i, hash.to_ascii_lowercase());
            }
        }
        Ok(())
    }

    /// Poll every running node; the first VM that ended is an error.
    pub fn poll_all(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.poll(i)?;
        }
        Ok(())
    }

    /// Finalized heights as last seen (`None` for a node that is not running).
    pub fn heights(&self) -> Vec<Option<u64>> {
        self.nodes
            .iter()
            .map(|n| n.vm.as_ref().map(|_| n.height))
            .collect()
    }

    /// Wait until `done` holds for the testnet, polling; bounded by `limit`.
    pub fn wait_until(
        &mut self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&Testnet) -> bool,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            self.poll_all()?;
            if done(self) {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= limit {
                return Err(format!(
                    "timed out after {:.0} s waiting for {what} (heights {:?}){}",
                    limit.as_secs_f64(),
                    self.heights(),
                    self.console_tails()
                ));
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    /// Wait until every node in `which` reports a finalized height ≥ `height`.
    pub fn wait_height(
        &mut self,
        which: &[usize],
        height: u64,
        limit: Duration,
    ) -> Result<Duration, String> {
        let which = which.to_vec();
        self.wait_until(
            &format!("nodes {which:?} at finalized height {height}"),
            limit,
            |t| which.iter().all(|&i| t.nodes[i].height >= height),
        )
    }

    /// Heights at which two nodes reported different block hashes (a fork), and how many
    /// heights were compared by at least two nodes.
    pub fn forks(&self) -> (Vec<u64>, usize) {
        let mut forks = Vec::new();
        let mut compared = 0;
        for (h, by_node) in &self.hashes {
            if by_node.len() < 2 {
                continue;
            }
            compared += 1;
            let mut it = by_node.values();
            let first = it.next();
            if it.any(|v| Some(v) != first) {
                forks.push(*h);
            }
        }
        (forks, compared)
    }

    /// The last console lines of every running node, for error messages.
    pub fn console_tails(&mut self) -> String {
        let mut out = String::new();
        for node in &mut self.nodes {
            let Some(vm) = node.vm.as_mut() else {
                continue;
            };
            out.push_str(&format!(
                "\n--- node{} (log {}) ---\n",
                node.index,
                vm.log_path().display()
            ));
            let lines: Vec<String> = vm.console().iter().map(|l| l.text.clone()).collect();
            for l in lines.iter().skip(lines.len().saturating_sub(8)) {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// GET `path` on node `i`'s forwarded port, bounded by [`PROBE_TIMEOUT_MS`] (slirp
    /// accepts the host's connection before the guest does, so a guest that does not answer
    /// shows up as a slow read, not a refused connection).
    pub fn get(&self, i: usize, path: &str) -> Result<(u16, Vec<u8>), String> {
        crate::testnet_client::http(
            self.nodes[i].http_port,
            "GET",
            path,
            &[],
            Duration::from_millis(PROBE_TIMEOUT_MS),
        )
    }

    /// Whether node `i`'s `/api/v2/status` answers 200 with the genesis root key, healthy, now.
    pub fn api_up(&self, i: usize) -> bool {
        status_serves_key(self.nodes[i].http_port, &self.root_key_der)
    }

    /// [`Testnet::api_up`] for the listed nodes, probed in parallel.
    pub fn apis_up(&self, which: &[usize]) -> Vec<bool> {
        let key = &self.root_key_der;
        std::thread::scope(|s| {
            let probes: Vec<_> = which
                .iter()
                .map(|&i| {
                    let port = self.nodes[i].http_port;
                    s.spawn(move || status_serves_key(port, key))
                })
                .collect();
            probes
                .into_iter()
                .map(|p| p.join().unwrap_or(false))
                .collect()
        })
    }

    /// Wait until node `i`'s `/api/v2/status` answers 200, healthy, with the genesis root key.
    pub fn wait_api(&mut self, i: usize, limit: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < limit {
            self.poll(i)?;
            if self.api_up(i) {
                return Ok(start.elapsed());
            }
            last = match self.get(i, "/api/v2/status") {
                Ok((status, _)) => format!("status {status}"),
                Err(e) => e,
            };
            std::thread::sleep(Duration::from_millis(500));
        }
        let port = self.nodes[i].http_port;
        let tails = self.console_tails();
        Err(format!(
            "node{i}: /api/v2/status on 127.0.0.1:{port} did not answer in {:.0} s ({last}){tails}",
            limit.as_secs_f64(),
        ))
    }
}

/// QEMU arguments that put `config` into the guest's fw_cfg as the node configuration file
/// the UEFI kernel reads (`image::genesis::config::FW_CFG_CONFIG_NAME`). Commas in the path
/// are doubled, as QEMU's option syntax wants.
pub fn fw_cfg_config_args(config: &Path) -> [String; 2] {
    let file = config.display().to_string().replace(',', ",,");
    [
        "-fw_cfg".to_string(),
        format!(
            "name={},file={file}",
            image::genesis::config::FW_CFG_CONFIG_NAME
        ),
    ]
}

/// The CBOR text `"healthy"` (major type 3, length 7), the `replica_health_status` of a node
/// that serves calls.
const CBOR_HEALTHY: &[u8] = b"\x67healthy";

/// Whether `GET /api/v2/status` on 127.0.0.1:`port` answers 200 with `root_key_der` in it and
/// the replica reports itself healthy.
fn status_serves_key(port: u16, root_key_der: &[u8]) -> bool {
    let answer = crate::testnet_client::http(
        port,
        "GET",
        "/api/v2/status",
        &[],
        Duration::from_millis(PROBE_TIMEOUT_MS),
    );
    let has = |body: &[u8], what: &[u8]| body.windows(what.len()).any(|w| w == what);
    matches!(answer, Ok((200, body)) if has(&body, root_key_der) && has(&body, CBOR_HEALTHY))
}

impl Drop for Testnet {
    fn drop(&mut self) {
        // A paused QEMU dies from SIGKILL as well; kill explicitly before the switch stops.
        self.kill_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse() {
        let line = "runtime: finalized height=12 executed=12 certified=11 peers=3/3 t=9 ms";
        assert_eq!(finalized_height(line), Some(12));
        assert_eq!(line_hash(line), None);
        let with = "runtime: finalized height=7 hash=0aFf12 peers=3/3";
        assert_eq!(finalized_height(with), Some(7));
        assert_eq!(line_hash(with), Some("0aFf12"));
        assert_eq!(finalized_height("runtime: first finalized height=1"), None);
        assert_eq!(line_hash("hash= x"), None);
    }

    /// A fresh scratch directory `name-<pid>` under the temp dir, its `Paths`, and a 2-node
    /// spec booting `boot` from `dir/sub`.
    fn scratch(name: &str, boot: NodeBoot, sub: &str) -> (PathBuf, Paths, Spec) {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let paths = Paths {
            root: dir.clone(),
            out: dir.clone(),
        };
        let spec = Spec {
            boot,
            nodes: 2,
            dir: dir.join(sub),
            fresh: false,
            ports: Ports::Ephemeral,
            limit: Duration::from_secs(1),
            append: String::new(),
            cup_interval_heights: ConsensusParams::IC_APPLICATION_SUBNET.cup_interval_heights,
        };
        (dir, paths, spec)
    }

    #[test]
    fn genesis_is_kept_and_reused() {
        let (dir, paths, spec) = scratch("cairn-harness-test", NodeBoot::Pvh, "net");
        assert_eq!(kept_nodes(&dir), None);
        let first = Testnet::create(&paths, &spec).unwrap();
        assert!(first.created);
        let key = first.root_key_der.clone();
        drop(first);
        assert_eq!(kept_nodes(&spec.dir), Some(2));
        let again = Testnet::create(&paths, &spec).unwrap();
        assert!(!again.created);
        assert_eq!(again.root_key_der, key);
        let disk = std::fs::metadata(&again.nodes[1].disk).unwrap();
        assert_eq!(disk.len(), NODE_DISK_BYTES);
        assert!(spec.dir.join("genesis/registry.json").is_file());
        // The UEFI kernel gets its configuration through fw_cfg, never -initrd.
        let pvh = again.command(0).unwrap().args();
        assert!(pvh.contains(&"-initrd".to_string()));
        assert!(!pvh.contains(&"-fw_cfg".to_string()));
        drop(again);
        let uefi_spec = Spec {
            boot: NodeBoot::UefiKernel,
            ..spec.clone()
        };
        let uefi = Testnet::create(&paths, &uefi_spec).unwrap();
        if Firmware::find_ovmf().is_some() {
            let args = uefi.command(1).unwrap().args();
            assert!(!args.contains(&"-initrd".to_string()), "{args:?}");
            let at = args.iter().position(|a| a == "-fw_cfg").unwrap();
            let want = format!(
                "name=opt/cairn/node.cfg,file={}",
                uefi.nodes[1].config.display()
            );
            assert_eq!(args[at + 1], want);
            assert!(args.iter().any(|a| a.ends_with("kernel.efi")), "{args:?}");
            assert!(args.iter().any(|a| a.contains("if=pflash")), "{args:?}");
        }
        let again = uefi;
        drop(again);
        let wrong = Spec { nodes: 3, ..spec };
        assert!(Testnet::create(&paths, &wrong).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn disk_boot_needs_the_images_and_boots_them_in_place() {
        let (dir, paths, spec) = scratch("cairn-harness-disk", NodeBoot::Disk, "fleet");
        // No genesis, then a genesis without images: refused, with the command that makes them.
        let err = Testnet::create(&paths, &spec).err().unwrap();
        assert!(err.contains("cargo xtask image --genesis"), "{err}");
        write_genesis(&paths, &spec.dir, 2, spec.cup_interval_heights, "", None).unwrap();
        let err = Testnet::create(&paths, &spec).err().unwrap();
        assert!(err.contains("node-0.img"), "{err}");
        for i in 0..2 {
            std::fs::write(spec.dir.join(format!("node-{i}.img")), b"image").unwrap();
        }
        let mut net = Testnet::create(&paths, &spec).unwrap();
        let args = net.command(1).unwrap().args();
        let image = spec.dir.join("node-1.img");
        let drive = format!("file={},format=raw,if=virtio,index=0", image.display());
        assert!(args.contains(&drive), "{args:?}");
        assert_eq!(
            args.iter().filter(|a| *a == "-drive").count(),
            1,
            "{args:?}"
        );
        assert!(!args.iter().any(|a| a.contains("snapshot")), "{args:?}");
        let boot = args.iter().position(|a| a == "-boot").unwrap();
        assert_eq!(args[boot + 1], "order=c,strict=on");
        for direct in ["-kernel", "-initrd", "-fw_cfg"] {
            assert!(!args.contains(&direct.to_string()), "{args:?}");
        }
        assert_eq!(args.iter().filter(|a| *a == "-netdev").count(), 2);
        // Wiping would erase the boot partitions: refused, and the image is untouched.
        assert!(net.wipe(0).is_err());
        drop(net);
        assert_eq!(
            std::fs::read(spec.dir.join("node-0.img")).unwrap(),
            b"image"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
