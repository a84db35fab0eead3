//! The GDT and TSS (Intel SDM vol. 3A §3.4.5, §7.7): flat 64-bit code and data segments, and a
//! TSS whose Interrupt Stack Table gives every exception a known-good stack.
//!
//! Why every gate uses an IST stack: the kernel is built for the host triple, whose code uses
//! the 128-byte red zone below RSP; an exception taken on the same stack would overwrite it
//! (DESIGN.md "The kernel build"). With IST the CPU always switches stacks.
//!
//! | selector | descriptor |
//! |---|---|
//! | 0x00 | null |
//! | 0x08 | kernel code, 64-bit (L=1) |
//! | 0x10 | kernel data |
//! | 0x18 | TSS (16 bytes, two slots) |

use core::arch::asm;
use core::mem::size_of;

pub const KERNEL_CODE_SELECTOR: u16 = 0x08;
pub const KERNEL_DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

/// IST slot (1-based, as in the IDT gate) for ordinary exceptions.
pub const IST_EXCEPTION: u8 = 1;
/// IST slot for #DF, so a fault on the exception stack still reports.
pub const IST_DOUBLE_FAULT: u8 = 2;
/// IST slot for NMI and #MC, which can arrive at any instruction.
pub const IST_NMI_MCE: u8 = 3;
/// IST slot for #VC (SEV-ES/SNP), which any CPUID can raise, also inside another
/// exception's handler on [`IST_EXCEPTION`].
pub const IST_VC: u8 = 4;
/// The size of each IST stack.
pub const IST_STACK_BYTES: usize = 64 * 1024;
const IST_STACKS: usize = 4;

/// The 64-bit TSS (SDM vol. 3A figure 7-11).
#[repr(C, packed(4))]
struct TaskStateSegment {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}
const _: () = assert!(size_of::<TaskStateSegment>() == 104);

#[repr(C, align(16))]
struct IstStacks([[u8; IST_STACK_BYTES]; IST_STACKS]);

static mut IST_STACK_MEMORY: IstStacks = IstStacks([[0; IST_STACK_BYTES]; IST_STACKS]);

static mut TSS: TaskStateSegment = TaskStateSegment {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    // No I/O permission bitmap: the base points past the segment limit.
    iomap_base: size_of::<TaskStateSegment>() as u16,
};

static mut GDT: [u64; 5] = [
    0,
    0x00af_9a00_0000_ffff, // code: present, DPL 0, executable, readable, L=1, G=1
    0x00cf_9200_0000_ffff, // data: present, DPL 0, writable, D/B=1, G=1
    0,
    0,
];

#[repr(C, packed(2))]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// The address range `[start, end)` of IST stack `slot` (1-based).
pub fn ist_stack_range(slot: u8) -> (u64, u64) {
    let i = usize::from(slot.clamp(1, IST_STACKS as u8) - 1);
    let base = (&raw const IST_STACK_MEMORY) as u64 + (i * IST_STACK_BYTES) as u64;
    (base, base + IST_STACK_BYTES as u64)
}

/// Builds the TSS and GDT, loads them, reloads the segment registers and the task register.
pub fn init() {
    let tss_base = (&raw const TSS) as u64;
    let tss_limit = (size_of::<TaskStateSegment>() - 1) as u64;
    // SAFETY: single CPU, interrupts masked, called once at boot before anything reads them.
    unsafe {
        let tss = &raw mut TSS;
        for slot in 1..=IST_STACKS as u8 {
            // Stacks grow down; the CPU aligns the frame to 16 bytes itself.
            (*tss).ist[usize::from(slot) - 1] = ist_stack_range(slot).1;
        }
        let gdt = &raw mut GDT;
        // Available 64-bit TSS (type 9), present, base and limit split per SDM figure 7-4.
        (*gdt)[3] = (tss_limit & 0xffff)
            | ((tss_base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((tss_limit >> 16) & 0xf) << 48)
            | (((tss_base >> 24) & 0xff) << 56);
        (*gdt)[4] = tss_base >> 32;
        let ptr = DescriptorPointer {
            limit: (size_of::<[u64; 5]>() - 1) as u16,
            base: gdt as u64,
        };
        asm!(
            "lgdt [{ptr}]",
            "push {code}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {data:x}",
            "mov es, {data:x}",
            "mov ss, {data:x}",
            "mov fs, {data:x}",
            "mov gs, {data:x}",
            "ltr {tss:x}",
            ptr = in(reg) &raw const ptr,
            code = const KERNEL_CODE_SELECTOR as u64,
            data = in(reg) u64::from(KERNEL_DATA_SELECTOR),
            tss = in(reg) u64::from(TSS_SELECTOR),
            tmp = out(reg) _,
        );
    }
}
