//! Acceptance 3 (issue 7): state sync between two in-memory stores.
//!
//! - A wiped store syncs the latest checkpoint from a peer and ends with the same root hash and
//!   the same files, and keeps them across a reopen.
//! - A store many checkpoints behind catches up fetching exactly the chunks that changed (the
//!   count is computed from the mutation pattern, and checked against the manifests).
//! - A peer sending a wrong chunk is refused; a crash in the middle of a sync leaves the old
//!   checkpoint and no leaked space.

use node::store::{
    Hash, Manifest, SimDisk, SimFaults, SimRng, StateFile, Store, StoreConfig, StoreError, Verify,
};
use std::collections::BTreeSet;

const CHUNK_BYTES: usize = 16 * 1024;
const HEAP_CHUNKS: usize = 40;
const DISK_BYTES: u64 = 16 << 20;
/// Chunks of the heap each round rewrites.
const CHUNKS_CHANGED_PER_ROUND: usize = 2;
const ROUNDS: u64 = 12;

fn config() -> StoreConfig {
    StoreConfig {
        chunk_bytes: CHUNK_BYTES as u32,
        pool_segment_bytes: 64 * 1024,
        ..StoreConfig::default()
    }
}

fn new_store(seed: u64) -> Store<SimDisk> {
    let dev = SimDisk::new(4096, DISK_BYTES / 4096, seed, SimFaults::default());
    Store::format(dev, config()).unwrap()
}

type State = Vec<(String, Vec<u8>)>;

fn files(state: &State) -> Vec<StateFile<'_>> {
    state
        .iter()
        .map(|(n, b)| StateFile { name: n, bytes: b })
        .collect()
}

/// The state after `round` rounds: each round rewrites two distinct heap chunks (never the same
/// chunk twice) and the small metadata file.
fn state_at(round: u64) -> State {
    let mut rng = SimRng::new(5);
    let mut heap = vec![0u8; HEAP_CHUNKS * CHUNK_BYTES];
    rng.fill(&mut heap);
    for r in 1..=round as usize {
        for k in 0..CHUNKS_CHANGED_PER_ROUND {
            let chunk = (r * CHUNKS_CHANGED_PER_ROUND + k) % HEAP_CHUNKS;
            let at = chunk * CHUNK_BYTES;
            rng.fill(&mut heap[at..at + CHUNK_BYTES]);
        }
    }
    vec![
        ("canister/heap".into(), heap),
        (
            "system/metadata".into(),
            format!("round {round}").into_bytes(),
        ),
    ]
}

/// Runs a full sync of `peer`'s checkpoint into `store`; returns (fetched, reused) counts.
fn sync_from(store: &mut Store<SimDisk>, peer: &mut Store<SimDisk>) -> (u32, u32) {
    let height = peer.checkpoint_height().unwrap();
    let root = peer.root_hash().unwrap();
    // The manifest travels as bytes and is trusted only after it hashes to the certified root.
    let wire = peer.manifest().unwrap().to_bytes();
    let manifest = Manifest::from_bytes(&wire).unwrap();
    let mut sync = store.begin_state_sync(height, &root, manifest).unwrap();
    let mut asked = BTreeSet::new();
    while !sync.is_complete() {
        for index in sync.missing_chunks() {
            assert!(asked.insert(index), "chunk {index} requested twice");
            let bytes = peer.read_chunk(index).unwrap();
            store.accept_chunk(&mut sync, index, &bytes).unwrap();
        }
    }
    let stats = sync.stats();
    assert_eq!(store.commit_state_sync(sync).unwrap(), root);
    (stats.chunks_fetched, stats.chunks_local)
}

fn assert_same_state(store: &mut Store<SimDisk>, state: &State, root: &Hash) {
    assert_eq!(store.root_hash(), Some(*root));
    for (name, bytes) in state {
        assert_eq!(&store.read_file(name).unwrap(), bytes);
    }
}

fn distinct_hashes(m: &Manifest) -> BTreeSet<Hash> {
    m.chunks.iter().map(|c| c.hash).collect()
}

