//! The cairn kernel: brings the machine up and (in later issues) runs the node's runtime loop.
//!
//! Boot order, and why:
//! 1. serial + logger: everything after can report;
//! 2. boot information, parsed and copied out of loader memory (`boot::parse`);
//! 3. GDT/TSS/IDT: faults from here on are reported, not triple faults;
//! 4. page tables from the memory map, then the heap over all free RAM;
//! 5. clock (TSC against the PIT), entropy health check, ACPI tables;
//! 6. PCI and the virtio devices; smoltcp on virtio-net (static or DHCPv4);
//! 7. banner lines, `cairn: ready`, then serve the network (idling on the APIC timer when
//!    quiet) or halt without a NIC; or run the tests; or power off with `cairn.exit=1`.
//!
//! A boot module holding a node configuration (`-initrd node-<i>.cfg`, see `runtime`) makes
//! the kernel address the NIC from it and run the node after `cairn: ready`.
//!
//! Kernel command line options:
//! - `cairn.exit=1`: after `cairn: ready`, exit QEMU through isa-debug-exit with success
//!   (status 33), falling back to ACPI S5; used by boot tests and benches.
//! - `cairn.ip=a.b.c.d/len`, `cairn.gw=a.b.c.d`, `cairn.ip6=x::y/len`: static addressing of
//!   the virtio-net interface (DHCPv4 when `cairn.ip` is absent).
//! - `cairn.net-check=<ip>[:port][,…]` (and `cairn.net-check-bytes=N`): stream a checked
//!   pattern to each target's TCP echo and send UDP datagrams to its UDP echo (`net::check`).
//! - `cairn.disk-check=write|verify`: pattern check of the first 64 MiB of the virtio-blk
//!   disk before `cairn: ready` (see `disk_check`).
//! - `cairn.crash=panic` / `cairn.crash=fault` (aliases `cairn.test=panic|pagefault`): just
//!   before `cairn: ready`, panic or read an unmapped page, to test that failures are
//!   reported (status 35; `KERNEL PANIC at …` or `FATAL EXCEPTION: vector 14 …`; no ready).
//! - `cairn.net-bench=source|sink:<ip>` (and `cairn.net-bench-bytes=N`): TCP throughput
//!   services on port 5001 for `cargo xtask bench net` (see `net_bench`).
//! - `cairn.blk-bench=<MiB>`: timed sequential write and read of the virtio-blk disk before
//!   `cairn: ready`, for `cargo xtask bench blk` (see `blk_bench`).
//! - `cairn.store-demo=1`: run the state store on the virtio-blk disk until killed, instead of
//!   reaching `cairn: ready` (see `store_demo`; the host's kill -9 test).
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

// The arch layer offers its whole API (probes, 4 KiB mappings, entropy fill) to the tests
// and the runtime; the normal build does not call all of it yet.
#[cfg_attr(
    not(feature = "kernel-tests"),
    allow(
        dead_code,
        reason = "API used by the kernel-tests build and later issues"
    )
)]
mod arch;
mod blk_bench;
mod disk_check;
mod drivers;
mod efi;
mod heap;
mod logger;
mod net;
mod net_bench;
#[cfg(not(feature = "host-std-check"))]
mod panic;
mod runtime;
mod store_demo;
mod store_device;
mod tee;
#[cfg(feature = "kernel-tests")]
mod tests;

use alloc::string::String;
use arch::{acpi, apic, clock, cpu, entropy, memory, paging, power, serial};
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
    // Under SEV-SNP only (a no-op otherwise): the #VC handler and the GHCB, before the
    // first port access, CPUID or RDTSC.
    arch::sev::early_init(info_paddr, protocol);
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
    tee::init();
    let mut devices = drivers::virtio::probe();
    let mut disk = report_devices(info, &mut devices).map(|d| {
        let mut d = store_device::StoreDevice::new(d);
        let layout = runtime::disk::layout(&mut d);
        (d, layout)
    });
    let node_config = node_config(info, disk.as_mut());
    let network = start_network(info, &mut devices, node_config.as_ref());
    crash_if_asked(info.option("cairn.crash").or(info.option("cairn.test")));
    serial::write_fmt(format_args!(
        "boot: ready in {} us after kernel entry\n",
        clock::ns_since_entry() / 1_000
    ));
    serial::write_fmt(format_args!("{READY_LINE}\n"));
    after_ready(info, network, node_config, disk)
}

