//! Reading a GUID Partition Table (UEFI 2.10 §5.3), `no_std` + `alloc`.
//!
//! The kernel reads a node disk's table with it to find the `cairn-config` and `cairn-store`
//! partitions; the `image` crate writes tables (its `gpt` module) and checks them with it.
//!
//! Layout of a disk with `n` sectors of [`SECTOR_BYTES`]:
//!
//! ```text
//! LBA 0            protective MBR (one 0xEE partition covering the disk)
//! LBA 1            primary GPT header
//! LBA 2..=33       primary partition entry array (128 entries × 128 bytes)
//! LBA 34..         partitions
//! LBA n-33..=n-2   backup partition entry array
//! LBA n-1          backup GPT header
//! ```
//!
//! GPT header (UEFI 2.10 table 5-5; 92 bytes, little-endian):
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
//! Partition entry (table 5-6; 128 bytes): type GUID (16), unique GUID (16), first LBA (8),
//! last LBA inclusive (8), attributes (8), name as UTF-16LE (72).
//!
//! A disk written with a table and then copied onto a larger disk (`dd` of an image onto a
//! machine's drive) keeps its primary table, whose backup is then no longer at the end: the
//! reader accepts that, and checks only that everything it names lies on the disk.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Bytes per sector of the disks cairn partitions.
pub const SECTOR_BYTES: u64 = 512;
pub const ENTRY_COUNT: u32 = 128;
pub const ENTRY_BYTES: u32 = 128;
pub const HEADER_BYTES: u32 = 92;
pub const ENTRY_ARRAY_SECTORS: u64 = (ENTRY_COUNT as u64 * ENTRY_BYTES as u64) / SECTOR_BYTES;
/// Sectors the GPT needs at the start (MBR + header + entries) and at the end (entries + header).
pub const GPT_HEAD_SECTORS: u64 = 2 + ENTRY_ARRAY_SECTORS;
pub const GPT_TAIL_SECTORS: u64 = 1 + ENTRY_ARRAY_SECTORS;
pub const SIGNATURE: &[u8; 8] = b"EFI PART";
pub const REVISION_1_0: u32 = 0x0001_0000;
/// The MBR's boot signature at bytes 510..512.
pub const MBR_SIGNATURE: [u8; 2] = [0x55, 0xaa];
/// The MBR partition type of a GPT's protective partition.
pub const MBR_TYPE_GPT_PROTECTIVE: u8 = 0xee;

/// A GUID in its on-disk byte order (the first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parse the canonical text form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (at compile time;
    /// a malformed literal stops the build).
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
            be[j] = (hex(s[i]) << 4) | hex(s[i + 1]);
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
}

const fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("bad hex digit in GUID"),
    }
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
        self.last_lba.saturating_sub(self.first_lba) + 1
    }

    pub fn offset_bytes(&self) -> u64 {
        self.first_lba * SECTOR_BYTES
    }

    pub fn size_bytes(&self) -> u64 {
        self.sectors() * SECTOR_BYTES
    }
}

/// What the primary table of a disk says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub disk_guid: Guid,
    /// Where the primary header says the backup header is.
    pub backup_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    /// The used entries, in table order.
    pub partitions: Vec<Partition>,
}

impl Table {
    /// The first partition of type `type_guid`.
    pub fn find(&self, type_guid: Guid) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.type_guid == type_guid)
    }
}

/// Why a table could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Fewer bytes than the MBR, header and entry array need.
    Short,
    /// No "EFI PART" at LBA 1.
    BadSignature,
    BadHeaderCrc,
    BadEntriesCrc,
    /// The header's own LBA, sizes or entry geometry are not the ones this reader handles.
    BadHeaderFields,
    /// The header or entry `n` names sectors beyond the disk, or a partition ends before it
    /// starts, or lies outside the usable area.
    OutOfDisk(Option<u32>),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Short => write!(
                f,
                "fewer than {GPT_HEAD_SECTORS} sectors to read a GPT from"
            ),
            ReadError::BadSignature => f.write_str("no GPT signature"),
            ReadError::BadHeaderCrc => f.write_str("GPT header CRC32 mismatch"),
            ReadError::BadEntriesCrc => f.write_str("GPT partition array CRC32 mismatch"),
            ReadError::BadHeaderFields => f.write_str("GPT header fields are inconsistent"),
            ReadError::OutOfDisk(None) => f.write_str("GPT header names sectors beyond the disk"),
            ReadError::OutOfDisk(Some(n)) => {
                write!(f, "GPT entry {n} lies outside the disk's usable area")
            }
        }
    }
}

