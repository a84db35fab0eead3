//! qemu: see DESIGN.md
