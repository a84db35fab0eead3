//! Unit tests of the store over a fault-free simulator disk.

use super::*;
use alloc::string::String;
use alloc::vec;

const CHUNK: u32 = 16 * 1024;

fn config() -> StoreConfig {
    StoreConfig {
        chunk_bytes: CHUNK,
        pool_segment_bytes: 64 * 1024,
        ..StoreConfig::default()
    }
}

fn disk(sector_bytes: usize, mib: u64) -> SimDisk {
    SimDisk::new(
        sector_bytes,
        (mib << 20) / sector_bytes as u64,
        1,
        SimFaults::default(),
    )
}

fn state(seed: u8, sizes: &[usize]) -> Vec<(String, Vec<u8>)> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut bytes = vec![0u8; n];
            SimRng::new(u64::from(seed) << 32 | i as u64).fill(&mut bytes);
            (alloc::format!("file{i}"), bytes)
        })
        .collect()
}

fn as_files(s: &[(String, Vec<u8>)]) -> Vec<StateFile<'_>> {
    s.iter()
        .map(|(n, b)| StateFile { name: n, bytes: b })
        .collect()
}

#[test]
fn format_checkpoint_reopen_round_trip() {
    for sector in SECTOR_BYTES_ALLOWED {
        let mut store = Store::format(disk(sector, 8), config()).unwrap();
        let s = state(3, &[100_000, 0, 4096, 1]);
        let stats = store.checkpoint(10, &as_files(&s)).unwrap();
        assert_eq!(stats.chunks_total, 7 + 1 + 1);
        store.put_cup(b"cup at 10").unwrap();
        store.pool_append(11, 1, b"block 11").unwrap();
        store.pool_append(12, 2, &[9; 5000]).unwrap();
        store.pool_sync().unwrap();
        let (mut store, rec) = Store::open(store.into_device(), Verify::Eager).unwrap();
        assert_eq!(rec.checkpoint, Some((10, stats.root_hash)));
        assert!(rec.bad_chunks.is_empty());
        assert_eq!(rec.superblock_copies, SUPERBLOCK_COPIES);
        assert_eq!(rec.pool_records.len(), 2);
        assert_eq!(rec.pool_records[1].bytes, vec![9; 5000]);
        assert_eq!(store.cup().unwrap().unwrap(), b"cup at 10");
        for (name, bytes) in &s {
            assert_eq!(&store.read_file(name).unwrap(), bytes);
        }
    }
}

#[test]
fn unchanged_chunks_are_not_rewritten_and_old_extents_are_reclaimed() {
    let mut store = Store::format(disk(512, 8), config()).unwrap();
    let mut s = state(5, &[10 * CHUNK as usize, 3 * CHUNK as usize]);
    let first = store.checkpoint(1, &as_files(&s)).unwrap();
    assert_eq!(first.chunks_written, 13);
    let free_after_first = store.free_blocks();
    s[0].1[CHUNK as usize * 4 + 7] ^= 0xff;
    let second = store.checkpoint(2, &as_files(&s)).unwrap();
    assert_eq!(second.chunks_written, 1);
    assert_ne!(second.root_hash, first.root_hash);
    // The replaced chunk's old extent was freed: free space is unchanged.
    assert_eq!(store.free_blocks(), free_after_first);
    // Many checkpoints do not leak space.
    for h in 3..30 {
        s[1].1[h as usize] = h as u8;
        store.checkpoint(h, &as_files(&s)).unwrap();
        assert_eq!(store.free_blocks(), free_after_first);
    }
}

