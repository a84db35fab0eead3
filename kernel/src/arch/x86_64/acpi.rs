//! ACPI tables (ACPI 6.5 §5.2): RSDP → XSDT/RSDT → FADT ("FACP") → DSDT, and MCFG for PCI.
//!
//! The kernel reads tables only; it has no AML interpreter. For soft-off it finds the `\_S5`
//! package in the DSDT by its byte pattern (NameOp "_S5_" PackageOp …) and takes SLP_TYPa/b
//! from its first two elements, as small kernels commonly do; that covers QEMU's and most
//! firmware's DSDTs.
//!
//! ```text
//! SDT header: 0 sig[4] 4 u32 length 8 u8 rev 9 u8 checksum 10 oem[6] ... 36: entries
//! FADT:       40 u32 DSDT  48 u32 SMI_CMD  52 u8 ACPI_ENABLE  64 u32 PM1a_CNT_BLK
//!             68 u32 PM1b_CNT_BLK  140 u64 X_DSDT (length >= 148)
//! MCFG:       44.. entries of 16: u64 base, u16 segment, u8 start bus, u8 end bus, u32 rsvd
//! ```

use super::memory::phys_bytes;
use super::port::Port;
use alloc::vec::Vec;
use boot::RsdpCopy;
use spin::Once;

const SDT_HEADER_BYTES: usize = 36;
/// The largest table the kernel reads (a DSDT of QEMU's is ~8 KiB; real ones reach ~1 MiB).
const MAX_TABLE_BYTES: usize = 4 << 20;
/// The most root-table entries inspected.
const MAX_ROOT_ENTRIES: usize = 256;
const SLP_EN: u16 = 1 << 13;
const SCI_EN: u16 = 1 << 0;
/// PM1 control polls while waiting for SCI_EN after ACPI_ENABLE.
const SCI_ENABLE_POLLS: usize = 1_000_000;

/// Why an ACPI operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    /// No RSDP from the loader and none in the BIOS area.
    NoRsdp,
    /// A table is missing or its checksum is wrong.
    MissingTable([u8; 4]),
    /// The DSDT has no `\_S5` package the kernel can read.
    NoS5,
    /// The FADT has no PM1a control block.
    NoPm1Control,
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AcpiError::NoRsdp => f.write_str("no RSDP"),
            AcpiError::MissingTable(sig) => {
                write!(
                    f,
                    "table {} missing or corrupt",
                    core::str::from_utf8(sig).unwrap_or("?")
                )
            }
            AcpiError::NoS5 => f.write_str("no \\_S5 package in the DSDT"),
            AcpiError::NoPm1Control => f.write_str("no PM1a control block"),
        }
    }
}

/// What the kernel keeps from the tables.
#[derive(Debug, Clone)]
pub struct Acpi {
    pub revision: u8,
    pub oem_id: [u8; 6],
    /// (physical address, length, signature) of every table the root table lists.
    pub tables: Vec<(u64, usize, [u8; 4])>,
    pm1a_control: u16,
    pm1b_control: u16,
    smi_command: u16,
    acpi_enable: u8,
    s5: Option<(u8, u8)>,
}

static ACPI: Once<Acpi> = Once::new();

/// A PCI Express ECAM window from the MCFG (PCI Firmware spec 3.2 §4.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcamWindow {
    pub base: u64,
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The table at `paddr` if its header and checksum are sane.
fn table_at(paddr: u64) -> Option<&'static [u8]> {
    if paddr == 0 {
        return None;
    }
    // SAFETY: ACPI tables lie in RAM or reserved memory below 4 GiB, which is identity-mapped,
    // and nothing writes them.
    let head = unsafe { phys_bytes(paddr, SDT_HEADER_BYTES) };
    let len = u32_at(head, 4)? as usize;
    if !(SDT_HEADER_BYTES..=MAX_TABLE_BYTES).contains(&len) {
        return None;
    }
    // SAFETY: as above, for the length the header states.
    let table = unsafe { phys_bytes(paddr, len) };
    checksum_ok(table).then_some(table)
}

/// Scans the BIOS read-only area 0xE0000..0x100000 for an RSDP (ACPI 6.5 §5.2.5.1).
fn search_bios_rsdp() -> Option<RsdpCopy> {
    (0xe_0000u64..0x10_0000).step_by(16).find_map(|paddr| {
        // SAFETY: the low 1 MiB is identity-mapped and read-only firmware memory.
        let bytes = unsafe { phys_bytes(paddr, 36) };
        RsdpCopy::from_bytes(bytes)
    })
}

/// Reads the tables and remembers what power-off and PCI need.
pub fn init(rsdp: Option<RsdpCopy>) -> Result<&'static Acpi, AcpiError> {
    let rsdp = rsdp.or_else(search_bios_rsdp).ok_or(AcpiError::NoRsdp)?;
    let (root_paddr, entry_bytes) = match rsdp.xsdt_paddr() {
        Some(x) => (x, 8),
        None => (rsdp.rsdt_paddr(), 4),
    };
    let root = table_at(root_paddr).ok_or(AcpiError::MissingTable(*b"XSDT"))?;
    let mut tables = Vec::new();
    for chunk in root[SDT_HEADER_BYTES..]
        .chunks_exact(entry_bytes)
        .take(MAX_ROOT_ENTRIES)
    {
        let paddr = if entry_bytes == 8 {
            u64_at(chunk, 0).unwrap_or(0)
        } else {
            u64::from(u32_at(chunk, 0).unwrap_or(0))
        };
        if let Some(t) = table_at(paddr) {
            let sig = [t[0], t[1], t[2], t[3]];
            tables.push((paddr, t.len(), sig));
        }
    }
    let mut oem_id = [0u8; 6];
    oem_id.copy_from_slice(&rsdp.oem_id().as_bytes()[..6.min(rsdp.oem_id().len())]);
    let mut acpi = Acpi {
        revision: rsdp.revision(),
        oem_id,
        tables,
        pm1a_control: 0,
        pm1b_control: 0,
        smi_command: 0,
        acpi_enable: 0,
        s5: None,
    };
    read_fadt(&mut acpi);
    Ok(ACPI.call_once(|| acpi))
}

