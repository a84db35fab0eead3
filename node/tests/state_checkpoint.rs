//! The replicated state as checkpoint files and back (issue 7: checkpoints are stored and
//! synced as these files).
//!
//! - Round trip on a real workload (test canisters with inter-canister calls, cycles,
//!   stable memory and time-sliced messages, the Motoko counter, DFINITY's ICRC-1 ledger):
//!   a replica restored from a checkpoint computes the same state hash as the original at
//!   the checkpoint height and at every later height, and writes the same files again.
//! - Determinism: two replicas fed the same batches write byte-identical files.
//! - Bad input: truncated, bit-flipped, missing, extra, duplicate and swapped files, and
//!   mutated bodies with a valid checksum, give a typed error and never a panic.
//!
//! `SEED=<n>` reproduces a run.

mod execution_support;

use std::collections::BTreeMap;

use execution_support::{
    hex, install_arg, next_batch, read_module, test_canister, to_hex, user, Messages, Rng,
    EMPTY_ARGS, SETUP_TIME_NS, TESTDATA,
};
use node::execution::ExecutionConfig;
use node::routing::{Batch, CheckpointError, IngressMessage, StateMachine};
use node::state::IngressStatus;
use node::types::Principal;
use sha2::{Digest, Sha256};

/// Test canisters (index 0..TEST_CANISTERS), then the Motoko counter, then the ledger.
const TEST_CANISTERS: u64 = 3;
const MOTOKO: u64 = TEST_CANISTERS;
const LEDGER: u64 = TEST_CANISTERS + 1;
/// Random batches after the setup batch.
const HEIGHTS: usize = 48;
/// A checkpoint (and a restart from it) every this many heights.
const CHECKPOINT_EVERY: usize = 6;
/// Mutated checkpoints the bad-input test tries per kind of mutation.
const MUTATIONS_PER_KIND: usize = 60;

type Files = Vec<(String, Vec<u8>)>;

fn seed() -> u64 {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xc0ffee_u64);
    eprintln!("checkpoint workload SEED={seed}");
    seed
}

fn config() -> ExecutionConfig {
    ExecutionConfig {
        instructions_per_message: 20_000_000,
        instructions_per_slice: 1_000_000,
        instructions_per_round: 30_000_000,
        instructions_per_query: 5_000_000,
        instructions_per_install: 20_000_000_000,
        wasm_memory_bytes_max: 64 << 20,
        stable_memory_bytes_max: 64 << 20,
        ..ExecutionConfig::default()
    }
}

/// The ledger's install argument and an `icrc1_transfer` of 42 from A to B, as the
/// scenario in testdata lists them.
fn ledger_args() -> (Vec<u8>, Vec<u8>) {
    let text =
        std::fs::read_to_string(format!("{TESTDATA}/canisters/scenarios.json")).expect("scenarios");
    let j: serde_json::Value = serde_json::from_str(&text).expect("json");
    let steps = j["scenarios"]["rust-icrc1-ledger"]
        .as_array()
        .expect("steps");
    let install = hex(steps[0]["arg"].as_str().expect("install arg"));
    let transfer = steps
        .iter()
        .find(|s| s["method"] == "icrc1_transfer")
        .and_then(|s| s["arg"].as_str())
        .map(hex)
        .expect("transfer arg");
    assert_eq!(
        transfer.last(),
        Some(&42),
        "amount is the last byte (nat 42)"
    );
    (install, transfer)
}

fn ledger_a() -> Principal {
    Principal::from_slice(&[0x41]).expect("principal")
}

