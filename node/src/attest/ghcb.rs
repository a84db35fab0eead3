//! The SEV-SNP guest ↔ hypervisor protocol (GHCB), the pure part: how a guest asks for an
//! attestation report, validates memory and learns what the hypervisor offers.
//!
//! Spec: AMD "SEV-ES Guest-Hypervisor Communication Block Standardization" #56421 rev 2.03
//! (§2.3.1 MSR protocol, §2.3.2 GHCB protocol, §4.1.8 SNP Guest Request, Table 3 GHCB layout,
//! Table 6 NAE exit codes); SNP firmware ABI #56860 rev 1.55 §8.26 (SNP_GUEST_REQUEST) and
//! "Secrets Page Format" (Table 71 in that revision). Linux `arch/x86/include/asm/sev-common.h`
//! and Oak's `oak_sev_guest` (`msr.rs`, `ghcb.rs`) speak the same protocol.
//!
//! Everything that touches the machine (the GHCB MSR, `VMGEXIT`, `PVALIDATE`, page tables) is
//! behind the [`Hypervisor`] trait, implemented by the kernel (`kernel/src/tee/snp.rs`); here
//! is the encoding, the decoding and the error handling, tested on the host against recorded
//! exchanges.
//!
//! MSR protocol (the GHCB MSR `0xC001_0130` holds a request, `VMGEXIT`, it holds the answer;
//! the low 12 bits say which):
//!
//! ```text
//!  request                         bits                         response
//!  0x002 SEV information           -                            0x001: [63:48] max version,
//!                                                                 [47:32] min version, [31:24] C-bit
//!  0x012 register GHCB GPA         [63:12] GFN                  0x013: [63:12] the same GFN
//!  0x014 page state change         [51:12] GFN, [55:52] 1/2     0x015: [63:32] error (0 = ok)
//!  0x080 hypervisor features       -                            0x081: [63:12] feature bits
//!  0x100 termination request       [15:12] reason set, [23:16] reason code   (no response)
//! ```
//!
//! GHCB page (Table 3), the fields used: `RAX` 0x1F8, `RCX` 0x308, `RDX` 0x310, `RBX` 0x318,
//! `SW_EXITCODE` 0x390, `SW_EXITINFO1` 0x398, `SW_EXITINFO2` 0x3A0, `SW_SCRATCH` 0x3A8, the
//! valid bitmap at 0x3F0 (one bit per quadword of the save area: bit = offset / 8), the shared
//! buffer at 0x800, `protocol_version` (u16) at 0xFFA, `ghcb_usage` (u32) at 0xFFC.
//!
//! SNP guest request (NAE exit code `0x8000_0011`): `SW_EXITINFO1` = GPA of the request page,
//! `SW_EXITINFO2` = GPA of the response page, both shared (unencrypted) pages. On return,
//! `SW_EXITINFO1[31:0]` ≠ 0 means the hypervisor refused the event; `SW_EXITINFO2` is the
//! outcome: `[63:32]` the hypervisor's error (1 = invalid length, 2 = busy: retry the same
//! message), `[31:0]` the firmware's status. Only a busy hypervisor may be retried with the
//! same sealed message (the firmware did not see it); every other failure leaves the guest not
//! knowing whether the firmware consumed the sequence number, so the channel is disabled and its
//! key wiped ([`GuestChannel::abandon_request`]).

use core::fmt;

use super::guest_msg::{GuestChannel, GuestMsgError, GUEST_MESSAGE_PAGE_BYTES, VMPCK_BYTES};
use super::report::REPORT_SIZE_BYTES;

/// The GHCB MSR.
pub const MSR_GHCB: u32 = 0xC001_0130;
/// The GHCB protocol version this guest speaks (SNP needs 2).
pub const GHCB_PROTOCOL_VERSION: u16 = 2;
/// Size of the GHCB page.
pub const GHCB_PAGE_BYTES: usize = 4096;
/// NAE exit code of an SNP guest request (Table 6).
pub const SVM_EXIT_SNP_GUEST_REQUEST: u64 = 0x8000_0011;
/// How often a guest request is re-sent while the hypervisor says it is busy.
pub const MAX_BUSY_RETRIES: u32 = 16;

