//! Issue 6, acceptance 2: the unmodified `ic-agent` (with `ic-utils`) against a 4-node cairn
//! subnet (`cairn-sim`): fetch the root key, create a canister with
//! `provisional_create_canister_with_cycles`, install the Motoko counter from testdata, replay
//! its scenario with update and query calls through different nodes (query-signature
//! verification on, as by default), and verify `read_state` of a request status and of
//! `/canister/<id>/module_hash`. A second test installs the DFINITY ICRC-1 ledger
//! (`rust-icrc1-ledger`) and replays its scenario, again through different nodes. A third
//! installs a module too large for one message (the Motoko counter with a 2 MiB custom
//! section) with `ic-utils`' own `install`, which uploads it in chunks (`upload_chunk`,
//! `stored_chunks`, `install_chunked_code`, `clear_chunk_store`), as `dfx` does.
//!
//! With `CAIRN_URLS` set (see `e2e::subnet_from_env`) both run against those nodes instead,
//! e.g. the 4-VM testnet of `cargo xtask test testnet-agent`.

use candid::Principal;
use e2e::{scenario, start_subnet, testdata};
use ic_agent::agent::RequestStatusResponse;
use ic_agent::identity::BasicIdentity;
use ic_agent::Agent;
use ic_utils::call::AsyncCall;
use ic_utils::interfaces::management_canister::builders::{
    CanisterInstallMode, UpgradeFlags, WasmMemoryPersistence,
};
use ic_utils::interfaces::ManagementCanister;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Bound on the whole agent flow.
const FLOW_TIMEOUT_SECS: u64 = 300;
const NODES: usize = 4;
const CREATE_CYCLES: u128 = 100_000_000_000_000;
/// How long `call_and_wait` polls for a reply (VMs under TCG on a loaded host install the
/// 1.2 MB ledger slowly).
const MAX_POLLING_SECS: u64 = 180;
/// How long a query through a node may lag behind an update certified through another.
const CATCH_UP_SECS: u64 = 20;

async fn agent(url: &str, key: [u8; 32]) -> Agent {
    // The agent's own HTTP client, keep-alive pool included: an idle pooled connection stays
    // up (the node's TCP probes an idle peer instead of aborting it, kernel/src/net/socket.rs,
    // and its API keeps idle connections longer than reqwest's pool does).
    let agent = Agent::builder()
        .with_url(url)
        .with_identity(BasicIdentity::from_raw_key(&key))
        .with_max_polling_time(Duration::from_secs(MAX_POLLING_SECS))
        .build()
        .expect("agent");
    agent.fetch_root_key().await.expect("fetch_root_key");
    agent
}

/// Runs `flow` on a fresh subnet of [`NODES`] nodes, bounded by [`FLOW_TIMEOUT_SECS`].
fn on_subnet<F: std::future::Future<Output = ()>>(flow: impl FnOnce(e2e::Subnet) -> F) {
    let subnet = start_subnet(NODES);
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(FLOW_TIMEOUT_SECS), flow(subnet))
            .await
            .expect("flow finished in time");
    });
}

/// A new canister with [`CREATE_CYCLES`], created through `agent`.
async fn create_canister(agent: &Agent) -> Principal {
    let (canister,) = ManagementCanister::create(agent)
        .create_canister()
        .as_provisional_create_with_amount(Some(CREATE_CYCLES))
        .call_and_wait()
        .await
        .expect("provisional_create_canister_with_cycles");
    canister
}

#[test]
fn ic_agent_runs_the_motoko_counter_scenario_on_four_nodes() {
    on_subnet(|subnet| async move { flow(&subnet).await });
}