#[test]
fn pool_rolls_over_segments_and_purges() {
    let mut store = Store::format(disk(4096, 8), config()).unwrap();
    let mut expected = Vec::new();
    for h in 0..200u64 {
        let bytes = vec![h as u8; 700];
        store.pool_append(h, 7, &bytes).unwrap();
        expected.push(PoolRecord {
            height: h,
            kind: 7,
            bytes,
        });
        if h % 3 == 0 {
            store.pool_sync().unwrap();
        }
    }
    store.pool_sync().unwrap();
    assert!(
        store.meta.segments.len() > 2,
        "records span several segments"
    );
    let (mut store, rec) = Store::open(store.into_device(), Verify::Lazy).unwrap();
    assert_eq!(rec.pool_records, expected);
    let segments = store.meta.segments.len();
    store.pool_purge_below(150).unwrap();
    assert!(store.meta.segments.len() < segments);
    let (_, rec) = Store::open(store.into_device(), Verify::Lazy).unwrap();
    assert_eq!(rec.pool_records, expected[150..]);
}

#[test]
fn open_of_blank_disk_is_not_formatted_and_oversized_records_are_refused() {
    assert_eq!(
        Store::open(disk(512, 1), Verify::Lazy)
            .err()
            .map(|e| e.error),
        Some(StoreError::NotFormatted)
    );
    // `open_or_format` formats a blank disk, and then finds the store it made.
    let (store, rec) = Store::open_or_format(disk(512, 8), config(), Verify::Lazy).unwrap();
    assert_eq!(rec.checkpoint, None);
    let (_, rec) = Store::open_or_format(store.into_device(), config(), Verify::Lazy).unwrap();
    assert_eq!(rec.superblock_sequence, 1);
    let mut store = Store::format(disk(512, 8), config()).unwrap();
    assert_eq!(
        store.pool_append(1, 1, &vec![0; 64 * 1024]),
        Err(StoreError::RecordTooLarge)
    );
}

#[test]
fn reformat_does_not_resurrect_pool_records_of_the_previous_format() {
    let mut old = Store::format(disk(512, 8), config()).unwrap();
    old.pool_append(1, 1, b"old format").unwrap();
    old.pool_sync().unwrap();
    let old = old.into_device();
    let config = StoreConfig {
        format_nonce: 2,
        ..config()
    };
    // Cut the power at every point of "open the first segment, write its first batch": the
    // segment the new format names sits where the old one was, with the old batch still there.
    for extra in 0..12 {
        let mut dev = old.clone();
        let mut store = Store::format(&mut dev, config).unwrap();
        let cut_at = store.device().ops_issued() + extra;
        store.device_mut().cut_power_at_op(cut_at);
        let _ = store
            .pool_append(5, 1, b"new")
            .and_then(|()| store.pool_sync());
        drop(store);
        dev.restart();
        let (_, rec) = Store::open(&mut dev, Verify::Lazy).unwrap();
        assert!(
            rec.pool_records.iter().all(|r| r.bytes == b"new"),
            "cut at +{extra}"
        );
    }
}

#[test]
fn long_run_on_a_small_disk_neither_leaks_nor_fragments() {
    // State of 3 MiB on an 8 MiB disk; every round rewrites a few chunks and the metadata,
    // appends pool records, stores a CUP and purges: 300 rounds never run out of space.
    let mut store = Store::format(disk(4096, 8), config()).unwrap();
    let mut s = state(9, &[3 << 20, 1000]);
    let mut rng = SimRng::new(77);
    let mut free_after_purge = Vec::new();
    for round in 1..=300u64 {
        for _ in 0..5 {
            let at = rng.below(s[0].1.len() as u64) as usize;
            s[0].1[at] ^= 1;
        }
        s[1].1 = alloc::format!("round {round}").into_bytes();
        for i in 0..4 {
            store
                .pool_append(round, i, &vec![round as u8; 2000])
                .unwrap();
        }
        store.pool_sync().unwrap();
        store.checkpoint(round, &as_files(&s)).unwrap();
        store.put_cup(&round.to_le_bytes()).unwrap();
        store.pool_purge_below(round).unwrap();
        free_after_purge.push(store.free_blocks());
    }
    let (min, max) = (free_after_purge.iter().min(), free_after_purge.iter().max());
    assert!(
        max.unwrap() - min.unwrap() < 64,
        "free space stays level: {min:?}..{max:?}"
    );
    let (mut store, rec) = Store::open(store.into_device(), Verify::Eager).unwrap();
    assert!(rec.bad_chunks.is_empty());
    assert_eq!(store.read_file("file0").unwrap(), s[0].1);
}

