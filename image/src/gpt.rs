//! A GUID Partition Table writer (UEFI 2.10 §5.3) for disk image files; the reading side, the
//! GUIDs and the layout are the `gpt` crate's (the kernel reads node disks with it).
//!
//! Layout of a disk with `n` sectors of [`SECTOR_BYTES`]:
//!
//! ```text
//! LBA 0            protective MBR (one 0xEE partition covering the disk; boot code area free)
//! LBA 1            primary GPT header
//! LBA 2..=33       primary partition entry array (128 entries × 128 bytes)
//! LBA 34..         partitions (cairn aligns them to 1 MiB)
//! LBA n-33..=n-2   backup partition entry array
//! LBA n-1          backup GPT header
//! ```

use std::fmt;

pub use ::gpt::{
    crc32, Guid, Partition, ReadError, ENTRY_BYTES, ENTRY_COUNT, GPT_HEAD_SECTORS,
    GPT_TAIL_SECTORS, SECTOR_BYTES, TYPE_BIOS_BOOT, TYPE_CAIRN_CONFIG, TYPE_CAIRN_STORE,
    TYPE_EFI_SYSTEM,
};
use ::gpt::{ENTRY_ARRAY_SECTORS, HEADER_BYTES, REVISION_1_0, SIGNATURE};

const NAME_UNITS_MAX: usize = 36;

/// A version-4-shaped GUID derived from `label`, so that images are reproducible.
pub fn derived_guid(label: &str) -> Guid {
    let a = fnv1a64(0xcbf2_9ce4_8422_2325, label.as_bytes());
    let b = fnv1a64(a ^ 0x9e37_79b9_7f4a_7c15, label.as_bytes());
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    bytes[7] = (bytes[7] & 0x0f) | 0x40; // version 4 (byte 7 is the high byte of field 3)
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    Guid(bytes)
}

fn fnv1a64(seed: u64, data: &[u8]) -> u64 {
    data.iter().fold(seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Why a GPT could not be built or read.
#[derive(Debug, PartialEq, Eq)]
pub enum GptError {
    TooManyPartitions,
    NameTooLong(String),
    OutsideUsableArea(String),
    Overlap(String, String),
    DiskTooSmall,
    /// The table read back is not one (see `gpt::read`).
    Read(ReadError),
    /// A table whose backup header is not at the disk's end: not as this writer writes it.
    BackupNotAtEnd(u64),
}

impl fmt::Display for GptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GptError::TooManyPartitions => write!(f, "more than {ENTRY_COUNT} partitions"),
            GptError::NameTooLong(n) => write!(f, "partition name {n:?} exceeds 36 UTF-16 units"),
            GptError::OutsideUsableArea(n) => {
                write!(f, "partition {n:?} is outside the usable area")
            }
            GptError::Overlap(a, b) => write!(f, "partitions {a:?} and {b:?} overlap"),
            GptError::DiskTooSmall => write!(f, "disk too small for a GPT"),
            GptError::Read(e) => e.fmt(f),
            GptError::BackupNotAtEnd(lba) => {
                write!(f, "GPT backup header at LBA {lba}, not at the disk's end")
            }
        }
    }
}

impl std::error::Error for GptError {}

/// A partition table for a disk of `disk_sectors` sectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpt {
    pub disk_guid: Guid,
    pub disk_sectors: u64,
    pub partitions: Vec<Partition>,
}

/// The sectors a GPT occupies, ready to be written at their LBAs.
pub struct GptSectors {
    /// LBA 0..=33: protective MBR, primary header, primary entry array.
    pub head: Vec<u8>,
    /// LBA n-33..=n-1: backup entry array, backup header.
    pub tail: Vec<u8>,
    /// Where `tail` goes.
    pub tail_lba: u64,
}

impl Gpt {
    pub fn first_usable_lba(&self) -> u64 {
        GPT_HEAD_SECTORS
    }

