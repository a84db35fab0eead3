//! `cargo xtask build`: the kernel ELFs and the build guard (DESIGN.md "The kernel build").
//!
//! The kernel is built for the host triple as a freestanding static binary. A crate that reaches
//! libc would still link, silently, into a kernel that crashes at run time; so the guard fails
//! the build when `nm -u` lists any undefined symbol or `readelf -d` finds a dynamic section.

use crate::{cargo, Paths};
use image::host_tools;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Build the kernel and the in-kernel test kernel; return their paths.
pub fn build_all(paths: &Paths) -> Result<(PathBuf, PathBuf), String> {
    host_tools::ensure(host_tools::BUILD_TOOLS).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&paths.out)
        .map_err(|e| format!("create {}: {e}", paths.out.display()))?;
    let kernel = paths.kernel();
    let test_kernel = paths.test_kernel();
    build_kernel(paths, &["--features", "image"], &kernel)?;
    build_kernel(paths, &["--features", "kernel-tests"], &test_kernel)?;
    for elf in [&kernel, &test_kernel] {
        guard(elf)?;
    }
    let efi = write_efi(&kernel, &kernel_efi(paths))?;
    println!(
        "built {} and {} (build guard passed), {}",
        kernel.display(),
        test_kernel.display(),
        efi
    );
    Ok((kernel, test_kernel))
}

/// `target/cairn/kernel.efi`: the kernel as a PE32+ UEFI application (xtask/src/pe.rs).
pub fn kernel_efi(paths: &Paths) -> PathBuf {
    paths.out.join("kernel.efi")
}

/// Wraps the kernel ELF at `elf` into a PE32+ image at `dest`; returns a line for the log.
pub fn write_efi(elf: &Path, dest: &Path) -> Result<String, String> {
    let bytes = std::fs::read(elf).map_err(|e| format!("read {}: {e}", elf.display()))?;
    let pe = crate::pe::wrap(&bytes).map_err(|e| format!("{}: {e}", elf.display()))?;
    std::fs::write(dest, &pe.bytes).map_err(|e| format!("write {}: {e}", dest.display()))?;
    Ok(format!(
        "{} ({} KiB PE32+, image base {:#x}, entry {:#x}, {} sections)",
        dest.display(),
        pe.bytes.len() / 1024,
        pe.image_base,
        pe.entry,
        pe.sections.len()
    ))
}

fn build_kernel(paths: &Paths, extra: &[&str], dest: &Path) -> Result<(), String> {
    let mut cmd = cargo(paths);
    cmd.args([
        "build",
        "-p",
        "kernel",
        "--release",
        "--message-format=json-render-diagnostics",
    ]);
    cmd.args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the kernel failed (cargo build -p kernel --release {})",
            extra.join(" ")
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let elf = stdout
        .lines()
        .filter(|l| {
            l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"name\":\"kernel\"")
        })
        .find_map(executable_of)
        .ok_or("cargo reported no kernel executable (is kernel/src/main.rs a binary?)")?;
    std::fs::copy(&elf, dest).map_err(|e| format!("copy {elf} to {}: {e}", dest.display()))?;
    Ok(())
}

/// The `"executable":"…"` field of one cargo JSON message.
fn executable_of(message: &str) -> Option<String> {
    let start = message.find("\"executable\":\"")? + "\"executable\":\"".len();
    let end = message[start..].find('"')? + start;
    Some(message[start..end].replace("\\\\", "\\"))
}

/// Fail if `elf` has undefined symbols or a dynamic section.
pub fn guard(elf: &Path) -> Result<(), String> {
    let nm = Command::new("nm")
        .arg("-u")
        .arg(elf)
        .output()
        .map_err(|e| format!("nm: {e}"))?;
    if !nm.status.success() {
        return Err(format!(
            "nm -u {} failed: {}",
            elf.display(),
            String::from_utf8_lossy(&nm.stderr)
        ));
    }
    let undefined = String::from_utf8_lossy(&nm.stdout).trim().to_string();
    if !undefined.is_empty() {
        return Err(format!(
            "build guard: {} has undefined symbols (something links against libc or another \
             library):\n{undefined}",
            elf.display()
        ));
    }
    let readelf = Command::new("readelf")
        .arg("-d")
        .arg(elf)
        .output()
        .map_err(|e| format!("readelf: {e}"))?;
    let dynamic = String::from_utf8_lossy(&readelf.stdout);
    if !readelf.status.success() || !dynamic.contains("There is no dynamic section") {
        return Err(format!(
            "build guard: {} has a dynamic section:\n{dynamic}",
            elf.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_field() {
        let msg = r#"{"reason":"compiler-artifact","target":{"name":"kernel"},"executable":"/w/target/release/kernel","fresh":true}"#;
        assert_eq!(
            executable_of(msg).as_deref(),
            Some("/w/target/release/kernel")
        );
        assert_eq!(executable_of(r#"{"executable":null}"#), None);
    }

    #[test]
    fn guard_rejects_a_dynamically_linked_program_and_accepts_a_static_object() {
        // /bin/sh is dynamically linked (and stripped, so only its dynamic section shows it).
        let err = guard(Path::new("/bin/sh")).unwrap_err();
        assert!(err.contains("has a dynamic section"), "{err}");
        // A freestanding static ELF, made with binutils like the kernel's final link.
        let dir = std::env::temp_dir().join(format!("cairn-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s.S"), ".globl _start\n_start: hlt\n").unwrap();
        let ok = |cmd: &mut Command| assert!(cmd.status().unwrap().success());
        ok(Command::new("as")
            .arg("-o")
            .arg(dir.join("s.o"))
            .arg(dir.join("s.S")));
        ok(Command::new("ld")
            .arg("-static")
            .arg("-o")
            .arg(dir.join("s.elf"))
            .arg(dir.join("s.o")));
        assert_eq!(guard(&dir.join("s.elf")), Ok(()));
        // The same object calling an undefined function fails to link statically with -r but
        // stays undefined in a relocatable link: the guard must see it.
        std::fs::write(dir.join("u.S"), ".globl _start\n_start: call malloc\n").unwrap();
        ok(Command::new("as")
            .arg("-o")
            .arg(dir.join("u.o"))
            .arg(dir.join("u.S")));
        let err = guard(&dir.join("u.o")).unwrap_err();
        assert!(err.contains("malloc"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
