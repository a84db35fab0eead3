//! The full GHCB page protocol (non-automatic exits, "NAE"): how an SEV-ES/SNP guest asks
//! the hypervisor to perform the instructions it may no longer execute itself (CPUID, IN/OUT,
//! RDMSR/WRMSR, RDTSC(P), MMIO) and to change page states in bulk.
//!
//! Spec: AMD "SEV-ES Guest-Hypervisor Communication Block Standardization" #56421 rev 2.03:
//! Table 3 (GHCB layout), §4.1 (NAE event usage), Table 6 (exit codes and the GHCB fields
//! each one needs); AMD APM vol. 2 §15.10.2 / Figure 15-2 (IOIO `EXITINFO1`), Appendix C
//! (SVM exit codes). Linux `arch/x86/include/asm/svm.h` (`struct ghcb_save_area`) and
//! `arch/x86/coco/sev/` speak the same protocol.
//!
//! The protocol for one exit: zero the save area's valid bitmap, write the input fields and
//! mark each valid (bit = offset / 8), write `SW_EXITCODE`, `SW_EXITINFO1`, `SW_EXITINFO2`,
//! point the GHCB MSR at the page's GPA, `VMGEXIT`; then `SW_EXITINFO1[31:0]` says how it
//! went (0 = done, 1 = inject the exception described by `SW_EXITINFO2` in event-injection
//! format, anything else = the hypervisor failed) and the outputs must be marked valid.
//!
//! ```text
//!  exit              code          EXITINFO1            EXITINFO2   in             out
//!  RDTSC             0x6E          0                    0           -              RAX RDX
//!  CPUID             0x72          0                    0           RAX RCX XCR0   RAX RBX RCX RDX
//!  IOIO              0x7B          see ioio_exit_info_1 0           RAX            RAX (IN)
//!  MSR               0x7C          0 read / 1 write     0           RCX (RAX RDX)  RAX RDX (read)
//!  RDTSCP            0x87          0                    0           -              RAX RCX RDX
//!  MMIO read         0x8000_0001   GPA                  bytes       SW_SCRATCH     shared buffer
//!  MMIO write        0x8000_0002   GPA                  bytes       SW_SCRATCH     -
//!  page state change 0x8000_0010   0                    0           SW_SCRATCH     EXITINFO2 = 0
//! ```
//!
//! `SW_SCRATCH` is the GPA of the GHCB's shared buffer (page GPA + 0x800) here: MMIO data
//! and the page state change descriptor live there. The descriptor: a header `u16
//! cur_entry`, `u16 end_entry` (index of the last entry, inclusive), `u32 reserved`, then
//! 8-byte entries `[11:0] cur_page`, `[51:12] GFN`, `[55:52] operation` (1 private, 2
//! shared), `[56] page size` (0 = 4 KiB, 1 = 2 MiB), at most [`PSC_MAX_ENTRIES`] of them.
//! The hypervisor advances `cur_entry`; the guest re-issues the exit until it passes
//! `end_entry`.
//!
//! GHCB registration (MSR protocol 0x012/0x013) is [`node::attest::ghcb::register_ghcb`]; this
//! module re-exports it and pins its encoding in tests.

use core::fmt;

pub use node::attest::ghcb::{
    register_ghcb, Ghcb, PageState, GHCB_PAGE_BYTES, GHCB_PROTOCOL_VERSION,
};

/// GHCB save-area offsets (Table 3; `struct ghcb_save_area`).
pub mod field {
    /// `CPL` (a byte; its valid bit is 0xCB / 8 = 25).
    pub const CPL: usize = 0x0CB;
    /// `XSS`.
    pub const XSS: usize = 0x140;
    /// `DR7`.
    pub const DR7: usize = 0x160;
    /// `RIP`.
    pub const RIP: usize = 0x178;
    /// `RSP`.
    pub const RSP: usize = 0x1D8;
    /// `RAX`.
    pub const RAX: usize = 0x1F8;
    /// `RCX`.
    pub const RCX: usize = 0x308;
    /// `RDX`.
    pub const RDX: usize = 0x310;
    /// `RBX`.
    pub const RBX: usize = 0x318;
    /// `RBP`.
    pub const RBP: usize = 0x328;
    /// `RSI`.
    pub const RSI: usize = 0x330;
    /// `RDI`.
    pub const RDI: usize = 0x338;
    /// `R8` (R9..R15 follow every 8 bytes up to 0x378).
    pub const R8: usize = 0x340;
    /// `R15`.
    pub const R15: usize = 0x378;
    /// `SW_EXITCODE`.
    pub const SW_EXIT_CODE: usize = 0x390;
    /// `SW_EXITINFO1`.
    pub const SW_EXIT_INFO_1: usize = 0x398;
    /// `SW_EXITINFO2`.
    pub const SW_EXIT_INFO_2: usize = 0x3A0;
    /// `SW_SCRATCH`.
    pub const SW_SCRATCH: usize = 0x3A8;
    /// `XCR0`.
    pub const XCR0: usize = 0x3E8;
    /// The valid bitmap (16 bytes: one bit per quadword of 0x000..0x400).
    pub const VALID_BITMAP: usize = 0x3F0;
    /// `X87_STATE_GPA`.
    pub const X87_STATE_GPA: usize = 0x400;
    /// The end of the save area (the rest up to the shared buffer is reserved).
    pub const SAVE_AREA_END: usize = 0x800;
    /// The shared buffer.
    pub const SHARED_BUFFER: usize = 0x800;
    /// `protocol_version` (u16).
    pub const PROTOCOL_VERSION: usize = 0xFFA;
    /// `ghcb_usage` (u32; 0 = the standard layout).
    pub const GHCB_USAGE: usize = 0xFFC;
}

