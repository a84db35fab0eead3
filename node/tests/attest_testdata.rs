//! Acceptance for `node::attest` against the real AMD reports and certificates in
//! `../shared/testdata/sev-snp/`: every case verifies or fails exactly as `expected.json`
//! says, for the stated reason; mutated reports and certificates never verify.

use std::path::{Path, PathBuf};

use node::attest::cert::AmdCert;
use node::attest::report::SigningKey;
use node::attest::verify::parse_date;
use node::attest::{
    verify, AttestationReport, CheckId, Outcome, Product, TrustAnchors, Verdict, VerifyOptions,
};
use serde_json::Value;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/sev-snp")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(testdata().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

/// The leaf certificate of a file: DER as is, PEM → its first certificate.
fn leaf_der(rel: &str) -> Vec<u8> {
    let bytes = std::fs::read(testdata().join(rel)).expect(rel);
    if rel.ends_with(".pem") {
        AmdCert::from_pem_chain(&bytes).expect("pem")[0]
            .der()
            .to_vec()
    } else {
        bytes
    }
}

/// Trust anchors from `amd-roots/a.pem + amd-roots/b.pem`.
fn anchors_from(spec: &str) -> TrustAnchors {
    let mut certs = Vec::new();
    for rel in spec.split('+').map(str::trim) {
        let bytes = std::fs::read(testdata().join(rel)).expect(rel);
        certs.extend(AmdCert::from_pem_chain(&bytes).expect("roots pem"));
    }
    TrustAnchors::from_certs(certs)
}

fn options_at(date: &str) -> VerifyOptions {
    VerifyOptions {
        now_unix_s: parse_date(date),
        ..VerifyOptions::default()
    }
}

/// A date at which every sample certificate is valid: after the Turin VCEK's notBefore
/// (2025-07-17) and before the VLEK's notAfter (2025-12-10).
const FIXED_DATE: &str = "2025-09-01";

/// expected.json's check names → ours.
const CHECK_MAP: [(&str, CheckId); 6] = [
    ("ark_self", CheckId::ArkSelfSigned),
    ("ask_by_ark", CheckId::AskSignedByArk),
    ("vek_by_ask", CheckId::VekSignedByAsk),
    ("report_sig_valid", CheckId::ReportSignature),
    ("chip_id_matches_vek_hwid", CheckId::ChipId),
    ("reported_tcb_matches_vek", CheckId::ReportedTcb),
];

