//! SNP guest messages: the encrypted channel between a guest and the AMD secure processor.
//!
//! A guest asks the firmware for an attestation report by writing an encrypted request into a
//! shared page and exiting to the hypervisor (GHCB NAE `SNP_GUEST_REQUEST`, exit code
//! `0x8000_0011`), which forwards it to the secure processor; the response comes back the same
//! way. The hypervisor sees both pages, so both are sealed with AES-256-GCM under a VM
//! platform communication key (VMPCK0..3, from the secrets page). This module is the pure part:
//! page layout, sealing, opening, sequence numbers and the report request/response payloads.
//! The kernel (`kernel/src/tee`) owns the pages, the GHCB exit and the secrets page.
//!
//! Message layout (ABI #56860 chapter 7, "Message Header Format"; Linux
//! `drivers/virt/coco/sev-guest/sev-guest.h` `struct snp_guest_msg_hdr`):
//!
//! ```text
//!  off  size  field
//!  0x00  32   auth_tag (the 16-byte GCM tag, then 16 zero bytes)
//!  0x20   8   msg_seqno: the AEAD IV (8 bytes little-endian ‖ 4 zero bytes)
//!  0x28   8   reserved
//!  0x30   1   algo (1 = AES-256-GCM)            ┐
//!  0x31   1   hdr_version (1)                   │
//!  0x32   2   hdr_size (0x60)                   │ authenticated, not encrypted
//!  0x34   1   msg_type                          │ (the AAD: bytes 0x30..0x60)
//!  0x35   1   msg_version                       │
//!  0x36   2   msg_size                          │
//!  0x38   4   reserved                          │
//!  0x3C   1   msg_vmpck                         │
//!  0x3D  35   reserved                          ┘
//!  0x60  ≤4000 payload (ciphertext)
//! ```
//!
//! Sequence numbers: each VMPCK has one counter shared by guest and firmware. A request uses
//! `last + 1`, the response must carry `last + 2`, and only then does the counter advance by
//! two. If anything goes wrong after a request was sealed, the guest cannot know whether the
//! firmware consumed it, and reusing an IV under AES-GCM would give the hypervisor the key's
//! authentication subkey; so any failure disables the channel and wipes the key, as Linux's
//! `snp_disable_vmpck` and Oak's `oak_sev_guest::crypto` do.

use core::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::Zeroize;

use super::report::REPORT_SIZE_BYTES;

/// A guest message occupies one 4 KiB page.
pub const GUEST_MESSAGE_PAGE_BYTES: usize = 4096;
/// Size of the message header.
pub const GUEST_MESSAGE_HEADER_BYTES: usize = 0x60;
/// Largest payload (the rest of the page, minus what the spec reserves).
pub const MAX_GUEST_PAYLOAD_BYTES: usize = 4000;
/// `algo` for AES-256-GCM.
pub const AEAD_ALGO_AES_256_GCM: u8 = 1;
/// The header version this module speaks.
pub const GUEST_MESSAGE_HEADER_VERSION: u8 = 1;
/// Size of a VMPCK in bytes.
pub const VMPCK_BYTES: usize = 32;
/// Number of VMPCKs (one per VMPL).
pub const VMPCK_COUNT: u8 = 4;
/// Size of MSG_REPORT_REQ (ABI #56860 Table 22 in Oak's revision).
pub const REPORT_REQUEST_BYTES: usize = 96;
/// Size of the MSG_REPORT_RSP prefix before the report (status, size, reserved).
pub const REPORT_RESPONSE_HEADER_BYTES: usize = 32;
/// Size of MSG_REPORT_RSP (Table 25): header plus one report.
pub const REPORT_RESPONSE_BYTES: usize = REPORT_RESPONSE_HEADER_BYTES + REPORT_SIZE_BYTES;
/// Message version of MSG_REPORT_REQ this module sends.
pub const REPORT_MESSAGE_VERSION: u8 = 1;

