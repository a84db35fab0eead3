//! The IC's HTTP interface (reference §1, §2, §7): CBOR envelopes, request ids, sender
//! authentication, certificates and the certified state tree, and a sans-IO HTTP/1.1 server.
//!
//! | module | what it guarantees |
//! |---|---|
//! | `cbor` | bounded decoding (depth, lengths, no trailing bytes), shortest-head writer |
//! | `request_id` | the representation-independent hash; reproduces every spec vector |
//! | `hash_tree` | wire hash trees: reconstruct, encode, the spec's `lookup_path` |
//! | `labeled_tree` | node-side trees with cached digests; witnesses that prove absence |
//! | `certificate` | parse, verify (delegation, ranges, BLS), build; mainnet certificates pass |
//! | `envelope` | typed call/query/read_state requests with every CDDL bound checked |
//! | `auth` | Ed25519, P-256, secp256k1, canister signatures, delegation chains, expiry |
//! | `state_tree` | the spec's state tree layout and one height's `CertifiedState` |
//! | `http` | HTTP/1.1 framing with size limits, endpoint routes |
//! | `metrics` | `GET /metrics` in the Prometheus text format (node operations, not the IC's) |
//! | `server` | `HttpApi` (the sans-IO server) and `ApiBackend` (what the replica provides) |
//!
//! How the replica plugs in:
//! 1. It implements [`ApiBackend`]: `submit_ingress` puts the message into the ingress pool
//!    (and gossips `IngressMessage::envelope`, which other nodes decode and authenticate
//!    again with `envelope::Envelope::decode` + `auth::authenticate`); `query` runs the
//!    query on the newest state; `certified_state` returns the newest [`CertifiedState`];
//!    `sign_with_node_key` signs with the node's Ed25519 key; `root_key_der`, `subnet_id`
//!    (= `SA(root key DER)` on a single subnet) and `canister_ranges` come from the registry.
//! 2. Per height, state/routing build the tree with [`StateTreeBuilder`] (time, request
//!    statuses, canisters, subnet with node keys), each node signs
//!    `certificate::state_root_message(root)` with its threshold share, `n−f` shares are
//!    combined by consensus, and the combined signature makes the height's
//!    `CertifiedState { tree, signature, delegation: None }`. `data_certificate` of a canister
//!    comes from `CertifiedState::data_certificate`.
//! 3. The runtime owns the sockets: `connect`, `receive(bytes)`, `disconnect`, sends
//!    `take_outputs()` (closing where `close` is set), and calls `poll(now)` at
//!    `next_deadline_ns()` and after every newly certified height (parked v3/v4 calls finish
//!    then). Time is UTC nanoseconds from the node's clock.

pub mod auth;
pub mod cbor;
pub mod certificate;
pub mod envelope;
pub mod hash_tree;
pub mod http;
pub mod labeled_tree;
pub mod metrics;
pub mod request_id;
pub mod server;
pub mod state_tree;

pub use metrics::{Metric, MetricKind};
pub use server::{
    ApiBackend, ApiConfig, ConnId, HttpApi, IngressMessage, Output, Reject, ReplicaHealth,
};
pub use state_tree::{CanisterEntry, CertifiedState, RequestStatus, StateTreeBuilder, SubnetEntry};