#[test]
fn hints_skip_hashing_of_unchanged_chunks_and_audit_them() {
    let mut store = Store::format(disk(4096, 8), config()).unwrap();
    let mut twin = Store::format(disk(4096, 8), config()).unwrap();
    let mut s = state(4, &[40 * CHUNK as usize, 100]);
    store.checkpoint(1, &as_files(&s)).unwrap();
    twin.checkpoint(1, &as_files(&s)).unwrap();
    // Change chunk 7 of file0 and the small file; vouch for the rest.
    s[0].1[7 * CHUNK as usize + 3] ^= 1;
    s[1].1[0] ^= 1;
    let dirty = |f: &str, k: u64| (f == "file0" && k == 7) || f == "file1";
    let hinted = store
        .checkpoint_with_hints(2, &as_files(&s), &|f, k| !dirty(f, k))
        .unwrap();
    let full = twin.checkpoint(2, &as_files(&s)).unwrap();
    assert_eq!(hinted.root_hash, full.root_hash);
    assert_eq!(full.chunks_hashed, 41);
    // 2 dirty chunks plus the audited tenth of the 39 vouched ones.
    assert!(hinted.chunks_hashed <= 2 + 4, "{}", hinted.chunks_hashed);
    assert_eq!(hinted.chunks_written, 2);
    // A wrong hint on an audited chunk is caught: chunk i is audited when (i + height) % 10 == 0.
    let height = 3;
    let audited = (10 - height % 10) as usize;
    s[0].1[audited * CHUNK as usize] ^= 1;
    assert_eq!(
        store.checkpoint_with_hints(height, &as_files(&s), &|_, _| true),
        Err(StoreError::HintMismatch(audited as u32))
    );
    assert_eq!(store.checkpoint_height(), Some(2), "nothing stored");
}

/// Files of a test state: name and bytes.
type TestState = Vec<(String, Vec<u8>)>;

/// Checkpoint 10 with the CUP at 10, then checkpoints 20 and 30 (chunk 4 of file0 changed at
/// 20, changed back at 30): returns the store and the three states.
fn retained_scenario() -> (Store<SimDisk>, [TestState; 3]) {
    let mut store = Store::format(disk(4096, 8), config()).unwrap();
    let s10 = state(6, &[10 * CHUNK as usize, 3 * CHUNK as usize]);
    let mut s20 = s10.clone();
    s20[0].1[CHUNK as usize * 4 + 7] ^= 0xff;
    s20[1].1[0] ^= 1;
    let mut s30 = s20.clone();
    s30[0].1[CHUNK as usize * 4 + 7] ^= 0xff;
    store.checkpoint(10, &as_files(&s10)).unwrap();
    store.put_cup_at(10, b"cup at 10").unwrap();
    assert_eq!(store.retained_height(), None, "the latest is the CUP's");
    (store, [s10, s20, s30])
}

fn assert_state_at<D: BlockDevice>(store: &mut Store<D>, height: u64, s: &[(String, Vec<u8>)]) {
    assert_eq!(store.file_names_at(height).len(), s.len());
    for (name, bytes) in s {
        assert_eq!(&store.read_file_at(height, name).unwrap(), bytes, "{name}");
    }
}

