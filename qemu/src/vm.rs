//! A running QEMU guest.
//!
//! Guarantees:
//! - every run has an overall time limit: a watchdog thread kills QEMU when it passes, and every
//!   wait returns by then at the latest, so a hung guest fails a test instead of blocking it;
//! - the VM is killed when the handle is dropped, and (through `PR_SET_PDEATHSIG`) when the
//!   thread that spawned it dies, so no QEMU outlives its test;
//! - the serial console is written, byte for byte, to a log file, optionally echoed to the
//!   caller's stdout as it arrives, and kept line by line (the last [`MAX_CONSOLE_LINES`]) with
//!   the host time since spawn at which each line arrived, which is what boot timing measures.

use crate::{ExitOutcome, LinePattern, QemuCommand};
use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Console lines kept in memory per VM (the log file has all of them).
pub const MAX_CONSOLE_LINES: usize = 20_000;
/// Bytes of QEMU's own stderr kept in memory per VM.
pub const MAX_STDERR_BYTES: usize = 64 * 1024;
/// How often exit polling looks at the process.
const EXIT_POLL_INTERVAL_MS: u64 = 10;

/// Where console lines go besides the log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Echo {
    /// Only the log file and the handle.
    Quiet,
    /// Also print each line to stdout, after `prefix` (e.g. `"[node0] "` or `""`).
    Stdout { prefix: String },
}

/// How one VM run is supervised.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// A short name for messages.
    pub name: String,
    /// The serial console log; parent directories are created.
    pub log_path: PathBuf,
    pub echo: Echo,
    /// The overall limit for the run, from spawn. There is no way to run without one.
    pub timeout: Duration,
}

/// One console line and when the host received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    /// Host time from spawn to the arrival of the line's end.
    pub at: Duration,
}