fn workload(seed: u64) -> Vec<Batch> {
    let mut rng = Rng(seed | 1);
    let mut m = Messages::new(seed);
    let test_wasm = test_canister();
    let motoko = read_module("canisters/motoko/counter.classic.wasm");
    let ledger = read_module("canisters/rust-icrc1-ledger/module.wasm");
    let (ledger_init, transfer) = ledger_args();
    let ids: Vec<Principal> = (0..=LEDGER).map(Principal::from_canister_index).collect();
    let mut installs: Vec<(&[u8], &[u8])> = vec![(&test_wasm, EMPTY_ARGS); TEST_CANISTERS as usize];
    installs.push((&motoko, EMPTY_ARGS));
    installs.push((&ledger, &ledger_init));
    let mut batches = vec![m.setup_batch(&installs)];
    let mut time = SETUP_TIME_NS;
    for h in 0..HEIGHTS {
        let mut ingress = Vec::new();
        for _ in 0..rng.below(7) {
            let t = ids[rng.below(TEST_CANISTERS) as usize];
            let other = ids[rng.below(TEST_CANISTERS) as usize];
            let mut msg = |canister, method: &str, arg| m.msg(user(), canister, method, arg);
            let message = match rng.below(13) {
                0 | 1 => msg(t, "inc", EMPTY_ARGS.to_vec()),
                2 | 3 => msg(t, "call_inc", other.as_slice().to_vec()),
                4 => msg(t, "send_cycles", other.as_slice().to_vec()),
                5 => msg(t, "stable_put", rng.next().to_le_bytes().to_vec()),
                6 => msg(t, "trap_after_write", EMPTY_ARGS.to_vec()),
                7 => msg(
                    t,
                    "work",
                    (rng.below(600_000) as u32).to_le_bytes().to_vec(),
                ),
                8 => msg(ids[MOTOKO as usize], "inc", EMPTY_ARGS.to_vec()),
                9 | 10 => {
                    let mut arg = transfer.clone();
                    if let Some(amount) = arg.last_mut() {
                        *amount = 1 + rng.below(20) as u8;
                    }
                    m.msg(ledger_a(), ids[LEDGER as usize], "icrc1_transfer", arg)
                }
                11 if h % 16 == 15 => msg(
                    Principal::MANAGEMENT,
                    "install_code",
                    install_arg(t, &test_wasm, EMPTY_ARGS, "upgrade", false),
                ),
                _ => msg(t, "no_such_method", EMPTY_ARGS.to_vec()),
            };
            ingress.push(message);
        }
        if (h + 2) % CHECKPOINT_EVERY == 0 {
            // Right before a checkpoint: a long, time-sliced message on canister 0 and a
            // call to it from canister 1 that waits behind it, so the checkpoint holds an
            // open call context, a callback and a queued request whatever the seed.
            let work = 500_000u32.to_le_bytes().to_vec();
            ingress.push(m.msg(user(), ids[0], "work", work));
            let call = ids[0].as_slice().to_vec();
            ingress.push(m.msg(user(), ids[1], "call_inc", call));
        }
        batches.push(next_batch(&mut rng, &mut time, ingress));
    }
    batches
}

/// What the checkpoints of a run held, to show the round trip covered it.
#[derive(Default, Debug)]
struct Coverage {
    call_contexts: usize,
    callbacks: usize,
    queued_messages: usize,
    stable_canisters: usize,
    timers: usize,
    replies: usize,
}

fn cover(cov: &mut Coverage, sm: &StateMachine) {
    for c in sm.state.canisters.values() {
        cov.call_contexts += c.call_contexts.len();
        cov.callbacks += c.callbacks.len();
        cov.queued_messages += c.input_queue.len();
        cov.stable_canisters += (c.stable.pages() > 0) as usize;
        cov.timers += c.global_timer.is_some() as usize;
    }
    cov.replies += sm
        .state
        .ingress_history
        .values()
        .filter(|s| matches!(s, IngressStatus::Replied(_)))
        .count();
}

/// The store's content-addressed chunks: each file cut into 1 MiB pieces, by hash.
fn store_chunks(files: &[(String, Vec<u8>)]) -> std::collections::BTreeSet<[u8; 32]> {
    files
        .iter()
        .flat_map(|(_, b)| b.chunks(1 << 20))
        .map(|c| Sha256::digest(c).into())
        .collect()
}

fn restore(files: &[(String, Vec<u8>)]) -> Result<StateMachine, CheckpointError> {
    StateMachine::from_checkpoint_files(config(), files)
}