    pub fn last_usable_lba(&self) -> u64 {
        self.disk_sectors - GPT_TAIL_SECTORS - 1
    }

    fn validate(&self) -> Result<(), GptError> {
        if self.disk_sectors < GPT_HEAD_SECTORS + GPT_TAIL_SECTORS + 1 {
            return Err(GptError::DiskTooSmall);
        }
        if self.partitions.len() > ENTRY_COUNT as usize {
            return Err(GptError::TooManyPartitions);
        }
        for (i, p) in self.partitions.iter().enumerate() {
            if p.name.encode_utf16().count() > NAME_UNITS_MAX {
                return Err(GptError::NameTooLong(p.name.clone()));
            }
            if p.first_lba < self.first_usable_lba()
                || p.last_lba > self.last_usable_lba()
                || p.last_lba < p.first_lba
            {
                return Err(GptError::OutsideUsableArea(p.name.clone()));
            }
            for q in &self.partitions[i + 1..] {
                if p.first_lba <= q.last_lba && q.first_lba <= p.last_lba {
                    return Err(GptError::Overlap(p.name.clone(), q.name.clone()));
                }
            }
        }
        Ok(())
    }

    /// Render the protective MBR, both headers and both entry arrays.
    pub fn to_sectors(&self) -> Result<GptSectors, GptError> {
        self.validate()?;
        let entries = self.entry_array();
        let entries_crc = crc32(&entries);
        let backup_header_lba = self.disk_sectors - 1;
        let backup_entries_lba = backup_header_lba - ENTRY_ARRAY_SECTORS;

        let mut head = vec![0u8; (GPT_HEAD_SECTORS * SECTOR_BYTES) as usize];
        head[..512].copy_from_slice(&self.protective_mbr());
        let primary = self.header(1, backup_header_lba, 2, entries_crc);
        head[512..512 + primary.len()].copy_from_slice(&primary);
        head[1024..].copy_from_slice(&entries);

        let mut tail = vec![0u8; (GPT_TAIL_SECTORS * SECTOR_BYTES) as usize];
        tail[..entries.len()].copy_from_slice(&entries);
        let backup = self.header(backup_header_lba, 1, backup_entries_lba, entries_crc);
        tail[entries.len()..entries.len() + backup.len()].copy_from_slice(&backup);
        Ok(GptSectors {
            head,
            tail,
            tail_lba: backup_entries_lba,
        })
    }

