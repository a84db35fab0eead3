//! `cargo xtask test`: every check of the project, in order, stopping at the first failure.
//!
//! Each step prints what it checks and how long it took; the last line is `N passed, M failed`
//! (steps), which CI reads. `--keep-going` runs every step; naming steps (or parts of their
//! names) runs only those, plus the steps they need (the kernel build, the disk image).

use crate::boot_paths::{boot_to_ready, failure_report, spawn_quiet, BootPath, READY_LINE};
use crate::{cargo, has_flag, kernel_build, run_status, Paths};
use qemu::{ExitOutcome, QemuCommand};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Host time the in-kernel test suite may take, boot included.
pub const KERNEL_TESTS_TIMEOUT_S: u64 = 300;
/// Host time a deliberately panicking or faulting kernel may take to show its message and stop.
pub const FAULT_TIMEOUT_S: u64 = 30;
/// Allowed difference between the guest's clock and the host's over the clock check.
pub const CLOCK_TOLERANCE_PERCENT: u64 = 5;

/// Kernel command line option that makes the kernel panic after boot (the fault tests'
/// convention with kernel/src/main.rs).
pub const PANIC_CMDLINE: &str = "cairn.crash=panic";
/// Kernel command line option that makes the kernel read an unmapped page after boot.
pub const FAULT_CMDLINE: &str = "cairn.crash=fault";
/// What the kernel's panic handler prints (kernel/src/panic.rs).
pub const PANIC_MESSAGE: &str = "KERNEL PANIC at";
/// What the kernel's exception handler prints for a page fault (kernel/src/arch/x86_64/idt.rs).
pub const PAGE_FAULT_MESSAGE: &str = "FATAL EXCEPTION: vector 14";

type StepFn = fn(&Paths) -> Result<String, String>;

struct Step {
    name: &'static str,
    what: &'static str,
    needs: &'static [&'static str],
    run: StepFn,
}

