//! Acceptance 3 and 4, plus calls, cycles, stable memory and time slicing:
//! - a canister that loops forever, allocates without bound or recurses deeply is stopped by
//!   its limits with the spec's reject, and other canisters keep executing (same rounds);
//! - malformed Wasm, malformed Candid to the management canister and calls from
//!   non-controllers are rejected with the spec's codes and change nothing;
//! - inter-canister calls with reply and reject callbacks, time slicing across rounds,
//!   freezing, trap rollback and stable memory across upgrades.

mod execution_support;

use execution_support::{
    canister_id_arg, freezing_arg, install_arg, test_canister, u32_le, user, Outcome, Subnet,
    EMPTY_ARGS,
};
use node::execution::ExecutionConfig;
use node::state::{IngressStatus, RejectCode};
use node::types::Principal;

fn small_limits() -> ExecutionConfig {
    ExecutionConfig {
        instructions_per_message: 20_000_000,
        instructions_per_slice: 2_000_000,
        instructions_per_round: 50_000_000,
        instructions_per_query: 5_000_000,
        instructions_per_install: 50_000_000,
        wasm_memory_bytes_max: 16 << 20,
        ..ExecutionConfig::default()
    }
}

fn setup(config: ExecutionConfig, n: usize) -> (Subnet, Vec<Principal>) {
    let mut sub = Subnet::with_config(config);
    let wasm = test_canister();
    let ids = (0..n)
        .map(|_| {
            let id = sub.create_canister();
            sub.install(id, &wasm, EMPTY_ARGS, "install", false).reply();
            id
        })
        .collect();
    (sub, ids)
}

fn status(sub: &Subnet, id: &[u8; 32]) -> IngressStatus {
    sub.sm.request_status(id).cloned().expect("status")
}

/// Runs a misbehaving call on `bad` alongside `inc` calls on `good`; the good ones are all
/// answered while the bad one is still running or after it failed.
fn misbehaving_with_neighbour(method: &str) -> node::state::Reject {
    let (mut sub, ids) = setup(small_limits(), 2);
    let (bad, good) = (ids[0], ids[1]);
    let m = sub.message(user(), bad, method, EMPTY_ARGS);
    let bad_id = m.id;
    let mut goods = Vec::new();
    let mut batch = vec![m];
    for _ in 0..3 {
        let g = sub.message(user(), good, "inc", EMPTY_ARGS);
        goods.push(g.id);
        batch.push(g);
    }
    sub.batch(batch);
    for g in &goods {
        assert!(
            matches!(status(&sub, g), IngressStatus::Replied(_)),
            "{method}: neighbour starved"
        );
    }
    for _ in 0..50 {
        if let IngressStatus::Rejected(r) = status(&sub, &bad_id) {
            // The neighbour still works afterwards.
            let v = sub.update(user(), good, "inc", EMPTY_ARGS).reply();
            assert_eq!(u32_le(&v), 4);
            return r;
        }
        sub.batch(vec![]);
    }
    panic!("{method}: never stopped");
}

#[test]
fn infinite_loop_hits_instruction_limit() {
    let r = misbehaving_with_neighbour("loop");
    assert_eq!(r.code, RejectCode::CanisterError);
    assert_eq!(r.error_code, "IC0522");
    assert!(
        r.message
            .contains("exceeded the limit of 20000000 instructions"),
        "{r:?}"
    );
}

#[test]
fn unbounded_allocation_hits_memory_limit() {
    let r = misbehaving_with_neighbour("alloc");
    assert_eq!(r.code, RejectCode::CanisterError);
    assert!(r.message.contains("out of memory"), "{r:?}");
}

#[test]
fn deep_recursion_traps_with_stack_overflow() {
    let r = misbehaving_with_neighbour("recurse");
    assert_eq!(r.code, RejectCode::CanisterError);
    assert!(r.message.contains("stack overflow"), "{r:?}");
}

