//! Decoding the instruction behind a #VC (VMM communication exception, vector 29) into the
//! request the kernel's handler performs through the GHCB.
//!
//! Under SEV-ES/SNP an intercepted instruction does not exit to the hypervisor: the CPU
//! raises #VC with the SVM exit code as error code (AMD APM vol. 2 §15.35.5), RIP at the
//! instruction. The handler must know the instruction's operands and length to emulate it and
//! move RIP past it. cairn's kernel executes only a few such instructions outside the GHCB
//! paths that avoid them altogether (port I/O, MSRs and the local APIC go through the GHCB
//! directly), so the decoder accepts exactly those forms and refuses everything else with a
//! typed error:
//!
//! ```text
//!  exit code      bytes                     instruction
//!  0x72 CPUID     0F A2                     CPUID
//!  0x7C MSR       0F 32 / 0F 30             RDMSR / WRMSR
//!  0x6E RDTSC     0F 31                     RDTSC
//!  0x87 RDTSCP    0F 01 F9                  RDTSCP
//!  0x7B IOIO      [66] E4 ib / E5 ib        IN AL/AX/EAX, imm8
//!                 [66] E6 ib / E7 ib        OUT imm8, AL/AX/EAX
//!                 [66] EC / ED              IN AL/AX/EAX, DX
//!                 [66] EE / EF              OUT DX, AL/AX/EAX
//! ```
//!
//! (Intel SDM vol. 2 / AMD APM vol. 3 opcode maps; the 0x66 operand-size prefix turns the
//! 32-bit forms into 16-bit ones and does not affect the byte forms.) String I/O (INS/OUTS),
//! REP and any other prefix are refused.
//!
//! MMIO under SEV-ES/SNP arrives as #VC with the NPF exit code (0x400): the device pages are
//! mapped shared and the hypervisor marks them so that any access faults. The guest decodes
//! the memory operand and performs the access with the GHCB MMIO exits. The forms accepted
//! (what `read_volatile`/`write_volatile` compile to), with optional 0x66, REX and ignored
//! CS/DS/ES/SS segment prefixes:
//!
//! ```text
//!  88 /r  MOV m8, r8        89 /r  MOV m, r16/32/64     C6 /0 ib  MOV m8, imm8
//!  8A /r  MOV r8, m8        8B /r  MOV r16/32/64, m     C7 /0 iw/id  MOV m, imm16/32
//!  0F B6 /r  MOVZX r, m8    0F B7 /r  MOVZX r, m16
//! ```
//!
//! The memory operand is ModRM (+ SIB, + disp8/disp32, or RIP-relative disp32) in 64-bit
//! addressing; FS/GS overrides, the 0x67 address-size prefix, LOCK and REP are refused.

use core::fmt;

use super::ghcb_page::{exit_code, IoDirection, IoSize};

/// The longest x86 instruction.
pub const MAX_INSTRUCTION_BYTES: usize = 15;
/// The operand-size override prefix.
const PREFIX_OPERAND_SIZE: u8 = 0x66;

/// Where an IN/OUT takes its port from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortOperand {
    /// DX.
    Dx,
    /// An 8-bit immediate.
    Imm(u8),
}

/// The request behind a #VC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcRequest {
    /// CPUID (EAX = leaf, ECX = subleaf; results in EAX, EBX, ECX, EDX).
    Cpuid,
    /// RDMSR (ECX = MSR; result in EDX:EAX).
    Rdmsr,
    /// WRMSR (ECX = MSR, value EDX:EAX).
    Wrmsr,
    /// RDTSC (result in EDX:EAX).
    Rdtsc,
    /// RDTSCP (result in EDX:EAX, TSC_AUX in ECX).
    Rdtscp,
    /// An MMIO access by a MOV (NPF exit).
    Mmio(MmioAccess),
    /// IN or OUT through the accumulator.
    Io {
        /// IN or OUT.
        direction: IoDirection,
        /// AL, AX or EAX.
        size: IoSize,
        /// DX or an immediate.
        port: PortOperand,
    },
}

/// A decoded instruction: what to do and how far to advance RIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcInstruction {
    /// The request.
    pub request: VcRequest,
    /// The instruction's length in bytes.
    pub len: usize,
}

