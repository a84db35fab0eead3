//! `cargo xtask attest`: governance-side SEV-SNP tooling (issue 9).
//!
//! ```text
//! cargo xtask attest verify REPORT --vcek FILE [--roots DIR|FILE]... [--measurement HEX]
//!                           [--report-data HEX] [--policy KEY=VALUE]... [--at DATE|now|none]
//! cargo xtask attest measure --ovmf FILE [--kernel FILE] [--initrd FILE] [--append CMDLINE]
//!                            --vcpus N (--vcpu-type NAME | --vcpu-sig N) [--guest-features N]
//! cargo xtask attest report-data --node-key HEX [--key LABEL=HEX]...
//! cargo xtask attest admit --registry FILE --node I REPORT --vcek FILE [--roots DIR|FILE]...
//!                          [--policy KEY=VALUE]... [--at DATE|now]
//! ```
//!
//! `admit` is governance's decision on one node: it takes the node's entry in a genesis
//! registry (`registry.json`, image::genesis), recomputes the report_data of the keys listed
//! there (and refuses a registry whose report_data disagrees with its keys), and runs the full
//! verification with that report_data and the registry's expected measurement. It admits
//! (exit 0) only when every check passed and none that admission needs was skipped
//! (`Verdict::admits`); a registry entry without a measurement is refused with its reason.
//!
//! `verify` prints every check of `node::attest::verify` with its reason and exits 0 only when
//! no check failed (1 when one did, 2 on a usage error). Roots default to the AMD ARKs/ASKs
//! pinned in `node`; `--at` defaults to now. `measure` prints the SNP launch digest in hex, the
//! same value `sev-snp-measure --mode snp` prints (see the tests below, which run both).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use node::attest::binding::report_data_for_keys;
use node::attest::cert::AmdCert;
use node::attest::measure::{
    snp_launch_digest, vcpu_type_signature, KernelHashes, LaunchInputs, DEFAULT_GUEST_FEATURES,
};
use node::attest::report::REPORT_SIZE_BYTES;
use node::attest::verify::parse_date;
use node::attest::{verify, Tcb, TrustAnchors, Verdict, VerifyOptions};

const USAGE: &str = "\
usage: cargo xtask attest <command> [options]

  verify REPORT --vcek FILE [--roots DIR|FILE]... [--measurement HEX] [--report-data HEX]
         [--policy KEY=VALUE]... [--at YYYY-MM-DD|now|none]
      Verify an SEV-SNP attestation report (raw 1184 bytes, or hex text) against a VCEK/VLEK
      (DER or PEM; extra certificates in the file are ignored). Roots default to the pinned
      AMD Milan/Genoa/Turin ARKs and ASK/ASVKs; certificate validity is judged at --at (now).
      Policy keys: debug=allow|deny (deny), smt=allow|deny (allow), migrate-ma=allow|deny (deny),
      vmpl=N[,N…] (0,1,2,3), min-tcb=bl:N,tee:N,snp:N,ucode:N[,fmc:N] (none).
      Exit status: 0 all checks made passed, 1 a check failed, 2 usage error.

  measure --ovmf FILE [--kernel FILE] [--initrd FILE] [--append CMDLINE] --vcpus N
          (--vcpu-type NAME | --vcpu-sig N) [--guest-features N]
      Print the expected SNP launch measurement (hex), as sev-snp-measure --mode snp.

  report-data --node-key HEX [--key LABEL=HEX]...
      Print the report_data (hex) binding a node's Ed25519 key and other public keys.

  admit --registry FILE --node I REPORT --vcek FILE [--roots DIR|FILE]... [--policy KEY=VALUE]...
        [--at YYYY-MM-DD|now]
      Admit node I of a genesis registry (registry.json) on its attestation report: verify
      the report against the registry's expected measurement and the report_data of the
      node's registered keys; print every check and the decision.
      Exit status: 0 admitted, 1 refused, 2 usage error.
";

