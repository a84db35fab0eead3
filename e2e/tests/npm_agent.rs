//! Issue 6, acceptance 3: the same flow from Node.js with the npm agent (`@dfinity/agent`
//! 3.4.3, exact versions in `e2e/js/package-lock.json`): `e2e/js/test.mjs` runs against a
//! 4-node `cairn-sim`. Needs `node` and `npm` (Node.js ≥ 20); `npm ci` runs here when
//! `e2e/js/node_modules` is missing.

use e2e::{start_subnet, testdata, workspace_root};
use std::process::Command;
use std::time::{Duration, Instant};

/// Bound on `npm ci`.
const NPM_CI_TIMEOUT_SECS: u64 = 300;
/// Bound on the JavaScript flow.
const JS_FLOW_TIMEOUT_SECS: u64 = 300;

fn run_bounded(cmd: &mut Command, limit: Duration, what: &str) {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start ({e}); is Node.js installed?"));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{what} failed: {status}");
            return;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} took longer than {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dfinity_agent_js_runs_the_motoko_counter_scenario() {
    let js = workspace_root().join("e2e/js");
    if !js.join("node_modules/@dfinity/agent").exists() {
        run_bounded(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&js),
            Duration::from_secs(NPM_CI_TIMEOUT_SECS),
            "npm ci",
        );
    }
    let subnet = start_subnet(4);
    let root_key: String = subnet.root_key.iter().map(|b| format!("{b:02x}")).collect();
    let mut cmd = Command::new("node");
    cmd.arg("test.mjs")
        .arg(&root_key)
        .arg(testdata())
        .args(&subnet.urls)
        .current_dir(&js);
    run_bounded(
        &mut cmd,
        Duration::from_secs(JS_FLOW_TIMEOUT_SECS),
        "node test.mjs",
    );
}