#[test]
fn checkpoint_at_the_cup_height_is_retained_until_a_newer_cup() {
    let (mut store, [s10, s20, s30]) = retained_scenario();
    let root10 = store.root_hash().unwrap();
    let free_10 = store.free_blocks();
    // 20 replaces 10 as the latest; 10 moves to the retained slot, its chunks stay.
    let st20 = store.checkpoint(20, &as_files(&s20)).unwrap();
    assert_eq!(
        st20.chunks_written, 2,
        "unchanged chunks are shared, not copied"
    );
    assert_eq!(store.retained_height(), Some(10));
    assert_eq!(store.retained_root_hash(), Some(root10));
    assert_eq!(store.checkpoint_height(), Some(20));
    let manifest_blocks = store.meta.checkpoint.unwrap().manifest.blocks as u64;
    // Two new chunks of one block group each, plus the new manifest's two copies.
    let chunk_blocks = blocks_for(u64::from(CHUNK));
    assert_eq!(
        free_10 - store.free_blocks(),
        2 * chunk_blocks + 2 * manifest_blocks
    );
    assert_state_at(&mut store, 10, &s10);
    assert_state_at(&mut store, 20, &s20);
    // 30: chunk 4 of file0 is back to 10's bytes, found in the retained checkpoint.
    let st30 = store.checkpoint(30, &as_files(&s30)).unwrap();
    assert_eq!(
        st30.chunks_written, 0,
        "dedup across the retained checkpoint"
    );
    assert_eq!(
        store.retained_height(),
        Some(10),
        "20 is not the CUP's: freed"
    );
    assert_eq!(
        store.free_blocks(),
        free_10 - chunk_blocks - 2 * manifest_blocks
    );
    // Reopen: both checkpoints, both verified, same free space.
    let free = store.free_blocks();
    let (mut store, rec) = Store::open(store.into_device(), Verify::Eager).unwrap();
    assert_eq!(rec.checkpoint, Some((30, st30.root_hash)));
    assert_eq!(rec.retained, Some((10, root10)));
    assert!(!rec.retained_dropped && rec.bad_chunks.is_empty());
    assert_eq!(store.free_blocks(), free);
    assert_eq!(store.cup_height(), Some(10));
    assert_state_at(&mut store, 10, &s10);
    assert_state_at(&mut store, 30, &s30);
    assert_eq!(store.manifest_at(10).map(Manifest::root_hash), Some(root10));
    assert!(store.manifest_at(20).is_none());
    assert_eq!(store.read_chunk_of(20, 0), Err(StoreError::NoCheckpoint));
    // A newer CUP drops the retained checkpoint: the space is what 30 alone takes.
    store.put_cup_at(30, b"cup at 30").unwrap();
    assert_eq!(store.retained_height(), None);
    assert_eq!(
        store.free_blocks(),
        free + chunk_blocks + 2 * manifest_blocks
    );
    let mut twin = Store::format(disk(4096, 8), config()).unwrap();
    twin.checkpoint(30, &as_files(&s30)).unwrap();
    twin.put_cup_at(30, b"cup at 30").unwrap();
    assert_eq!(store.free_blocks(), twin.free_blocks());
    let (mut store, rec) = Store::open(store.into_device(), Verify::Eager).unwrap();
    assert_eq!(rec.retained, None);
    assert_state_at(&mut store, 30, &s30);
    // A CUP of unknown height retains nothing.
    store.put_cup(b"opaque").unwrap();
    store.checkpoint(40, &as_files(&s20)).unwrap();
    assert_eq!(store.retained_height(), None);
}

#[test]
fn a_peer_syncs_the_retained_checkpoint() {
    let (mut store, [s10, s20, _]) = retained_scenario();
    store.checkpoint(20, &as_files(&s20)).unwrap();
    let root10 = store.retained_root_hash().unwrap();
    let manifest = store.manifest_at(10).unwrap().clone();
    let mut peer = Store::format(disk(4096, 8), config()).unwrap();
    let mut sync = peer.begin_state_sync(10, &root10, manifest).unwrap();
    for i in sync.missing_chunks() {
        let bytes = store.read_chunk_of(10, i).unwrap();
        peer.accept_chunk(&mut sync, i, &bytes).unwrap();
    }
    assert_eq!(peer.commit_state_sync(sync).unwrap(), root10);
    assert_state_at(&mut peer, 10, &s10);
}

