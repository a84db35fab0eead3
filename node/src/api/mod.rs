//! The IC's HTTP interface (reference §1, §2, §7): CBOR envelopes, request ids, sender
//! authentication, certificates and the certified state tree, and a sans-IO HTTP/1.1 server.

pub mod auth;
pub mod cbor;
pub mod certificate;
pub mod envelope;
pub mod hash_tree;
pub mod http;
pub mod labeled_tree;
pub mod request_id;
pub mod state_tree;
