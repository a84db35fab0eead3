//! `image`: cairn's disk images (and, in later issues, genesis and node configuration).
//!
//! [`build_disk_image`] writes a raw GPT disk image that boots the kernel ELF with GRUB
//! (multiboot2) on both BIOS and UEFI firmware, without root, loop devices or mounts: the FAT
//! file system is made in a file with mkfs.fat/mtools, GRUB with grub-mkimage, the GPT by
//! [`gpt`], and everything is written into the image at its partition's offset.
//!
//! Partitions, in order (all aligned to 1 MiB):
//!
//! ```text
//! #  name          type                     size                 contents
//! 1  bios-boot     BIOS boot                1 MiB                GRUB core.img (i386-pc)
//! 2  cairn-esp     EFI system (FAT32)       64 MiB               EFI/BOOT/BOOTX64.EFI,
//!                                                                boot/grub/grub.cfg,
//!                                                                boot/cairn/kernel.elf
//! 3  cairn-config  TYPE_CAIRN_CONFIG        16 MiB               the node's configuration at
//!                                                                byte 0 (`DiskSpec::config`),
//!                                                                the rest zeroed; all zeroed
//!                                                                without one
//! 4  cairn-store   TYPE_CAIRN_STORE         store_mib (256 MiB)  the state store (zeroed,
//!                                                                sparse in the file)
//! ```
//!
//! The MBR's boot code is GRUB's boot.img, which loads core.img from partition 1.

pub mod genesis;
pub mod gpt;
mod grub;
pub mod host_tools;

use gpt::{Gpt, Partition, SECTOR_BYTES};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

pub use grub::{early_config, grub_cfg};

const MIB: u64 = 1024 * 1024;
/// Partition alignment.
pub const ALIGN_BYTES: u64 = MIB;
pub const BIOS_BOOT_BYTES: u64 = MIB;
pub const ESP_BYTES: u64 = 64 * MIB;
pub const CONFIG_BYTES: u64 = 16 * MIB;
pub const DEFAULT_STORE_MIB: u64 = 256;
/// The ESP's FAT volume id; GRUB finds the ESP by it (as the "fs uuid" `ca1e-0001`).
pub const ESP_VOLUME_ID: u32 = 0xca1e_0001;
pub const PART_BIOS_BOOT: &str = "bios-boot";
pub const PART_ESP: &str = "cairn-esp";
pub const PART_CONFIG: &str = "cairn-config";
pub const PART_STORE: &str = "cairn-store";
/// Where the kernel sits on the ESP.
pub const ESP_KERNEL_PATH: &str = "/boot/cairn/kernel.elf";

/// What to put in a disk image.
#[derive(Clone, Debug)]
pub struct DiskSpec {
    /// The multiboot2 kernel ELF.
    pub kernel: PathBuf,
    /// The kernel command line GRUB passes.
    pub cmdline: String,
    /// Size of the `cairn-store` partition.
    pub store_mib: u64,
    /// Seeds the disk's and partitions' unique GUIDs (e.g. `"node0"`): images are reproducible.
    pub label: String,
    /// The node's configuration (an encoded `genesis::config::NodeConfig`), written at byte 0
    /// of the `cairn-config` partition; `None` leaves the partition zeroed (a node without
    /// configuration). At most [`CONFIG_BYTES`].
    pub config: Option<Vec<u8>>,
}

/// Why an image could not be made.
#[derive(Debug)]
pub enum ImageError {
    Tools(host_tools::MissingTools),
    Io {
        context: String,
        error: io::Error,
    },
    Command {
        command: String,
        detail: String,
    },
    Grub(String),
    Gpt(gpt::GptError),
    /// The node configuration does not fit the `cairn-config` partition.
    ConfigTooLarge {
        bytes: u64,
        partition_bytes: u64,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Tools(missing) => write!(f, "{missing}"),
            ImageError::Io { context, error } => write!(f, "{context}: {error}"),
            ImageError::Command { command, detail } => write!(f, "`{command}` failed: {detail}"),
            ImageError::Grub(msg) => write!(f, "GRUB: {msg}"),
            ImageError::Gpt(err) => write!(f, "GPT: {err}"),
            ImageError::ConfigTooLarge {
                bytes,
                partition_bytes,
            } => write!(
                f,
                "the node configuration ({bytes} bytes) does not fit the {PART_CONFIG} \
                 partition ({partition_bytes} bytes)"
            ),
        }
    }
}