#[test]
fn a_bad_retained_checkpoint_is_dropped_on_open() {
    // A chunk only the retained checkpoint holds fails: eager open drops it, and commits that.
    let (mut store, [_, s20, _]) = retained_scenario();
    store.checkpoint(20, &as_files(&s20)).unwrap();
    let latest = store.chunk_extents();
    let only_retained = store
        .retained_chunk_extents()
        .into_iter()
        .find(|e| !latest.contains(e))
        .unwrap();
    let mut dev = store.into_device();
    dev.flip_bit(only_retained.start * BLOCK_BYTES as u64 + 5, 2);
    let (lazy, rec) = Store::open(dev, Verify::Lazy).unwrap();
    assert_eq!(
        rec.retained.map(|r| r.0),
        Some(10),
        "lazy open does not read chunks"
    );
    let (mut store, rec) = Store::open(lazy.into_device(), Verify::Eager).unwrap();
    assert!(rec.retained_dropped && rec.retained.is_none() && rec.bad_chunks.is_empty());
    assert_state_at(&mut store, 20, &s20);
    let (_, rec) = Store::open(store.into_device(), Verify::Eager).unwrap();
    assert!(
        !rec.retained_dropped && rec.retained.is_none(),
        "the drop is durable"
    );

    // Both copies of the retained manifest fail: dropped, even on a lazy open.
    let (mut store, [_, s20, _]) = retained_scenario();
    store.checkpoint(20, &as_files(&s20)).unwrap();
    let blob = store.meta.retained.unwrap().manifest;
    let mut dev = store.into_device();
    for start in blob.copies {
        dev.flip_bit(start * BLOCK_BYTES as u64 + 1, 0);
    }
    let (mut store, rec) = Store::open(dev, Verify::Lazy).unwrap();
    assert!(rec.retained_dropped && rec.retained.is_none());
    assert_eq!(rec.checkpoint.map(|c| c.0), Some(20));
    assert_state_at(&mut store, 20, &s20);
}

#[test]
fn power_cut_in_retaining_and_dropping_commits_leaves_old_or_new() {
    let (store, [s10, s20, _]) = retained_scenario();
    let base = store.into_device();
    // Cut at every write point of "checkpoint 20 (retain 10)", then of "CUP at 20 (drop 10)".
    for phase in 0..2 {
        let mut extra = 0;
        loop {
            let mut dev = base.clone();
            dev.reseed(extra * 7 + phase);
            let (mut store, _) = Store::open(&mut dev, Verify::Lazy).unwrap();
            if phase == 1 {
                store.checkpoint(20, &as_files(&s20)).unwrap();
            }
            let cut_at = store.device().ops_issued() + extra;
            store.device_mut().cut_power_at_op(cut_at);
            let done = if phase == 0 {
                store.checkpoint(20, &as_files(&s20)).map(|_| ())
            } else {
                store.put_cup_at(20, b"cup at 20")
            };
            let finished = done.is_ok();
            drop(store);
            dev.cancel_power_cut();
            dev.restart();
            let (mut store, rec) = Store::open(&mut dev, Verify::Eager).unwrap();
            assert!(
                rec.bad_chunks.is_empty() && !rec.retained_dropped,
                "{phase}/{extra}"
            );
            let new = match phase {
                0 => rec.checkpoint.map(|c| c.0) == Some(20),
                _ => store.cup().unwrap().as_deref() == Some(&b"cup at 20"[..]),
            };
            // Old: the checkpoint 10 alone (or 20 retaining 10, before the CUP moved); new:
            // 20 retaining 10 (or 20 alone once the CUP moved).
            let retains = (phase == 0) == new;
            assert_eq!(
                rec.retained.map(|r| r.0),
                retains.then_some(10),
                "{phase}/{extra}"
            );
            assert_eq!(
                store.cup_height(),
                Some(if phase == 1 && new { 20 } else { 10 })
            );
            if retains || phase == 0 && !new {
                assert_state_at(&mut store, 10, &s10);
            }
            if new || phase == 1 {
                assert_state_at(&mut store, 20, &s20);
            }
            // Nothing leaks: free space equals a fresh derivation after a clean commit.
            let free = store.free_blocks();
            store.pool_append(1, 1, b"x").unwrap();
            store.pool_sync().unwrap();
            store.pool_purge_below(2).unwrap();
            assert!(store.free_blocks() <= free + 64);
            if finished {
                assert!(new, "{phase}/{extra}: a finished commit is durable");
                break;
            }
            extra += 1;
        }
        assert!(extra > 5, "phase {phase} had write points: {extra}");
    }
}

