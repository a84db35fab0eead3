//! `cargo xtask bench exec`: execution throughput under wasmi.
//!
//! Run: `cargo run --release -p node --features sim --example bench_exec`
//!
//! Reports, in one table:
//! 1. instructions/s of a CPU-bound canister message under wasmi, with fuel metering on,
//!    through the full routing + execution path (median of [`CPU_RUNS`] messages, each on a
//!    freshly installed canister);
//! 2. messages/s for a tiny update (`inc`) through routing + execution (batches of 1,000);
//! 3. ICRC-1 transfers/s on DFINITY's Rust ledger (a real canister);
//!
//! The CPU-bound module ([`cpu_canister`]: a 64-bit multiply/xor-shift chain that also
//! read-modify-writes a 4 KiB table in linear memory, replying with the final value and a
//! table word) is written, exactly as wasmi runs it, to `target/bench_exec_cpu.wasm`, and one
//! tab-separated `bench-exec-cpu` line gives what a host engine needs to run the same call
//! (export, argument, wasmi's instruction count and time, the reply). `cargo xtask bench exec`
//! runs it under wasmtime (the separate crate `bench/wasmtime`, outside the workspace) and
//! prints the ratio.

#[path = "../tests/execution_support/mod.rs"]
mod execution_support;

use std::time::Instant;

use execution_support::{hex, read_module, test_canister, to_hex, user, Subnet, EMPTY_ARGS};
use node::execution::ExecutionConfig;
use node::state::IngressStatus;
use node::types::Principal;

/// Iterations of the CPU-bound loop per message.
const CPU_ITERATIONS: u32 = 20_000_000;
/// Messages timed for the CPU-bound row (the median is reported).
const CPU_RUNS: usize = 3;
/// The CPU-bound canister's entry point.
const CPU_EXPORT: &str = "canister_update work";
const TINY_MESSAGES: usize = 20_000;
const TINY_BATCH: usize = 1_000;
const TRANSFERS: usize = 500;

fn config() -> ExecutionConfig {
    ExecutionConfig {
        instructions_per_message: 100_000_000_000,
        instructions_per_slice: 100_000_000_000,
        instructions_per_round: 100_000_000_000,
        ..ExecutionConfig::default()
    }
}

/// The CPU-bound canister: `work` reads n (u32 LE) from its argument, then for i in 0..n:
/// `x = (x ^ (x >> 29)) * K + i; table[x & 0xff8] += x` (i64 words at 1024..5120), and
/// replies 16 bytes: x, then the table word at 1024 (both LE). Both depend on every
/// iteration, so an engine that skipped work would give a different reply.
fn cpu_canister() -> Vec<u8> {
    use execution_support::wasm::*;
    let mut m = Module::default();
    let append = m.import("msg_reply_data_append", &[I32, I32], &[]);
    let reply = m.import("msg_reply", &[], &[]);
    let arg_copy = m.import("msg_arg_data_copy", &[I32, I32, I32], &[]);
    m.memory_pages = Some(1);
    // locals: 0 n, 1 i, 2 x (i64); 3 addr (i32)
    let (n, i, x, addr) = (0u8, 1u8, 2u8, 3u8);
    let body = [
        // n = u32 arg
        i32c(400),
        i32c(0),
        i32c(4),
        call(arg_copy),
        i32c(400),
        vec![0x28, 2, 0, 0xad, 0x21, n],
        // x = seed
        i64c(0x243F_6A88_85A3_08D3),
        vec![0x21, x],
        // block { loop { if i >= n break
        vec![0x02, 0x40, 0x03, 0x40],
        vec![0x20, i, 0x20, n, 0x5a, 0x0d, 1],
        // x = (x ^ (x >> 29)) * K + i
        vec![0x20, x, 0x20, x],
        i64c(29),
        vec![0x88, 0x85],
        i64c(0x9E37_79B9_7F4A_7C15_u64 as i64),
        vec![0x7e, 0x20, i, 0x7c, 0x21, x],
        // addr = 1024 + (wrap(x) & 0xff8); mem64[addr] += x
        vec![0x20, x, 0xa7],
        i32c(0xff8),
        vec![0x71],
        i32c(1024),
        vec![0x6a, 0x22, addr],
        vec![0x20, addr, 0x29, 3, 0, 0x20, x, 0x7c, 0x37, 3, 0],
        // i += 1; continue } }
        vec![0x20, i],
        i64c(1),
        vec![0x7c, 0x21, i, 0x0c, 0, 0x0b, 0x0b],
        // reply x ‖ mem64[1024]
        i32c(400),
        vec![0x20, x, 0x37, 3, 0],
        i32c(408),
        i32c(1024),
        vec![0x29, 3, 0, 0x37, 3, 0],
        i32c(400),
        i32c(16),
        call(append),
        call(reply),
    ]
    .concat();
    let f = m.func(&[], &[], vec![(3, I64), (1, I32)], body);
    m.export(CPU_EXPORT, f);
    m.encode()
}

