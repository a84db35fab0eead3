//! `cargo xtask`: build, image, run, test and benchmark cairn.
//!
//! ```text
//! cargo xtask build             kernel ELFs in target/cairn/, checked by the build guard
//! cargo xtask image             target/cairn/disk.img: GPT, GRUB for BIOS and UEFI
//! cargo xtask image --genesis   a subnet's genesis and one disk image per node (fleet/)
//! cargo xtask qemu              boot a 4-node testnet, print its URLs and agent snippets
//! cargo xtask qemu --console    boot one node (PVH) and stream its console; Ctrl-C stops it
//! cargo xtask test              every check, in order, stopping at the first failure
//! cargo xtask bench [NAME]      benchmarks (`boot`, or node's `bench_NAME` examples)
//! cargo xtask attest …          attestation (issue 9)
//! ```

mod attest;
mod bench;
mod bench_blk;
mod bench_net;
mod boot_paths;
mod disk_tests;
mod image_fleet;
mod kernel_build;
mod net_robust;
mod net_tests;
mod pe;
mod run_vm;
mod store_tests;
mod test_steps;
mod testnet;
mod testnet_bench;
mod testnet_client;
mod testnet_harness;
mod testnet_image;
mod testnet_qemu;
mod testnet_steps;
mod testnet_tests;
mod testnet_uefi;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  build                 build target/cairn/kernel.elf and kernel-test.elf (+ build guard)
  image [--store-mib N] [--append CMDLINE]
                        write target/cairn/disk.img (GPT; GRUB multiboot2 for BIOS and UEFI)
  image --genesis [--nodes N] [--out DIR] [--store-mib N] [--cup-interval H] [--append CMDLINE]
                        a genesis for an N-node subnet (default 4) and one disk image per
                        node, DIR/node-<i>.img (default DIR target/cairn/fleet/), each with its
                        node's configuration in cairn-config; prints the images, the root key
                        and registry.json (its measurement is the OVMF + kernel.efi boot's;
                        GRUB boots are not measured by SEV-SNP)
  qemu [--nodes N] [--fresh] [--uefi-kernel] [--timeout SECS]
                        boot a testnet of N nodes (default 4; --uefi-kernel: kernel.efi under
                        OVMF, configs through fw_cfg) with disks kept in
                        target/cairn/testnet/ (--fresh: new genesis, empty disks); prints
                        each node's http://127.0.0.1:<18080+i>, the root key and agent
                        snippets; Ctrl-C stops every VM (CAIRN_PORT_BASE moves the ports)
  qemu --console [--bios|--uefi|--uefi-kernel] [--test] [--append CMDLINE] [--timeout SECS]
                        boot one node and stream its serial console; Ctrl-C stops it
  test [--keep-going] [STEP…]
                        fmt, clippy, host tests, build, in-kernel tests, boot tests, fault tests
  bench [NAME] [--runs N]
                        list benchmarks, or run one (`boot`, or node/examples/bench_NAME.rs)
  attest …              attestation tooling

environment:
  CAIRN_ACCEL=kvm       run guests under KVM (default: tcg, which works everywhere)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match command.as_str() {
        "build" => kernel_build::build_all(&Paths::new()).map(|_| ()),
        "image" => run_vm::image_command(&Paths::new(), rest),
        "qemu" if testnet_qemu::wants_testnet(rest) => testnet_qemu::run(&Paths::new(), rest),
        "qemu" => run_vm::qemu_command(&Paths::new(), rest),
        "test" => return test_steps::run(&Paths::new(), rest),
        "bench" => bench::run(&Paths::new(), rest),
        "attest" => return attest::run(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Where things are.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The workspace root.
    pub root: PathBuf,
    /// `target/cairn`: everything xtask produces.
    pub out: PathBuf,
}

impl Paths {
    fn new() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let out = root.join("target").join("cairn");
        Paths { root, out }
    }

    pub fn kernel(&self) -> PathBuf {
        self.out.join("kernel.elf")
    }

    pub fn test_kernel(&self) -> PathBuf {
        self.out.join("kernel-test.elf")
    }

    pub fn disk_image(&self) -> PathBuf {
        self.out.join("disk.img")
    }

    /// Logs and scratch files of one run (`target/cairn/runs/<name>`).
    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.out.join("runs").join(name)
    }
}

/// `cargo` as invoked by the user (cargo sets `$CARGO` for the programs it runs).
pub fn cargo(paths: &Paths) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&paths.root);
    cmd
}

/// Run a command with inherited stdio; an error says what failed.
pub fn run_status(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed ({status})"))
    }
}

/// The value after `--name` in `args`, if any.
pub fn option_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Whether the flag `--name` is in `args`.
pub fn has_flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}