/// Entry point for `cargo xtask attest ARGS…`.
pub fn run(args: &[String]) -> ExitCode {
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "verify" => verify_command(rest).map(|(verdict, text)| {
            print!("{text}");
            if verdict.accepted() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }),
        "measure" => measure_command(rest).map(|digest| {
            println!("{}", hex(&digest));
            ExitCode::SUCCESS
        }),
        "admit" => admit_command(rest).map(|admission| {
            print!("{}", admission.text);
            if admission.admitted {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }),
        "report-data" => report_data_command(rest).map(|rd| {
            println!("{}", hex(&rd));
            ExitCode::SUCCESS
        }),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown attest command `{other}`\n\n{USAGE}")),
    };
    result.unwrap_or_else(|message| {
        eprintln!("error: {message}");
        if message.contains("SNP_KERNEL_HASHES") {
            eprintln!(
                "hint: measured -kernel boot needs edk2's AmdSev build (OvmfPkg/AmdSev/AmdSevX64.dsc); \
                 Debian's ovmf package ships only the generic build"
            );
        }
        ExitCode::from(2)
    })
}

/// Arguments split into positionals and `--flag value` pairs (flags may repeat).
struct Args {
    positional: Vec<String>,
    flags: Vec<(String, String)>,
}

impl Args {
    fn parse(args: &[String], known: &[&str]) -> Result<Args, String> {
        let mut out = Args {
            positional: Vec::new(),
            flags: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if let Some(name) = arg.strip_prefix("--") {
                if !known.contains(&name) {
                    return Err(format!("unknown option --{name}\n\n{USAGE}"));
                }
                let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                out.flags.push((name.to_string(), value.clone()));
            } else {
                out.positional.push(arg.clone());
            }
        }
        Ok(out)
    }

    fn one(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.flags
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{path}: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let text: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let text = text.strip_prefix("0x").unwrap_or(&text);
    if !text.len().is_multiple_of(2) {
        return Err("hex has an odd number of digits".to_string());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| format!("not hex: {text}")))
        .collect()
}

fn parse_hex_array<const N: usize>(what: &str, text: &str) -> Result<[u8; N], String> {
    parse_hex(text)?
        .try_into()
        .map_err(|v: Vec<u8>| format!("{what} must be {N} bytes, got {}", v.len()))
}

fn parse_int(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("not a number: {text}"))
}

/// A report file: the raw 1184 bytes, or their hex text (virtee's `report.hex` form).
fn load_report(path: &str) -> Result<Vec<u8>, String> {
    let bytes = read(path)?;
    if bytes.len() != REPORT_SIZE_BYTES
        && bytes
            .iter()
            .all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace())
    {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        return parse_hex(&text);
    }
    Ok(bytes)
}

/// The leaf certificate: DER, or the first certificate of a PEM file.
fn load_leaf(path: &str) -> Result<Vec<u8>, String> {
    let bytes = read(path)?;
    if bytes.starts_with(b"-----BEGIN") {
        let certs = AmdCert::from_pem_chain(&bytes).map_err(|e| format!("{path}: {e}"))?;
        let first = certs
            .first()
            .ok_or_else(|| format!("{path}: no certificate"))?;
        return Ok(first.der().to_vec());
    }
    Ok(bytes)
}

/// Every certificate in a file (PEM, possibly several, or one DER).
fn load_certs(path: &Path) -> Result<Vec<AmdCert>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let parsed = if bytes.starts_with(b"-----BEGIN") {
        AmdCert::from_pem_chain(&bytes)
    } else {
        AmdCert::from_der(&bytes).map(|c| vec![c])
    };
    parsed.map_err(|e| format!("{}: {e}", path.display()))
}

/// Trust anchors from files or directories (every `.pem`, `.der`, `.cer`, `.crt` inside).
fn load_anchors(specs: &[&str]) -> Result<TrustAnchors, String> {
    if specs.is_empty() {
        return TrustAnchors::pinned_amd().map_err(|e| format!("pinned roots: {e}"));
    }
    let mut certs = Vec::new();
    for spec in specs {
        let path = PathBuf::from(spec);
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
                .map_err(|e| format!("{spec}: {e}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|x| x.to_str())
                        .is_some_and(|x| matches!(x, "pem" | "der" | "cer" | "crt"))
                })
                .collect();
            files.sort();
            for file in files {
                certs.extend(load_certs(&file)?);
            }
        } else {
            certs.extend(load_certs(&path)?);
        }
    }
    Ok(TrustAnchors::from_certs(certs))
}

fn allow_deny(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "allow" => Ok(true),
        "deny" => Ok(false),
        _ => Err(format!("policy {key} must be allow or deny, got {value}")),
    }
}