/// One `work` message on a freshly installed CPU canister: (instructions, seconds, reply).
fn cpu_run(wasm: &[u8], arg: &[u8]) -> (u64, f64, Vec<u8>) {
    let mut sub = Subnet::with_config(config());
    let id = sub.create_canister();
    sub.install(id, wasm, EMPTY_ARGS, "install", false).reply();
    let method = CPU_EXPORT.trim_start_matches("canister_update ");
    let m = sub.message(user(), id, method, arg);
    let msg_id = m.id;
    let start = Instant::now();
    let r = sub.batch(vec![m]);
    let secs = start.elapsed().as_secs_f64();
    let reply = match sub.sm.request_status(&msg_id) {
        Some(IngressStatus::Replied(b)) => b.clone(),
        other => panic!("cpu canister did not reply in one batch: {other:?}"),
    };
    (r.instructions, secs, reply)
}

fn main() {
    println!("bench exec (wasmi 2.0, fuel metering on, portable dispatch)");
    println!("{:<46} {:>16} {:>12}", "workload", "rate", "unit");

    // 1. CPU-bound canister.
    let wasm = cpu_canister();
    let arg = CPU_ITERATIONS.to_le_bytes();
    let mut runs: Vec<(u64, f64, Vec<u8>)> = (0..CPU_RUNS).map(|_| cpu_run(&wasm, &arg)).collect();
    assert!(
        runs.windows(2)
            .all(|w| w[0].0 == w[1].0 && w[0].2 == w[1].2),
        "runs disagree on instructions or reply"
    );
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (instructions, secs, reply) = runs[runs.len() / 2].clone();
    println!(
        "{:<46} {:>16.0} {:>12}",
        format!("cpu-bound canister ({instructions} instructions)"),
        instructions as f64 / secs,
        "instr/s"
    );
    // The module exactly as wasmi runs it (with cairn's rewrites, e.g. an exported memory).
    let prepared = node::execution::wasm::prepare(&wasm).expect("valid module");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench_exec_cpu.wasm");
    std::fs::write(path, &prepared.binary).expect("write target/bench_exec_cpu.wasm");
    println!(
        "bench-exec-cpu\tmodule={path}\texport={CPU_EXPORT}\targ_hex={}\tinstructions={instructions}\tmedian_s={secs:.6}\truns={CPU_RUNS}\treply_hex={}",
        to_hex(&arg),
        to_hex(&reply)
    );

    let wasm = test_canister();
    // 2. Tiny updates through routing + execution.
    let mut sub = Subnet::with_config(ExecutionConfig::default());
    let ids: Vec<Principal> = (0..4)
        .map(|_| {
            let id = sub.create_canister();
            sub.install(id, &wasm, EMPTY_ARGS, "install", false).reply();
            id
        })
        .collect();
    let batches: Vec<_> = (0..TINY_MESSAGES / TINY_BATCH)
        .map(|b| {
            (0..TINY_BATCH)
                .map(|i| sub.message(user(), ids[(b + i) % ids.len()], "inc", EMPTY_ARGS))
                .collect::<Vec<_>>()
        })
        .collect();
    let start = Instant::now();
    for b in batches {
        sub.batch(b);
    }
    let secs = start.elapsed().as_secs_f64();
    let mps = TINY_MESSAGES as f64 / secs;
    println!(
        "{:<46} {:>16.0} {:>12}",
        "tiny update `inc` (4 canisters)", mps, "msg/s"
    );

    // 3. ICRC-1 transfers on the real Rust ledger.
    let scen: Vec<u8> = hex(LEDGER_INIT);
    let mut sub = Subnet::with_config(ExecutionConfig::default());
    let ledger = sub.create_canister();
    let lw = read_module("canisters/rust-icrc1-ledger/module.wasm");
    let t0 = Instant::now();
    sub.install(ledger, &lw, &scen, "install", false).reply();
    let install_secs = t0.elapsed().as_secs_f64();
    let heap_bytes = sub
        .sm
        .canister(&ledger)
        .and_then(|c| c.heap.as_ref().map(|h| h.memory.len()))
        .unwrap_or(0);
    let stable_bytes = sub
        .sm
        .canister(&ledger)
        .map(|c| c.stable.size_bytes())
        .unwrap_or(0);
    println!("(ledger heap {heap_bytes} B, stable {stable_bytes} B)");
    let caller = Principal::from_slice(&[0x41]).expect("principal");
    let transfer = hex(TRANSFER_1_TO_B);
    let msgs: Vec<_> = (0..TRANSFERS)
        .map(|_| sub.message(caller, ledger, "icrc1_transfer", &transfer))
        .collect();
    let start = Instant::now();
    let mut instructions = 0u64;
    for chunk in msgs.chunks(100) {
        instructions += sub.batch(chunk.to_vec()).instructions;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "(ledger: {} instructions per transfer, {:.0} instr/s)",
        instructions / TRANSFERS as u64,
        instructions as f64 / secs
    );
    println!(
        "{:<46} {:>16.0} {:>12}",
        "ICRC-1 ledger icrc1_transfer (Rust, 1.2 MB)",
        TRANSFERS as f64 / secs,
        "transfer/s"
    );
    println!(
        "{:<46} {:>16.3} {:>12}",
        "ICRC-1 ledger install (compile + init)", install_secs, "s"
    );
}