const TAG_BYTES: usize = 16;
const IV_BYTES: usize = 12;
const OFF_SEQNO: usize = 0x20;
const OFF_AAD: usize = 0x30;
const OFF_ALGO: usize = 0x30;
const OFF_HDR_VERSION: usize = 0x31;
const OFF_HDR_SIZE: usize = 0x32;
const OFF_MSG_TYPE: usize = 0x34;
const OFF_MSG_VERSION: usize = 0x35;
const OFF_MSG_SIZE: usize = 0x36;
const OFF_MSG_VMPCK: usize = 0x3C;

/// Guest message types (ABI #56860 "Message Type Encodings").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// MSG_CPUID_REQ.
    CpuidRequest = 1,
    /// MSG_CPUID_RSP.
    CpuidResponse = 2,
    /// MSG_KEY_REQ.
    KeyRequest = 3,
    /// MSG_KEY_RSP.
    KeyResponse = 4,
    /// MSG_REPORT_REQ.
    ReportRequest = 5,
    /// MSG_REPORT_RSP.
    ReportResponse = 6,
}

impl MessageType {
    /// The response type that answers this request type (`None` for a response type).
    pub fn response(self) -> Option<MessageType> {
        match self {
            MessageType::CpuidRequest => Some(MessageType::CpuidResponse),
            MessageType::KeyRequest => Some(MessageType::KeyResponse),
            MessageType::ReportRequest => Some(MessageType::ReportResponse),
            _ => None,
        }
    }
}

/// Why a guest message could not be sealed or opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMsgError {
    /// The VMPCK index is not 0..=3.
    BadVmpckId(u8),
    /// The channel was disabled by an earlier failure (its key is wiped).
    Disabled,
    /// A request is already outstanding.
    RequestPending,
    /// No request is outstanding, so no response is expected.
    NoRequestPending,
    /// The message type is not a request type.
    NotARequest,
    /// The payload exceeds [`MAX_GUEST_PAYLOAD_BYTES`] or the caller's buffer.
    PayloadTooLarge,
    /// The sequence number space is exhausted.
    SequenceExhausted,
    /// The response header (algo, version, size, type, VMPCK) is not what was asked for.
    BadHeader,
    /// The response's sequence number is not the request's plus one.
    SequenceMismatch {
        /// The expected value.
        expected: u64,
        /// The value found.
        got: u64,
    },
    /// The AES-GCM tag does not verify.
    AuthenticationFailed,
    /// The firmware returned a non-zero status in the response payload.
    FirmwareStatus(u32),
    /// The response payload is malformed (size fields inconsistent).
    MalformedPayload,
}

impl fmt::Display for GuestMsgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestMsgError::BadVmpckId(id) => write!(f, "VMPCK index {id} is not 0..=3"),
            GuestMsgError::Disabled => {
                f.write_str("guest channel disabled after a failure; VMPCK wiped")
            }
            GuestMsgError::RequestPending => f.write_str("a guest request is already outstanding"),
            GuestMsgError::NoRequestPending => f.write_str("no guest request is outstanding"),
            GuestMsgError::NotARequest => f.write_str("message type is not a request"),
            GuestMsgError::PayloadTooLarge => write!(
                f,
                "payload exceeds {MAX_GUEST_PAYLOAD_BYTES} bytes or the buffer"
            ),
            GuestMsgError::SequenceExhausted => f.write_str("message sequence numbers exhausted"),
            GuestMsgError::BadHeader => f.write_str("response header does not match the request"),
            GuestMsgError::SequenceMismatch { expected, got } => {
                write!(f, "response sequence number {got}, expected {expected}")
            }
            GuestMsgError::AuthenticationFailed => {
                f.write_str("response authentication tag does not verify")
            }
            GuestMsgError::FirmwareStatus(s) => write!(f, "firmware returned status {s:#x}"),
            GuestMsgError::MalformedPayload => f.write_str("response payload is malformed"),
        }
    }
}

/// What the outstanding request expects back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    sequence_number: u64,
    response_type: MessageType,
    message_version: u8,
}

