//! `cargo xtask attest admit` against registries written by genesis and genuine reports from
//! the shared SEV-SNP test data. No cairn node has run under SEV-SNP, so no genuine report
//! carries a cairn node's report_data: every admission here must be refused, each for the
//! right reason (and never because a check was skipped).

use std::path::{Path, PathBuf};

use image::genesis::{ConsensusParams, Genesis, Launch};
use node::attest::{CheckId, Outcome};
use serde_json::Value;

use super::{admit_command, hex, measure_command, Admission};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/sev-snp")
}

/// The genuine report used throughout, its VCEK, and what expected.json says it carries.
struct Sample {
    report: String,
    vcek: String,
    measurement: String,
    report_data: String,
}

fn sample() -> Sample {
    const CASE: &str = "milan-v2-virtee";
    let text = std::fs::read_to_string(testdata().join("expected.json")).unwrap();
    let exp: Value = serde_json::from_str(&text).unwrap();
    let case = &exp["cases"][CASE];
    let file = |key: &str| {
        let rel = case["files"][key].as_str().unwrap();
        testdata().join(rel).to_string_lossy().into_owned()
    };
    Sample {
        report: file("report"),
        vcek: file("vek"),
        measurement: case["report"]["measurement"].as_str().unwrap().to_string(),
        report_data: case["report"]["report_data"].as_str().unwrap().to_string(),
    }
}

/// Every sample certificate is valid then.
const FIXED_DATE: &str = "2025-09-01";

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cairn-admit-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A 4-node genesis registry (no AmdSev firmware: measurements null) as JSON.
fn registry(launch: &Launch) -> Value {
    let g = Genesis::new(&[9; 32], 4, 1, ConsensusParams::FAST).unwrap();
    serde_json::from_str(&g.registry_json(launch).unwrap()).unwrap()
}

fn no_firmware() -> Launch {
    Launch {
        firmware: None,
        kernel_efi: PathBuf::from("/nonexistent/kernel.efi"),
        vcpus: 1,
        vcpu_type: "EPYC-v4".to_string(),
        cmdline: None,
    }
}

/// Writes `json` and runs `attest admit` for node 1 on the sample report.
fn admit(dir: &Path, json: &Value) -> Admission {
    let path = dir.join("registry.json");
    std::fs::write(&path, serde_json::to_string_pretty(json).unwrap()).unwrap();
    let s = sample();
    let args: Vec<String> = [
        "--registry",
        &path.to_string_lossy(),
        "--node",
        "1",
        &s.report,
        "--vcek",
        &s.vcek,
        "--at",
        FIXED_DATE,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    admit_command(&args).unwrap()
}

fn failed(a: &Admission) -> Vec<CheckId> {
    a.verdict.failures().map(|c| c.id).collect()
}

#[test]
fn genuine_report_refused_for_report_data_of_other_keys() {
    let dir = scratch("rd");
    let mut json = registry(&no_firmware());
    // The registry lists the report's own measurement, so only the keys can refuse it.
    json["nodes"][1]["measurement"] = Value::String(sample().measurement);
    let a = admit(&dir, &json);
    assert!(!a.admitted, "{}", a.text);
    assert_eq!(failed(&a), vec![CheckId::ReportData], "{}", a.text);
    assert_eq!(a.verdict.outcome(CheckId::Measurement), Some(Outcome::Pass));
    assert_eq!(
        a.verdict.outcome(CheckId::ReportSignature),
        Some(Outcome::Pass)
    );
    assert!(a.text.contains("PASS         registry_keys"), "{}", a.text);
    assert!(a.text.contains("FAIL         report_data"), "{}", a.text);
    let last = a.text.lines().last().unwrap();
    assert!(
        last.starts_with("admission: REFUSE node 1") && last.contains("failed: report_data"),
        "{last}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn genuine_report_refused_for_another_measurement() {
    let dir = scratch("m");
    let mut json = registry(&no_firmware());
    let s = sample();
    let mut other = s.measurement.clone();
    other.replace_range(0..2, if &other[0..2] == "00" { "01" } else { "00" });
    json["nodes"][1]["measurement"] = Value::String(other);
    let a = admit(&dir, &json);
    assert!(!a.admitted, "{}", a.text);
    assert!(failed(&a).contains(&CheckId::Measurement), "{}", a.text);
    assert!(a.text.contains("FAIL         measurement"), "{}", a.text);
    // Even the report's own report_data listed (a registry whose keys do not bind it) is
    // refused: admission recomputes report_data from the keys.
    json["nodes"][1]["measurement"] = Value::String(s.measurement.clone());
    json["nodes"][1]["report_data"] = Value::String(s.report_data.clone());
    let a = admit(&dir, &json);
    assert!(!a.admitted, "{}", a.text);
    assert!(a.text.contains("FAIL         registry_keys"), "{}", a.text);
    assert_eq!(failed(&a), vec![CheckId::ReportData], "{}", a.text);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn registry_without_measurement_refuses_with_its_reason() {
    let dir = scratch("null");
    let json = registry(&no_firmware());
    assert!(json["nodes"][1]["measurement"].is_null());
    let a = admit(&dir, &json);
    assert!(!a.admitted, "{}", a.text);
    assert_eq!(
        a.verdict.outcome(CheckId::Measurement),
        Some(Outcome::NotChecked)
    );
    let last = a.text.lines().last().unwrap();
    assert!(
        last.contains("the registry has no expected measurement for the node: no AmdSev OVMF"),
        "{last}"
    );
    assert!(
        a.text.contains("FAIL         registry_measure"),
        "{}",
        a.text
    );
    // Usage errors are errors, not decisions.
    let s = sample();
    let missing = dir.join("registry.json").to_string_lossy().into_owned();
    let args = |node: &str| -> Vec<String> {
        [
            "--registry",
            &missing,
            "--node",
            node,
            &s.report,
            "--vcek",
            &s.vcek,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    assert!(admit_command(&args("9"))
        .err()
        .unwrap()
        .contains("no node with index 9"));
    assert!(admit_command(&args("1")[..4]).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// With the AmdSev firmware and a built kernel.efi, genesis lists the measurement `attest
/// measure` computes; without them, null and why.
#[test]
fn registry_measurement_is_attest_measure() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let kernel = root.join("target/cairn/kernel.efi");
    let launch = Launch {
        firmware: super::amdsev_firmware(&root),
        kernel_efi: kernel.clone(),
        vcpus: 2,
        vcpu_type: "EPYC-Milan".to_string(),
        cmdline: Some("console=ttyS0".to_string()),
    };
    let json = registry(&launch);
    let node = &json["nodes"][3];
    match (&launch.firmware, kernel.is_file()) {
        (Some(fw), true) => {
            let args: Vec<String> = [
                "--ovmf",
                &fw.to_string_lossy(),
                "--kernel",
                &kernel.to_string_lossy(),
                "--vcpus",
                "2",
                "--vcpu-type",
                "EPYC-Milan",
                "--append",
                "console=ttyS0",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            let want = hex(&measure_command(&args).unwrap());
            assert_eq!(node["measurement"].as_str(), Some(want.as_str()));
            assert!(node["measurement_missing"].is_null());
        }
        (None, _) => {
            assert!(node["measurement"].is_null());
            let why = node["measurement_missing"].as_str().unwrap();
            assert!(why.contains("no AmdSev OVMF"), "{why}");
        }
        (Some(_), false) => {
            assert!(node["measurement"].is_null());
            let why = node["measurement_missing"].as_str().unwrap();
            assert!(why.contains("kernel.efi"), "{why}");
        }
    }
}