async fn flow(subnet: &e2e::Subnet) {
    // One identity (the canister's controller), one agent per node.
    let agents = agents(subnet, [7u8; 32]).await;
    let nodes = agents.len();
    let wasm = std::fs::read(testdata().join("canisters/motoko-counter/module.wasm"))
        .expect("motoko counter module");

    let canister = create_canister(&agents[0]).await;
    println!("created {canister}");

    let steps = scenario("motoko-counter");
    for (i, step) in steps.iter().enumerate() {
        // Round-robin over the nodes: consecutive steps go through different nodes.
        let a = &agents[i % nodes];
        let mgmt = ManagementCanister::create(a);
        match step.op.as_str() {
            "install" => {
                mgmt.install_code(&canister, &wasm)
                    .with_raw_arg(step.arg.clone())
                    .call_and_wait()
                    .await
                    .expect("install_code");
            }
            "upgrade" => {
                let mode = CanisterInstallMode::Upgrade(Some(UpgradeFlags {
                    skip_pre_upgrade: None,
                    wasm_memory_persistence: Some(WasmMemoryPersistence::Keep),
                }));
                mgmt.install_code(&canister, &wasm)
                    .with_mode(mode)
                    .with_raw_arg(step.arg.clone())
                    .call_and_wait()
                    .await
                    .expect("upgrade");
            }
            "update" => {
                let method = step.method.as_deref().expect("method");
                let reply = a
                    .update(&canister, method)
                    .with_arg(step.arg.clone())
                    .call_and_wait()
                    .await
                    .unwrap_or_else(|e| panic!("update {method}: {e:?}"));
                assert_eq!(
                    Some(&reply),
                    step.reply.as_ref(),
                    "step {i}: update {method}"
                );
            }
            "query" => {
                let method = step.method.as_deref().expect("method");
                let reply = query_caught_up(a, &canister, method, &step.arg, &step.reply).await;
                assert_eq!(
                    Some(&reply),
                    step.reply.as_ref(),
                    "step {i}: query {method}"
                );
            }
            other => panic!("unknown scenario op {other}"),
        }
        println!("step {i}: {} ok via node {}", step.op, i % nodes);
    }

    // read_state of /canister/<id>/module_hash through another node: SHA-256 of the module.
    let hash = agents[2 % nodes]
        .read_state_canister_info(canister, "module_hash")
        .await
        .expect("read_state module_hash");
    assert_eq!(hash, Sha256::digest(&wasm).to_vec());

    // An update submitted to node 1, its status read (certified) through node 3.
    let signed = agents[1 % nodes]
        .update(&canister, "inc")
        .with_arg(b"DIDL\x00\x00".to_vec())
        .sign()
        .expect("sign");
    agents[1 % nodes]
        .update_signed(canister, signed.signed_update.clone())
        .await
        .expect("submit signed update");
    let status = wait_replied(&agents[3 % nodes], &signed.request_id, canister).await;
    assert_eq!(status, b"DIDL\x00\x00".to_vec());
    // 45 after the scenario, 46 after one more inc (Candid nat 46 = 0x2e).
    let want = e2e::hex_decode("4449444c00017d2e");
    let reply = query_caught_up(
        &agents[0],
        &canister,
        "get",
        b"DIDL\x00\x00",
        &Some(want.clone()),
    )
    .await;
    assert_eq!(reply, want);
}

