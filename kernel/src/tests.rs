//! In-kernel tests (cargo feature `kernel-tests`): run after `cairn: ready`, report each case
//! as `test <name> ... ok` or `test <name> ... FAILED` (with a reason line), close with
//! `kernel tests: N passed, M failed`; the caller then exits QEMU through isa-debug-exit:
//! 0x10 (status 33) when all passed, 0x11 (status 35) otherwise.
//!
//! The clock case prints `clock-check start at_ns=<t0>`, spins one second of its monotonic
//! clock, then prints `clock-check end guest_ns=<t1 - t0> at_ns=<t1>`, so the host can compare
//! the guest's second with its own clock between the two lines' arrival.

use crate::arch::{apic, clock, cpu, entropy, idt, paging, serial};
use alloc::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

type TestResult = Result<(), String>;

/// The largest allocation size the allocator cases try.
const ALLOC_SIZE_MAX_BYTES: usize = 1 << 20;
/// Operations in the allocator stress case.
const STRESS_OPERATIONS: usize = 20_000;
/// Live allocations at most during the stress case.
const STRESS_SLOTS: usize = 256;
/// Allowed disagreement between the TSC clock and the PIT, in parts per thousand.
const CLOCK_TOLERANCE_PERMILLE: u64 = 20;
/// Guest time between the two `clock-check` lines.
const CLOCK_CHECK_INTERVAL_NS: u64 = 1_000_000_000;
/// The page the mapping case maps.
const TEST_PAGE_VADDR: u64 = paging::DYNAMIC_MAP_BASE + 0x1000;

type Case = (&'static str, fn() -> TestResult);

const CASES: &[Case] = &[
    ("alloc_many_sizes", alloc_many_sizes),
    ("alloc_realloc_preserves", alloc_realloc_preserves),
    ("alloc_stress", alloc_stress),
    ("paging_map_write_read_unmap", paging_map_write_read_unmap),
    ("clock_monotonic", clock_monotonic),
    ("clock_calibrated_against_pit", clock_calibrated_against_pit),
    ("clock_host_check", clock_host_check),
    ("rdrand", rdrand),
    ("breakpoint_resumes", breakpoint_resumes),
    ("page_fault_caught", page_fault_caught),
    ("apic_timer_wakes_idle", apic_timer_wakes_idle),
    ("node_links", node_links),
];

/// Runs every case; true when all passed.
pub fn run_all() -> bool {
    let (mut passed, mut failed) = (0usize, 0usize);
    for (name, case) in CASES {
        match case() {
            Ok(()) => {
                serial::write_fmt(format_args!("test {name} ... ok\n"));
                passed += 1;
            }
            Err(why) => {
                serial::write_fmt(format_args!("test {name} ... FAILED\n    {why}\n"));
                failed += 1;
            }
        }
    }
    serial::write_fmt(format_args!(
        "kernel tests: {passed} passed, {failed} failed\n"
    ));
    failed == 0
}

fn ensure(ok: bool, why: impl FnOnce() -> String) -> TestResult {
    if ok {
        Ok(())
    } else {
        Err(why())
    }
}

/// A deterministic xorshift generator for test patterns.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn pattern_byte(seed: usize, i: usize) -> u8 {
    (seed.wrapping_mul(31).wrapping_add(i.wrapping_mul(7)) & 0xff) as u8
}

fn fill(ptr: *mut u8, len: usize, seed: usize) {
    for i in 0..len {
        // SAFETY: callers pass a live allocation of `len` bytes.
        unsafe { ptr.add(i).write(pattern_byte(seed, i)) };
    }
}

fn check(ptr: *const u8, len: usize, seed: usize) -> bool {
    // SAFETY: callers pass a live allocation of `len` bytes.
    (0..len).all(|i| unsafe { ptr.add(i).read() } == pattern_byte(seed, i))
}

fn alloc_many_sizes() -> TestResult {
    let mut live = Vec::new();
    let mut size = 1;
    while size <= ALLOC_SIZE_MAX_BYTES {
        for align in [1usize, 8, 64, 4096] {
            let layout = Layout::from_size_align(size, align).map_err(|e| format!("{e}"))?;
            // SAFETY: non-zero size.
            let p = unsafe { alloc(layout) };
            ensure(!p.is_null(), || {
                format!("alloc({size}, {align}) returned null")
            })?;
            ensure((p as usize).is_multiple_of(align), || {
                format!("{p:p} not aligned to {align}")
            })?;
            fill(p, size, size + align);
            live.push((p, layout));
        }
        size = size * 3 + 1;
    }
    for &(p, layout) in &live {
        let seed = layout.size() + layout.align();
        ensure(check(p, layout.size(), seed), || {
            format!("pattern lost at {p:p}")
        })?;
    }
    for (p, layout) in live {
        // SAFETY: allocated above with this layout, freed once.
        unsafe { dealloc(p, layout) };
    }
    // SAFETY: non-zero size.
    let z =
        unsafe { alloc_zeroed(Layout::from_size_align(65_536, 16).map_err(|e| format!("{e}"))?) };
    ensure(!z.is_null(), || String::from("alloc_zeroed returned null"))?;
    // SAFETY: a live 64 KiB allocation.
    let zeroed = (0..65_536).all(|i| unsafe { z.add(i).read() } == 0);
    // SAFETY: allocated above with this layout.
    unsafe { dealloc(z, Layout::from_size_align_unchecked(65_536, 16)) };
    ensure(zeroed, || String::from("alloc_zeroed memory not zero"))
}

