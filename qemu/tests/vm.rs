//! The VM handle against stand-in "QEMU" programs (shell scripts) and the real QEMU.

use qemu::{Echo, ExitOutcome, LinePattern, QemuCommand, RunConfig, Vm, VmError};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cairn-qemu-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A QEMU stand-in: a shell script that ignores its arguments and runs `body`.
///
/// A child process writes the script, never this one: a test thread that forks while this
/// process holds the script open for writing would pass that descriptor to its child until
/// the child's exec, and executing the script meanwhile fails with ETXTBSY ("Text file
/// busy"), as `drop_kills_the_process` once did.
fn fake_qemu(name: &str, body: &str) -> (QemuCommand, RunConfig) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = scratch(name);
    let script = dir.join("fake-qemu");
    let mut writer = Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(&script)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    stdin
        .write_all(format!("#!/bin/sh\n{body}\n").as_bytes())
        .unwrap();
    drop(stdin);
    assert!(writer.wait().unwrap().success(), "writing {script:?}");
    let mut cmd = QemuCommand::pvh("/nonexistent");
    cmd.binary = script;
    let config = RunConfig {
        name: name.into(),
        log_path: dir.join("console.log"),
        echo: Echo::Quiet,
        timeout: Duration::from_secs(20),
    };
    (cmd, config)
}

#[test]
fn lines_are_captured_logged_and_exit_code_mapped() {
    let (cmd, config) = fake_qemu(
        "pass",
        "printf 'boot\\r\\ncairn: ready in 5 ms\\n'; echo 'clock-check 1'; exit 33",
    );
    let log = config.log_path.clone();
    let mut vm = Vm::spawn(&cmd, config).unwrap();
    let line = vm
        .wait_for(
            &LinePattern::substring("cairn: ready"),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(line.text, "cairn: ready in 5 ms");
    let clock = LinePattern::regex(r"^clock-check \d+$").unwrap();
    assert_eq!(
        vm.wait_for(&clock, Duration::from_secs(10)).unwrap().text,
        "clock-check 1"
    );
    assert_eq!(
        vm.wait_exit(Duration::from_secs(10)).unwrap(),
        ExitOutcome::Pass
    );
    assert_eq!(
        vm.console_text(),
        "boot\ncairn: ready in 5 ms\nclock-check 1\n"
    );
    let logged = std::fs::read_to_string(log).unwrap();
    assert_eq!(logged, "boot\r\ncairn: ready in 5 ms\nclock-check 1\n");
}

#[test]
fn failure_exit_while_waiting_is_reported_with_the_console() {
    let (cmd, config) = fake_qemu(
        "fail",
        "echo 'panicked at kernel/src/main.rs:1:1: boom'; exit 35",
    );
    let mut vm = Vm::spawn(&cmd, config).unwrap();
    let err = vm
        .wait_for(
            &LinePattern::substring("cairn: ready"),
            Duration::from_secs(10),
        )
        .unwrap_err();
    match err {
        VmError::Exited { outcome, .. } => assert_eq!(outcome, ExitOutcome::Fail),
        other => panic!("unexpected {other}"),
    }
    assert!(vm.console_text().contains("boom"));
}

#[test]
fn a_hung_guest_is_killed_at_the_overall_limit() {
    let (cmd, mut config) = fake_qemu("hang", "echo started; exec sleep 600");
    config.timeout = Duration::from_secs(2);
    let start = Instant::now();
    let mut vm = Vm::spawn(&cmd, config).unwrap();
    // Asked to wait far longer than the run's limit: the limit wins.
    let err = vm
        .wait_for(&LinePattern::substring("never"), Duration::from_secs(300))
        .unwrap_err();
    assert!(matches!(err, VmError::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(vm.wait_exit(Duration::from_secs(300)).is_err());
    assert!(vm.timed_out());
    assert_eq!(vm.console_text(), "started\n");
}

#[test]
fn drop_kills_the_process() {
    let (cmd, config) = fake_qemu("drop", "echo $$; exec sleep 600");
    let mut vm = Vm::spawn(&cmd, config).unwrap();
    let pid = vm
        .wait_for(
            &LinePattern::regex(r"^\d+$").unwrap(),
            Duration::from_secs(10),
        )
        .unwrap();
    let proc_dir = PathBuf::from(format!("/proc/{}", pid.text));
    assert!(proc_dir.exists());
    drop(vm);
    assert!(!proc_dir.exists(), "the process outlived its handle");
}

#[test]
fn real_qemu_reports_a_missing_kernel_as_a_qemu_error() {
    let dir = scratch("real");
    let cmd = QemuCommand::pvh(dir.join("missing.elf"));
    let config = RunConfig {
        name: "real".into(),
        log_path: dir.join("console.log"),
        echo: Echo::Quiet,
        timeout: Duration::from_secs(30),
    };
    let mut vm = Vm::spawn(&cmd, config).unwrap();
    assert_eq!(
        vm.wait_exit(Duration::from_secs(30)).unwrap(),
        ExitOutcome::Unexpected(1)
    );
    assert!(
        vm.stderr_text().contains("missing.elf"),
        "{}",
        vm.stderr_text()
    );
}