/// The node configuration: from a boot module (PVH `-initrd`, fw_cfg under `kernel.efi`),
/// else from the disk's `cairn-config` partition (a node booted from its disk image).
fn node_config(
    info: &BootInfo,
    disk: Option<&mut (store_device::StoreDevice, runtime::disk::Layout)>,
) -> Option<runtime::NodeConfig> {
    match runtime::find_config(info) {
        Some(Ok(c)) => return Some(c),
        Some(Err(e)) => {
            log::error!("runtime: node configuration module rejected: {e}");
            return None;
        }
        None => {}
    }
    let (
        dev,
        runtime::disk::Layout::Gpt {
            config: Some(part), ..
        },
    ) = disk?
    else {
        return None;
    };
    match runtime::disk::config(dev, part)? {
        Ok((c, bytes)) => {
            serial::write_fmt(format_args!(
                "cairn: node config from disk partition {} ({bytes} bytes)\n",
                runtime::disk::CONFIG_PARTITION,
            ));
            Some(c)
        }
        Err(e) => {
            log::error!(
                "runtime: node configuration in partition {} rejected: {e}",
                runtime::disk::CONFIG_PARTITION
            );
            None
        }
    }
}

/// Brings up smoltcp on every virtio-net card, if any: the first (primary) card addressed
/// by the node configuration or the command line, a second one by `cairn.ip2`/`cairn.gw2` or
/// slirp's defaults (the host-access card of a testnet node), any further one by DHCPv4.
fn start_network(
    info: &BootInfo,
    devices: &mut drivers::virtio::Devices,
    node_config: Option<&runtime::NodeConfig>,
) -> Option<net::Network> {
    if devices.net.is_empty() {
        return None;
    }
    let cards: alloc::vec::Vec<_> = core::mem::take(&mut devices.net)
        .into_iter()
        .enumerate()
        .map(|(i, nic)| (nic, nic_config(info, i, node_config)))
        .collect();
    let seed = entropy::rdrand64().unwrap_or_else(|_| cpu::rdtsc());
    let network = net::Network::new(cards, seed);
    for (i, nic) in network.nics().iter().enumerate() {
        serial::write_fmt(format_args!(
            "net: virtio-net{} mac {} {:?} ipv4 {}{}{}; tcp+udp echo :7, http :8080\n",
            if i == 0 {
                String::new()
            } else {
                alloc::format!(" #{i}")
            },
            nic.mac,
            nic.addressing,
            nic.ipv4()
                .map_or(String::from("pending"), |a| alloc::format!("{a}")),
            nic.gateway()
                .map_or(String::new(), |g| alloc::format!(" gw {g}")),
            nic.ipv6()
                .map_or(String::new(), |a| alloc::format!(" ipv6 {a}")),
        ));
    }
    Some(network)
}

/// The addressing of card `i` (see [`start_network`]); a bad option falls back to DHCP,
/// except beside a node configuration, whose address stands.
fn nic_config(
    info: &BootInfo,
    i: usize,
    node_config: Option<&runtime::NodeConfig>,
) -> net::NetConfig {
    let parsed = match (i, node_config) {
        (0, Some(c)) => {
            // The configuration's address stands; a bad route only loses the route.
            let gateway = net::NetConfig::gateway_from_boot(info).unwrap_or_else(|e| {
                log::error!("net: {e}; no default route");
                None
            });
            Ok(net::NetConfig {
                gateway,
                ..runtime::net_config(c)
            })
        }
        (0, None) => net::NetConfig::from_boot(info),
        (1, _) => net::NetConfig::second_from_boot(info),
        _ => Ok(net::NetConfig::default()),
    };
    parsed.unwrap_or_else(|e| {
        log::error!("net: {e}; falling back to DHCP");
        net::NetConfig::default()
    })
}