#[test]
fn time_slicing_spreads_a_long_message_over_rounds() {
    let (mut sub, ids) = setup(small_limits(), 1);
    // ~5 instructions per iteration: several 2M-instruction slices, under the 20M limit.
    let n: u32 = 1_500_000;
    let m = sub.message(user(), ids[0], "work", &n.to_le_bytes());
    let id = m.id;
    sub.batch(vec![m]);
    assert_eq!(
        status(&sub, &id),
        IngressStatus::Processing,
        "sliced, not finished in one round"
    );
    let mut rounds = 1;
    while !matches!(status(&sub, &id), IngressStatus::Replied(_)) {
        sub.batch(vec![]);
        rounds += 1;
        assert!(rounds < 100);
    }
    assert!(rounds >= 2, "took {rounds} rounds");
    assert_eq!(status(&sub, &id), IngressStatus::Replied(b"done".to_vec()));
}

#[test]
fn trap_rolls_back_heap_changes() {
    let (mut sub, ids) = setup(small_limits(), 1);
    sub.update(user(), ids[0], "inc", EMPTY_ARGS).reply();
    let r = sub
        .update(user(), ids[0], "trap_after_write", EMPTY_ARGS)
        .reject();
    assert_eq!(r.code, RejectCode::CanisterError);
    assert_eq!(r.error_code, "IC0503");
    assert!(r.message.contains("deliberate"));
    assert_eq!(
        u32_le(&sub.query(user(), ids[0], "read", EMPTY_ARGS).reply()),
        1
    );
}

