//! Verifying an attestation report: every check is a typed value with its outcome and reason.
//!
//! A verdict accepts a report only when no check failed. A check that was not asked for (no
//! expected measurement, no time given, a chip id the report masks) is `NotChecked` and says
//! so; it never counts as a pass in the printed verdict, and governance decides whether it
//! may be absent (admission requires the measurement, see `image`'s registry data).
//!
//! The chain is ARK (self-signed, pinned) → ASK (VCEK) or ASVK (VLEK) → VCEK/VLEK → report:
//! AMD #57230 (VCEK/KDS spec) for the certificates, ABI #56860 for the report signature
//! (ECDSA P-384/SHA-384 over bytes `[0, 0x2A0)`).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use p384::ecdsa::signature::Verifier;

use super::cert::AmdCert;
use super::report::{AttestationReport, Product, SigningKey, Tcb};
use super::roots::{is_pinned_ark, TrustAnchors};

/// Number of VMPLs (0..=3).
pub const VMPL_COUNT: usize = 4;

/// What a verifier requires of the guest beyond the signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Accept a guest whose policy allows debugging (the host can read its memory).
    pub allow_debug: bool,
    /// Accept a guest whose policy allows SMT.
    pub allow_smt: bool,
    /// Accept a guest whose policy allows a migration agent.
    pub allow_migrate_ma: bool,
    /// `allowed_vmpls[n]`: accept a report requested from VMPL n.
    pub allowed_vmpls: [bool; VMPL_COUNT],
    /// Each component of `reported_tcb` and `current_tcb` must be at least this.
    pub min_tcb: Option<Tcb>,
}

impl Default for Policy {
    /// Debug and migration agents refused; SMT and every VMPL accepted; no TCB floor.
    fn default() -> Policy {
        Policy {
            allow_debug: false,
            allow_smt: true,
            allow_migrate_ma: false,
            allowed_vmpls: [true; VMPL_COUNT],
            min_tcb: None,
        }
    }
}

/// Everything a verification needs besides the report and the leaf certificate.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The guest policy requirements.
    pub policy: Policy,
    /// The expected launch measurement, if the verifier knows it.
    pub measurement: Option<[u8; 48]>,
    /// The expected report_data (for cairn: [`super::binding::report_data_for_keys`]).
    pub report_data: Option<[u8; 64]>,
    /// The time (Unix seconds) at which certificate validity is judged; `None` skips it.
    pub now_unix_s: Option<u64>,
}

impl VerifyOptions {
    /// The options governance uses to admit a node: its registered measurement, the
    /// report_data of its registered keys, the time of the decision, and the policy.
    pub fn for_admission(
        measurement: [u8; 48],
        report_data: [u8; 64],
        now_unix_s: u64,
        policy: Policy,
    ) -> VerifyOptions {
        VerifyOptions {
            policy,
            measurement: Some(measurement),
            report_data: Some(report_data),
            now_unix_s: Some(now_unix_s),
        }
    }
}

/// The checks a verdict holds, in the order they are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckId {
    /// The report has the right size and a supported version.
    ReportFormat,
    /// The leaf certificate (VCEK/VLEK) parses and holds a P-384 key.
    LeafCertificate,
    /// The root is one of the pinned AMD ARKs.
    ArkPinned,
    /// The ARK's self-signature verifies.
    ArkSelfSigned,
    /// The ASK (or ASVK) is signed by the ARK.
    AskSignedByArk,
    /// The VCEK (or VLEK) is signed by the ASK (or ASVK).
    VekSignedByAsk,
    /// Every certificate in the chain is valid at the given time.
    CertificateValidity,
    /// `signature_algo` is ECDSA P-384/SHA-384.
    SignatureAlgorithm,
    /// The report's ECDSA signature verifies under the VCEK/VLEK key.
    ReportSignature,
    /// The report's signing_key field names the kind of certificate supplied.
    SigningKeyKind,
    /// chip_id equals the VCEK's hwID.
    ChipId,
    /// reported_tcb equals the VCEK's SPL extensions.
    ReportedTcb,
    /// The CPUID in a v3+ report belongs to the chain's product line.
    ProductCpuid,
    /// Guest policy: debugging.
    PolicyDebug,
    /// Guest policy: SMT.
    PolicySmt,
    /// Guest policy: migration agent.
    PolicyMigrateMa,
    /// The VMPL is allowed.
    Vmpl,
    /// The TCB meets the minimum.
    MinimumTcb,
    /// The measurement is the expected one.
    Measurement,
    /// report_data is the expected one.
    ReportData,
}