/// Why a #VC cannot be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcError {
    /// The exit code is not one the kernel emulates (e.g. NPF for MMIO by a plain MOV).
    UnsupportedExit(u64),
    /// The instruction bytes end before the instruction does.
    Truncated,
    /// A prefix other than one 0x66 before an I/O instruction.
    UnsupportedPrefix(u8),
    /// String I/O (INS/OUTS), which the kernel never executes.
    StringIo,
    /// A ModRM operand that is a register, not memory (cannot be MMIO).
    RegisterOperand,
    /// The bytes are not an instruction that causes this exit.
    Mismatch {
        /// The exit code of the #VC.
        exit_code: u64,
        /// The first opcode byte found.
        opcode: u8,
    },
}

impl fmt::Display for VcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VcError::UnsupportedExit(c) => write!(f, "#VC exit code {c:#x} not handled"),
            VcError::Truncated => f.write_str("#VC instruction bytes truncated"),
            VcError::UnsupportedPrefix(p) => write!(f, "#VC instruction prefix {p:#04x}"),
            VcError::StringIo => f.write_str("#VC for string I/O (INS/OUTS)"),
            VcError::RegisterOperand => f.write_str("#VC MMIO instruction without memory operand"),
            VcError::Mismatch { exit_code, opcode } => {
                write!(f, "#VC exit {exit_code:#x} at opcode {opcode:#04x}")
            }
        }
    }
}

fn byte(bytes: &[u8], at: usize) -> Result<u8, VcError> {
    bytes.get(at).copied().ok_or(VcError::Truncated)
}

/// Expects exactly the two- or three-byte opcode `want` at the start of `bytes`.
fn fixed(
    bytes: &[u8],
    exit: u64,
    want: &[u8],
    request: VcRequest,
) -> Result<VcInstruction, VcError> {
    for (i, &w) in want.iter().enumerate() {
        let b = byte(bytes, i)?;
        if b != w {
            return Err(VcError::Mismatch {
                exit_code: exit,
                opcode: byte(bytes, 0)?,
            });
        }
    }
    Ok(VcInstruction {
        request,
        len: want.len(),
    })
}

fn decode_io(bytes: &[u8]) -> Result<VcInstruction, VcError> {
    let mut at = 0;
    let mut operand_16 = false;
    loop {
        match byte(bytes, at)? {
            PREFIX_OPERAND_SIZE if !operand_16 => {
                operand_16 = true;
                at += 1;
            }
            // Legacy prefixes (lock, rep, segments, address size, a second 0x66) and REX.
            p @ (0x26 | 0x2E | 0x36 | 0x3E | 0x40..=0x4F | 0x64..=0x67 | 0xF0 | 0xF2 | 0xF3) => {
                return Err(VcError::UnsupportedPrefix(p))
            }
            _ => break,
        }
    }
    let opcode = byte(bytes, at)?;
    let wide = if operand_16 {
        IoSize::Word
    } else {
        IoSize::Dword
    };
    let (direction, size, immediate) = match opcode {
        0xE4 => (IoDirection::In, IoSize::Byte, true),
        0xE5 => (IoDirection::In, wide, true),
        0xE6 => (IoDirection::Out, IoSize::Byte, true),
        0xE7 => (IoDirection::Out, wide, true),
        0xEC => (IoDirection::In, IoSize::Byte, false),
        0xED => (IoDirection::In, wide, false),
        0xEE => (IoDirection::Out, IoSize::Byte, false),
        0xEF => (IoDirection::Out, wide, false),
        0x6C..=0x6F => return Err(VcError::StringIo),
        other => {
            return Err(VcError::Mismatch {
                exit_code: exit_code::IOIO,
                opcode: other,
            })
        }
    };
    let (port, len) = if immediate {
        (PortOperand::Imm(byte(bytes, at + 1)?), at + 2)
    } else {
        (PortOperand::Dx, at + 1)
    };
    Ok(VcInstruction {
        request: VcRequest::Io {
            direction,
            size,
            port,
        },
        len,
    })
}

