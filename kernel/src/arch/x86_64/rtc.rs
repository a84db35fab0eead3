//! The CMOS real-time clock (MC146818): wall-clock time at boot, to one second. QEMU sets it
//! from the host's UTC clock, so VMs of one testnet agree to about a second; the runtime adds
//! the TSC's monotonic nanoseconds to it.

use super::port::Port;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const STATUS_A_UPDATE_IN_PROGRESS: u8 = 0x80;
const STATUS_B_BINARY: u8 = 0x04;
const STATUS_B_24_HOUR: u8 = 0x02;
const HOUR_PM: u8 = 0x80;
/// Reads of the whole date until two agree (an update may fall between register reads).
const READ_ATTEMPTS_MAX: usize = 16;
/// Polls of the update-in-progress flag before reading anyway.
const UPDATE_WAIT_POLLS_MAX: usize = 100_000;
const SECONDS_PER_DAY: u64 = 86_400;

fn read_register(reg: u8) -> u8 {
    // SAFETY: 0x70/0x71 are the CMOS index/data ports; selecting a clock register (NMI stays
    // enabled: bit 7 clear) and reading it has no effect on memory.
    let (index, data) = unsafe { (Port::<u8>::new(0x70), Port::<u8>::new(0x71)) };
    index.write(reg);
    data.read()
}

fn read_raw() -> [u8; 6] {
    for _ in 0..UPDATE_WAIT_POLLS_MAX {
        if read_register(REG_STATUS_A) & STATUS_A_UPDATE_IN_PROGRESS == 0 {
            break;
        }
    }
    [
        read_register(REG_SECONDS),
        read_register(REG_MINUTES),
        read_register(REG_HOURS),
        read_register(REG_DAY),
        read_register(REG_MONTH),
        read_register(REG_YEAR),
    ]
}

fn from_bcd(v: u8) -> u8 {
    (v & 0x0f) + (v >> 4) * 10
}

/// Days from 1970-01-01 to the given civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u64, day: u64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy as i64;
    era * 146_097 + doe - 719_468
}

/// Seconds since the Unix epoch, or None when the RTC reads nonsense.
pub fn unix_seconds() -> Option<u64> {
    let mut last = read_raw();
    let mut raw = last;
    for _ in 0..READ_ATTEMPTS_MAX {
        raw = read_raw();
        if raw == last {
            break;
        }
        last = raw;
    }
    let status_b = read_register(REG_STATUS_B);
    let [mut sec, mut min, hour_raw, mut day, mut month, mut year] = raw;
    let pm = hour_raw & HOUR_PM != 0;
    let mut hour = hour_raw & !HOUR_PM;
    if status_b & STATUS_B_BINARY == 0 {
        sec = from_bcd(sec);
        min = from_bcd(min);
        hour = from_bcd(hour);
        day = from_bcd(day);
        month = from_bcd(month);
        year = from_bcd(year);
    }
    if status_b & STATUS_B_24_HOUR == 0 {
        hour %= 12;
        if pm {
            hour += 12;
        }
    }
    if sec > 59 || min > 59 || hour > 23 || !(1..=31).contains(&day) || !(1..=12).contains(&month) {
        return None;
    }
    let days = days_from_civil(2000 + i64::from(year), u64::from(month), u64::from(day));
    let days = u64::try_from(days).ok()?;
    Some(days * SECONDS_PER_DAY + u64::from(hour) * 3600 + u64::from(min) * 60 + u64::from(sec))
}