fn parse_tcb(text: &str) -> Result<Tcb, String> {
    let mut tcb = Tcb::default();
    for part in text.split(',') {
        let (name, value) = part
            .split_once(':')
            .ok_or_else(|| format!("min-tcb part `{part}` is not NAME:N"))?;
        let value =
            u8::try_from(parse_int(value)?).map_err(|_| format!("SPL {value} exceeds 255"))?;
        match name {
            "bl" => tcb.bootloader = value,
            "tee" => tcb.tee = value,
            "snp" => tcb.snp = value,
            "ucode" => tcb.microcode = value,
            "fmc" => tcb.fmc = Some(value),
            _ => {
                return Err(format!(
                    "unknown TCB component `{name}` (bl, tee, snp, ucode, fmc)"
                ))
            }
        }
    }
    Ok(tcb)
}

fn apply_policy(options: &mut VerifyOptions, spec: &str) -> Result<(), String> {
    let (key, value) = spec
        .split_once('=')
        .ok_or_else(|| format!("--policy {spec}: expected KEY=VALUE"))?;
    let policy = &mut options.policy;
    match key {
        "debug" => policy.allow_debug = allow_deny(key, value)?,
        "smt" => policy.allow_smt = allow_deny(key, value)?,
        "migrate-ma" => policy.allow_migrate_ma = allow_deny(key, value)?,
        "vmpl" => {
            policy.allowed_vmpls = [false; node::attest::verify::VMPL_COUNT];
            for n in value.split(',') {
                let n = usize::try_from(parse_int(n)?).unwrap_or(usize::MAX);
                *policy
                    .allowed_vmpls
                    .get_mut(n)
                    .ok_or_else(|| format!("VMPL {n} is not 0..=3"))? = true;
            }
        }
        "min-tcb" => policy.min_tcb = Some(parse_tcb(value)?),
        _ => {
            return Err(format!(
                "unknown policy key `{key}` (debug, smt, migrate-ma, vmpl, min-tcb)"
            ))
        }
    }
    Ok(())
}

fn parse_at(text: &str) -> Result<Option<u64>, String> {
    match text {
        "none" => Ok(None),
        "now" => Ok(Some(now_unix_s())),
        date => parse_date(date)
            .map(Some)
            .ok_or_else(|| format!("--at {date}: expected YYYY-MM-DD, now or none")),
    }
}

fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs `verify` and renders the verdict; the caller prints it and picks the exit code.
fn verify_command(args: &[String]) -> Result<(Verdict, String), String> {
    let args = Args::parse(
        args,
        &[
            "vcek",
            "roots",
            "measurement",
            "report-data",
            "policy",
            "at",
        ],
    )?;
    let [report_path] = args.positional.as_slice() else {
        return Err(format!("verify takes exactly one REPORT file\n\n{USAGE}"));
    };
    let vcek_path = args.one("vcek").ok_or("verify needs --vcek FILE")?;
    let report = load_report(report_path)?;
    let vcek = load_leaf(vcek_path)?;
    let roots: Vec<&str> = args.all("roots").collect();
    let anchors = load_anchors(&roots)?;
    let mut options = VerifyOptions {
        now_unix_s: Some(now_unix_s()),
        ..VerifyOptions::default()
    };
    if let Some(at) = args.one("at") {
        options.now_unix_s = parse_at(at)?;
    }
    if let Some(m) = args.one("measurement") {
        options.measurement = Some(parse_hex_array("--measurement", m)?);
    }
    if let Some(rd) = args.one("report-data") {
        options.report_data = Some(parse_hex_array("--report-data", rd)?);
    }
    for spec in args.all("policy") {
        apply_policy(&mut options, spec)?;
    }
    let verdict = verify(&report, &vcek, &anchors, &options);
    let mut text = String::new();
    let _ = writeln!(text, "report:  {report_path}");
    let _ = writeln!(text, "vcek:    {vcek_path}");
    let roots_text = if roots.is_empty() {
        "pinned AMD roots".to_string()
    } else {
        roots.join(", ")
    };
    let _ = writeln!(text, "roots:   {roots_text}");
    let product = verdict
        .product
        .map_or("unknown".to_string(), |p| p.to_string());
    let _ = writeln!(text, "product: {product}");
    let _ = writeln!(text, "{verdict}");
    Ok((verdict, text))
}