const INFO_MASK: u64 = 0xFFF;
const MSR_SEV_INFO_RESPONSE: u64 = 0x001;
const MSR_SEV_INFO_REQUEST: u64 = 0x002;
const MSR_REGISTER_GHCB_REQUEST: u64 = 0x012;
const MSR_REGISTER_GHCB_RESPONSE: u64 = 0x013;
const MSR_PSC_REQUEST: u64 = 0x014;
const MSR_PSC_RESPONSE: u64 = 0x015;
const MSR_HV_FEATURES_REQUEST: u64 = 0x080;
const MSR_HV_FEATURES_RESPONSE: u64 = 0x081;
const MSR_TERMINATE_REQUEST: u64 = 0x100;
/// Page frame numbers in a page state change request are 40 bits (bits 51:12).
const PSC_GFN_MASK: u64 = (1 << 40) - 1;
/// Hypervisor feature bit 0: SEV-SNP is supported.
pub const HV_FEATURE_SNP: u64 = 1 << 0;
/// Hypervisor error in `SW_EXITINFO2[63:32]`: the certificate buffer is too small.
const VMM_ERROR_INVALID_LENGTH: u32 = 1;
/// Hypervisor error in `SW_EXITINFO2[63:32]`: busy, send the same message again.
const VMM_ERROR_BUSY: u32 = 2;

/// GHCB save-area offsets (Table 3).
pub mod offset {
    /// `RAX`.
    pub const RAX: usize = 0x1F8;
    /// `RCX`.
    pub const RCX: usize = 0x308;
    /// `RDX`.
    pub const RDX: usize = 0x310;
    /// `RBX`.
    pub const RBX: usize = 0x318;
    /// `SW_EXITCODE`.
    pub const SW_EXIT_CODE: usize = 0x390;
    /// `SW_EXITINFO1`.
    pub const SW_EXIT_INFO_1: usize = 0x398;
    /// `SW_EXITINFO2`.
    pub const SW_EXIT_INFO_2: usize = 0x3A0;
    /// `SW_SCRATCH`.
    pub const SW_SCRATCH: usize = 0x3A8;
    /// The valid bitmap (16 bytes).
    pub const VALID_BITMAP: usize = 0x3F0;
    /// The shared buffer (2032 bytes).
    pub const SHARED_BUFFER: usize = 0x800;
    /// `protocol_version` (u16).
    pub const PROTOCOL_VERSION: usize = 0xFFA;
    /// `ghcb_usage` (u32; 0 = the standard layout).
    pub const GHCB_USAGE: usize = 0xFFC;
}

/// Why a GHCB exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GhcbError {
    /// The MSR response carries an unexpected operation code.
    UnexpectedResponse {
        /// The response code expected.
        expected: u16,
        /// The code found.
        got: u16,
    },
    /// The hypervisor does not speak GHCB protocol version 2.
    UnsupportedProtocol {
        /// Its minimum version.
        min: u16,
        /// Its maximum version.
        max: u16,
    },
    /// The hypervisor does not offer SEV-SNP (hypervisor features bit 0).
    NoSnpSupport,
    /// The hypervisor registered another GHCB page than the one asked for.
    GhcbNotRegistered,
    /// A page state change failed with this error code.
    PageStateChange(u32),
    /// The page frame does not fit the request encoding.
    AddressTooHigh,
    /// The hypervisor refused the NAE event (`SW_EXITINFO1[31:0]`).
    EventRefused(u32),
    /// The hypervisor said the certificate buffer is too small (extended requests only).
    VmmInvalidLength,
    /// The hypervisor stayed busy for [`MAX_BUSY_RETRIES`] attempts.
    VmmBusy,
    /// Another hypervisor error code (`SW_EXITINFO2[63:32]`).
    Vmm(u32),
    /// The firmware failed the request with this status (`SW_EXITINFO2[31:0]`).
    Firmware(u32),
    /// The encrypted channel refused the message or its answer.
    Channel(GuestMsgError),
}

impl fmt::Display for GhcbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GhcbError::UnexpectedResponse { expected, got } => write!(
                f,
                "GHCB MSR protocol: response code {got:#x}, expected {expected:#x}"
            ),
            GhcbError::UnsupportedProtocol { min, max } => write!(
                f,
                "hypervisor speaks GHCB versions {min}..={max}, not {GHCB_PROTOCOL_VERSION}"
            ),
            GhcbError::NoSnpSupport => f.write_str("hypervisor does not offer SEV-SNP"),
            GhcbError::GhcbNotRegistered => f.write_str("hypervisor did not register the GHCB"),
            GhcbError::PageStateChange(e) => write!(f, "page state change failed: {e:#x}"),
            GhcbError::AddressTooHigh => f.write_str("guest page frame out of range"),
            GhcbError::EventRefused(e) => write!(f, "hypervisor refused the exit: {e:#x}"),
            GhcbError::VmmInvalidLength => f.write_str("hypervisor: certificate buffer too small"),
            GhcbError::VmmBusy => write!(f, "hypervisor busy after {MAX_BUSY_RETRIES} tries"),
            GhcbError::Vmm(e) => write!(f, "hypervisor error {e:#x}"),
            GhcbError::Firmware(e) => write!(f, "firmware status {e:#x}"),
            GhcbError::Channel(e) => write!(f, "guest message: {e}"),
        }
    }
}