impl CheckId {
    /// A stable short name (used by the CLI and by tests against expected.json).
    pub fn name(self) -> &'static str {
        match self {
            CheckId::ReportFormat => "report_format",
            CheckId::LeafCertificate => "leaf_certificate",
            CheckId::ArkPinned => "ark_pinned",
            CheckId::ArkSelfSigned => "ark_self",
            CheckId::AskSignedByArk => "ask_by_ark",
            CheckId::VekSignedByAsk => "vek_by_ask",
            CheckId::CertificateValidity => "cert_validity",
            CheckId::SignatureAlgorithm => "signature_algo",
            CheckId::ReportSignature => "report_signature",
            CheckId::SigningKeyKind => "signing_key",
            CheckId::ChipId => "chip_id",
            CheckId::ReportedTcb => "reported_tcb",
            CheckId::ProductCpuid => "product_cpuid",
            CheckId::PolicyDebug => "policy_debug",
            CheckId::PolicySmt => "policy_smt",
            CheckId::PolicyMigrateMa => "policy_migrate_ma",
            CheckId::Vmpl => "vmpl",
            CheckId::MinimumTcb => "minimum_tcb",
            CheckId::Measurement => "measurement",
            CheckId::ReportData => "report_data",
        }
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Checked and satisfied.
    Pass,
    /// Checked and violated.
    Fail,
    /// Not checked (not requested, not applicable, or impossible because of an earlier failure).
    NotChecked,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::NotChecked => "NOT CHECKED",
        })
    }
}

/// One check with its outcome and the reason for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Which check.
    pub id: CheckId,
    /// Its outcome.
    pub outcome: Outcome,
    /// Why, in one sentence.
    pub reason: String,
}

/// The verdict on a report: every check made, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The checks.
    pub checks: Vec<Check>,
    /// The product line the chain belongs to, when known.
    pub product: Option<Product>,
}

impl Verdict {
    /// Accepted when no check failed (and the report parsed and its signature was checked).
    pub fn accepted(&self) -> bool {
        self.checks.iter().all(|c| c.outcome != Outcome::Fail)
            && self.outcome(CheckId::ReportSignature) == Some(Outcome::Pass)
    }

    /// Whether governance may admit the node: the report is accepted *and* the checks that
    /// admission cannot do without were made and passed — the whole chain to a pinned AMD
    /// root, certificate validity at a given time, the expected measurement and the expected
    /// report_data (the node's keys, [`super::binding`]). A verdict with any of these
    /// `NotChecked` is not an admission.
    pub fn admits(&self) -> bool {
        const REQUIRED: [CheckId; 8] = [
            CheckId::ArkPinned,
            CheckId::ArkSelfSigned,
            CheckId::AskSignedByArk,
            CheckId::VekSignedByAsk,
            CheckId::CertificateValidity,
            CheckId::ReportSignature,
            CheckId::Measurement,
            CheckId::ReportData,
        ];
        self.accepted()
            && REQUIRED
                .iter()
                .all(|&id| self.outcome(id) == Some(Outcome::Pass))
    }

    /// The check with this id.
    pub fn check(&self, id: CheckId) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    /// The outcome of the check with this id.
    pub fn outcome(&self, id: CheckId) -> Option<Outcome> {
        self.check(id).map(|c| c.outcome)
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.outcome == Outcome::Fail)
    }

    fn push(&mut self, id: CheckId, outcome: Outcome, reason: impl Into<String>) {
        self.checks.push(Check {
            id,
            outcome,
            reason: reason.into(),
        });
    }

    fn pass_fail(
        &mut self,
        id: CheckId,
        ok: bool,
        pass: impl Into<String>,
        fail: impl Into<String>,
    ) {
        if ok {
            self.push(id, Outcome::Pass, pass);
        } else {
            self.push(id, Outcome::Fail, fail);
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(
                f,
                "{:<12} {:<18} {}",
                c.outcome.to_string(),
                c.id.name(),
                c.reason
            )?;
        }
        let failed = self.failures().count();
        if self.accepted() {
            write!(f, "verdict: ACCEPT")
        } else {
            write!(f, "verdict: REJECT ({failed} check(s) failed)")
        }
    }
}

