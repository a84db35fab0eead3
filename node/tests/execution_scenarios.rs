//! Acceptance 1: every module in testdata/canisters (and motoko/) installs or is rejected as
//! SOURCES.md says, and every scenario step of both scenarios.json files gives the listed
//! reply bytes, trap or reject, through the full routing + execution path.

mod execution_support;

use execution_support::{hex, read_module, to_hex, user, Outcome, Subnet, EMPTY_ARGS, TESTDATA};
use node::state::RejectCode;
use node::types::Principal;
use serde_json::Value as Json;

fn scenarios(rel: &str) -> Vec<(String, Vec<Json>)> {
    let text = std::fs::read_to_string(format!("{TESTDATA}/{rel}")).expect("scenarios");
    let j: Json = serde_json::from_str(&text).expect("json");
    j["scenarios"]
        .as_object()
        .expect("object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_array().expect("steps").clone()))
        .collect()
}

fn arg_of(step: &Json) -> Vec<u8> {
    match step.get("arg").and_then(Json::as_str) {
        Some(a) => hex(a),
        None => EMPTY_ARGS.to_vec(),
    }
}

fn caller_of(step: &Json) -> Principal {
    match step.get("caller").and_then(Json::as_str) {
        Some(c) => Principal::from_slice(&hex(c)).expect("principal"),
        None => Principal::ANONYMOUS,
    }
}

fn check_step(name: &str, i: usize, step: &Json, got: Outcome) {
    let ctx = format!("{name} step {i} ({})", step);
    if let Some(msg) = step.get("expect_trap_contains").and_then(Json::as_str) {
        let r = got.reject();
        assert_eq!(r.code, RejectCode::CanisterError, "{ctx}: {r:?}");
        assert!(
            r.message.contains(msg),
            "{ctx}: reject message {:?}",
            r.message
        );
        return;
    }
    if let Some(msg) = step.get("expect_reject").and_then(Json::as_str) {
        let r = got.reject();
        assert_eq!(r.code, RejectCode::CanisterReject, "{ctx}: {r:?}");
        assert_eq!(r.message, msg, "{ctx}");
        return;
    }
    let want = step
        .get("expect_reply_hex")
        .and_then(Json::as_str)
        .or_else(|| step["observed"].get("reply_hex").and_then(Json::as_str));
    match got {
        Outcome::Reply(b) => {
            if let Some(w) = want {
                assert_eq!(to_hex(&b), w, "{ctx}");
            }
        }
        Outcome::Reject(r) => panic!("{ctx}: unexpected reject {r:?}"),
    }
}

fn run_module(sub: &mut Subnet, name: &str, wasm: &[u8], steps: &[Json]) {
    let canister = sub.create_canister();
    for (i, step) in steps.iter().enumerate() {
        let op = step["op"].as_str().expect("op");
        match op {
            "install" => {
                let arg = arg_of(step);
                let got = sub.install(canister, wasm, &arg, "install", false);
                assert!(
                    matches!(got, Outcome::Reply(_)),
                    "{name}: install failed: {got:?}"
                );
                // module_hash is the SHA-256 of the module as given.
                let c = sub.sm.canister(&canister).expect("canister");
                let want = sha256_hex(wasm);
                assert_eq!(to_hex(&c.module_hash().expect("hash")), want);
            }
            "upgrade" => {
                let keep = step
                    .get("keep_main_memory")
                    .and_then(Json::as_bool)
                    .unwrap_or(false);
                let got = sub.install(canister, wasm, EMPTY_ARGS, "upgrade", keep);
                assert!(
                    matches!(got, Outcome::Reply(_)),
                    "{name}: upgrade failed: {got:?}"
                );
            }
            "query" => {
                let got = sub.query(
                    caller_of(step),
                    canister,
                    step["method"].as_str().expect("m"),
                    &arg_of(step),
                );
                check_step(name, i, step, got);
            }
            "update" => {
                let got = sub.update(
                    caller_of(step),
                    canister,
                    step["method"].as_str().expect("m"),
                    &arg_of(step),
                );
                check_step(name, i, step, got);
            }
            other => panic!("unknown op {other}"),
        }
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    to_hex(&sha2::Sha256::digest(b))
}

#[test]
fn canister_scenarios() {
    let mut sub = Subnet::new();
    for (name, steps) in scenarios("canisters/scenarios.json") {
        let wasm = read_module(&format!("canisters/{name}/module.wasm"));
        run_module(&mut sub, &name, &wasm, &steps);
    }
}

#[test]
fn motoko_scenarios() {
    let mut sub = Subnet::new();
    for (name, steps) in scenarios("canisters/motoko/scenarios.json") {
        let wasm = read_module(&format!("canisters/motoko/{name}"));
        run_module(&mut sub, &name, &wasm, &steps);
    }
}

#[test]
fn every_module_installs_or_is_rejected_as_documented() {
    let mut sub = Subnet::new();
    let manifest: Json = serde_json::from_str(
        &std::fs::read_to_string(format!("{TESTDATA}/canisters/manifest.json")).expect("manifest"),
    )
    .expect("json");
    for (name, entry) in manifest.as_object().expect("object") {
        let wasm = read_module(&format!("canisters/{name}/module.wasm"));
        let canister = sub.create_canister();
        // Install with the scenario's init argument where one is needed.
        let arg = scenarios("canisters/scenarios.json")
            .into_iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, s)| {
                s.first()
                    .and_then(|st| st.get("arg"))
                    .and_then(Json::as_str)
                    .map(hex)
            })
            .unwrap_or_else(|| EMPTY_ARGS.to_vec());
        let got = sub.install(canister, &wasm, &arg, "install", false);
        if name.starts_with("NEGATIVE") {
            let r = got.reject();
            assert_eq!(r.code, RejectCode::CanisterError, "{name}: {r:?}");
            assert!(
                r.message.contains("wasi_snapshot_preview1"),
                "{name}: {}",
                r.message
            );
            assert!(sub.sm.canister(&canister).expect("c").module.is_none());
        } else {
            assert!(matches!(got, Outcome::Reply(_)), "{name}: {got:?}");
            let c = sub.sm.canister(&canister).expect("c");
            assert_eq!(
                to_hex(&c.module_hash().expect("hash")),
                entry["sha256_module_hash"].as_str().expect("hash")
            );
            // The metadata the certified state tree serves: icp:public / icp:private sections.
            for (section, _) in entry["custom_sections"].as_object().expect("sections") {
                if let Some(rest) = section.strip_prefix("icp:public ") {
                    assert_eq!(
                        c.metadata(rest).map(|(p, _)| p),
                        Some(true),
                        "{name} {section}"
                    );
                } else if let Some(rest) = section.strip_prefix("icp:private ") {
                    assert_eq!(
                        c.metadata(rest).map(|(p, _)| p),
                        Some(false),
                        "{name} {section}"
                    );
                }
            }
        }
    }
    let _ = user();
}