impl From<GuestMsgError> for GhcbError {
    fn from(e: GuestMsgError) -> GhcbError {
        GhcbError::Channel(e)
    }
}

/// The GHCB page: one shared 4 KiB page the guest fills before `VMGEXIT`.
#[repr(C, align(4096))]
#[derive(Clone)]
pub struct Ghcb(pub [u8; GHCB_PAGE_BYTES]);

const _: () = assert!(core::mem::size_of::<Ghcb>() == GHCB_PAGE_BYTES);

impl Default for Ghcb {
    fn default() -> Ghcb {
        Ghcb([0; GHCB_PAGE_BYTES])
    }
}

impl Ghcb {
    /// Zeroes the page and sets the protocol version and usage (as before every exit).
    pub fn reset(&mut self) {
        self.0.fill(0);
        self.0[offset::PROTOCOL_VERSION..offset::PROTOCOL_VERSION + 2]
            .copy_from_slice(&GHCB_PROTOCOL_VERSION.to_le_bytes());
    }

    /// Writes a save-area quadword and marks it valid.
    pub fn set(&mut self, field: usize, value: u64) {
        self.0[field..field + 8].copy_from_slice(&value.to_le_bytes());
        let bit = field / 8;
        self.0[offset::VALID_BITMAP + bit / 8] |= 1 << (bit % 8);
    }

    /// Reads a save-area quadword.
    pub fn get(&self, field: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[field..field + 8]);
        u64::from_le_bytes(b)
    }

    /// Whether the valid bitmap marks the quadword at `field`.
    pub fn is_valid(&self, field: usize) -> bool {
        let bit = field / 8;
        self.0[offset::VALID_BITMAP + bit / 8] & (1 << (bit % 8)) != 0
    }
}

/// The two shared pages of a guest request and their guest-physical addresses.
pub struct GuestRequestPages<'a> {
    /// The sealed request (written by the guest).
    pub request: &'a mut [u8; GUEST_MESSAGE_PAGE_BYTES],
    /// Its guest-physical address.
    pub request_gpa: u64,
    /// The sealed response (written by the firmware).
    pub response: &'a mut [u8; GUEST_MESSAGE_PAGE_BYTES],
    /// Its guest-physical address.
    pub response_gpa: u64,
}

/// The machine under the protocol: the kernel implements it with `wrmsr`/`rdmsr` and
/// `VMGEXIT`; the tests with recorded exchanges.
pub trait Hypervisor {
    /// Writes `request` to the GHCB MSR, exits (`VMGEXIT`) and returns the MSR afterwards.
    fn msr_protocol(&mut self, request: u64) -> u64;
    /// Points the GHCB MSR at the GHCB page and exits. The hypervisor reads and writes the
    /// GHCB and, for a guest request, the shared `pages` (passed so that the compiler and
    /// the tests see the accesses).
    fn vmgexit(&mut self, ghcb: &mut Ghcb, pages: &mut GuestRequestPages<'_>);
}

/// What the hypervisor says about SEV (MSR protocol 0x001).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SevInfo {
    /// Lowest GHCB protocol version it speaks.
    pub min_version: u16,
    /// Highest GHCB protocol version it speaks.
    pub max_version: u16,
    /// The C-bit position.
    pub c_bit: u8,
}

fn expect_code(response: u64, expected: u64) -> Result<(), GhcbError> {
    let got = response & INFO_MASK;
    if got != expected {
        return Err(GhcbError::UnexpectedResponse {
            expected: expected as u16,
            got: got as u16,
        });
    }
    Ok(())
}

/// MSR protocol: SEV information; fails unless the hypervisor speaks version 2.
pub fn sev_info(hv: &mut impl Hypervisor) -> Result<SevInfo, GhcbError> {
    let r = hv.msr_protocol(MSR_SEV_INFO_REQUEST);
    expect_code(r, MSR_SEV_INFO_RESPONSE)?;
    let info = SevInfo {
        max_version: (r >> 48) as u16,
        min_version: (r >> 32) as u16,
        c_bit: (r >> 24) as u8,
    };
    if !(info.min_version..=info.max_version).contains(&GHCB_PROTOCOL_VERSION) {
        return Err(GhcbError::UnsupportedProtocol {
            min: info.min_version,
            max: info.max_version,
        });
    }
    Ok(info)
}

