//! Test steps on a 4-VM testnet (issue 8), built on [`crate::testnet_harness`]:
//!
//! - `testnet-agent`: the unmodified `ic-agent` (the `e2e` crate's `ic_agent` tests, pointed
//!   at the VMs through `CAIRN_URLS`) creates canisters, installs the Motoko counter and the
//!   DFINITY ICRC-1 ledger and replays their scenarios through different nodes, verifying
//!   certificates and query signatures;
//! - `testnet-faults`: SIGKILL one VM (f = 1) and keep calling through the others; restart it
//!   on its disk and require it to catch up and serve; wipe its disk and require it to rejoin
//!   (from its peers); SIGSTOP two VMs (fewer than n − f running) and require no progress and no
//!   fork, then progress after SIGCONT;
//! - `testnet-restart`: a canister's state survives stopping and restarting every VM from
//!   its disk.
//!
//! Calls from the host go through [`crate::testnet_client`] (anonymous, certified replies
//! verified against the root key).

use crate::testnet_client::{decode_nat, Client, EMPTY_ARGS};
use crate::testnet_harness::{Ports, Spec, Testnet};
use crate::{cargo, kernel_build, Paths};
use node::types::Principal;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Nodes of every testnet step (f = 1).
pub const NODES: usize = 4;
/// CUP interval of the fault test's subnet: short, so that while a wiped node is down its
/// peers pass two CUPs and purge the blocks below, and it can only rejoin by state sync.
pub const FAULTS_CUP_INTERVAL_HEIGHTS: u64 = 20;
/// Overall limit of each QEMU run of a step.
pub const VM_LIMIT_S: u64 = 900;
/// Boot until every API answers and the first block is finalized.
pub const BOOT_TIMEOUT_S: u64 = 180;
/// Bound on the e2e agent tests (run one after the other).
pub const AGENT_TESTS_TIMEOUT_S: u64 = 600;
/// Bound on one update call, polling included.
pub const CALL_TIMEOUT_S: u64 = 60;
/// A restarted or wiped node must reach the others' height within this.
pub const CATCH_UP_TIMEOUT_S: u64 = 180;
/// How long two paused nodes are watched for (no progress allowed).
pub const PAUSE_WATCH_S: u64 = 12;
/// Settling time after the pause before the watch starts (a block whose shares were already
/// on the wire may still finalize).
pub const PAUSE_SETTLE_S: u64 = 4;
/// How long a query through one node may lag an update that another node already replied to.
pub const READ_AFTER_WRITE_S: u64 = 30;
/// Heights the subnet must advance after the resume.
pub const RESUME_ADVANCE: u64 = 3;
/// Candid `(42 : nat)`, the counter scenario's `set` argument.
const SET_42: &[u8] = b"DIDL\x00\x01\x7d\x2a";

