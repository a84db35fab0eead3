//! Cryptography for every role of DESIGN.md's "Crypto roles" table.

pub mod bls;
pub mod dealer;
pub mod ed25519;
pub mod multisig;
pub mod threshold;
