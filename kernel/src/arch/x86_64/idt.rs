//! The IDT and the exception handlers (Intel SDM vol. 3A §6.10-6.15).
//!
//! Each of the 32 architectural vectors has an assembly stub that pushes a zero error code
//! when the CPU does not, pushes the vector, saves all general registers and the SSE state
//! (FXSAVE: the handler is Rust code that may use XMM registers, and a resumed context must
//! find its own), and calls [`cairn_exception_dispatch`] with the [`TrapFrame`].
//!
//! Policy:
//! - #BP (vector 3) is counted, logged and resumed after the INT3.
//! - A fault raised inside a registered *probe* (see [`probe_read_u8`]) resumes at the probe's
//!   fixup address with the fault recorded: the in-kernel tests use this to prove the page
//!   fault handler works and still continue.
//! - Anything else is fatal: vector, name, error code, RIP, CR2, registers and a stack walk
//!   are printed, then the machine reports failure (isa-debug-exit 0x11) and stops.
//!
//! Interrupts stay masked (the runtime polls) except while idling in `apic::idle`, where the
//! local APIC timer (vector 0x30) wakes the CPU; it and the spurious vector (0xff) have tiny
//! stubs. Other vectors have no gates: a stray one arrives as #GP with the vector in the error
//! code.

use super::gdt::{
    self, IST_DOUBLE_FAULT, IST_EXCEPTION, IST_NMI_MCE, IST_VC, KERNEL_CODE_SELECTOR,
};
use super::{cpu, power, serial};
use core::arch::{asm, global_asm};
use core::mem::size_of;
use core::sync::atomic::{AtomicU64, Ordering};

const EXCEPTION_VECTORS: usize = 32;
const VECTOR_NMI: u64 = 2;
const VECTOR_BREAKPOINT: u64 = 3;
const VECTOR_DOUBLE_FAULT: u64 = 8;
const VECTOR_GENERAL_PROTECTION: u64 = 13;
const VECTOR_PAGE_FAULT: u64 = 14;
const VECTOR_MACHINE_CHECK: u64 = 18;
/// #VC, the VMM communication exception (SEV-ES/SNP; error code = the SVM exit code).
const VECTOR_VC: u64 = 29;
/// The most frames the stack walk prints.
const STACK_WALK_FRAMES_MAX: usize = 16;
/// How many stack slots the fallback scan inspects for return addresses.
const STACK_SCAN_SLOTS_MAX: usize = 256;

/// The saved state of an interrupted context, as the stubs lay it out.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    // Pushed by the CPU.
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}
const _: () = assert!(size_of::<TrapFrame>() == 22 * 8);