#[test]
fn inter_canister_calls_reply_and_reject() {
    let (mut sub, ids) = setup(small_limits(), 2);
    let (a, b) = (ids[0], ids[1]);
    sub.update(user(), b, "inc", EMPTY_ARGS).reply();
    // a calls b.inc: the reply callback forwards b's reply.
    let v = sub.update(user(), a, "call_inc", b.as_slice()).reply();
    assert_eq!(u32_le(&v), 2);
    assert_eq!(u32_le(&sub.query(user(), b, "read", EMPTY_ARGS).reply()), 2);
    // A call to a canister that does not exist: the reject callback gets code 3.
    let missing = Principal::from_canister_index(999_999);
    let v = sub
        .update(user(), a, "call_inc", missing.as_slice())
        .reply();
    assert_eq!(u32_le(&v), RejectCode::DestinationInvalid as u32);
    // A call to the management canister's unknown method: reject code 4.
    let v = sub
        .update(user(), a, "call_inc", Principal::MANAGEMENT.as_slice())
        .reply();
    assert_eq!(u32_le(&v), RejectCode::CanisterReject as u32);
    // Ordering: several calls from a to b in one round are delivered in order.
    let msgs: Vec<_> = (0..5)
        .map(|_| sub.message(user(), a, "call_inc", b.as_slice()))
        .collect();
    let ids_: Vec<_> = msgs.iter().map(|m| m.id).collect();
    sub.batch(msgs);
    for _ in 0..10 {
        sub.batch(vec![]);
    }
    let got: Vec<u32> = ids_
        .iter()
        .map(|id| match status(&sub, id) {
            IngressStatus::Replied(b) => u32_le(&b),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, vec![3, 4, 5, 6, 7]);
}

#[test]
fn malformed_wasm_is_rejected_and_changes_nothing() {
    let (mut sub, ids) = setup(small_limits(), 1);
    let id = ids[0];
    let before = sub.sm.canister(&id).expect("c").module_hash();
    for bad in [&b"not wasm"[..], b"\0asm\x01\0\0\0\x01\xff", b""] {
        let r = sub
            .install(id, bad, EMPTY_ARGS, "reinstall", false)
            .reject();
        assert_eq!(r.code, RejectCode::CanisterError, "{r:?}");
        assert_eq!(r.error_code, "IC0505");
    }
    assert_eq!(sub.sm.canister(&id).expect("c").module_hash(), before);
    assert_eq!(
        u32_le(&sub.update(user(), id, "inc", EMPTY_ARGS).reply()),
        1
    );
}

#[test]
fn malformed_candid_to_management_is_rejected() {
    let (mut sub, ids) = setup(small_limits(), 1);
    let id = ids[0];
    let height_canisters = sub.sm.state.canisters.len();
    for (method, arg) in [
        ("install_code", &b"DIDL\x00\x01\x7d"[..]),
        ("install_code", b"garbage"),
        ("canister_status", b"DIDL\x00\x01\x71\x03abc"),
        (
            "provisional_create_canister_with_cycles",
            b"DIDL\x01\x6c\x01\x00\x7d\x01\x00",
        ),
        ("stop_canister", b""),
    ] {
        let r = sub
            .update(user(), Principal::MANAGEMENT, method, arg)
            .reject();
        assert_eq!(r.code, RejectCode::CanisterReject, "{method}: {r:?}");
    }
    assert_eq!(sub.sm.state.canisters.len(), height_canisters);
    let _ = id;
}

#[test]
fn non_controllers_cannot_manage() {
    let (mut sub, ids) = setup(small_limits(), 1);
    let id = ids[0];
    let stranger = Principal::self_authenticating(b"stranger");
    let wasm = test_canister();
    let r = sub
        .install_as(stranger, id, &wasm, EMPTY_ARGS, "reinstall", false)
        .reject();
    assert_eq!(
        (r.code, r.error_code),
        (RejectCode::CanisterError, "IC0512")
    );
    for method in [
        "stop_canister",
        "delete_canister",
        "canister_status",
        "start_canister",
    ] {
        let r = sub
            .update(
                stranger,
                Principal::MANAGEMENT,
                method,
                &canister_id_arg(id),
            )
            .reject();
        assert_eq!(
            (r.code, r.error_code),
            (RejectCode::CanisterError, "IC0512"),
            "{method}"
        );
    }
    assert_eq!(
        u32_le(&sub.update(user(), id, "inc", EMPTY_ARGS).reply()),
        1
    );
}

#[test]
fn lifecycle_status_stop_start_delete() {
    let (mut sub, ids) = setup(small_limits(), 1);
    let id = ids[0];
    let st = sub
        .update(
            user(),
            Principal::MANAGEMENT,
            "canister_status",
            &canister_id_arg(id),
        )
        .reply();
    let v = node::candid::decode_args(
        &st,
        &[node::candid::record(&[
            ("module_hash", node::candid::opt(node::candid::blob())),
            ("cycles", node::candid::Type::Nat),
        ])],
        &Default::default(),
    )
    .expect("status decodes");
    use sha2::Digest;
    let want: [u8; 32] = sha2::Sha256::digest(test_canister()).into();
    assert_eq!(
        v[0].field("module_hash")
            .and_then(|h| h.opt())
            .and_then(|b| b.as_blob()),
        Some(&want[..])
    );
    sub.update(
        user(),
        Principal::MANAGEMENT,
        "stop_canister",
        &canister_id_arg(id),
    )
    .reply();
    let r = sub.update(user(), id, "inc", EMPTY_ARGS).reject();
    assert_eq!(r.code, RejectCode::CanisterError);
    sub.update(
        user(),
        Principal::MANAGEMENT,
        "start_canister",
        &canister_id_arg(id),
    )
    .reply();
    assert_eq!(
        u32_le(&sub.update(user(), id, "inc", EMPTY_ARGS).reply()),
        1
    );
    let r = sub
        .update(
            user(),
            Principal::MANAGEMENT,
            "delete_canister",
            &canister_id_arg(id),
        )
        .reject();
    assert_eq!(r.error_code, "IC0510");
    sub.update(
        user(),
        Principal::MANAGEMENT,
        "stop_canister",
        &canister_id_arg(id),
    )
    .reply();
    sub.update(
        user(),
        Principal::MANAGEMENT,
        "delete_canister",
        &canister_id_arg(id),
    )
    .reply();
    assert!(sub.sm.canister(&id).is_none());
    let r = sub.update(user(), id, "inc", EMPTY_ARGS).reject();
    assert_eq!(r.code, RejectCode::DestinationInvalid);
}

#[test]
fn stable_memory_survives_upgrade_heap_does_not() {
    let (mut sub, ids) = setup(small_limits(), 1);
    let id = ids[0];
    sub.update(user(), id, "inc", EMPTY_ARGS).reply();
    sub.update(
        user(),
        id,
        "stable_put",
        &0x0102030405060708u64.to_le_bytes(),
    )
    .reply();
    let wasm = test_canister();
    sub.install(id, &wasm, EMPTY_ARGS, "upgrade", false).reply();
    assert_eq!(
        sub.query(user(), id, "stable_get", EMPTY_ARGS).reply(),
        0x0102030405060708u64.to_le_bytes()
    );
    assert_eq!(
        u32_le(&sub.query(user(), id, "read", EMPTY_ARGS).reply()),
        0
    );
    // Reinstall wipes stable memory too.
    sub.install(id, &wasm, EMPTY_ARGS, "reinstall", false)
        .reply();
    let r = sub.query(user(), id, "stable_get", EMPTY_ARGS).reject();
    assert_eq!(r.code, RejectCode::CanisterError);
}

#[test]
fn frozen_canister_rejects_until_topped_up() {
    let mut sub = Subnet::with_config(small_limits());
    // Just enough for creation and installation, not for a 20M-instruction prepayment.
    let id = sub.create_canister_with(user(), Some(60_000_000_000));
    let wasm = test_canister();
    let r = sub.install(id, &wasm, EMPTY_ARGS, "install", false);
    assert!(matches!(r, Outcome::Reply(_)), "{r:?}");
    let c = sub.sm.canister(&id).expect("c");
    let before = c.cycles;
    sub.update(user(), id, "inc", EMPTY_ARGS).reply();
    let after = sub.sm.canister(&id).expect("c").cycles;
    assert!(after < before, "execution is charged: {before} -> {after}");
    // Drain: set a freezing threshold far beyond the balance.
    let arg = freezing_arg(id, 1_000_000_000_000);
    sub.update(user(), Principal::MANAGEMENT, "update_settings", &arg)
        .reply();
    let r = sub.update(user(), id, "inc", EMPTY_ARGS).reject();
    assert_eq!(r.code, RejectCode::SysTransient, "{r:?}");
    let arg = freezing_arg(id, 0);
    sub.update(user(), Principal::MANAGEMENT, "update_settings", &arg)
        .reply();
    assert_eq!(
        u32_le(&sub.update(user(), id, "inc", EMPTY_ARGS).reply()),
        2
    );
}

#[test]
fn install_argument_encoding_round_trips() {
    // Guards the helper the other tests rely on.
    let a = install_arg(
        Principal::from_canister_index(1),
        b"\0asm",
        b"x",
        "upgrade",
        true,
    );
    assert!(a.starts_with(b"DIDL"));
}

#[test]
fn gzip_compressed_module_installs() {
    let wasm = test_canister();
    let deflated = miniz_oxide::deflate::compress_to_vec(&wasm, 6);
    let mut gz = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];
    gz.extend_from_slice(&deflated);
    gz.extend_from_slice(&crc32(&wasm).to_le_bytes());
    gz.extend_from_slice(&(wasm.len() as u32).to_le_bytes());
    let mut sub = Subnet::with_config(small_limits());
    let id = sub.create_canister();
    sub.install(id, &gz, EMPTY_ARGS, "install", false).reply();
    use sha2::Digest;
    let want: [u8; 32] = sha2::Sha256::digest(&gz).into();
    assert_eq!(sub.sm.canister(&id).expect("c").module_hash(), Some(want));
    assert_eq!(
        u32_le(&sub.update(user(), id, "inc", EMPTY_ARGS).reply()),
        1
    );
    // A truncated gzip is malformed.
    let r = sub
        .install(id, &gz[..gz.len() / 2], EMPTY_ARGS, "reinstall", false)
        .reject();
    assert_eq!(r.error_code, "IC0505");
}