impl std::error::Error for ImageError {}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let context = context.into();
    move |error| ImageError::Io { context, error }
}

/// Run a host command; fail with its stderr if it fails.
pub(crate) fn run(cmd: &mut Command) -> Result<(), ImageError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| ImageError::Command {
        command: shown.clone(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let detail = format!(
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Err(ImageError::Command {
        command: shown,
        detail,
    })
}

/// The partition table of an image with a `store_mib` store.
pub fn layout(spec_label: &str, store_mib: u64) -> Gpt {
    let sizes = [
        (PART_BIOS_BOOT, gpt::TYPE_BIOS_BOOT, BIOS_BOOT_BYTES),
        (PART_ESP, gpt::TYPE_EFI_SYSTEM, ESP_BYTES),
        (PART_CONFIG, gpt::TYPE_CAIRN_CONFIG, CONFIG_BYTES),
        (PART_STORE, gpt::TYPE_CAIRN_STORE, store_mib * MIB),
    ];
    let mut next = ALIGN_BYTES / SECTOR_BYTES;
    let mut partitions = Vec::new();
    for (name, type_guid, bytes) in sizes {
        let sectors = bytes / SECTOR_BYTES;
        partitions.push(Partition {
            type_guid,
            unique_guid: gpt::derived_guid(&format!("{spec_label}/{name}")),
            first_lba: next,
            last_lba: next + sectors - 1,
            attributes: 0,
            name: name.to_string(),
        });
        next += sectors;
    }
    // One aligned MiB at the end holds the backup GPT.
    let disk_sectors = next + ALIGN_BYTES / SECTOR_BYTES;
    Gpt {
        disk_guid: gpt::derived_guid(&format!("{spec_label}/disk")),
        disk_sectors,
        partitions,
    }
}

/// The partition called `name`.
pub fn partition<'a>(gpt: &'a Gpt, name: &str) -> Option<&'a Partition> {
    gpt.partitions.iter().find(|p| p.name == name)
}