fn measure_command(args: &[String]) -> Result<[u8; 48], String> {
    let args = Args::parse(
        args,
        &[
            "ovmf",
            "kernel",
            "initrd",
            "append",
            "vcpus",
            "vcpu-type",
            "vcpu-sig",
            "guest-features",
            "mode",
        ],
    )?;
    if !args.positional.is_empty() {
        return Err(format!("measure takes no positional arguments\n\n{USAGE}"));
    }
    if let Some(mode) = args.one("mode") {
        if mode != "snp" {
            return Err(format!("only --mode snp is supported, got {mode}"));
        }
    }
    let firmware = read(args.one("ovmf").ok_or("measure needs --ovmf FILE")?)?;
    let vcpus = args.one("vcpus").ok_or("measure needs --vcpus N")?;
    let vcpus = u32::try_from(parse_int(vcpus)?).map_err(|_| "--vcpus is too large".to_string())?;
    let vcpu_signature = match (args.one("vcpu-type"), args.one("vcpu-sig")) {
        (Some(name), None) => {
            vcpu_type_signature(name).ok_or_else(|| format!("unknown --vcpu-type {name}"))?
        }
        (None, Some(sig)) => {
            u32::try_from(parse_int(sig)?).map_err(|_| "--vcpu-sig exceeds 32 bits".to_string())?
        }
        _ => {
            return Err("measure needs exactly one of --vcpu-type NAME or --vcpu-sig N".to_string())
        }
    };
    let guest_features = args
        .one("guest-features")
        .map(parse_int)
        .transpose()?
        .unwrap_or(DEFAULT_GUEST_FEATURES);
    let kernel_hashes = match args.one("kernel") {
        Some(kernel) => {
            let initrd = args.one("initrd").map(read).transpose()?;
            Some(KernelHashes::new(
                &read(kernel)?,
                initrd.as_deref(),
                args.one("append"),
            ))
        }
        None if args.one("initrd").is_some() || args.one("append").is_some() => {
            return Err("--initrd and --append need --kernel".to_string())
        }
        None => None,
    };
    let inputs = LaunchInputs {
        kernel_hashes,
        vcpus,
        vcpu_signature,
        guest_features,
    };
    snp_launch_digest(&firmware, &inputs).map_err(|e| e.to_string())
}

fn report_data_command(args: &[String]) -> Result<[u8; 64], String> {
    let args = Args::parse(args, &["node-key", "key"])?;
    let node_key: [u8; 32] = parse_hex_array(
        "--node-key",
        args.one("node-key")
            .ok_or("report-data needs --node-key HEX")?,
    )?;
    let mut others = Vec::new();
    for spec in args.all("key") {
        let (label, value) = spec
            .split_once('=')
            .ok_or_else(|| format!("--key {spec}: expected LABEL=HEX"))?;
        others.push((label.to_string(), parse_hex(value)?));
    }
    let refs: Vec<(&str, &[u8])> = others
        .iter()
        .map(|(l, k)| (l.as_str(), k.as_slice()))
        .collect();
    report_data_for_keys(&node_key, &refs).map_err(|e| e.to_string())
}

/// A node's entry in a genesis registry, as admission reads it.
struct RegistryEntry {
    node_id: String,
    /// The report_data of the listed keys (recomputed here).
    report_data: [u8; 64],
    /// Whether the registry's own report_data field equals the recomputed one.
    report_data_consistent: bool,
    key_labels: Vec<String>,
    /// The expected measurement, or the registry's reason for having none.
    measurement: Result<[u8; 48], String>,
}

fn registry_entry(path: &str, index: u64) -> Result<RegistryEntry, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{path}: not JSON: {e}"))?;
    let nodes = json["nodes"]
        .as_array()
        .ok_or_else(|| format!("{path}: no `nodes` list"))?;
    let node = nodes
        .iter()
        .find(|n| n["index"].as_u64() == Some(index))
        .ok_or_else(|| format!("{path}: no node with index {index}"))?;
    let keys = node["keys"]
        .as_object()
        .ok_or_else(|| format!("{path}: node {index} has no `keys`"))?;
    let mut node_key = None;
    let mut others = Vec::new();
    for (label, value) in keys {
        let value = value
            .as_str()
            .ok_or_else(|| format!("{path}: node {index}: key {label} is not a hex string"))?;
        let bytes = parse_hex(value).map_err(|e| format!("{path}: node {index}: {label}: {e}"))?;
        if label == node::attest::binding::NODE_SIGNING_KEY_LABEL {
            node_key = Some(parse_hex_array::<32>(label, value)?);
        } else {
            others.push((label.clone(), bytes));
        }
    }
    let node_key = node_key.ok_or_else(|| {
        format!(
            "{path}: node {index} lists no {} key",
            node::attest::binding::NODE_SIGNING_KEY_LABEL
        )
    })?;
    let refs: Vec<(&str, &[u8])> = others
        .iter()
        .map(|(l, k)| (l.as_str(), k.as_slice()))
        .collect();
    let report_data =
        report_data_for_keys(&node_key, &refs).map_err(|e| format!("{path}: node {index}: {e}"))?;
    let listed = node["report_data"]
        .as_str()
        .map(|h| parse_hex_array::<64>("report_data", h))
        .transpose()?;
    let measurement = match (node["measurement"].as_str(), &node["measurement_missing"]) {
        (Some(m), _) => Ok(parse_hex_array::<48>("measurement", m)?),
        (None, serde_json::Value::String(why)) => Err(why.clone()),
        (None, _) => Err("the registry lists no measurement for this node".to_string()),
    };
    Ok(RegistryEntry {
        node_id: node["node_id"].as_str().unwrap_or("?").to_string(),
        report_data,
        report_data_consistent: listed == Some(report_data),
        key_labels: keys.keys().cloned().collect(),
        measurement,
    })
}

