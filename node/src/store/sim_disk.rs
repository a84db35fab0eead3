//! An in-memory `BlockDevice` that fails the way disks fail, deterministically from a seed.
//!
//! # Fault model
//!
//! The disk keeps two images: `current` (what reads see) and `durable` (what survives a power
//! cut), plus the list of writes issued since the last flush. Every random choice comes from one
//! seeded generator, so a seed and the sequence of calls replay a run exactly.
//!
//! | fault | when | effect |
//! |---|---|---|
//! | lost write | power cut | a write not yet covered by a `flush` is dropped |
//! | reordered writes | power cut | the unflushed writes that do persist land in a random order, so a later write may survive while an earlier one is lost (and overlapping writes resolve either way) |
//! | torn write | power cut, `torn_writes` | an unflushed multi-sector write persists only a random subset of its sectors; with `garbage_on_tear` one of its sectors holds random bytes |
//! | latent sector error | read, `latent_error_ppm` per sector read, or [`SimDisk::inject_latent_error`] | the sector reads as `DeviceError::Io` until it is written again (as a drive remaps it) |
//! | misdirected read | read, `misdirected_read_ppm` per request | the request returns another sector range's data; transient |
//! | misdirected write | write, `misdirected_write_ppm` per request | the data lands at another sector range; the target keeps its old contents |
//! | bit rot | [`SimDisk::flip_bit`] | one bit flips in both images |
//!
//! Sectors are atomic: a sector is either wholly old or wholly new, except the one a torn
//! write fills with garbage. A power cut can be scheduled at the n-th write or flush
//! ([`SimDisk::cut_power_at_op`]): that call fails with `DeviceError::Offline` without taking
//! effect, pending writes are resolved as above, and every call fails until
//! [`SimDisk::restart`]. Cutting at a flush is the case where every write of a flush window was
//! issued and none is yet durable.

use super::device::{check_request, BlockDevice, DeviceError};
use alloc::collections::BTreeSet;
use alloc::vec;
use alloc::vec::Vec;

/// Probabilities are in parts per million.
const PPM: u64 = 1_000_000;
/// Misdirected requests land within this many sectors of their target.
const MISDIRECT_SPAN_SECTORS: u64 = 64;

/// Which faults the disk injects (all off by default except what a power cut implies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimFaults {
    /// On a power cut, unflushed writes may be torn at sector boundaries.
    pub torn_writes: bool,
    /// A torn write fills one of its sectors with random bytes.
    pub garbage_on_tear: bool,
    /// Chance per sector read that the sector develops a latent error.
    pub latent_error_ppm: u32,
    /// Chance per read request that it returns another range's data.
    pub misdirected_read_ppm: u32,
    /// Chance per write request that it lands on another range.
    pub misdirected_write_ppm: u32,
}

impl SimFaults {
    /// The crash faults: torn, reordered and lost writes on a power cut.
    pub fn crash() -> Self {
        SimFaults {
            torn_writes: true,
            garbage_on_tear: true,
            ..SimFaults::default()
        }
    }
}

/// A small deterministic generator (SplitMix64); the simulator's only source of chance.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number in `0..bound` (`0` if `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }
    /// True with probability `ppm` per million.
    pub fn chance_ppm(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.below(PPM) < u64::from(ppm)
    }
    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// One write issued since the last flush.
#[derive(Clone, Debug)]
struct PendingWrite {
    lba: u64,
    data: Vec<u8>,
}

/// The simulator's disk (see the module docs for its fault model).
#[derive(Clone, Debug)]
pub struct SimDisk {
    sector_bytes: usize,
    sector_count: u64,
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<PendingWrite>,
    latent: BTreeSet<u64>,
    rng: SimRng,
    faults: SimFaults,
    offline: bool,
    ops_issued: u64,
    cut_at_op: Option<u64>,
}

impl SimDisk {
    /// A zeroed disk of `sector_count` sectors of `sector_bytes` (512 or 4096).
    pub fn new(sector_bytes: usize, sector_count: u64, seed: u64, faults: SimFaults) -> Self {
        assert!(super::device::SECTOR_BYTES_ALLOWED.contains(&sector_bytes));
        let bytes = usize::try_from(sector_count).expect("sim disk fits in memory") * sector_bytes;
        SimDisk {
            sector_bytes,
            sector_count,
            current: vec![0; bytes],
            durable: vec![0; bytes],
            pending: Vec::new(),
            latent: BTreeSet::new(),
            rng: SimRng::new(seed),
            faults,
            offline: false,
            ops_issued: 0,
            cut_at_op: None,
        }
    }