/// Decodes the instruction `bytes` (from RIP; at most [`MAX_INSTRUCTION_BYTES`] are looked
/// at) that raised #VC with error code `exit`.
pub fn decode(exit: u64, bytes: &[u8]) -> Result<VcInstruction, VcError> {
    let bytes = &bytes[..bytes.len().min(MAX_INSTRUCTION_BYTES)];
    match exit {
        exit_code::CPUID => fixed(bytes, exit, &[0x0F, 0xA2], VcRequest::Cpuid),
        exit_code::RDTSC => fixed(bytes, exit, &[0x0F, 0x31], VcRequest::Rdtsc),
        exit_code::RDTSCP => fixed(bytes, exit, &[0x0F, 0x01, 0xF9], VcRequest::Rdtscp),
        exit_code::MSR => match (byte(bytes, 0)?, byte(bytes, 1)?) {
            (0x0F, 0x32) => Ok(VcInstruction {
                request: VcRequest::Rdmsr,
                len: 2,
            }),
            (0x0F, 0x30) => Ok(VcInstruction {
                request: VcRequest::Wrmsr,
                len: 2,
            }),
            (opcode, _) => Err(VcError::Mismatch {
                exit_code: exit,
                opcode,
            }),
        },
        exit_code::IOIO => decode_io(bytes),
        exit_code::NPF => decode_mmio(bytes).map(|(access, len)| VcInstruction {
            request: VcRequest::Mmio(access),
            len,
        }),
        other => Err(VcError::UnsupportedExit(other)),
    }
}

/// A general register operand: 0..=15 are RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Register {
    /// The register (its low `size` bytes are the operand).
    Gpr(u8),
    /// AH, CH, DH or BH: bits 15:8 of RAX, RCX, RDX, RBX (0..=3); 8-bit operands without REX.
    HighByte(u8),
}

/// The memory operand: `base + index * scale + disp`, or `RIP_next + disp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    /// The base register (0..=15), if any.
    pub base: Option<u8>,
    /// The index register (0..=15), if any.
    pub index: Option<u8>,
    /// 1, 2, 4 or 8.
    pub scale: u8,
    /// The displacement.
    pub disp: i32,
    /// RIP-relative: the address is the next instruction's RIP + `disp`.
    pub rip_relative: bool,
}

impl MemOperand {
    /// The effective address, given a register reader and the next instruction's RIP.
    pub fn address(&self, reg: impl Fn(u8) -> u64, next_rip: u64) -> u64 {
        let disp = self.disp as i64 as u64;
        if self.rip_relative {
            return next_rip.wrapping_add(disp);
        }
        let base = self.base.map_or(0, &reg);
        let index = self
            .index
            .map_or(0, |i| reg(i).wrapping_mul(u64::from(self.scale)));
        base.wrapping_add(index).wrapping_add(disp)
    }
}

/// What an MMIO MOV does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioOp {
    /// Load `size` bytes into `dst`, which is `dst_size` bytes wide (MOVZX: wider than `size`,
    /// zero-extended); see [`apply_load`].
    Read {
        /// The destination register.
        dst: Register,
        /// Bytes read.
        size: u8,
        /// Bytes of the destination written.
        dst_size: u8,
    },
    /// Store the low `size` bytes of a register.
    WriteRegister {
        /// The source register.
        src: Register,
        /// Bytes written.
        size: u8,
    },
    /// Store an immediate.
    WriteImmediate {
        /// The value (its low `size` bytes are written).
        value: u64,
        /// Bytes written.
        size: u8,
    },
}

/// An MMIO access: the operation and its memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// The operation.
    pub op: MmioOp,
    /// The memory operand.
    pub mem: MemOperand,
}

/// The new value of a register after a load of `value` into its low `dst_size` bytes:
/// 8- and 16-bit destinations keep the other bits, a 32-bit one zero-extends (long mode), a
/// 64-bit one is replaced. `high_byte` writes bits 15:8 instead (AH..BH).
pub fn apply_load(old: u64, value: u64, dst_size: u8, high_byte: bool) -> u64 {
    if high_byte {
        return (old & !0xFF00) | ((value & 0xFF) << 8);
    }
    match dst_size {
        1 => (old & !0xFF) | (value & 0xFF),
        2 => (old & !0xFFFF) | (value & 0xFFFF),
        4 => value & 0xFFFF_FFFF,
        _ => value,
    }
}

/// The REX prefix bits.
#[derive(Clone, Copy, Default)]
struct Rex {
    present: bool,
    w: bool,
    r: bool,
    x: bool,
    b: bool,
}

