//! A GUID Partition Table writer and reader (UEFI 2.10 §5.3), for disk image files.
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
//!
//! GPT header (92 bytes, little-endian):
//!
//! ```text
//! off size field                 off size field
//!   0    8 "EFI PART"             48    8 last usable LBA
//!   8    4 revision 0x00010000    56   16 disk GUID
//!  12    4 header size (92)       72    8 entry array LBA
//!  16    4 header CRC32           80    4 number of entries
//!  20    4 reserved (0)           84    4 entry size (128)
//!  24    8 this header's LBA      88    4 entry array CRC32
//!  32    8 other header's LBA
//!  40    8 first usable LBA
//! ```
//!
//! Partition entry (128 bytes): type GUID (16), unique GUID (16), first LBA (8), last LBA
//! inclusive (8), attributes (8), name as UTF-16LE (72).

use std::fmt;

pub const SECTOR_BYTES: u64 = 512;
pub const ENTRY_COUNT: u32 = 128;
pub const ENTRY_BYTES: u32 = 128;
const HEADER_BYTES: u32 = 92;
const ENTRY_ARRAY_SECTORS: u64 = (ENTRY_COUNT as u64 * ENTRY_BYTES as u64) / SECTOR_BYTES;
/// Sectors the GPT needs at the start (MBR + header + entries) and at the end (entries + header).
pub const GPT_HEAD_SECTORS: u64 = 2 + ENTRY_ARRAY_SECTORS;
pub const GPT_TAIL_SECTORS: u64 = 1 + ENTRY_ARRAY_SECTORS;
const NAME_UNITS_MAX: usize = 36;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION_1_0: u32 = 0x0001_0000;

/// A GUID in its on-disk byte order (the first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parse the canonical text form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub const fn parse(text: &str) -> Guid {
        let s = text.as_bytes();
        assert!(s.len() == 36, "GUID text must be 36 characters");
        let mut be = [0u8; 16];
        let mut i = 0;
        let mut j = 0;
        while i < 36 {
            if s[i] == b'-' {
                i += 1;
                continue;
            }
            be[j] = hex(s[i]) << 4 | hex(s[i + 1]);
            j += 1;
            i += 2;
        }
        assert!(j == 16);
        let mut le = be;
        le[0] = be[3];
        le[1] = be[2];
        le[2] = be[1];
        le[3] = be[0];
        le[4] = be[5];
        le[5] = be[4];
        le[6] = be[7];
        le[7] = be[6];
        Guid(le)
    }

    /// A version-4-shaped GUID derived from `label`, so that images are reproducible.
    pub fn derived(label: &str) -> Guid {
        let a = fnv1a64(0xcbf2_9ce4_8422_2325, label.as_bytes());
        let b = fnv1a64(a ^ 0x9e37_79b9_7f4a_7c15, label.as_bytes());
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&a.to_le_bytes());
        bytes[8..].copy_from_slice(&b.to_le_bytes());
        bytes[7] = (bytes[7] & 0x0f) | 0x40; // version 4 (byte 7 is the high byte of field 3)
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
        Guid(bytes)
    }
}

const fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("bad hex digit in GUID"),
    }
}