/// Write the bootable disk image `out`, using `work_dir` for intermediate files.
pub fn build_disk_image(spec: &DiskSpec, out: &Path, work_dir: &Path) -> Result<Gpt, ImageError> {
    let gpt = layout(&spec.label, spec.store_mib);
    let config = spec.config.as_deref().unwrap_or_default();
    config_partition(&gpt, config)?;
    host_tools::ensure(host_tools::IMAGE_TOOLS).map_err(ImageError::Tools)?;
    let tool = |t: host_tools::HostTool| {
        t.locate()
            .ok_or_else(|| ImageError::Grub(format!("{t:?} vanished")))
    };
    let grub_mkimage = tool(host_tools::GRUB_MKIMAGE)?;
    fs::create_dir_all(work_dir).map_err(io_err(format!("create {}", work_dir.display())))?;
    let volume_id = format!("{:04x}-{:04x}", ESP_VOLUME_ID >> 16, ESP_VOLUME_ID & 0xffff);

    let write = |name: &str, text: String| -> Result<PathBuf, ImageError> {
        let path = work_dir.join(name);
        fs::write(&path, text).map_err(io_err(format!("write {}", path.display())))?;
        Ok(path)
    };
    let bios_cfg = write("early-bios.cfg", early_config(&volume_id, true))?;
    let efi_cfg = write("early-efi.cfg", early_config(&volume_id, false))?;
    let grub_cfg = write("grub.cfg", grub_cfg(ESP_KERNEL_PATH, &spec.cmdline))?;
    let core_img = work_dir.join("core.img");
    let bootx64 = work_dir.join("BOOTX64.EFI");
    grub::mkimage(
        &grub_mkimage,
        "i386-pc",
        grub::GRUB_PC_DIR,
        &bios_cfg,
        &core_img,
    )?;
    grub::mkimage(
        &grub_mkimage,
        "x86_64-efi",
        grub::GRUB_EFI_DIR,
        &efi_cfg,
        &bootx64,
    )?;

    let esp = work_dir.join("esp.fat");
    let files = [
        (bootx64.as_path(), "/EFI/BOOT/BOOTX64.EFI"),
        (grub_cfg.as_path(), "/boot/grub/grub.cfg"),
        (spec.kernel.as_path(), ESP_KERNEL_PATH),
    ];
    make_esp(&esp, &files)?;

    let read = |p: &Path| fs::read(p).map_err(io_err(format!("read {}", p.display())));
    let boot_img = read(&Path::new(grub::GRUB_PC_DIR).join("boot.img"))?;
    let parts = Parts {
        boot_img: &boot_img,
        core_img: &read(&core_img)?,
        esp: &read(&esp)?,
        config,
    };
    let tmp = out.with_extension("img.partial");
    assemble(&gpt, &tmp, &parts)?;
    fs::rename(&tmp, out).map_err(io_err(format!("rename to {}", out.display())))?;
    Ok(gpt)
}

/// Make the FAT32 ESP in the file `esp` and copy `files` (host path, path on the ESP) into it.
fn make_esp(esp: &Path, files: &[(&Path, &str)]) -> Result<(), ImageError> {
    let mkfs = host_tools::MKFS_FAT
        .locate()
        .ok_or_else(|| ImageError::Grub("mkfs.fat vanished".into()))?;
    let _ = fs::remove_file(esp);
    run(Command::new(mkfs)
        .args([
            "-C",
            "-F",
            "32",
            "-n",
            "CAIRN-ESP",
            "-i",
            &format!("{ESP_VOLUME_ID:08X}"),
        ])
        .arg(esp)
        .arg((ESP_BYTES / 1024).to_string()))?;
    let dirs = parent_dirs(files.iter().map(|(_, dest)| *dest));
    let mtools = |program: &str| {
        let mut cmd = Command::new(program);
        cmd.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(esp);
        cmd
    };
    run(mtools("mmd").args(dirs.iter().map(|d| format!("::{d}"))))?;
    for (src, dest) in files {
        run(mtools("mcopy").arg(src).arg(format!("::{dest}")))?;
    }
    Ok(())
}

/// Every directory above the given absolute paths, parents before children, once each.
fn parent_dirs<'a>(paths: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut dirs: Vec<String> = Vec::new();
    for path in paths {
        let mut ancestors: Vec<&Path> = Path::new(path).ancestors().skip(1).collect();
        ancestors.reverse();
        for dir in ancestors.iter().filter(|d| d.as_os_str() != "/") {
            let dir = dir.display().to_string();
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// The `cairn-config` partition of `gpt`, if `config` fits it.
fn config_partition<'a>(gpt: &'a Gpt, config: &[u8]) -> Result<&'a Partition, ImageError> {
    let part = partition(gpt, PART_CONFIG)
        .ok_or_else(|| ImageError::Grub(format!("no {PART_CONFIG} partition")))?;
    let bytes = config.len() as u64;
    if bytes > part.size_bytes() {
        return Err(ImageError::ConfigTooLarge {
            bytes,
            partition_bytes: part.size_bytes(),
        });
    }
    Ok(part)
}