/// The outcome of `attest admit`.
struct Admission {
    admitted: bool,
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the tests look at single checks")
    )]
    verdict: Verdict,
    /// What is printed: the inputs, the registry's checks, the verdict, the decision.
    text: String,
}

fn admit_command(args: &[String]) -> Result<Admission, String> {
    let args = Args::parse(args, &["registry", "node", "vcek", "roots", "policy", "at"])?;
    let [report_path] = args.positional.as_slice() else {
        return Err(format!("admit takes exactly one REPORT file\n\n{USAGE}"));
    };
    let registry_path = args.one("registry").ok_or("admit needs --registry FILE")?;
    let index = parse_int(args.one("node").ok_or("admit needs --node I")?)?;
    let vcek_path = args.one("vcek").ok_or("admit needs --vcek FILE")?;
    let entry = registry_entry(registry_path, index)?;
    let report = load_report(report_path)?;
    let vcek = load_leaf(vcek_path)?;
    let roots: Vec<&str> = args.all("roots").collect();
    let anchors = load_anchors(&roots)?;
    let mut options = VerifyOptions {
        now_unix_s: Some(now_unix_s()),
        report_data: Some(entry.report_data),
        measurement: entry.measurement.as_ref().ok().copied(),
        ..VerifyOptions::default()
    };
    if let Some(at) = args.one("at") {
        options.now_unix_s = parse_at(at)?;
    }
    for spec in args.all("policy") {
        apply_policy(&mut options, spec)?;
    }
    let verdict = verify(&report, &vcek, &anchors, &options);
    let mut refusals = Vec::new();
    let mut text = String::new();
    let _ = writeln!(text, "registry: {registry_path}");
    let _ = writeln!(text, "node:     {index} ({})", entry.node_id);
    let _ = writeln!(text, "report:   {report_path}");
    let _ = writeln!(text, "vcek:     {vcek_path}");
    let row = |text: &mut String, ok: bool, name: &str, reason: &str| {
        let outcome = if ok { "PASS" } else { "FAIL" };
        let _ = writeln!(text, "{outcome:<12} {name:<18} {reason}");
    };
    if entry.report_data_consistent {
        row(
            &mut text,
            true,
            "registry_keys",
            &format!(
                "the registry's report_data is the binding of its keys ({})",
                entry.key_labels.join(", ")
            ),
        );
    } else {
        let why = "the registry's report_data is not the binding of the keys it lists";
        row(&mut text, false, "registry_keys", why);
        refusals.push(why.to_string());
    }
    match &entry.measurement {
        Ok(m) => row(
            &mut text,
            true,
            "registry_measure",
            &format!("expected measurement {}", hex(m)),
        ),
        Err(why) => {
            let why = format!("the registry has no expected measurement for the node: {why}");
            row(&mut text, false, "registry_measure", &why);
            refusals.push(why);
        }
    }
    let _ = writeln!(text, "{verdict}");
    if !verdict.admits() {
        let failed: Vec<&str> = verdict.failures().map(|c| c.id.name()).collect();
        refusals.push(if failed.is_empty() {
            "a check admission needs was not made".to_string()
        } else {
            format!("failed: {}", failed.join(", "))
        });
    }
    let admitted = refusals.is_empty();
    if admitted {
        let _ = writeln!(text, "admission: ADMIT node {index} ({})", entry.node_id);
    } else {
        let _ = writeln!(
            text,
            "admission: REFUSE node {index} ({}): {}",
            entry.node_id,
            refusals.join("; ")
        );
    }
    Ok(Admission {
        admitted,
        verdict,
        text,
    })
}