fn fnv1a64(seed: u64, data: &[u8]) -> u64 {
    data.iter().fold(seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        b[10..].iter().try_for_each(|x| write!(f, "{x:02x}"))
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// BIOS boot partition: GRUB's core.img lives here on a GPT disk booted by a BIOS.
pub const TYPE_BIOS_BOOT: Guid = Guid::parse("21686148-6449-6e6f-744e-656564454649");
/// EFI system partition.
pub const TYPE_EFI_SYSTEM: Guid = Guid::parse("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
/// cairn node configuration (this node's keys, addresses, registry).
pub const TYPE_CAIRN_CONFIG: Guid = Guid::parse("f8477554-d4e8-48b4-a28b-b4319fbbbd29");
/// cairn state store (checkpoints, consensus pool, CUPs).
pub const TYPE_CAIRN_STORE: Guid = Guid::parse("646e1eee-6491-408d-b755-cbf61929d18a");

/// One partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

impl Partition {
    pub fn sectors(&self) -> u64 {
        self.last_lba - self.first_lba + 1
    }

    pub fn offset_bytes(&self) -> u64 {
        self.first_lba * SECTOR_BYTES
    }

    pub fn size_bytes(&self) -> u64 {
        self.sectors() * SECTOR_BYTES
    }
}

/// Why a GPT could not be built or read.
#[derive(Debug, PartialEq, Eq)]
pub enum GptError {
    TooManyPartitions,
    NameTooLong(String),
    OutsideUsableArea(String),
    Overlap(String, String),
    DiskTooSmall,
    BadSignature,
    BadHeaderCrc,
    BadEntriesCrc,
    BadHeaderFields,
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
            GptError::BadSignature => write!(f, "no GPT signature"),
            GptError::BadHeaderCrc => write!(f, "GPT header CRC32 mismatch"),
            GptError::BadEntriesCrc => write!(f, "GPT partition array CRC32 mismatch"),
            GptError::BadHeaderFields => write!(f, "GPT header fields are inconsistent"),
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
    /// its size in sectors. Verifies signature, both CRC32s and the header's geometry.
    pub fn read(head: &[u8], disk_sectors: u64) -> Result<Gpt, GptError> {
        let header = head
            .get(512..512 + HEADER_BYTES as usize)
            .ok_or(GptError::BadSignature)?;
        if &header[0..8] != SIGNATURE {
            return Err(GptError::BadSignature);
        }
        let mut zeroed = header.to_vec();
        zeroed[16..20].fill(0);
        if crc32(&zeroed) != le32(&header[16..20]) {
            return Err(GptError::BadHeaderCrc);
        }
        let geometry_ok = le64(&header[24..32]) == 1
            && le64(&header[32..40]) == disk_sectors - 1
            && le64(&header[72..80]) == 2
            && le32(&header[80..84]) == ENTRY_COUNT
            && le32(&header[84..88]) == ENTRY_BYTES;
        if !geometry_ok {
            return Err(GptError::BadHeaderFields);
        }
        let array = head
            .get(1024..1024 + (ENTRY_COUNT * ENTRY_BYTES) as usize)
            .ok_or(GptError::BadEntriesCrc)?;
        if crc32(array) != le32(&header[88..92]) {
            return Err(GptError::BadEntriesCrc);
        }
        let mut disk_guid = [0u8; 16];
        disk_guid.copy_from_slice(&header[56..72]);
        let partitions = array
            .chunks_exact(ENTRY_BYTES as usize)
            .filter(|e| e[0..16].iter().any(|&b| b != 0))
            .map(parse_entry)
            .collect();
        Ok(Gpt {
            disk_guid: Guid(disk_guid),
            disk_sectors,
            partitions,
        })
    }
}

fn parse_entry(e: &[u8]) -> Partition {
    let mut type_guid = [0u8; 16];
    let mut unique_guid = [0u8; 16];
    type_guid.copy_from_slice(&e[0..16]);
    unique_guid.copy_from_slice(&e[16..32]);
    let units: Vec<u16> = e[56..128]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    Partition {
        type_guid: Guid(type_guid),
        unique_guid: Guid(unique_guid),
        first_lba: le64(&e[32..40]),
        last_lba: le64(&e[40..48]),
        attributes: le64(&e[48..56]),
        name: String::from_utf16_lossy(&units),
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Gpt {
        Gpt {
            disk_guid: Guid::derived("disk"),
            disk_sectors: 8192,
            partitions: vec![
                Partition {
                    type_guid: TYPE_BIOS_BOOT,
                    unique_guid: Guid::derived("a"),
                    first_lba: 2048,
                    last_lba: 4095,
                    attributes: 0,
                    name: "bios-boot".into(),
                },
                Partition {
                    type_guid: TYPE_CAIRN_STORE,
                    unique_guid: Guid::derived("b"),
                    first_lba: 4096,
                    last_lba: 8192 - 34,
                    attributes: 0,
                    name: "cairn-store".into(),
                },
            ],
        }
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn guid_text_round_trip_and_mixed_endian_layout() {
        let g = TYPE_EFI_SYSTEM;
        assert_eq!(g.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(&g.0[..4], &[0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(&g.0[8..10], &[0xba, 0x4b]);
        let d = Guid::derived("node0");
        assert_eq!(d, Guid::derived("node0"));
        assert_ne!(d, Guid::derived("node1"));
        assert_eq!(d.to_string().as_bytes()[14], b'4');
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
        assert_eq!(le64(&backup[24..32]), 8191);
        assert_eq!(le64(&backup[32..40]), 1);
        assert_eq!(le64(&backup[72..80]), 8192 - 33);
        assert_eq!(&backup[88..92], &sectors.head[512 + 88..512 + 92]);
    }

    #[test]
    fn corruption_is_detected() {
        let gpt = sample();
        let mut head = gpt.to_sectors().unwrap().head;
        head[1024 + 60] ^= 1;
        assert_eq!(
            Gpt::read(&head, gpt.disk_sectors),
            Err(GptError::BadEntriesCrc)
        );
        head[1024 + 60] ^= 1;
        head[512 + 50] ^= 1;
        assert_eq!(
            Gpt::read(&head, gpt.disk_sectors),
            Err(GptError::BadHeaderCrc)
        );
        assert_eq!(Gpt::read(&[0u8; 100], 8192), Err(GptError::BadSignature));
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
