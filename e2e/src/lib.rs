//! Shared pieces of the end-to-end tests: starting a `cairn-sim` subnet (or taking the
//! endpoints of a running one from the environment) and reading the canister scenarios of
//! `../shared/testdata`. The tests themselves (official agents against the subnet) are in
//! `tests/`.
//!
//! `CAIRN_URLS=http://127.0.0.1:p0,http://127.0.0.1:p1,…` makes the tests talk to those nodes
//! (e.g. the VMs of `cargo xtask test testnet-agent` or `cargo xtask qemu`) instead of starting
//! `cairn-sim`; `CAIRN_ROOT_KEY=<hex DER>` then says which root key the nodes must serve.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long building `cairn-sim` may take.
pub const BUILD_TIMEOUT_SECS: u64 = 1_800;
/// How long the subnet may take to print `cairn-sim: ready`.
pub const READY_TIMEOUT_SECS: u64 = 120;

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// `../shared/testdata` relative to the workspace root.
pub fn testdata() -> PathBuf {
    workspace_root().join("../shared/testdata")
}

/// The environment variable with the nodes' URLs, comma-separated.
pub const URLS_ENV: &str = "CAIRN_URLS";
/// The environment variable with the expected root key (hex DER).
pub const ROOT_KEY_ENV: &str = "CAIRN_ROOT_KEY";

/// A subnet under test: a `cairn-sim` this process started (killed when dropped), or the
/// nodes named by [`URLS_ENV`].
pub struct Subnet {
    child: Option<Child>,
    pub urls: Vec<String>,
    pub root_key: Vec<u8>,
}

impl Drop for Subnet {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The subnet named by [`URLS_ENV`] (and [`ROOT_KEY_ENV`]), if the variable is set. Without a
/// root key variable the key is left empty and the tests take the first node's.
pub fn subnet_from_env() -> Option<Subnet> {
    let urls = std::env::var(URLS_ENV).ok()?;
    let urls: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    assert!(!urls.is_empty(), "{URLS_ENV} names no URL");
    let root_key = std::env::var(ROOT_KEY_ENV)
        .map(|k| hex_decode(k.trim()))
        .unwrap_or_default();
    println!(
        "e2e: {} nodes from {URLS_ENV}: {}",
        urls.len(),
        urls.join(" ")
    );
    Some(Subnet {
        child: None,
        urls,
        root_key,
    })
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd-length hex {s}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("hex: {e}")))
        .collect()
}

/// Decodes a hex string (testdata replies, printed keys).
pub fn hex_decode(s: &str) -> Vec<u8> {
    unhex(s).unwrap_or_else(|e| panic!("{e}"))
}

/// Builds `cairn-sim` (`cargo build --profile test -p node --features sim --bin cairn-sim`, the
/// profile the tests build their dependencies in) and returns its path.
pub fn build_cairn_sim() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let root = workspace_root();
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--profile",
            "test",
            "-p",
            "node",
            "--features",
            "sim",
            "--bin",
            "cairn-sim",
        ])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building cairn-sim failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug").join("cairn-sim")
}

/// The subnet of [`URLS_ENV`] if set; otherwise starts a `cairn-sim` subnet of `nodes` nodes
/// and waits for `cairn-sim: ready`.
pub fn start_subnet(nodes: usize) -> Subnet {
    if let Some(subnet) = subnet_from_env() {
        return subnet;
    }
    let bin = build_cairn_sim();
    let mut child = Command::new(&bin)
        .args(["--nodes", &nodes.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut subnet = Subnet {
        child: Some(child),
        urls: Vec::new(),
        root_key: Vec::new(),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(READY_TIMEOUT_SECS);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("cairn-sim not ready within {READY_TIMEOUT_SECS} s"));
        println!("{line}");
        if let Some(rest) = line.strip_prefix("cairn-sim: node ") {
            if let Some((_, url)) = rest.split_once(' ') {
                subnet.urls.push(url.to_string());
            }
        } else if let Some(key) = line.strip_prefix("cairn-sim: root key ") {
            subnet.root_key = hex_decode(key.trim());
        } else if line == "cairn-sim: ready" {
            break;
        }
    }
    assert_eq!(subnet.urls.len(), nodes, "one URL per node");
    assert_eq!(subnet.root_key.len(), 133, "DER BLS root key");
    // Keep draining stdout so the simulator never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    subnet
}

/// One step of a canister scenario in `canisters/scenarios.json`.
#[derive(Clone, Debug)]
pub struct Step {
    pub op: String,
    pub method: Option<String>,
    /// Candid argument bytes (the empty tuple `DIDL\0\0` when the scenario gives none).
    pub arg: Vec<u8>,
    /// The reply bytes the scenario observed, if the step replies.
    pub reply: Option<Vec<u8>>,
}

/// The steps of scenario `name`.
pub fn scenario(name: &str) -> Vec<Step> {
    let path = testdata().join("canisters/scenarios.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("scenarios.json");
    let steps = json["scenarios"][name]
        .as_array()
        .unwrap_or_else(|| panic!("no scenario {name}"));
    steps
        .iter()
        .map(|s| Step {
            op: s["op"].as_str().unwrap_or_default().to_string(),
            method: s["method"].as_str().map(str::to_string),
            arg: s["arg"]
                .as_str()
                .map(hex_decode)
                .unwrap_or_else(|| b"DIDL\x00\x00".to_vec()),
            reply: s["observed"]["reply_hex"]
                .as_str()
                .or(s["expect_reply_hex"].as_str())
                .map(hex_decode),
        })
        .collect()
}
