//! Execution: canisters run in wasmi under the IC System API (`ic0`), the management
//! canister, and cycles.
//!
//! Spec: ic-interface.md §3. The replicated entry point is
//! [`crate::routing::StateMachine`]; this module holds the pieces it drives:
//! - `wasm`: module checks and the rewrite that makes instance state persistable;
//! - `runtime`: wasmi with fuel as the instruction counter, time slicing by resumable calls;
//! - `system_api`: every ic0 import, its contexts and traps;
//! - `stable`: stable memory;
//! - `cycles`: fees and the freezing threshold;
//! - `management`: the `aaaaa-aa` canister.

pub mod cycles;
pub mod management;
pub mod message;
pub mod runtime;
pub mod stable;
pub mod system_api;
pub mod wasm;

use alloc::vec::Vec;

use crate::types::Principal;

/// The IC's limit on instructions for one update message (20 billion).
pub const INSTRUCTIONS_PER_MESSAGE_MAX: u64 = 20_000_000_000;
/// Instructions one message may run per round before it is paused (time slicing).
pub const INSTRUCTIONS_PER_SLICE_MAX: u64 = 2_000_000_000;
/// Instructions per round across all canisters.
pub const INSTRUCTIONS_PER_ROUND_MAX: u64 = 4_000_000_000;
/// Instructions for one query.
pub const INSTRUCTIONS_PER_QUERY_MAX: u64 = 5_000_000_000;
/// Instructions for `install_code` (start + init, or pre_upgrade + start + post_upgrade).
pub const INSTRUCTIONS_PER_INSTALL_MAX: u64 = 300_000_000_000;
/// Bytes of Wasm heap memory a canister may use.
pub const WASM_MEMORY_BYTES_MAX: u64 = 4 << 30;
/// Bytes of stable memory a canister may use.
pub const STABLE_MEMORY_BYTES_MAX: u64 = 64 << 30;

/// The limits and identities execution runs with (a registry value on a real subnet).
#[derive(Clone, Debug)]
pub struct ExecutionConfig {
    pub instructions_per_message: u64,
    pub instructions_per_slice: u64,
    pub instructions_per_round: u64,
    pub instructions_per_query: u64,
    pub instructions_per_install: u64,
    pub wasm_memory_bytes_max: u64,
    pub stable_memory_bytes_max: u64,
    pub subnet_id: Principal,
    /// The subnet's root public key (DER), for `ic0.root_key_*`.
    pub root_key: Vec<u8>,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            instructions_per_message: INSTRUCTIONS_PER_MESSAGE_MAX,
            instructions_per_slice: INSTRUCTIONS_PER_SLICE_MAX,
            instructions_per_round: INSTRUCTIONS_PER_ROUND_MAX,
            instructions_per_query: INSTRUCTIONS_PER_QUERY_MAX,
            instructions_per_install: INSTRUCTIONS_PER_INSTALL_MAX,
            wasm_memory_bytes_max: WASM_MEMORY_BYTES_MAX,
            stable_memory_bytes_max: STABLE_MEMORY_BYTES_MAX,
            subnet_id: Principal::MANAGEMENT,
            root_key: Vec::new(),
        }
    }
}
