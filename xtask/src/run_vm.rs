//! `cargo xtask image` and `cargo xtask qemu`.

use crate::boot_paths::{accel, BootPath, READY_LINE};
use crate::{has_flag, kernel_build, option_value, Paths};
use qemu::{
    Echo, HostForward, LinePattern, MacAddr, Netdev, Nic, Protocol, RunConfig, Vm, VmError,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The kernel command line images are made with unless `--append` says otherwise.
pub const DEFAULT_CMDLINE: &str = "";
/// `cargo xtask qemu` runs until Ctrl-C, but never longer than this (a default; `--timeout`).
pub const INTERACTIVE_TIMEOUT_S: u64 = 24 * 3600;
/// How often the interactive loop looks for Ctrl-C and QEMU's exit.
const POLL_INTERVAL_MS: u64 = 50;
/// The guest's HTTP port (DESIGN.md "Networking under QEMU").
const GUEST_HTTP_PORT: u16 = 8080;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// `cargo xtask image [--store-mib N] [--append CMDLINE]`: build the kernel and the disk image;
/// with `--genesis`, a subnet's images, one per node ([`crate::image_fleet`]).
pub fn image_command(paths: &Paths, args: &[String]) -> Result<(), String> {
    if crate::image_fleet::wants_fleet(args) {
        return crate::image_fleet::fleet_command(paths, args);
    }
    let store_mib = match option_value(args, "--store-mib") {
        Some(v) => v
            .parse()
            .map_err(|_| format!("--store-mib: not a number: {v}"))?,
        None => image::DEFAULT_STORE_MIB,
    };
    let cmdline = option_value(args, "--append").unwrap_or(DEFAULT_CMDLINE);
    kernel_build::build_all(paths)?;
    build_image(paths, cmdline, store_mib)
}

/// Write `target/cairn/disk.img` from the built kernel.
pub fn build_image(paths: &Paths, cmdline: &str, store_mib: u64) -> Result<(), String> {
    let spec = image::DiskSpec {
        kernel: paths.kernel(),
        cmdline: cmdline.to_string(),
        store_mib,
        label: "node0".into(),
        config: None,
    };
    let out = paths.disk_image();
    let gpt = image::build_disk_image(&spec, &out, &paths.out.join("image-work"))
        .map_err(|e| e.to_string())?;
    println!(
        "wrote {} ({} MiB):",
        out.display(),
        gpt.disk_sectors * 512 / (1024 * 1024)
    );
    for p in &gpt.partitions {
        println!(
            "  {:<13} {:>6} MiB at {:>6} MiB  type {}",
            p.name,
            p.size_bytes() / (1024 * 1024),
            p.offset_bytes() / (1024 * 1024),
            p.type_guid
        );
    }
    Ok(())
}

/// `cargo xtask qemu [--bios|--uefi|--uefi-kernel] [--test] [--append CMDLINE] [--timeout SECS]`.
pub fn qemu_command(paths: &Paths, args: &[String]) -> Result<(), String> {
    let path = if has_flag(args, "--bios") {
        BootPath::Bios
    } else if has_flag(args, "--uefi") {
        BootPath::Uefi
    } else if has_flag(args, "--uefi-kernel") {
        BootPath::UefiKernel
    } else {
        BootPath::Pvh
    };
    let timeout_s = match option_value(args, "--timeout") {
        Some(v) => v
            .parse()
            .map_err(|_| format!("--timeout: not a number of seconds: {v}"))?,
        None => INTERACTIVE_TIMEOUT_S,
    };
    image::host_tools::ensure(image::host_tools::VM_TOOLS).map_err(|e| e.to_string())?;
    if let Some(v) = option_value(args, "--nodes") {
        let n = v
            .parse()
            .map_err(|_| format!("--nodes: not a number: {v}"))?;
        // SAFETY: as below: the handler only stores to an atomic; installed before any VM.
        unsafe {
            libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        }
        return crate::testnet::qemu_nodes(paths, n, Duration::from_secs(timeout_s), &STOP);
    }
    kernel_build::build_all(paths)?;
    let cmdline = option_value(args, "--append").unwrap_or(DEFAULT_CMDLINE);
    if matches!(path, BootPath::Bios | BootPath::Uefi) {
        build_image(paths, cmdline, image::DEFAULT_STORE_MIB)?;
    }
    let run_dir = paths.run_dir("qemu");
    let mut cmd = path.command(paths, &run_dir)?;
    if path == BootPath::Pvh {
        if has_flag(args, "--test") {
            cmd.boot = qemu::Boot::Kernel {
                elf: paths.test_kernel(),
                append: None,
                initrd: None,
            };
        }
        if !cmdline.is_empty() {
            cmd = cmd.append(cmdline);
        }
    }
    if path == BootPath::UefiKernel && !cmdline.is_empty() {
        cmd = cmd.append(cmdline);
    }
    let http_port = qemu::free_local_port().map_err(|e| format!("no free local port: {e}"))?;
    let forward = HostForward {
        protocol: Protocol::Tcp,
        host_port: http_port,
        guest_port: GUEST_HTTP_PORT,
    };
    cmd = cmd.nic(Nic {
        netdev: Netdev::User {
            forwards: vec![forward],
        },
        mac: MacAddr::local(0),
    });
    let config = RunConfig {
        name: "node0".into(),
        log_path: run_dir.join("console.log"),
        echo: Echo::Stdout {
            prefix: String::new(),
        },
        timeout: Duration::from_secs(timeout_s),
    };
    println!(
        "cairn: booting ({}, {:?}) — Ctrl-C stops the VM",
        path.name(),
        accel()
    );
    println!("  console log : {}", config.log_path.display());
    println!(
        "  guest :{GUEST_HTTP_PORT} is forwarded to http://127.0.0.1:{http_port}/ (try /health)"
    );
    println!("  command     : {}", cmd.display());
    println!("{}", "-".repeat(72));
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; it is installed
    // once, before any VM exists.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    let mut vm = Vm::spawn(&cmd, config).map_err(|e| e.to_string())?;
    interactive_loop(&mut vm)
}

fn interactive_loop(vm: &mut Vm) -> Result<(), String> {
    let ready = LinePattern::substring(READY_LINE);
    let mut ready_at = None;
    loop {
        if STOP.load(Ordering::SeqCst) {
            vm.kill();
            println!(
                "{}\ncairn: stopped by Ctrl-C after {:.1} s",
                "-".repeat(72),
                vm.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if ready_at.is_none() {
            match vm.wait_for(&ready, Duration::from_millis(POLL_INTERVAL_MS)) {
                Ok(line) => {
                    ready_at = Some(line.at);
                    eprintln!(
                        "[xtask] ready line seen {:.3} s after QEMU started (host clock)",
                        line.at.as_secs_f64()
                    );
                }
                Err(VmError::Timeout { .. }) if !vm.timed_out() => {}
                Err(err) => return finish(vm, Some(err.to_string())),
            }
            continue;
        }
        if vm.poll_exit().is_some() {
            return finish(vm, None);
        }
        if vm.timed_out() {
            return finish(vm, Some("the run reached its --timeout".into()));
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

fn finish(vm: &mut Vm, error: Option<String>) -> Result<(), String> {
    let outcome = vm.poll_exit();
    println!("{}", "-".repeat(72));
    match (outcome, error) {
        (Some(qemu::ExitOutcome::PowerOff | qemu::ExitOutcome::Pass), None) => {
            println!(
                "cairn: VM ended: {}",
                outcome.map(|o| o.to_string()).unwrap_or_default()
            );
            Ok(())
        }
        (outcome, error) => Err(format!(
            "VM ended: {}{}\n(console log: {})",
            outcome
                .map(|o| o.to_string())
                .unwrap_or_else(|| "still running, killed".into()),
            error.map(|e| format!("; {e}")).unwrap_or_default(),
            vm.log_path().display()
        )),
    }
}
