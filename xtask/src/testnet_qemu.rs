//! `cargo xtask qemu [--nodes N] [--fresh] [--uefi-kernel] [--timeout SECS]`: a local cairn
//! subnet of N VMs (default [`DEFAULT_NODES`]) that a real IC agent can talk to. With
//! `--uefi-kernel` every node boots `kernel.efi` under OVMF (the SEV-SNP measured-boot shape)
//! with its configuration in the fw_cfg file `opt/cairn/node.cfg`, instead of PVH + `-initrd`.
//!
//! 1. builds the kernel if anything changed (cargo shows its progress);
//! 2. genesis and one store disk per node in `target/cairn/testnet/` (kept between runs, so a
//!    restart resumes from the disks with the same keys; `--fresh` starts over);
//! 3. boots the VMs, waits until every node's API answers and blocks finalize;
//! 4. prints each node's URL (`http://127.0.0.1:<PORT_BASE + i>`), the root key, and
//!    ready-to-paste `ic-agent` and `@dfinity/agent` snippets;
//! 5. keeps printing the finalized heights; Ctrl-C (or SIGTERM) stops every VM.
//!
//! Host ports: node i's HTTP API is forwarded from 127.0.0.1:[`PORT_BASE`]+i (18080, 18081, …),
//! or from `CAIRN_PORT_BASE`+i when that is set. Tests use ports the OS picks instead.

use crate::testnet_harness::{NodeBoot, Ports, Spec, Testnet};
use crate::{has_flag, kernel_build, option_value, Paths};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Nodes when `--nodes` is not given.
pub const DEFAULT_NODES: usize = 4;
/// Most nodes `--nodes` accepts.
pub const NODES_MAX: usize = 16;
/// First host port of the HTTP forwards (`CAIRN_PORT_BASE` overrides it).
pub const PORT_BASE: u16 = 18080;
/// `cargo xtask qemu` runs until Ctrl-C, but never longer than this (`--timeout` changes it).
pub const INTERACTIVE_TIMEOUT_S: u64 = 24 * 3600;
/// Bound on booting until every API answers and the first block is finalized.
pub const READY_TIMEOUT_S: u64 = 600;
/// How often the heights are printed while running.
const STATUS_EVERY_S: u64 = 15;
const POLL_INTERVAL_MS: u64 = 100;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Whether `cargo xtask qemu <args>` means the testnet (not the single-VM console boot).
pub fn wants_testnet(args: &[String]) -> bool {
    let single = ["--bios", "--uefi", "--test", "--append", "--console"];
    option_value(args, "--nodes").is_some() || !args.iter().any(|a| single.contains(&a.as_str()))
}