    /// Number of `write` and `flush` calls so far (the crash test's "write points").
    pub fn ops_issued(&self) -> u64 {
        self.ops_issued
    }

    /// Cuts the power when the `n`-th write or flush (counting from 0 since the disk was made)
    /// is issued; that call does not take effect.
    pub fn cut_power_at_op(&mut self, n: u64) {
        self.cut_at_op = Some(n);
    }

    /// Counts a write or flush; cuts the power if this is the scheduled one.
    fn next_op(&mut self) -> Result<(), DeviceError> {
        let op = self.ops_issued;
        self.ops_issued += 1;
        if self.cut_at_op == Some(op) {
            self.cut_power();
            return Err(DeviceError::Offline);
        }
        Ok(())
    }

    /// Cancels a scheduled power cut.
    pub fn cancel_power_cut(&mut self) {
        self.cut_at_op = None;
    }

    /// Cuts the power now: unflushed writes are resolved per the fault model.
    pub fn cut_power(&mut self) {
        let mut pending = core::mem::take(&mut self.pending);
        // Fisher-Yates: the order in which surviving writes reach the medium.
        for i in (1..pending.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            pending.swap(i, j);
        }
        for write in pending {
            self.resolve_on_power_cut(write);
        }
        self.current.clone_from(&self.durable);
        self.offline = true;
        self.cut_at_op = None;
    }

    fn resolve_on_power_cut(&mut self, write: PendingWrite) {
        let sectors = write.data.len() / self.sector_bytes;
        let outcome = self.rng.below(if self.faults.torn_writes { 3 } else { 2 });
        let base = write.lba as usize * self.sector_bytes;
        match outcome {
            0 => {}
            1 => self.durable[base..base + write.data.len()].copy_from_slice(&write.data),
            _ => {
                let garbage_at = if self.faults.garbage_on_tear {
                    Some(self.rng.below(sectors as u64) as usize)
                } else {
                    None
                };
                for s in 0..sectors {
                    let range = s * self.sector_bytes..(s + 1) * self.sector_bytes;
                    let dst = base + range.start..base + range.end;
                    if garbage_at == Some(s) {
                        self.rng.fill(&mut self.durable[dst]);
                    } else if self.rng.below(2) == 1 {
                        self.durable[dst].copy_from_slice(&write.data[range]);
                    }
                }
            }
        }
    }

    /// Whether the power is cut (every call fails until `restart`).
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    /// Powers the disk back on: reads see exactly what was durable.
    pub fn restart(&mut self) {
        self.current.clone_from(&self.durable);
        self.pending.clear();
        self.offline = false;
    }

    /// Changes the fault knobs (e.g. to stop injecting after a fault scenario).
    pub fn set_faults(&mut self, faults: SimFaults) {
        self.faults = faults;
    }

    /// Restarts the fault generator from `seed` (e.g. to vary the faults of cloned disks).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = SimRng::new(seed);
    }

    /// Makes sector `lba` unreadable until it is written again.
    pub fn inject_latent_error(&mut self, lba: u64) {
        self.latent.insert(lba);
    }

    /// Flips bit `bit` (0..8) of byte `byte` of the disk, in the durable and current images.
    pub fn flip_bit(&mut self, byte: u64, bit: u8) {
        let Ok(i) = usize::try_from(byte) else { return };
        let mask = 1u8 << (bit % 8);
        if let Some(b) = self.current.get_mut(i) {
            *b ^= mask;
        }
        if let Some(b) = self.durable.get_mut(i) {
            *b ^= mask;
        }
    }

    /// The durable image (what a power cut now would leave), for tests that compare disks.
    pub fn durable_image(&self) -> &[u8] {
        &self.durable
    }

    fn misdirect(&mut self, lba: u64, sectors: u64) -> u64 {
        let last_start = self.sector_count.saturating_sub(sectors);
        let offset = 1 + self.rng.below(MISDIRECT_SPAN_SECTORS);
        if self.rng.below(2) == 0 && lba >= offset {
            lba - offset
        } else {
            lba.saturating_add(offset).min(last_start)
        }
    }
}

impl BlockDevice for SimDisk {
    fn sector_bytes(&self) -> usize {
        self.sector_bytes
    }