fn assert_checks_match(name: &str, checks: &Value, verdict: &Verdict) {
    for (key, id) in CHECK_MAP {
        let got = verdict
            .outcome(id)
            .unwrap_or_else(|| panic!("{name}: no check {id}"));
        match checks.get(key).and_then(Value::as_bool) {
            Some(true) => assert_eq!(got, Outcome::Pass, "{name}: {key}\n{verdict}"),
            Some(false) => assert_eq!(got, Outcome::Fail, "{name}: {key}\n{verdict}"),
            // The VLEK case has no chip-id expectation: a VLEK certifies no chip.
            None => assert_eq!(got, Outcome::NotChecked, "{name}: {key}\n{verdict}"),
        }
    }
    // The chain used is the one expected.json names (CN=ARK-…, CN=SEV-…).
    let cn = |k: &str| {
        let dn = checks[k].as_str().unwrap();
        dn.split(',')
            .next()
            .unwrap()
            .trim_start_matches("CN=")
            .to_string()
    };
    let ask_reason = &verdict.check(CheckId::AskSignedByArk).unwrap().reason;
    assert!(
        ask_reason.contains(&cn("ark_cn")) && ask_reason.contains(&cn("ask_cn")),
        "{name}: {ask_reason}"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn genuine_reports_verify_as_expected() {
    let exp = expected();
    let pinned = TrustAnchors::pinned_amd().unwrap();
    let cases = exp["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 8);
    for (name, case) in cases {
        let files = &case["files"];
        let report = std::fs::read(testdata().join(files["report"].as_str().unwrap())).unwrap();
        let vek = leaf_der(files["vek"].as_str().unwrap());
        let opts = options_at(FIXED_DATE);
        for anchors in [&pinned, &anchors_from(files["roots"].as_str().unwrap())] {
            let verdict = verify(&report, &vek, anchors, &opts);
            assert_checks_match(name, &case["checks"], &verdict);
            assert_eq!(
                verdict.outcome(CheckId::ArkPinned),
                Some(Outcome::Pass),
                "{name}"
            );
            assert_eq!(
                verdict.outcome(CheckId::CertificateValidity),
                Some(Outcome::Pass),
                "{name}\n{verdict}"
            );
            assert_eq!(
                verdict.outcome(CheckId::Measurement),
                Some(Outcome::NotChecked)
            );
            let debug = case["report"]["policy_debug"].as_u64().unwrap() == 1;
            if debug {
                // The one genuine "valid signature, bad policy" sample: rejected for DEBUG only.
                let failed: Vec<CheckId> = verdict.failures().map(|c| c.id).collect();
                assert_eq!(failed, vec![CheckId::PolicyDebug], "{name}\n{verdict}");
                assert!(!verdict.accepted());
            } else {
                assert!(verdict.accepted(), "{name}\n{verdict}");
            }
        }
    }
}

#[test]
fn parsed_fields_match_expected_json() {
    let exp = expected();
    for (name, case) in exp["cases"].as_object().unwrap() {
        let r = &case["report"];
        let bytes =
            std::fs::read(testdata().join(case["files"]["report"].as_str().unwrap())).unwrap();
        let report = AttestationReport::parse(&bytes).unwrap();
        assert_eq!(
            u64::from(report.version()),
            r["version"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            u64::from(report.guest_svn()),
            r["guest_svn"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            format!("{:#x}", report.policy().0),
            r["policy"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            u64::from(report.policy().debug()),
            r["policy_debug"].as_u64().unwrap()
        );
        assert_eq!(
            u64::from(report.policy().smt()),
            r["policy_smt"].as_u64().unwrap()
        );
        assert_eq!(
            u64::from(report.vmpl()),
            r["vmpl"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            format!("{:#x}", report.platform_info()),
            r["platform_info"].as_str().unwrap()
        );
        assert_eq!(
            format!("{:#x}", report.flags()),
            r["flags"].as_str().unwrap()
        );
        let signing = match r["signing_key"].as_u64().unwrap() {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            other => panic!("{name}: signing key {other}"),
        };
        assert_eq!(report.signing_key(), signing);
        assert_eq!(
            hex(&report.report_data()),
            r["report_data"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            hex(&report.measurement()),
            r["measurement"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            hex(&report.report_id()),
            r["report_id"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            hex(&report.reported_tcb_raw().to_le_bytes()),
            r["reported_tcb_raw"].as_str().unwrap()
        );
        assert_eq!(
            hex(&report.current_tcb_raw().to_le_bytes()),
            r["current_tcb_raw"].as_str().unwrap()
        );
        assert_eq!(
            hex(&report.committed_tcb_raw().to_le_bytes()),
            r["committed_tcb_raw"].as_str().unwrap()
        );
        assert_eq!(
            hex(&report.launch_tcb_raw().to_le_bytes()),
            r["launch_tcb_raw"].as_str().unwrap()
        );
        if let Some(chip) = r.get("chip_id").and_then(Value::as_str) {
            assert_eq!(hex(&report.chip_id()), chip, "{name}");
        }
        let (major, minor, build) = report.current_version();
        assert_eq!(
            (u64::from(major), u64::from(minor), u64::from(build)),
            (
                r["current_major"].as_u64().unwrap(),
                r["current_minor"].as_u64().unwrap(),
                r["current_build"].as_u64().unwrap()
            ),
            "{name}"
        );
        match (report.cpuid(), r.get("cpuid_fam_id")) {
            (Some((fam, model, step)), Some(want_fam)) => {
                assert_eq!(u64::from(fam), want_fam.as_u64().unwrap());
                assert_eq!(u64::from(model), r["cpuid_mod_id"].as_u64().unwrap());
                assert_eq!(u64::from(step), r["cpuid_step"].as_u64().unwrap());
            }
            (None, None) => assert_eq!(report.version(), 2),
            // v3 reports from older firmware may leave the CPUID fields zero; expected.json
            // then omits them.
            (Some((0, 0, 0)), None) => {}
            (got, want) => panic!("{name}: cpuid {got:?} vs {want:?}"),
        }
        // The TCB decoded with the product's layout equals expected.json's decoding.
        let product = Product::from_name(case["vek"]["productName"].as_str().unwrap()).unwrap();
        let tcb = report.reported_tcb(product);
        let want = &r["reported_tcb"];
        assert_eq!(
            u64::from(tcb.bootloader),
            want["bootloader"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(u64::from(tcb.tee), want["tee"].as_u64().unwrap(), "{name}");
        assert_eq!(u64::from(tcb.snp), want["snp"].as_u64().unwrap(), "{name}");
        assert_eq!(
            u64::from(tcb.microcode),
            want["microcode"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            tcb.fmc.map(u64::from),
            want.get("fmc").and_then(Value::as_u64),
            "{name}"
        );
    }
}

#[test]
fn vek_extensions_match_expected_json() {
    let exp = expected();
    for (name, case) in exp["cases"].as_object().unwrap() {
        let v = &case["vek"];
        let cert = AmdCert::from_der(&leaf_der(case["files"]["vek"].as_str().unwrap())).unwrap();
        let ext = cert.amd_extensions().unwrap();
        assert_eq!(
            ext.product_name.as_deref(),
            v["productName"].as_str(),
            "{name}"
        );
        let spl = |x: Option<u8>| x.map(u64::from);
        assert_eq!(spl(ext.bl_spl), v["blSPL"].as_u64(), "{name}");
        assert_eq!(spl(ext.tee_spl), v["teeSPL"].as_u64(), "{name}");
        assert_eq!(spl(ext.snp_spl), v["snpSPL"].as_u64(), "{name}");
        assert_eq!(spl(ext.ucode_spl), v["ucodeSPL"].as_u64(), "{name}");
        assert_eq!(spl(ext.fmc_spl), v["fmcSPL"].as_u64(), "{name}");
        assert_eq!(
            ext.hwid.as_deref().map(hex),
            v["hwid"].as_str().map(str::to_string),
            "{name}"
        );
        assert_eq!(
            format!("CN={}", cert.subject_cn().unwrap()),
            v["subject_cn"].as_str().unwrap().split(',').next().unwrap()
        );
    }
}

#[test]
fn negative_cases_fail_for_the_stated_reason() {
    let exp = expected();
    let pinned = TrustAnchors::pinned_amd().unwrap();
    let genoa = anchors_from("amd-roots/ark_genoa.pem + amd-roots/ask_genoa.pem");
    let negatives = exp["negative"].as_object().unwrap();
    assert_eq!(negatives.len(), 10);
    for (name, case) in negatives {
        let files = &case["files"];
        let report = std::fs::read(testdata().join(files["report"].as_str().unwrap())).unwrap();
        let vek = leaf_der(files["vek"].as_str().unwrap());
        let anchors = if name.contains("genoa-roots") {
            &genoa
        } else {
            &pinned
        };
        let verdict = verify(&report, &vek, anchors, &options_at(FIXED_DATE));
        assert_checks_match(name, &case["checks"], &verdict);
        assert!(!verdict.accepted(), "{name}\n{verdict}");
    }
}

#[test]
fn certificates_expire_at_fixed_dates() {
    let report = std::fs::read(testdata().join("milan-v3-vlek-aws-trustee/report.bin")).unwrap();
    let vlek = leaf_der("milan-v3-vlek-aws-trustee/vlek.der");
    let pinned = TrustAnchors::pinned_amd().unwrap();
    let ok = verify(&report, &vlek, &pinned, &options_at("2025-12-10"));
    assert!(ok.accepted(), "{ok}");
    let expired = verify(&report, &vlek, &pinned, &options_at("2025-12-11"));
    assert!(!expired.accepted());
    let failed: Vec<CheckId> = expired.failures().map(|c| c.id).collect();
    assert_eq!(failed, vec![CheckId::CertificateValidity], "{expired}");
    let reason = &expired.check(CheckId::CertificateValidity).unwrap().reason;
    assert!(
        reason.contains("SEV-VLEK") && reason.contains("2025-12-10"),
        "{reason}"
    );
    // Before its notBefore (2025-07-17) the Turin VCEK is not valid either.
    let turin = std::fs::read(testdata().join("turin-v5-oak-oc/report.bin")).unwrap();
    let turin_vcek = leaf_der("turin-v5-oak-oc/vcek.der");
    let early = verify(&turin, &turin_vcek, &pinned, &options_at("2025-06-01"));
    assert_eq!(
        early.failures().map(|c| c.id).collect::<Vec<_>>(),
        vec![CheckId::CertificateValidity]
    );
    // Without a time the validity is reported as not checked, and the rest still passes.
    let untimed = verify(&report, &vlek, &pinned, &VerifyOptions::default());
    assert_eq!(
        untimed.outcome(CheckId::CertificateValidity),
        Some(Outcome::NotChecked)
    );
    assert!(untimed.accepted());
}

#[test]
fn expected_measurement_and_report_data_are_enforced() {
    let report_bytes = std::fs::read(testdata().join("milan-v2-virtee/report.bin")).unwrap();
    let report = AttestationReport::parse(&report_bytes).unwrap();
    let vcek = leaf_der("milan-v2-virtee/vcek.der");
    let pinned = TrustAnchors::pinned_amd().unwrap();
    let mut opts = options_at(FIXED_DATE);
    opts.measurement = Some(report.measurement());
    opts.report_data = Some(report.report_data());
    let v = verify(&report_bytes, &vcek, &pinned, &opts);
    assert!(v.accepted() && v.admits(), "{v}");
    assert_eq!(v.outcome(CheckId::Measurement), Some(Outcome::Pass));
    // Accepted is not admitted: admission needs the measurement, report_data and time checked.
    let partial = verify(&report_bytes, &vcek, &pinned, &options_at(FIXED_DATE));
    assert!(partial.accepted() && !partial.admits());
    let admission = VerifyOptions::for_admission(
        report.measurement(),
        report.report_data(),
        parse_date(FIXED_DATE).unwrap(),
        node::attest::Policy::default(),
    );
    assert!(verify(&report_bytes, &vcek, &pinned, &admission).admits());
    let untimed = VerifyOptions {
        now_unix_s: None,
        ..admission
    };
    assert!(!verify(&report_bytes, &vcek, &pinned, &untimed).admits());
    let mut wrong = report.measurement();
    wrong[47] ^= 1;
    opts.measurement = Some(wrong);
    let v = verify(&report_bytes, &vcek, &pinned, &opts);
    assert_eq!(
        v.failures().map(|c| c.id).collect::<Vec<_>>(),
        vec![CheckId::Measurement]
    );
    // Policy knobs: forbid SMT (this guest allows it), restrict VMPL, demand a newer TCB.
    let mut opts = options_at(FIXED_DATE);
    opts.policy.allow_smt = false;
    opts.policy.allowed_vmpls = [false, true, true, true];
    opts.policy.min_tcb = Some(node::attest::Tcb {
        fmc: None,
        bootloader: 3,
        tee: 0,
        snp: 9,
        microcode: 0,
    });
    let v = verify(&report_bytes, &vcek, &pinned, &opts);
    let failed: Vec<CheckId> = v.failures().map(|c| c.id).collect();
    assert_eq!(
        failed,
        vec![CheckId::PolicySmt, CheckId::Vmpl, CheckId::MinimumTcb],
        "{v}"
    );
}

/// Deterministic positions: every byte of `len` when `stride` is 1.
fn positions(len: usize, stride: usize, offset: usize) -> impl Iterator<Item = usize> {
    (offset % stride..len).step_by(stride)
}

#[test]
fn mutating_the_signed_area_of_a_report_fails() {
    let pinned = TrustAnchors::pinned_amd().unwrap();
    let opts = options_at(FIXED_DATE);
    // (case, stride): the first report is mutated at every byte of the signed area and of
    // the signature fields, the others at every third byte; each position flips another bit.
    let cases = [
        ("milan-v2-virtee/report.bin", "milan-v2-virtee/vcek.der", 1),
        ("turin-v5-oak-oc/report.bin", "turin-v5-oak-oc/vcek.der", 3),
        (
            "genoa-v3-azure-trustee/report.bin",
            "genoa-v3-azure-trustee/vcek.pem",
            1,
        ),
        (
            "milan-v3-vlek-aws-trustee/report.bin",
            "milan-v3-vlek-aws-trustee/vlek.der",
            1,
        ),
    ];
    for (report_rel, vek_rel, stride) in cases {
        let report = std::fs::read(testdata().join(report_rel)).unwrap();
        let vek = leaf_der(vek_rel);
        assert!(verify(&report, &vek, &pinned, &opts).accepted());
        // The signed area [0, 0x2A0) and the signature fields [0x2A0, 0x330).
        for (n, i) in positions(0x330, stride, 3).enumerate() {
            let mut bad = report.clone();
            bad[i] ^= 1 << (n % 8);
            let v = verify(&bad, &vek, &pinned, &opts);
            assert!(
                !v.accepted(),
                "{report_rel}: byte {i:#x} mutated but accepted"
            );
        }
    }
}

#[test]
fn mutating_a_certificate_fails() {
    let pinned = TrustAnchors::pinned_amd().unwrap();
    let opts = options_at(FIXED_DATE);
    let report = std::fs::read(testdata().join("milan-v2-virtee/report.bin")).unwrap();
    let vcek = leaf_der("milan-v2-virtee/vcek.der");
    for (n, i) in positions(vcek.len(), 2, 0).enumerate() {
        let mut bad = vcek.clone();
        bad[i] ^= 1 << (n % 8);
        let v = verify(&report, &bad, &pinned, &opts);
        assert!(!v.accepted(), "VCEK byte {i} mutated but accepted\n{v}");
    }
    // The ASK and the ARK, given as explicit trust anchors.
    let ark = AmdCert::from_der(node::attest::roots::ARK_MILAN_DER).unwrap();
    let ask = node::attest::roots::ASK_MILAN_DER.to_vec();
    for (n, i) in positions(ask.len(), 5, 1).enumerate() {
        let mut bad = ask.clone();
        bad[i] ^= 1 << (n % 8);
        let mut certs = vec![ark.clone()];
        // A mutation may make the DER unparseable: then the chain has no ASK, which fails too.
        certs.extend(AmdCert::from_der(&bad).ok());
        let v = verify(&report, &vcek, &TrustAnchors::from_certs(certs), &opts);
        assert!(!v.accepted(), "ASK byte {i} mutated but accepted");
    }
    let ark_der = node::attest::roots::ARK_MILAN_DER.to_vec();
    let ask_cert = AmdCert::from_der(&ask).unwrap();
    for (n, i) in positions(ark_der.len(), 5, 2).enumerate() {
        let mut bad = ark_der.clone();
        bad[i] ^= 1 << (n % 8);
        let mut certs = vec![ask_cert.clone()];
        certs.extend(AmdCert::from_der(&bad).ok());
        let v = verify(&report, &vcek, &TrustAnchors::from_certs(certs), &opts);
        assert!(!v.accepted(), "ARK byte {i} mutated but accepted");
    }
}

#[test]
fn azure_hcl_reports_bind_their_runtime_claims() {
    use sha2::{Digest, Sha256};
    // Azure CVMs wrap the SNP report in an HCL report: the SNP report is bytes 0x20..0x4C0,
    // and report_data[0..32] is SHA-256 of the runtime-claims JSON at 0x4D4 (length u32 at
    // 0x4D0) (SOURCES.md, "Azure cases").
    for case in ["genoa-v3-azure-trustee", "milan-v2-azure-trustee"] {
        let hcl = std::fs::read(testdata().join(case).join("azure_hcl_report.bin")).unwrap();
        let report = std::fs::read(testdata().join(case).join("report.bin")).unwrap();
        assert_eq!(&hcl[0x20..0x4C0], &report[..], "{case}");
        let len = u32::from_le_bytes(hcl[0x4D0..0x4D4].try_into().unwrap()) as usize;
        let claims = &hcl[0x4D4..0x4D4 + len];
        let parsed = AttestationReport::parse(&report).unwrap();
        assert_eq!(
            &parsed.report_data()[..32],
            &Sha256::digest(claims)[..],
            "{case}"
        );
        assert!(parsed.report_data()[32..].iter().all(|&b| b == 0));
    }
}