/// MSR protocol: the hypervisor's feature bits; fails unless SEV-SNP is among them.
pub fn hypervisor_features(hv: &mut impl Hypervisor) -> Result<u64, GhcbError> {
    let r = hv.msr_protocol(MSR_HV_FEATURES_REQUEST);
    expect_code(r, MSR_HV_FEATURES_RESPONSE)?;
    let features = r >> 12;
    if features & HV_FEATURE_SNP == 0 {
        return Err(GhcbError::NoSnpSupport);
    }
    Ok(features)
}

/// MSR protocol: registers the GHCB page at `gpa` (SNP requires it before the first GHCB
/// exit).
pub fn register_ghcb(hv: &mut impl Hypervisor, gpa: u64) -> Result<(), GhcbError> {
    let gfn = gpa >> 12;
    if gfn > (u64::MAX >> 12) {
        return Err(GhcbError::AddressTooHigh);
    }
    let r = hv.msr_protocol(MSR_REGISTER_GHCB_REQUEST | (gfn << 12));
    expect_code(r, MSR_REGISTER_GHCB_RESPONSE)?;
    if r >> 12 != gfn {
        return Err(GhcbError::GhcbNotRegistered);
    }
    Ok(())
}

/// The state a page state change asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum PageState {
    /// Assigned to the guest, encrypted (then PVALIDATE it).
    Private = 1,
    /// Shared with the hypervisor (PVALIDATE-rescind it first).
    Shared = 2,
}

/// The MSR value of a page state change request for the 4 KiB page at `gpa`.
pub fn encode_page_state_change(gpa: u64, state: PageState) -> Result<u64, GhcbError> {
    let gfn = gpa >> 12;
    if gfn > PSC_GFN_MASK {
        return Err(GhcbError::AddressTooHigh);
    }
    Ok(MSR_PSC_REQUEST | (gfn << 12) | ((state as u64) << 52))
}

/// MSR protocol: changes the state of one 4 KiB page.
pub fn page_state_change(
    hv: &mut impl Hypervisor,
    gpa: u64,
    state: PageState,
) -> Result<(), GhcbError> {
    let r = hv.msr_protocol(encode_page_state_change(gpa, state)?);
    expect_code(r, MSR_PSC_RESPONSE)?;
    match (r >> 32) as u32 {
        0 => Ok(()),
        e => Err(GhcbError::PageStateChange(e)),
    }
}

/// MSR protocol: asks the hypervisor to terminate the guest (reason set 0 = general).
/// Returns only if the hypervisor ignores the request.
pub fn request_termination(hv: &mut impl Hypervisor, reason_code: u8) {
    let _ = hv.msr_protocol(MSR_TERMINATE_REQUEST | (u64::from(reason_code) << 16));
}

/// Sends the sealed message in `pages.request` as an SNP guest request and classifies the
/// outcome (see the module documentation). Busy answers are retried with the same message.
fn guest_request_exit(
    hv: &mut impl Hypervisor,
    ghcb: &mut Ghcb,
    pages: &mut GuestRequestPages<'_>,
) -> Result<(), GhcbError> {
    for _ in 0..MAX_BUSY_RETRIES {
        ghcb.reset();
        ghcb.set(offset::SW_EXIT_CODE, SVM_EXIT_SNP_GUEST_REQUEST);
        ghcb.set(offset::SW_EXIT_INFO_1, pages.request_gpa);
        ghcb.set(offset::SW_EXIT_INFO_2, pages.response_gpa);
        hv.vmgexit(ghcb, pages);
        let refused = ghcb.get(offset::SW_EXIT_INFO_1) as u32;
        if refused != 0 {
            return Err(GhcbError::EventRefused(refused));
        }
        let outcome = ghcb.get(offset::SW_EXIT_INFO_2);
        let (vmm, firmware) = ((outcome >> 32) as u32, outcome as u32);
        match (vmm, firmware) {
            (0, 0) => return Ok(()),
            (VMM_ERROR_BUSY, _) => continue,
            (VMM_ERROR_INVALID_LENGTH, _) => return Err(GhcbError::VmmInvalidLength),
            (0, status) => return Err(GhcbError::Firmware(status)),
            (other, _) => return Err(GhcbError::Vmm(other)),
        }
    }
    Err(GhcbError::VmmBusy)
}