#[test]
fn restored_replica_agrees_at_every_height_on_a_real_workload() {
    let seed = seed();
    let batches = workload(seed);
    // `a` runs straight through; `b` aborts paused executions at the same heights (as every
    // replica does before a checkpoint) and is replaced by a replica restored from its own
    // checkpoint each time; `c` is another replica like `a`, for the determinism check.
    let mut a = StateMachine::new(config());
    let mut b = StateMachine::new(config());
    let mut c = StateMachine::new(config());
    let mut cov = Coverage::default();
    let mut checkpoints = 0;
    let mut restored_at = Vec::new();
    let mut previous = std::collections::BTreeSet::new();
    let mut last_files = Files::new();
    for (i, batch) in batches.iter().enumerate() {
        let ha = a.execute_batch(batch.clone());
        let hb = b.execute_batch(batch.clone());
        let hc = c.execute_batch(batch.clone());
        assert_eq!(
            ha, hb,
            "restored replica diverges at height {} (SEED={seed})",
            ha.height
        );
        assert_eq!(
            ha, hc,
            "replicas diverge at height {} (SEED={seed})",
            ha.height
        );
        if (i + 1) % CHECKPOINT_EVERY != 0 {
            continue;
        }
        for sm in [&mut a, &mut b, &mut c] {
            sm.abort_paused_executions();
        }
        let height = a.height();
        let t = std::time::Instant::now();
        let files = a.checkpoint_files().expect("checkpoint");
        let write_time = t.elapsed();
        assert!(files.windows(2).all(|w| w[0].0 < w[1].0), "sorted by name");
        assert!(files.iter().all(|(n, _)| n.len() <= 200));
        // Determinism: another replica writes the very same bytes.
        assert_eq!(c.checkpoint_files().expect("checkpoint"), files);
        cover(&mut cov, &a);
        // Restore from the files in reverse order (any order is fine).
        let mut reversed = b.checkpoint_files().expect("checkpoint");
        assert_eq!(reversed, files);
        reversed.reverse();
        let t = std::time::Instant::now();
        b = restore(&reversed).expect("restore");
        let read_time = t.elapsed();
        let chunks = store_chunks(&files);
        let reused = chunks.iter().filter(|c| previous.contains(*c)).count();
        eprintln!(
            "height {height}: {} files, {} bytes, written in {write_time:?}, read in \
             {read_time:?}; {reused} of {} 1 MiB chunks unchanged since the last checkpoint",
            files.len(),
            files.iter().map(|(_, b)| b.len()).sum::<usize>(),
            chunks.len()
        );
        previous = chunks;
        assert_eq!(b.height(), height);
        assert_eq!(b.state_hash(height), a.state_hash(height));
        assert_eq!(b.checkpoint_files().expect("re-checkpoint"), files);
        last_files = files;
        checkpoints += 1;
        restored_at.push(height);
    }
    assert_eq!(checkpoints, batches.len() / CHECKPOINT_EVERY);
    let ledger_dir = format!(
        "canister/{}/",
        to_hex(Principal::from_canister_index(LEDGER).as_slice())
    );
    for (name, bytes) in &last_files {
        if let Some(file) = name.strip_prefix(&ledger_dir) {
            eprintln!("ledger {file}: {} bytes", bytes.len());
        }
    }
    eprintln!("restored at heights {restored_at:?}; checkpoints held {cov:?}");
    // The checkpoints held what matters: open calls and queued messages mid-flight, stable
    // memory, and real results.
    assert!(cov.call_contexts > 0, "{cov:?}");
    assert!(cov.callbacks > 0, "{cov:?}");
    assert!(cov.queued_messages > 0, "{cov:?}");
    assert!(cov.stable_canisters > 0, "{cov:?}");
    assert!(cov.replies > 20, "{cov:?}");
    // The ledger really ran: A's transfers moved tokens to B.
    let ledger = Principal::from_canister_index(LEDGER);
    let balance_a = hex("4449444c036d7b6e006c02b3b0dac30368ad86ca830501010201014100");
    let reply_a = a
        .query(ledger, "icrc1_balance_of", balance_a.clone(), user(), None)
        .expect("balance");
    let reply_b = b
        .query(ledger, "icrc1_balance_of", balance_a, user(), None)
        .expect("balance");
    assert_eq!(reply_a, reply_b);
    assert_ne!(
        reply_a,
        hex("4449444c00017d9a05"),
        "A still holds all 666 tokens"
    );
}

