//! No software path can make a report governance accepts.
//!
//! A node without SEV-SNP produces no report (the kernel says "tee: none"). These tests take
//! every way software could fake one instead and check that [`super::verify`] refuses it:
//! a real AMD report whose report_data is swapped for the node's keys hash, a report made from
//! scratch and signed with a software P-384 key, presented with the real VCEK or with another
//! chip's VCEK, a zero signature, and a report delivered through the guest-request path by a
//! hypervisor that plays the secure processor (it can seal whatever it likes under a VMPCK it
//! knows; the channel's authentication says nothing about AMD having signed the report).

use p384::ecdsa::signature::hazmat::PrehashSigner;
use p384::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha384};

use super::binding::report_data_for_keys;
use super::ghcb::{request_report, Ghcb, GuestRequestPages, Hypervisor};
use super::guest_msg::GuestChannel;
use super::report::{REPORT_SIZE_BYTES, SIGNED_REGION_END_BYTES};
use super::{verify, CheckId, Outcome, TrustAnchors, VerifyOptions};

const MILAN_REPORT: &[u8] =
    include_bytes!("../../../../shared/testdata/sev-snp/milan-v2-virtee/report.bin");
const MILAN_VCEK: &[u8] =
    include_bytes!("../../../../shared/testdata/sev-snp/milan-v2-virtee/vcek.der");
const OTHER_CHIP_VCEK: &[u8] =
    include_bytes!("../../../../shared/testdata/sev-snp/milan-v3-oak-oc-release/vcek.der");
const SIGNATURE_R_OFFSET: usize = 0x2A0;
const SIGNATURE_S_OFFSET: usize = 0x2E8;

fn node_report_data() -> [u8; 64] {
    report_data_for_keys(&[0x11; 32], &[("node_tls_p256", &[0x22; 65])]).unwrap()
}

fn options() -> VerifyOptions {
    VerifyOptions {
        report_data: Some(node_report_data()),
        // Certificate validity is not what these tests are about.
        now_unix_s: None,
        ..VerifyOptions::default()
    }
}

fn report_with_node_data() -> [u8; REPORT_SIZE_BYTES] {
    let mut report = [0u8; REPORT_SIZE_BYTES];
    report.copy_from_slice(MILAN_REPORT);
    report[0x50..0x90].copy_from_slice(&node_report_data());
    report
}

/// Signs the report's signed area with a software key, in the report's little-endian
/// R ‖ S layout (72 bytes each).
fn software_signed(mut report: [u8; REPORT_SIZE_BYTES]) -> [u8; REPORT_SIZE_BYTES] {
    let key = SigningKey::from_bytes(&[0x5A; 48].into()).unwrap();
    let digest = Sha384::digest(&report[..SIGNED_REGION_END_BYTES]);
    let signature: Signature = key.sign_prehash(&digest).unwrap();
    let bytes = signature.to_bytes();
    report[SIGNATURE_R_OFFSET..SIGNATURE_R_OFFSET + 144].fill(0);
    for (i, b) in bytes[..48].iter().rev().enumerate() {
        report[SIGNATURE_R_OFFSET + i] = *b;
    }
    for (i, b) in bytes[48..].iter().rev().enumerate() {
        report[SIGNATURE_S_OFFSET + i] = *b;
    }
    report
}

fn assert_refused(report: &[u8], vcek: &[u8], why: &str) {
    let anchors = TrustAnchors::pinned_amd().unwrap();
    let verdict = verify(report, vcek, &anchors, &options());
    assert!(!verdict.accepted(), "{why}: accepted\n{verdict}");
}

#[test]
fn the_real_report_verifies_until_software_touches_it() {
    // Sanity: the unmodified report passes every check it makes except report_data, which
    // is not the node's keys hash.
    let anchors = TrustAnchors::pinned_amd().unwrap();
    let verdict = verify(MILAN_REPORT, MILAN_VCEK, &anchors, &options());
    assert_eq!(
        verdict.outcome(CheckId::ReportSignature),
        Some(Outcome::Pass)
    );
    assert!(!verdict.accepted());
    // Swapping in the node's keys hash breaks AMD's signature.
    let swapped = report_with_node_data();
    let verdict = verify(&swapped, MILAN_VCEK, &anchors, &options());
    assert_eq!(
        verdict.outcome(CheckId::ReportSignature),
        Some(Outcome::Fail)
    );
    assert!(!verdict.accepted());
}

