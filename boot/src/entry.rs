//! The machine entry points: a multiboot2 header, a PVH ELF note, and the 32→64-bit trampoline.
//!
//! Both protocols enter in 32-bit protected mode with paging off (PVH: Xen `arch-x86/
//! hvm/start_info.h`, "start of day" state; multiboot2 spec 3.3, "I386 machine state"), flat
//! CS/DS/ES/SS, interrupts masked, and EBX pointing at the boot information (PVH `start_info`,
//! or the multiboot2 information structure with EAX = 0x36d76289). The trampoline:
//!
//! 1. records the protocol (1 = PVH, 2 = multiboot2) and the information address,
//! 2. zeroes `.bss` (no loader is trusted to), which holds the stack and the early tables,
//! 3. identity-maps the low 4 GiB with 2 MiB pages (PML4 → PDPT → 4 PDs) so the kernel, the
//!    boot information, ACPI tables and the PCI MMIO hole below 4 GiB are reachable,
//! 4. enables PAE, EFER.LME and paging, loads a 64-bit GDT and far-jumps to long mode,
//! 5. enables SSE (the host-triple code generator uses it: DESIGN.md "The kernel build"), and
//! 6. calls `cairn_boot64(info_paddr, protocol)` on the boot stack with RBP = 0, the frame
//!    chain terminator the exception handlers' stack walk stops at.

/// The size of the boot stack in `.bss`; the kernel runs on it for its whole life.
pub const BOOT_STACK_BYTES: usize = 4 * 1024 * 1024;

/// The protocol number the trampoline passes for a PVH entry.
pub const PROTOCOL_PVH: u64 = 1;
/// The protocol number the trampoline passes for a multiboot2 entry.
pub const PROTOCOL_MULTIBOOT2: u64 = 2;
/// The protocol number `cairn_efi_enter_long` passes: the kernel's own UEFI entry, which
/// hands over a multiboot2-form information structure it built from the firmware's tables.
pub const PROTOCOL_UEFI: u64 = 3;