/// A small checkpoint with everything in it (three test canisters with stable memory, the
/// Motoko counter, a few heights of traffic), for the mutation tests.
fn small_checkpoint() -> (Files, [u8; 32]) {
    let batches = workload(seed());
    let mut sm = StateMachine::new(config());
    let setup = &batches[0];
    let mut setup = setup.clone();
    // Without the ledger: its megabytes make every mutation slow to check.
    setup.ingress.truncate(2 * (TEST_CANISTERS as usize + 1));
    sm.execute_batch(setup);
    for (i, b) in batches[1..10].iter().enumerate() {
        let mut b = b.clone();
        b.ingress
            .retain(|m| m.canister_id != Principal::from_canister_index(LEDGER));
        if i == 0 {
            // Stable memory whatever the seed.
            b.ingress.push(IngressMessage {
                id: [0x5b; 32],
                sender: user(),
                canister_id: Principal::from_canister_index(0),
                method: "stable_put".into(),
                arg: 42u64.to_le_bytes().to_vec(),
            });
        }
        sm.execute_batch(b);
    }
    sm.abort_paused_executions();
    let files = sm.checkpoint_files().expect("checkpoint");
    let hash = sm.state_hash(sm.height()).expect("hash");
    (files, hash)
}

fn expect_err(files: &[(String, Vec<u8>)], what: &str) -> CheckpointError {
    match restore(files) {
        Ok(_) => panic!("{what}: restored from bad files"),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

/// The checksum of a `system`/`meta` file, as `checkpoint.rs` documents it.
fn reseal(name: &str, versioned_body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"cairn-checkpoint-file-v1");
    h.update((name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(versioned_body);
    let mut out = versioned_body.to_vec();
    out.extend_from_slice(&h.finalize());
    out
}

#[test]
fn bad_files_give_typed_errors() {
    let (files, hash) = small_checkpoint();
    let ok = restore(&files).expect("restore");
    assert_eq!(ok.state_hash(ok.height()), Some(hash));
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    eprintln!(
        "small checkpoint: {} files, {} bytes",
        files.len(),
        files.iter().map(|(_, b)| b.len()).sum::<usize>()
    );
    assert!(names.contains(&"system"));
    for kind in ["meta", "heap", "stable", "wasm"] {
        assert!(names.iter().any(|n| n.ends_with(kind)), "no {kind} file");
    }
    let mut rng = Rng(seed() ^ 0xbad);
    // Every file missing.
    for i in 0..files.len() {
        let mut f = files.clone();
        let (name, _) = f.remove(i);
        assert_eq!(
            expect_err(&f, "missing file"),
            CheckpointError::Missing(name)
        );
    }
    // Extra files: an unknown name, a canister the system file does not list, a long name.
    for extra in [
        "junk".to_string(),
        "canister/ffff/meta".to_string(),
        format!("canister/{}/heap", "ab".repeat(200)),
    ] {
        let mut f = files.clone();
        f.push((extra.clone(), vec![1, 2, 3]));
        assert_eq!(
            expect_err(&f, "extra file"),
            CheckpointError::Unexpected(extra)
        );
    }
    // Duplicates.
    let mut f = files.clone();
    f.push(files[0].clone());
    assert_eq!(
        expect_err(&f, "duplicate"),
        CheckpointError::Duplicate(files[0].0.clone())
    );
    // Files swapped between canisters.
    let metas: Vec<usize> = (0..files.len())
        .filter(|i| files[*i].0.ends_with("/meta"))
        .collect();
    let mut f = files.clone();
    let (x, y) = (f[metas[0]].1.clone(), f[metas[1]].1.clone());
    f[metas[0]].1 = y;
    f[metas[1]].1 = x;
    assert!(matches!(
        expect_err(&f, "swapped metas"),
        CheckpointError::Malformed { .. }
    ));
    // Truncations and bit flips anywhere: checksums and hashes catch every one.
    for _ in 0..MUTATIONS_PER_KIND {
        let i = rng.below(files.len() as u64) as usize;
        if files[i].1.is_empty() {
            continue;
        }
        let mut f = files.clone();
        let len = f[i].1.len() as u64;
        let cut = rng.below(len) as usize;
        f[i].1.truncate(cut);
        let e = expect_err(&f, "truncated");
        assert!(
            matches!(e, CheckpointError::Malformed { ref file, .. } if *file == files[i].0),
            "{e:?}"
        );
        let mut f = files.clone();
        let bit = rng.below(len * 8);
        f[i].1[(bit / 8) as usize] ^= 1 << (bit % 8);
        let e = expect_err(&f, "bit flip");
        assert!(
            matches!(
                e,
                CheckpointError::Malformed { ref file, .. }
                    | CheckpointError::Version { ref file, .. } if *file == files[i].0
            ),
            "{e:?}"
        );
    }
    // Mutated bodies under a valid checksum exercise the decoder itself: it either refuses
    // (a typed error) or, when the bytes are a valid encoding, the state it builds writes
    // exactly those bytes back (one encoding per state). Never a panic.
    let sealed: Vec<usize> = (0..files.len())
        .filter(|i| files[*i].0 == "system" || files[*i].0.ends_with("/meta"))
        .collect();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for round in 0..4 * MUTATIONS_PER_KIND {
        let i = sealed[rng.below(sealed.len() as u64) as usize];
        let (name, bytes) = &files[i];
        let mut body = bytes[..bytes.len() - 32].to_vec();
        match round % 4 {
            0 => {
                let bit = rng.below(body.len() as u64 * 8 - 32) + 32;
                body[(bit / 8) as usize] ^= 1 << (bit % 8);
            }
            1 => {
                let at = 4 + rng.below(body.len() as u64 - 4) as usize;
                body.truncate(at);
            }
            2 => {
                // A length or count field set huge.
                let at = 4 + rng.below(body.len() as u64 - 4 - 8) as usize;
                body[at..at + 8].copy_from_slice(&(u64::MAX - rng.below(3)).to_le_bytes());
            }
            _ => {
                let at = 4 + rng.below(body.len() as u64 - 4) as usize;
                body.insert(at, rng.next() as u8);
            }
        }
        let mut f = files.clone();
        f[i].1 = reseal(name, &body);
        match restore(&f) {
            Err(e) => {
                assert!(!e.to_string().is_empty());
                *outcomes.entry("error").or_default() += 1;
            }
            Ok(sm) => {
                assert_eq!(sm.checkpoint_files().expect("re-checkpoint"), f);
                *outcomes.entry("valid other state").or_default() += 1;
            }
        }
    }
    eprintln!("mutated bodies under valid checksums: {outcomes:?}");
    assert!(outcomes.get("error").copied().unwrap_or(0) > MUTATIONS_PER_KIND);
    // A newer format version is refused as such.
    let mut f = files.clone();
    let sys = f.iter().position(|(n, _)| n == "system").expect("system");
    let mut body = f[sys].1[..f[sys].1.len() - 32].to_vec();
    body[..4].copy_from_slice(&3u32.to_le_bytes());
    f[sys].1 = reseal("system", &body);
    assert_eq!(
        expect_err(&f, "version"),
        CheckpointError::Version {
            file: "system".into(),
            found: 3,
            supported: 2
        }
    );
}

/// Version 1 files (written before the Wasm chunk store existed: `meta` ends after
/// `instructions_total`) still load, as canisters with empty chunk stores, to the same
/// state hash; a `chunks` file whose chunk does not hash to its key is refused.
#[test]
fn version_1_checkpoints_load_and_chunk_files_are_checked() {
    let (files, hash) = small_checkpoint();
    let mut v1 = files.clone();
    for (name, bytes) in v1.iter_mut() {
        if name != "system" && !name.ends_with("/meta") {
            continue;
        }
        let mut body = bytes[..bytes.len() - 32].to_vec();
        assert_eq!(body[..4], 2u32.to_le_bytes());
        body[..4].copy_from_slice(&1u32.to_le_bytes());
        if name.ends_with("/meta") {
            // The version 2 tail of a canister without chunks: a zero count.
            let tail = body.split_off(body.len() - 8);
            assert_eq!(tail, 0u64.to_le_bytes());
        }
        *bytes = reseal(name, &body);
    }
    let back = restore(&v1).expect("version 1 restores");
    assert_eq!(back.state_hash(back.height()), Some(hash));
    assert!(back
        .state
        .canisters
        .values()
        .all(|c| c.wasm_chunk_store.is_empty()));
    // Written again, it is version 2 and the same as a checkpoint written now.
    assert_eq!(back.checkpoint_files().expect("re-checkpoint"), files);

    // A chunk store: its `chunks` file must hold exactly the chunks `meta` lists.
    let mut sm = restore(&files).expect("restore");
    let p0 = Principal::from_canister_index(0);
    let chunk = vec![7u8; 1000];
    let key: [u8; 32] = Sha256::digest(&chunk).into();
    sm.state
        .canisters
        .get_mut(&p0)
        .expect("canister 0")
        .wasm_chunk_store
        .insert(key, std::sync::Arc::new(chunk));
    let want = sm.state.hash();
    assert_ne!(want, hash, "the chunk store is part of the state hash");
    let files = sm.checkpoint_files().expect("checkpoint");
    let chunks_name = format!("canister/{}/chunks", to_hex(p0.as_slice()));
    let at = files
        .iter()
        .position(|(n, _)| *n == chunks_name)
        .expect("chunks file");
    let back = restore(&files).expect("restore with chunks");
    assert_eq!(back.state_hash(back.height()), Some(want));
    let mut f = files.clone();
    f[at].1[10] ^= 1;
    assert!(matches!(
        expect_err(&f, "chunk flipped"),
        CheckpointError::Malformed { ref file, .. } if *file == chunks_name
    ));
    let mut f = files.clone();
    f[at].1.push(0);
    assert!(matches!(
        expect_err(&f, "chunk longer"),
        CheckpointError::Malformed { ref file, .. } if *file == chunks_name
    ));
    let mut f = files.clone();
    f.remove(at);
    assert_eq!(
        expect_err(&f, "chunks missing"),
        CheckpointError::Missing(chunks_name)
    );
}

#[test]
fn limits_are_checked_on_load() {
    let (files, _) = small_checkpoint();
    // A heap larger than this node's maximum Wasm memory.
    let small = ExecutionConfig {
        wasm_memory_bytes_max: 64 << 10,
        ..config()
    };
    let heap_bytes = files
        .iter()
        .filter(|(n, _)| n.ends_with("/heap"))
        .map(|(_, b)| b.len())
        .max()
        .expect("a heap");
    assert!(heap_bytes > 64 << 10);
    match StateMachine::from_checkpoint_files(small, &files) {
        Err(CheckpointError::Malformed { file, .. }) => assert!(file.ends_with("/heap")),
        Err(e) => panic!("wrong error {e:?}"),
        Ok(_) => panic!("heap over the limit accepted"),
    }
    // A stable memory larger than the limit.
    let small = ExecutionConfig {
        stable_memory_bytes_max: 0,
        ..config()
    };
    match StateMachine::from_checkpoint_files(small, &files) {
        Err(CheckpointError::Malformed { file, .. }) => assert!(file.ends_with("/stable")),
        Err(e) => panic!("wrong error {e:?}"),
        Ok(_) => panic!("stable memory over the limit accepted"),
    }
}

#[test]
fn paused_execution_is_refused_and_aborting_fixes_it() {
    let mut sm = StateMachine::new(config());
    let setup = workload(seed()).remove(0);
    let mut setup = setup;
    setup.ingress.truncate(2);
    sm.execute_batch(setup);
    let id = Principal::from_canister_index(0);
    sm.execute_batch(Batch {
        time_ns: 10_000_000_000,
        randomness: [1; 32],
        ingress: vec![IngressMessage {
            id: [0xaa; 32],
            sender: user(),
            canister_id: id,
            method: "work".into(),
            arg: 1_000_000u32.to_le_bytes().to_vec(),
        }],
    });
    assert!(sm.has_paused_executions(), "the message is time-sliced");
    assert_eq!(sm.checkpoint_files(), Err(CheckpointError::PausedExecution));
    sm.abort_paused_executions();
    let files = sm.checkpoint_files().expect("checkpoint");
    let restored = restore(&files).expect("restore");
    assert_eq!(
        restored.state_hash(restored.height()),
        sm.state_hash(sm.height())
    );
    // The aborted message waits in the queue of both and finishes the same way.
    let mut restored = restored;
    for t in 0..10u64 {
        let batch = Batch {
            time_ns: 20_000_000_000 + t,
            randomness: [2; 32],
            ingress: vec![],
        };
        assert_eq!(
            sm.execute_batch(batch.clone()),
            restored.execute_batch(batch)
        );
    }
    let status = restored.request_status(&[0xaa; 32]);
    assert!(
        matches!(status, Some(IngressStatus::Replied(_))),
        "{status:?}"
    );
}

/// Every field and every variant of the state, including the parts the state hash does not
/// cover (pending outputs), survives the round trip.
#[test]
fn every_field_and_variant_round_trips() {
    use node::execution::message::Output;
    use node::execution::runtime::GlobalValue;
    use node::execution::system_api::WasmClosure;
    use node::state::{
        CallContext, CallOrigin, Callback, CanisterMessage, CanisterState, CanisterStatus, Ingress,
        Payload, Reject, RejectCode, Request, Response,
    };

    let (files, _) = small_checkpoint();
    let mut sm = restore(&files).expect("restore");
    let p0 = Principal::from_canister_index(0);
    let p1 = Principal::from_canister_index(1);
    let reject = |code, error_code| Reject {
        code,
        message: "why".into(),
        error_code,
    };
    let request = Request {
        sender: p0,
        receiver: p1,
        method: "m".into(),
        payload: vec![1, 2],
        cycles: u128::MAX - 1,
        sender_callback: 4,
    };
    let response = |payload| Response {
        originator: p0,
        respondent: p1,
        originator_callback: 2,
        payload,
        refund: 77,
    };
    let origins = [
        CallOrigin::Ingress {
            id: [3; 32],
            sender: user(),
        },
        CallOrigin::Canister {
            caller: p1,
            callback: 9,
        },
        CallOrigin::System,
    ];
    {
        let c = sm.state.canisters.get_mut(&p0).expect("canister 0");
        c.status = CanisterStatus::Stopping;
        c.stop_waiters = origins.to_vec();
        c.controllers.push(Principal::ANONYMOUS);
        c.freezing_threshold_seconds = 1;
        c.wasm_memory_limit_bytes = 2;
        c.compute_allocation = 3;
        c.memory_allocation = 4;
        c.certified_data = vec![0xcd; 32];
        c.global_timer = Some(123);
        c.version = 5;
        c.instructions_total = 6;
        if let Some(h) = c.heap.as_mut() {
            h.globals = vec![
                GlobalValue::I32(-1),
                GlobalValue::I64(i64::MIN),
                GlobalValue::F32(0x7fc0_0001),
                GlobalValue::F64(u64::MAX),
            ];
        }
        c.heap_hash = None;
        // A chunk store: an empty chunk and a full-size one.
        for chunk in [Vec::new(), vec![0xc4; 1 << 20]] {
            let hash: [u8; 32] = Sha256::digest(&chunk).into();
            c.wasm_chunk_store.insert(hash, std::sync::Arc::new(chunk));
        }
        // Sparse stable memory: a hole, a written chunk of zeros, chunks far apart.
        c.stable.grow(3);
        c.stable.write(5 * 4096, &[0; 4096]).expect("in bounds");
        c.stable
            .write(2 * 65_536 + 100, &[0xee; 5000])
            .expect("in bounds");
        c.input_queue.extend([
            CanisterMessage::Ingress(Ingress {
                id: [4; 32],
                sender: user(),
                receiver: p0,
                method: "inc".into(),
                arg: vec![],
            }),
            CanisterMessage::Request(request.clone()),
            CanisterMessage::Response(response(Payload::Reply(vec![5]))),
            CanisterMessage::Response(response(Payload::Reject(reject(
                RejectCode::SysTransient,
                "IC0207",
            )))),
        ]);
        for (i, origin) in origins.iter().enumerate() {
            let id = c.next_call_context;
            c.next_call_context += 1;
            c.call_contexts.insert(
                id,
                CallContext {
                    origin: origin.clone(),
                    responded: i == 1,
                    outstanding: i as u32,
                    cycles_available: 1 << 100,
                    method: format!("method{i}"),
                },
            );
            let cb = c.next_callback;
            c.next_callback += 1;
            c.callbacks.insert(
                cb,
                Callback {
                    call_context: id,
                    respondent: p1,
                    on_reply: WasmClosure { fun: 1, env: 2 },
                    on_reject: WasmClosure { fun: 3, env: 4 },
                    on_cleanup: (i == 2).then_some(WasmClosure { fun: 5, env: 6 }),
                },
            );
        }
    }
    // A canister that was created but never installed: no wasm, no heap.
    let empty = Principal::from_canister_index(40);
    sm.state
        .canisters
        .insert(empty, CanisterState::new(empty, vec![user()], 5));
    sm.state.canisters.get_mut(&p1).expect("canister 1").status = CanisterStatus::Stopped;
    let st = &mut sm.state;
    st.next_canister_index = 41;
    st.raw_rand_draws = 3;
    for (i, status) in [
        IngressStatus::Received,
        IngressStatus::Processing,
        IngressStatus::Replied(vec![1]),
        IngressStatus::Rejected(reject(RejectCode::CanisterError, "IC0503")),
        IngressStatus::Done,
    ]
    .into_iter()
    .enumerate()
    {
        st.ingress_history.insert([0xf0 + i as u8; 32], status);
        st.ingress_finished_ns
            .insert([0xf0 + i as u8; 32], i as u64);
    }
    for o in &origins {
        st.subnet_queue
            .push_back((o.clone(), p0, "raw_rand".into(), vec![9], 10));
    }
    st.pending_outputs = vec![
        Output::Request(request),
        Output::Response(response(Payload::Reject(reject(RejectCode::SysFatal, "")))),
        Output::Ingress(
            [8; 32],
            IngressStatus::Rejected(reject(RejectCode::DestinationInvalid, "IC0301")),
        ),
    ];
    let want = sm.state.hash();
    let files = sm.checkpoint_files().expect("checkpoint");
    let empty_dir = format!("canister/{}/", to_hex(empty.as_slice()));
    assert!(files.iter().any(|(n, _)| *n == format!("{empty_dir}meta")));
    assert!(!files.iter().any(|(n, _)| *n == format!("{empty_dir}heap")));
    assert!(!files.iter().any(|(n, _)| *n == format!("{empty_dir}wasm")));
    let back = restore(&files).expect("restore");
    assert_eq!(back.state_hash(back.height()), Some(want));
    assert_eq!(back.checkpoint_files().expect("re-checkpoint"), files);
    // Canisters running the same module share its bytes and compiled form.
    let shared = |a: u64, b: u64| {
        let m = |i| {
            back.canister(&Principal::from_canister_index(i))
                .and_then(|c| c.module.clone())
                .expect("module")
        };
        std::sync::Arc::ptr_eq(&m(a), &m(b))
    };
    assert!(shared(0, 2));
    assert!(!shared(0, MOTOKO));
    let (x, y) = (&sm.state, &back.state);
    assert_eq!(x.pending_outputs, y.pending_outputs);
    assert_eq!(x.subnet_queue, y.subnet_queue);
    assert_eq!(x.ingress_history, y.ingress_history);
    assert_eq!(x.ingress_finished_ns, y.ingress_finished_ns);
    assert_eq!(
        (
            x.height,
            x.time_ns,
            x.next_canister_index,
            x.randomness,
            x.raw_rand_draws
        ),
        (
            y.height,
            y.time_ns,
            y.next_canister_index,
            y.randomness,
            y.raw_rand_draws
        )
    );
    assert_eq!(
        x.canisters.keys().collect::<Vec<_>>(),
        y.canisters.keys().collect::<Vec<_>>()
    );
    for (c, d) in x.canisters.values().zip(y.canisters.values()) {
        assert_eq!(c.id, d.id);
        assert_eq!(c.controllers, d.controllers);
        assert_eq!(c.status, d.status);
        assert_eq!(c.stop_waiters, d.stop_waiters);
        assert_eq!(c.cycles, d.cycles);
        assert_eq!(
            (
                c.freezing_threshold_seconds,
                c.wasm_memory_limit_bytes,
                c.compute_allocation,
                c.memory_allocation
            ),
            (
                d.freezing_threshold_seconds,
                d.wasm_memory_limit_bytes,
                d.compute_allocation,
                d.memory_allocation
            )
        );
        assert_eq!(c.wasm, d.wasm);
        assert_eq!(c.wasm_chunk_store, d.wasm_chunk_store);
        assert_eq!(c.module_hash(), d.module_hash());
        assert_eq!(c.heap, d.heap);
        assert_eq!(c.stable, d.stable);
        assert_eq!(c.certified_data, d.certified_data);
        assert_eq!(c.global_timer, d.global_timer);
        assert_eq!(c.version, d.version);
        assert_eq!(c.input_queue, d.input_queue);
        assert_eq!(c.call_contexts, d.call_contexts);
        assert_eq!(c.next_call_context, d.next_call_context);
        assert_eq!(c.callbacks, d.callbacks);
        assert_eq!(c.next_callback, d.next_callback);
        assert_eq!(c.instructions_total, d.instructions_total);
        assert!(d.paused.is_none());
    }
}
