//! AMD SEV-SNP attestation: the report a node presents and the verifier governance runs.
//!
//! A node running under SEV-SNP asks the AMD secure processor for an attestation report that
//! binds its launch measurement (the SHA-384 chain over the firmware, the kernel hashes page
//! and the initial vCPU states, see [`measure`]) to 64 bytes of its choosing: the hash of its
//! public keys ([`binding`]). Governance admits the node only if [`verify::verify`] accepts:
//!
//! - the report parses ([`report`], ABI #56860 ATTESTATION_REPORT, versions 2, 3 and 5);
//! - the VCEK (or VLEK) chains to a pinned AMD root ([`roots`]) through the ASK (or ASVK),
//!   every link RSA-PSS/SHA-384 ([`cert`]), each certificate valid at the given time;
//! - the report's ECDSA P-384 signature verifies under the VCEK/VLEK key;
//! - chip_id and reported_tcb equal the VCEK's hwID and SPL extensions (Turin layout for Turin);
//! - the guest policy, VMPL and TCB satisfy the verifier's [`verify::Policy`];
//! - the measurement and report_data are the expected ones (or the verdict says they were
//!   not checked).
//!
//! The guest side's pure part, the encrypted SNP guest-message channel that carries
//! MSG_REPORT_REQ/RSP (AES-256-GCM under a VMPCK, sequence numbers, fail-closed on any error),
//! is [`guest_msg`]; the kernel drives it through the GHCB, whose protocol (MSR protocol, page
//! state changes, the SNP guest request exit, the secrets page) is [`ghcb`]. The rest of the
//! guest's machine protocols (GHCB page exits, #VC decoding, the CPUID page) are the `sev`
//! crate's.
//!
//! Everything here is pure computation over byte slices: no clock (the time is a parameter),
//! no I/O, no panics on input bytes.

pub mod binding;
pub mod cert;
pub mod ghcb;
pub mod guest_msg;
pub mod measure;
#[cfg(test)]
mod no_fake;
pub mod report;
pub mod roots;
pub mod verify;

pub use report::{AttestationReport, Product, ReportError, Tcb};
pub use roots::TrustAnchors;
pub use verify::{verify, Check, CheckId, Outcome, Policy, Verdict, VerifyOptions};