/// Why a VM operation failed.
#[derive(Debug)]
pub enum VmError {
    /// The log file could not be created or QEMU could not be started.
    Spawn { command: String, error: io::Error },
    /// The awaited line did not arrive in time (or before the run's overall limit).
    Timeout {
        name: String,
        waiting_for: String,
        after: Duration,
    },
    /// QEMU exited while a line was awaited.
    Exited {
        name: String,
        waiting_for: String,
        outcome: ExitOutcome,
        after: Duration,
    },
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::Spawn { command, error } => write!(f, "cannot start `{command}`: {error}"),
            VmError::Timeout {
                name,
                waiting_for,
                after,
            } => {
                write!(
                    f,
                    "{name}: timed out after {:.1} s waiting for {waiting_for}",
                    after.as_secs_f64()
                )
            }
            VmError::Exited {
                name,
                waiting_for,
                outcome,
                after,
            } => write!(
                f,
                "{name}: QEMU ended ({outcome}) after {:.1} s while waiting for {waiting_for}",
                after.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for VmError {}

/// A running QEMU process with its console.
pub struct Vm {
    name: String,
    command_line: String,
    log_path: PathBuf,
    child: Arc<Mutex<Child>>,
    started: Instant,
    deadline: Instant,
    lines: Receiver<Line>,
    console: VecDeque<Line>,
    stderr: Arc<Mutex<Vec<u8>>>,
    watchdog_cancel: Option<Sender<()>>,
    watchdog_fired: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    outcome: Option<ExitOutcome>,
}

impl Vm {
    /// Start QEMU as `command` describes, supervised as `config` says.
    pub fn spawn(command: &QemuCommand, config: RunConfig) -> Result<Vm, VmError> {
        let command_line = command.display();
        let spawn_error = |error| VmError::Spawn {
            command: command_line.clone(),
            error,
        };
        if let Some(dir) = config.log_path.parent() {
            std::fs::create_dir_all(dir).map_err(spawn_error)?;
        }
        let log = File::create(&config.log_path).map_err(spawn_error)?;
        let mut cmd = command.to_command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Own process group: a Ctrl-C at the terminal reaches the supervisor, which then stops
        // QEMU itself, instead of racing it.
        cmd.process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2) and
        // getppid(2), which are async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let stdout = child.stdout.take();
        let stderr_pipe = child.stderr.take();
        let child = Arc::new(Mutex::new(child));

        let (line_tx, lines) = mpsc::channel();
        let mut threads = Vec::new();
        if let Some(out) = stdout {
            let echo = config.echo.clone();
            threads.push(thread::spawn(move || {
                read_console(out, log, echo, started, line_tx)
            }));
        }
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(err) = stderr_pipe {
            let sink = Arc::clone(&stderr);
            let echo = config.echo != Echo::Quiet;
            threads.push(thread::spawn(move || read_stderr(err, sink, echo)));
        }
        let (cancel_tx, cancel_rx) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        {
            let child = Arc::clone(&child);
            let fired = Arc::clone(&fired);
            let limit = config.timeout;
            threads.push(thread::spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = cancel_rx.recv_timeout(limit) {
                    fired.store(true, Ordering::SeqCst);
                    if let Ok(mut child) = child.lock() {
                        let _ = child.kill();
                    }
                }
            }));
        }
        Ok(Vm {
            name: config.name,
            command_line,
            log_path: config.log_path,
            child,
            started,
            deadline: started + config.timeout,
            lines,
            console: VecDeque::new(),
            stderr,
            watchdog_cancel: Some(cancel_tx),
            watchdog_fired: fired,
            threads,
            outcome: None,
        })
    }

    /// Wait until a console line matches `pattern`, for at most `timeout` (and never past the
    /// run's overall limit). Lines before it are kept in [`Vm::console`].
    pub fn wait_for(&mut self, pattern: &LinePattern, timeout: Duration) -> Result<Line, VmError> {
        let until = (Instant::now() + timeout).min(self.deadline);
        loop {
            let remaining = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(remaining) {
                Ok(line) => {
                    let hit = pattern.matches(&line.text);
                    self.remember(line.clone());
                    if hit {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(VmError::Timeout {
                        name: self.name.clone(),
                        waiting_for: pattern.to_string(),
                        after: self.started.elapsed(),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let outcome = self.reap(until);
                    return Err(match outcome {
                        Some(outcome) => VmError::Exited {
                            name: self.name.clone(),
                            waiting_for: pattern.to_string(),
                            outcome,
                            after: self.started.elapsed(),
                        },
                        None => VmError::Timeout {
                            name: self.name.clone(),
                            waiting_for: pattern.to_string(),
                            after: self.started.elapsed(),
                        },
                    });
                }
            }
        }
    }

    /// Wait for QEMU to exit by itself, for at most `timeout` (and never past the run's overall
    /// limit); on timeout the VM is killed and the error says so.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitOutcome, VmError> {
        let until = (Instant::now() + timeout).min(self.deadline);
        loop {
            let remaining = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(remaining) {
                Ok(line) => self.remember(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    return Err(VmError::Timeout {
                        name: self.name.clone(),
                        waiting_for: "QEMU to exit".into(),
                        after: self.started.elapsed(),
                    });
                }
            }
        }
        match self.reap(until) {
            Some(outcome) if !self.watchdog_fired.load(Ordering::SeqCst) => Ok(outcome),
            _ => {
                self.kill();
                Err(VmError::Timeout {
                    name: self.name.clone(),
                    waiting_for: "QEMU to exit".into(),
                    after: self.started.elapsed(),
                })
            }
        }
    }

    /// The exit outcome if QEMU has already ended; never blocks. Also takes in console lines.
    pub fn poll_exit(&mut self) -> Option<ExitOutcome> {
        while let Ok(line) = self.lines.try_recv() {
            self.remember(line);
        }
        if self.outcome.is_none() {
            let status = self
                .child
                .lock()
                .ok()
                .and_then(|mut c| c.try_wait().ok().flatten());
            self.outcome = status.map(ExitOutcome::from_status);
        }
        self.outcome
    }

    /// Stop QEMU now (SIGKILL) and reap it. Idempotent.
    pub fn kill(&mut self) {
        if self.outcome.is_some() {
            return;
        }
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.outcome = Some(ExitOutcome::from_status(status));
            }
        }
    }

    /// QEMU's process id, while it runs.
    pub fn pid(&mut self) -> Option<u32> {
        if self.poll_exit().is_some() {
            return None;
        }
        self.child.lock().ok().map(|c| c.id())
    }

    /// Freeze the whole VM (SIGSTOP to QEMU): the guest's clock, network and disk stand still
    /// until [`Vm::resume`]. The run's overall time limit keeps counting.
    pub fn pause(&mut self) -> io::Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Let a paused VM run again (SIGCONT).
    pub fn resume(&mut self) -> io::Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&mut self, signal: libc::c_int) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other(format!("{}: QEMU is not running", self.name)))?;
        let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
        // SAFETY: kill(2) with a pid this handle spawned and has not reaped yet (poll_exit above
        // saw it running and only this handle reaps it), so the pid names our QEMU.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the run has reached its overall time limit (the VM is then killed, if it was
    /// not already gone).
    pub fn timed_out(&self) -> bool {
        self.watchdog_fired.load(Ordering::SeqCst) || Instant::now() >= self.deadline
    }

    /// The console lines received so far (the newest [`MAX_CONSOLE_LINES`]).
    pub fn console(&mut self) -> &VecDeque<Line> {
        while let Ok(line) = self.lines.try_recv() {
            self.remember(line);
        }
        &self.console
    }

    /// The console so far as text, for error messages.
    pub fn console_text(&mut self) -> String {
        let mut text = String::new();
        for line in self.console() {
            text.push_str(&line.text);
            text.push('\n');
        }
        text
    }

    /// What QEMU itself printed on stderr (warnings, errors), lossily decoded.
    pub fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Host time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn remember(&mut self, line: Line) {
        if self.console.len() == MAX_CONSOLE_LINES {
            self.console.pop_front();
        }
        self.console.push_back(line);
    }

    /// Wait (polling) for the process to end, until `until`.
    fn reap(&mut self, until: Instant) -> Option<ExitOutcome> {
        loop {
            if let Some(outcome) = self.poll_exit() {
                return Some(outcome);
            }
            if Instant::now() >= until {
                return None;
            }
            thread::sleep(Duration::from_millis(EXIT_POLL_INTERVAL_MS));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        // Dropping the sender wakes the watchdog, which then exits without killing anything.
        self.watchdog_cancel.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Copy the console to the log file, split it into lines and pass them on.
fn read_console(out: impl Read, mut log: File, echo: Echo, started: Instant, tx: Sender<Line>) {
    let mut reader = BufReader::new(out);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let at = started.elapsed();
        let _ = log.write_all(&raw);
        let _ = log.flush();
        let text = String::from_utf8_lossy(&raw);
        let text = text.trim_end_matches(['\n', '\r']).replace('\r', "");
        if let Echo::Stdout { prefix } = &echo {
            let mut stdout = io::stdout().lock();
            let _ = writeln!(stdout, "{prefix}{text}");
            let _ = stdout.flush();
        }
        // The receiver may be gone (the handle is being dropped); keep draining the pipe.
        let _ = tx.send(Line { text, at });
    }
}

fn read_stderr(mut err: impl Read, sink: Arc<Mutex<Vec<u8>>>, echo: bool) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match err.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if echo {
            let _ = io::stderr().write_all(&buf[..n]);
        }
        if let Ok(mut kept) = sink.lock() {
            let room = MAX_STDERR_BYTES.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
    }
}