/// What the first sector says the disk holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MbrKind {
    /// No boot signature: no partition table at all.
    None,
    /// A protective MBR: the disk has (or claims) a GPT.
    Protective,
    /// A classic MBR with partitions: a disk formatted by something else.
    Classic,
}

/// Classify LBA 0 (`mbr`: at least 512 bytes; fewer reads as [`MbrKind::None`]).
pub fn mbr_kind(mbr: &[u8]) -> MbrKind {
    let Some(sector) = mbr.get(..512) else {
        return MbrKind::None;
    };
    if sector[510..512] != MBR_SIGNATURE {
        return MbrKind::None;
    }
    let types = sector[446..510].chunks_exact(16).map(|e| e[4]);
    let mut any = false;
    for t in types {
        if t == MBR_TYPE_GPT_PROTECTIVE {
            return MbrKind::Protective;
        }
        any |= t != 0;
    }
    if any {
        MbrKind::Classic
    } else {
        MbrKind::None
    }
}

/// What a disk's first sectors say it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disk {
    /// No MBR signature and no GPT: a blank disk (or one only cairn's store wrote).
    Blank,
    /// A GPT that passes [`read`]'s checks.
    Gpt(Table),
    /// A classic MBR with partitions: another system's disk.
    Mbr,
    /// A protective MBR or a GPT signature, but the table fails its checks.
    BadGpt(ReadError),
    /// A partitioned disk whose sectors are not [`SECTOR_BYTES`] long.
    SectorBytes(usize),
}

/// Classify a disk of `disk_sectors` sectors of `sector_bytes` from its first sectors
/// (`head`: [`GPT_HEAD_SECTORS`] of them, or the whole disk if it is smaller).
pub fn classify(head: &[u8], sector_bytes: usize, disk_sectors: u64) -> Disk {
    let signed = head.get(SECTOR_BYTES as usize..SECTOR_BYTES as usize + SIGNATURE.len())
        == Some(&SIGNATURE[..]);
    match (mbr_kind(head), signed) {
        (MbrKind::None, false) => Disk::Blank,
        (MbrKind::Classic, false) => Disk::Mbr,
        _ if sector_bytes != SECTOR_BYTES as usize => Disk::SectorBytes(sector_bytes),
        _ => match read(head, disk_sectors) {
            Ok(table) => Disk::Gpt(table),
            Err(e) => Disk::BadGpt(e),
        },
    }
}

