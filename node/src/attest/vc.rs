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
//! REP and any other prefix, and exits such as NPF (MMIO by an arbitrary MOV) are refused.

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
        other => Err(VcError::UnsupportedExit(other)),
    }
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
            (0x400, &[0x8B, 0x07], VcError::UnsupportedExit(0x400)),
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
