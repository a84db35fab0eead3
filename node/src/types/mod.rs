//! The IC's basic identifiers and quantities, shared by every layer.

mod principal;

pub use principal::{Principal, PrincipalError};
