//! `cargo xtask bench exec`: execution throughput under wasmi.
//!
//! Run: `cargo run --release -p node --features sim --example bench_exec`
//!
//! Reports, in one table:
//! 1. instructions/s of a CPU-bound canister message (a counting loop) under wasmi, with
//!    fuel metering on, through the full routing + execution path;
//! 2. messages/s for a tiny update (`inc`) through routing + execution (batches of 1,000);
//! 3. ICRC-1 transfers/s on DFINITY's Rust ledger (a real canister);
//!
//! It also writes the CPU-bound module to `target/bench_exec_loop.wasm` with its export
//! `canister_update work` and argument, so a host engine (wasmtime) can run the same
//! module for the ratio (see the report: a separate non-default crate does that, so wasmtime
//! never becomes a dependency of `node`).

#[path = "../tests/execution_support/mod.rs"]
mod execution_support;

use std::time::Instant;

use execution_support::{hex, read_module, test_canister, user, Subnet, EMPTY_ARGS};
use node::execution::ExecutionConfig;
use node::types::Principal;

const LOOP_ITERATIONS: u32 = 200_000_000;
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

fn main() {
    println!("bench exec (wasmi 2.0, fuel metering on, portable dispatch)");
    println!("{:<46} {:>16} {:>12}", "workload", "rate", "unit");

    // 1. CPU-bound canister.
    let mut sub = Subnet::with_config(config());
    let id = sub.create_canister();
    let wasm = test_canister();
    sub.install(id, &wasm, EMPTY_ARGS, "install", false).reply();
    let _ = std::fs::create_dir_all("target");
    // The module exactly as wasmi runs it (with cairn's extra exports, e.g. its memory).
    let prepared = node::execution::wasm::prepare(&wasm).expect("valid module");
    let _ = std::fs::write("target/bench_exec_loop.wasm", &prepared.binary);
    let m = sub.message(user(), id, "work", &LOOP_ITERATIONS.to_le_bytes());
    let start = Instant::now();
    let r = sub.batch(vec![m]);
    let secs = start.elapsed().as_secs_f64();
    let ips = r.instructions as f64 / secs;
    println!(
        "{:<46} {:>16.0} {:>12}",
        format!("cpu loop ({} instructions)", r.instructions),
        ips,
        "instr/s"
    );

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
    println!();
    println!("baseline: the wasmtime run of target/bench_exec_loop.wasm (`work`, arg = u32 LE {LOOP_ITERATIONS}) is the");
    println!("reference for row 1; ratio = wasmtime instr/s / wasmi instr/s (same fuel-counted instruction count).");
}

/// `LedgerArg::Init` with balances A=666, B=420, fee 0 (from scenarios.json).
const LEDGER_INIT: &str = "4449444c136c006e006e7b6d7b6b04cf89df017cc189ee017dfdd2c9df0203cdf1cbbe03716c02007101046d056e036c02b3b0dac30368ad86ca8305076c020008017d6d096e086e786c069ea581d20178a495a5e90678e0ab86ef080ce4d8cce80b0c93c8e6c70c0cdec5d8ae0e686e7a6c01c7bfe7b60b7e6e0f6c0bc295a99301029efeb9a40371f2c794ae037defcee7800406aecbeb880408b2a4dab2050a82babe82080ba1e5f7a10a0db0d7c3920b0e91c9aafe0d71bea3d1c30f106b02fcb88b840301b0ced184031101120100074d59544f4b454e000001064d494e5445520002010141009a0501014200a40300e803000000000000d00700000000000000000001010400084d7920546f6b656e00";

/// A transfers 1 token to B (the scenario's transfer with amount 1).
const TRANSFER_1_TO_B: &str = "4449444c066d7b6e006c02b3b0dac30368ad86ca8305016e7d6e786c06fbca0102c6fcb60203ba89e5c20401a2de94eb060182f3f3910c04d8a38ca80d7d0105010142000000000001";