/// The kind of leaf certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeafKind {
    Vcek,
    Vlek,
}

/// Verifies `report_bytes` against the leaf certificate `vek_der` (a VCEK or VLEK, DER) and the
/// trust anchors. Every check is recorded; nothing short-circuits except what depends on a
/// parse that failed.
pub fn verify(
    report_bytes: &[u8],
    vek_der: &[u8],
    anchors: &TrustAnchors,
    options: &VerifyOptions,
) -> Verdict {
    let mut v = Verdict {
        checks: Vec::new(),
        product: None,
    };
    let report = match AttestationReport::parse(report_bytes) {
        Ok(r) => {
            v.push(
                CheckId::ReportFormat,
                Outcome::Pass,
                format!("version {} report", r.version()),
            );
            Some(r)
        }
        Err(e) => {
            v.push(CheckId::ReportFormat, Outcome::Fail, e.to_string());
            None
        }
    };
    let leaf = match AmdCert::from_der(vek_der) {
        Ok(c) => {
            let reason = c.subject_cn().unwrap_or_default();
            v.push(CheckId::LeafCertificate, Outcome::Pass, reason);
            Some(c)
        }
        Err(e) => {
            v.push(CheckId::LeafCertificate, Outcome::Fail, e.to_string());
            None
        }
    };
    let chain = check_chain(&mut v, leaf.as_ref(), anchors, options.now_unix_s);
    match (&report, &leaf) {
        (Some(report), Some(leaf)) => check_report(&mut v, report, leaf, chain, options),
        _ => {
            v.push(
                CheckId::ReportSignature,
                Outcome::NotChecked,
                "report or certificate unusable",
            );
        }
    }
    v
}

/// Checks ARK → ASK/ASVK → leaf and returns the product of the chain's root.
fn check_chain(
    v: &mut Verdict,
    leaf: Option<&AmdCert>,
    anchors: &TrustAnchors,
    now_unix_s: Option<u64>,
) -> Option<Product> {
    let Some(leaf) = leaf else {
        v.push(
            CheckId::VekSignedByAsk,
            Outcome::NotChecked,
            "no usable leaf certificate",
        );
        return None;
    };
    let Some((ask, ask_named)) = anchors.intermediate_for(leaf) else {
        v.push(
            CheckId::VekSignedByAsk,
            Outcome::Fail,
            "no ASK/ASVK among the trust anchors",
        );
        return None;
    };
    let Some((ark, ark_named)) = anchors.root_for(ask) else {
        v.push(
            CheckId::ArkSelfSigned,
            Outcome::Fail,
            "no ARK among the trust anchors",
        );
        return None;
    };
    let ark_cn = ark.subject_cn().unwrap_or_default();
    let ask_cn = ask.subject_cn().unwrap_or_default();
    v.pass_fail(
        CheckId::ArkPinned,
        is_pinned_ark(ark),
        format!("{ark_cn} is a pinned AMD root"),
        format!("{ark_cn} is not one of the pinned AMD roots"),
    );
    match ark.verify_signed_by(ark) {
        Ok(()) => v.push(
            CheckId::ArkSelfSigned,
            Outcome::Pass,
            format!("{ark_cn} self-signature verifies"),
        ),
        Err(e) => v.push(
            CheckId::ArkSelfSigned,
            Outcome::Fail,
            format!("{ark_cn}: {e}"),
        ),
    }
    let ask_result = ask.verify_signed_by(ark);
    let ask_ok = ark_named && ask_result.is_ok();
    v.pass_fail(
        CheckId::AskSignedByArk,
        ask_ok,
        format!("{ask_cn} is signed by {ark_cn}"),
        link_failure(&ask_cn, &ark_cn, ark_named, ask_result.err()),
    );
    let leaf_cn = leaf.subject_cn().unwrap_or_default();
    let leaf_result = leaf.verify_signed_by(ask);
    let leaf_ok = ask_named && leaf_result.is_ok();
    v.pass_fail(
        CheckId::VekSignedByAsk,
        leaf_ok,
        format!("{leaf_cn} is signed by {ask_cn}"),
        link_failure(&leaf_cn, &ask_cn, ask_named, leaf_result.err()),
    );
    check_validity(v, &[ark, ask, leaf], now_unix_s);
    ark.subject_cn().as_deref().and_then(Product::from_name)
}

