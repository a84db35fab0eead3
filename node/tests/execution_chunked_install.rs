//! Installing a module from chunks (`upload_chunk`, `stored_chunks`, `clear_chunk_store`,
//! `install_chunked_code`), the way `dfx` and ic-agent install a module larger than one
//! ingress message: chunks are stored under their SHA-256 in a canister's chunk store, and
//! the module is their concatenation in the order listed, checked against its hash.

mod execution_support;

use execution_support::{install_arg, test_canister, u32_le, user, Subnet, EMPTY_ARGS};
use node::candid::{blob, encode_args, field_id, opt, record, variant, vec, Type, Value};
use node::execution::management::{WASM_CHUNK_BYTES_MAX, WASM_CHUNK_STORE_CHUNKS_MAX};
use node::state::RejectCode;
use node::types::Principal;
use sha2::{Digest, Sha256};

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn upload_arg(canister: Principal, chunk: &[u8]) -> Vec<u8> {
    let ty = record(&[("canister_id", Type::Principal), ("chunk", blob())]);
    let mut fields = vec![
        (field_id("canister_id"), Value::Principal(canister)),
        (field_id("chunk"), Value::Blob(chunk.to_vec())),
    ];
    fields.sort_by_key(|(i, _)| *i);
    encode_args(&[(ty, Value::Record(fields))]).expect("encode")
}

fn canister_arg(canister: Principal) -> Vec<u8> {
    let ty = record(&[("canister_id", Type::Principal)]);
    let v = Value::Record(vec![(field_id("canister_id"), Value::Principal(canister))]);
    encode_args(&[(ty, v)]).expect("encode")
}

/// The `install_chunked_code` argument, in the interface spec's types.
fn chunked_arg(
    target: Principal,
    store: Option<Principal>,
    hashes: &[[u8; 32]],
    module_hash: [u8; 32],
    init_arg: &[u8],
) -> Vec<u8> {
    let hash_rec = record(&[("hash", blob())]);
    let ty = record(&[
        (
            "mode",
            variant(&[("install", Type::Null), ("reinstall", Type::Null)]),
        ),
        ("target_canister", Type::Principal),
        ("store_canister", opt(Type::Principal)),
        ("chunk_hashes_list", vec(hash_rec)),
        ("wasm_module_hash", blob()),
        ("arg", blob()),
    ]);
    let list = hashes
        .iter()
        .map(|h| Value::Record(vec![(field_id("hash"), Value::Blob(h.to_vec()))]))
        .collect();
    let mut fields = vec![
        (
            field_id("mode"),
            Value::Variant(field_id("install"), Box::new(Value::Null)),
        ),
        (field_id("target_canister"), Value::Principal(target)),
        (
            field_id("store_canister"),
            Value::Opt(store.map(|p| Box::new(Value::Principal(p)))),
        ),
        (field_id("chunk_hashes_list"), Value::Vec(list)),
        (
            field_id("wasm_module_hash"),
            Value::Blob(module_hash.to_vec()),
        ),
        (field_id("arg"), Value::Blob(init_arg.to_vec())),
    ];
    fields.sort_by_key(|(i, _)| *i);
    encode_args(&[(ty, Value::Record(fields))]).expect("encode")
}

/// A chunk hash record as DFINITY's management canister types have it.
#[derive(candid::CandidType, serde::Deserialize)]
struct ChunkHash {
    hash: Vec<u8>,
}

/// The hash in an `upload_chunk` reply, read with DFINITY's own Candid decoder.
fn reply_hash(reply: &[u8]) -> Vec<u8> {
    candid::decode_one::<ChunkHash>(reply)
        .expect("upload_chunk reply decodes as record { hash: blob }")
        .hash
}

fn upload(s: &mut Subnet, canister: Principal, chunk: &[u8]) -> [u8; 32] {
    let reply = s
        .update(
            user(),
            Principal::MANAGEMENT,
            "upload_chunk",
            &upload_arg(canister, chunk),
        )
        .reply();
    let hash = reply_hash(&reply);
    assert_eq!(
        hash,
        sha256(chunk),
        "upload_chunk replies the chunk's SHA-256"
    );
    sha256(chunk)
}