#[test]
fn wiped_store_syncs_from_peer_to_the_same_root() {
    let mut peer = new_store(1);
    for round in 1..=3 {
        peer.checkpoint(round * 10, &files(&state_at(round)))
            .unwrap();
    }
    let state = state_at(3);
    let root = peer.root_hash().unwrap();
    let mut wiped = new_store(2);
    let (fetched, reused) = sync_from(&mut wiped, &mut peer);
    let distinct = distinct_hashes(peer.manifest().unwrap()).len() as u32;
    assert_eq!((fetched, reused), (distinct, 0));
    assert_same_state(&mut wiped, &state, &root);
    // The synced checkpoint is durable, and the synced node computes the next state's root
    // exactly as the peer does.
    let (mut wiped, rec) = Store::open(wiped.into_device(), Verify::Eager).unwrap();
    assert_eq!(rec.checkpoint, Some((30, root)));
    assert!(rec.bad_chunks.is_empty());
    let next = state_at(4);
    let a = peer.checkpoint(40, &files(&next)).unwrap();
    let b = wiped.checkpoint(40, &files(&next)).unwrap();
    assert_eq!(a.root_hash, b.root_hash);
    assert_eq!(b.chunks_written, CHUNKS_CHANGED_PER_ROUND as u32 + 1);
}

#[test]
fn store_many_checkpoints_behind_fetches_only_changed_chunks() {
    let mut peer = new_store(3);
    let mut behind = new_store(4);
    let first = state_at(1);
    peer.checkpoint(10, &files(&first)).unwrap();
    behind.checkpoint(10, &files(&first)).unwrap();
    let old = distinct_hashes(behind.manifest().unwrap());
    for round in 2..=ROUNDS {
        peer.checkpoint(round * 10, &files(&state_at(round)))
            .unwrap();
    }
    let new = peer.manifest().unwrap().clone();
    let changed = distinct_hashes(&new).difference(&old).count() as u32;
    // Rounds 2..=12 rewrite 2 heap chunks each (22 distinct chunks), plus the metadata chunk.
    let expected = ((ROUNDS - 1) as usize * CHUNKS_CHANGED_PER_ROUND + 1) as u32;
    assert_eq!(changed, expected);
    let (fetched, reused) = sync_from(&mut behind, &mut peer);
    assert_eq!(fetched, expected, "only the changed chunks are fetched");
    assert_eq!(reused as usize, new.chunks.len() - expected as usize);
    assert_same_state(&mut behind, &state_at(ROUNDS), &peer.root_hash().unwrap());
    // The old checkpoint's replaced chunks were reclaimed: both stores use the same space.
    assert_eq!(behind.free_blocks(), peer.free_blocks());
}

#[test]
fn lying_peer_is_refused_and_crash_mid_sync_keeps_the_old_checkpoint() {
    let mut peer = new_store(5);
    peer.checkpoint(10, &files(&state_at(1))).unwrap();
    peer.checkpoint(20, &files(&state_at(2))).unwrap();
    let root = peer.root_hash().unwrap();
    let mut store = new_store(6);
    store.checkpoint(10, &files(&state_at(1))).unwrap();
    let old_root = store.root_hash().unwrap();
    let free_before = store.free_blocks();
    // A manifest that does not hash to the certified root is refused.
    let mut forged = peer.manifest().unwrap().clone();
    forged.files[1].size += 1;
    assert!(matches!(
        store.begin_state_sync(20, &root, forged),
        Err(StoreError::Manifest(_))
    ));
    let manifest = peer.manifest().unwrap().clone();
    let mut sync = store.begin_state_sync(20, &root, manifest).unwrap();
    let missing = sync.missing_chunks();
    assert_eq!(missing.len(), CHUNKS_CHANGED_PER_ROUND + 1);
    let mut bad = peer.read_chunk(missing[0]).unwrap();
    bad[100] ^= 1;
    assert_eq!(
        store.accept_chunk(&mut sync, missing[0], &bad),
        Err(StoreError::ChunkMismatch(missing[0]))
    );
    let good = peer.read_chunk(missing[0]).unwrap();
    assert_eq!(store.accept_chunk(&mut sync, missing[0], &good), Ok(true));
    assert_eq!(store.accept_chunk(&mut sync, missing[0], &good), Ok(false));
    assert_eq!(sync.stats().chunks_rejected, 1);
    assert_eq!(
        store.commit_state_sync(sync.clone()),
        Err(StoreError::SyncState)
    );
    // Power is cut before the sync commits: the old checkpoint survives, nothing leaks.
    let mut dev = store.into_device();
    dev.cut_power();
    dev.restart();
    let (mut store, rec) = Store::open(dev, Verify::Eager).unwrap();
    assert_eq!(rec.checkpoint, Some((10, old_root)));
    assert!(rec.bad_chunks.is_empty());
    assert_eq!(store.free_blocks(), free_before);
    // And a fresh sync then completes.
    sync_from(&mut store, &mut peer);
    assert_same_state(&mut store, &state_at(2), &root);
}