    fn protective_mbr(&self) -> [u8; 512] {
        let mut mbr = [0u8; 512];
        let entry = &mut mbr[446..462];
        entry[0] = 0x00; // not bootable
        entry[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
        entry[4] = 0xee; // GPT protective
        entry[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        entry[8..12].copy_from_slice(&1u32.to_le_bytes());
        let size = u32::try_from(self.disk_sectors - 1).unwrap_or(u32::MAX);
        entry[12..16].copy_from_slice(&size.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        mbr
    }

    fn entry_array(&self) -> Vec<u8> {
        let mut array = vec![0u8; (ENTRY_COUNT * ENTRY_BYTES) as usize];
        for (p, e) in self
            .partitions
            .iter()
            .zip(array.chunks_exact_mut(ENTRY_BYTES as usize))
        {
            e[0..16].copy_from_slice(&p.type_guid.0);
            e[16..32].copy_from_slice(&p.unique_guid.0);
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            for (unit, slot) in p.name.encode_utf16().zip(e[56..128].chunks_exact_mut(2)) {
                slot.copy_from_slice(&unit.to_le_bytes());
            }
        }
        array
    }

    fn header(&self, my_lba: u64, other_lba: u64, entries_lba: u64, entries_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_BYTES as usize];
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&REVISION_1_0.to_le_bytes());
        h[12..16].copy_from_slice(&HEADER_BYTES.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&other_lba.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable_lba().to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable_lba().to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.0);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
        h[84..88].copy_from_slice(&ENTRY_BYTES.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Read and check a GPT from the first sectors of a disk (`head`: at least LBA 0..=33) and
    /// its size in sectors: what `gpt::read` checks, and that the backup header is at the
    /// disk's last sector, as [`Gpt::to_sectors`] puts it.
    pub fn read(head: &[u8], disk_sectors: u64) -> Result<Gpt, GptError> {
        let table = ::gpt::read(head, disk_sectors).map_err(GptError::Read)?;
        if table.backup_lba != disk_sectors - 1 {
            return Err(GptError::BackupNotAtEnd(table.backup_lba));
        }
        Ok(Gpt {
            disk_guid: table.disk_guid,
            disk_sectors,
            partitions: table.partitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Gpt {
        Gpt {
            disk_guid: derived_guid("disk"),
            disk_sectors: 8192,
            partitions: vec![
                Partition {
                    type_guid: TYPE_BIOS_BOOT,
                    unique_guid: derived_guid("a"),
                    first_lba: 2048,
                    last_lba: 4095,
                    attributes: 0,
                    name: "bios-boot".into(),
                },
                Partition {
                    type_guid: TYPE_CAIRN_STORE,
                    unique_guid: derived_guid("b"),
                    first_lba: 4096,
                    last_lba: 8192 - 34,
                    attributes: 0,
                    name: "cairn-store".into(),
                },
            ],
        }
    }

    #[test]
    fn derived_guids_are_stable_version_4() {
        let d = derived_guid("node0");
        assert_eq!(d, derived_guid("node0"));
        assert_ne!(d, derived_guid("node1"));
        assert_eq!(d.to_string().as_bytes()[14], b'4');
    }

    /// Recompute both CRC32s of a primary table after a test edited it.
    fn reseal(head: &mut [u8]) {
        let entries = crc32(&head[1024..1024 + 128 * 128]);
        head[512 + 88..512 + 92].copy_from_slice(&entries.to_le_bytes());
        head[512 + 16..512 + 20].fill(0);
        let header = crc32(&head[512..512 + 92]);
        head[512 + 16..512 + 20].copy_from_slice(&header.to_le_bytes());
    }

    #[test]
    fn written_gpt_reads_back_with_valid_crcs() {
        let gpt = sample();
        let sectors = gpt.to_sectors().unwrap();
        assert_eq!(sectors.head.len(), 34 * 512);
        assert_eq!(sectors.tail.len(), 33 * 512);
        assert_eq!(sectors.tail_lba, 8192 - 33);
        assert_eq!(&sectors.head[510..512], &[0x55, 0xaa]);
        assert_eq!(sectors.head[446 + 4], 0xee);
        let back = Gpt::read(&sectors.head, gpt.disk_sectors).unwrap();
        assert_eq!(back, gpt);
        // The backup header points back at the primary and at its own entry array.
        let backup = &sectors.tail[32 * 512..32 * 512 + 92];
        assert_eq!(::gpt::le64(&backup[24..32]), 8191);
        assert_eq!(::gpt::le64(&backup[32..40]), 1);
        assert_eq!(::gpt::le64(&backup[72..80]), 8192 - 33);
        assert_eq!(&backup[88..92], &sectors.head[512 + 88..512 + 92]);
    }

    #[test]
    fn corruption_is_detected() {
        let gpt = sample();
        let mut head = gpt.to_sectors().unwrap().head;
        head[1024 + 60] ^= 1;
        assert_eq!(
            Gpt::read(&head, gpt.disk_sectors),
            Err(GptError::Read(ReadError::BadEntriesCrc))
        );
        head[1024 + 60] ^= 1;
        head[512 + 50] ^= 1;
        assert_eq!(
            Gpt::read(&head, gpt.disk_sectors),
            Err(GptError::Read(ReadError::BadHeaderCrc))
        );
        assert_eq!(
            Gpt::read(&[0u8; 100], 8192),
            Err(GptError::Read(ReadError::Short))
        );
    }

    /// An image copied onto a larger disk keeps its primary table: the kernel's reader takes
    /// it (everything it names is on the disk), the image check insists on the exact layout.
    #[test]
    fn a_table_on_a_larger_disk_reads_and_on_a_smaller_one_does_not() {
        let gpt = sample();
        let head = gpt.to_sectors().unwrap().head;
        let table = ::gpt::read(&head, 2 * gpt.disk_sectors).unwrap();
        assert_eq!(table.partitions, gpt.partitions);
        assert_eq!(table.backup_lba, gpt.disk_sectors - 1);
        assert_eq!(
            table.find(TYPE_CAIRN_STORE).map(|p| p.first_lba),
            Some(4096)
        );
        assert_eq!(table.find(TYPE_CAIRN_CONFIG), None);
        assert_eq!(
            Gpt::read(&head, 2 * gpt.disk_sectors),
            Err(GptError::BackupNotAtEnd(gpt.disk_sectors - 1))
        );
        assert_eq!(
            ::gpt::read(&head, gpt.disk_sectors / 2),
            Err(ReadError::OutOfDisk(None))
        );
    }

    /// What the kernel concludes from a cairn disk's first sectors: its config and store
    /// partitions; and, with the table damaged, that the disk is not to be written.
    #[test]
    fn a_written_disk_classifies_as_a_gpt_with_its_partitions() {
        let gpt = sample();
        let mut head = gpt.to_sectors().unwrap().head;
        match ::gpt::classify(&head, 512, gpt.disk_sectors) {
            ::gpt::Disk::Gpt(table) => {
                assert_eq!(table.find(TYPE_CAIRN_STORE), Some(&gpt.partitions[1]));
                assert_eq!(table.find(TYPE_CAIRN_CONFIG), None);
            }
            other => panic!("{other:?}"),
        }
        head[1024 + 40] ^= 1;
        assert_eq!(
            ::gpt::classify(&head, 512, gpt.disk_sectors),
            ::gpt::Disk::BadGpt(ReadError::BadEntriesCrc)
        );
    }

    #[test]
    fn entries_outside_the_usable_area_or_reversed_are_errors() {
        let gpt = sample();
        let good = gpt.to_sectors().unwrap().head;
        let second = 1024 + 128;
        for (first, last) in [(4096u64, 8192u64 - 33), (33, 100), (5000, 4999)] {
            let mut head = good.clone();
            head[second + 32..second + 40].copy_from_slice(&first.to_le_bytes());
            head[second + 40..second + 48].copy_from_slice(&last.to_le_bytes());
            reseal(&mut head);
            assert_eq!(
                ::gpt::read(&head, gpt.disk_sectors),
                Err(ReadError::OutOfDisk(Some(1))),
                "{first}..={last}"
            );
        }
        let mut head = good.clone();
        head[512 + 12] = 93; // header size
        reseal(&mut head);
        assert_eq!(
            ::gpt::read(&head, gpt.disk_sectors),
            Err(ReadError::BadHeaderFields)
        );
        let mut head = good;
        reseal(&mut head);
        assert_eq!(Gpt::read(&head, gpt.disk_sectors), Ok(gpt));
    }

    #[test]
    fn invalid_layouts_are_rejected() {
        let mut gpt = sample();
        gpt.partitions[1].first_lba = 4000;
        assert!(matches!(gpt.to_sectors(), Err(GptError::Overlap(..))));
        let mut gpt = sample();
        gpt.partitions[1].last_lba = 8192 - 33;
        assert!(matches!(
            gpt.to_sectors(),
            Err(GptError::OutsideUsableArea(..))
        ));
        let mut gpt = sample();
        gpt.partitions[0].name = "x".repeat(37);
        assert!(matches!(gpt.to_sectors(), Err(GptError::NameTooLong(..))));
    }
}
