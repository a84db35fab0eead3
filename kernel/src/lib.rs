//! kernel placeholder: replaced by the kernel work.
#![no_std]