/// `LedgerArg::Init` with balances A=666, B=420, fee 0 (from scenarios.json).
const LEDGER_INIT: &str = "4449444c136c006e006e7b6d7b6b04cf89df017cc189ee017dfdd2c9df0203cdf1cbbe03716c02007101046d056e036c02b3b0dac30368ad86ca8305076c020008017d6d096e086e786c069ea581d20178a495a5e90678e0ab86ef080ce4d8cce80b0c93c8e6c70c0cdec5d8ae0e686e7a6c01c7bfe7b60b7e6e0f6c0bc295a99301029efeb9a40371f2c794ae037defcee7800406aecbeb880408b2a4dab2050a82babe82080ba1e5f7a10a0db0d7c3920b0e91c9aafe0d71bea3d1c30f106b02fcb88b840301b0ced184031101120100074d59544f4b454e000001064d494e5445520002010141009a0501014200a40300e803000000000000d00700000000000000000001010400084d7920546f6b656e00";

/// A transfers 1 token to B (the scenario's transfer with amount 1).
const TRANSFER_1_TO_B: &str = "4449444c066d7b6e006c02b3b0dac30368ad86ca8305016e7d6e786c06fbca0102c6fcb60203ba89e5c20401a2de94eb060182f3f3910c04d8a38ca80d7d0105010142000000000001";