const STEPS: &[Step] = &[
    Step {
        name: "fmt",
        what: "cargo fmt --all --check",
        needs: &[],
        run: fmt,
    },
    Step {
        name: "clippy",
        what: "cargo clippy --workspace --all-targets --all-features -- -D warnings",
        needs: &[],
        run: clippy,
    },
    Step {
        name: "host-tests",
        what: "cargo test --workspace --all-features",
        needs: &[],
        run: host_tests,
    },
    Step {
        name: "build",
        what:
            "kernel.elf + kernel-test.elf; build guard (no undefined symbols, no dynamic section)",
        needs: &[],
        run: build,
    },
    Step {
        name: "image",
        what: "GPT disk image with GRUB for BIOS and UEFI",
        needs: &["build"],
        run: image_step,
    },
    Step {
        name: "kernel-tests",
        what: "in-kernel tests under QEMU exit 33; guest clock within 5% of the host's",
        needs: &["build"],
        run: kernel_tests,
    },
    Step {
        name: "boot-pvh",
        what: "PVH direct boot reaches `cairn: ready`",
        needs: &["build"],
        run: boot_pvh,
    },
    Step {
        name: "boot-bios",
        what: "SeaBIOS → GRUB → multiboot2 from the disk image reaches `cairn: ready`",
        needs: &["image"],
        run: boot_bios,
    },
    Step {
        name: "boot-uefi",
        what: "OVMF → GRUB → multiboot2 from the disk image reaches `cairn: ready`",
        needs: &["image"],
        run: boot_uefi,
    },
    Step {
        name: "net-health",
        what: "GET /health on a booted VM (user-mode net, 127.0.0.1 forward) answers 200 ok",
        needs: &["build"],
        run: crate::net_tests::health,
    },
    Step {
        name: "net-echo",
        what: "a 16 MiB TCP echo round trip through port 7 is byte-identical",
        needs: &["build"],
        run: crate::net_tests::echo,
    },
    Step {
        name: "net-malformed",
        what: "thousands of seeded bad frames (truncated, bad checksums/lengths/offsets, \
               fragments, bogus ARP, oversized and 9000/65535-byte jumbo, garbage) injected on \
               the VM's segment: counted as drops in /health; /health and echo still answer",
        needs: &["build"],
        run: crate::net_robust::malformed_step,
    },
    Step {
        name: "net-reset",
        what: "clients resetting mid-stream (SO_LINGER 0) on echo and HTTP, peers that stop \
               reading or never close: services answer, every connection is reclaimed",
        needs: &["build"],
        run: crate::net_robust::reset_step,
    },
    Step {
        name: "net-halfopen",
        what: "silent connections and a forged SYN flood on the health port, beyond its slots: \
               /health serves during and after, every slot is reclaimed",
        needs: &["build"],
        run: crate::net_robust::halfopen_step,
    },
    Step {
        name: "testnet",
        what: "3 VMs on one virtual L2 segment (the qemu crate's switch) each answer ARP",
        needs: &["build"],
        run: crate::testnet_tests::testnet,
    },
    Step {
        name: "testnet-streams",
        what: "on the testnet, every VM streams 16 MiB over TCP to each other VM and checks the \
               echo, and exchanges UDP datagrams with it",
        needs: &["build"],
        run: crate::testnet_tests::testnet_streams,
    },
    Step {
        name: "testnet-subnet",
        what: "4 cairn nodes (one VM each) finalize height 5; every node's /api/v2/status and \
               /metrics answer through its host-forwarded port, heights increasing",
        needs: &["build"],
        run: crate::testnet_tests::testnet_subnet,
    },
    Step {
        name: "disk",
        what: "64 MiB pattern written to virtio-blk survives a power-off; past-end read fails; \
               a flipped byte is detected",
        needs: &["build"],
        run: crate::disk_tests::disk,
    },
    Step {
        name: "store-kill9",
        what: "the store on virtio-blk: a VM SIGKILLed mid-run reboots and resumes from its disk \
               (3 seeded kills; nothing reported durable is lost)",
        needs: &["build"],
        run: crate::store_tests::store_kill9,
    },
    Step {
        name: "panic-fails-fast",
        what: "a panicking kernel fails the boot test at once, with its message",
        needs: &["build"],
        run: panic_fails_fast,
    },
    Step {
        name: "fault-fails-fast",
        what: "a page-faulting kernel fails the boot test at once, with the exception report",
        needs: &["build"],
        run: fault_fails_fast,
    },
    Step {
        name: "boot-efi-kernel",
        what: "OVMF loads kernel.efi (PE32+) from -kernel, no GRUB; the kernel's UEFI entry \
               hands over the -append command line and reaches `cairn: ready`",
        needs: &["build"],
        run: boot_efi_kernel,
    },
    Step {
        name: "attest-measure-efi",
        what: "the SNP launch measurement of the real kernel.efi under edk2's AmdSev OVMF (Debian \
               ovmf-amdsev; kernel hashes) agrees byte for byte with sev-snp-measure",
        needs: &["build"],
        run: attest_measure_efi,
    },
    Step {
        name: "testnet-agent",
        what: "4-VM testnet: the unmodified ic-agent installs the Motoko counter and the ICRC-1 \
               ledger and replays their scenarios through different nodes, and installs a 2.1 MiB \
               module in chunks; certificates verify",
        needs: &["build"],
        run: crate::testnet_steps::testnet_agent,
    },
    Step {
        name: "testnet-faults",
        what: "4-VM testnet: one VM killed (calls go on), restarted from its disk (catches up), \
               wiped (rejoins by state sync); two paused: no progress, no fork, then progress",
        needs: &["build"],
        run: crate::testnet_steps::testnet_faults,
    },
    Step {
        name: "testnet-restart",
        what: "4-VM testnet: a canister's counter survives stopping and restarting every VM",
        needs: &["build"],
        run: crate::testnet_steps::testnet_restart,
    },
    Step {
        name: "testnet-uefi",
        what: "4-VM testnet from kernel.efi under OVMF, configs through fw_cfg: finalizes, a \
               counter updated and queried through different nodes, report_data as in \
               registry.json, tee none and /_/attestation 404 on every node",
        needs: &["build"],
        run: crate::testnet_uefi::testnet_uefi,
    },
    Step {
        name: "testnet-image",
        what: "4-VM subnet booted from `cargo xtask image --genesis` disk images (SeaBIOS → GRUB \
               from virtio-blk): configs from cairn-config, store on cairn-store, report_data \
               as in registry.json; counter through different nodes; all killed and rebooted \
               from the same images: GRUB still boots, the counter survives",
        needs: &["build"],
        run: crate::testnet_image::testnet_image,
    },
];