/// One VMPCK's channel to the secure processor.
pub struct GuestChannel {
    key: [u8; VMPCK_BYTES],
    vmpck_id: u8,
    /// The last sequence number used (by either side) with this key.
    last_sequence_number: u64,
    pending: Option<Pending>,
    disabled: bool,
}

impl fmt::Debug for GuestChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("GuestChannel")
            .field("vmpck_id", &self.vmpck_id)
            .field("last_sequence_number", &self.last_sequence_number)
            .field("pending", &self.pending)
            .field("disabled", &self.disabled)
            .finish()
    }
}

impl Drop for GuestChannel {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

fn iv_for(sequence_number: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut iv = [0u8; IV_BYTES];
    iv[..8].copy_from_slice(&sequence_number.to_le_bytes());
    Nonce::from(iv)
}

impl GuestChannel {
    /// A channel for VMPCK `vmpck_id` whose counter stands at `last_sequence_number` (0 for a
    /// key never used since launch; the kernel keeps the count across uses).
    pub fn new(
        key: &[u8; VMPCK_BYTES],
        vmpck_id: u8,
        last_sequence_number: u64,
    ) -> Result<GuestChannel, GuestMsgError> {
        if vmpck_id >= VMPCK_COUNT {
            return Err(GuestMsgError::BadVmpckId(vmpck_id));
        }
        Ok(GuestChannel {
            key: *key,
            vmpck_id,
            last_sequence_number,
            pending: None,
            disabled: false,
        })
    }

    /// The last sequence number used with this key.
    pub fn last_sequence_number(&self) -> u64 {
        self.last_sequence_number
    }

    /// Whether an earlier failure disabled the channel.
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    /// Wipes the key and refuses all further messages.
    pub fn disable(&mut self) {
        self.key.zeroize();
        self.disabled = true;
        self.pending = None;
    }

    /// Seals `payload` as a request of `msg_type` into `page`; returns its sequence number.
    pub fn seal_request(
        &mut self,
        msg_type: MessageType,
        msg_version: u8,
        payload: &[u8],
        page: &mut [u8; GUEST_MESSAGE_PAGE_BYTES],
    ) -> Result<u64, GuestMsgError> {
        if self.disabled {
            return Err(GuestMsgError::Disabled);
        }
        if self.pending.is_some() {
            return Err(GuestMsgError::RequestPending);
        }
        let response_type = msg_type.response().ok_or(GuestMsgError::NotARequest)?;
        if payload.len() > MAX_GUEST_PAYLOAD_BYTES {
            return Err(GuestMsgError::PayloadTooLarge);
        }
        // The response will use +2; both must fit.
        let sequence_number = self
            .last_sequence_number
            .checked_add(1)
            .ok_or(GuestMsgError::SequenceExhausted)?;
        sequence_number
            .checked_add(1)
            .ok_or(GuestMsgError::SequenceExhausted)?;
        page.fill(0);
        page[OFF_SEQNO..OFF_SEQNO + 8].copy_from_slice(&sequence_number.to_le_bytes());
        page[OFF_ALGO] = AEAD_ALGO_AES_256_GCM;
        page[OFF_HDR_VERSION] = GUEST_MESSAGE_HEADER_VERSION;
        page[OFF_HDR_SIZE..OFF_HDR_SIZE + 2]
            .copy_from_slice(&(GUEST_MESSAGE_HEADER_BYTES as u16).to_le_bytes());
        page[OFF_MSG_TYPE] = msg_type as u8;
        page[OFF_MSG_VERSION] = msg_version;
        // payload.len() <= MAX_GUEST_PAYLOAD_BYTES, which fits in u16.
        page[OFF_MSG_SIZE..OFF_MSG_SIZE + 2].copy_from_slice(&(payload.len() as u16).to_le_bytes());
        page[OFF_MSG_VMPCK] = self.vmpck_id;
        let (header, body) = page.split_at_mut(GUEST_MESSAGE_HEADER_BYTES);
        let ciphertext = &mut body[..payload.len()];
        ciphertext.copy_from_slice(payload);
        let cipher = Aes256Gcm::new(&self.key.into());
        let tag = cipher
            .encrypt_inout_detached(
                &iv_for(sequence_number),
                &header[OFF_AAD..],
                ciphertext.into(),
            )
            .map_err(|_| GuestMsgError::PayloadTooLarge)?;
        header[..TAG_BYTES].copy_from_slice(&tag);
        self.last_sequence_number = sequence_number;
        self.pending = Some(Pending {
            sequence_number,
            response_type,
            message_version: msg_version,
        });
        Ok(sequence_number)
    }

