//! GRUB for both firmware kinds, made from Debian's prebuilt modules without root.
//!
//! - BIOS: `grub-mkimage -O i386-pc` makes `core.img` (diskboot.img + decompressor + kernel +
//!   modules + an early config). It goes into the GPT's BIOS boot partition, and GRUB's
//!   `boot.img` goes into the MBR's boot-code area. Both are patched the way `grub-bios-setup`
//!   does (grub-core/boot/i386/pc/boot.S and diskboot.S, util/setup.c), which needs a block
//!   device; here the patch is done on bytes:
//!
//!   ```text
//!   boot.img  0x5c  u64  LBA of core.img's first sector        (GRUB_BOOT_MACHINE_KERNEL_SECTOR)
//!             0x64  u8   0xff: use the drive the BIOS booted   (GRUB_BOOT_MACHINE_BOOT_DRIVE)
//!             0x66  2×u8 0x90 0x90: skip the floppy drive check (GRUB_BOOT_MACHINE_DRIVE_CHECK)
//!   core.img  0x1f4 u64  LBA of core.img's second sector       (blocklist start, diskboot.S)
//!             0x1fc u16  sectors after the first to load       (blocklist length)
//!   ```
//!   The MBR keeps only boot.img's first 440 bytes; the disk signature and partition table
//!   after them are the protective MBR's.
//! - UEFI: `grub-mkimage -O x86_64-efi` makes a single `BOOTX64.EFI` with the same modules.
//!
//! Both early configs find the ESP by its FAT volume id, and normal mode then reads
//! `/boot/grub/grub.cfg` there, which loads the kernel with `multiboot2`.

use crate::ImageError;
use std::path::Path;
use std::process::Command;

pub const GRUB_PC_DIR: &str = "/usr/lib/grub/i386-pc";
pub const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";
/// Modules embedded in both images: enough to find the ESP, read grub.cfg and multiboot2.
const COMMON_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "search",
    "search_fs_uuid",
    "normal",
    "configfile",
    "echo",
    "test",
    "multiboot2",
    "boot",
    "serial",
    "terminal",
    "sleep",
    "halt",
    "reboot",
];
const BIOS_MODULES: &[&str] = &["biosdisk"];
const EFI_MODULES: &[&str] = &["efi_gop"];
const BOOT_IMG_KERNEL_SECTOR: usize = 0x5c;
const BOOT_IMG_BOOT_DRIVE: usize = 0x64;
const BOOT_IMG_DRIVE_CHECK: usize = 0x66;
/// The MBR bytes boot.img may occupy (the rest is disk signature and partition table).
pub const MBR_BOOT_CODE_BYTES: usize = 440;
const CORE_BLOCKLIST_START: usize = 0x200 - 12;
const CORE_BLOCKLIST_LEN: usize = 0x200 - 4;
const SECTOR: usize = 512;

/// The early config embedded in the BIOS and UEFI images.
pub fn early_config(esp_volume_id: &str, serial_console: bool) -> String {
    let mut cfg = String::new();
    if serial_console {
        cfg.push_str(
            "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n",
        );
    }
    cfg.push_str(&format!(
        "search --no-floppy --fs-uuid --set=root {esp_volume_id}\nset prefix=($root)/boot/grub\n"
    ));
    cfg
}

/// The grub.cfg on the ESP: boot the kernel by multiboot2 at once, no menu.
pub fn grub_cfg(kernel_path: &str, cmdline: &str) -> String {
    format!(
        "set timeout=0\nset timeout_style=hidden\nset default=0\n\
         menuentry \"cairn\" {{\n    multiboot2 {kernel_path} {cmdline}\n    boot\n}}\n"
    )
}

/// Run grub-mkimage for `format` (`i386-pc` or `x86_64-efi`).
pub fn mkimage(
    grub_mkimage: &Path,
    format: &str,
    modules_dir: &str,
    early_cfg: &Path,
    out: &Path,
) -> Result<(), ImageError> {
    let extra = if format == "i386-pc" {
        BIOS_MODULES
    } else {
        EFI_MODULES
    };
    let mut cmd = Command::new(grub_mkimage);
    cmd.args(["-O", format, "-d", modules_dir, "-p", "/boot/grub", "-c"])
        .arg(early_cfg)
        .arg("-o")
        .arg(out)
        .args(COMMON_MODULES)
        .args(extra);
    crate::run(&mut cmd)
}

/// The MBR boot code for a disk whose core.img starts at `core_lba`.
pub fn patch_boot_img(
    boot_img: &[u8],
    core_lba: u64,
) -> Result<[u8; MBR_BOOT_CODE_BYTES], ImageError> {
    if boot_img.len() != SECTOR {
        return Err(ImageError::Grub(format!(
            "boot.img is {} bytes, not 512",
            boot_img.len()
        )));
    }
    let mut code = [0u8; MBR_BOOT_CODE_BYTES];
    code.copy_from_slice(&boot_img[..MBR_BOOT_CODE_BYTES]);
    code[BOOT_IMG_KERNEL_SECTOR..BOOT_IMG_KERNEL_SECTOR + 8]
        .copy_from_slice(&core_lba.to_le_bytes());
    code[BOOT_IMG_BOOT_DRIVE] = 0xff;
    code[BOOT_IMG_DRIVE_CHECK] = 0x90;
    code[BOOT_IMG_DRIVE_CHECK + 1] = 0x90;
    Ok(code)
}

/// core.img with its first blocklist pointing at the rest of itself on the disk.
pub fn patch_core_img(core_img: &[u8], core_lba: u64) -> Result<Vec<u8>, ImageError> {
    let sectors = core_img.len().div_ceil(SECTOR);
    if sectors < 2 {
        return Err(ImageError::Grub(
            "core.img is smaller than two sectors".into(),
        ));
    }
    let rest = u16::try_from(sectors - 1).map_err(|_| {
        ImageError::Grub(format!("core.img is too large ({} bytes)", core_img.len()))
    })?;
    let mut core = core_img.to_vec();
    core.resize(sectors * SECTOR, 0);
    core[CORE_BLOCKLIST_START..CORE_BLOCKLIST_START + 8]
        .copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[CORE_BLOCKLIST_LEN..CORE_BLOCKLIST_LEN + 2].copy_from_slice(&rest.to_le_bytes());
    Ok(core)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_img_patch() {
        let mut boot = vec![0xabu8; 512];
        boot[BOOT_IMG_DRIVE_CHECK] = 0x74;
        let code = patch_boot_img(&boot, 2048).unwrap();
        assert_eq!(&code[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(code[0x64], 0xff);
        assert_eq!(&code[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(code[0], 0xab);
        assert!(patch_boot_img(&boot[..100], 1).is_err());
    }

    #[test]
    fn core_img_blocklist_covers_the_rest() {
        let core = vec![0u8; 512 * 60 + 7];
        let patched = patch_core_img(&core, 2048).unwrap();
        assert_eq!(patched.len(), 512 * 61);
        assert_eq!(&patched[0x1f4..0x1fc], &2049u64.to_le_bytes());
        assert_eq!(&patched[0x1fc..0x1fe], &60u16.to_le_bytes());
    }

    #[test]
    fn configs() {
        let early = early_config("ca1e-0001", true);
        assert!(early.starts_with("serial --unit=0"));
        assert!(early.contains("search --no-floppy --fs-uuid --set=root ca1e-0001\n"));
        let cfg = grub_cfg("/boot/cairn/kernel.elf", "cairn.x=1");
        assert!(cfg.contains("    multiboot2 /boot/cairn/kernel.elf cairn.x=1\n"));
    }
}