#[cfg(test)]
mod admit_tests;
#[cfg(test)]
mod tests;

// ---------------------------------------------------------------------------------------------
// The measured direct boot of the real kernel.efi (test step `attest-measure-efi`).

/// Where edk2's AmdSev firmware is looked for: `$CAIRN_OVMF_AMDSEV`, Debian's `ovmf-amdsev`
/// package (unstable only: bookworm and trixie ship none), or the copy `.ci/run` unpacks from
/// that package into `target/ci-ovmf-amdsev/`.
pub fn amdsev_firmware(root: &Path) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("CAIRN_OVMF_AMDSEV")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.push(PathBuf::from("/usr/share/ovmf/OVMF.amdsev.fd"));
    candidates.push(root.join("target/ci-ovmf-amdsev/OVMF.amdsev.fd"));
    candidates.into_iter().find(|p| p.is_file())
}

/// The reference tool: `$SEV_SNP_MEASURE`, else `target/ci-venv/bin/sev-snp-measure` (made
/// by `.ci/run`), else `sev-snp-measure` from PATH.
fn sev_snp_measure_exe(root: &Path) -> PathBuf {
    if let Some(exe) = std::env::var_os("SEV_SNP_MEASURE") {
        return PathBuf::from(exe);
    }
    let venv = root.join("target/ci-venv/bin/sev-snp-measure");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("sev-snp-measure")
}

/// vCPU counts the measured-boot comparison covers.
const EFI_MEASURE_VCPUS: [&str; 3] = ["1", "2", "4"];
/// vCPU types it covers.
const EFI_MEASURE_VCPU_TYPES: [&str; 2] = ["EPYC-v4", "EPYC-Milan"];
/// Command lines it covers (none, and one like a node's).
const EFI_MEASURE_CMDLINES: [Option<&str>; 2] = [None, Some("cairn.exit=1 console=ttyS0")];

/// Measures `kernel_efi` booted by the AmdSev `firmware` (kernel hashes page: SHA-256 of the
/// PE image, the empty initrd and the command line) with `cargo xtask attest measure` and with
/// `sev-snp-measure`, over vCPU counts, types and command lines; both must agree byte for byte.
pub fn compare_efi_measurement(
    root: &Path,
    firmware: &Path,
    kernel_efi: &Path,
) -> Result<String, String> {
    let exe = sev_snp_measure_exe(root);
    let mut compared = 0;
    let mut sample = String::new();
    for vcpu_type in EFI_MEASURE_VCPU_TYPES {
        for vcpus in EFI_MEASURE_VCPUS {
            for cmdline in EFI_MEASURE_CMDLINES {
                let mut args: Vec<String> = [
                    "--ovmf",
                    &firmware.to_string_lossy(),
                    "--kernel",
                    &kernel_efi.to_string_lossy(),
                    "--vcpus",
                    vcpus,
                    "--vcpu-type",
                    vcpu_type,
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                if let Some(c) = cmdline {
                    args.extend(["--append".to_string(), c.to_string()]);
                }
                let ours = hex(&measure_command(&args)?);
                let output = std::process::Command::new(&exe)
                    .args(["--mode", "snp"])
                    .args(&args)
                    .output()
                    .map_err(|e| {
                        format!(
                            "cannot run {} ({e}); .ci/run installs it (pip install \
                             sev-snp-measure==0.0.13)",
                            exe.display()
                        )
                    })?;
                let reference = String::from_utf8_lossy(&output.stdout).trim().to_string();
                if !output.status.success() || reference != ours {
                    return Err(format!(
                        "{vcpu_type} x{vcpus} cmdline {cmdline:?}: sev-snp-measure said {:?} \
                         {}, cargo xtask attest measure said {ours}",
                        reference,
                        String::from_utf8_lossy(&output.stderr).trim()
                    ));
                }
                if sample.is_empty() {
                    sample = ours;
                }
                compared += 1;
            }
        }
    }
    Ok(format!(
        "{compared} measurements of {} on {} agree with sev-snp-measure (e.g. {}…)",
        kernel_efi.display(),
        firmware.display(),
        &sample[..16]
    ))
}