/// Run the steps; print the summary; exit code 0 only if all selected steps passed.
pub fn run(paths: &Paths, args: &[String]) -> ExitCode {
    let keep_going = has_flag(args, "--keep-going");
    let filters: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let selected = select(&filters);
    if selected.is_empty() {
        let names: Vec<&str> = STEPS.iter().map(|s| s.name).collect();
        eprintln!(
            "no test step matches {filters:?}; steps: {}",
            names.join(", ")
        );
        return ExitCode::from(2);
    }
    let total = Instant::now();
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut not_run = Vec::new();
    for (i, step) in selected.iter().enumerate() {
        if failed > 0 && !keep_going {
            not_run.push(step.name);
            continue;
        }
        println!(
            "\n==> [{}/{}] {}: {}",
            i + 1,
            selected.len(),
            step.name,
            step.what
        );
        let started = Instant::now();
        let result = (step.run)(paths);
        let took = started.elapsed().as_secs_f64();
        match result {
            Ok(detail) => {
                passed += 1;
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                };
                println!("==> {} ok ({took:.1} s){detail}", step.name);
            }
            Err(message) => {
                failed += 1;
                println!("==> {} FAILED ({took:.1} s)\n{message}", step.name);
            }
        }
    }
    println!();
    if !not_run.is_empty() {
        println!("not run after the first failure: {}", not_run.join(", "));
    }
    println!(
        "cargo xtask test took {:.1} s",
        total.elapsed().as_secs_f64()
    );
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The steps matching `filters` and everything they need, in the suite's order.
fn select(filters: &[&str]) -> Vec<&'static Step> {
    if filters.is_empty() {
        return STEPS.iter().collect();
    }
    let all = || STEPS.iter();
    let mut wanted: Vec<&str> = all()
        .filter(|s| filters.iter().any(|f| s.name.contains(f)))
        .map(|s| s.name)
        .collect();
    // Add prerequisites until nothing changes (the graph is two levels deep).
    loop {
        let before = wanted.len();
        let needed: Vec<&str> = all()
            .filter(|s| wanted.contains(&s.name))
            .flat_map(|s| s.needs.iter().copied())
            .collect();
        for need in needed {
            if !wanted.contains(&need) {
                wanted.push(need);
            }
        }
        if wanted.len() == before {
            break;
        }
    }
    all().filter(|s| wanted.contains(&s.name)).collect()
}

fn fmt(paths: &Paths) -> Result<String, String> {
    run_status(cargo(paths).args(["fmt", "--all", "--check"])).map(|_| String::new())
}

/// Clippy over every target of every crate with every feature (the kernel's `host-std-check`
/// feature lets it type-check with `node`'s std features unified in).
fn clippy(paths: &Paths) -> Result<String, String> {
    let args = [
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ];
    run_status(cargo(paths).args(args)).map(|_| String::new())
}

fn host_tests(paths: &Paths) -> Result<String, String> {
    run_status(cargo(paths).args(["test", "--workspace", "--all-features"])).map(|_| String::new())
}

fn build(paths: &Paths) -> Result<String, String> {
    kernel_build::build_all(paths).map(|_| String::new())
}

fn image_step(paths: &Paths) -> Result<String, String> {
    crate::run_vm::build_image(
        paths,
        crate::run_vm::DEFAULT_CMDLINE,
        image::DEFAULT_STORE_MIB,
    )?;
    verify_image(paths)
}

/// Read the written image's GPT back and check the partitions the later issues rely on.
fn verify_image(paths: &Paths) -> Result<String, String> {
    use std::io::Read;
    let path = paths.disk_image();
    let mut file =
        std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let bytes = file.metadata().map_err(|e| e.to_string())?.len();
    let mut head = vec![0u8; 34 * 512];
    file.read_exact(&mut head).map_err(|e| e.to_string())?;
    let gpt = image::gpt::Gpt::read(&head, bytes / 512)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for (name, type_guid) in [
        (image::PART_CONFIG, image::gpt::TYPE_CAIRN_CONFIG),
        (image::PART_STORE, image::gpt::TYPE_CAIRN_STORE),
        (image::PART_ESP, image::gpt::TYPE_EFI_SYSTEM),
        (image::PART_BIOS_BOOT, image::gpt::TYPE_BIOS_BOOT),
    ] {
        let part = image::partition(&gpt, name).ok_or(format!("no partition {name}"))?;
        if part.type_guid != type_guid {
            return Err(format!(
                "partition {name} has type {}, expected {type_guid}",
                part.type_guid
            ));
        }
    }
    Ok(format!(
        "{} partitions, GPT CRCs valid",
        gpt.partitions.len()
    ))
}

fn boot_pvh(paths: &Paths) -> Result<String, String> {
    boot(paths, BootPath::Pvh)
}

fn boot_bios(paths: &Paths) -> Result<String, String> {
    boot(paths, BootPath::Bios)
}

fn boot_uefi(paths: &Paths) -> Result<String, String> {
    boot(paths, BootPath::Uefi)
}