/// Size of the shared buffer.
pub const SHARED_BUFFER_BYTES: usize = 2032;
/// Largest MMIO access carried in one exit.
pub const MAX_MMIO_BYTES: usize = 8;
/// Entries of one page state change descriptor ((2032 - 8) / 8).
pub const PSC_MAX_ENTRIES: usize = 253;
/// How many times one page state change descriptor is re-issued before giving up (the
/// hypervisor must process at least one entry per exit).
pub const PSC_MAX_ROUNDS: usize = PSC_MAX_ENTRIES + 1;

/// SVM / NAE exit codes (APM vol. 2 Appendix C; GHCB spec Table 6).
pub mod exit_code {
    /// RDTSC.
    pub const RDTSC: u64 = 0x6E;
    /// CPUID.
    pub const CPUID: u64 = 0x72;
    /// IN/OUT (IOIO).
    pub const IOIO: u64 = 0x7B;
    /// RDMSR/WRMSR.
    pub const MSR: u64 = 0x7C;
    /// RDTSCP.
    pub const RDTSCP: u64 = 0x87;
    /// Nested page fault: MMIO under SEV-ES arrives as #VC with this code.
    pub const NPF: u64 = 0x400;
    /// MMIO read.
    pub const MMIO_READ: u64 = 0x8000_0001;
    /// MMIO write.
    pub const MMIO_WRITE: u64 = 0x8000_0002;
    /// SNP page state change.
    pub const PSC: u64 = 0x8000_0010;
    /// SNP guest request.
    pub const GUEST_REQUEST: u64 = 0x8000_0011;
}

/// IOIO `EXITINFO1` bits (APM vol. 2 §15.10.2).
pub mod ioio {
    /// Bit 0: 1 = IN, 0 = OUT.
    pub const TYPE_IN: u64 = 1 << 0;
    /// Bit 2: string instruction (INS/OUTS).
    pub const STRING: u64 = 1 << 2;
    /// Bit 3: REP prefix.
    pub const REP: u64 = 1 << 3;
    /// Bit 4: 8-bit operand.
    pub const DATA_8: u64 = 1 << 4;
    /// Bit 5: 16-bit operand.
    pub const DATA_16: u64 = 1 << 5;
    /// Bit 6: 32-bit operand.
    pub const DATA_32: u64 = 1 << 6;
    /// Bit 7: 16-bit address size.
    pub const ADDR_16: u64 = 1 << 7;
    /// Bit 8: 32-bit address size.
    pub const ADDR_32: u64 = 1 << 8;
    /// Bit 9: 64-bit address size (long mode).
    pub const ADDR_64: u64 = 1 << 9;
    /// Bits 31:16: the port.
    pub const PORT_SHIFT: u32 = 16;
}

/// Event-injection format of `SW_EXITINFO2` when `SW_EXITINFO1` is 1 (APM vol. 2 §15.20).
const EVENT_VALID: u64 = 1 << 31;
const EVENT_ERROR_CODE_VALID: u64 = 1 << 11;
const EVENT_TYPE_SHIFT: u32 = 8;
const EVENT_TYPE_MASK: u64 = 0b111;
const EVENT_TYPE_EXCEPTION: u64 = 3;

/// The width of an I/O port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoSize {
    /// 8 bits (AL).
    Byte,
    /// 16 bits (AX).
    Word,
    /// 32 bits (EAX).
    Dword,
}

impl IoSize {
    /// Bytes moved.
    pub fn bytes(self) -> usize {
        match self {
            IoSize::Byte => 1,
            IoSize::Word => 2,
            IoSize::Dword => 4,
        }
    }

    fn data_bit(self) -> u64 {
        match self {
            IoSize::Byte => ioio::DATA_8,
            IoSize::Word => ioio::DATA_16,
            IoSize::Dword => ioio::DATA_32,
        }
    }

    fn mask(self) -> u64 {
        (1u64 << (8 * self.bytes())) - 1
    }
}

/// Direction of a port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDirection {
    /// IN: device to register.
    In,
    /// OUT: register to device.
    Out,
}

/// `SW_EXITINFO1` of a non-string, non-REP IN/OUT executed in long mode.
pub fn ioio_exit_info_1(port: u16, size: IoSize, direction: IoDirection) -> u64 {
    let dir = match direction {
        IoDirection::In => ioio::TYPE_IN,
        IoDirection::Out => 0,
    };
    (u64::from(port) << ioio::PORT_SHIFT) | ioio::ADDR_64 | size.data_bit() | dir
}

/// The new RAX after an IN of `size` returned `value`: AL and AX keep the other bits of RAX,
/// a 32-bit IN zero-extends (as a 32-bit register write does in long mode).
pub fn merge_in(rax: u64, value: u64, size: IoSize) -> u64 {
    match size {
        IoSize::Dword => value & IoSize::Dword.mask(),
        s => (rax & !s.mask()) | (value & s.mask()),
    }
}

/// Why a GHCB exit failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NaeError {
    /// The hypervisor asks the guest to take this exception instead (`SW_EXITINFO1` = 1).
    Exception {
        /// The vector (e.g. 13 for #GP).
        vector: u8,
        /// The error code, when the event carries one.
        error_code: Option<u32>,
    },
    /// The hypervisor failed the exit (`SW_EXITINFO1[31:0]`, `SW_EXITINFO2`).
    Vmm {
        /// `SW_EXITINFO1[31:0]`.
        info1: u32,
        /// `SW_EXITINFO2`.
        info2: u64,
    },
    /// The hypervisor did not mark an output field valid (its save-area offset).
    MissingOutput(usize),
    /// An MMIO access of this many bytes (1, 2, 4 or 8 are allowed).
    BadMmioSize(usize),
    /// More page state change entries than one descriptor holds.
    TooManyEntries(usize),
    /// A page frame number does not fit the 40-bit GFN field.
    AddressTooHigh,
    /// A page state change failed: `SW_EXITINFO2` was non-zero.
    PageStateChange(u64),
    /// The hypervisor broke the page state change protocol (reserved header bits set,
    /// `cur_entry` went backwards, `end_entry` grew, or no progress for too long).
    PscProtocol,
}

