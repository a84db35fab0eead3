//! The IC's HTTP interface (reference §1, §2, §7): CBOR envelopes, request ids, sender
//! authentication, certificates and the certified state tree, and a sans-IO HTTP/1.1 server.

pub mod cbor;
pub mod certificate;
pub mod hash_tree;
pub mod labeled_tree;
pub mod request_id;