fn link_failure(
    child: &str,
    parent: &str,
    named: bool,
    err: Option<super::cert::CertError>,
) -> String {
    let mut reason = String::new();
    if !named {
        reason.push_str(&format!("issuer of {child} is not {parent}"));
    }
    if let Some(e) = err {
        if !reason.is_empty() {
            reason.push_str("; ");
        }
        reason.push_str(&format!("{child} signature by {parent}: {e}"));
    }
    reason
}

fn check_validity(v: &mut Verdict, chain: &[&AmdCert], now_unix_s: Option<u64>) {
    let Some(now) = now_unix_s else {
        v.push(
            CheckId::CertificateValidity,
            Outcome::NotChecked,
            "no verification time given",
        );
        return;
    };
    let mut problems = Vec::new();
    for cert in chain {
        let (not_before, not_after) = cert.validity_unix_s();
        if now < not_before || now > not_after {
            problems.push(format!(
                "{} is valid {}..{}",
                cert.subject_cn().unwrap_or_default(),
                format_date(not_before),
                format_date(not_after)
            ));
        }
    }
    let at = format_date(now);
    if problems.is_empty() {
        v.push(
            CheckId::CertificateValidity,
            Outcome::Pass,
            format!("all certificates valid at {at}"),
        );
    } else {
        v.push(
            CheckId::CertificateValidity,
            Outcome::Fail,
            format!("at {at}: {}", problems.join("; ")),
        );
    }
}

fn check_report(
    v: &mut Verdict,
    report: &AttestationReport,
    leaf: &AmdCert,
    chain_product: Option<Product>,
    options: &VerifyOptions,
) {
    let ext = leaf.amd_extensions().unwrap_or_default();
    let product =
        chain_product.or_else(|| ext.product_name.as_deref().and_then(Product::from_name));
    v.product = product;
    let kind = if ext.csp_id.is_some() || leaf.subject_cn().is_some_and(|cn| cn.contains("VLEK")) {
        LeafKind::Vlek
    } else {
        LeafKind::Vcek
    };
    v.pass_fail(
        CheckId::SignatureAlgorithm,
        report.signature_algo() == super::report::SIGNATURE_ALGO_ECDSA_P384_SHA384,
        "ECDSA P-384 with SHA-384",
        format!(
            "signature_algo {} is not ECDSA P-384/SHA-384 (1)",
            report.signature_algo()
        ),
    );
    check_signature(v, report, leaf);
    let expected_key = match kind {
        LeafKind::Vcek => SigningKey::Vcek,
        LeafKind::Vlek => SigningKey::Vlek,
    };
    v.pass_fail(
        CheckId::SigningKeyKind,
        report.signing_key() == expected_key,
        format!("report signed by the {expected_key}"),
        format!(
            "report says signing key {}, certificate is a {expected_key}",
            report.signing_key()
        ),
    );
    check_chip_id(v, report, kind, ext.hwid.as_deref());
    check_reported_tcb(v, report, product, &ext);
    check_product_cpuid(v, report, product);
    check_policy(v, report, product, &options.policy);
    check_expected(
        v,
        CheckId::Measurement,
        "measurement",
        &report.measurement(),
        options.measurement.as_ref().map(|m| &m[..]),
    );
    check_expected(
        v,
        CheckId::ReportData,
        "report_data",
        &report.report_data(),
        options.report_data.as_ref().map(|m| &m[..]),
    );
}

fn check_signature(v: &mut Verdict, report: &AttestationReport, leaf: &AmdCert) {
    let key = match leaf.p384_public_key() {
        Ok(k) => k,
        Err(e) => return v.push(CheckId::ReportSignature, Outcome::Fail, e.to_string()),
    };
    let Some(sig_be) = report.signature_p384_be() else {
        return v.push(
            CheckId::ReportSignature,
            Outcome::Fail,
            "signature R/S padding is not zero",
        );
    };
    let Ok(sig) = p384::ecdsa::Signature::from_slice(&sig_be) else {
        return v.push(
            CheckId::ReportSignature,
            Outcome::Fail,
            "R or S is not a valid P-384 scalar",
        );
    };
    v.pass_fail(
        CheckId::ReportSignature,
        key.verify(report.signed_bytes(), &sig).is_ok(),
        "ECDSA P-384 signature over bytes [0, 0x2A0) verifies under the certificate key",
        "ECDSA P-384 signature over bytes [0, 0x2A0) does not verify under the certificate key",
    );
}

