//! The ways cairn boots under QEMU, and booting one of them to the ready line.

use crate::Paths;
use qemu::{Accel, Echo, Firmware, LinePattern, QemuCommand, RunConfig, Vm};
use std::time::Duration;

/// The console line that marks boot complete (HELPERS.md).
pub const READY_LINE: &str = "cairn: ready";
/// Host time a PVH boot may take to reach the ready line (TCG on a busy 2-core host).
pub const PVH_READY_TIMEOUT_S: u64 = 60;
/// Host time SeaBIOS + GRUB + kernel may take.
pub const BIOS_READY_TIMEOUT_S: u64 = 120;
/// Host time OVMF + GRUB + kernel may take.
pub const UEFI_READY_TIMEOUT_S: u64 = 180;

/// A boot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootPath {
    /// QEMU loads the ELF directly through its PVH note.
    Pvh,
    /// SeaBIOS → GRUB (i386-pc) → multiboot2, from the disk image.
    Bios,
    /// OVMF → GRUB (x86_64-efi) → multiboot2, from the disk image.
    Uefi,
    /// OVMF loads `kernel.efi` (the PE32+ form) from `-kernel` and starts it, no GRUB: the
    /// shape of SEV-SNP measured direct boot (kernel/src/efi.rs, xtask/src/pe.rs).
    UefiKernel,
}

impl BootPath {
    /// The paths `cargo xtask bench boot` times.
    pub const ALL: [BootPath; 3] = [BootPath::Pvh, BootPath::Bios, BootPath::Uefi];

    pub fn name(self) -> &'static str {
        match self {
            BootPath::Pvh => "pvh",
            BootPath::Bios => "bios",
            BootPath::Uefi => "uefi",
            BootPath::UefiKernel => "uefi-kernel",
        }
    }

    pub fn ready_timeout(self) -> Duration {
        Duration::from_secs(match self {
            BootPath::Pvh => PVH_READY_TIMEOUT_S,
            BootPath::Bios => BIOS_READY_TIMEOUT_S,
            BootPath::Uefi | BootPath::UefiKernel => UEFI_READY_TIMEOUT_S,
        })
    }

    /// The QEMU command for this path. Disk boots use a snapshot of the image, so runs never
    /// change it and may run side by side. `run_dir` holds per-run files (OVMF's variables).
    pub fn command(self, paths: &Paths, run_dir: &std::path::Path) -> Result<QemuCommand, String> {
        let cmd = match self {
            BootPath::Pvh => QemuCommand::pvh(paths.kernel()),
            BootPath::Bios => snapshot_disk(QemuCommand::disk(paths.disk_image())),
            BootPath::Uefi => {
                let firmware = Firmware::find_ovmf().ok_or_else(missing_ovmf)?;
                let pflash = firmware
                    .pflash(&run_dir.join("OVMF_VARS.fd"))
                    .map_err(|e| format!("copy OVMF variables: {e}"))?;
                snapshot_disk(QemuCommand::disk(paths.disk_image())).uefi(pflash)
            }
            BootPath::UefiKernel => {
                let firmware = Firmware::find_ovmf().ok_or_else(missing_ovmf)?;
                let pflash = firmware
                    .pflash(&run_dir.join("OVMF_VARS.fd"))
                    .map_err(|e| format!("copy OVMF variables: {e}"))?;
                QemuCommand::pvh(crate::kernel_build::kernel_efi(paths)).uefi(pflash)
            }
        };
        Ok(cmd.accel(accel()))
    }
}

fn snapshot_disk(mut cmd: QemuCommand) -> QemuCommand {
    for drive in &mut cmd.drives {
        drive.snapshot = true;
    }
    cmd
}

fn missing_ovmf() -> String {
    let tools = [image::host_tools::OVMF];
    match image::host_tools::ensure(&tools) {
        Ok(()) => "OVMF was installed; run again".into(),
        Err(missing) => missing.to_string(),
    }
}

/// The accelerator: `CAIRN_ACCEL=kvm` selects KVM, anything else TCG.
pub fn accel() -> Accel {
    match std::env::var("CAIRN_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        _ => Accel::Tcg,
    }
}

/// Start `cmd` quietly with its console in `run_dir/console.log`, limited to `timeout` overall.
pub fn spawn_quiet(
    name: &str,
    cmd: &QemuCommand,
    run_dir: &std::path::Path,
    timeout: Duration,
) -> Result<Vm, String> {
    let config = RunConfig {
        name: name.to_string(),
        log_path: run_dir.join("console.log"),
        echo: Echo::Quiet,
        timeout,
    };
    Vm::spawn(cmd, config).map_err(|e| e.to_string())
}

/// Boot `path` until the ready line; return the host time from VM start to that line.
/// On failure the error carries the console and QEMU's stderr.
pub fn boot_to_ready(paths: &Paths, path: BootPath, run_name: &str) -> Result<Duration, String> {
    let run_dir = paths.run_dir(run_name);
    let cmd = path.command(paths, &run_dir)?;
    let limit = path.ready_timeout();
    let mut vm = spawn_quiet(run_name, &cmd, &run_dir, limit)?;
    match vm.wait_for(&LinePattern::substring(READY_LINE), limit) {
        Ok(line) => Ok(line.at),
        Err(err) => Err(failure_report(&mut vm, &err.to_string())),
    }
}

/// An error message with the VM's console (the last lines) and QEMU's stderr.
pub fn failure_report(vm: &mut Vm, what: &str) -> String {
    const SHOWN_LINES: usize = 200;
    let console = vm.console();
    let skip = console.len().saturating_sub(SHOWN_LINES);
    let mut text = format!(
        "{what}\n--- serial console ({}) ---\n",
        vm.log_path().display()
    );
    for line in vm.console().iter().skip(skip) {
        text.push_str(&format!("[{:8.3}] {}\n", line.at.as_secs_f64(), line.text));
    }
    let stderr = vm.stderr_text();
    if !stderr.trim().is_empty() {
        text.push_str(&format!("--- QEMU stderr ---\n{}\n", stderr.trim_end()));
    }
    text.push_str(&format!("--- command ---\n{}", vm.command_line()));
    text
}
