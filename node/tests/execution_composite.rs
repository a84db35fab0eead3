//! Composite queries (`canister_composite_query <name>`): a query call that calls query
//! methods of other canisters of the subnet (and of itself), with reply and reject
//! callbacks in the composite contexts (`CQ`, `CRy`, `CRt`), changes visible to the
//! callbacks of the same call and discarded afterwards, a depth limit on the call graph and
//! one instruction budget for all of it.

mod execution_support;

use execution_support::wasm::*;
use execution_support::{freezing_arg, user, Subnet};
use node::execution::message::QUERY_CALL_GRAPH_DEPTH_MAX;
use node::execution::ExecutionConfig;
use node::state::RejectCode;
use node::types::Principal;

/// The test canister:
///
/// | export | what it does |
/// |---|---|
/// | `canister_update inc` | memory[0] += 1, replies the counter (4 bytes LE) |
/// | `canister_query read` | replies the counter |
/// | `canister_query spin` | loops forever |
/// | `canister_composite_query cq_read` | counter += 100 (on its copy), calls `read` on the canister its argument names (passing the argument on) |
/// | `canister_composite_query cq_chain` | the same, calling `cq_chain` |
/// | `canister_composite_query cq_spin` | the same, calling `spin` |
/// | `canister_composite_query cq_inc` | the same, calling the update method `inc` |
/// | `canister_composite_query cq_silent` | replies nothing, calls nothing |
///
/// The reply callback answers with the callee's reply followed by this canister's counter
/// as the callback sees it; the reject callback answers with the reject code (4 bytes LE).
fn composite_canister() -> Vec<u8> {
    let mut m = Module::default();
    let append = m.import("msg_reply_data_append", &[I32, I32], &[]);
    let reply = m.import("msg_reply", &[], &[]);
    let arg_size = m.import("msg_arg_data_size", &[], &[I32]);
    let arg_copy = m.import("msg_arg_data_copy", &[I32, I32, I32], &[]);
    let call_new = m.import("call_new", &[I32; 8], &[]);
    let call_data_append = m.import("call_data_append", &[I32, I32], &[]);
    let call_perform = m.import("call_perform", &[], &[I32]);
    let reject_code = m.import("msg_reject_code", &[], &[I32]);
    m.memory_pages = Some(1);
    m.data.push((300, b"read".to_vec()));
    m.data.push((310, b"cq_chain".to_vec()));
    m.data.push((320, b"spin".to_vec()));
    m.data.push((330, b"inc".to_vec()));
    let load_counter = [i32c(0), vec![0x28, 2, 0]].concat();
    let add_to_counter = |n: i32| {
        [
            i32c(0),
            load_counter.clone(),
            i32c(n),
            vec![0x6a, 0x36, 2, 0],
        ]
        .concat()
    };
    let reply_counter = [i32c(0), i32c(4), call(append), call(reply)].concat();
    let f = m.func(
        &[],
        &[],
        vec![],
        [add_to_counter(1), reply_counter.clone()].concat(),
    );
    m.export("canister_update inc", f);
    let f = m.func(&[], &[], vec![], reply_counter);
    m.export("canister_query read", f);
    let f = m.func(&[], &[], vec![], vec![0x03, 0x40, 0x0c, 0, 0x0b]);
    m.export("canister_query spin", f);
    // call_then(name_ptr, name_len): counter += 100; call `name` on the canister the
    // argument names, with the argument as payload.
    let body = [
        add_to_counter(100),
        call(arg_size),
        vec![0x21, 2],
        i32c(100),
        i32c(0),
        vec![0x20, 2],
        call(arg_copy),
        i32c(100),
        vec![0x20, 2],
        vec![0x20, 0],
        vec![0x20, 1],
        i32c(0),
        i32c(0),
        i32c(1),
        i32c(0),
        call(call_new),
        i32c(100),
        vec![0x20, 2],
        call(call_data_append),
        call(call_perform),
        vec![0x1a],
    ]
    .concat();
    let call_then = m.func(&[I32, I32], &[], vec![(1, I32)], body);
    for (export, ptr, len) in [
        ("cq_read", 300, 4),
        ("cq_chain", 310, 8),
        ("cq_spin", 320, 4),
        ("cq_inc", 330, 3),
    ] {
        let f = m.func(
            &[],
            &[],
            vec![],
            [i32c(ptr), i32c(len), call(call_then)].concat(),
        );
        m.export(&format!("canister_composite_query {export}"), f);
    }
    let f = m.func(&[], &[], vec![], vec![]);
    m.export("canister_composite_query cq_silent", f);
    let body = [
        append_argument(arg_size, arg_copy, append, 200, 1),
        i32c(0),
        i32c(4),
        call(append),
        call(reply),
    ]
    .concat();
    let on_reply = m.func(&[I32], &[], vec![(1, I32)], body);
    let body = reply_reject_code(reject_code, append, reply, 500);
    let on_reject = m.func(&[I32], &[], vec![], body);
    m.table_funcs = vec![on_reply, on_reject];
    m.encode()
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4-byte words")))
        .collect()
}

/// Instructions per query call graph in these tests (the default is the IC's 5 billion;
/// a smaller budget keeps the spinning test short).
const QUERY_BUDGET: u64 = 20_000_000;

