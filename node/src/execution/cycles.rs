//! Cycles: the fees the subnet charges (the IC's published fees for a 13-node application
//! subnet) and the freezing threshold arithmetic. All integer arithmetic on u128.

/// Fee for creating a canister.
pub const CANISTER_CREATION_FEE_CYCLES: u128 = 500_000_000_000;
/// Base fee for executing an update message.
pub const UPDATE_MESSAGE_EXECUTION_FEE_CYCLES: u128 = 5_000_000;
/// Fee per 10 executed instructions.
pub const TEN_UPDATE_INSTRUCTIONS_EXECUTION_FEE_CYCLES: u128 = 4;
/// Fee for sending an inter-canister call (and for its response).
pub const XNET_CALL_FEE_CYCLES: u128 = 260_000;
/// Fee per byte of an inter-canister call payload.
pub const XNET_BYTE_TRANSMISSION_FEE_CYCLES: u128 = 1_000;
/// Fee for receiving an ingress message.
pub const INGRESS_MESSAGE_RECEPTION_FEE_CYCLES: u128 = 1_200_000;
/// Fee per byte of an ingress message.
pub const INGRESS_BYTE_RECEPTION_FEE_CYCLES: u128 = 2_000;
/// Storage fee per GiB per second.
pub const GIB_STORAGE_PER_SECOND_FEE_CYCLES: u128 = 127_000;
/// Default freezing threshold of a new canister.
pub const DEFAULT_FREEZING_THRESHOLD_SECONDS: u64 = 2_592_000;
/// Cycles a canister gets from `provisional_create_canister_with_cycles` without an amount.
pub const DEFAULT_PROVISIONAL_CYCLES: u128 = 100_000_000_000_000;

const NANOS_PER_SECOND: u128 = 1_000_000_000;
const BYTES_PER_GIB: u128 = 1 << 30;

/// Cycles for `instructions` executed instructions (prepaid before and refunded after).
pub fn execution_cost(instructions: u64) -> u128 {
    UPDATE_MESSAGE_EXECUTION_FEE_CYCLES
        + (instructions as u128 / 10) * TEN_UPDATE_INSTRUCTIONS_EXECUTION_FEE_CYCLES
}

/// Storage fee for holding `bytes` for `duration_ns`.
pub fn storage_cost(bytes: u64, duration_ns: u64) -> u128 {
    (bytes as u128) * GIB_STORAGE_PER_SECOND_FEE_CYCLES * duration_ns as u128
        / (BYTES_PER_GIB * NANOS_PER_SECOND)
}

/// Cycles burned per day by a canister holding `bytes` (canister_status reports it).
pub fn idle_cycles_per_day(bytes: u64) -> u128 {
    storage_cost(bytes, 86_400 * NANOS_PER_SECOND as u64)
}

/// The balance below which a canister is frozen: enough to keep its memory for the
/// freezing threshold.
pub fn freezing_threshold_cycles(bytes: u64, threshold_seconds: u64) -> u128 {
    storage_cost(
        bytes,
        threshold_seconds.saturating_mul(NANOS_PER_SECOND as u64),
    )
}