impl fmt::Display for NaeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NaeError::Exception {
                vector,
                error_code: Some(e),
            } => write!(
                f,
                "hypervisor injects exception {vector} (error code {e:#x})"
            ),
            NaeError::Exception {
                vector,
                error_code: None,
            } => write!(f, "hypervisor injects exception {vector}"),
            NaeError::Vmm { info1, info2 } => {
                write!(
                    f,
                    "hypervisor failed the exit: info1 {info1:#x} info2 {info2:#x}"
                )
            }
            NaeError::MissingOutput(at) => write!(f, "GHCB field {at:#x} not returned valid"),
            NaeError::BadMmioSize(n) => write!(f, "MMIO access of {n} bytes"),
            NaeError::TooManyEntries(n) => {
                write!(f, "{n} page state entries (at most {PSC_MAX_ENTRIES})")
            }
            NaeError::AddressTooHigh => f.write_str("guest page frame out of range"),
            NaeError::PageStateChange(e) => write!(f, "page state change failed: {e:#x}"),
            NaeError::PscProtocol => f.write_str("hypervisor broke the page state protocol"),
        }
    }
}

/// The machine: points the GHCB MSR at the page and executes `VMGEXIT` (the kernel), or a
/// scripted hypervisor (the tests).
pub trait GhcbExit {
    /// Exits to the hypervisor with `ghcb` as the registered GHCB.
    fn vmgexit(&mut self, ghcb: &mut Ghcb);
}