    /// The transport failed (the hypervisor returned an error): the firmware may or may not
    /// have consumed the request, so the channel is disabled.
    pub fn abandon_request(&mut self) {
        self.disable();
    }

    /// Opens the response to the outstanding request from `page` into `out`; returns the
    /// payload length. Any failure disables the channel.
    pub fn open_response(
        &mut self,
        page: &[u8; GUEST_MESSAGE_PAGE_BYTES],
        out: &mut [u8],
    ) -> Result<usize, GuestMsgError> {
        if self.disabled {
            return Err(GuestMsgError::Disabled);
        }
        let pending = self.pending.ok_or(GuestMsgError::NoRequestPending)?;
        match self.open_checked(pending, page, out) {
            Ok(len) => {
                self.last_sequence_number = pending.sequence_number + 1;
                self.pending = None;
                Ok(len)
            }
            Err(e) => {
                self.disable();
                Err(e)
            }
        }
    }

    fn open_checked(
        &self,
        pending: Pending,
        page: &[u8; GUEST_MESSAGE_PAGE_BYTES],
        out: &mut [u8],
    ) -> Result<usize, GuestMsgError> {
        // Copy the header first: the page is shared with the hypervisor, which could change
        // it between our checks and our use.
        let mut header = [0u8; GUEST_MESSAGE_HEADER_BYTES];
        header.copy_from_slice(&page[..GUEST_MESSAGE_HEADER_BYTES]);
        let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        let header_ok = header[OFF_ALGO] == AEAD_ALGO_AES_256_GCM
            && header[OFF_HDR_VERSION] == GUEST_MESSAGE_HEADER_VERSION
            && usize::from(u16_at(OFF_HDR_SIZE)) == GUEST_MESSAGE_HEADER_BYTES
            && header[OFF_MSG_TYPE] == pending.response_type as u8
            && header[OFF_MSG_VERSION] == pending.message_version
            && header[OFF_MSG_VMPCK] == self.vmpck_id;
        if !header_ok {
            return Err(GuestMsgError::BadHeader);
        }
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&header[OFF_SEQNO..OFF_SEQNO + 8]);
        let got = u64::from_le_bytes(seq_bytes);
        let expected = pending.sequence_number + 1;
        if got != expected {
            return Err(GuestMsgError::SequenceMismatch { expected, got });
        }
        let size = usize::from(u16_at(OFF_MSG_SIZE));
        if size > MAX_GUEST_PAYLOAD_BYTES || size > out.len() {
            return Err(GuestMsgError::PayloadTooLarge);
        }
        let plaintext = &mut out[..size];
        plaintext
            .copy_from_slice(&page[GUEST_MESSAGE_HEADER_BYTES..GUEST_MESSAGE_HEADER_BYTES + size]);
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&header[..TAG_BYTES]);
        let cipher = Aes256Gcm::new(&self.key.into());
        let opened = cipher.decrypt_inout_detached(
            &iv_for(got),
            &header[OFF_AAD..],
            plaintext.into(),
            &Tag::from(tag),
        );
        if opened.is_err() {
            plaintext.zeroize();
            return Err(GuestMsgError::AuthenticationFailed);
        }
        Ok(size)
    }

    /// Seals a MSG_REPORT_REQ asking for a report with `report_data` at `vmpl`.
    pub fn seal_report_request(
        &mut self,
        report_data: &[u8; 64],
        vmpl: u32,
        page: &mut [u8; GUEST_MESSAGE_PAGE_BYTES],
    ) -> Result<u64, GuestMsgError> {
        let payload = encode_report_request(report_data, vmpl);
        self.seal_request(
            MessageType::ReportRequest,
            REPORT_MESSAGE_VERSION,
            &payload,
            page,
        )
    }

    /// Opens a MSG_REPORT_RSP and returns the report bytes (not yet parsed or verified).
    pub fn open_report_response(
        &mut self,
        page: &[u8; GUEST_MESSAGE_PAGE_BYTES],
    ) -> Result<[u8; REPORT_SIZE_BYTES], GuestMsgError> {
        let mut payload = [0u8; MAX_GUEST_PAYLOAD_BYTES];
        let len = self.open_response(page, &mut payload)?;
        decode_report_response(&payload[..len])
    }
}