fn read_fadt(acpi: &mut Acpi) {
    let Some(fadt) = acpi.find(b"FACP") else {
        return;
    };
    acpi.pm1a_control = u32_at(fadt, 64).unwrap_or(0) as u16;
    acpi.pm1b_control = u32_at(fadt, 68).unwrap_or(0) as u16;
    acpi.smi_command = u32_at(fadt, 48).unwrap_or(0) as u16;
    acpi.acpi_enable = fadt.get(52).copied().unwrap_or(0);
    let x_dsdt = if fadt.len() >= 148 {
        u64_at(fadt, 140).unwrap_or(0)
    } else {
        0
    };
    let dsdt_paddr = if x_dsdt != 0 {
        x_dsdt
    } else {
        u64::from(u32_at(fadt, 40).unwrap_or(0))
    };
    acpi.s5 = table_at(dsdt_paddr).and_then(find_s5);
}

/// SLP_TYPa and SLP_TYPb from the DSDT's `\_S5` package.
fn find_s5(dsdt: &[u8]) -> Option<(u8, u8)> {
    let at = dsdt.windows(4).enumerate().skip(1).find_map(|(i, w)| {
        let named = dsdt[i - 1] == 0x08 || (i >= 2 && dsdt[i - 2] == 0x08 && dsdt[i - 1] == b'\\');
        (w == b"_S5_" && named && dsdt.get(i + 4) == Some(&0x12)).then_some(i + 5)
    })?;
    // PkgLength: bits 7-6 of the lead byte give the count of following bytes.
    let pkg_len_bytes = usize::from(dsdt.get(at)? >> 6) + 1;
    let mut p = at + pkg_len_bytes + 1; // skip PkgLength and NumElements
    let (a, used) = aml_small_integer(dsdt, p)?;
    p += used;
    let (b, _) = aml_small_integer(dsdt, p)?;
    Some((a, b))
}

/// Decodes ZeroOp, OneOp, BytePrefix n, or a bare byte (some compilers emit that).
fn aml_small_integer(b: &[u8], at: usize) -> Option<(u8, usize)> {
    match *b.get(at)? {
        0x00 => Some((0, 1)),
        0x01 => Some((1, 1)),
        0x0a => Some((*b.get(at + 1)?, 2)),
        0x0b => Some((*b.get(at + 1)?, 3)),
        other => Some((other, 1)),
    }
}

impl Acpi {
    /// The first table with signature `sig`.
    pub fn find(&self, sig: &[u8; 4]) -> Option<&'static [u8]> {
        self.tables
            .iter()
            .find(|(_, _, s)| s == sig)
            .and_then(|&(paddr, _, _)| table_at(paddr))
    }

    /// The ECAM windows the MCFG lists (empty without an MCFG).
    pub fn ecam_windows(&self) -> Vec<EcamWindow> {
        let Some(mcfg) = self.find(b"MCFG") else {
            return Vec::new();
        };
        mcfg.get(44..)
            .unwrap_or(&[])
            .chunks_exact(16)
            .map(|e| EcamWindow {
                base: u64_at(e, 0).unwrap_or(0),
                segment: u16::from_le_bytes([e[8], e[9]]),
                bus_start: e[10],
                bus_end: e[11],
            })
            .collect()
    }

    /// SLP_TYP values for S5, when found.
    pub fn s5(&self) -> Option<(u8, u8)> {
        self.s5
    }
}

/// The tables read at boot, if [`init`] succeeded.
pub fn get() -> Option<&'static Acpi> {
    ACPI.get()
}

/// Enters S5 (soft-off). Returns only if that is impossible or did not take.
pub fn enter_s5() -> Result<(), AcpiError> {
    let acpi = get().ok_or(AcpiError::NoRsdp)?;
    let (typ_a, typ_b) = acpi.s5.ok_or(AcpiError::NoS5)?;
    if acpi.pm1a_control == 0 {
        return Err(AcpiError::NoPm1Control);
    }
    // SAFETY: the FADT names these ports as the PM1 control and SMI command registers.
    let (pm1a, pm1b, smi) = unsafe {
        (
            Port::<u16>::new(acpi.pm1a_control),
            Port::<u16>::new(acpi.pm1b_control),
            Port::<u8>::new(acpi.smi_command),
        )
    };
    if pm1a.read() & SCI_EN == 0 && acpi.smi_command != 0 && acpi.acpi_enable != 0 {
        smi.write(acpi.acpi_enable);
        for _ in 0..SCI_ENABLE_POLLS {
            if pm1a.read() & SCI_EN != 0 {
                break;
            }
            core::hint::spin_loop();
        }
    }
    pm1a.write(u16::from(typ_a & 7) << 10 | SLP_EN);
    if acpi.pm1b_control != 0 {
        pm1b.write(u16::from(typ_b & 7) << 10 | SLP_EN);
    }
    // The machine should be off; give it a moment before reporting failure.
    super::clock::spin_ns(100_000_000);
    Err(AcpiError::NoS5)
}