/// Read and check the primary table from the first [`GPT_HEAD_SECTORS`] sectors of a disk of
/// `disk_sectors` sectors: signature, both CRC32s, the header's geometry, and that every
/// partition lies in the usable area, which lies on the disk.
pub fn read(head: &[u8], disk_sectors: u64) -> Result<Table, ReadError> {
    let sector = SECTOR_BYTES as usize;
    let array_bytes = (ENTRY_COUNT * ENTRY_BYTES) as usize;
    if head.len() < 2 * sector + array_bytes {
        return Err(ReadError::Short);
    }
    let header = &head[sector..sector + HEADER_BYTES as usize];
    if &header[0..8] != SIGNATURE {
        return Err(ReadError::BadSignature);
    }
    let mut zeroed = [0u8; HEADER_BYTES as usize];
    zeroed.copy_from_slice(header);
    zeroed[16..20].fill(0);
    if crc32(&zeroed) != le32(&header[16..20]) {
        return Err(ReadError::BadHeaderCrc);
    }
    let geometry_ok = le32(&header[12..16]) == HEADER_BYTES
        && le64(&header[24..32]) == 1
        && le64(&header[72..80]) == 2
        && le32(&header[80..84]) == ENTRY_COUNT
        && le32(&header[84..88]) == ENTRY_BYTES;
    if !geometry_ok {
        return Err(ReadError::BadHeaderFields);
    }
    let backup_lba = le64(&header[32..40]);
    let first_usable_lba = le64(&header[40..48]);
    let last_usable_lba = le64(&header[48..56]);
    if backup_lba >= disk_sectors
        || last_usable_lba >= disk_sectors
        || first_usable_lba < GPT_HEAD_SECTORS
        || first_usable_lba > last_usable_lba
    {
        return Err(ReadError::OutOfDisk(None));
    }
    let array = &head[2 * sector..2 * sector + array_bytes];
    if crc32(array) != le32(&header[88..92]) {
        return Err(ReadError::BadEntriesCrc);
    }
    let mut disk_guid = [0u8; 16];
    disk_guid.copy_from_slice(&header[56..72]);
    let mut partitions = Vec::new();
    for (n, e) in (0u32..).zip(array.chunks_exact(ENTRY_BYTES as usize)) {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let p = parse_entry(e);
        if p.first_lba < first_usable_lba
            || p.last_lba > last_usable_lba
            || p.last_lba < p.first_lba
        {
            return Err(ReadError::OutOfDisk(Some(n)));
        }
        partitions.push(p);
    }
    Ok(Table {
        disk_guid: Guid(disk_guid),
        backup_lba,
        first_usable_lba,
        last_usable_lba,
        partitions,
    })
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
        name: char::decode_utf16(units)
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
    }
}

pub fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn guid_text_round_trip_and_mixed_endian_layout() {
        let g = TYPE_EFI_SYSTEM;
        assert_eq!(
            alloc::format!("{g}"),
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
        assert_eq!(&g.0[..4], &[0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(&g.0[4..8], &[0x1f, 0xf8, 0xd2, 0x11]);
        assert_eq!(&g.0[8..10], &[0xba, 0x4b]);
    }

    #[test]
    fn mbr_kinds() {
        let mut mbr = [0u8; 512];
        assert_eq!(mbr_kind(&mbr), MbrKind::None);
        mbr[510..].copy_from_slice(&MBR_SIGNATURE);
        // A boot signature with no partition entry is no table.
        assert_eq!(mbr_kind(&mbr), MbrKind::None);
        mbr[446 + 16 + 4] = 0x83;
        assert_eq!(mbr_kind(&mbr), MbrKind::Classic);
        mbr[446 + 4] = MBR_TYPE_GPT_PROTECTIVE;
        assert_eq!(mbr_kind(&mbr), MbrKind::Protective);
        assert_eq!(mbr_kind(&mbr[..511]), MbrKind::None);
    }

    #[test]
    fn blank_foreign_and_odd_disks_are_told_apart() {
        let mut head = alloc::vec![0u8; (GPT_HEAD_SECTORS * SECTOR_BYTES) as usize];
        assert_eq!(classify(&head, 512, 8192), Disk::Blank);
        assert_eq!(classify(&head[..512], 512, 1), Disk::Blank);
        head[510..512].copy_from_slice(&MBR_SIGNATURE);
        head[446 + 4] = 0x07;
        assert_eq!(classify(&head, 512, 8192), Disk::Mbr);
        head[446 + 4] = MBR_TYPE_GPT_PROTECTIVE;
        assert_eq!(
            classify(&head, 512, 8192),
            Disk::BadGpt(ReadError::BadSignature)
        );
        assert_eq!(classify(&head, 4096, 8192), Disk::SectorBytes(4096));
        // A GPT signature without a protective MBR still counts as a table.
        head[..512].fill(0);
        head[512..520].copy_from_slice(SIGNATURE);
        assert_eq!(
            classify(&head, 512, 8192),
            Disk::BadGpt(ReadError::BadHeaderCrc)
        );
    }

    #[test]
    fn short_and_unsigned_heads_are_errors() {
        assert_eq!(read(&[0u8; 100], 8192), Err(ReadError::Short));
        let head = alloc::vec![0u8; (GPT_HEAD_SECTORS * SECTOR_BYTES) as usize];
        assert_eq!(read(&head, 8192), Err(ReadError::BadSignature));
    }
}
