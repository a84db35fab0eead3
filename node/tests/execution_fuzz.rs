//! Mutated Wasm modules and random Candid never panic the node: they are rejected with an
//! error (or, for a mutation that stays valid, accepted and then executed under limits).

mod execution_support;

use execution_support::{read_module, test_canister, user, Subnet, EMPTY_ARGS};
use node::candid::{blob, decode_args, opt, record, vec, Type, TypeEnv};
use node::execution::runtime::Runtime;
use node::execution::ExecutionConfig;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut m = base.to_vec();
    for _ in 0..1 + rng.next() % 4 {
        let i = (rng.next() as usize) % m.len();
        match rng.next() % 3 {
            0 => m[i] = rng.next() as u8,
            1 => m.truncate(i.max(8)),
            _ => m.insert(i, rng.next() as u8),
        }
    }
    m
}

#[test]
fn mutated_modules_compile_or_fail_cleanly() {
    let rt = Runtime::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let bases = [
        test_canister(),
        read_module("canisters/wat-counter-candid/module.wasm"),
        read_module("canisters/NEGATIVE-wasi-imports/module.wasm"),
    ];
    let mut accepted = 0;
    for base in &bases {
        for _ in 0..300 {
            if rt.compile(&mutate(&mut rng, base)).is_ok() {
                accepted += 1;
            }
        }
    }
    assert!(accepted < 900, "mutations are mostly rejected");
}

#[test]
fn accepted_mutants_run_under_limits() {
    let config = ExecutionConfig {
        instructions_per_message: 5_000_000,
        instructions_per_slice: 5_000_000,
        instructions_per_install: 5_000_000,
        wasm_memory_bytes_max: 8 << 20,
        ..ExecutionConfig::default()
    };
    let mut sub = Subnet::with_config(config);
    let id = sub.create_canister();
    let mut rng = Rng(42);
    let base = test_canister();
    let mut ran = 0;
    for _ in 0..150 {
        let m = mutate(&mut rng, &base);
        if let execution_support::Outcome::Reply(_) =
            sub.install(id, &m, EMPTY_ARGS, "reinstall", false)
        {
            for method in ["inc", "loop", "alloc", "work"] {
                let _ = sub.update(user(), id, method, &[1, 2, 3, 4]);
            }
            ran += 1;
        }
    }
    // The subnet is still healthy.
    sub.install(id, &base, EMPTY_ARGS, "reinstall", false)
        .reply();
    let v = sub.update(user(), id, "inc", EMPTY_ARGS).reply();
    assert_eq!(v, 1u32.to_le_bytes());
    eprintln!("{ran} mutants installed and ran");
}

#[test]
fn random_candid_never_panics() {
    let mut rng = Rng(7);
    let types = [
        vec![record(&[
            ("canister_id", Type::Principal),
            ("wasm_module", blob()),
            ("arg", opt(blob())),
        ])],
        vec![vec(opt(Type::Nat)), Type::Int, Type::Text],
        vec![Type::Reserved, opt(Type::Empty)],
    ];
    for _ in 0..20_000 {
        let len = (rng.next() % 40) as usize;
        let mut b = b"DIDL".to_vec();
        for _ in 0..len {
            b.push(rng.next() as u8);
        }
        for t in &types {
            let _ = decode_args(&b, t, &TypeEnv::default());
        }
    }
}