fn check_chip_id(v: &mut Verdict, report: &AttestationReport, kind: LeafKind, hwid: Option<&[u8]>) {
    if kind == LeafKind::Vlek {
        return v.push(
            CheckId::ChipId,
            Outcome::NotChecked,
            "a VLEK certifies no chip (no hwID)",
        );
    }
    if report.mask_chip_id() {
        return v.push(
            CheckId::ChipId,
            Outcome::NotChecked,
            "the guest masked chip_id (flags bit 1)",
        );
    }
    let Some(hwid) = hwid else {
        return v.push(
            CheckId::ChipId,
            Outcome::Fail,
            "the VCEK has no hwID extension",
        );
    };
    let chip_id = report.chip_id();
    // Turin hwIDs are 8 bytes; the rest of chip_id must then be zero.
    let ok = !hwid.is_empty()
        && chip_id.get(..hwid.len()) == Some(hwid)
        && chip_id.iter().skip(hwid.len()).all(|&b| b == 0);
    v.pass_fail(
        CheckId::ChipId,
        ok,
        format!("chip_id matches the VCEK hwID ({} bytes)", hwid.len()),
        format!(
            "chip_id {}… differs from the VCEK hwID {}…",
            hex_prefix(&chip_id),
            hex_prefix(hwid)
        ),
    );
}

fn check_reported_tcb(
    v: &mut Verdict,
    report: &AttestationReport,
    product: Option<Product>,
    ext: &super::cert::AmdExtensions,
) {
    let Some(product) = product else {
        return v.push(
            CheckId::ReportedTcb,
            Outcome::Fail,
            "unknown product: TCB layout undecidable",
        );
    };
    let tcb = report.reported_tcb(product);
    let certified = match (ext.bl_spl, ext.tee_spl, ext.snp_spl, ext.ucode_spl) {
        (Some(bl), Some(tee), Some(snp), Some(ucode)) => Tcb {
            fmc: if product.has_fmc() { ext.fmc_spl } else { None },
            bootloader: bl,
            tee,
            snp,
            microcode: ucode,
        },
        _ => {
            return v.push(
                CheckId::ReportedTcb,
                Outcome::Fail,
                "the certificate lacks SPL extensions",
            )
        }
    };
    v.pass_fail(
        CheckId::ReportedTcb,
        tcb == certified,
        format!("reported_tcb {tcb} ({product} layout) equals the certificate's SPLs"),
        format!("reported_tcb {tcb} ({product} layout) differs from the certificate's {certified}"),
    );
}

fn check_product_cpuid(v: &mut Verdict, report: &AttestationReport, product: Option<Product>) {
    let Some((family, model, stepping)) = report.cpuid() else {
        return v.push(
            CheckId::ProductCpuid,
            Outcome::NotChecked,
            "version 2 reports carry no CPUID",
        );
    };
    let Some(product) = product else {
        return v.push(CheckId::ProductCpuid, Outcome::Fail, "unknown product");
    };
    v.pass_fail(
        CheckId::ProductCpuid,
        product.matches_cpuid(family, model),
        format!("CPUID family {family:#x} model {model:#x} stepping {stepping} is {product}"),
        format!("CPUID family {family:#x} model {model:#x} is not {product}"),
    );
}