/// Asks the secure processor for an attestation report carrying `report_data`, at `vmpl`,
/// over `channel`; returns the raw report (to be parsed and verified by whoever relies on
/// it). Any failure after the request was sealed, except a busy hypervisor, disables the
/// channel: the sequence number may have been consumed.
pub fn request_report(
    hv: &mut impl Hypervisor,
    ghcb: &mut Ghcb,
    pages: &mut GuestRequestPages<'_>,
    channel: &mut GuestChannel,
    report_data: &[u8; 64],
    vmpl: u32,
) -> Result<[u8; REPORT_SIZE_BYTES], GhcbError> {
    channel.seal_report_request(report_data, vmpl, pages.request)?;
    pages.response.fill(0);
    if let Err(e) = guest_request_exit(hv, ghcb, pages) {
        channel.abandon_request();
        return Err(e);
    }
    // Copy the response out of the shared page before opening it: the hypervisor can
    // still write the shared page.
    let response = *pages.response;
    Ok(channel.open_report_response(&response)?)
}

/// Size of the secrets page.
pub const SECRETS_PAGE_BYTES: usize = 4096;
const SECRETS_OFF_VERSION: usize = 0x00;
const SECRETS_OFF_IMI: usize = 0x04;
const SECRETS_OFF_FMS: usize = 0x08;
const SECRETS_OFF_VMPCK0: usize = 0x20;
/// The OS area (guest-owned, 96 bytes); Linux keeps the four message sequence numbers in its
/// first 16 bytes (`struct secrets_os_area`), and so does cairn.
const SECRETS_OFF_OS_SEQNO: usize = 0xA0;

/// Why the secrets page was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretsError {
    /// A version this guest does not know (2 and 3 are known).
    UnknownVersion(u32),
}

impl fmt::Display for SecretsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretsError::UnknownVersion(v) => write!(f, "secrets page version {v} unknown"),
        }
    }
}

/// The SNP secrets page the firmware places in the guest at launch ("Secrets Page Format"):
///
/// ```text
///  0x00 u32 version   0x04 u32 bit 0: imi_en   0x08 u32 fms (family/model/stepping)
///  0x10 gosvw[16]     0x20 vmpck0[32]  0x40 vmpck1  0x60 vmpck2  0x80 vmpck3
///  0xA0 os_area[96]: u32 msg_seqno_0..3 (guest-owned), …   0x100 vmsa_tweak_bitmap[64] …
/// ```
///
/// A VMPCK of all zeros is one the firmware withheld (or a guest wiped): unusable.
pub struct SecretsPage {
    /// The layout version.
    pub version: u32,
    /// Whether the guest was launched by a migration agent (IMI).
    pub imi_enabled: bool,
    /// The CPU's family/model/stepping.
    pub fms: u32,
    vmpck: [[u8; VMPCK_BYTES]; 4],
    /// The last message sequence number per VMPCK, from the OS area.
    pub sequence_numbers: [u32; 4],
}

impl fmt::Debug for SecretsPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the keys.
        f.debug_struct("SecretsPage")
            .field("version", &self.version)
            .field("imi_enabled", &self.imi_enabled)
            .field("fms", &self.fms)
            .field("sequence_numbers", &self.sequence_numbers)
            .finish()
    }
}

impl Drop for SecretsPage {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.vmpck);
    }
}

fn word(page: &[u8; SECRETS_PAGE_BYTES], at: usize) -> u32 {
    u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]])
}

impl SecretsPage {
    /// Copies the secrets page (the caller then wipes or unmaps the original as it sees fit).
    pub fn parse(page: &[u8; SECRETS_PAGE_BYTES]) -> Result<SecretsPage, SecretsError> {
        let version = word(page, SECRETS_OFF_VERSION);
        if !(2..=3).contains(&version) {
            return Err(SecretsError::UnknownVersion(version));
        }
        let mut vmpck = [[0u8; VMPCK_BYTES]; 4];
        for (i, key) in vmpck.iter_mut().enumerate() {
            let at = SECRETS_OFF_VMPCK0 + i * VMPCK_BYTES;
            key.copy_from_slice(&page[at..at + VMPCK_BYTES]);
        }
        Ok(SecretsPage {
            version,
            imi_enabled: word(page, SECRETS_OFF_IMI) & 1 != 0,
            fms: word(page, SECRETS_OFF_FMS),
            vmpck,
            sequence_numbers: core::array::from_fn(|i| word(page, SECRETS_OFF_OS_SEQNO + 4 * i)),
        })
    }