fn alloc_realloc_preserves() -> TestResult {
    let mut layout = Layout::from_size_align(16, 8).map_err(|e| format!("{e}"))?;
    // SAFETY: non-zero size.
    let mut p = unsafe { alloc(layout) };
    fill(p, 16, 1);
    for new_size in [17usize, 4096, 100_000, 1 << 20, 300, 16] {
        let keep = layout.size().min(new_size);
        // SAFETY: `p` is live with `layout`; the new size is non-zero.
        p = unsafe { realloc(p, layout, new_size) };
        ensure(!p.is_null(), || {
            format!("realloc to {new_size} returned null")
        })?;
        ensure(check(p, keep, 1), || {
            format!("realloc to {new_size} lost contents")
        })?;
        layout = Layout::from_size_align(new_size, 8).map_err(|e| format!("{e}"))?;
        fill(p, new_size, 1);
    }
    // SAFETY: live with `layout`.
    unsafe { dealloc(p, layout) };
    let mut v: Vec<u64> = Vec::new();
    for i in 0..100_000u64 {
        v.push(i * i);
    }
    ensure(
        v.iter()
            .enumerate()
            .all(|(i, &x)| x == (i as u64) * (i as u64)),
        || String::from("Vec growth lost elements"),
    )
}

fn alloc_stress() -> TestResult {
    let free_before = crate::heap::free_bytes();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut slots: Vec<Option<(Box<[u8]>, usize)>> = (0..STRESS_SLOTS).map(|_| None).collect();
    for op in 0..STRESS_OPERATIONS {
        let slot = (rng.next() % STRESS_SLOTS as u64) as usize;
        if let Some((buf, seed)) = slots[slot].take() {
            ensure(check(buf.as_ptr(), buf.len(), seed), || {
                format!("op {op}: corruption")
            })?;
        } else {
            let len = 1 + (rng.next() % 8192) as usize;
            let mut buf = alloc::vec![0u8; len].into_boxed_slice();
            fill(buf.as_mut_ptr(), len, op);
            slots[slot] = Some((buf, op));
        }
    }
    for (buf, seed) in slots.iter().flatten() {
        ensure(check(buf.as_ptr(), buf.len(), *seed), || {
            String::from("final corruption")
        })?;
    }
    drop(slots);
    let free_after = crate::heap::free_bytes();
    ensure(free_after == free_before, || {
        format!("leak: {free_before} free before, {free_after} after")
    })
}

fn paging_map_write_read_unmap() -> TestResult {
    let layout = Layout::from_size_align(4096, 4096).map_err(|e| format!("{e}"))?;
    // SAFETY: non-zero size.
    let frame = unsafe { alloc_zeroed(layout) };
    ensure(!frame.is_null(), || String::from("no frame"))?;
    let paddr = frame as u64; // identity-mapped heap
    let outcome = map_write_read_unmap(paddr);
    // SAFETY: allocated above with this layout; no longer mapped anywhere else.
    unsafe { dealloc(frame, layout) };
    outcome
}

fn map_write_read_unmap(paddr: u64) -> TestResult {
    let v = TEST_PAGE_VADDR;
    ensure(paging::translate(v).is_none(), || {
        format!("{v:#x} mapped before the test")
    })?;
    paging::map_4k(v, paddr, paging::Caching::WriteBack).map_err(|e| format!("map: {e}"))?;
    ensure(paging::translate(v) == Some(paddr), || {
        String::from("translate disagrees")
    })?;
    // SAFETY: `v` now maps the test frame, which nothing else uses.
    unsafe { core::ptr::write_volatile((v + 123) as *mut u64, 0xdead_beef_cafe_f00d) };
    // SAFETY: the identity alias of the same frame.
    let via_phys = unsafe { core::ptr::read_volatile((paddr + 123) as *const u64) };
    ensure(via_phys == 0xdead_beef_cafe_f00d, || {
        format!("alias read {via_phys:#x}")
    })?;
    ensure(
        paging::map_4k(v, paddr, paging::Caching::WriteBack)
            == Err(paging::MapError::AlreadyMapped),
        || String::from("double map not refused"),
    )?;
    let frame = paging::unmap_4k(v).map_err(|e| format!("unmap: {e}"))?;
    ensure(frame == paddr, || format!("unmap returned {frame:#x}"))?;
    ensure(paging::translate(v).is_none(), || {
        String::from("still mapped after unmap")
    })?;
    match idt::probe_read_u8(v) {
        Err(f) if f.vector == 14 && f.address == v => Ok(()),
        other => Err(format!(
            "read after unmap gave {other:?}, expected #PF at {v:#x}"
        )),
    }
}

