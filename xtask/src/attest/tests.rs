//! `cargo xtask attest` against the shared SEV-SNP test data and against `sev-snp-measure`.

use std::path::{Path, PathBuf};
use std::process::Command;

use node::attest::{CheckId, Outcome};
use serde_json::Value;

use super::{hex, measure_command, verify_command};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn testdata() -> PathBuf {
    workspace().join("../shared/testdata/sev-snp")
}

fn td(rel: &str) -> String {
    testdata().join(rel).to_string_lossy().into_owned()
}

fn expected() -> Value {
    let text = std::fs::read_to_string(testdata().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A date at which every sample certificate is valid (Turin VCEK from 2025-07-17, VLEK until
/// 2025-12-10).
const FIXED_DATE: &str = "2025-09-01";

const CHECK_MAP: [(&str, CheckId); 6] = [
    ("ark_self", CheckId::ArkSelfSigned),
    ("ask_by_ark", CheckId::AskSignedByArk),
    ("vek_by_ask", CheckId::VekSignedByAsk),
    ("report_sig_valid", CheckId::ReportSignature),
    ("chip_id_matches_vek_hwid", CheckId::ChipId),
    ("reported_tcb_matches_vek", CheckId::ReportedTcb),
];

/// Asserts the printed verdict has each expected.json check with the right outcome.
fn assert_printed(name: &str, checks: &Value, text: &str) {
    for (key, id) in CHECK_MAP {
        let want = match checks.get(key).and_then(Value::as_bool) {
            Some(true) => Outcome::Pass,
            Some(false) => Outcome::Fail,
            None => Outcome::NotChecked,
        };
        let line = text
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == id.name()) && !l.starts_with("verdict"))
            .unwrap_or_else(|| panic!("{name}: no line for {id}\n{text}"));
        assert!(
            line.starts_with(&want.to_string()),
            "{name}: {key}: want {want}, got `{line}`"
        );
        let reason = line
            .split_once(id.name())
            .map(|(_, r)| r.trim())
            .unwrap_or("");
        assert!(!reason.is_empty(), "{name}: {id} has no reason");
    }
}

#[test]
fn verify_cli_agrees_with_expected_json() {
    let exp = expected();
    let roots_dir = td("amd-roots");
    for (name, case) in exp["cases"].as_object().unwrap() {
        let report = td(case["files"]["report"].as_str().unwrap());
        let vek = td(case["files"]["vek"].as_str().unwrap());
        for roots in [None, Some(roots_dir.as_str())] {
            let mut a = args(&[&report, "--vcek", &vek, "--at", FIXED_DATE]);
            if let Some(dir) = roots {
                a.extend(args(&["--roots", dir]));
            }
            let (verdict, text) = verify_command(&a).unwrap();
            assert_printed(name, &case["checks"], &text);
            assert!(text.contains("NOT CHECKED  measurement"), "{name}: {text}");
            let debug = case["report"]["policy_debug"].as_u64() == Some(1);
            // Exit status 0 exactly for the accepted reports; the DEBUG sample is rejected.
            assert_eq!(verdict.accepted(), !debug, "{name}\n{text}");
            let last = text.lines().last().unwrap();
            if debug {
                assert!(text.contains("FAIL         policy_debug"), "{text}");
                assert_eq!(last, "verdict: REJECT (1 check(s) failed)");
            } else {
                assert_eq!(last, "verdict: ACCEPT");
            }
        }
    }
}

#[test]
fn verify_cli_rejects_the_negative_cases() {
    let exp = expected();
    for (name, case) in exp["negative"].as_object().unwrap() {
        let report = td(case["files"]["report"].as_str().unwrap());
        let vek = td(case["files"]["vek"].as_str().unwrap());
        let mut a = args(&[&report, "--vcek", &vek, "--at", FIXED_DATE]);
        if name.contains("genoa-roots") {
            a.extend(args(&[
                "--roots",
                &td("amd-roots/ark_genoa.pem"),
                "--roots",
                &td("amd-roots/ask_genoa.pem"),
            ]));
        }
        let (verdict, text) = verify_command(&a).unwrap();
        assert_printed(name, &case["checks"], &text);
        assert!(!verdict.accepted(), "{name}\n{text}");
        assert!(text.lines().last().unwrap().starts_with("verdict: REJECT"));
    }
}

#[test]
fn verify_cli_options() {
    let report = td("milan-v3-vlek-aws-trustee/report.bin");
    let vlek = td("milan-v3-vlek-aws-trustee/vlek.der");
    // The VLEK expired on 2025-12-10.
    let (v, text) =
        verify_command(&args(&[&report, "--vcek", &vlek, "--at", "2025-12-11"])).unwrap();
    assert!(!v.accepted());
    assert!(
        text.contains("FAIL         cert_validity") && text.contains("SEV-VLEK"),
        "{text}"
    );
    // The right measurement passes, a wrong one fails; VMPL 1 can be refused by policy.
    let m = "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0";
    let (v, text) = verify_command(&args(&[
        &report,
        "--vcek",
        &vlek,
        "--at",
        FIXED_DATE,
        "--measurement",
        m,
    ]))
    .unwrap();
    assert!(
        v.accepted() && text.contains("PASS         measurement"),
        "{text}"
    );
    let wrong = format!("{}1", &m[..95]);
    let (v, _) = verify_command(&args(&[
        &report,
        "--vcek",
        &vlek,
        "--at",
        FIXED_DATE,
        "--measurement",
        &wrong,
    ]))
    .unwrap();
    assert_eq!(
        v.failures().map(|c| c.id).collect::<Vec<_>>(),
        vec![CheckId::Measurement]
    );
    let (v, _) = verify_command(&args(&[
        &report, "--vcek", &vlek, "--at", FIXED_DATE, "--policy", "vmpl=0",
    ]))
    .unwrap();
    assert_eq!(
        v.failures().map(|c| c.id).collect::<Vec<_>>(),
        vec![CheckId::Vmpl]
    );
    // The virtee report in its upstream hex form; debug allowed by policy for the go-sev-guest one.
    let (v, _) = verify_command(&args(&[
        &td("milan-v2-virtee/report.hex"),
        "--vcek",
        &td("milan-v2-virtee/vcek.der"),
        "--at",
        FIXED_DATE,
        "--policy",
        "min-tcb=bl:3,tee:0,snp:8,ucode:115",
    ]))
    .unwrap();
    assert!(v.accepted());
    let (v, _) = verify_command(&args(&[
        &td("milan-v2-gosevguest-debugpolicy/report.bin"),
        "--vcek",
        &td("milan-v2-gosevguest-debugpolicy/vcek.der"),
        "--at",
        FIXED_DATE,
        "--policy",
        "debug=allow",
    ]))
    .unwrap();
    assert!(v.accepted());
    // Usage errors are errors, not verdicts.
    assert!(verify_command(&args(&[&report])).is_err());
    assert!(verify_command(&args(&[
        &report,
        "--vcek",
        &vlek,
        "--policy",
        "debug=maybe"
    ]))
    .is_err());
    assert!(verify_command(&args(&[&report, "--vcek", &vlek, "--measurement", "abcd"])).is_err());
}

// ---------------------------------------------------------------------------------------------
// Measurement against sev-snp-measure.

/// The `pip install` that provides the reference implementation (run by `.ci/run`).
const SEV_SNP_MEASURE_PIP: &str = "pip install sev-snp-measure==0.0.13";

/// The reference executable: `$SEV_SNP_MEASURE` if set (e.g. inside a venv), else from PATH.
fn sev_snp_measure_exe() -> String {
    std::env::var("SEV_SNP_MEASURE").unwrap_or_else(|_| "sev-snp-measure".to_string())
}

/// Runs the reference `sev-snp-measure --mode snp`; Ok(hex digest) or Err(its error output).
fn reference_measure(a: &[String]) -> Result<String, String> {
    let output = Command::new(sev_snp_measure_exe())
        .arg("--mode")
        .arg("snp")
        .args(a)
        .output()
        .unwrap_or_else(|e| {
            panic!("sev-snp-measure not runnable ({e}); install it with `{SEV_SNP_MEASURE_PIP}`")
        });
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{stderr}"))
    }
}

fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cairn-attest-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Debian's OVMF build (package `ovmf`): SNP-capable (SEV metadata), but without the
/// SNP_KERNEL_HASHES section, which only edk2's AmdSev build has.
fn debian_ovmf() -> PathBuf {
    [
        "/usr/share/ovmf/OVMF.fd",
        "/usr/share/qemu/OVMF.fd",
        "/usr/share/OVMF/OVMF.fd",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("Debian's OVMF (apt-get install ovmf)")
}

/// The kernel to hash: the cairn kernel's UEFI form (what OVMF measures and boots) if built,
/// else a fixed test file. The `attest-measure-efi` test step always measures the real one.
fn kernel_file(dir: &Path) -> PathBuf {
    let built = workspace().join("target/cairn/kernel.efi");
    if built.exists() {
        return built;
    }
    let path = dir.join("kernel.bin");
    std::fs::write(&path, pseudo_random(0x6b65726e, 300_000)).unwrap();
    path
}

fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Appends one OVMF footer-table entry (data ‖ u16 size ‖ GUID) to `table`.
fn footer_entry(table: &mut Vec<u8>, guid: &str, data: &[u8]) {
    table.extend_from_slice(data);
    table.extend_from_slice(&u16::try_from(data.len() + 18).unwrap().to_le_bytes());
    table.extend_from_slice(&guid_bytes_le(guid));
}

fn guid_bytes_le(guid: &str) -> [u8; 16] {
    let hexs: String = guid.chars().filter(|c| *c != '-').collect();
    let b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hexs[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    [
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15],
    ]
}

/// A synthetic firmware laid out like edk2's AmdSev build: a footer table at the end naming
/// the SEV-ES reset block, the SEV hash table and the SEV metadata, whose sections include
/// SNP_KERNEL_HASHES (hash table at an offset inside that page). Debian ships no such build.
fn amdsev_like_firmware() -> Vec<u8> {
    const SIZE: usize = 256 * 1024;
    let mut fw = pseudo_random(0x0f1f, SIZE);
    // SEV metadata block, 0x1000 bytes from the end.
    let meta_offset_from_end = 0x1000usize;
    let sections: [(u32, u32, u32); 6] = [
        (0x0080_0000, 0x9000, 1),    // SNP_SEC_MEM
        (0x0080_9000, 0x1000, 2),    // SECRETS
        (0x0080_A000, 0x1000, 3),    // CPUID
        (0x0080_B000, 0x1000, 4),    // SVSM_CAA
        (0x0080_C000, 0x1000, 0x10), // SNP_KERNEL_HASHES
        (0x0080_D000, 0x3000, 1),    // SNP_SEC_MEM
    ];
    let mut meta = Vec::new();
    meta.extend_from_slice(b"ASEV");
    meta.extend_from_slice(
        &u32::try_from(16 + 12 * sections.len())
            .unwrap()
            .to_le_bytes(),
    );
    meta.extend_from_slice(&1u32.to_le_bytes());
    meta.extend_from_slice(&u32::try_from(sections.len()).unwrap().to_le_bytes());
    for (gpa, size, kind) in sections {
        for v in [gpa, size, kind] {
            meta.extend_from_slice(&v.to_le_bytes());
        }
    }
    let at = SIZE - meta_offset_from_end;
    fw[at..at + meta.len()].copy_from_slice(&meta);
    // Footer table.
    let mut table = Vec::new();
    footer_entry(
        &mut table,
        "00f771de-1a7e-4fcb-890e-68c77e2fb44e",
        &0x0080_B004u32.to_le_bytes(),
    );
    let mut hash_table = 0x0080_C400u32.to_le_bytes().to_vec();
    hash_table.extend_from_slice(&0x400u32.to_le_bytes());
    footer_entry(
        &mut table,
        "7255371f-3a3b-4b04-927b-1da6efa8d454",
        &hash_table,
    );
    footer_entry(
        &mut table,
        "dc886566-984a-4798-a75e-5585a7bf67cc",
        &u32::try_from(meta_offset_from_end).unwrap().to_le_bytes(),
    );
    let footer_at = SIZE - 32 - 18;
    let table_at = footer_at - table.len();
    fw[table_at..footer_at].copy_from_slice(&table);
    fw[footer_at..footer_at + 2]
        .copy_from_slice(&u16::try_from(table.len() + 18).unwrap().to_le_bytes());
    fw[footer_at + 2..footer_at + 18]
        .copy_from_slice(&guid_bytes_le("96b582de-1fb2-45f7-baea-a366c55a082d"));
    fw
}

fn ours(a: &[String]) -> Result<String, String> {
    measure_command(a).map(|d| hex(&d))
}

#[test]
fn measure_agrees_with_sev_snp_measure_for_debian_ovmf() {
    let ovmf = debian_ovmf().to_string_lossy().into_owned();
    for vcpu_type in ["EPYC-v4", "EPYC-Milan", "EPYC-Genoa"] {
        for vcpus in ["1", "2", "4", "16"] {
            let a = args(&["--ovmf", &ovmf, "--vcpus", vcpus, "--vcpu-type", vcpu_type]);
            let reference = reference_measure(&a).expect("sev-snp-measure on Debian OVMF");
            assert_eq!(ours(&a).unwrap(), reference, "{vcpu_type} x{vcpus}");
        }
    }
    // Debian's OVMF cannot measure a -kernel boot: both implementations refuse it alike.
    let dir = scratch_dir("debian");
    let kernel = kernel_file(&dir).to_string_lossy().into_owned();
    let a = args(&[
        "--ovmf",
        &ovmf,
        "--kernel",
        &kernel,
        "--vcpus",
        "1",
        "--vcpu-type",
        "EPYC-v4",
    ]);
    let reference = reference_measure(&a).unwrap_err();
    let our_error = ours(&a).unwrap_err();
    assert!(
        reference.contains(&our_error),
        "reference: {reference}\nours: {our_error}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn measure_agrees_with_sev_snp_measure_with_kernel_hashes() {
    let dir = scratch_dir("hashes");
    let fw_path = dir.join("amdsev-like.fd");
    std::fs::write(&fw_path, amdsev_like_firmware()).unwrap();
    let fw = fw_path.to_string_lossy().into_owned();
    let kernel = kernel_file(&dir).to_string_lossy().into_owned();
    let initrd_path = dir.join("initrd.img");
    std::fs::write(&initrd_path, pseudo_random(0x1417, 70_000)).unwrap();
    let initrd = initrd_path.to_string_lossy().into_owned();
    let variants: [&[&str]; 4] = [
        &[],
        &["--append", "console=ttyS0 cairn.node=3"],
        &["--initrd", &initrd],
        &["--initrd", &initrd, "--append", "x"],
    ];
    for (i, extra) in variants.iter().enumerate() {
        for vcpus in ["1", "3", "8"] {
            let mut a = args(&[
                "--ovmf",
                &fw,
                "--kernel",
                &kernel,
                "--vcpus",
                vcpus,
                "--vcpu-type",
                "EPYC-v4",
            ]);
            a.extend(args(extra));
            if i == 3 {
                a.extend(args(&["--guest-features", "0x21"]));
            }
            let reference = reference_measure(&a).expect("sev-snp-measure with kernel hashes");
            assert_eq!(ours(&a).unwrap(), reference, "variant {i}, {vcpus} vCPUs");
        }
    }
    // Without a kernel the hashes page is measured as zero pages.
    let a = args(&["--ovmf", &fw, "--vcpus", "2", "--vcpu-sig", "0xa00f11"]);
    assert_eq!(ours(&a).unwrap(), reference_measure(&a).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}