fn write_u64(ghcb: &mut Ghcb, at: usize, value: u64) {
    ghcb.0[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn read_u16(ghcb: &Ghcb, at: usize) -> u16 {
    u16::from_le_bytes([ghcb.0[at], ghcb.0[at + 1]])
}

/// Starts an exit: clears the save area (fields and valid bitmap) and sets the protocol
/// version and usage. The shared buffer is left alone (a page state change descriptor is
/// re-issued from it).
pub fn begin(ghcb: &mut Ghcb) {
    ghcb.0[..field::SAVE_AREA_END].fill(0);
    ghcb.0[field::PROTOCOL_VERSION..field::PROTOCOL_VERSION + 2]
        .copy_from_slice(&GHCB_PROTOCOL_VERSION.to_le_bytes());
    ghcb.0[field::GHCB_USAGE..field::GHCB_USAGE + 4].fill(0);
}

/// Classifies `SW_EXITINFO1` / `SW_EXITINFO2` after an exit.
pub fn check_exit(ghcb: &Ghcb) -> Result<(), NaeError> {
    let info1 = ghcb.get(field::SW_EXIT_INFO_1) as u32;
    let info2 = ghcb.get(field::SW_EXIT_INFO_2);
    match info1 {
        0 => Ok(()),
        1 if info2 & EVENT_VALID != 0
            && (info2 >> EVENT_TYPE_SHIFT) & EVENT_TYPE_MASK == EVENT_TYPE_EXCEPTION =>
        {
            Err(NaeError::Exception {
                vector: info2 as u8,
                error_code: (info2 & EVENT_ERROR_CODE_VALID != 0).then_some((info2 >> 32) as u32),
            })
        }
        _ => Err(NaeError::Vmm { info1, info2 }),
    }
}

/// One exit with the given code and infos; inputs are set by the caller after [`begin`].
fn exit(
    hv: &mut impl GhcbExit,
    ghcb: &mut Ghcb,
    code: u64,
    info1: u64,
    info2: u64,
) -> Result<(), NaeError> {
    ghcb.set(field::SW_EXIT_CODE, code);
    ghcb.set(field::SW_EXIT_INFO_1, info1);
    ghcb.set(field::SW_EXIT_INFO_2, info2);
    hv.vmgexit(ghcb);
    check_exit(ghcb)
}

fn output(ghcb: &Ghcb, at: usize) -> Result<u64, NaeError> {
    if !ghcb.is_valid(at) {
        return Err(NaeError::MissingOutput(at));
    }
    Ok(ghcb.get(at))
}

/// What CPUID returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidRegs {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// CPUID through the hypervisor (used only when no SNP CPUID page answers). `xcr0` is
/// given when CR4.OSXSAVE is set.
pub fn cpuid(
    hv: &mut impl GhcbExit,
    ghcb: &mut Ghcb,
    leaf: u32,
    subleaf: u32,
    xcr0: Option<u64>,
) -> Result<CpuidRegs, NaeError> {
    begin(ghcb);
    ghcb.set(field::RAX, u64::from(leaf));
    ghcb.set(field::RCX, u64::from(subleaf));
    if let Some(x) = xcr0 {
        ghcb.set(field::XCR0, x);
    }
    exit(hv, ghcb, exit_code::CPUID, 0, 0)?;
    Ok(CpuidRegs {
        eax: output(ghcb, field::RAX)? as u32,
        ebx: output(ghcb, field::RBX)? as u32,
        ecx: output(ghcb, field::RCX)? as u32,
        edx: output(ghcb, field::RDX)? as u32,
    })
}

/// RDMSR through the hypervisor.
pub fn rdmsr(hv: &mut impl GhcbExit, ghcb: &mut Ghcb, msr: u32) -> Result<u64, NaeError> {
    begin(ghcb);
    ghcb.set(field::RCX, u64::from(msr));
    exit(hv, ghcb, exit_code::MSR, 0, 0)?;
    let lo = output(ghcb, field::RAX)? & 0xFFFF_FFFF;
    let hi = output(ghcb, field::RDX)? & 0xFFFF_FFFF;
    Ok((hi << 32) | lo)
}

/// WRMSR through the hypervisor.
pub fn wrmsr(
    hv: &mut impl GhcbExit,
    ghcb: &mut Ghcb,
    msr: u32,
    value: u64,
) -> Result<(), NaeError> {
    begin(ghcb);
    ghcb.set(field::RCX, u64::from(msr));
    ghcb.set(field::RAX, value & 0xFFFF_FFFF);
    ghcb.set(field::RDX, value >> 32);
    exit(hv, ghcb, exit_code::MSR, 1, 0)
}

/// RDTSC through the hypervisor.
pub fn rdtsc(hv: &mut impl GhcbExit, ghcb: &mut Ghcb) -> Result<u64, NaeError> {
    begin(ghcb);
    exit(hv, ghcb, exit_code::RDTSC, 0, 0)?;
    let lo = output(ghcb, field::RAX)? & 0xFFFF_FFFF;
    let hi = output(ghcb, field::RDX)? & 0xFFFF_FFFF;
    Ok((hi << 32) | lo)
}

/// RDTSCP through the hypervisor: the TSC and `TSC_AUX` (ECX).
pub fn rdtscp(hv: &mut impl GhcbExit, ghcb: &mut Ghcb) -> Result<(u64, u32), NaeError> {
    begin(ghcb);
    exit(hv, ghcb, exit_code::RDTSCP, 0, 0)?;
    let lo = output(ghcb, field::RAX)? & 0xFFFF_FFFF;
    let hi = output(ghcb, field::RDX)? & 0xFFFF_FFFF;
    let aux = output(ghcb, field::RCX)? as u32;
    Ok(((hi << 32) | lo, aux))
}

/// IN through the hypervisor: the value read (zero-extended; see [`merge_in`]).
pub fn io_in(
    hv: &mut impl GhcbExit,
    ghcb: &mut Ghcb,
    port: u16,
    size: IoSize,
) -> Result<u64, NaeError> {
    begin(ghcb);
    ghcb.set(field::RAX, 0);
    exit(
        hv,
        ghcb,
        exit_code::IOIO,
        ioio_exit_info_1(port, size, IoDirection::In),
        0,
    )?;
    Ok(output(ghcb, field::RAX)? & size.mask())
}

/// OUT through the hypervisor.
pub fn io_out(
    hv: &mut impl GhcbExit,
    ghcb: &mut Ghcb,
    port: u16,
    size: IoSize,
    value: u64,
) -> Result<(), NaeError> {
    begin(ghcb);
    ghcb.set(field::RAX, value & size.mask());
    exit(
        hv,
        ghcb,
        exit_code::IOIO,
        ioio_exit_info_1(port, size, IoDirection::Out),
        0,
    )
}

fn check_mmio_len(len: usize) -> Result<(), NaeError> {
    match len {
        1 | 2 | 4 | 8 => Ok(()),
        n => Err(NaeError::BadMmioSize(n)),
    }
}

/// MMIO read of `buf.len()` bytes at `gpa` through the hypervisor; `ghcb_gpa` is the GHCB
/// page's own GPA (the data comes back in its shared buffer).
pub fn mmio_read(
    hv: &mut impl GhcbExit,
    ghcb: &mut Ghcb,
    ghcb_gpa: u64,
    gpa: u64,
    buf: &mut [u8],
) -> Result<(), NaeError> {
    check_mmio_len(buf.len())?;
    begin(ghcb);
    ghcb.0[field::SHARED_BUFFER..field::SHARED_BUFFER + MAX_MMIO_BYTES].fill(0);
    ghcb.set(field::SW_SCRATCH, ghcb_gpa + field::SHARED_BUFFER as u64);
    exit(hv, ghcb, exit_code::MMIO_READ, gpa, buf.len() as u64)?;
    buf.copy_from_slice(&ghcb.0[field::SHARED_BUFFER..field::SHARED_BUFFER + buf.len()]);
    Ok(())
}

/// MMIO write of `data` (1, 2, 4 or 8 bytes) at `gpa` through the hypervisor.
pub fn mmio_write(
    hv: &mut impl GhcbExit,
    ghcb: &mut Ghcb,
    ghcb_gpa: u64,
    gpa: u64,
    data: &[u8],
) -> Result<(), NaeError> {
    check_mmio_len(data.len())?;
    begin(ghcb);
    ghcb.0[field::SHARED_BUFFER..field::SHARED_BUFFER + data.len()].copy_from_slice(data);
    ghcb.set(field::SW_SCRATCH, ghcb_gpa + field::SHARED_BUFFER as u64);
    exit(hv, ghcb, exit_code::MMIO_WRITE, gpa, data.len() as u64)
}

/// One page state change entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PscEntry {
    /// The guest page frame number (GPA >> 12; 2 MiB-aligned for a 2 MiB entry).
    pub gfn: u64,
    /// The state asked for.
    pub state: PageState,
    /// A 2 MiB page (else 4 KiB).
    pub huge: bool,
}

/// The GFN field is 40 bits (51:12).
const PSC_GFN_LIMIT: u64 = 1 << 40;
const PSC_HEADER_BYTES: usize = 8;

impl PscEntry {
    /// The entry's 8-byte encoding (`cur_page` 0).
    pub fn encode(&self) -> Result<u64, NaeError> {
        if self.gfn >= PSC_GFN_LIMIT {
            return Err(NaeError::AddressTooHigh);
        }
        Ok((self.gfn << 12) | ((self.state as u64) << 52) | (u64::from(self.huge) << 56))
    }
}

/// Writes the descriptor for `entries` into the shared buffer (header: cur 0, end = n - 1).
pub fn write_psc_descriptor(ghcb: &mut Ghcb, entries: &[PscEntry]) -> Result<(), NaeError> {
    if entries.is_empty() || entries.len() > PSC_MAX_ENTRIES {
        return Err(NaeError::TooManyEntries(entries.len()));
    }
    let base = field::SHARED_BUFFER;
    ghcb.0[base..base + PSC_HEADER_BYTES].fill(0);
    let end = (entries.len() - 1) as u16;
    ghcb.0[base + 2..base + 4].copy_from_slice(&end.to_le_bytes());
    for (i, e) in entries.iter().enumerate() {
        let at = base + PSC_HEADER_BYTES + 8 * i;
        write_u64(ghcb, at, e.encode()?);
    }
    Ok(())
}

/// Changes the state of up to [`PSC_MAX_ENTRIES`] pages with the page state change exit,
/// re-issuing it until the hypervisor has processed every entry. The caller PVALIDATEs
/// (rescinds before going shared, validates after going private).
pub fn page_state_change(
    hv: &mut impl GhcbExit,
    ghcb: &mut Ghcb,
    ghcb_gpa: u64,
    entries: &[PscEntry],
) -> Result<(), NaeError> {
    write_psc_descriptor(ghcb, entries)?;
    let base = field::SHARED_BUFFER;
    let end = (entries.len() - 1) as u16;
    let mut cur = 0u16;
    for _ in 0..PSC_MAX_ROUNDS {
        begin(ghcb);
        ghcb.set(field::SW_SCRATCH, ghcb_gpa + base as u64);
        exit(hv, ghcb, exit_code::PSC, 0, 0)?;
        let info2 = ghcb.get(field::SW_EXIT_INFO_2);
        if info2 != 0 {
            return Err(NaeError::PageStateChange(info2));
        }
        let new_cur = read_u16(ghcb, base);
        let new_end = read_u16(ghcb, base + 2);
        let reserved = &ghcb.0[base + 4..base + 8];
        if reserved.iter().any(|&b| b != 0) || new_end > end || new_cur < cur {
            return Err(NaeError::PscProtocol);
        }
        cur = new_cur;
        if cur > new_end {
            return Ok(());
        }
    }
    Err(NaeError::PscProtocol)
}

/// 4 KiB.
const PAGE_4K_BYTES: u64 = 4096;
/// 2 MiB.
const PAGE_2M_BYTES: u64 = 2 << 20;

/// Splits the page-aligned range `[start, end)` into page state change descriptors of at
/// most [`PSC_MAX_ENTRIES`] entries, 2 MiB entries where a 2 MiB page fits aligned, 4 KiB
/// ones elsewhere, and hands each descriptor to `issue` in address order.
pub fn psc_batches<E>(
    start: u64,
    end: u64,
    state: PageState,
    mut issue: impl FnMut(&[PscEntry]) -> Result<(), E>,
) -> Result<(), E> {
    let mut batch = [PscEntry {
        gfn: 0,
        state,
        huge: false,
    }; PSC_MAX_ENTRIES];
    let mut page = start & !(PAGE_4K_BYTES - 1);
    while page < end {
        let mut n = 0;
        while n < batch.len() && page < end {
            let huge = page.is_multiple_of(PAGE_2M_BYTES) && end - page >= PAGE_2M_BYTES;
            batch[n] = PscEntry {
                gfn: page >> 12,
                state,
                huge,
            };
            page += if huge { PAGE_2M_BYTES } else { PAGE_4K_BYTES };
            n += 1;
        }
        issue(&batch[..n])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use node::attest::ghcb::Hypervisor;

    const GHCB_GPA: u64 = 0x0012_3000;

    /// A scripted hypervisor: checks each exit against an expectation and answers it.
    struct Script {
        steps: Vec<fn(&mut Ghcb)>,
        seen: Vec<Ghcb>,
    }

    impl Script {
        fn new(steps: Vec<fn(&mut Ghcb)>) -> Script {
            Script {
                steps,
                seen: Vec::new(),
            }
        }
    }

    impl GhcbExit for Script {
        fn vmgexit(&mut self, ghcb: &mut Ghcb) {
            self.seen.push(ghcb.clone());
            // A hypervisor answers every exit in SW_EXITINFO1/2 (0 = done).
            ghcb.set(field::SW_EXIT_INFO_1, 0);
            ghcb.set(field::SW_EXIT_INFO_2, 0);
            let step = self.steps.remove(0);
            step(ghcb);
        }
    }

    fn answer(ghcb: &mut Ghcb, at: usize, value: u64) {
        ghcb.set(at, value);
    }

    fn valid_bits(g: &Ghcb) -> [u8; 16] {
        let mut b = [0u8; 16];
        b.copy_from_slice(&g.0[0x3F0..0x400]);
        b
    }

    fn bitmap_of(fields: &[usize]) -> [u8; 16] {
        let mut b = [0u8; 16];
        for &f in fields {
            b[f / 64] |= 1 << ((f / 8) % 8);
        }
        b
    }

    #[test]
    fn save_area_offsets_match_table_3() {
        // The valid-bitmap bit of each field is its offset / 8 (spec §2.2).
        let cases = [
            (field::CPL, 0xCB, 25),
            (field::XSS, 0x140, 40),
            (field::DR7, 0x160, 44),
            (field::RIP, 0x178, 47),
            (field::RSP, 0x1D8, 59),
            (field::RAX, 0x1F8, 63),
            (field::RCX, 0x308, 97),
            (field::RDX, 0x310, 98),
            (field::RBX, 0x318, 99),
            (field::RBP, 0x328, 101),
            (field::RSI, 0x330, 102),
            (field::RDI, 0x338, 103),
            (field::R8, 0x340, 104),
            (field::R15, 0x378, 111),
            (field::SW_EXIT_CODE, 0x390, 114),
            (field::SW_EXIT_INFO_1, 0x398, 115),
            (field::SW_EXIT_INFO_2, 0x3A0, 116),
            (field::SW_SCRATCH, 0x3A8, 117),
            (field::XCR0, 0x3E8, 125),
        ];
        for (f, off, bit) in cases {
            assert_eq!((f, f / 8), (off, bit), "{off:#x}");
        }
        assert_eq!(field::VALID_BITMAP, 0x3F0);
        assert_eq!(field::X87_STATE_GPA, 0x400);
        assert_eq!(field::SHARED_BUFFER + SHARED_BUFFER_BYTES, 0xFF0);
        assert_eq!(field::PROTOCOL_VERSION, 0xFFA);
        assert_eq!(field::GHCB_USAGE, 0xFFC);
        assert_eq!(PSC_MAX_ENTRIES, (SHARED_BUFFER_BYTES - 8) / 8);
        // The offsets agree with the ones the guest-request path already uses.
        use node::attest::ghcb::offset;
        assert_eq!(offset::RAX, field::RAX);
        assert_eq!(offset::SW_SCRATCH, field::SW_SCRATCH);
        assert_eq!(offset::VALID_BITMAP, field::VALID_BITMAP);
    }

    #[test]
    fn ioio_exit_info_encoding() {
        // OUT DX, AL to COM1 (0x3F8): port in 31:16, 64-bit address, 8-bit data, OUT.
        assert_eq!(
            ioio_exit_info_1(0x3F8, IoSize::Byte, IoDirection::Out),
            0x03F8_0210
        );
        // IN AL, DX from the LSR (0x3FD).
        assert_eq!(
            ioio_exit_info_1(0x3FD, IoSize::Byte, IoDirection::In),
            0x03FD_0211
        );
        // 32-bit IN from the PCI config data port, 16-bit OUT to 0xF4.
        assert_eq!(
            ioio_exit_info_1(0xCFC, IoSize::Dword, IoDirection::In),
            0x0CFC_0241
        );
        assert_eq!(
            ioio_exit_info_1(0xF4, IoSize::Word, IoDirection::Out),
            0x00F4_0220
        );
        assert_eq!(
            merge_in(0x1122_3344_5566_7788, 0xAB, IoSize::Byte),
            0x1122_3344_5566_77AB
        );
        assert_eq!(
            merge_in(0x1122_3344_5566_7788, 0xABCD, IoSize::Word),
            0x1122_3344_5566_ABCD
        );
        assert_eq!(
            merge_in(0x1122_3344_5566_7788, 0xDEAD_BEEF, IoSize::Dword),
            0xDEAD_BEEF
        );
    }

    #[test]
    fn io_out_and_in_exchanges() {
        let mut hv = Script::new(alloc::vec![|_g: &mut Ghcb| {}, |g: &mut Ghcb| answer(
            g,
            field::RAX,
            0xFFFF_FF60
        ),]);
        let mut ghcb = Ghcb::default();
        // Stale data from an earlier exit must not leak into this one.
        ghcb.set(field::RBX, 7);
        io_out(&mut hv, &mut ghcb, 0x3F8, IoSize::Byte, 0x1234_5641).unwrap();
        let g = &hv.seen[0];
        assert_eq!(g.get(field::SW_EXIT_CODE), 0x7B);
        assert_eq!(g.get(field::SW_EXIT_INFO_1), 0x03F8_0210);
        assert_eq!(g.get(field::SW_EXIT_INFO_2), 0);
        assert_eq!(g.get(field::RAX), 0x41, "only AL is sent");
        assert_eq!(
            valid_bits(g),
            bitmap_of(&[
                field::RAX,
                field::SW_EXIT_CODE,
                field::SW_EXIT_INFO_1,
                field::SW_EXIT_INFO_2
            ])
        );
        assert_eq!(&g.0[0xFFA..0x1000], &[2, 0, 0, 0, 0, 0]);
        assert_eq!(g.get(field::RBX), 0, "save area cleared");
        // IN AL: the hypervisor returns more than a byte; only AL counts.
        assert_eq!(io_in(&mut hv, &mut ghcb, 0x3FD, IoSize::Byte), Ok(0x60));
        assert_eq!(hv.seen[1].get(field::SW_EXIT_INFO_1), 0x03FD_0211);
        assert!(hv.seen[1].is_valid(field::RAX));
    }

    #[test]
    fn exit_errors_are_typed() {
        // #GP(0) injection: valid, type 3 (exception), error code valid, code 0.
        let mut hv = Script::new(alloc::vec![
            |g: &mut Ghcb| {
                answer(g, field::SW_EXIT_INFO_1, 1);
                answer(g, field::SW_EXIT_INFO_2, 0x8000_0B0D);
            },
            |g: &mut Ghcb| {
                answer(g, field::SW_EXIT_INFO_1, 1);
                answer(g, field::SW_EXIT_INFO_2, 0x8000_0306);
            },
            |g: &mut Ghcb| {
                answer(g, field::SW_EXIT_INFO_1, 2);
                answer(g, field::SW_EXIT_INFO_2, 4);
            },
            // Answered "ok" but without marking RAX/RDX valid.
            |_g: &mut Ghcb| {},
        ]);
        let mut ghcb = Ghcb::default();
        assert_eq!(
            rdmsr(&mut hv, &mut ghcb, 0xC000_0080),
            Err(NaeError::Exception {
                vector: 13,
                error_code: Some(0)
            })
        );
        assert_eq!(
            wrmsr(&mut hv, &mut ghcb, 0x10, 1),
            Err(NaeError::Exception {
                vector: 6,
                error_code: None
            })
        );
        assert_eq!(
            io_in(&mut hv, &mut ghcb, 0x60, IoSize::Byte),
            Err(NaeError::Vmm { info1: 2, info2: 4 })
        );
        assert_eq!(
            rdtsc(&mut hv, &mut ghcb),
            Err(NaeError::MissingOutput(field::RAX))
        );
        for e in [
            NaeError::Exception {
                vector: 13,
                error_code: Some(0),
            },
            NaeError::PscProtocol,
            NaeError::BadMmioSize(3),
        ] {
            assert!(!alloc::format!("{e}").is_empty());
        }
    }

    #[test]
    fn msr_cpuid_and_tsc_exchanges() {
        let mut hv = Script::new(alloc::vec![
            |g: &mut Ghcb| {
                answer(g, field::RAX, 0xFFFF_FFFF_0000_0D01);
                answer(g, field::RDX, 0xFFFF_FFFF_0000_0000);
            },
            |_g: &mut Ghcb| {},
            |g: &mut Ghcb| {
                answer(g, field::RAX, 0x0000_000D);
                answer(g, field::RBX, 0x6874_7541);
                answer(g, field::RCX, 0x444D_4163);
                answer(g, field::RDX, 0x6974_6E65);
            },
            |g: &mut Ghcb| {
                answer(g, field::RAX, 0x89AB_CDEF);
                answer(g, field::RDX, 0x0123_4567);
                answer(g, field::RCX, 3);
            },
        ]);
        let mut ghcb = Ghcb::default();
        // RDMSR EFER: only the low halves of RAX/RDX count.
        assert_eq!(rdmsr(&mut hv, &mut ghcb, 0xC000_0080), Ok(0xD01));
        let g = &hv.seen[0];
        assert_eq!(
            (g.get(field::SW_EXIT_CODE), g.get(field::SW_EXIT_INFO_1)),
            (0x7C, 0)
        );
        assert_eq!(g.get(field::RCX), 0xC000_0080);
        assert_eq!(
            valid_bits(g),
            bitmap_of(&[
                field::RCX,
                field::SW_EXIT_CODE,
                field::SW_EXIT_INFO_1,
                field::SW_EXIT_INFO_2
            ])
        );
        // WRMSR x2APIC EOI (0x80B) with a 64-bit value split into EDX:EAX.
        wrmsr(&mut hv, &mut ghcb, 0x80B, 0x0000_0001_0000_0002).unwrap();
        let g = &hv.seen[1];
        assert_eq!(g.get(field::SW_EXIT_INFO_1), 1);
        assert_eq!(
            (g.get(field::RCX), g.get(field::RAX), g.get(field::RDX)),
            (0x80B, 2, 1)
        );
        // CPUID leaf 0 with XCR0 supplied.
        let regs = cpuid(&mut hv, &mut ghcb, 0, 0, Some(7)).unwrap();
        assert_eq!(
            regs,
            CpuidRegs {
                eax: 0xD,
                ebx: 0x6874_7541,
                ecx: 0x444D_4163,
                edx: 0x6974_6E65
            }
        );
        let g = &hv.seen[2];
        assert_eq!(g.get(field::SW_EXIT_CODE), 0x72);
        assert_eq!(g.get(field::XCR0), 7);
        assert!(g.is_valid(field::XCR0) && g.is_valid(field::RCX) && g.is_valid(field::RAX));
        assert_eq!(rdtscp(&mut hv, &mut ghcb), Ok((0x0123_4567_89AB_CDEF, 3)));
        assert_eq!(hv.seen[3].get(field::SW_EXIT_CODE), 0x87);
    }

    #[test]
    fn mmio_exchanges_use_the_shared_buffer() {
        let mut hv = Script::new(alloc::vec![
            |g: &mut Ghcb| g.0[0x800..0x804].copy_from_slice(&[0x14, 0, 5, 0]),
            |_g: &mut Ghcb| {},
        ]);
        let mut ghcb = Ghcb::default();
        let mut buf = [0u8; 4];
        mmio_read(&mut hv, &mut ghcb, GHCB_GPA, 0xFEE0_0030, &mut buf).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0x0005_0014);
        let g = &hv.seen[0];
        assert_eq!(g.get(field::SW_EXIT_CODE), 0x8000_0001);
        assert_eq!(g.get(field::SW_EXIT_INFO_1), 0xFEE0_0030);
        assert_eq!(g.get(field::SW_EXIT_INFO_2), 4);
        assert_eq!(g.get(field::SW_SCRATCH), 0x0012_3800);
        assert!(g.is_valid(field::SW_SCRATCH));
        mmio_write(
            &mut hv,
            &mut ghcb,
            GHCB_GPA,
            0xFEE0_00B0,
            &0u32.to_le_bytes(),
        )
        .unwrap();
        let g = &hv.seen[1];
        assert_eq!(g.get(field::SW_EXIT_CODE), 0x8000_0002);
        assert_eq!(g.get(field::SW_EXIT_INFO_1), 0xFEE0_00B0);
        assert_eq!(g.get(field::SW_EXIT_INFO_2), 4);
        assert_eq!(&g.0[0x800..0x804], &[0, 0, 0, 0]);
        let mut odd = [0u8; 3];
        assert_eq!(
            mmio_read(&mut hv, &mut ghcb, GHCB_GPA, 0, &mut odd),
            Err(NaeError::BadMmioSize(3))
        );
    }

    #[test]
    fn psc_descriptor_layout_and_partial_progress() {
        let entries = [
            PscEntry {
                gfn: 0x7F,
                state: PageState::Shared,
                huge: false,
            },
            PscEntry {
                gfn: 0x200,
                state: PageState::Private,
                huge: true,
            },
            PscEntry {
                gfn: 0xFF_FFFF_FFFF,
                state: PageState::Private,
                huge: false,
            },
        ];
        // The hypervisor does one entry per exit (cur_entry 1, 2, then 3 > end 2).
        let mut hv = Script::new(alloc::vec![
            |g: &mut Ghcb| g.0[0x800] = 1,
            |g: &mut Ghcb| g.0[0x800] = 2,
            |g: &mut Ghcb| g.0[0x800] = 3,
        ]);
        let mut ghcb = Ghcb::default();
        page_state_change(&mut hv, &mut ghcb, GHCB_GPA, &entries).unwrap();
        assert_eq!(hv.seen.len(), 3);
        let g = &hv.seen[0];
        assert_eq!(g.get(field::SW_EXIT_CODE), 0x8000_0010);
        assert_eq!(g.get(field::SW_SCRATCH), 0x0012_3800);
        // Header: cur 0, end 2, reserved 0; then the entries.
        assert_eq!(&g.0[0x800..0x808], &[0, 0, 2, 0, 0, 0, 0, 0]);
        assert_eq!(g.get(0x808), 0x0020_0000_0007_F000);
        assert_eq!(g.get(0x810), 0x0110_0000_0020_0000);
        assert_eq!(
            g.get(0x818),
            0x001F_FFFF_FFFF_F000,
            "the largest 40-bit GFN"
        );
        // The re-issued exits carry the hypervisor's progress.
        assert_eq!(hv.seen[2].0[0x800], 2);
        assert_eq!(
            PscEntry {
                gfn: 1 << 40,
                state: PageState::Shared,
                huge: false
            }
            .encode(),
            Err(NaeError::AddressTooHigh)
        );
    }

    #[test]
    fn psc_errors() {
        let one = [PscEntry {
            gfn: 1,
            state: PageState::Shared,
            huge: false,
        }];
        let mut ghcb = Ghcb::default();
        let mut hv = Script::new(alloc::vec![|g: &mut Ghcb| answer(
            g,
            field::SW_EXIT_INFO_2,
            0x1_0000_0000
        )]);
        assert_eq!(
            page_state_change(&mut hv, &mut ghcb, GHCB_GPA, &one),
            Err(NaeError::PageStateChange(0x1_0000_0000))
        );
        // Reserved header bits set.
        let mut hv = Script::new(alloc::vec![|g: &mut Ghcb| {
            g.0[0x800] = 1;
            g.0[0x804] = 1;
        }]);
        assert_eq!(
            page_state_change(&mut hv, &mut ghcb, GHCB_GPA, &one),
            Err(NaeError::PscProtocol)
        );
        // A hypervisor that never makes progress is given up on.
        let mut hv = Script::new(alloc::vec![|_g: &mut Ghcb| {}; PSC_MAX_ROUNDS]);
        assert_eq!(
            page_state_change(&mut hv, &mut ghcb, GHCB_GPA, &one),
            Err(NaeError::PscProtocol)
        );
        let too_many = alloc::vec![one[0]; PSC_MAX_ENTRIES + 1];
        assert_eq!(
            page_state_change(&mut hv, &mut ghcb, GHCB_GPA, &too_many),
            Err(NaeError::TooManyEntries(254))
        );
        assert_eq!(
            write_psc_descriptor(&mut ghcb, &[]),
            Err(NaeError::TooManyEntries(0))
        );
    }

    #[test]
    fn ghcb_registration_msr_encoding() {
        // MSR protocol 0x012 with the GFN in 63:12; the answer 0x013 echoes the GFN.
        struct Msr(Vec<u64>);
        impl Hypervisor for Msr {
            fn msr_protocol(&mut self, request: u64) -> u64 {
                self.0.push(request);
                (request & !0xFFF) | 0x013
            }
            fn vmgexit(&mut self, _: &mut Ghcb, _: &mut node::attest::ghcb::GuestRequestPages<'_>) {
                unreachable!("no guest request here")
            }
        }
        let mut hv = Msr(Vec::new());
        register_ghcb(&mut hv, GHCB_GPA).unwrap();
        assert_eq!(hv.0, [0x0012_3012]);
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use alloc::vec::Vec;

    fn batches(start: u64, end: u64) -> Vec<Vec<PscEntry>> {
        let mut out = Vec::new();
        psc_batches::<()>(start, end, PageState::Private, |b| {
            out.push(b.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn huge_entries_where_aligned_small_elsewhere() {
        // 4 KiB below a 2 MiB boundary, two 2 MiB pages, 8 KiB after.
        let b = batches(0x1F_F000, 0x60_2000);
        assert_eq!(b.len(), 1);
        let got: Vec<(u64, bool)> = b[0].iter().map(|e| (e.gfn, e.huge)).collect();
        assert_eq!(
            got,
            [
                (0x1FF, false),
                (0x200, true),
                (0x400, true),
                (0x600, false),
                (0x601, false)
            ]
        );
        assert!(b[0].iter().all(|e| e.state == PageState::Private));
        assert!(batches(0x1000, 0x1000).is_empty());
    }

    #[test]
    fn batches_hold_at_most_253_entries() {
        // 600 small pages (not 2 MiB aligned at the start): 253 + 253 + 94 entries.
        let b = batches(0x1000, 0x1000 + 600 * 4096);
        let sizes: Vec<usize> = b.iter().map(Vec::len).collect();
        // The range crosses one 2 MiB boundary but never holds a whole aligned 2 MiB page.
        assert_eq!(sizes, [253, 253, 94]);
        assert_eq!(b[1][0].gfn, 0x1 + 253);
        let mut calls = 0;
        let r = psc_batches(0, 1 << 30, PageState::Shared, |_| {
            calls += 1;
            Err("refused")
        });
        assert_eq!((r, calls), (Err("refused"), 1), "the first error stops");
    }
}