/// The command line the UEFI-kernel boot test passes; the kernel must echo it in its banner
/// (`boot: Uefi protocol, cmdline "…"`), which proves the load options reached the kernel.
const EFI_KERNEL_TEST_CMDLINE: &str = "cairn.efi-test=1 cairn.ip=10.0.2.15/24";

fn boot_efi_kernel(paths: &Paths) -> Result<String, String> {
    let path = BootPath::UefiKernel;
    let run_dir = paths.run_dir("test-boot-uefi-kernel");
    let cmd = path
        .command(paths, &run_dir)?
        .append(EFI_KERNEL_TEST_CMDLINE);
    let limit = path.ready_timeout();
    let mut vm = spawn_quiet("boot-uefi-kernel", &cmd, &run_dir, limit)?;
    let banner = format!("boot: Uefi protocol, cmdline \"{EFI_KERNEL_TEST_CMDLINE}\"");
    if let Err(e) = vm.wait_for(&qemu::LinePattern::substring(banner.as_str()), limit) {
        return Err(failure_report(&mut vm, &format!("no `{banner}` line: {e}")));
    }
    match vm.wait_for(&qemu::LinePattern::substring(READY_LINE), limit) {
        Ok(line) => Ok(format!(
            "PE32+ kernel.efi ready {:.2} s after QEMU started (UEFI entry, command line passed)",
            line.at.as_secs_f64()
        )),
        Err(e) => Err(failure_report(&mut vm, &e.to_string())),
    }
}

fn attest_measure_efi(paths: &Paths) -> Result<String, String> {
    let firmware = crate::attest::amdsev_firmware(&paths.root).ok_or(
        "no AmdSev OVMF (OVMF.amdsev.fd); fetch Debian's ovmf-amdsev into target/ci-ovmf-amdsev/ \
         with `bash .ci/ovmf-amdsev.sh` (as root, from the repository root), or set \
         CAIRN_OVMF_AMDSEV",
    )?;
    crate::attest::compare_efi_measurement(&paths.root, &firmware, &kernel_build::kernel_efi(paths))
}

fn boot(paths: &Paths, path: BootPath) -> Result<String, String> {
    let took = boot_to_ready(paths, path, &format!("test-boot-{}", path.name()))?;
    Ok(format!(
        "ready {:.2} s after QEMU started",
        took.as_secs_f64()
    ))
}

/// Boot the test kernel; it runs its cases and exits through `isa-debug-exit`.
fn kernel_tests(paths: &Paths) -> Result<String, String> {
    let run_dir = paths.run_dir("test-kernel-tests");
    let cmd = QemuCommand::pvh(paths.test_kernel()).accel(crate::boot_paths::accel());
    let limit = Duration::from_secs(KERNEL_TESTS_TIMEOUT_S);
    let mut vm = spawn_quiet("kernel-tests", &cmd, &run_dir, limit)?;
    let outcome = match vm.wait_exit(limit) {
        Ok(outcome) => outcome,
        Err(err) => return Err(failure_report(&mut vm, &err.to_string())),
    };
    if outcome != ExitOutcome::Pass {
        return Err(failure_report(
            &mut vm,
            &format!("in-kernel tests: QEMU {outcome}"),
        ));
    }
    let lines: Vec<qemu::Line> = vm.console().iter().cloned().collect();
    match clock::check(&lines, CLOCK_TOLERANCE_PERCENT) {
        Ok(summary) => Ok(format!("guest reported pass; {summary}")),
        Err(err) => Err(failure_report(&mut vm, &format!("clock check: {err}"))),
    }
}

fn panic_fails_fast(paths: &Paths) -> Result<String, String> {
    fails_fast(paths, "panic", PANIC_CMDLINE, PANIC_MESSAGE)
}

fn fault_fails_fast(paths: &Paths) -> Result<String, String> {
    fails_fast(paths, "fault", FAULT_CMDLINE, PAGE_FAULT_MESSAGE)
}

