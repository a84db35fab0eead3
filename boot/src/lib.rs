//! boot: entry points, early page tables, linker script, BootInfo.
#![no_std]