/// Prints the devices and runs the disk checks asked for; returns the disk for the node.
fn report_devices(
    info: &BootInfo,
    devices: &mut drivers::virtio::Devices,
) -> Option<drivers::block::VirtioBlock> {
    serial::write_fmt(format_args!(
        "pci: {} functions via {:?}\n",
        devices.pci_functions, devices.cam
    ));
    let mut disk_found = None;
    if let Some(blk) = devices.blk.take() {
        let mut disk = drivers::block::VirtioBlock::new(blk);
        serial::write_fmt(format_args!(
            "blk: virtio-blk {} sectors ({} MiB)\n",
            node::store::BlockDevice::sector_count(&disk),
            node::store::BlockDevice::sector_count(&disk) * drivers::block::SECTOR_BYTES as u64
                / MIB
        ));
        if let Some(mode) = info.option("cairn.disk-check") {
            disk_check::run(&mut disk, mode);
        }
        if let Some(mib) = info.option("cairn.blk-bench") {
            blk_bench::run(&mut disk, mib);
        }
        if info.option("cairn.store-demo") == Some("1") {
            store_demo::run(disk);
        }
        disk_found = Some(disk);
    }
    if let Some(rng) = devices.rng.as_mut() {
        let mut bytes = [0u8; 16];
        match rng.request_entropy(&mut bytes) {
            Ok(n) => serial::write_fmt(format_args!("rng: virtio-rng ok ({n} bytes)\n")),
            Err(e) => serial::write_fmt(format_args!("rng: virtio-rng failed: {e}\n")),
        }
    }
    disk_found
}

/// Normal build: idle (later issues run the node here), or leave with `cairn.exit=1`.
/// Test build: run the in-kernel tests and leave with their verdict.
fn after_ready(
    info: &BootInfo,
    network: Option<net::Network>,
    node_config: Option<runtime::NodeConfig>,
    disk: Option<(store_device::StoreDevice, runtime::disk::Layout)>,
) -> ! {
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
    match (network, node_config) {
        (Some(mut network), Some(config)) => {
            let nonce = entropy::rdrand64().unwrap_or_else(|_| cpu::rdtsc());
            let store = disk
                .and_then(|(d, layout)| runtime::disk::store_device(d, &layout))
                .and_then(|d| runtime::store::open(d, nonce));
            match runtime::Runtime::new(&mut network, config, store) {
                Ok(node) => node.run(network),
                Err(e) => {
                    log::error!("runtime: {e}");
                    cpu::halt_forever()
                }
            }
        }
        (None, Some(_)) => {
            log::error!("runtime: a node configuration but no network card");
            cpu::halt_forever()
        }
        (Some(mut network), None) => {
            let check = info.option("cairn.net-check").and_then(|targets| {
                net::check::NetCheck::new(targets, info.option("cairn.net-check-bytes"))
            });
            let bench = info.option("cairn.net-bench").and_then(|mode| {
                net_bench::NetBench::new(&mut network, mode, info.option("cairn.net-bench-bytes"))
            });
            serve(network, check, bench)
        }
        (None, None) => cpu::halt_forever(),
    }
}

/// How long the network loop keeps spinning after the last activity before it sleeps until
/// the next APIC tick (1 ms): busy streams never sleep, an idle VM costs the host little.
const IDLE_AFTER_NS: u64 = 2_000_000;

fn serve(
    mut network: net::Network,
    mut check: Option<net::check::NetCheck>,
    mut bench: Option<net_bench::NetBench>,
) -> ! {
    let sleep = match apic::init() {
        Ok(hz) => {
            log::info!(
                "apic: timer {} kHz, idle tick {} us",
                hz / 1000,
                apic::IDLE_TICK_US
            );
            true
        }
        Err(e) => {
            log::warn!("apic: {e}; the network loop spins");
            false
        }
    };
    let mut last_activity = clock::now_ns();
    loop {
        let mut active = network.poll();
        if let Some(check) = check.as_mut() {
            active |= check.poll(&mut network);
        }
        if let Some(bench) = bench.as_mut() {
            active |= bench.poll(&mut network);
        }
        if active {
            last_activity = clock::now_ns();
        } else if sleep && clock::now_ns() - last_activity > IDLE_AFTER_NS {
            apic::idle();
        }
    }
}

/// `cairn.crash=panic|fault` (also spelled `cairn.test=panic|pagefault`) lets host tests
/// prove that a kernel panic or an unexpected fault during boot ends the run (before
/// `cairn: ready`) with the message on the console and a failure status.
fn crash_if_asked(what: Option<&str>) {
    match what {
        Some("panic") => panic!("deliberate panic (cairn.crash=panic)"),
        Some("fault" | "pagefault") => {
            let unmapped = paging::DYNAMIC_MAP_BASE + 0x10_0000;
            // SAFETY: deliberately not safe: reading an unmapped page must raise #PF, which
            // the fatal exception path reports before stopping the machine.
            let value = unsafe { core::ptr::read_volatile(unmapped as *const u64) };
            log::error!("read of an unmapped page returned {value:#x}");
        }
        Some(other) => log::warn!("cairn.crash={other}: unknown, ignored"),
        None => {}
    }
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