/// Boot a kernel told to break itself and require that the run ends by itself, well within the
/// limit, as a failure (`isa-debug-exit` 35 from the panic or exception handler), with `message`
/// on the console; a guest that stops without exiting is still ended by the run's time limit
/// (and the step reports that). This is what a test harness sees of a broken kernel.
fn fails_fast(paths: &Paths, name: &str, cmdline: &str, message: &str) -> Result<String, String> {
    let run_dir = paths.run_dir(&format!("test-{name}"));
    let cmd = QemuCommand::pvh(paths.kernel())
        .append(cmdline)
        .accel(crate::boot_paths::accel());
    let limit = Duration::from_secs(FAULT_TIMEOUT_S);
    let mut vm = spawn_quiet(name, &cmd, &run_dir, limit)?;
    let ended = vm.wait_exit(limit);
    let took = vm.elapsed().as_secs_f64();
    let console = vm.console_text();
    if !console.contains(message) {
        let why = match &ended {
            Ok(outcome) => format!("QEMU {outcome}"),
            Err(err) => err.to_string(),
        };
        let hint = if console.contains(READY_LINE) {
            format!(" (the kernel reached `{READY_LINE}`: does it implement `{cmdline}`?)")
        } else {
            String::new()
        };
        return Err(failure_report(
            &mut vm,
            &format!("{why}; the console lacks {message:?}{hint}"),
        ));
    }
    match ended {
        Ok(ExitOutcome::Fail) => Ok(format!(
            "exit 35 after {took:.2} s with {message:?} on the console"
        )),
        Ok(other) => Err(failure_report(
            &mut vm,
            &format!("QEMU {other}, expected exit 35 (fail)"),
        )),
        Err(err) => Ok(format!(
            "{message:?} on the console; the guest stopped without exiting and the run's limit \
             ended it ({err})"
        )),
    }
}

mod clock {
    //! The clock check (kernel/src/tests.rs, case `clock_host_check`): the test kernel prints
    //! `clock-check: guest_ns=<n>` with its monotonic clock, spins for one second of guest time,
    //! and prints the line again. The host times the same interval by the arrival of the two
    //! lines and requires the two intervals to agree within the tolerance.

    use qemu::Line;

    const MARKER: &str = "clock-check: guest_ns=";

    fn guest_ns(line: &Line) -> Option<u64> {
        let at = line.text.find(MARKER)? + MARKER.len();
        let digits: String = line.text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }

    pub fn check(lines: &[Line], tolerance_percent: u64) -> Result<String, String> {
        let marks: Vec<(&Line, u64)> = lines
            .iter()
            .filter_map(|l| Some((l, guest_ns(l)?)))
            .collect();
        let [(first, start_ns), (second, end_ns)] = marks[..] else {
            return Err(format!(
                "expected two `{MARKER}<n>` lines, found {}",
                marks.len()
            ));
        };
        let guest = end_ns
            .checked_sub(start_ns)
            .ok_or("the guest clock went backwards")?;
        let host = u64::try_from(second.at.saturating_sub(first.at).as_nanos()).unwrap_or(u64::MAX);
        if host == 0 || guest == 0 {
            return Err("the two clock-check lines arrived together".into());
        }
        let summary = format!(
            "clock: guest {:.3} s vs host {:.3} s ({:+.2}%)",
            guest as f64 / 1e9,
            host as f64 / 1e9,
            (guest as f64 - host as f64) * 100.0 / host as f64
        );
        if guest.abs_diff(host).saturating_mul(100) > host.saturating_mul(tolerance_percent) {
            return Err(format!("{summary}: more than {tolerance_percent}% apart"));
        }
        Ok(summary)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::time::Duration;

        fn line(text: &str, ms: u64) -> Line {
            Line {
                text: text.into(),
                at: Duration::from_millis(ms),
            }
        }

        #[test]
        fn within_and_outside_tolerance() {
            let start = line("clock-check: guest_ns=500000000", 1000);
            let ok = [
                start.clone(),
                line("test x ... ok", 1500),
                line("clock-check: guest_ns=1500000000", 2030),
            ];
            assert!(check(&ok, 5)
                .unwrap()
                .contains("guest 1.000 s vs host 1.030 s"));
            let slow = [
                start.clone(),
                line("clock-check: guest_ns=1500000000", 2100),
            ];
            assert!(check(&slow, 5).unwrap_err().contains("more than 5% apart"));
            assert!(check(&ok[..1], 5).unwrap_err().contains("found 1"));
            let backwards = [start, line("clock-check: guest_ns=1", 2000)];
            assert!(check(&backwards, 5).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_adds_prerequisites_in_suite_order() {
        let names = |f: &[&str]| select(f).iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(names(&["boot-uefi"]), ["build", "image", "boot-uefi"]);
        assert_eq!(names(&["fmt"]), ["fmt"]);
        assert_eq!(names(&[]).len(), STEPS.len());
        assert!(names(&["nothing-like-this"]).is_empty());
        assert_eq!(names(&["testnet-restart"]), ["build", "testnet-restart"]);
        assert!(names(&[]).contains(&"testnet-restart"));
        assert_eq!(names(&["testnet-uefi"]), ["build", "testnet-uefi"]);
    }
}