fn stored(s: &mut Subnet, canister: Principal) -> usize {
    let reply = s
        .update(
            user(),
            Principal::MANAGEMENT,
            "stored_chunks",
            &canister_arg(canister),
        )
        .reply();
    candid::decode_one::<Vec<ChunkHash>>(&reply)
        .expect("stored_chunks reply decodes as vec record { hash: blob }")
        .len()
}

fn clear(s: &mut Subnet, canister: Principal) {
    s.update(
        user(),
        Principal::MANAGEMENT,
        "clear_chunk_store",
        &canister_arg(canister),
    )
    .reply();
}

#[test]
fn a_module_uploaded_in_chunks_installs_and_runs() {
    let mut s = Subnet::new();
    let target = s.create_canister();
    let wasm = test_canister();
    let parts: Vec<&[u8]> = wasm.chunks(wasm.len() / 3 + 1).collect();
    assert_eq!(parts.len(), 3);
    let hashes: Vec<[u8; 32]> = parts.iter().map(|p| upload(&mut s, target, p)).collect();
    // Uploading a chunk again changes nothing.
    upload(&mut s, target, parts[0]);
    assert_eq!(stored(&mut s, target), 3);
    let c = s.sm.canister(&target).expect("canister");
    assert_eq!(c.wasm_chunk_store_bytes(), wasm.len() as u64);
    let arg = chunked_arg(target, None, &hashes, sha256(&wasm), EMPTY_ARGS);
    s.update(user(), Principal::MANAGEMENT, "install_chunked_code", &arg)
        .reply();
    assert_eq!(
        u32_le(&s.update(user(), target, "inc", EMPTY_ARGS).reply()),
        1
    );
    let c = s.sm.canister(&target).expect("canister");
    assert_eq!(c.module_hash(), Some(sha256(&wasm)));
    // The chunks stay until cleared.
    assert_eq!(stored(&mut s, target), 3);
    clear(&mut s, target);
    assert_eq!(stored(&mut s, target), 0);
}

#[test]
fn chunks_may_come_from_another_canisters_store() {
    let mut s = Subnet::new();
    let store = s.create_canister();
    let target = s.create_canister();
    let wasm = test_canister();
    let hashes: Vec<[u8; 32]> = wasm
        .chunks(1000)
        .map(|p| upload(&mut s, store, p))
        .collect();
    let arg = chunked_arg(target, Some(store), &hashes, sha256(&wasm), EMPTY_ARGS);
    s.update(user(), Principal::MANAGEMENT, "install_chunked_code", &arg)
        .reply();
    assert_eq!(
        u32_le(&s.update(user(), target, "inc", EMPTY_ARGS).reply()),
        1
    );
    assert!(s.sm.canister(&store).expect("store").module.is_none());
}