/// Two canisters with the composite test canister, counters 1 and 2 (`a` created with
/// `a_cycles`, or the default amount).
fn two_canisters_with(a_cycles: Option<u128>) -> (Subnet, Principal, Principal) {
    let mut s = Subnet::with_config(ExecutionConfig {
        instructions_per_query: QUERY_BUDGET,
        ..ExecutionConfig::default()
    });
    let wasm = composite_canister();
    let a = s.create_canister_with(user(), a_cycles);
    let b = s.create_canister();
    s.install(a, &wasm, &[], "install", false).reply();
    s.install(b, &wasm, &[], "install", false).reply();
    s.update(user(), a, "inc", &[]).reply();
    s.update(user(), b, "inc", &[]).reply();
    s.update(user(), b, "inc", &[]).reply();
    (s, a, b)
}

fn two_canisters() -> (Subnet, Principal, Principal) {
    two_canisters_with(None)
}

#[test]
fn a_composite_query_calls_a_query_of_another_canister_and_sees_its_own_changes() {
    let (s, a, b) = two_canisters();
    let reply = s.query(user(), a, "cq_read", b.as_slice()).reply();
    // b's counter, then a's counter as a's callback sees it: 1 + 100.
    assert_eq!(u32s(&reply), [2, 101]);
    // Nothing persisted.
    assert_eq!(u32s(&s.query(user(), a, "read", &[]).reply()), [1]);
    assert_eq!(
        u32s(&s.query(user(), a, "cq_read", b.as_slice()).reply()),
        [2, 101]
    );
}

#[test]
fn a_frozen_canister_can_still_make_composite_query_calls() {
    // Queries cost no cycles, nor do a composite query's calls: a canister with no liquid
    // cycles (its freezing threshold far beyond its balance) still answers.
    let (mut s, a, b) = two_canisters_with(Some(60_000_000_000));
    let arg = freezing_arg(a, 1_000_000_000_000);
    s.update(user(), Principal::MANAGEMENT, "update_settings", &arg)
        .reply();
    assert_eq!(
        s.update(user(), a, "inc", &[]).reject().code,
        RejectCode::SysTransient
    );
    let reply = s.query(user(), a, "cq_read", b.as_slice()).reply();
    assert_eq!(u32s(&reply), [2, 101]);
}

#[test]
fn a_composite_query_may_call_its_own_canister() {
    let (s, a, _) = two_canisters();
    // The callee runs on the committed state (1), the callback on the caller's copy (101).
    let reply = s.query(user(), a, "cq_read", a.as_slice()).reply();
    assert_eq!(u32s(&reply), [1, 101]);
}

#[test]
fn calls_to_unknown_canisters_reach_the_reject_callback() {
    let (s, a, _) = two_canisters();
    let nobody = Principal::from_slice(&[9, 9, 9]).expect("principal");
    let reply = s.query(user(), a, "cq_read", nobody.as_slice()).reply();
    assert_eq!(u32s(&reply), [RejectCode::DestinationInvalid as u32]);
    // So do calls to a method that is not a query (here: an update method), and the
    // update did not run.
    let (s, a, b) = two_canisters();
    let reply = s.query(user(), a, "cq_inc", b.as_slice()).reply();
    assert_eq!(u32s(&reply), [RejectCode::DestinationInvalid as u32]);
    assert_eq!(u32s(&s.query(user(), b, "read", &[]).reply()), [2]);
}

#[test]
fn the_call_graph_depth_is_bounded() {
    let (s, a, _) = two_canisters();
    let reply = s.query(user(), a, "cq_chain", a.as_slice()).reply();
    // The call at depth QUERY_CALL_GRAPH_DEPTH_MAX is rejected; its caller's reject
    // callback replies the code and every level above appends its counter (101: each level
    // runs on its own copy of the committed state).
    let words = u32s(&reply);
    assert_eq!(words[0], RejectCode::CanisterError as u32);
    assert_eq!(words.len(), QUERY_CALL_GRAPH_DEPTH_MAX);
    assert!(words[1..].iter().all(|w| *w == 101), "{words:?}");
}

#[test]
fn the_whole_call_graph_shares_one_instruction_budget() {
    let (s, a, b) = two_canisters();
    // The callee spins until the budget is gone: it is rejected (IC0522), and the caller's
    // reject callback has no instructions left either: the query is rejected for the
    // instruction limit, not answered and not stuck.
    let r = s.query(user(), a, "cq_spin", b.as_slice()).reject();
    assert_eq!(r.code, RejectCode::CanisterError);
    assert_eq!(r.error_code, "IC0522", "{r:?}");
}

#[test]
fn a_composite_query_that_does_not_reply_is_rejected() {
    let (s, a, _) = two_canisters();
    let r = s.query(user(), a, "cq_silent", &[]).reject();
    assert_eq!(r.code, RejectCode::CanisterError);
    assert_eq!(r.error_code, "IC0506");
}

#[test]
fn composite_query_methods_cannot_be_called_as_updates() {
    let (mut s, a, b) = two_canisters();
    let r = s.update(user(), a, "cq_read", b.as_slice()).reject();
    assert_eq!(r.error_code, "IC0536", "{r:?}");
    assert!(
        r.message.contains("has no update method 'cq_read'"),
        "{r:?}"
    );
    // And the update path did not run it: the counter is unchanged.
    assert_eq!(u32s(&s.query(user(), a, "read", &[]).reply()), [1]);
}