fn counter_wasm(paths: &Paths) -> Result<Vec<u8>, String> {
    let path = paths
        .root
        .join("../shared/testdata/canisters/motoko-counter/module.wasm");
    std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A fresh 4-node testnet in the step's run directory, booted, APIs up, finalizing.
pub fn boot(paths: &Paths, name: &str) -> Result<Testnet, String> {
    boot_with_cups(
        paths,
        name,
        image::genesis::ConsensusParams::IC_APPLICATION_SUBNET.cup_interval_heights,
    )
}

/// [`boot`] with catch-up packages (and checkpoints) every `cup_interval_heights`.
pub fn boot_with_cups(
    paths: &Paths,
    name: &str,
    cup_interval_heights: u64,
) -> Result<Testnet, String> {
    kernel_build::build_all(paths)?;
    let spec = Spec {
        boot: crate::testnet_harness::NodeBoot::Pvh,
        nodes: NODES,
        dir: paths.run_dir(name),
        fresh: true,
        ports: Ports::Ephemeral,
        limit: Duration::from_secs(VM_LIMIT_S),
        append: String::new(),
        cup_interval_heights,
    };
    let mut net = Testnet::create(paths, &spec)?;
    net.start_all()?;
    wait_serving(&mut net, &(0..NODES).collect::<Vec<_>>())?;
    Ok(net)
}

/// Wait until the listed nodes' APIs answer and they have finalized a block.
pub fn wait_serving(net: &mut Testnet, which: &[usize]) -> Result<(), String> {
    let limit = Duration::from_secs(BOOT_TIMEOUT_S);
    let start = Instant::now();
    for &i in which {
        net.wait_api(i, limit.saturating_sub(start.elapsed()))?;
    }
    net.wait_height(which, 1, limit.saturating_sub(start.elapsed()))?;
    Ok(())
}

pub fn client(net: &Testnet, i: usize) -> Result<Client, String> {
    Client::new(
        net.nodes[i].http_port,
        &net.root_key_der,
        Duration::from_secs(CALL_TIMEOUT_S),
    )
}

/// Create a canister through node `via` and install the Motoko counter.
pub fn install_counter(paths: &Paths, net: &Testnet, via: usize) -> Result<Principal, String> {
    let wasm = counter_wasm(paths)?;
    let mut c = client(net, via)?;
    let id = c
        .create_canister()
        .map_err(|e| format!("create via node{via}: {e}"))?;
    c.install(id, &wasm, EMPTY_ARGS)
        .map_err(|e| format!("install via node{via}: {e}"))?;
    Ok(id)
}

pub fn counter_get(net: &Testnet, i: usize, id: &Principal) -> Result<u128, String> {
    let reply = client(net, i)?
        .query(id, "get", EMPTY_ARGS)
        .map_err(|e| format!("get via node{i}: {e}"))?;
    decode_nat(&reply).ok_or_else(|| format!("get via node{i}: not a nat: {reply:02x?}"))
}

/// Query the counter through node `i` until it reads `want`, bounded by [`READ_AFTER_WRITE_S`].
///
/// A call's certified reply comes from the node that executed it; another replica answers
/// queries from its own latest state, which may still be a block behind (as on the IC). So a
/// read through a different node than the write waits for that node to execute, and fails with
/// the last value it read if it never gets there.
pub fn counter_reads(net: &Testnet, i: usize, id: &Principal, want: u128) -> Result<u128, String> {
    let start = Instant::now();
    loop {
        let got = counter_get(net, i, id)?;
        if got == want {
            return Ok(got);
        }
        if start.elapsed() >= Duration::from_secs(READ_AFTER_WRITE_S) {
            return Err(format!(
                "get via node{i} = {got} for {READ_AFTER_WRITE_S} s, expected {want}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn counter_update(net: &Testnet, i: usize, id: &Principal, method: &str) -> Result<(), String> {
    let arg = if method == "set" { SET_42 } else { EMPTY_ARGS };
    client(net, i)?
        .update(id, method, arg)
        .map(|_| ())
        .map_err(|e| format!("{method} via node{i}: {e}"))
}

/// Run `cmd`, killing it after `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration, what: &str) -> Result<(), String> {
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{what} failed ({status})")),
            Ok(None) => {}
            Err(e) => return Err(format!("{what}: {e}")),
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: killed after {} s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `testnet-agent`.
pub fn testnet_agent(paths: &Paths) -> Result<String, String> {
    // Compile the agent tests before any VM runs (the first build is long).
    run_bounded(
        cargo(paths).args(["test", "-p", "e2e", "--test", "ic_agent", "--no-run"]),
        Duration::from_secs(1800),
        "cargo test -p e2e --test ic_agent --no-run",
    )?;
    let mut net = boot(paths, "test-testnet-agent")?;
    let booted = net.heights();
    let urls = net.urls().join(",");
    let started = Instant::now();
    let result = run_bounded(
        cargo(paths)
            .args([
                "test",
                "-p",
                "e2e",
                "--test",
                "ic_agent",
                "--",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CAIRN_URLS", &urls)
            .env("CAIRN_ROOT_KEY", net.root_key_hex()),
        Duration::from_secs(AGENT_TESTS_TIMEOUT_S),
        "cargo test -p e2e --test ic_agent (CAIRN_URLS = the VMs)",
    );
    net.poll_all()?;
    if let Err(e) = result {
        return Err(format!("{e}{}", net.console_tails()));
    }
    Ok(format!(
        "ic-agent: Motoko counter and ICRC-1 ledger scenarios and a chunked 2.1 MiB install through {} VMs ({urls}) in \
         {:.0} s; finalized heights {:?} → {:?}",
        NODES,
        started.elapsed().as_secs_f64(),
        booted,
        net.heights()
    ))
}

/// The highest height among `which`, after taking in the consoles.
fn top(net: &mut Testnet, which: &[usize]) -> Result<u64, String> {
    net.poll_all()?;
    Ok(which
        .iter()
        .map(|&i| net.nodes[i].height)
        .max()
        .unwrap_or(0))
}

/// Store and state-sync counters from node `i`'s `/metrics`, for the report.
fn store_metrics(net: &Testnet, i: usize) -> String {
    let Ok((200, body)) = net.get(i, "/metrics") else {
        return "no /metrics".into();
    };
    let text = String::from_utf8_lossy(&body);
    let m = |name: &str| {
        crate::testnet_client::metric(&text, name).map_or("?".into(), |v| v.to_string())
    };
    format!(
        "blocks replayed from disk {}, state syncs {}, checkpoint height {}",
        m("cairn_store_blocks_replayed_total"),
        m("cairn_state_syncs_completed_total"),
        m("cairn_store_checkpoint_height")
    )
}

/// Whether node `i`'s console says how it came back (store recovery or state sync).
fn recovery_note(net: &mut Testnet, i: usize) -> String {
    let Some(vm) = net.nodes[i].vm.as_mut() else {
        return String::new();
    };
    let lines: Vec<String> = vm
        .console()
        .iter()
        .filter(|l| {
            let t = l.text.to_ascii_lowercase();
            t.contains("recovered")
                || t.contains("state sync")
                || t.contains("formatted")
                || t.contains("store replaced")
        })
        .map(|l| l.text.clone())
        .take(2)
        .collect();
    if lines.is_empty() {
        "no recovery line on its console".into()
    } else {
        lines.join(" | ")
    }
}

/// Certified-state agreement seen from the host: for each certified time (one per height),
/// the root hashes the nodes' `read_state` certificates had.
#[derive(Default)]
struct Agreement {
    roots: std::collections::BTreeMap<u64, std::collections::BTreeMap<usize, [u8; 32]>>,
}

impl Agreement {
    /// Ask every running, unpaused node for its certified time and root, `rounds` times.
    fn sample(&mut self, net: &Testnet, id: &Principal, rounds: usize) {
        for _ in 0..rounds {
            for i in 0..net.nodes.len() {
                if net.nodes[i].vm.is_none() || net.nodes[i].paused {
                    continue;
                }
                let Ok(mut c) = client(net, i) else { continue };
                if let Ok((time, root)) = c.certified_time(id) {
                    self.roots.entry(time).or_default().insert(i, root);
                }
            }
        }
    }

    /// (heights compared by two or more nodes, heights where they disagreed).
    fn verdict(&self) -> (usize, Vec<u64>) {
        let mut compared = 0;
        let mut forks = Vec::new();
        for (time, by_node) in &self.roots {
            if by_node.len() < 2 {
                continue;
            }
            compared += 1;
            let mut roots = by_node.values();
            let first = roots.next();
            if roots.any(|r| Some(r) != first) {
                forks.push(*time);
            }
        }
        (compared, forks)
    }
}

/// `testnet-faults`.
pub fn testnet_faults(paths: &Paths) -> Result<String, String> {
    let mut net = boot_with_cups(paths, "test-testnet-faults", FAULTS_CUP_INTERVAL_HEIGHTS)?;
    let mut report = Vec::new();
    let id = install_counter(paths, &net, 1)?;
    let mut agree = Agreement::default();
    agree.sample(&net, &id, 3);
    let all: Vec<usize> = (0..NODES).collect();
    let victim = NODES - 1;
    let others: Vec<usize> = (0..NODES - 1).collect();

    // 1. f = 1 crashed: calls through the others still succeed.
    net.kill(victim);
    let mut expected = 0u128;
    for &i in &others {
        counter_update(&net, i, &id, "inc")?;
        expected += 1;
    }
    counter_reads(&net, 0, &id, expected)
        .map_err(|e| format!("after {expected} incs with node{victim} down: {e}"))?;
    agree.sample(&net, &id, 2);
    report.push(format!(
        "node{victim} killed: {expected} updates via nodes {others:?} ok"
    ));

    // 2. Restart on its disk: it catches up and serves again.
    net.start(victim)?;
    let target = top(&mut net, &others)?;
    let t = net.wait_height(&[victim], target, Duration::from_secs(CATCH_UP_TIMEOUT_S))?;
    net.wait_api(victim, Duration::from_secs(BOOT_TIMEOUT_S))?;
    counter_update(&net, victim, &id, "inc")?;
    expected += 1;
    let got = counter_get(&net, victim, &id)?;
    if got != expected {
        return Err(format!(
            "restarted node{victim}: get = {got}, expected {expected}"
        ));
    }
    agree.sample(&net, &id, 2);
    report.push(format!(
        "restarted: at height {target} after {:.0} s, serves get = {got} ({}; {})",
        t.as_secs_f64(),
        recovery_note(&mut net, victim),
        store_metrics(&net, victim)
    ));

    // 3. Wipe its disk and restart: it rejoins from its peers (block catch-up, or state sync
    //    once they hold a checkpoint; the report shows the counter) and serves the canister.
    net.wipe(victim)?;
    counter_update(&net, 0, &id, "inc")?;
    expected += 1;
    // While it is down the others pass two CUPs and purge below them: no peer can hand it
    // the early blocks any more, so only state sync brings it back.
    let past_cups = top(&mut net, &others)? + 2 * FAULTS_CUP_INTERVAL_HEIGHTS;
    net.wait_height(&others, past_cups, Duration::from_secs(CATCH_UP_TIMEOUT_S))?;
    net.start(victim)?;
    let target = top(&mut net, &others)?;
    let t = net.wait_height(&[victim], target, Duration::from_secs(CATCH_UP_TIMEOUT_S))?;
    net.wait_api(victim, Duration::from_secs(BOOT_TIMEOUT_S))?;
    let got = counter_reads(&net, victim, &id, expected)
        .map_err(|e| format!("wiped node{victim}: {e}"))?;
    let synced = net
        .get(victim, "/metrics")
        .ok()
        .and_then(|(_, body)| {
            crate::testnet_client::metric(
                &String::from_utf8_lossy(&body),
                "cairn_state_syncs_completed_total",
            )
        })
        .unwrap_or(0);
    if synced == 0 {
        return Err(format!(
            "wiped node{victim} rejoined without a state sync ({})",
            store_metrics(&net, victim)
        ));
    }
    agree.sample(&net, &id, 2);
    report.push(format!(
        "wiped: at height {target} after {:.0} s, serves get = {got} ({}; {})",
        t.as_secs_f64(),
        recovery_note(&mut net, victim),
        store_metrics(&net, victim)
    ));

    // 4. Two of four paused: no n − f, so no progress on the other two; then resume.
    let paused = [NODES - 2, NODES - 1];
    let running: Vec<usize> = (0..NODES - 2).collect();
    for &i in &paused {
        net.pause(i)?;
    }
    std::thread::sleep(Duration::from_secs(PAUSE_SETTLE_S));
    let before = top(&mut net, &running)?;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(PAUSE_WATCH_S) {
        agree.sample(&net, &id, 1);
        std::thread::sleep(Duration::from_millis(500));
        net.poll_all()?;
    }
    let during = top(&mut net, &running)?;
    if during != before {
        return Err(format!(
            "with nodes {paused:?} paused the others still finalized: {before} → {during}"
        ));
    }
    for &i in &paused {
        net.resume(i)?;
    }
    let t = net.wait_height(
        &all,
        during + RESUME_ADVANCE,
        Duration::from_secs(CATCH_UP_TIMEOUT_S),
    )?;
    counter_update(&net, paused[0], &id, "inc")?;
    expected += 1;
    agree.sample(&net, &id, 3);
    counter_reads(&net, 1, &id, expected).map_err(|e| format!("after resume: {e}"))?;
    report.push(format!(
        "nodes {paused:?} paused {PAUSE_WATCH_S} s: others stayed at height {during}; after \
         resume all reached {} in {:.0} s",
        during + RESUME_ADVANCE,
        t.as_secs_f64()
    ));

    // 5. Agreement: at every certified height two nodes answered for, one state root; and
    //    one block hash per height where the progress lines carry hashes.
    let (compared, forks) = agree.verdict();
    if !forks.is_empty() {
        return Err(format!(
            "fork: certified state roots differ at certified times {forks:?}"
        ));
    }
    net.poll_all()?;
    let (block_forks, blocks_compared) = net.forks();
    if !block_forks.is_empty() {
        return Err(format!(
            "fork: different block hashes at heights {block_forks:?}"
        ));
    }
    report.push(format!(
        "no fork: certified state roots agree at all {compared} heights answered by 2+ nodes \
         (read_state /time, BLS-verified){}",
        if blocks_compared > 0 {
            format!("; block hashes agree at {blocks_compared} heights")
        } else {
            String::new()
        }
    ));
    Ok(report.join("; "))
}

/// `testnet-restart`.
pub fn testnet_restart(paths: &Paths) -> Result<String, String> {
    let name = "test-testnet-restart";
    let mut net = boot(paths, name)?;
    let id = install_counter(paths, &net, 0)?;
    counter_update(&net, 1, &id, "set")?;
    counter_update(&net, 2, &id, "inc")?;
    let before = counter_reads(&net, 3, &id, 43).map_err(|e| format!("set(42); inc: {e}"))?;
    net.poll_all()?;
    let height = top(&mut net, &(0..NODES).collect::<Vec<_>>())?;
    net.kill_all();
    drop(net);

    let spec = Spec {
        boot: crate::testnet_harness::NodeBoot::Pvh,
        nodes: NODES,
        dir: paths.run_dir(name),
        fresh: false,
        ports: Ports::Ephemeral,
        limit: Duration::from_secs(VM_LIMIT_S),
        append: String::new(),
        cup_interval_heights: image::genesis::ConsensusParams::IC_APPLICATION_SUBNET
            .cup_interval_heights,
    };
    let mut net = Testnet::create(paths, &spec)?;
    if net.created {
        return Err("the restarted testnet did not find its genesis and disks".into());
    }
    let restarted = Instant::now();
    net.start_all()?;
    wait_serving(&mut net, &(0..NODES).collect::<Vec<_>>())?;
    let after = counter_get(&net, 2, &id).map_err(|e| format!("{e}{}", net.console_tails()))?;
    if after != before {
        return Err(format!(
            "after restarting all VMs: get = {after}, expected {before}{}",
            net.console_tails()
        ));
    }
    counter_update(&net, 0, &id, "inc")?;
    let next =
        counter_reads(&net, 3, &id, before + 1).map_err(|e| format!("inc after restart: {e}"))?;
    let notes = recovery_note(&mut net, 0);
    Ok(format!(
        "counter = {before} at height {height}; all {NODES} VMs killed and restarted from \
         {}: serving again in {:.0} s with get = {after}, then inc → {next} ({notes})",
        display_dir(&spec.dir),
        restarted.elapsed().as_secs_f64()
    ))
}

fn display_dir(dir: &Path) -> String {
    dir.display().to_string()
}