#[test]
fn replies_become_done_after_the_expiry_window() {
    let (mut sub, ids) = setup(small_limits(), 1);
    let m = sub.message(user(), ids[0], "inc", EMPTY_ARGS);
    let id = m.id;
    sub.batch(vec![m]);
    assert!(matches!(status(&sub, &id), IngressStatus::Replied(_)));
    // Batches advance time by one second each.
    for _ in 0..301 {
        sub.batch(vec![]);
    }
    assert_eq!(status(&sub, &id), IngressStatus::Done);
    for _ in 0..301 {
        sub.batch(vec![]);
    }
    assert!(sub.sm.request_status(&id).is_none());
}

#[test]
fn restart_from_state_continues_identically() {
    let (mut a, ids) = setup(small_limits(), 2);
    let (mut b, _) = setup(small_limits(), 2);
    for sub in [&mut a, &mut b] {
        sub.update(user(), ids[0], "inc", EMPTY_ARGS).reply();
        sub.update(user(), ids[1], "stable_put", &7u64.to_le_bytes())
            .reply();
    }
    // b restarts: its state is handed to a new state machine (as after loading a
    // checkpoint), which recompiles the modules.
    let state = std::mem::take(&mut b.sm.state);
    b.sm = node::routing::StateMachine::from_state(small_limits(), state).expect("restart");
    for sub in [&mut a, &mut b] {
        sub.update(user(), ids[0], "call_inc", ids[1].as_slice())
            .reply();
    }
    assert_eq!(a.sm.height(), b.sm.height());
    assert_eq!(
        a.sm.state_hash(a.sm.height()),
        b.sm.state_hash(b.sm.height())
    );
    assert_eq!(
        b.query(user(), ids[1], "stable_get", EMPTY_ARGS).reply(),
        7u64.to_le_bytes()
    );
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= *b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn cycles_move_with_calls_and_the_rest_is_refunded() {
    let (mut sub, ids) = setup(small_limits(), 2);
    let (a, b) = (ids[0], ids[1]);
    let before_b = sub.sm.canister(&b).expect("b").cycles;
    let before_b_instr = sub.sm.canister(&b).expect("b").instructions_total;
    let refund = sub.update(user(), a, "send_cycles", b.as_slice()).reply();
    assert_eq!(
        u128::from_le_bytes(refund[..16].try_into().expect("16")),
        500_000
    );
    let cb = sub.sm.canister(&b).expect("b");
    let fee = node::execution::cycles::execution_cost(cb.instructions_total - before_b_instr);
    // b kept half, paid for its execution, and (tiny) storage for the elapsed seconds.
    let gained = cb.cycles as i128 - before_b as i128 + fee as i128;
    assert!((499_000..=500_000).contains(&gained), "b gained {gained}");
}

#[test]
fn management_target_is_the_argument_canister() {
    use node::execution::management::target_canister;
    let id = Principal::from_canister_index(42);
    assert_eq!(
        target_canister(
            "install_code",
            &install_arg(id, b"x", b"", "install", false)
        ),
        Some(id)
    );
    assert_eq!(
        target_canister("canister_status", &canister_id_arg(id)),
        Some(id)
    );
    assert_eq!(
        target_canister("provisional_create_canister_with_cycles", b"DIDL\0\0"),
        None
    );
    assert_eq!(target_canister("canister_status", b"garbage"), None);
}

/// A canister with `canister_heartbeat` (counts beats in memory[0..4]) and
/// `canister_global_timer` (counts firings in memory[4..8]); `arm` sets the timer to now.
fn timer_canister() -> Vec<u8> {
    use execution_support::wasm::*;
    let mut m = Module::default();
    let append = m.import("msg_reply_data_append", &[I32, I32], &[]);
    let reply = m.import("msg_reply", &[], &[]);
    let time = m.import("time", &[], &[I64]);
    let timer_set = m.import("global_timer_set", &[I64], &[I64]);
    m.memory_pages = Some(1);
    let bump = |addr: i32| {
        [
            i32c(addr),
            i32c(addr),
            vec![0x28, 2, 0],
            i32c(1),
            vec![0x6a, 0x36, 2, 0],
        ]
        .concat()
    };
    let f = m.func(&[], &[], vec![], bump(0));
    m.export("canister_heartbeat", f);
    let f = m.func(&[], &[], vec![], bump(4));
    m.export("canister_global_timer", f);
    let f = m.func(
        &[],
        &[],
        vec![],
        [
            call(time),
            call(timer_set),
            vec![0x1a],
            i32c(0),
            i32c(8),
            call(append),
            call(reply),
        ]
        .concat(),
    );
    m.export("canister_update arm", f);
    let f = m.func(
        &[],
        &[],
        vec![],
        [i32c(0), i32c(8), call(append), call(reply)].concat(),
    );
    m.export("canister_query counts", f);
    m.encode()
}

#[test]
fn heartbeat_runs_every_round_and_the_timer_fires_once() {
    let mut sub = Subnet::with_config(small_limits());
    let id = sub.create_canister();
    sub.install(id, &timer_canister(), EMPTY_ARGS, "install", false)
        .reply();
    let counts = |sub: &Subnet| {
        let b = sub.query(user(), id, "counts", EMPTY_ARGS).reply();
        (u32_le(&b[..4]), u32_le(&b[4..8]))
    };
    let (beats0, fired0) = counts(&sub);
    assert_eq!(fired0, 0);
    for _ in 0..5 {
        sub.batch(vec![]);
    }
    let (beats1, _) = counts(&sub);
    assert_eq!(beats1, beats0 + 5, "one heartbeat per round");
    sub.update(user(), id, "arm", EMPTY_ARGS).reply();
    for _ in 0..5 {
        sub.batch(vec![]);
    }
    assert_eq!(counts(&sub).1, 1, "the timer fires once, then is cleared");
}

/// `certify` sets certified data from its argument; `cert` (query) replies the data
/// certificate the caller supplied, or "none"; `cert_in_update` calls
/// `data_certificate_size` where the spec forbids it.
fn certificate_canister() -> Vec<u8> {
    use execution_support::wasm::*;
    let mut m = Module::default();
    let append = m.import("msg_reply_data_append", &[I32, I32], &[]);
    let reply = m.import("msg_reply", &[], &[]);
    let arg_size = m.import("msg_arg_data_size", &[], &[I32]);
    let arg_copy = m.import("msg_arg_data_copy", &[I32, I32, I32], &[]);
    let set = m.import("certified_data_set", &[I32, I32], &[]);
    let present = m.import("data_certificate_present", &[], &[I32]);
    let size = m.import("data_certificate_size", &[], &[I32]);
    let copy = m.import("data_certificate_copy", &[I32, I32, I32], &[]);
    m.memory_pages = Some(1);
    m.data.push((16, b"none".to_vec()));
    let body = [
        call(arg_size),
        vec![0x21, 0],
        i32c(100),
        i32c(0),
        vec![0x20, 0],
        call(arg_copy),
        i32c(100),
        vec![0x20, 0],
        call(set),
        call(reply),
    ]
    .concat();
    let f = m.func(&[], &[], vec![(1, I32)], body);
    m.export("canister_update certify", f);
    // if present { copy(200, 0, size); append(200, size) } else { append(16, 4) }; reply
    let body = [
        call(present),
        vec![0x04, 0x40],
        call(size),
        vec![0x21, 0],
        i32c(200),
        i32c(0),
        vec![0x20, 0],
        call(copy),
        i32c(200),
        vec![0x20, 0],
        call(append),
        vec![0x05],
        i32c(16),
        i32c(4),
        call(append),
        vec![0x0b],
        call(reply),
    ]
    .concat();
    let f = m.func(&[], &[], vec![(1, I32)], body);
    m.export("canister_query cert", f);
    let f = m.func(
        &[],
        &[],
        vec![],
        [call(size), vec![0x1a], call(reply)].concat(),
    );
    m.export("canister_update cert_in_update", f);
    m.encode()
}

#[test]
fn certified_data_and_data_certificate() {
    let mut sub = Subnet::with_config(small_limits());
    let id = sub.create_canister();
    sub.install(id, &certificate_canister(), EMPTY_ARGS, "install", false)
        .reply();
    sub.update(user(), id, "certify", &[7u8; 32]).reply();
    assert_eq!(
        sub.sm.canister(&id).expect("c").certified_data,
        vec![7u8; 32]
    );
    let r = sub.update(user(), id, "certify", &[7u8; 33]).reject();
    assert!(r.message.contains("32 bytes"), "{r:?}");
    assert_eq!(
        sub.sm.canister(&id).expect("c").certified_data,
        vec![7u8; 32]
    );
    // A query gets the certificate its caller (the API layer) supplies.
    let with = sub.sm.query(
        id,
        "cert",
        EMPTY_ARGS.to_vec(),
        user(),
        Some(b"CERT".to_vec()),
    );
    assert_eq!(with, Ok(b"CERT".to_vec()));
    assert_eq!(sub.query(user(), id, "cert", EMPTY_ARGS).reply(), b"none");
    // Replicated execution has no certificate: the call traps.
    let r = sub
        .update(user(), id, "cert_in_update", EMPTY_ARGS)
        .reject();
    assert!(
        r.message.contains("cannot be executed in update mode"),
        "{r:?}"
    );
}

#[test]
fn stop_waits_for_running_calls_and_uninstall_clears() {
    let (mut sub, ids) = setup(small_limits(), 1);
    let id = ids[0];
    let work = sub.message(user(), id, "work", &1_500_000u32.to_le_bytes());
    let work_id = work.id;
    sub.batch(vec![work]);
    let stop = sub.message(
        user(),
        node::types::Principal::MANAGEMENT,
        "stop_canister",
        &canister_id_arg(id),
    );
    let stop_id = stop.id;
    sub.batch(vec![stop]);
    assert!(
        !matches!(status(&sub, &stop_id), IngressStatus::Replied(_)),
        "stop waits for the running call"
    );
    assert_eq!(
        sub.sm.canister(&id).expect("c").status,
        node::state::CanisterStatus::Stopping
    );
    for _ in 0..20 {
        sub.batch(vec![]);
    }
    assert_eq!(
        status(&sub, &work_id),
        IngressStatus::Replied(b"done".to_vec())
    );
    assert!(matches!(status(&sub, &stop_id), IngressStatus::Replied(_)));
    assert_eq!(
        sub.sm.canister(&id).expect("c").status,
        node::state::CanisterStatus::Stopped
    );
    sub.update(
        user(),
        Principal::MANAGEMENT,
        "start_canister",
        &canister_id_arg(id),
    )
    .reply();
    sub.update(
        user(),
        Principal::MANAGEMENT,
        "uninstall_code",
        &canister_id_arg(id),
    )
    .reply();
    assert!(sub.sm.canister(&id).expect("c").module_hash().is_none());
    let r = sub.update(user(), id, "inc", EMPTY_ARGS).reject();
    assert_eq!(r.error_code, "IC0537");
}