/// A query through `agent`'s node, asked again (for at most [`CATCH_UP_SECS`]) while it fails
/// or its reply differs from `expected`: an update certified by the other n − f nodes may not have been
/// executed on this node yet (queries read the node's own latest state, as on the IC). The
/// caller still compares the final reply with `expected`.
async fn query_caught_up(
    agent: &Agent,
    canister: &Principal,
    method: &str,
    arg: &[u8],
    expected: &Option<Vec<u8>>,
) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(CATCH_UP_SECS);
    loop {
        let answer = agent
            .query(canister, method)
            .with_arg(arg.to_vec())
            .call()
            .await;
        let late = tokio::time::Instant::now() >= deadline;
        match answer {
            Ok(reply) if late || expected.as_ref() == Some(&reply) => return reply,
            Err(e) if late => panic!("query {method}: {e:?}"),
            // Not executed here yet (e.g. "no Wasm module" right after an install elsewhere).
            Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// One agent per node, all with the identity of `key`; every node serves the same root key
/// (the expected one, when the subnet names it).
async fn agents(subnet: &e2e::Subnet, key: [u8; 32]) -> Vec<Agent> {
    let mut agents = Vec::new();
    for url in &subnet.urls {
        let a = agent(url, key).await;
        let expected = if subnet.root_key.is_empty() {
            agents
                .first()
                .map_or_else(|| a.read_root_key(), Agent::read_root_key)
        } else {
            subnet.root_key.clone()
        };
        assert_eq!(
            a.read_root_key(),
            expected,
            "{url}: status serves the root key"
        );
        agents.push(a);
    }
    agents
}

/// The scenario's account owner `A` (the one-byte principal 0x41) replaced by `owner` in a
/// Candid argument: the scenario mints to A and transfers as A, and an agent can only sign as
/// its own principal. Candid writes a principal value as `01 <len> <bytes>`; the scenario's
/// arguments hold A at most once (checked), and the replies do not mention it.
fn with_owner(arg: &[u8], owner: &Principal) -> Vec<u8> {
    let a = [0x01, 0x01, 0x41];
    let at: Vec<usize> = arg
        .windows(a.len())
        .enumerate()
        .filter(|(_, w)| *w == a)
        .map(|(i, _)| i)
        .collect();
    assert!(at.len() <= 1, "principal A appears {} times", at.len());
    let Some(&i) = at.first() else {
        return arg.to_vec();
    };
    let bytes = owner.as_slice();
    let mut out = arg[..i].to_vec();
    out.push(0x01);
    out.push(u8::try_from(bytes.len()).expect("principal length < 128"));
    out.extend_from_slice(bytes);
    out.extend_from_slice(&arg[i + a.len()..]);
    out
}

#[test]
fn ic_agent_runs_the_icrc1_ledger_scenario_on_four_nodes() {
    on_subnet(|subnet| async move { ledger_flow(&subnet).await });
}

async fn ledger_flow(subnet: &e2e::Subnet) {
    let agents = agents(subnet, [11u8; 32]).await;
    let nodes = agents.len();
    let owner = agents[0].get_principal().expect("principal");
    let wasm = std::fs::read(testdata().join("canisters/rust-icrc1-ledger/module.wasm"))
        .expect("ICRC-1 ledger module");
    let canister = create_canister(&agents[nodes - 1]).await;
    println!("ledger: created {canister}; account A is {owner}");
    for (i, step) in scenario("rust-icrc1-ledger").iter().enumerate() {
        let a = &agents[i % nodes];
        let arg = with_owner(&step.arg, &owner);
        match step.op.as_str() {
            "install" => {
                ManagementCanister::create(a)
                    .install_code(&canister, &wasm)
                    .with_raw_arg(arg)
                    .call_and_wait()
                    .await
                    .expect("install_code (ledger)");
            }
            "update" | "query" => {
                let method = step.method.as_deref().expect("method");
                let reply = if step.op == "update" {
                    a.update(&canister, method)
                        .with_arg(arg)
                        .call_and_wait()
                        .await
                        .unwrap_or_else(|e| panic!("step {i}: update {method}: {e:?}"))
                } else {
                    query_caught_up(a, &canister, method, &arg, &step.reply).await
                };
                assert_eq!(
                    Some(&reply),
                    step.reply.as_ref(),
                    "step {i}: {} {method}",
                    step.op
                );
            }
            other => panic!("unknown scenario op {other}"),
        }
        println!("ledger step {i}: {} ok via node {}", step.op, i % nodes);
    }
    let hash = agents[1 % nodes]
        .read_state_canister_info(canister, "module_hash")
        .await
        .expect("read_state module_hash");
    assert_eq!(hash, Sha256::digest(&wasm).to_vec());
}

/// ic-utils switches to chunked installation at this many bytes of module and argument.
const IC_UTILS_CHUNK_CUTOFF_BYTES: usize = 1_939_865;
/// Bytes of the custom section that makes the counter too large for one message.
const PADDING_BYTES: usize = 2 << 20;

/// `wasm` with a custom section `cairn-padding` of `bytes` bytes appended (custom sections
/// other than `icp:` ones are neither limited nor looked at).
fn padded(wasm: &[u8], bytes: usize) -> Vec<u8> {
    let leb = |mut n: usize, out: &mut Vec<u8>| loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    };
    let name = b"cairn-padding";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend((0..bytes).map(|i| (i * 7 % 251) as u8));
    let mut out = wasm.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend(body);
    out
}

#[test]
fn ic_agent_installs_a_module_too_large_for_one_message_in_chunks() {
    on_subnet(|subnet| async move { chunked_flow(&subnet).await });
}

async fn chunked_flow(subnet: &e2e::Subnet) {
    let agents = agents(subnet, [13u8; 32]).await;
    let nodes = agents.len();
    let counter = std::fs::read(testdata().join("canisters/motoko-counter/module.wasm"))
        .expect("motoko counter module");
    let wasm = padded(&counter, PADDING_BYTES);
    assert!(wasm.len() > IC_UTILS_CHUNK_CUTOFF_BYTES);
    let canister = create_canister(&agents[0]).await;
    ManagementCanister::create(&agents[1 % nodes])
        .install(&canister, &wasm)
        .call_and_wait()
        .await
        .expect("chunked install");
    // ic-utils cleared the chunk store after installing.
    let (chunks,) = ManagementCanister::create(&agents[2 % nodes])
        .stored_chunks(&canister)
        .call_and_wait()
        .await
        .expect("stored_chunks");
    assert!(chunks.is_empty(), "{} chunks left", chunks.len());
    // Through a node that may not have executed the install yet (as on the IC): asked again
    // for at most CATCH_UP_SECS.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(CATCH_UP_SECS);
    let hash = loop {
        let answer = agents[3 % nodes]
            .read_state_canister_info(canister, "module_hash")
            .await;
        match answer {
            Ok(hash) => break hash,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("read_state module_hash: {e:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    assert_eq!(hash, Sha256::digest(&wasm).to_vec());
    // The module runs: set(42), inc, get = 43 (Candid nat 43 = 0x2b).
    for (i, (method, arg)) in [
        ("set", e2e::hex_decode("4449444c00017d2a")),
        ("inc", b"DIDL\x00\x00".to_vec()),
    ]
    .into_iter()
    .enumerate()
    {
        agents[i % nodes]
            .update(&canister, method)
            .with_arg(arg)
            .call_and_wait()
            .await
            .unwrap_or_else(|e| panic!("update {method}: {e:?}"));
    }
    let want = e2e::hex_decode("4449444c00017d2b");
    let reply = query_caught_up(
        &agents[2 % nodes],
        &canister,
        "get",
        b"DIDL\x00\x00",
        &Some(want.clone()),
    )
    .await;
    assert_eq!(reply, want);
}

async fn wait_replied(
    agent: &Agent,
    request_id: &ic_agent::RequestId,
    canister: Principal,
) -> Vec<u8> {
    for _ in 0..120 {
        let (status, _cert) = agent
            .request_status_raw(request_id, canister)
            .await
            .expect("read_state request_status");
        match status {
            RequestStatusResponse::Replied(r) => return r.arg,
            RequestStatusResponse::Rejected(r) => panic!("rejected: {r:?}"),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    panic!("request not replied in time");
}