/// MSG_REPORT_REQ: `report_data[64] ‖ vmpl u32 ‖ key_sel u32 (0: either key) ‖ reserved[24]`.
pub fn encode_report_request(report_data: &[u8; 64], vmpl: u32) -> [u8; REPORT_REQUEST_BYTES] {
    let mut req = [0u8; REPORT_REQUEST_BYTES];
    req[..64].copy_from_slice(report_data);
    req[64..68].copy_from_slice(&vmpl.to_le_bytes());
    req
}

/// MSG_REPORT_RSP: `status u32 ‖ report_size u32 ‖ reserved[24] ‖ report`.
pub fn decode_report_response(payload: &[u8]) -> Result<[u8; REPORT_SIZE_BYTES], GuestMsgError> {
    let word = |at: usize| -> Result<u32, GuestMsgError> {
        let bytes = payload
            .get(at..at + 4)
            .ok_or(GuestMsgError::MalformedPayload)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    };
    let status = word(0)?;
    if status != 0 {
        return Err(GuestMsgError::FirmwareStatus(status));
    }
    if word(4)? as usize != REPORT_SIZE_BYTES {
        return Err(GuestMsgError::MalformedPayload);
    }
    let report = payload
        .get(REPORT_RESPONSE_HEADER_BYTES..REPORT_RESPONSE_BYTES)
        .ok_or(GuestMsgError::MalformedPayload)?;
    let mut out = [0u8; REPORT_SIZE_BYTES];
    out.copy_from_slice(report);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors in `testdata/` were made by `testdata/make_guest_msg_vectors.py` with
    /// pyca/cryptography's AES-GCM (OpenSSL), independently of this module.
    const REQ_VECTOR: &[u8; 4096] = include_bytes!("testdata/guest_msg_report_req.bin");
    const RSP_VECTOR: &[u8; 4096] = include_bytes!("testdata/guest_msg_report_rsp.bin");
    const RSP_INVALID_PARAM: &[u8; 4096] =
        include_bytes!("testdata/guest_msg_report_rsp_invalid_param.bin");
    const REPORT: &[u8] =
        include_bytes!("../../../../shared/testdata/sev-snp/milan-v2-virtee/report.bin");

    fn vmpck() -> [u8; 32] {
        core::array::from_fn(|i| i as u8)
    }

    fn report_data() -> [u8; 64] {
        core::array::from_fn(|i| 0x40 + i as u8)
    }

    /// A stand-in for the secure processor: seals a response with the same key (used only
    /// for error paths the recorded vectors do not cover).
    fn psp_response(
        seq: u64,
        msg_type: u8,
        version: u8,
        vmpck_id: u8,
        payload: &[u8],
    ) -> [u8; 4096] {
        let mut page = [0u8; 4096];
        page[OFF_SEQNO..OFF_SEQNO + 8].copy_from_slice(&seq.to_le_bytes());
        page[OFF_ALGO] = 1;
        page[OFF_HDR_VERSION] = 1;
        page[OFF_HDR_SIZE..OFF_HDR_SIZE + 2].copy_from_slice(&0x60u16.to_le_bytes());
        page[OFF_MSG_TYPE] = msg_type;
        page[OFF_MSG_VERSION] = version;
        page[OFF_MSG_SIZE..OFF_MSG_SIZE + 2].copy_from_slice(&(payload.len() as u16).to_le_bytes());
        page[OFF_MSG_VMPCK] = vmpck_id;
        let (header, body) = page.split_at_mut(0x60);
        let ct = &mut body[..payload.len()];
        ct.copy_from_slice(payload);
        let tag = Aes256Gcm::new(&vmpck().into())
            .encrypt_inout_detached(&iv_for(seq), &header[OFF_AAD..], ct.into())
            .unwrap();
        header[..16].copy_from_slice(&tag);
        page
    }

    #[test]
    fn report_request_matches_the_independent_vector() {
        let mut ch = GuestChannel::new(&vmpck(), 0, 0).unwrap();
        let mut page = [0xAAu8; 4096];
        assert_eq!(ch.seal_report_request(&report_data(), 0, &mut page), Ok(1));
        assert_eq!(&page, REQ_VECTOR);
    }

    #[test]
    fn report_response_opens_and_advances_the_sequence() {
        let mut ch = GuestChannel::new(&vmpck(), 0, 0).unwrap();
        let mut page = [0u8; 4096];
        ch.seal_report_request(&report_data(), 0, &mut page)
            .unwrap();
        let report = ch.open_report_response(RSP_VECTOR).unwrap();
        assert_eq!(&report[..], REPORT);
        assert!(super::super::AttestationReport::parse(&report).is_ok());
        assert_eq!(ch.last_sequence_number(), 2);
        // The next request uses 3; replaying the old response (sequence 2) is refused.
        assert_eq!(ch.seal_report_request(&report_data(), 0, &mut page), Ok(3));
        assert_eq!(
            ch.open_report_response(RSP_VECTOR),
            Err(GuestMsgError::SequenceMismatch {
                expected: 4,
                got: 2
            })
        );
        assert!(ch.is_disabled());
        assert_eq!(
            ch.seal_report_request(&report_data(), 0, &mut page),
            Err(GuestMsgError::Disabled)
        );
    }

    #[test]
    fn firmware_error_status_is_reported_without_disabling() {
        let mut ch = GuestChannel::new(&vmpck(), 0, 0).unwrap();
        let mut page = [0u8; 4096];
        ch.seal_report_request(&report_data(), 0, &mut page)
            .unwrap();
        assert_eq!(
            ch.open_report_response(RSP_INVALID_PARAM),
            Err(GuestMsgError::FirmwareStatus(0x16))
        );
        // The exchange itself completed (authentic, in sequence), so the counter moved on.
        assert_eq!(ch.last_sequence_number(), 2);
        assert!(!ch.is_disabled());
    }

    #[test]
    fn tampering_with_any_authenticated_byte_fails_and_disables() {
        for at in (0..16)
            .chain(0x20..0x28)
            .chain(0x30..0x60)
            .chain(0x60..0x60 + REPORT_RESPONSE_BYTES)
            .step_by(3)
        {
            let mut ch = GuestChannel::new(&vmpck(), 0, 0).unwrap();
            let mut page = [0u8; 4096];
            ch.seal_report_request(&report_data(), 0, &mut page)
                .unwrap();
            let mut bad = *RSP_VECTOR;
            bad[at] ^= 0x01;
            let err = ch.open_report_response(&bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    GuestMsgError::AuthenticationFailed
                        | GuestMsgError::BadHeader
                        | GuestMsgError::SequenceMismatch { .. }
                        | GuestMsgError::PayloadTooLarge
                ),
                "byte {at:#x}: {err}"
            );
            assert!(ch.is_disabled(), "byte {at:#x}");
        }
    }

    #[test]
    fn protocol_errors() {
        let mut page = [0u8; 4096];
        assert_eq!(
            GuestChannel::new(&vmpck(), 4, 0).unwrap_err(),
            GuestMsgError::BadVmpckId(4)
        );
        let mut ch = GuestChannel::new(&vmpck(), 0, 0).unwrap();
        assert_eq!(
            ch.open_report_response(RSP_VECTOR),
            Err(GuestMsgError::NoRequestPending)
        );
        assert_eq!(
            ch.seal_request(MessageType::ReportResponse, 1, &[], &mut page),
            Err(GuestMsgError::NotARequest)
        );
        assert_eq!(
            ch.seal_request(MessageType::ReportRequest, 1, &[0u8; 4001], &mut page),
            Err(GuestMsgError::PayloadTooLarge)
        );
        ch.seal_report_request(&report_data(), 0, &mut page)
            .unwrap();
        assert_eq!(
            ch.seal_report_request(&report_data(), 0, &mut page),
            Err(GuestMsgError::RequestPending)
        );
        // A response of the wrong type, authentic and in sequence, is still refused.
        let wrong_type = psp_response(2, MessageType::KeyResponse as u8, 1, 0, &[0u8; 64]);
        assert_eq!(
            ch.open_report_response(&wrong_type),
            Err(GuestMsgError::BadHeader)
        );
        // The VMPCK id must match, and so must the version.
        for (version, vmpck_id) in [(1, 1), (2, 0)] {
            let mut ch = GuestChannel::new(&vmpck(), 0, 0).unwrap();
            ch.seal_report_request(&report_data(), 0, &mut page)
                .unwrap();
            let rsp = psp_response(2, 6, version, vmpck_id, &[0u8; 32]);
            assert_eq!(ch.open_report_response(&rsp), Err(GuestMsgError::BadHeader));
        }
        // A short payload and a wrong report size are malformed.
        let mut ch = GuestChannel::new(&vmpck(), 0, 0).unwrap();
        ch.seal_report_request(&report_data(), 0, &mut page)
            .unwrap();
        let mut short = [0u8; 40];
        short[4..8].copy_from_slice(&1184u32.to_le_bytes());
        assert_eq!(
            ch.open_report_response(&psp_response(2, 6, 1, 0, &short)),
            Err(GuestMsgError::MalformedPayload)
        );
        let mut ch = GuestChannel::new(&vmpck(), 0, 10).unwrap();
        assert_eq!(ch.seal_report_request(&report_data(), 0, &mut page), Ok(11));
        let mut sized = [0u8; REPORT_RESPONSE_BYTES];
        sized[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            ch.open_report_response(&psp_response(12, 6, 1, 0, &sized)),
            Err(GuestMsgError::MalformedPayload)
        );
        // The counter cannot wrap.
        let mut ch = GuestChannel::new(&vmpck(), 0, u64::MAX - 1).unwrap();
        assert_eq!(
            ch.seal_report_request(&report_data(), 0, &mut page),
            Err(GuestMsgError::SequenceExhausted)
        );
        // A transport failure disables the channel.
        let mut ch = GuestChannel::new(&vmpck(), 2, 0).unwrap();
        ch.seal_report_request(&report_data(), 0, &mut page)
            .unwrap();
        ch.abandon_request();
        assert_eq!(
            ch.seal_report_request(&report_data(), 0, &mut page),
            Err(GuestMsgError::Disabled)
        );
    }

    #[test]
    fn a_wrong_key_cannot_open_the_response() {
        let mut other = vmpck();
        other[0] ^= 1;
        let mut ch = GuestChannel::new(&other, 0, 0).unwrap();
        let mut page = [0u8; 4096];
        ch.seal_report_request(&report_data(), 0, &mut page)
            .unwrap();
        assert_ne!(&page, REQ_VECTOR);
        assert_eq!(
            ch.open_report_response(RSP_VECTOR),
            Err(GuestMsgError::AuthenticationFailed)
        );
    }
}
