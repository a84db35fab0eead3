//! A `log` backend on the serial console: `[seconds.micros] LEVEL message`, the time being the
//! monotonic clock (zero until it is calibrated).

use crate::arch;
use log::{Level, LevelFilter, Log, Metadata, Record};

struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

impl Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= Level::Info
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let ns = arch::clock::now_ns();
        arch::serial::write_fmt(format_args!(
            "[{:5}.{:06}] {:<5} {}\n",
            ns / 1_000_000_000,
            (ns / 1_000) % 1_000_000,
            record.level(),
            record.args()
        ));
    }

    fn flush(&self) {}
}

/// Installs the logger (idempotent).
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}