    fn sector_count(&self) -> u64 {
        self.sector_count
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        if self.offline {
            return Err(DeviceError::Offline);
        }
        let (_, len) = check_request(self.sector_bytes, self.sector_count, lba, buf.len())?;
        let sectors = (len / self.sector_bytes) as u64;
        for s in lba..lba + sectors {
            if self.rng.chance_ppm(self.faults.latent_error_ppm) {
                self.latent.insert(s);
            }
        }
        if self.latent.range(lba..lba + sectors).next().is_some() {
            return Err(DeviceError::Io);
        }
        let mut source = lba;
        if self.rng.chance_ppm(self.faults.misdirected_read_ppm) {
            source = self.misdirect(lba, sectors);
        }
        let offset = source as usize * self.sector_bytes;
        buf.copy_from_slice(&self.current[offset..offset + len]);
        Ok(())
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DeviceError> {
        if self.offline {
            return Err(DeviceError::Offline);
        }
        let (_, len) = check_request(self.sector_bytes, self.sector_count, lba, buf.len())?;
        self.next_op()?;
        let sectors = (len / self.sector_bytes) as u64;
        let mut target = lba;
        if self.rng.chance_ppm(self.faults.misdirected_write_ppm) {
            target = self.misdirect(lba, sectors);
        }
        let offset = target as usize * self.sector_bytes;
        self.current[offset..offset + len].copy_from_slice(buf);
        let healed: Vec<u64> = self
            .latent
            .range(target..target + sectors)
            .copied()
            .collect();
        for s in healed {
            self.latent.remove(&s);
        }
        self.pending.push(PendingWrite {
            lba: target,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        if self.offline {
            return Err(DeviceError::Offline);
        }
        self.next_op()?;
        for write in core::mem::take(&mut self.pending) {
            let base = write.lba as usize * self.sector_bytes;
            self.durable[base..base + write.data.len()].copy_from_slice(&write.data);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector(byte: u8) -> Vec<u8> {
        vec![byte; 512]
    }

    #[test]
    fn flushed_writes_survive_and_unflushed_ones_may_not() {
        let mut disk = SimDisk::new(512, 64, 1, SimFaults::default());
        disk.write(1, &sector(1)).unwrap();
        disk.flush().unwrap();
        disk.write(1, &sector(2)).unwrap();
        let mut buf = sector(0);
        disk.read(1, &mut buf).unwrap();
        assert_eq!(buf, sector(2), "reads see unflushed writes");
        disk.cut_power();
        assert_eq!(disk.read(1, &mut buf), Err(DeviceError::Offline));
        disk.restart();
        disk.read(1, &mut buf).unwrap();
        assert!(buf == sector(1) || buf == sector(2));
        assert_eq!(disk.write(64, &sector(0)), Err(DeviceError::OutOfRange));
        assert_eq!(disk.write(0, &[0; 100]), Err(DeviceError::Misaligned));
    }

    #[test]
    fn power_cuts_tear_and_reorder_deterministically_per_seed() {
        let run = |seed: u64| {
            let mut disk = SimDisk::new(512, 64, seed, SimFaults::crash());
            for i in 0..8u8 {
                disk.write(u64::from(i) * 4, &vec![i + 1; 4 * 512]).unwrap();
            }
            disk.cut_power();
            disk.durable_image().to_vec()
        };
        assert_eq!(run(5), run(5), "same seed, same outcome");
        let mut torn = 0;
        let mut later_survived_earlier_lost = 0;
        for seed in 0..200 {
            let image = run(seed);
            let written = |w: usize| {
                (0..4)
                    .filter(|s| image[(w * 4 + s) * 512] == w as u8 + 1)
                    .count()
            };
            torn += (0..8).filter(|&w| (1..4).contains(&written(w))).count();
            later_survived_earlier_lost += usize::from(written(0) == 0 && written(7) == 4);
        }
        assert!(torn > 0, "some writes are torn");
        assert!(
            later_survived_earlier_lost > 0,
            "writes reach the medium out of order"
        );
    }

    #[test]
    fn latent_errors_heal_on_write_and_misdirected_reads_return_other_data() {
        let mut disk = SimDisk::new(512, 256, 3, SimFaults::default());
        disk.write(10, &sector(7)).unwrap();
        disk.inject_latent_error(10);
        let mut buf = sector(0);
        assert_eq!(disk.read(10, &mut buf), Err(DeviceError::Io));
        disk.write(10, &sector(8)).unwrap();
        disk.read(10, &mut buf).unwrap();
        assert_eq!(buf, sector(8));
        disk.set_faults(SimFaults {
            misdirected_read_ppm: 1_000_000,
            ..SimFaults::default()
        });
        disk.read(10, &mut buf).unwrap();
        assert_eq!(
            buf,
            sector(0),
            "a misdirected read returns another sector's data"
        );
    }
}