/// What [`assemble`] writes besides the GPT.
struct Parts<'a> {
    /// GRUB's `boot.img` (one sector; its first 440 bytes become the MBR's code).
    boot_img: &'a [u8],
    /// GRUB's `core.img`, for the BIOS boot partition.
    core_img: &'a [u8],
    /// The FAT32 ESP, exactly the ESP partition's size.
    esp: &'a [u8],
    /// The node configuration (empty: none) for byte 0 of `cairn-config`.
    config: &'a [u8],
}

/// Write the GPT, GRUB's MBR code, core.img, the ESP and the node configuration into a sparse
/// image file; everything else (the rest of `cairn-config`, `cairn-store`) stays zero.
fn assemble(gpt: &Gpt, out: &Path, parts: &Parts<'_>) -> Result<(), ImageError> {
    let bios = partition(gpt, PART_BIOS_BOOT)
        .ok_or_else(|| ImageError::Grub("no BIOS boot partition".into()))?;
    let esp_part = partition(gpt, PART_ESP).ok_or_else(|| ImageError::Grub("no ESP".into()))?;
    let config_part = config_partition(gpt, parts.config)?;
    let core = grub::patch_core_img(parts.core_img, bios.first_lba)?;
    if core.len() as u64 > bios.size_bytes() {
        return Err(ImageError::Grub(format!(
            "core.img ({} bytes) exceeds the BIOS boot partition",
            core.len()
        )));
    }
    let mbr_code = grub::patch_boot_img(parts.boot_img, bios.first_lba)?;
    if parts.esp.len() as u64 != esp_part.size_bytes() {
        return Err(ImageError::Grub(
            "ESP file size differs from its partition".into(),
        ));
    }
    let mut sectors = gpt.to_sectors().map_err(ImageError::Gpt)?;
    sectors.head[..grub::MBR_BOOT_CODE_BYTES].copy_from_slice(&mbr_code);

    let context = format!("write {}", out.display());
    let mut file = File::create(out).map_err(io_err(&context))?;
    file.set_len(gpt.disk_sectors * SECTOR_BYTES)
        .map_err(io_err(&context))?;
    let mut put = |offset: u64, bytes: &[u8]| -> Result<(), ImageError> {
        file.seek(SeekFrom::Start(offset))
            .map_err(io_err(&context))?;
        file.write_all(bytes).map_err(io_err(&context))
    };
    put(0, &sectors.head)?;
    put(sectors.tail_lba * SECTOR_BYTES, &sectors.tail)?;
    put(bios.offset_bytes(), &core)?;
    put(esp_part.offset_bytes(), parts.esp)?;
    if !parts.config.is_empty() {
        put(config_part.offset_bytes(), parts.config)?;
    }
    file.sync_all().map_err(io_err(&context))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_directories_are_made_parents_first() {
        let dirs = parent_dirs(
            [
                "/EFI/BOOT/BOOTX64.EFI",
                "/boot/grub/grub.cfg",
                "/boot/cairn/k",
            ]
            .into_iter(),
        );
        assert_eq!(
            dirs,
            ["/EFI", "/EFI/BOOT", "/boot", "/boot/grub", "/boot/cairn"]
        );
    }

    #[test]
    fn layout_is_aligned_named_and_typed() {
        let gpt = layout("node0", 256);
        let names: Vec<&str> = gpt.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, [PART_BIOS_BOOT, PART_ESP, PART_CONFIG, PART_STORE]);
        for p in &gpt.partitions {
            assert_eq!(p.offset_bytes() % ALIGN_BYTES, 0, "{}", p.name);
        }
        let config = partition(&gpt, PART_CONFIG).unwrap();
        let store = partition(&gpt, PART_STORE).unwrap();
        assert_eq!(config.type_guid, gpt::TYPE_CAIRN_CONFIG);
        assert_eq!(store.type_guid, gpt::TYPE_CAIRN_STORE);
        assert_ne!(config.type_guid, store.type_guid);
        assert_eq!(store.size_bytes(), 256 * MIB);
        assert_eq!(partition(&gpt, PART_ESP).unwrap().size_bytes(), ESP_BYTES);
        assert!(store.last_lba <= gpt.last_usable_lba());
        assert_eq!(
            gpt.disk_sectors * SECTOR_BYTES,
            (1 + 1 + 64 + 16 + 256 + 1) * MIB
        );
        assert_ne!(layout("node1", 256).disk_guid, gpt.disk_guid);
        assert!(gpt.to_sectors().is_ok());
    }

    /// A scratch file path unique to this test process.
    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("cairn-image-{}-{name}", std::process::id()))
    }

    #[test]
    fn node_config_is_written_at_the_config_partitions_offset() {
        use std::io::Read;
        let gpt = layout("node3", 8);
        let esp = vec![0xe5u8; ESP_BYTES as usize];
        let config: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 + 1).collect();
        let parts = Parts {
            boot_img: &[0x33u8; 512],
            core_img: &[0x44u8; 1500],
            esp: &esp,
            config: &config,
        };
        let out = scratch("config.img");
        assemble(&gpt, &out, &parts).unwrap();
        let mut image = Vec::new();
        File::open(&out).unwrap().read_to_end(&mut image).unwrap();
        let _ = fs::remove_file(&out);
        assert_eq!(image.len() as u64, gpt.disk_sectors * SECTOR_BYTES);
        let part = partition(&gpt, PART_CONFIG).unwrap();
        let at = part.offset_bytes() as usize;
        let end = at + part.size_bytes() as usize;
        assert_eq!(&image[at..at + config.len()], &config[..]);
        assert!(image[at + config.len()..end].iter().all(|&b| b == 0));
        // Its neighbours are what they should be: the ESP before it, the zeroed store after.
        assert!(image[at - 512..at].iter().all(|&b| b == 0xe5));
        let store = partition(&gpt, PART_STORE).unwrap();
        assert_eq!(store.offset_bytes() as usize, end);
        assert!(image[end..end + store.size_bytes() as usize]
            .iter()
            .all(|&b| b == 0));
        // The table reads back and still names the partition the kernel looks for.
        let head = (gpt::GPT_HEAD_SECTORS * SECTOR_BYTES) as usize;
        let read = ::gpt::read(&image[..head], gpt.disk_sectors).unwrap();
        let found = read.find(gpt::TYPE_CAIRN_CONFIG).unwrap();
        assert_eq!(found.offset_bytes(), part.offset_bytes());

        // Without a configuration the partition is all zeros.
        let none = Parts {
            config: &[],
            ..parts
        };
        assemble(&gpt, &out, &none).unwrap();
        let mut image = Vec::new();
        File::open(&out).unwrap().read_to_end(&mut image).unwrap();
        let _ = fs::remove_file(&out);
        assert!(image[at..end].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_config_larger_than_its_partition_is_a_typed_error() {
        let gpt = layout("node0", 8);
        let fits = vec![1u8; CONFIG_BYTES as usize];
        assert!(config_partition(&gpt, &fits).is_ok());
        let spec = DiskSpec {
            kernel: PathBuf::from("/nonexistent/kernel.elf"),
            cmdline: String::new(),
            store_mib: 8,
            label: "node0".into(),
            config: Some(vec![1u8; CONFIG_BYTES as usize + 1]),
        };
        let out = scratch("too-large.img");
        // Refused before any tool runs or any file is written.
        match build_disk_image(&spec, &out, &scratch("too-large-work")) {
            Err(ImageError::ConfigTooLarge {
                bytes,
                partition_bytes,
            }) => {
                assert_eq!(bytes, CONFIG_BYTES + 1);
                assert_eq!(partition_bytes, CONFIG_BYTES);
            }
            other => panic!("expected ConfigTooLarge, got {other:?}"),
        }
        assert!(!out.exists());
        let text = ImageError::ConfigTooLarge {
            bytes: 5,
            partition_bytes: 4,
        }
        .to_string();
        assert!(text.contains(PART_CONFIG), "{text}");
    }
}