/// Decodes ModRM (+ SIB, + displacement) at `at`; returns the reg field (with REX.R), the
/// memory operand and the position after it.
fn modrm(bytes: &[u8], at: usize, rex: Rex) -> Result<(u8, MemOperand, usize), VcError> {
    let m = byte(bytes, at)?;
    let (mode, reg, rm) = (m >> 6, ((m >> 3) & 7) | (u8::from(rex.r) << 3), m & 7);
    if mode == 3 {
        return Err(VcError::RegisterOperand);
    }
    let mut at = at + 1;
    let mut mem = MemOperand {
        base: None,
        index: None,
        scale: 1,
        disp: 0,
        rip_relative: false,
    };
    let mut disp_bytes = match mode {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = byte(bytes, at)?;
        at += 1;
        let index = ((sib >> 3) & 7) | (u8::from(rex.x) << 3);
        if index != 4 {
            mem.index = Some(index);
            mem.scale = 1 << (sib >> 6);
        }
        let base = sib & 7;
        if base == 5 && mode == 0 {
            disp_bytes = 4;
        } else {
            mem.base = Some(base | (u8::from(rex.b) << 3));
        }
    } else if rm == 5 && mode == 0 {
        mem.rip_relative = true;
        disp_bytes = 4;
    } else {
        mem.base = Some(rm | (u8::from(rex.b) << 3));
    }
    mem.disp = match disp_bytes {
        1 => byte(bytes, at)? as i8 as i32,
        4 => i32::from_le_bytes([
            byte(bytes, at)?,
            byte(bytes, at + 1)?,
            byte(bytes, at + 2)?,
            byte(bytes, at + 3)?,
        ]),
        _ => 0,
    };
    Ok((reg, mem, at + disp_bytes))
}

/// The register named by an 8-bit operand's register number.
fn reg8(n: u8, rex: Rex) -> Register {
    if !rex.present && (4..8).contains(&n) {
        Register::HighByte(n - 4)
    } else {
        Register::Gpr(n)
    }
}