fn clock_monotonic() -> TestResult {
    let start = clock::now_ns();
    let mut last = start;
    for i in 0..200_000 {
        let now = clock::now_ns();
        ensure(now >= last, || format!("step {i}: {now} < {last}"))?;
        last = now;
    }
    ensure(last > start, || String::from("clock did not advance"))
}

fn clock_calibrated_against_pit() -> TestResult {
    // 20 ms by the PIT, three times; the median must agree within the tolerance.
    let mut diffs = [0u64; 3];
    for d in diffs.iter_mut() {
        let (pit_ns, tsc_ns) = clock::cross_check_with_pit(23_864)
            .ok_or_else(|| String::from("PIT did not count down"))?;
        serial::write_fmt(format_args!(
            "    pit interval {pit_ns} ns, tsc clock measured {tsc_ns} ns\n"
        ));
        *d = pit_ns.abs_diff(tsc_ns) * 1000 / pit_ns;
    }
    diffs.sort_unstable();
    ensure(diffs[1] <= CLOCK_TOLERANCE_PERMILLE, || {
        format!("median disagreement {} permille", diffs[1])
    })
}

fn clock_host_check() -> TestResult {
    let start = clock::now_ns();
    serial::write_fmt(format_args!("clock-check start at_ns={start}\n"));
    while clock::now_ns() < start + CLOCK_CHECK_INTERVAL_NS {
        core::hint::spin_loop();
    }
    let end = clock::now_ns();
    serial::write_fmt(format_args!(
        "clock-check end guest_ns={} at_ns={end}\n",
        end - start
    ));
    ensure(end - start >= CLOCK_CHECK_INTERVAL_NS, || {
        String::from("woke early")
    })
}

fn rdrand() -> TestResult {
    let mut words = [0u64; 64];
    for w in words.iter_mut() {
        *w = entropy::rdrand64().map_err(|e| format!("rdrand: {e}"))?;
    }
    let ones: u32 = words.iter().map(|w| w.count_ones()).sum();
    // 4096 bits: a fair source lands within 45%..55% ones with overwhelming probability.
    ensure((1843..=2253).contains(&ones), || {
        format!("{ones} ones in 4096 bits")
    })?;
    let mut sorted = words;
    sorted.sort_unstable();
    ensure(sorted.windows(2).all(|w| w[0] != w[1]), || {
        String::from("repeated word")
    })?;
    let mut buf = [0u8; 37];
    entropy::fill(&mut buf).map_err(|e| format!("fill: {e}"))?;
    ensure(buf.iter().any(|&b| b != 0), || {
        String::from("fill gave zeros")
    })
}

fn breakpoint_resumes() -> TestResult {
    let before = idt::breakpoint_count();
    cpu::breakpoint();
    cpu::breakpoint();
    let after = idt::breakpoint_count();
    ensure(after == before + 2, || format!("count {before} -> {after}"))
}

fn page_fault_caught() -> TestResult {
    // A canonical address in the never-identity-mapped range: must #PF with CR2 = address.
    let v = paging::DYNAMIC_MAP_BASE + 0x7_7000;
    match idt::probe_read_u8(v) {
        Err(f) if f.vector == 14 && f.address == v && f.error_code & 1 == 0 => {}
        other => {
            return Err(format!(
                "expected a not-present #PF at {v:#x}, got {other:?}"
            ))
        }
    }
    // A present page must read fine through the same probe.
    let x = 0x5au8;
    match idt::probe_read_u8(&x as *const u8 as u64) {
        Ok(0x5a) => Ok(()),
        other => Err(format!("probe of a mapped byte gave {other:?}")),
    }
}

fn apic_timer_wakes_idle() -> TestResult {
    apic::init().map_err(|e| format!("apic: {e}"))?;
    let (ticks_before, start) = (apic::ticks(), clock::now_ns());
    for _ in 0..10 {
        apic::idle();
    }
    let (woken, elapsed_ns) = (apic::ticks() - ticks_before, clock::now_ns() - start);
    ensure(woken >= 10, || {
        format!("{woken} timer interrupts for 10 idles")
    })?;
    // Ten 1 ms ticks: at least ~9 ms must pass (the first wait may be a partial period).
    ensure(elapsed_ns >= 9 * apic::IDLE_TICK_US * 1_000, || {
        format!("10 idles took only {elapsed_ns} ns")
    })
}

fn node_links() -> TestResult {
    let text = node::types::Principal::ANONYMOUS.to_text();
    ensure(text == "2vxsx-fae", || {
        format!("anonymous principal is {text}")
    })
}
