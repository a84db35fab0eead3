//! Unit tests of the store over a fault-free simulator disk.

use super::*;
use alloc::string::String;
use alloc::vec;

const CHUNK: u32 = 16 * 1024;

fn config() -> StoreConfig {
    StoreConfig {
        chunk_bytes: CHUNK,
        pool_segment_bytes: 64 * 1024,
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
        Store::open(disk(512, 1), Verify::Lazy).err(),
        Some(StoreError::NotFormatted)
    );
    let mut store = Store::format(disk(512, 8), config()).unwrap();
    assert_eq!(
        store.pool_append(1, 1, &vec![0; 64 * 1024]),
        Err(StoreError::RecordTooLarge)
    );
}