#[test]
fn meta_version_1_is_read_and_unknown_versions_are_refused() {
    let v1 = format::MetaV1 {
        version: 1,
        purged_below: 7,
        format_nonce: 3,
        ..format::MetaV1::default()
    };
    let bytes = postcard::to_allocvec(&v1).unwrap();
    let meta = format::decode_meta(&bytes).unwrap();
    assert_eq!(meta.version, META_VERSION);
    assert_eq!((meta.purged_below, meta.format_nonce), (7, 3));
    assert_eq!((meta.cup_height, meta.retained), (None, None));
    let v3 = Meta {
        version: 3,
        ..Meta::default()
    };
    let bytes = postcard::to_allocvec(&v3).unwrap();
    assert_eq!(
        format::decode_meta(&bytes),
        Err(format::MetaDecodeError::Unsupported(3))
    );
    assert_eq!(
        format::decode_meta(&[2, 1]),
        Err(format::MetaDecodeError::Malformed)
    );
}

/// A store in a partition (`Window`) works as on a whole disk, and no write of its format,
/// checkpoints, pool or reopen reaches a sector outside the partition.
#[test]
fn a_store_in_a_window_never_touches_the_sectors_around_it() {
    const SENTINEL: u8 = 0xa5;
    let mut whole = disk(512, 12);
    let sectors = whole.sector_count();
    let (first, len) = (2048u64, (8u64 << 20) / 512);
    let mut fill = vec![SENTINEL; 512 * 64];
    let mut lba = 0;
    while lba < sectors {
        let n = (sectors - lba).min(64);
        fill.truncate(512 * n as usize);
        whole.write(lba, &fill).unwrap();
        lba += n;
    }
    whole.flush().unwrap();

    let window = Window::new(whole, first, len).unwrap();
    assert_eq!(window.sector_count(), len);
    let mut store = Store::format(window, config()).unwrap();
    let s = state(5, &[200_000, 3000]);
    store.checkpoint(10, &as_files(&s)).unwrap();
    store.pool_append(11, 1, &[7; 9000]).unwrap();
    store.pool_sync().unwrap();
    let (mut store, rec) = Store::open(store.into_device(), Verify::Eager).unwrap();
    assert_eq!(rec.checkpoint.map(|c| c.0), Some(10));
    assert_eq!(store.read_file("file0").unwrap(), s[0].1);

    let mut window = store.into_device();
    let mut sector = [0u8; 512];
    assert_eq!(window.read(len, &mut sector), Err(DeviceError::OutOfRange));
    assert_eq!(
        window.write(len - 1, &[0; 1024]),
        Err(DeviceError::OutOfRange)
    );
    assert_eq!(
        window.read(u64::MAX, &mut sector),
        Err(DeviceError::OutOfRange)
    );
    let whole = window.into_inner();
    let image = whole.durable_image();
    let inside = (first as usize * 512)..((first + len) as usize * 512);
    assert!(image[..inside.start].iter().all(|&b| b == SENTINEL));
    assert!(image[inside.end..].iter().all(|&b| b == SENTINEL));
    assert!(image[inside].iter().any(|&b| b != SENTINEL));
}

#[test]
fn windows_off_the_device_are_refused() {
    let sectors = disk(512, 1).sector_count();
    assert!(Window::new(disk(512, 1), 0, sectors).is_some());
    assert!(Window::new(disk(512, 1), 1, sectors).is_none());
    assert!(Window::new(disk(512, 1), 0, 0).is_none());
    assert!(Window::new(disk(512, 1), u64::MAX, 2).is_none());
}
