//! The cairn kernel: brings the machine up and (in later issues) runs the node's runtime loop.
//!
//! Boot order, and why:
//! 1. serial + logger: everything after can report;
//! 2. boot information, parsed and copied out of loader memory (`boot::parse`);
//! 3. GDT/TSS/IDT: faults from here on are reported, not triple faults;
//! 4. page tables from the memory map, then the heap over all free RAM;
//! 5. clock (TSC against the PIT), entropy health check, ACPI tables;
//! 6. banner, `cairn: ready`, then idle (or tests, or power-off with `cairn.exit=1`).
//!
//! Kernel command line options:
//! - `cairn.exit=1`: after `cairn: ready`, exit QEMU through isa-debug-exit with success
//!   (status 33), falling back to ACPI S5; used by boot tests and benches.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

// The arch layer offers its whole API (probes, 4 KiB mappings, entropy fill) to the tests
// and the runtime; the normal build does not call all of it yet.
#[cfg_attr(
    not(feature = "kernel-tests"),
    allow(dead_code, reason = "API used by the kernel-tests build and later issues")
)]
mod arch;
mod heap;
mod logger;
mod panic;
#[cfg(feature = "kernel-tests")]
mod tests;

use alloc::string::String;
use arch::{acpi, clock, cpu, entropy, memory, paging, power, serial};
use boot::{BootInfo, MemoryKind};
use core::fmt::Write;
use spin::Once;

/// The kernel version printed in the banner.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The line that marks boot complete (HELPERS.md; host tests wait for it).
pub const READY_LINE: &str = "cairn: ready";
const MIB: u64 = 1024 * 1024;

static BOOT_INFO: Once<BootInfo> = Once::new();

/// Called by `boot::entry` in long mode on the boot stack.
#[unsafe(no_mangle)]
extern "C" fn cairn_boot64(info_paddr: u64, protocol: u64) -> ! {
    clock::mark_entry();
    serial::init();
    logger::init();
    serial::write_str("\n");
    let info = match boot::parse(protocol, info_paddr, &memory::EarlyIdentityMemory) {
        Ok(info) => BOOT_INFO.call_once(|| info),
        Err(e) => panic!("boot information: {e}"),
    };
    arch::init_cpu();
    let mapped = match paging::init(info) {
        Ok(m) => m,
        Err(e) => panic!("page tables: {e}"),
    };
    let heap = heap::init(info);
    if heap.bytes == 0 {
        panic!("no usable RAM for the heap");
    }
    let (tsc_hz, clock_source) = match clock::init() {
        Ok(c) => c,
        Err(e) => panic!("clock: {e}"),
    };
    print_banner(info, &mapped, &heap, tsc_hz, clock_source);
    serial::write_fmt(format_args!(
        "boot: ready in {} us after kernel entry\n",
        clock::ns_since_entry() / 1_000
    ));
    serial::write_fmt(format_args!("{READY_LINE}\n"));
    after_ready(info)
}

/// Normal build: idle (later issues run the node here), or leave with `cairn.exit=1`.
/// Test build: run the in-kernel tests and leave with their verdict.
fn after_ready(info: &BootInfo) -> ! {
    #[cfg(feature = "kernel-tests")]
    if !tests::run_all() {
        power::fail_and_halt();
    }
    let leave = cfg!(feature = "kernel-tests") || info.option("cairn.exit") == Some("1");
    if leave {
        log::info!("exiting: isa-debug-exit success, else ACPI S5");
        power::qemu_exit(power::EXIT_SUCCESS);
        power::power_off();
    }
    cpu::halt_forever()
}

fn print_banner(
    info: &BootInfo,
    mapped: &paging::MapSummary,
    heap: &heap::HeapSummary,
    tsc_hz: u64,
    source: clock::ClockSource,
) {
    let out = serial::write_fmt;
    out(format_args!("cairn {VERSION}\n"));
    out(format_args!(
        "boot: {:?} protocol, cmdline \"{}\"\n",
        info.protocol,
        info.cmdline()
    ));
    print_memory_map(info);
    out(format_args!(
        "paging: identity map {} MiB ({} table frames), stack guard page\n",
        mapped.identity_bytes / MIB,
        mapped.table_frames
    ));
    out(format_args!("cpu: {}\n", cpu::model()));
    out(format_args!("cpu features: {}\n", cpu::feature_list()));
    out(format_args!(
        "heap: {} MiB in {} spans ({} MiB free)\n",
        heap.bytes / MIB,
        heap.spans,
        heap::free_bytes() as u64 / MIB
    ));
    let cpuid_hz = cpu::features().tsc_hz_cpuid;
    out(format_args!(
        "clock: tsc {}.{:06} MHz ({:?}; cpuid 0x15: {})\n",
        tsc_hz / 1_000_000,
        tsc_hz % 1_000_000,
        source,
        cpuid_hz.map_or(String::from("none"), |hz| alloc::format!("{hz} Hz"))
    ));
    print_entropy();
    print_acpi(info);
    out(format_args!(
        "node: anonymous principal {}\n",
        node::types::Principal::ANONYMOUS
    ));
}

fn print_memory_map(info: &BootInfo) {
    let map = info.memory_map();
    let top = map.iter().map(|r| r.end()).max().unwrap_or(0);
    serial::write_fmt(format_args!(
        "memory: {} regions, {} MiB usable, top of memory {:#x}{}\n",
        map.len(),
        info.usable_bytes() / MIB,
        top,
        if info.regions_dropped > 0 {
            " (regions dropped!)"
        } else {
            ""
        }
    ));
    for r in map {
        let kind = match r.kind {
            MemoryKind::Usable => "usable",
            MemoryKind::AcpiReclaimable => "acpi-reclaimable",
            MemoryKind::AcpiNvs => "acpi-nvs",
            MemoryKind::Bad => "bad",
            MemoryKind::Reserved => "reserved",
        };
        serial::write_fmt(format_args!(
            "  [{:#012x}-{:#012x}) {kind}\n",
            r.base,
            r.end()
        ));
    }
    for m in info.modules() {
        serial::write_fmt(format_args!(
            "  module {:#x} {} bytes \"{}\"\n",
            m.paddr,
            m.len,
            m.cmdline()
        ));
    }
}

fn print_entropy() {
    let (rdrand, rdseed) = entropy::init();
    let text = |r: Result<(), entropy::EntropyError>| match r {
        Ok(()) => String::from("ok"),
        Err(e) => alloc::format!("unavailable ({e})"),
    };
    serial::write_fmt(format_args!(
        "entropy: rdrand {}, rdseed {}\n",
        text(rdrand),
        text(rdseed)
    ));
}

fn print_acpi(info: &BootInfo) {
    match acpi::init(info.rsdp) {
        Ok(a) => {
            let mut sigs = String::new();
            for (_, _, sig) in &a.tables {
                let _ = write!(sigs, " {}", core::str::from_utf8(sig).unwrap_or("?"));
            }
            serial::write_fmt(format_args!(
                "acpi: revision {} oem {} tables{}; S5 {}; ECAM windows {}\n",
                a.revision,
                core::str::from_utf8(&a.oem_id).unwrap_or("?"),
                sigs,
                a.s5()
                    .map_or(String::from("not found"), |(x, y)| alloc::format!(
                        "{x}/{y}"
                    )),
                a.ecam_windows().len()
            ));
        }
        Err(e) => serial::write_fmt(format_args!("acpi: unavailable ({e})\n")),
    }
}