global_asm!(
    r#"
    .macro CAIRN_ISR vector, has_error
    .balign 16
cairn_isr_\vector:
    .if \has_error == 0
    pushq $0
    .endif
    pushq $\vector
    jmp cairn_isr_common
    .endm

    .section .text.cairn_isr, "ax"
    CAIRN_ISR 0, 0
    CAIRN_ISR 1, 0
    CAIRN_ISR 2, 0
    CAIRN_ISR 3, 0
    CAIRN_ISR 4, 0
    CAIRN_ISR 5, 0
    CAIRN_ISR 6, 0
    CAIRN_ISR 7, 0
    CAIRN_ISR 8, 1
    CAIRN_ISR 9, 0
    CAIRN_ISR 10, 1
    CAIRN_ISR 11, 1
    CAIRN_ISR 12, 1
    CAIRN_ISR 13, 1
    CAIRN_ISR 14, 1
    CAIRN_ISR 15, 0
    CAIRN_ISR 16, 0
    CAIRN_ISR 17, 1
    CAIRN_ISR 18, 0
    CAIRN_ISR 19, 0
    CAIRN_ISR 20, 0
    CAIRN_ISR 21, 1
    CAIRN_ISR 22, 0
    CAIRN_ISR 23, 0
    CAIRN_ISR 24, 0
    CAIRN_ISR 25, 0
    CAIRN_ISR 26, 0
    CAIRN_ISR 27, 0
    CAIRN_ISR 28, 0
    CAIRN_ISR 29, 1
    CAIRN_ISR 30, 1
    CAIRN_ISR 31, 0
    /* The local APIC timer through the full path, used under SEV-ES/SNP where the EOI
       must go through the GHCB (Rust code) instead of a plain MMIO store or WRMSR. */
    .global cairn_isr_48
    CAIRN_ISR 48, 0

cairn_isr_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    /* 22 quadwords pushed on a 16-byte aligned IST stack: RSP is aligned for FXSAVE. */
    sub $512, %rsp
    fxsave (%rsp)
    cld
    call cairn_exception_dispatch
    fxrstor (%rsp)
    add $512, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp
    iretq

    /* Local APIC timer: count, acknowledge (EOI by MMIO, or MSR 0x80b in x2APIC mode), return.
       Interrupts are only unmasked inside `apic::idle`, so nothing else is interrupted. */
    .balign 16
    .global cairn_irq_timer
cairn_irq_timer:
    push %rax
    push %rcx
    push %rdx
    lock incq CAIRN_TIMER_TICKS(%rip)
    mov CAIRN_LAPIC_EOI_ADDR(%rip), %rax
    test %rax, %rax
    jz 1f
    movl $0, (%rax)
    jmp 2f
1:
    mov $0x80b, %ecx
    xor %eax, %eax
    xor %edx, %edx
    wrmsr
2:
    pop %rdx
    pop %rcx
    pop %rax
    iretq

    /* Spurious APIC interrupts need no EOI. */
    .balign 16
    .global cairn_irq_spurious
cairn_irq_spurious:
    iretq

    .section .rodata.cairn_isr_table, "a"
    .balign 8
    .global cairn_isr_table
cairn_isr_table:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad cairn_isr_\v
    .endr
    .text
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    static cairn_isr_table: [u64; EXCEPTION_VECTORS];
    fn cairn_isr_48();
    fn cairn_irq_timer();
    fn cairn_irq_spurious();
}

/// Gates in the IDT: all 256 vectors (unused ones not present).
const IDT_VECTORS: usize = 256;

/// An IDT gate descriptor (SDM vol. 3A figure 6-8).
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}
const _: () = assert!(size_of::<Gate>() == 16);

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    fn interrupt_gate(handler: u64, ist: u8) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: KERNEL_CODE_SELECTOR,
            ist,
            type_attr: 0x8e, // present, DPL 0, 64-bit interrupt gate (IF cleared on entry)
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; IDT_VECTORS]);

static mut IDT: Idt = Idt([Gate::MISSING; IDT_VECTORS]);

#[repr(C, packed(2))]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// How many #BP exceptions were taken (and resumed).
static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);
/// The resume address of the active probe, or 0.
static PROBE_FIXUP_RIP: AtomicU64 = AtomicU64::new(0);
/// The vector, error code and CR2 of the last fault a probe absorbed.
static PROBE_FAULT_VECTOR: AtomicU64 = AtomicU64::new(0);
static PROBE_FAULT_ERROR: AtomicU64 = AtomicU64::new(0);
static PROBE_FAULT_CR2: AtomicU64 = AtomicU64::new(0);

/// Fills and loads the IDT.
pub fn init() {
    // SAFETY: single CPU, interrupts masked, called once after the GDT/TSS are loaded.
    unsafe {
        let idt = &raw mut IDT;
        let table = &raw const cairn_isr_table;
        for vector in 0..EXCEPTION_VECTORS {
            let ist = match vector as u64 {
                VECTOR_DOUBLE_FAULT => IST_DOUBLE_FAULT,
                VECTOR_NMI | VECTOR_MACHINE_CHECK => IST_NMI_MCE,
                VECTOR_VC => IST_VC,
                _ => IST_EXCEPTION,
            };
            (*idt).0[vector] = Gate::interrupt_gate((*table)[vector], ist);
        }
        let timer = usize::from(super::apic::TIMER_VECTOR);
        let spurious = usize::from(super::apic::SPURIOUS_VECTOR);
        let timer_stub = if super::sev::es_active() {
            cairn_isr_48 as *const () as u64
        } else {
            cairn_irq_timer as *const () as u64
        };
        (*idt).0[timer] = Gate::interrupt_gate(timer_stub, IST_EXCEPTION);
        (*idt).0[spurious] =
            Gate::interrupt_gate(cairn_irq_spurious as *const () as u64, IST_EXCEPTION);
        let ptr = DescriptorPointer {
            limit: (size_of::<Idt>() - 1) as u16,
            base: idt as u64,
        };
        asm!("lidt [{}]", in(reg) &raw const ptr, options(nostack, preserves_flags));
    }
}