core::arch::global_asm!(
    r#"
    .set MB2_MAGIC, 0xe85250d6
    .set MB2_ARCH_I386, 0
    .set MB2_HEADER_LEN, mb2_header_end - mb2_header_start
    .set MB2_BOOT_MAGIC, 0x36d76289
    .set XEN_ELFNOTE_PHYS32_ENTRY, 18

    /* multiboot2 header (spec 3.1.1): magic, arch, length, checksum, tags, end tag. */
    .section .multiboot2, "a"
    .balign 8
mb2_header_start:
    .long MB2_MAGIC
    .long MB2_ARCH_I386
    .long MB2_HEADER_LEN
    .long 0x100000000 - (MB2_MAGIC + MB2_ARCH_I386 + MB2_HEADER_LEN)
    /* Information request tag (type 1): memory map (6), ACPI old/new RSDP (14, 15),
       EFI memory map (17) are all requested as optional by leaving the flags at 1. */
    .balign 8
    .short 1
    .short 1
    .long 8 + 4 * 4
    .long 6
    .long 14
    .long 15
    .long 17
    /* End tag. */
    .balign 8
    .short 0
    .short 0
    .long 8
mb2_header_end:

    /* PVH entry note (Xen elfnote.h): name "Xen", type 18, a 32-bit physical entry. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .long _start_pvh
    .balign 4

    .section .text.boot, "ax"
    .code32
    .global _start_pvh
_start_pvh:
    cli
    cld
    mov %ebx, %ebp
    mov $1, %esi
    jmp start32_common

    .global _start_mb2
_start_mb2:
    cli
    cld
    cmp $MB2_BOOT_MAGIC, %eax
    jne halt32
    mov %ebx, %ebp
    mov $2, %esi

start32_common:
    /* Zero .bss: EBP (information address) and ESI (protocol) hold the boot arguments
       until the call below; EAX/EBX/ECX/EDX/EDI are scratch (CPUID and RDMSR clobber them). */
    mov $__cairn_bss_start, %edi
    mov $__cairn_bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    mov $cairn_boot_stack_top, %esp

    /* Long mode present? (CPUID 0x80000001 EDX bit 29) */
    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb halt32
    mov $0x80000001, %eax
    cpuid
    bt $29, %edx
    jnc halt32

    /* PML4[0] -> PDPT; PDPT[0..4] -> PD0..PD3; PDn[i] = 2 MiB page. */
    mov $cairn_boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, cairn_boot_pml4
    mov $cairn_boot_pd, %eax
    or $0x3, %eax
    mov %eax, cairn_boot_pdpt
    add $0x1000, %eax
    mov %eax, cairn_boot_pdpt + 8
    add $0x1000, %eax
    mov %eax, cairn_boot_pdpt + 16
    add $0x1000, %eax
    mov %eax, cairn_boot_pdpt + 24
    xor %ecx, %ecx
1:
    mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, cairn_boot_pd(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 1b

    mov $cairn_boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $(1 << 5), %eax
    mov %eax, %cr4
    mov $0xC0000080, %ecx
    rdmsr
    or $(1 << 8), %eax
    wrmsr
    mov %cr0, %eax
    or $((1 << 31) | 1), %eax
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $start64

halt32:
    hlt
    jmp halt32

    .code64
start64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $cairn_boot_stack_top, %rsp

    /* SSE: CR0.EM = 0, CR0.MP = 1; CR4.OSFXSR | CR4.OSXMMEXCPT. */
    mov %cr0, %rax
    and $~(1 << 2), %rax
    or $(1 << 1), %rax
    mov %rax, %cr0
    mov %cr4, %rax
    or $(3 << 9), %rax
    mov %rax, %cr4

    mov %ebp, %edi
    xor %ebp, %ebp
    call cairn_boot64
2:
    cli
    hlt
    jmp 2b

    /* UEFI application entry (the PE32+ AddressOfEntryPoint): the firmware calls it with
       the Microsoft x64 convention, RCX = image handle, RDX = system table. The kernel's
       `cairn_efi_main` (efiapi) does the boot-services work. */
    .global cairn_efi_entry
cairn_efi_entry:
    jmp cairn_efi_main

    /* Called by `cairn_efi_main` after ExitBootServices, in long mode on the firmware's page
       tables and GDT, with RDI = the multiboot2-form information it built and RSI = the
       SEV C-bit mask (1 << C-bit position under SEV-SNP, else 0; AMD APM vol. 2 §15.34.5:
       a guest page is private, encrypted with the guest's key, when its PTE has the C-bit).
       The firmware zeroed .bss when it loaded the image, and the information lives in .bss,
       so .bss is not cleared here. Builds the same identity map as the 32-bit path with the
       mask ORed into every entry (all of it private: the kernel, its stack and the tables
       themselves are encrypted memory under SNP; the kernel remaps MMIO without the C-bit in
       `paging::init`), loads the boot GDT and reloads every segment register, switches to
       the boot stack and calls `cairn_boot64(info, 3)`. */
    .global cairn_efi_enter_long
cairn_efi_enter_long:
    cli
    cld
    mov %rdi, %rbp
    mov %rsi, %r12
    mov $cairn_boot_pdpt, %eax
    or $0x3, %eax
    or %r12, %rax
    mov %rax, cairn_boot_pml4
    mov $cairn_boot_pd, %eax
    or $0x3, %eax
    or %r12, %rax
    mov %rax, cairn_boot_pdpt
    add $0x1000, %rax
    mov %rax, cairn_boot_pdpt + 8
    add $0x1000, %rax
    mov %rax, cairn_boot_pdpt + 16
    add $0x1000, %rax
    mov %rax, cairn_boot_pdpt + 24
    xor %ecx, %ecx
3:
    mov %rcx, %rax
    shl $21, %rax
    or $0x83, %rax
    or %r12, %rax
    mov %rax, cairn_boot_pd(,%rcx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 3b
    mov $cairn_boot_pml4, %eax
    or %r12, %rax
    mov %rax, %cr3
    lgdt boot_gdt_ptr64
    mov $cairn_boot_stack_top, %esp
    pushq $0x08
    lea 4f(%rip), %rax
    pushq %rax
    lretq
4:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov %cr0, %rax
    and $~(1 << 2), %rax
    or $(1 << 1), %rax
    mov %rax, %cr0
    mov %cr4, %rax
    or $(3 << 9), %rax
    mov %rax, %cr4
    mov %rbp, %rdi
    mov $3, %esi
    xor %ebp, %ebp
    call cairn_boot64
5:
    cli
    hlt
    jmp 5b

    .section .rodata.boot_gdt, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_end:
    .balign 4
    .short 0
boot_gdt_ptr:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt
    /* The same GDT as `lgdt` reads it in long mode: a 64-bit base. */
    .balign 8
    .short 0, 0, 0
boot_gdt_ptr64:
    .short boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .bss.boot_page_tables, "aw", @nobits
    .balign 4096
    .global cairn_boot_pml4
cairn_boot_pml4:
    .skip 4096
cairn_boot_pdpt:
    .skip 4096
cairn_boot_pd:
    .skip 4096 * 4

    .section .bss.boot_stack, "aw", @nobits
    .balign 4096
    .global cairn_boot_stack_bottom
cairn_boot_stack_bottom:
    .skip {stack_bytes}
    .global cairn_boot_stack_top
cairn_boot_stack_top:

    .text
    "#,
    stack_bytes = const BOOT_STACK_BYTES,
    options(att_syntax)
);