fn check_policy(
    v: &mut Verdict,
    report: &AttestationReport,
    product: Option<Product>,
    policy: &Policy,
) {
    let gp = report.policy();
    let bits = gp.0;
    v.pass_fail(
        CheckId::PolicyDebug,
        !gp.debug() || policy.allow_debug,
        format!(
            "guest policy {bits:#x}: debug {}",
            if gp.debug() {
                "allowed by verifier policy"
            } else {
                "off"
            }
        ),
        format!("guest policy {bits:#x} has DEBUG (bit 19) set: the host can read guest memory"),
    );
    v.pass_fail(
        CheckId::PolicySmt,
        !gp.smt() || policy.allow_smt,
        format!("guest policy SMT bit {}", u8::from(gp.smt())),
        format!("guest policy {bits:#x} allows SMT (bit 16) and the verifier policy forbids it"),
    );
    v.pass_fail(
        CheckId::PolicyMigrateMa,
        !gp.migrate_ma() || policy.allow_migrate_ma,
        format!("guest policy MIGRATE_MA bit {}", u8::from(gp.migrate_ma())),
        format!("guest policy {bits:#x} allows a migration agent (bit 18)"),
    );
    let vmpl = report.vmpl();
    let vmpl_ok = usize::try_from(vmpl)
        .ok()
        .and_then(|i| policy.allowed_vmpls.get(i))
        .copied()
        .unwrap_or(false);
    v.pass_fail(
        CheckId::Vmpl,
        vmpl_ok,
        format!("VMPL {vmpl} is allowed"),
        format!("VMPL {vmpl} is not allowed"),
    );
    let Some(min) = policy.min_tcb else {
        return v.push(
            CheckId::MinimumTcb,
            Outcome::NotChecked,
            "no minimum TCB given",
        );
    };
    let Some(product) = product else {
        return v.push(
            CheckId::MinimumTcb,
            Outcome::Fail,
            "unknown product: TCB layout undecidable",
        );
    };
    let reported = report.reported_tcb(product);
    let current = Tcb::decode(report.current_tcb_raw(), product);
    v.pass_fail(
        CheckId::MinimumTcb,
        reported.meets(&min) && current.meets(&min),
        format!("reported {reported} and current {current} meet {min}"),
        format!("reported {reported} or current {current} is below {min}"),
    );
}

fn check_expected(
    v: &mut Verdict,
    id: CheckId,
    what: &str,
    actual: &[u8],
    expected: Option<&[u8]>,
) {
    match expected {
        None => v.push(
            id,
            Outcome::NotChecked,
            format!("no expected {what} given (report has {})", hex(actual)),
        ),
        Some(e) if e == actual => v.push(id, Outcome::Pass, format!("{what} {}", hex(actual))),
        Some(e) => v.push(
            id,
            Outcome::Fail,
            format!("{what} {} != expected {}", hex(actual), hex(e)),
        ),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_prefix(bytes: &[u8]) -> String {
    hex(bytes.get(..8).unwrap_or(bytes))
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (UTC) of a Unix time, `YYYY-MM-DD`.
pub fn format_date(unix_s: u64) -> String {
    let days = i64::try_from(unix_s / 86_400).unwrap_or(i64::MAX);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Parses `YYYY-MM-DD` (midnight UTC) into Unix seconds.
pub fn parse_date(s: &str) -> Option<u64> {
    let mut parts = s.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    u64::try_from(days_from_civil(year, month, day))
        .ok()?
        .checked_mul(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2025-06-01"), Some(1_748_736_000));
        assert_eq!(format_date(1_748_736_000), "2025-06-01");
        assert_eq!(format_date(parse_date("2000-02-29").unwrap()), "2000-02-29");
        assert_eq!(parse_date("2025-13-01"), None);
        assert_eq!(parse_date("2025-06"), None);
        assert_eq!(parse_date("x"), None);
    }

    #[test]
    fn garbage_inputs_fail_without_panicking() {
        let anchors = TrustAnchors::pinned_amd().unwrap();
        let v = verify(
            &[1, 2, 3],
            &[0x30, 0x03, 1, 2, 3],
            &anchors,
            &VerifyOptions::default(),
        );
        assert!(!v.accepted());
        assert_eq!(v.outcome(CheckId::ReportFormat), Some(Outcome::Fail));
        assert_eq!(v.outcome(CheckId::LeafCertificate), Some(Outcome::Fail));
        assert_eq!(
            v.outcome(CheckId::ReportSignature),
            Some(Outcome::NotChecked)
        );
    }

    #[test]
    fn tcb_minimum() {
        let have = Tcb {
            fmc: None,
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
        };
        assert!(have.meets(&have));
        assert!(!have.meets(&Tcb {
            microcode: 116,
            ..have
        }));
        assert!(!have.meets(&Tcb {
            fmc: Some(0),
            ..have
        }));
        assert!(have.meets(&Tcb { snp: 7, ..have }));
    }
}