#[test]
fn a_wrong_hash_a_missing_chunk_or_a_stranger_installs_nothing() {
    let mut s = Subnet::new();
    let target = s.create_canister();
    let wasm = test_canister();
    let (a, b) = wasm.split_at(wasm.len() / 2);
    let ha = upload(&mut s, target, a);
    let hb = upload(&mut s, target, b);
    // Chunks in the wrong order: the module's hash differs.
    let arg = chunked_arg(target, None, &[hb, ha], sha256(&wasm), EMPTY_ARGS);
    let r = s
        .update(user(), Principal::MANAGEMENT, "install_chunked_code", &arg)
        .reject();
    assert_eq!(r.code, RejectCode::CanisterError, "{r:?}");
    assert!(r.message.contains("wasm_module_hash"), "{r:?}");
    // A chunk the store does not hold.
    let arg = chunked_arg(target, None, &[ha, [9; 32]], sha256(&wasm), EMPTY_ARGS);
    let r = s
        .update(user(), Principal::MANAGEMENT, "install_chunked_code", &arg)
        .reject();
    assert!(r.message.contains("is not in the chunk store"), "{r:?}");
    // Someone who controls neither canister.
    let stranger = Principal::from_slice(&[42; 29]).expect("principal");
    let arg = chunked_arg(target, None, &[ha, hb], sha256(&wasm), EMPTY_ARGS);
    let r = s
        .update(
            stranger,
            Principal::MANAGEMENT,
            "install_chunked_code",
            &arg,
        )
        .reject();
    assert!(r.message.contains("controller"), "{r:?}");
    let r = s
        .update(
            stranger,
            Principal::MANAGEMENT,
            "upload_chunk",
            &upload_arg(target, a),
        )
        .reject();
    assert!(r.message.contains("controller"), "{r:?}");
    assert!(s.sm.canister(&target).expect("canister").module.is_none());
    // The right list installs.
    let arg = chunked_arg(target, None, &[ha, hb], sha256(&wasm), EMPTY_ARGS);
    s.update(user(), Principal::MANAGEMENT, "install_chunked_code", &arg)
        .reply();
}

#[test]
fn chunk_size_and_store_size_are_bounded() {
    let mut s = Subnet::new();
    let target = s.create_canister();
    let big = vec![1u8; WASM_CHUNK_BYTES_MAX + 1];
    let r = s
        .update(
            user(),
            Principal::MANAGEMENT,
            "upload_chunk",
            &upload_arg(target, &big),
        )
        .reject();
    assert!(r.message.contains("maximum chunk size"), "{r:?}");
    upload(&mut s, target, &big[..WASM_CHUNK_BYTES_MAX]);
    for i in 1..WASM_CHUNK_STORE_CHUNKS_MAX {
        upload(&mut s, target, &(i as u32).to_le_bytes());
    }
    assert_eq!(stored(&mut s, target), WASM_CHUNK_STORE_CHUNKS_MAX);
    let r = s
        .update(
            user(),
            Principal::MANAGEMENT,
            "upload_chunk",
            &upload_arg(target, b"one more"),
        )
        .reject();
    assert!(r.message.contains("full"), "{r:?}");
    // A chunk already there is still accepted.
    upload(&mut s, target, &1u32.to_le_bytes());
    // Uninstalling empties the store.
    let wasm = test_canister();
    s.install(target, &wasm, EMPTY_ARGS, "install", false)
        .reply();
    s.update(
        user(),
        Principal::MANAGEMENT,
        "uninstall_code",
        &canister_arg(target),
    )
    .reply();
    assert_eq!(stored(&mut s, target), 0);
}

#[test]
fn install_code_and_install_chunked_code_give_the_same_state() {
    let wasm = test_canister();
    let mut plain = Subnet::new();
    let a = plain.create_canister();
    plain
        .update(
            user(),
            Principal::MANAGEMENT,
            "install_code",
            &install_arg(a, &wasm, EMPTY_ARGS, "install", false),
        )
        .reply();
    let mut chunked = Subnet::new();
    let b = chunked.create_canister();
    assert_eq!(a, b);
    let h = upload(&mut chunked, b, &wasm);
    clear(&mut chunked, b);
    let h2 = upload(&mut chunked, b, &wasm);
    assert_eq!(h, h2);
    let arg = chunked_arg(b, None, &[h], sha256(&wasm), EMPTY_ARGS);
    chunked
        .update(user(), Principal::MANAGEMENT, "install_chunked_code", &arg)
        .reply();
    clear(&mut chunked, b);
    // Same module, heap and memory; the chunk store is empty again in both.
    let (x, y) = (
        plain.sm.canister(&a).expect("a"),
        chunked.sm.canister(&b).expect("b"),
    );
    assert_eq!(x.module_hash(), y.module_hash());
    assert_eq!(x.heap, y.heap);
    assert_eq!(x.version, y.version);
    assert!(y.wasm_chunk_store.is_empty());
}
