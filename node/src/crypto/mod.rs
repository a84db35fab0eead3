//! Cryptography for every role of DESIGN.md's "Crypto roles" table.

pub mod bls;