/// Decodes an MMIO MOV (see the module documentation); returns it and its length.
fn decode_mmio(bytes: &[u8]) -> Result<(MmioAccess, usize), VcError> {
    let mut at = 0;
    let mut operand_16 = false;
    let mut rex = Rex::default();
    loop {
        let b = byte(bytes, at)?;
        match b {
            PREFIX_OPERAND_SIZE if !operand_16 && !rex.present => operand_16 = true,
            // CS, DS, ES, SS overrides are ignored in 64-bit mode.
            0x26 | 0x2E | 0x36 | 0x3E if !rex.present => {}
            0x40..=0x4F if !rex.present => {
                rex = Rex {
                    present: true,
                    w: b & 8 != 0,
                    r: b & 4 != 0,
                    x: b & 2 != 0,
                    b: b & 1 != 0,
                }
            }
            0x26 | 0x2E | 0x36 | 0x3E | 0x40..=0x4F | 0x64..=0x67 | 0xF0 | 0xF2 | 0xF3 => {
                return Err(VcError::UnsupportedPrefix(b))
            }
            _ => break,
        }
        at += 1;
    }
    let wide: u8 = if rex.w {
        8
    } else if operand_16 {
        2
    } else {
        4
    };
    let opcode = byte(bytes, at)?;
    let mismatch = |opcode| VcError::Mismatch {
        exit_code: exit_code::NPF,
        opcode,
    };
    let (op, len) = match opcode {
        0x88..=0x8B => {
            let (reg, mem, end) = modrm(bytes, at + 1, rex)?;
            let size = if opcode & 1 == 0 { 1 } else { wide };
            let r = if size == 1 {
                reg8(reg, rex)
            } else {
                Register::Gpr(reg)
            };
            let op = if opcode <= 0x89 {
                MmioOp::WriteRegister { src: r, size }
            } else {
                MmioOp::Read {
                    dst: r,
                    size,
                    dst_size: size,
                }
            };
            ((op, mem), end)
        }
        0xC6 | 0xC7 => {
            let (reg, mem, end) = modrm(bytes, at + 1, rex)?;
            if reg & 7 != 0 {
                return Err(mismatch(opcode));
            }
            let (size, imm_bytes) = match (opcode, wide) {
                (0xC6, _) => (1u8, 1usize),
                (_, 2) => (2, 2),
                (_, w) => (w, 4),
            };
            let mut raw = [0u8; 4];
            for (i, slot) in raw.iter_mut().take(imm_bytes).enumerate() {
                *slot = byte(bytes, end + i)?;
            }
            let value = match imm_bytes {
                1 => u64::from(raw[0]),
                2 => u64::from(u16::from_le_bytes([raw[0], raw[1]])),
                // imm32, sign-extended to 64 bits for REX.W.
                _ => i32::from_le_bytes(raw) as i64 as u64,
            };
            (
                (MmioOp::WriteImmediate { value, size }, mem),
                end + imm_bytes,
            )
        }
        0x0F => {
            let second = byte(bytes, at + 1)?;
            let size = match second {
                0xB6 => 1,
                0xB7 => 2,
                _ => return Err(mismatch(opcode)),
            };
            let (reg, mem, end) = modrm(bytes, at + 2, rex)?;
            let op = MmioOp::Read {
                dst: Register::Gpr(reg),
                size,
                dst_size: wide,
            };
            ((op, mem), end)
        }
        other => return Err(mismatch(other)),
    };
    let (op, mem) = op;
    Ok((MmioAccess { op, mem }, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(direction: IoDirection, size: IoSize, port: PortOperand, len: usize) -> VcInstruction {
        VcInstruction {
            request: VcRequest::Io {
                direction,
                size,
                port,
            },
            len,
        }
    }

    #[test]
    fn decodes_the_kernels_instructions() {
        // Trailing bytes (the next instructions) are ignored.
        let cases: [(u64, &[u8], VcInstruction); 6] = [
            (
                0x72,
                &[0x0F, 0xA2, 0x89, 0xC3],
                VcInstruction {
                    request: VcRequest::Cpuid,
                    len: 2,
                },
            ),
            (
                0x7C,
                &[0x0F, 0x32, 0x90],
                VcInstruction {
                    request: VcRequest::Rdmsr,
                    len: 2,
                },
            ),
            (
                0x7C,
                &[0x0F, 0x30],
                VcInstruction {
                    request: VcRequest::Wrmsr,
                    len: 2,
                },
            ),
            (
                0x6E,
                &[0x0F, 0x31],
                VcInstruction {
                    request: VcRequest::Rdtsc,
                    len: 2,
                },
            ),
            (
                0x87,
                &[0x0F, 0x01, 0xF9, 0xC3],
                VcInstruction {
                    request: VcRequest::Rdtscp,
                    len: 3,
                },
            ),
            (
                0x7B,
                &[0xEE, 0xC3],
                io(IoDirection::Out, IoSize::Byte, PortOperand::Dx, 1),
            ),
        ];
        for (exit, bytes, want) in cases {
            assert_eq!(decode(exit, bytes), Ok(want), "{bytes:02x?}");
        }
    }

    #[test]
    fn every_in_out_form() {
        use IoDirection::{In, Out};
        use IoSize::{Byte, Dword, Word};
        use PortOperand::{Dx, Imm};
        let cases: [(&[u8], VcInstruction); 12] = [
            (&[0xE4, 0x21], io(In, Byte, Imm(0x21), 2)),
            (&[0xE5, 0x40], io(In, Dword, Imm(0x40), 2)),
            (&[0x66, 0xE5, 0x40], io(In, Word, Imm(0x40), 3)),
            (&[0xE6, 0xA1], io(Out, Byte, Imm(0xA1), 2)),
            (&[0xE7, 0xF4], io(Out, Dword, Imm(0xF4), 2)),
            (&[0x66, 0xE7, 0xF4], io(Out, Word, Imm(0xF4), 3)),
            (&[0xEC], io(In, Byte, Dx, 1)),
            (&[0xED], io(In, Dword, Dx, 1)),
            (&[0x66, 0xED], io(In, Word, Dx, 2)),
            (&[0xEE], io(Out, Byte, Dx, 1)),
            (&[0xEF], io(Out, Dword, Dx, 1)),
            (&[0x66, 0xEF], io(Out, Word, Dx, 2)),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode(0x7B, bytes), Ok(want), "{bytes:02x?}");
        }
        // 0x66 before a byte form changes nothing but the length.
        assert_eq!(decode(0x7B, &[0x66, 0xEC]), Ok(io(In, Byte, Dx, 2)));
    }

    #[test]
    fn refuses_everything_else() {
        let cases: [(u64, &[u8], VcError); 12] = [
            (0x400, &[0x8B, 0xC7], VcError::RegisterOperand),
            (
                0x8000_0001,
                &[0x0F, 0xA2],
                VcError::UnsupportedExit(0x8000_0001),
            ),
            (0x72, &[0x0F], VcError::Truncated),
            (0x72, &[], VcError::Truncated),
            (0x7B, &[0xE4], VcError::Truncated),
            (0x7B, &[0x66], VcError::Truncated),
            (0x7B, &[0xF3, 0x6E], VcError::UnsupportedPrefix(0xF3)),
            (0x7B, &[0x6E], VcError::StringIo),
            (0x7B, &[0x66, 0x66, 0xEF], VcError::UnsupportedPrefix(0x66)),
            (0x7B, &[0x48, 0xEF], VcError::UnsupportedPrefix(0x48)),
            (
                0x72,
                &[0x0F, 0x32],
                VcError::Mismatch {
                    exit_code: 0x72,
                    opcode: 0x0F,
                },
            ),
            (
                0x7C,
                &[0x0F, 0xA2],
                VcError::Mismatch {
                    exit_code: 0x7C,
                    opcode: 0x0F,
                },
            ),
        ];
        for (exit, bytes, want) in cases {
            assert_eq!(decode(exit, bytes), Err(want), "{exit:#x} {bytes:02x?}");
            assert!(!alloc::format!("{want}").is_empty());
        }
        assert_eq!(
            decode(0x7B, &[0x90]),
            Err(VcError::Mismatch {
                exit_code: 0x7B,
                opcode: 0x90
            })
        );
        // Only the first 15 bytes are looked at: 15 operand-size prefixes is no instruction.
        assert_eq!(
            decode(0x7B, &[0x66; 20]),
            Err(VcError::UnsupportedPrefix(0x66))
        );
    }
}

#[cfg(test)]
mod mmio_tests {
    use super::*;

    fn mmio(bytes: &[u8]) -> Result<(MmioAccess, usize), VcError> {
        decode(0x400, bytes).map(|i| match i.request {
            VcRequest::Mmio(a) => (a, i.len),
            other => panic!("not MMIO: {other:?}"),
        })
    }

    fn base(reg: u8, disp: i32) -> MemOperand {
        MemOperand {
            base: Some(reg),
            index: None,
            scale: 1,
            disp,
            rip_relative: false,
        }
    }

    #[test]
    fn loads_and_stores_the_compiler_emits() {
        // mov eax, [rdi]
        assert_eq!(
            mmio(&[0x8B, 0x07, 0xC3]),
            Ok((
                MmioAccess {
                    op: MmioOp::Read {
                        dst: Register::Gpr(0),
                        size: 4,
                        dst_size: 4
                    },
                    mem: base(7, 0)
                },
                2
            ))
        );
        // mov [rax + 0x14], ecx
        assert_eq!(
            mmio(&[0x89, 0x48, 0x14]),
            Ok((
                MmioAccess {
                    op: MmioOp::WriteRegister {
                        src: Register::Gpr(1),
                        size: 4
                    },
                    mem: base(0, 0x14)
                },
                3
            ))
        );
        // mov r9, [r12 + 0x1000] (REX.WRB, SIB because the base is r12, disp32)
        assert_eq!(
            mmio(&[0x4D, 0x8B, 0x8C, 0x24, 0x00, 0x10, 0x00, 0x00]),
            Ok((
                MmioAccess {
                    op: MmioOp::Read {
                        dst: Register::Gpr(9),
                        size: 8,
                        dst_size: 8
                    },
                    mem: base(12, 0x1000)
                },
                8
            ))
        );
        // mov word [rdx + rsi*2 - 8], ax
        assert_eq!(
            mmio(&[0x66, 0x89, 0x44, 0x72, 0xF8]),
            Ok((
                MmioAccess {
                    op: MmioOp::WriteRegister {
                        src: Register::Gpr(0),
                        size: 2
                    },
                    mem: MemOperand {
                        base: Some(2),
                        index: Some(6),
                        scale: 2,
                        disp: -8,
                        rip_relative: false
                    }
                },
                5
            ))
        );
        // mov byte [rdi], 0x5A and mov dword [rip + 0x100], 1
        assert_eq!(
            mmio(&[0xC6, 0x07, 0x5A]),
            Ok((
                MmioAccess {
                    op: MmioOp::WriteImmediate {
                        value: 0x5A,
                        size: 1
                    },
                    mem: base(7, 0)
                },
                3
            ))
        );
        let (rip_rel, len) =
            mmio(&[0xC7, 0x05, 0x00, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00]).unwrap();
        assert_eq!(len, 10);
        assert!(rip_rel.mem.rip_relative);
        assert_eq!(rip_rel.mem.address(|_| 0, 0x1000), 0x1100);
        // mov qword [rax], -1 (imm32 sign-extended under REX.W)
        assert_eq!(
            mmio(&[0x48, 0xC7, 0x00, 0xFF, 0xFF, 0xFF, 0xFF])
                .unwrap()
                .0
                .op,
            MmioOp::WriteImmediate {
                value: u64::MAX,
                size: 8
            }
        );
        // movzx eax, byte [rcx] / movzx r8d, word [rbx + 2]
        assert_eq!(
            mmio(&[0x0F, 0xB6, 0x01]).unwrap().0.op,
            MmioOp::Read {
                dst: Register::Gpr(0),
                size: 1,
                dst_size: 4
            }
        );
        assert_eq!(
            mmio(&[0x44, 0x0F, 0xB7, 0x43, 0x02]),
            Ok((
                MmioAccess {
                    op: MmioOp::Read {
                        dst: Register::Gpr(8),
                        size: 2,
                        dst_size: 4
                    },
                    mem: base(3, 2)
                },
                5
            ))
        );
        // mov ah, [rsi] (no REX: register 4 is AH) vs mov spl, [rsi] (REX: SPL)
        assert_eq!(
            mmio(&[0x8A, 0x26]).unwrap().0.op,
            MmioOp::Read {
                dst: Register::HighByte(0),
                size: 1,
                dst_size: 1
            }
        );
        assert_eq!(
            mmio(&[0x40, 0x8A, 0x26]).unwrap().0.op,
            MmioOp::Read {
                dst: Register::Gpr(4),
                size: 1,
                dst_size: 1
            }
        );
        // [disp32] without base or index (SIB base 5, mod 0).
        let (abs, len) = mmio(&[0x8B, 0x04, 0x25, 0x30, 0x00, 0xE0, 0xFE]).unwrap();
        assert_eq!(len, 7);
        assert_eq!(abs.mem.address(|_| 0xDEAD, 0), 0xFFFF_FFFF_FEE0_0030);
    }

    #[test]
    fn effective_addresses_and_loads() {
        let mem = MemOperand {
            base: Some(2),
            index: Some(6),
            scale: 4,
            disp: -8,
            rip_relative: false,
        };
        let regs = |r: u8| match r {
            2 => 0xFEB0_0000,
            6 => 3,
            _ => 0,
        };
        assert_eq!(mem.address(regs, 0), 0xFEB0_0004);
        assert_eq!(
            apply_load(0x1122_3344_5566_7788, 0xAB, 1, false),
            0x1122_3344_5566_77AB
        );
        assert_eq!(
            apply_load(0x1122_3344_5566_7788, 0xAB, 1, true),
            0x1122_3344_5566_AB88
        );
        assert_eq!(
            apply_load(0x1122_3344_5566_7788, 0xABCD, 2, false),
            0x1122_3344_5566_ABCD
        );
        assert_eq!(apply_load(0x1122_3344_5566_7788, 0xABCD, 4, false), 0xABCD);
        assert_eq!(apply_load(1, u64::MAX, 8, false), u64::MAX);
    }

    #[test]
    fn refuses_other_forms() {
        let cases: [(&[u8], VcError); 7] = [
            (&[0x8B, 0xC1], VcError::RegisterOperand),
            (&[0x64, 0x8B, 0x07], VcError::UnsupportedPrefix(0x64)),
            (&[0x67, 0x8B, 0x07], VcError::UnsupportedPrefix(0x67)),
            (&[0xF0, 0x89, 0x07], VcError::UnsupportedPrefix(0xF0)),
            (&[0x48, 0x66, 0x8B, 0x07], VcError::UnsupportedPrefix(0x66)),
            (&[0x8B, 0x87, 0x00, 0x10], VcError::Truncated),
            (&[0xC7, 0x47, 0x04, 0x01], VcError::Truncated),
        ];
        for (bytes, want) in cases {
            assert_eq!(mmio(bytes).map(|_| ()), Err(want), "{bytes:02x?}");
        }
        assert_eq!(
            mmio(&[0xC7, 0x4F, 0x04, 0, 0, 0, 0]).map(|_| ()),
            Err(VcError::Mismatch {
                exit_code: 0x400,
                opcode: 0xC7
            })
        );
        assert_eq!(
            mmio(&[0xA1, 0, 0, 0, 0]).map(|_| ()),
            Err(VcError::Mismatch {
                exit_code: 0x400,
                opcode: 0xA1
            })
        );
    }
}