/// How many breakpoints have been taken and resumed.
pub fn breakpoint_count() -> u64 {
    BREAKPOINTS.load(Ordering::SeqCst)
}

/// A fault absorbed by a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeFault {
    pub vector: u64,
    pub error_code: u64,
    /// The faulting address (CR2) for a page fault.
    pub address: u64,
}

/// Reads the byte at `vaddr`, returning the fault instead of stopping the kernel when the
/// read faults (#PF, or #GP for a non-canonical address).
pub fn probe_read_u8(vaddr: u64) -> Result<u8, ProbeFault> {
    let value: u64;
    let faulted: u64;
    // SAFETY: the read may fault; the handler then resumes at label 3 (the registered fixup)
    // with every register restored, so the asm block's contract holds on both paths. The
    // fixup slot is cleared on both paths before the block ends.
    unsafe {
        asm!(
            "lea {tmp}, [rip + 3f]",
            "mov qword ptr [{fix}], {tmp}",
            "xor {val:e}, {val:e}",
            "xor {flag:e}, {flag:e}",
            "movzx {val:e}, byte ptr [{addr}]",
            "jmp 4f",
            "3:",
            "mov {flag:e}, 1",
            "4:",
            "mov qword ptr [{fix}], 0",
            fix = in(reg) PROBE_FIXUP_RIP.as_ptr(),
            addr = in(reg) vaddr,
            tmp = out(reg) _,
            val = out(reg) value,
            flag = out(reg) faulted,
            options(nostack),
        );
    }
    if faulted == 0 {
        return Ok(value as u8);
    }
    Err(ProbeFault {
        vector: PROBE_FAULT_VECTOR.load(Ordering::SeqCst),
        error_code: PROBE_FAULT_ERROR.load(Ordering::SeqCst),
        address: PROBE_FAULT_CR2.load(Ordering::SeqCst),
    })
}

fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; EXCEPTION_VECTORS] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "coprocessor segment overrun",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack-segment fault",
        "#GP general protection",
        "#PF page fault",
        "reserved",
        "#MF x87 floating-point",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD floating-point",
        "#VE virtualization",
        "#CP control protection",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "#HV hypervisor injection",
        "#VC VMM communication",
        "#SX security",
        "reserved",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("unknown")
}

/// Called by the stubs with interrupts masked, on an IST stack.
#[unsafe(no_mangle)]
extern "C" fn cairn_exception_dispatch(frame: &mut TrapFrame) {
    if frame.vector == VECTOR_BREAKPOINT {
        BREAKPOINTS.fetch_add(1, Ordering::SeqCst);
        serial::emergency_write(format_args!(
            "breakpoint at rip={:#x}, resuming\n",
            frame.rip
        ));
        return;
    }
    if frame.vector == VECTOR_VC {
        match super::sev::handle_vc(frame) {
            Ok(()) => return,
            Err(e) => serial::emergency_write(format_args!(
                "\n#VC not handled: exit code {:#x}: {e}\n",
                frame.error_code
            )),
        }
    }
    if frame.vector == u64::from(super::apic::TIMER_VECTOR) {
        super::apic::timer_tick();
        return;
    }
    let fixup = PROBE_FIXUP_RIP.load(Ordering::SeqCst);
    let probed = matches!(frame.vector, VECTOR_PAGE_FAULT | VECTOR_GENERAL_PROTECTION);
    if fixup != 0 && probed {
        let cr2 = if frame.vector == VECTOR_PAGE_FAULT {
            cpu::read_cr2()
        } else {
            0
        };
        PROBE_FAULT_VECTOR.store(frame.vector, Ordering::SeqCst);
        PROBE_FAULT_ERROR.store(frame.error_code, Ordering::SeqCst);
        PROBE_FAULT_CR2.store(cr2, Ordering::SeqCst);
        PROBE_FIXUP_RIP.store(0, Ordering::SeqCst);
        frame.rip = fixup;
        return;
    }
    report_fatal(frame);
    power::fail_and_halt();
}