#[test]
fn software_signed_reports_are_refused() {
    let forged = software_signed(report_with_node_data());
    assert_refused(&forged, MILAN_VCEK, "software key, real VCEK");
    assert_refused(
        &forged,
        OTHER_CHIP_VCEK,
        "software key, another chip's VCEK",
    );
    let mut zero_signature = report_with_node_data();
    zero_signature[SIGNATURE_R_OFFSET..SIGNATURE_R_OFFSET + 144].fill(0);
    assert_refused(&zero_signature, MILAN_VCEK, "zero signature");
    assert_refused(&[0u8; REPORT_SIZE_BYTES], MILAN_VCEK, "all-zero report");
}

/// A hypervisor that plays the secure processor: it knows the VMPCK (a software "TEE"
/// would) and answers every guest request with a report of its making.
struct PlayActingPsp {
    report: [u8; REPORT_SIZE_BYTES],
}

impl Hypervisor for PlayActingPsp {
    fn msr_protocol(&mut self, _request: u64) -> u64 {
        0
    }

    fn vmgexit(&mut self, ghcb: &mut Ghcb, pages: &mut GuestRequestPages<'_>) {
        use aes_gcm::aead::{AeadInOut, KeyInit};
        // Success: SW_EXITINFO1 and SW_EXITINFO2 zero.
        ghcb.0[super::ghcb::offset::SW_EXIT_INFO_1..super::ghcb::offset::SW_EXIT_INFO_2 + 8]
            .fill(0);
        let seq = u64::from_le_bytes(pages.request[0x20..0x28].try_into().unwrap()) + 1;
        let mut payload = [0u8; 32 + REPORT_SIZE_BYTES];
        payload[4..8].copy_from_slice(&(REPORT_SIZE_BYTES as u32).to_le_bytes());
        payload[32..].copy_from_slice(&self.report);
        let page = &mut *pages.response;
        page.fill(0);
        page[0x20..0x28].copy_from_slice(&seq.to_le_bytes());
        page[0x30..0x34].copy_from_slice(&[1, 1, 0x60, 0]);
        page[0x34] = 6;
        page[0x35] = 1;
        page[0x36..0x38].copy_from_slice(&(payload.len() as u16).to_le_bytes());
        let (header, body) = page.split_at_mut(0x60);
        let ciphertext = &mut body[..payload.len()];
        ciphertext.copy_from_slice(&payload);
        let mut iv = [0u8; 12];
        iv[..8].copy_from_slice(&seq.to_le_bytes());
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        let tag = aes_gcm::Aes256Gcm::new(&key.into())
            .encrypt_inout_detached(&iv.into(), &header[0x30..], ciphertext.into())
            .unwrap();
        header[..16].copy_from_slice(&tag);
    }
}

#[test]
fn a_report_from_a_play_acting_secure_processor_is_refused() {
    for report in [
        report_with_node_data(),
        software_signed(report_with_node_data()),
    ] {
        let mut hv = PlayActingPsp { report };
        let mut channel = GuestChannel::new(&core::array::from_fn(|i| i as u8), 0, 0).unwrap();
        let mut request = [0u8; 4096];
        let mut response = [0u8; 4096];
        let mut pages = GuestRequestPages {
            request: &mut request,
            request_gpa: 0x1000,
            response: &mut response,
            response_gpa: 0x2000,
        };
        let mut ghcb = Ghcb::default();
        // The guest side accepts the exchange: the channel only proves the VMPCK holder
        // answered...
        let got = request_report(
            &mut hv,
            &mut ghcb,
            &mut pages,
            &mut channel,
            &node_report_data(),
            0,
        )
        .unwrap();
        assert_eq!(got, report);
        // ...and governance refuses the report, because AMD did not sign it.
        assert_refused(&got, MILAN_VCEK, "play-acting secure processor");
    }
}
