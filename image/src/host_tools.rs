//! The host programs and files cairn's tooling needs, and how to get them.
//!
//! [`ensure`] looks for each [`HostTool`]; when some are missing it installs their Debian
//! packages with `apt-get` if running as root, and otherwise stops with the exact
//! `apt-get install …` command to run.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Directories searched for programs besides `$PATH` (`mkfs.fat` lives in `/sbin`, which is not
/// on an ordinary user's path).
const EXTRA_BIN_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// What to look for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A program on the path.
    Program(&'static str),
    /// A file or directory at a fixed place.
    Path(&'static str),
}

/// One thing the tooling needs and the Debian package that provides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostTool {
    pub probe: Probe,
    pub package: &'static str,
}

const fn program(name: &'static str, package: &'static str) -> HostTool {
    HostTool {
        probe: Probe::Program(name),
        package,
    }
}

const fn path(at: &'static str, package: &'static str) -> HostTool {
    HostTool {
        probe: Probe::Path(at),
        package,
    }
}

pub const QEMU: HostTool = program("qemu-system-x86_64", "qemu-system-x86");
pub const OVMF: HostTool = path("/usr/share/OVMF", "ovmf");
pub const GRUB_MKIMAGE: HostTool = program("grub-mkimage", "grub-common");
pub const GRUB_PC_MODULES: HostTool = path("/usr/lib/grub/i386-pc/boot.img", "grub-pc-bin");
pub const GRUB_EFI_MODULES: HostTool =
    path("/usr/lib/grub/x86_64-efi/kernel.img", "grub-efi-amd64-bin");
pub const MKFS_FAT: HostTool = program("mkfs.fat", "dosfstools");
pub const MTOOLS_MCOPY: HostTool = program("mcopy", "mtools");
pub const MTOOLS_MMD: HostTool = program("mmd", "mtools");
pub const NM: HostTool = program("nm", "binutils");
pub const READELF: HostTool = program("readelf", "binutils");

/// What `cargo xtask image` needs.
pub const IMAGE_TOOLS: &[HostTool] = &[
    GRUB_MKIMAGE,
    GRUB_PC_MODULES,
    GRUB_EFI_MODULES,
    MKFS_FAT,
    MTOOLS_MCOPY,
    MTOOLS_MMD,
];
/// What running VMs needs.
pub const VM_TOOLS: &[HostTool] = &[QEMU, OVMF];
/// What the build guard needs.
pub const BUILD_TOOLS: &[HostTool] = &[NM, READELF];

impl HostTool {
    /// Where the tool is, if present.
    pub fn locate(&self) -> Option<PathBuf> {
        match self.probe {
            Probe::Path(at) => Path::new(at).exists().then(|| PathBuf::from(at)),
            Probe::Program(name) => find_program(name),
        }
    }

    fn describe(&self) -> String {
        match self.probe {
            Probe::Program(name) => format!("`{name}` (package {})", self.package),
            Probe::Path(at) => format!("{at} (package {})", self.package),
        }
    }
}

/// Find a program on `$PATH` or in the usual system directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_BIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Host tools are missing and could not be installed here.
#[derive(Debug)]
pub struct MissingTools {
    pub missing: Vec<String>,
    /// The Debian packages that provide them.
    pub packages: Vec<String>,
    /// The command that installs them.
    pub install_command: String,
    /// Set when an install was attempted and failed.
    pub install_error: Option<String>,
}

impl fmt::Display for MissingTools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "missing host tools: {}", self.missing.join(", "))?;
        if let Some(err) = &self.install_error {
            writeln!(f, "installing them failed: {err}")?;
        }
        write!(f, "install them with:\n    {}", self.install_command)
    }
}

impl std::error::Error for MissingTools {}

/// The missing tools among `tools` and the command that installs them, or `None`.
pub fn missing(tools: &[HostTool]) -> Option<MissingTools> {
    let absent: Vec<&HostTool> = tools.iter().filter(|t| t.locate().is_none()).collect();
    if absent.is_empty() {
        return None;
    }
    let mut packages: Vec<&str> = absent.iter().map(|t| t.package).collect();
    packages.sort_unstable();
    packages.dedup();
    Some(MissingTools {
        missing: absent.iter().map(|t| t.describe()).collect(),
        packages: packages.iter().map(|p| p.to_string()).collect(),
        install_command: format!("sudo apt-get install -y {}", packages.join(" ")),
        install_error: None,
    })
}

/// Make sure every tool in `tools` is present: install missing packages with apt-get when root,
/// otherwise fail with the command to run.
pub fn ensure(tools: &[HostTool]) -> Result<(), MissingTools> {
    let Some(mut report) = missing(tools) else {
        return Ok(());
    };
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(report);
    }
    let packages: Vec<&str> = report.packages.iter().map(String::as_str).collect();
    eprintln!("installing missing host packages: {}", packages.join(" "));
    if let Err(err) = apt_install(&packages) {
        report.install_error = Some(err);
        return Err(report);
    }
    match missing(tools) {
        None => Ok(()),
        Some(mut still) => {
            still.install_error = Some("packages installed but the tools are still missing".into());
            Err(still)
        }
    }
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    let run = |args: &[&str]| -> Result<(), String> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("apt-get: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`apt-get {}` failed ({status})", args.join(" ")))
        }
    };
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend_from_slice(packages);
    // The package lists may be stale or absent on a fresh machine: update once on failure.
    run(&install).or_else(|_| {
        run(&["update"])?;
        run(&install)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_name_the_exact_install_command() {
        let fake = [
            program("cairn-no-such-program-a", "pkg-b"),
            path("/nonexistent/cairn", "pkg-a"),
            program("sh", "dash"),
            program("cairn-no-such-program-c", "pkg-b"),
        ];
        let report = missing(&fake).unwrap();
        assert_eq!(
            report.install_command,
            "sudo apt-get install -y pkg-a pkg-b"
        );
        assert_eq!(report.packages, ["pkg-a", "pkg-b"]);
        assert_eq!(report.missing.len(), 3);
        let text = report.to_string();
        assert!(text.contains("`cairn-no-such-program-a` (package pkg-b)"));
        assert!(text.contains("/nonexistent/cairn (package pkg-a)"));
        assert!(text.ends_with("install them with:\n    sudo apt-get install -y pkg-a pkg-b"));
    }

    #[test]
    fn present_tools_are_found() {
        assert!(program("sh", "dash").locate().is_some());
        assert!(ensure(&[program("sh", "dash")]).is_ok());
    }
}
