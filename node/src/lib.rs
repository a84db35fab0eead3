//! The cairn replica: one Internet Computer node, sans-IO.
//!
//! `node` never touches a socket, a disk, a clock or an entropy source: its driver (the
//! kernel's runtime loop, or the simulator behind the `sim` feature) hands it events and takes
//! its outputs. Everything replicated is deterministic (DESIGN.md, "Rules of the replicated
//! state machine").
//!
//! The four protocol layers of the IC are four modules here, and a lower layer never imports
//! a higher one: `p2p` < `consensus` < `routing` < `execution`. `api` and `replica` sit on top.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub mod api;
pub mod attest;
pub mod candid;
pub mod consensus;
pub mod crypto;
pub mod execution;
pub mod p2p;
pub mod replica;
pub mod routing;
#[cfg(feature = "sim")]
pub mod sim;
pub mod state;
pub mod store;
pub mod types;