pub fn run(paths: &Paths, args: &[String]) -> Result<(), String> {
    let n = match option_value(args, "--nodes") {
        Some(v) => v
            .parse()
            .map_err(|_| format!("--nodes: not a number: {v}"))?,
        None => DEFAULT_NODES,
    };
    if n == 0 || n > NODES_MAX {
        return Err(format!("--nodes {n}: expected 1..={NODES_MAX}"));
    }
    let timeout_s = match option_value(args, "--timeout") {
        Some(v) => v
            .parse()
            .map_err(|_| format!("--timeout: not a number of seconds: {v}"))?,
        None => INTERACTIVE_TIMEOUT_S,
    };
    let base = match std::env::var("CAIRN_PORT_BASE") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("CAIRN_PORT_BASE: not a port: {v}"))?,
        Err(_) => PORT_BASE,
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; installed
    // before any VM exists.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let t0 = Instant::now();
    image::host_tools::ensure(image::host_tools::VM_TOOLS).map_err(|e| e.to_string())?;
    println!("cairn: [1/3] building the kernel (cargo xtask build)");
    kernel_build::build_all(paths)?;
    for i in 0..n {
        let port = base.saturating_add(i as u16);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(format!(
                "127.0.0.1:{port} is in use (another `cargo xtask qemu`?); stop it or set \
                 CAIRN_PORT_BASE"
            ));
        }
    }
    let boot = if has_flag(args, "--uefi-kernel") {
        NodeBoot::UefiKernel
    } else {
        NodeBoot::Pvh
    };
    let spec = Spec {
        boot,
        nodes: n,
        dir: paths.out.join("testnet"),
        fresh: has_flag(args, "--fresh"),
        ports: Ports::Fixed(base),
        limit: Duration::from_secs(timeout_s),
        append: String::new(),
        cup_interval_heights: image::genesis::ConsensusParams::IC_APPLICATION_SUBNET
            .cup_interval_heights,
    };
    let mut net = Testnet::create(paths, &spec)?;
    println!(
        "cairn: [2/3] {} {n}-node testnet in {} ({})",
        if net.created {
            "new genesis and empty disks for a"
        } else {
            "reusing the genesis and disks of the"
        },
        net.dir.display(),
        if net.created {
            "--fresh starts over next time too"
        } else {
            "--fresh starts over"
        }
    );
    println!(
        "cairn: [3/3] booting {n} VMs ({:?}, {}); consoles in {}",
        crate::boot_paths::accel(),
        match boot {
            NodeBoot::Pvh => "PVH kernel.elf, config as -initrd",
            NodeBoot::UefiKernel => "OVMF + kernel.efi, config through fw_cfg",
            NodeBoot::Disk => "SeaBIOS + GRUB from node-<i>.img, config in cairn-config",
        },
        net.dir.join("logs").display()
    );
    let booted = Instant::now();
    net.start_all()?;
    let ready = wait_ready(&mut net, n)?;
    let Some(first_block) = ready else {
        net.kill_all();
        println!("cairn: stopped by Ctrl-C; every VM is stopped");
        return Ok(());
    };
    print_endpoints(&net, first_block, booted, t0);
    let mut last_status = Instant::now();
    loop {
        if stop_requested() {
            net.kill_all();
            println!(
                "\ncairn: Ctrl-C: stopped {n} VMs after {:.0} s; disks kept in {}",
                booted.elapsed().as_secs_f64(),
                net.dir.display()
            );
            return Ok(());
        }
        if let Err(e) = net.poll_all() {
            net.kill_all();
            return Err(e);
        }
        if last_status.elapsed() >= Duration::from_secs(STATUS_EVERY_S) {
            last_status = Instant::now();
            let hs: Vec<String> = net
                .heights()
                .iter()
                .map(|h| h.map_or("-".into(), |h| h.to_string()))
                .collect();
            println!(
                "cairn: finalized heights [{}] ({:.0} s)",
                hs.join(", "),
                booted.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

/// Waits until every node's API answers and a block is finalized; `None` on Ctrl-C. Returns
/// the host time from boot to the first finalized block.
fn wait_ready(net: &mut Testnet, n: usize) -> Result<Option<Duration>, String> {
    let start = Instant::now();
    let limit = Duration::from_secs(READY_TIMEOUT_S);
    let mut api_up = vec![false; n];
    let mut first: Option<Duration> = None;
    let mut said_height = 0;
    loop {
        if stop_requested() {
            return Ok(None);
        }
        net.poll_all()?;
        let down: Vec<usize> = (0..n).filter(|&i| !api_up[i]).collect();
        for (&i, up) in down.iter().zip(net.apis_up(&down)) {
            if up {
                api_up[i] = true;
                println!(
                    "cairn:   node{i} API up on {} ({:.1} s)",
                    net.url(i),
                    start.elapsed().as_secs_f64()
                );
            }
        }
        if first.is_none() {
            first = net.nodes.iter().filter_map(|node| node.first_block).min();
        }
        let top = net.heights().iter().flatten().copied().max().unwrap_or(0);
        if top > said_height {
            said_height = top;
            println!(
                "cairn:   finalized height {top} ({:.1} s)",
                start.elapsed().as_secs_f64()
            );
        }
        if first.is_some() && api_up.iter().all(|u| *u) {
            return Ok(first);
        }
        if start.elapsed() > limit {
            let why = format!(
                "not ready after {READY_TIMEOUT_S} s: APIs up {api_up:?}, heights {:?}{}",
                net.heights(),
                net.console_tails()
            );
            net.kill_all();
            return Err(why);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn print_endpoints(net: &Testnet, first_block: Duration, booted: Instant, t0: Instant) {
    let rule = "-".repeat(78);
    let key = net.root_key_hex();
    let urls = net.urls();
    println!("{rule}");
    println!(
        "cairn: {}-node subnet finalizing: first block {:.1} s after the VMs started \
         ({:.1} s after `cargo xtask qemu` started; ready at {:.1} s)",
        urls.len(),
        first_block.as_secs_f64(),
        first_block.as_secs_f64() + booted.duration_since(t0).as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    for (i, url) in urls.iter().enumerate() {
        println!(
            "  node{i}: {url}   (disk {})",
            net.nodes[i]
                .disk
                .strip_prefix(&net.dir)
                .unwrap_or(&net.nodes[i].disk)
                .display()
        );
    }
    println!("  root key (DER, hex): {key}");
    println!("  (agents get the same key from /api/v2/status with fetch_root_key)");
    println!("{rule}");
    println!(
        "Rust (Cargo.toml: ic-agent = \"0.49\", ic-utils = \"0.49\", \
         tokio = {{ version = \"1\", features = [\"full\"] }}):"
    );
    println!(
        r#"
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {{
    let agent = ic_agent::Agent::builder().with_url("{u0}").build()?;
    agent.fetch_root_key().await?; // a local testnet: take its root key from /api/v2/status
    let mgmt = ic_utils::interfaces::ManagementCanister::create(&agent);
    let (canister,) = mgmt
        .create_canister()
        .as_provisional_create_with_amount(Some(100_000_000_000_000))
        .call_and_wait()
        .await?;
    println!("created {{canister}} (any node works too: {u1})");
    Ok(())
}}
"#,
        u0 = urls[0],
        u1 = urls.last().unwrap_or(&urls[0])
    );
    println!("JavaScript (npm i @dfinity/agent; save as cairn.mjs, run: node cairn.mjs):");
    println!(
        r#"
import {{ HttpAgent }} from '@dfinity/agent';
const agent = await HttpAgent.create({{ host: '{u0}', shouldFetchRootKey: true }});
console.log('root key', Buffer.from(agent.rootKey).toString('hex').slice(0, 32), '…');
console.log('status', await agent.status());
"#,
        u0 = urls[0]
    );
    println!("{rule}");
    println!("cairn: running; Ctrl-C stops every VM (disks are kept; --fresh starts over)");
}

#[cfg(test)]
mod tests {
    use super::wants_testnet;

    #[test]
    fn uefi_kernel_boots_the_testnet_unless_a_console_is_asked_for() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(wants_testnet(&args(&[])));
        assert!(wants_testnet(&args(&["--uefi-kernel"])));
        assert!(wants_testnet(&args(&["--uefi-kernel", "--fresh"])));
        assert!(!wants_testnet(&args(&["--uefi-kernel", "--console"])));
        assert!(!wants_testnet(&args(&["--uefi"])));
        assert!(!wants_testnet(&args(&["--bios"])));
        assert!(wants_testnet(&args(&["--bios", "--nodes", "2"])));
    }
}