fn report_fatal(f: &TrapFrame) {
    let w = serial::emergency_write;
    w(format_args!(
        "\nFATAL EXCEPTION: vector {} ({}) error_code={:#x}\n",
        f.vector,
        exception_name(f.vector),
        f.error_code
    ));
    w(format_args!(
        "  rip={:#018x} cs={:#x} rflags={:#x} rsp={:#018x} ss={:#x}\n",
        f.rip, f.cs, f.rflags, f.rsp, f.ss
    ));
    w(format_args!(
        "  cr2={:#018x} cr3={:#018x}\n",
        cpu::read_cr2(),
        cpu::read_cr3()
    ));
    w(format_args!(
        "  rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}\n",
        f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp
    ));
    w(format_args!(
        "  r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}\n",
        f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15
    ));
    stack_walk(f.rip, f.rbp, f.rsp);
}

/// Prints a best-effort backtrace. The kernel is built without forced frame pointers (build
/// flags may not be set from build.rs), so the RBP chain is followed only while it stays
/// inside a known stack; when it yields little, the stack is scanned for values that point
/// into kernel text (candidate return addresses, possibly stale).
pub fn stack_walk(rip: u64, rbp: u64, rsp: u64) {
    let w = serial::emergency_write;
    w(format_args!(
        "  stack walk (rbp chain, best effort):\n    #0 {rip:#018x}\n"
    ));
    let mut frames = 1;
    let mut fp = rbp;
    while frames < STACK_WALK_FRAMES_MAX && fp.is_multiple_of(8) && on_known_stack(fp, 16) {
        // SAFETY: `fp..fp + 16` lies inside a mapped kernel stack (checked above).
        let (next, ret) = unsafe { (*(fp as *const u64), *((fp + 8) as *const u64)) };
        if !in_kernel_text(ret) {
            break;
        }
        w(format_args!("    #{frames} {ret:#018x}\n"));
        frames += 1;
        if next <= fp {
            break;
        }
        fp = next;
    }
    if frames > 2 || !on_known_stack(rsp, 8) {
        return;
    }
    w(format_args!(
        "  stack scan from rsp (text addresses, may be stale):\n"
    ));
    let mut shown = 0;
    for slot in 0..STACK_SCAN_SLOTS_MAX as u64 {
        let at = rsp + slot * 8;
        if !on_known_stack(at, 8) || shown == STACK_WALK_FRAMES_MAX {
            break;
        }
        // SAFETY: `at` lies inside a mapped kernel stack (checked above).
        let value = unsafe { *(at as *const u64) };
        if in_kernel_text(value) {
            w(format_args!("    [rsp+{:#x}] {value:#018x}\n", slot * 8));
            shown += 1;
        }
    }
}

fn on_known_stack(addr: u64, len: u64) -> bool {
    let (lo, hi) = super::memory::boot_stack_range();
    let inside = |(lo, hi): (u64, u64)| addr >= lo && addr.saturating_add(len) <= hi;
    inside((lo, hi))
        || [IST_EXCEPTION, IST_DOUBLE_FAULT, IST_NMI_MCE, IST_VC]
            .into_iter()
            .any(|slot| inside(gdt::ist_stack_range(slot)))
}

fn in_kernel_text(addr: u64) -> bool {
    let (lo, hi) = super::memory::kernel_text_range();
    addr >= lo && addr < hi
}
