//! The panic handler: prints the message and location, reports failure through
//! isa-debug-exit (a test harness sees status 35 at once instead of waiting for a timeout),
//! then stops the CPU.

use crate::arch::{power, serial};

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let location = info.location();
    serial::emergency_write(format_args!(
        "\nKERNEL PANIC: panicked at {}:{}: {}\n",
        location.map_or("?", |l| l.file()),
        location.map_or(0, |l| l.line()),
        info.message()
    ));
    power::fail_and_halt()
}