    /// A channel over VMPCK `id`, continuing from the stored sequence number; `None` if the
    /// key is absent (all zeros) or `id` is not 0..=3.
    pub fn channel(&self, id: u8) -> Option<GuestChannel> {
        let key = self.vmpck.get(usize::from(id))?;
        if key.iter().all(|&b| b == 0) {
            return None;
        }
        let last = u64::from(self.sequence_numbers[usize::from(id)]);
        GuestChannel::new(key, id, last).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::guest_msg::REPORT_RESPONSE_BYTES;
    use alloc::vec::Vec;

    /// Recorded exchanges: the request page a guest with VMPCK0 = 00 01 .. 1f must send for
    /// report_data 40 41 .. 7f at VMPL 0 (sequence number 1), and the firmware's sealed
    /// responses (the Milan report from ../shared/testdata, and an INVALID_PARAM status),
    /// made independently with pyca/cryptography (guest_msg's testdata).
    const REQ_VECTOR: &[u8; 4096] = include_bytes!("testdata/guest_msg_report_req.bin");
    const RSP_VECTOR: &[u8; 4096] = include_bytes!("testdata/guest_msg_report_rsp.bin");
    const RSP_INVALID_PARAM: &[u8; 4096] =
        include_bytes!("testdata/guest_msg_report_rsp_invalid_param.bin");
    const REPORT: &[u8] =
        include_bytes!("../../../../shared/testdata/sev-snp/milan-v2-virtee/report.bin");
    const REQUEST_GPA: u64 = 0x7_F000;
    const RESPONSE_GPA: u64 = 0x7_E000;

    fn vmpck() -> [u8; 32] {
        core::array::from_fn(|i| i as u8)
    }

    fn report_data() -> [u8; 64] {
        core::array::from_fn(|i| 0x40 + i as u8)
    }

    /// One scripted answer of the hypervisor to a guest-request exit.
    #[derive(Clone, Copy)]
    struct Answer {
        exit_info_1: u64,
        exit_info_2: u64,
        response: Option<&'static [u8; 4096]>,
    }

    const OK: Answer = Answer {
        exit_info_1: 0,
        exit_info_2: 0,
        response: Some(RSP_VECTOR),
    };

    /// A hypervisor that replays scripted answers and records what the guest sent.
    #[derive(Default)]
    struct Recorded {
        msr_script: Vec<(u64, u64)>,
        exits: Vec<Answer>,
        requests_seen: Vec<[u8; 4096]>,
        ghcbs_seen: Vec<Ghcb>,
    }

    impl Hypervisor for Recorded {
        fn msr_protocol(&mut self, request: u64) -> u64 {
            assert!(
                !self.msr_script.is_empty(),
                "unexpected MSR request {request:#x}"
            );
            let (expected, response) = self.msr_script.remove(0);
            assert_eq!(request, expected, "MSR request");
            response
        }

        fn vmgexit(&mut self, ghcb: &mut Ghcb, pages: &mut GuestRequestPages<'_>) {
            self.ghcbs_seen.push(ghcb.clone());
            self.requests_seen.push(*pages.request);
            let answer = self.exits.remove(0);
            if let Some(rsp) = answer.response {
                pages.response.copy_from_slice(rsp);
            }
            ghcb.0[offset::SW_EXIT_INFO_1..offset::SW_EXIT_INFO_1 + 8]
                .copy_from_slice(&answer.exit_info_1.to_le_bytes());
            ghcb.0[offset::SW_EXIT_INFO_2..offset::SW_EXIT_INFO_2 + 8]
                .copy_from_slice(&answer.exit_info_2.to_le_bytes());
        }
    }

    fn run(
        hv: &mut Recorded,
        channel: &mut GuestChannel,
    ) -> Result<[u8; REPORT_SIZE_BYTES], GhcbError> {
        let mut request = [0u8; 4096];
        let mut response = [0u8; 4096];
        let mut pages = GuestRequestPages {
            request: &mut request,
            request_gpa: REQUEST_GPA,
            response: &mut response,
            response_gpa: RESPONSE_GPA,
        };
        let mut ghcb = Ghcb::default();
        request_report(hv, &mut ghcb, &mut pages, channel, &report_data(), 0)
    }

    #[test]
    fn report_request_matches_the_recording_and_yields_the_real_report() {
        let mut hv = Recorded {
            exits: alloc::vec![OK],
            ..Recorded::default()
        };
        let mut channel = GuestChannel::new(&vmpck(), 0, 0).unwrap();
        let report = run(&mut hv, &mut channel).unwrap();
        assert_eq!(&report[..], REPORT);
        assert!(crate::attest::AttestationReport::parse(&report).is_ok());
        // The guest sent exactly the recorded request page, through exactly this GHCB.
        assert_eq!(&hv.requests_seen[0], REQ_VECTOR);
        let g = &hv.ghcbs_seen[0];
        assert_eq!(g.get(offset::SW_EXIT_CODE), 0x8000_0011);
        assert_eq!(g.get(offset::SW_EXIT_INFO_1), REQUEST_GPA);
        assert_eq!(g.get(offset::SW_EXIT_INFO_2), RESPONSE_GPA);
        for field in [
            offset::SW_EXIT_CODE,
            offset::SW_EXIT_INFO_1,
            offset::SW_EXIT_INFO_2,
        ] {
            assert!(g.is_valid(field), "{field:#x} valid");
        }
        assert!(!g.is_valid(offset::RAX));
        // Valid bitmap: exit code (0x390 / 8 = bit 114) and both infos (bits 115, 116).
        assert_eq!(&g.0[0x3F0 + 14..0x3F0 + 15], &[0b0001_1100]);
        assert_eq!(&g.0[0xFFA..0xFFC], &2u16.to_le_bytes());
        // The sequence number moved by two: the next request carries 3.
        assert_eq!(channel.last_sequence_number(), 2);
        hv.exits.push(OK);
        let err = run(&mut hv, &mut channel).unwrap_err();
        assert_eq!(&hv.requests_seen[1][0x20..0x28], &3u64.to_le_bytes());
        // …and the replayed old response (sequence 2) is refused and disables the channel.
        assert_eq!(
            err,
            GhcbError::Channel(GuestMsgError::SequenceMismatch {
                expected: 4,
                got: 2
            })
        );
        assert!(channel.is_disabled());
    }

    #[test]
    fn a_busy_hypervisor_gets_the_same_message_again() {
        let busy = Answer {
            exit_info_1: 0,
            exit_info_2: 2 << 32,
            response: None,
        };
        let mut hv = Recorded {
            exits: alloc::vec![busy, busy, OK],
            ..Recorded::default()
        };
        let mut channel = GuestChannel::new(&vmpck(), 0, 0).unwrap();
        assert_eq!(&run(&mut hv, &mut channel).unwrap()[..], REPORT);
        assert_eq!(hv.requests_seen.len(), 3);
        assert!(hv.requests_seen.iter().all(|r| r == REQ_VECTOR));
        // Always busy: a typed error, and the channel is given up.
        let mut hv = Recorded {
            exits: alloc::vec![busy; MAX_BUSY_RETRIES as usize],
            ..Recorded::default()
        };
        let mut channel = GuestChannel::new(&vmpck(), 0, 0).unwrap();
        assert_eq!(run(&mut hv, &mut channel), Err(GhcbError::VmmBusy));
        assert!(channel.is_disabled());
    }

    #[test]
    fn exit_errors_are_typed_and_disable_the_channel() {
        let cases = [
            ((0, 1 << 32), GhcbError::VmmInvalidLength),
            ((0, 7 << 32), GhcbError::Vmm(7)),
            ((0, 0x16), GhcbError::Firmware(0x16)),
            ((0, 0x0000_0003_0000_0016), GhcbError::Vmm(3)),
            ((1, 0x8000_0d0d), GhcbError::EventRefused(1)),
            ((0xFFFF_FFFF_0000_0002, 0), GhcbError::EventRefused(2)),
        ];
        for ((exit_info_1, exit_info_2), expected) in cases {
            let mut hv = Recorded {
                exits: alloc::vec![Answer {
                    exit_info_1,
                    exit_info_2,
                    response: Some(RSP_VECTOR),
                }],
                ..Recorded::default()
            };
            let mut channel = GuestChannel::new(&vmpck(), 0, 0).unwrap();
            assert_eq!(run(&mut hv, &mut channel), Err(expected), "{expected}");
            assert!(channel.is_disabled(), "{expected}");
            assert!(!expected.to_string().is_empty());
        }
    }

    #[test]
    fn firmware_status_inside_the_response_and_a_bad_tag() {
        // The firmware answered (authentic, in sequence) with INVALID_PARAM in the payload.
        let mut hv = Recorded {
            exits: alloc::vec![Answer {
                response: Some(RSP_INVALID_PARAM),
                ..OK
            }],
            ..Recorded::default()
        };
        let mut channel = GuestChannel::new(&vmpck(), 0, 0).unwrap();
        assert_eq!(
            run(&mut hv, &mut channel),
            Err(GhcbError::Channel(GuestMsgError::FirmwareStatus(0x16)))
        );
        assert_eq!(channel.last_sequence_number(), 2);
        // A response whose tag does not verify (the hypervisor flipped one ciphertext bit).
        let mut page = *RSP_VECTOR;
        page[0x60 + REPORT_RESPONSE_BYTES / 2] ^= 0x80;
        let tampered: &'static [u8; 4096] = alloc::boxed::Box::leak(alloc::boxed::Box::new(page));
        let mut hv = Recorded {
            exits: alloc::vec![Answer {
                response: Some(tampered),
                ..OK
            }],
            ..Recorded::default()
        };
        let mut channel = GuestChannel::new(&vmpck(), 0, 0).unwrap();
        assert_eq!(
            run(&mut hv, &mut channel),
            Err(GhcbError::Channel(GuestMsgError::AuthenticationFailed))
        );
        assert!(channel.is_disabled());
    }

    #[test]
    fn msr_protocol_exchanges() {
        let mut hv = Recorded {
            msr_script: alloc::vec![
                // SEV info: versions 1..=2, C-bit 51.
                (0x002, 0x0002_0001_3300_0001),
                (0x080, (0b101 << 12) | 0x081),
                (0x012 | (0x7_D000 >> 12 << 12), 0x7_D000 | 0x013),
                // Page 0x7_F000 → shared: GFN 0x7F in bits 51:12, operation 2 in 55:52.
                (0x0020_0000_0007_F014, 0x015),
                (0x0010_0000_0007_F014, (0x4u64 << 32) | 0x015),
                (0x002, 0x0001_0001_3300_0001),
                (0x080, 0x081),
                (0x002, 0x0002_0001_3300_0005),
                (0x012 | (0x7_D000 >> 12 << 12), 0x7_C000 | 0x013),
                (0x0003_0100, 0),
            ],
            ..Recorded::default()
        };
        assert_eq!(
            sev_info(&mut hv),
            Ok(SevInfo {
                min_version: 1,
                max_version: 2,
                c_bit: 51
            })
        );
        assert_eq!(hypervisor_features(&mut hv), Ok(0b101));
        assert_eq!(register_ghcb(&mut hv, 0x7_D000), Ok(()));
        assert_eq!(
            page_state_change(&mut hv, 0x7_F000, PageState::Shared),
            Ok(())
        );
        assert_eq!(
            page_state_change(&mut hv, 0x7_F000, PageState::Private),
            Err(GhcbError::PageStateChange(4))
        );
        assert_eq!(
            sev_info(&mut hv),
            Err(GhcbError::UnsupportedProtocol { min: 1, max: 1 })
        );
        assert_eq!(hypervisor_features(&mut hv), Err(GhcbError::NoSnpSupport));
        assert_eq!(
            sev_info(&mut hv),
            Err(GhcbError::UnexpectedResponse {
                expected: 1,
                got: 5
            })
        );
        assert_eq!(
            register_ghcb(&mut hv, 0x7_D000),
            Err(GhcbError::GhcbNotRegistered)
        );
        request_termination(&mut hv, 3);
        assert!(hv.msr_script.is_empty());
        assert_eq!(
            encode_page_state_change(1 << 52, PageState::Private),
            Err(GhcbError::AddressTooHigh)
        );
    }

    fn secrets_page(version: u32) -> [u8; 4096] {
        let mut page = [0u8; 4096];
        page[..4].copy_from_slice(&version.to_le_bytes());
        page[4] = 1;
        page[8..12].copy_from_slice(&0x00a0_0f11u32.to_le_bytes());
        page[0x20..0x40].copy_from_slice(&vmpck());
        // VMPCK1 withheld (zeros); VMPCK2 and 3 present.
        page[0x60..0x80].fill(0x22);
        page[0x80..0xA0].fill(0x33);
        page[0xA0..0xA4].copy_from_slice(&6u32.to_le_bytes());
        page[0xA8..0xAC].copy_from_slice(&9u32.to_le_bytes());
        page
    }

    #[test]
    fn secrets_page_layout() {
        let secrets = SecretsPage::parse(&secrets_page(3)).unwrap();
        assert_eq!(secrets.version, 3);
        assert!(secrets.imi_enabled);
        assert_eq!(secrets.fms, 0x00a0_0f11);
        assert_eq!(secrets.sequence_numbers, [6, 0, 9, 0]);
        assert!(secrets.channel(1).is_none(), "a zero key is withheld");
        assert!(secrets.channel(4).is_none());
        let channel = secrets.channel(2).unwrap();
        assert_eq!(channel.last_sequence_number(), 9);
        // VMPCK0 from the page seals exactly the recorded request once its counter is 0.
        let mut page = secrets_page(2);
        page[0xA0..0xA4].fill(0);
        let mut channel = SecretsPage::parse(&page).unwrap().channel(0).unwrap();
        let mut request = [0u8; 4096];
        channel
            .seal_report_request(&report_data(), 0, &mut request)
            .unwrap();
        assert_eq!(&request, REQ_VECTOR);
        assert_eq!(
            SecretsPage::parse(&secrets_page(1)).unwrap_err(),
            SecretsError::UnknownVersion(1)
        );
        let shown = alloc::format!("{secrets:?}");
        assert!(!shown.contains("vmpck") && !shown.contains("51"), "{shown}");
    }
}
