//! A deterministic simulator of whole stacks ([`Stack`]) with disks (feature `sim`).
//!
//! Every node runs [`Stack::with_store`] over its own [`SimDisk`] (power cuts, torn and lost
//! writes, bit flips: see `store::sim_disk`). The network delivers each transmission after a
//! fixed latency, in order per link; a node that is down loses what is sent to it. Time is
//! simulated: the run jumps from event to event, so a scenario of minutes of node time takes
//! as long as its computation.
//!
//! The harness checks agreement as it goes: the state hash every node reports for a height
//! ([`StateMachine::state_hash`](crate::routing::StateMachine::state_hash)) must equal the
//! first one seen for that height by any node (`check()` reports the first disagreement).
//!
//! A workload ([`StackSim::install_counter`], [`StackSim::set_call_interval`]) installs the
//! Motoko counter through the management canister over HTTP and then sends `inc` calls, so the
//! state holds a real canister's Wasm, heap and stable memory.

use crate::api::cbor::Writer;
use crate::api::ApiConfig;
use crate::candid::{self, field_id, record, variant, Type, Value};
use crate::consensus::ConsensusParams;
use crate::replica::stack::{genesis_configs, store_config, Stack, StackConfig};
use crate::store::{
    BlockDevice, DeviceError, Recovery, SimDisk, SimFaults, Store, StoreConfig, Verify,
};
use crate::types::{NodeId, Principal, Time};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// One-way network latency.
pub const LATENCY_MS: u64 = 5;
/// Genesis time of simulated subnets.
pub const GENESIS_NS: u64 = 1_700_000_000_000_000_000;
/// A node whose store failed (its disk lost power) boots again after this long.
pub const REBOOT_DELAY_MS: u64 = 300;
/// Sector size of the simulated disks.
pub const SECTOR_BYTES: usize = 4096;

/// A [`SimDisk`] shared between the harness (which cuts its power and flips its bits) and
/// the store of the node that runs on it.
/// With a log, every write and flush is also recorded (to replay a run up to any write
/// point on a copy of the disk: the crash tests).
#[derive(Clone)]
pub struct SharedDisk {
    pub disk: Rc<RefCell<SimDisk>>,
    pub log: Rc<RefCell<Option<Vec<DiskOp>>>>,
}

/// A recorded device call.
#[derive(Clone, Debug)]
pub enum DiskOp {
    Write(u64, Vec<u8>),
    Flush,
}

impl SharedDisk {
    pub fn new(bytes: u64, seed: u64) -> SharedDisk {
        let disk = SimDisk::new(
            SECTOR_BYTES,
            bytes / SECTOR_BYTES as u64,
            seed,
            SimFaults::crash(),
        );
        SharedDisk::from_disk(disk)
    }

    pub fn from_disk(disk: SimDisk) -> SharedDisk {
        SharedDisk {
            disk: Rc::new(RefCell::new(disk)),
            log: Rc::new(RefCell::new(None)),
        }
    }

    /// Starts recording; returns a copy of the disk as it is now (the base of the log).
    pub fn start_log(&self) -> SimDisk {
        *self.log.borrow_mut() = Some(Vec::new());
        self.disk.borrow().clone()
    }

    /// Stops recording and returns the log.
    pub fn take_log(&self) -> Vec<DiskOp> {
        self.log.borrow_mut().take().unwrap_or_default()
    }

    /// Length of the log so far.
    pub fn log_len(&self) -> usize {
        self.log.borrow().as_ref().map_or(0, |l| l.len())
    }
}

/// Applies `ops` to `disk`.
pub fn replay_ops(disk: &mut SimDisk, ops: &[DiskOp]) {
    for op in ops {
        let _ = match op {
            DiskOp::Write(lba, data) => disk.write(*lba, data),
            DiskOp::Flush => disk.flush(),
        };
    }
}

impl BlockDevice for SharedDisk {
    fn sector_bytes(&self) -> usize {
        self.disk.borrow().sector_bytes()
    }
    fn sector_count(&self) -> u64 {
        self.disk.borrow().sector_count()
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.disk.borrow_mut().read(lba, buf)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DeviceError> {
        if let Some(log) = self.log.borrow_mut().as_mut() {
            log.push(DiskOp::Write(lba, buf.to_vec()));
        }
        self.disk.borrow_mut().write(lba, buf)
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        if let Some(log) = self.log.borrow_mut().as_mut() {
            log.push(DiskOp::Flush);
        }
        self.disk.borrow_mut().flush()
    }
}

/// Pool segment size of the simulated stores (small, so that small disks suffice).
pub const POOL_SEGMENT_BYTES: u32 = 256 << 10;

/// Opens (or formats) the store on `disk` and starts a node over it; returns what the store
/// recovered too.
pub fn boot(
    config: StackConfig,
    disk: &SharedDisk,
    now: Time,
) -> Result<(Stack, Recovery), String> {
    let dev: Box<dyn BlockDevice> = Box::new(disk.clone());
    let store_config = StoreConfig {
        pool_segment_bytes: POOL_SEGMENT_BYTES,
        ..store_config(7)
    };
    let (store, recovery) = Store::open_or_format(dev, store_config, Verify::Lazy)
        .map_err(|e| format!("store: {e}"))?;
    let stack = Stack::with_store(config, store, recovery.clone(), now)
        .map_err(|e| format!("stack: {e}"))?;
    Ok((stack, recovery))
}

/// The Motoko counter canister of the test data.
pub fn motoko_counter_wasm() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/canisters/motoko/counter.classic.wasm"
    );
    std::fs::read(path).unwrap_or_default()
}

/// A subnet of stacks with disks.
pub struct StackSim {
    pub nodes: Vec<Option<Stack>>,
    pub disks: Vec<SharedDisk>,
    pub configs: Vec<StackConfig>,
    pub ids: Vec<NodeId>,
    pub now: Time,
    disk_bytes: u64,
    seed: u64,
    queue: BTreeMap<(u64, u64), (usize, NodeId, Vec<u8>)>,
    seq: u64,
    conn: u64,
    /// When each node that is down boots again (set when its store fails).
    reboot_at: Vec<Option<Time>>,
    /// Boots of each node (the first included).
    pub boots: Vec<u64>,
    /// What the store of each node recovered at its last boot.
    pub recoveries: Vec<Option<Recovery>>,
    /// Boots that found the store unopenable (the disk was then wiped).
    pub wiped_unopenable: u64,
    /// For the node being recorded (`record`): after each burst of sends, (disk log length,
    /// signing watermark, executed height).
    pub markers: Vec<(usize, u64, u64)>,
    /// The node whose sends are recorded in `markers`.
    pub record: Option<usize>,
    /// The first state hash seen for each height.
    pub hashes: BTreeMap<u64, [u8; 32]>,
    checked_up_to: Vec<u64>,
    disagreement: Option<String>,
    /// The counter canister, once created.
    pub canister: Option<Principal>,
    call_interval_ms: Option<u64>,
    next_call: Time,
    pub calls_sent: u64,
}

impl StackSim {
    /// `n` nodes with fresh disks of `disk_bytes`, all booted at genesis.
    pub fn new(n: usize, seed: u64, disk_bytes: u64) -> StackSim {
        let now = Time(GENESIS_NS);
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        let configs = genesis_configs(&s, n, now, ConsensusParams::FAST, ApiConfig::default())
            .unwrap_or_default();
        let disks = (0..n)
            .map(|i| SharedDisk::new(disk_bytes, seed ^ ((i as u64 + 1) * 0x9e37)))
            .collect();
        let mut sim = StackSim {
            nodes: (0..n).map(|_| None).collect(),
            disks,
            ids: Vec::new(),
            configs,
            now,
            disk_bytes,
            seed,
            queue: BTreeMap::new(),
            seq: 0,
            conn: 0,
            reboot_at: vec![None; n],
            boots: vec![0; n],
            recoveries: vec![None; n],
            wiped_unopenable: 0,
            markers: Vec::new(),
            record: None,
            hashes: BTreeMap::new(),
            checked_up_to: vec![0; n],
            disagreement: None,
            canister: None,
            call_interval_ms: None,
            next_call: now,
            calls_sent: 0,
        };
        for i in 0..n {
            sim.start(i)
                .unwrap_or_else(|e| panic!("node {i} boots: {e}"));
        }
        sim.ids = sim
            .nodes
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|s| s.node_id())
                    .unwrap_or(NodeId(Principal::ANONYMOUS))
            })
            .collect();
        sim
    }

    pub fn node(&self, i: usize) -> &Stack {
        self.nodes[i]
            .as_ref()
            .unwrap_or_else(|| panic!("node {i} is down"))
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Stack {
        self.nodes[i]
            .as_mut()
            .unwrap_or_else(|| panic!("node {i} is down"))
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// Boots node `i` from its disk. A store that cannot be opened (its mirrored structures
    /// both corrupt) is wiped: the node then joins by state sync.
    pub fn start(&mut self, i: usize) -> Result<(), String> {
        let (stack, recovery) = match boot(self.configs[i].clone(), &self.disks[i], self.now) {
            Ok(booted) => booted,
            Err(e) if e.starts_with("store:") => {
                self.wiped_unopenable += 1;
                self.wipe(i);
                boot(self.configs[i].clone(), &self.disks[i], self.now)?
            }
            Err(e) => return Err(e),
        };
        self.nodes[i] = Some(stack);
        self.recoveries[i] = Some(recovery);
        self.boots[i] += 1;
        self.reboot_at[i] = None;
        self.checked_up_to[i] = 0;
        if let Some(id) = self.ids.get(i).copied() {
            for (j, other) in self.nodes.iter_mut().enumerate() {
                if let (true, Some(o)) = (j != i, other.as_mut()) {
                    o.peer_connection_reset(id);
                }
            }
        }
        Ok(())
    }

    /// Cuts node `i`'s power: the node is gone, its disk keeps what was durable (torn and
    /// reordered unflushed writes resolved per the fault model).
    pub fn power_cut(&mut self, i: usize) {
        self.nodes[i] = None;
        let mut d = self.disks[i].disk.borrow_mut();
        if !d.is_offline() {
            d.cut_power();
        }
        d.restart();
    }

    /// Replaces node `i`'s disk with a blank one (the node must be down).
    pub fn wipe(&mut self, i: usize) {
        self.nodes[i] = None;
        self.disks[i] = SharedDisk::new(self.disk_bytes, self.seed ^ 0x5eed ^ self.now.0);
    }

    /// Boots a node whose store fails (its disk lost power) again after [`REBOOT_DELAY_MS`].
    pub fn reboot_failed_nodes(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let failed = self.nodes[i]
                .as_ref()
                .is_some_and(|s| s.store_error().is_some());
            if failed {
                self.power_cut(i);
                self.reboot_at[i] = Some(self.now.plus_millis(REBOOT_DELAY_MS));
            }
            if self.reboot_at[i].is_some_and(|t| t <= self.now) {
                self.start(i)?;
            }
        }
        Ok(())
    }

    /// The first disagreement on a state hash, if any.
    pub fn check(&self) -> Result<(), String> {
        match &self.disagreement {
            Some(d) => Err(d.clone()),
            None => Ok(()),
        }
    }

    fn record_hashes(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(s) = self.nodes[i].as_ref() else {
                continue;
            };
            let top = s.executed_height();
            let from = self.checked_up_to[i].max(top.saturating_sub(1_000)) + 1;
            for h in from..=top {
                let Some(hash) = s.state_machine().state_hash(h) else {
                    continue;
                };
                let first = *self.hashes.entry(h).or_insert(hash);
                if first != hash && self.disagreement.is_none() {
                    self.disagreement = Some(format!("node {i} has another state hash at {h}"));
                }
            }
            self.checked_up_to[i] = top;
        }
    }

    fn flush(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(s) = self.nodes[i].as_mut() else {
                continue;
            };
            let mut sent = false;
            while let Some((peer, bytes)) = s.poll_transmit() {
                sent = true;
                let Some(to) = self.ids.iter().position(|id| *id == peer) else {
                    continue;
                };
                let at = self.now.plus_millis(LATENCY_MS).0;
                self.seq += 1;
                self.queue.insert((at, self.seq), (to, self.ids[i], bytes));
            }
            if sent && self.record == Some(i) {
                let w = s.replica().signing_watermark().0;
                self.markers
                    .push((self.disks[i].log_len(), w, s.executed_height()));
            }
            s.take_http_outputs();
        }
    }

    /// Runs until `done` holds (checked between events) or `limit_ms` of simulated time
    /// passed; returns whether `done` held.
    pub fn run_until(&mut self, limit_ms: u64, mut done: impl FnMut(&StackSim) -> bool) -> bool {
        let limit = self.now.plus_millis(limit_ms);
        loop {
            self.flush();
            self.record_hashes();
            if let Err(e) = self.reboot_failed_nodes() {
                self.disagreement.get_or_insert(e);
                return false;
            }
            if done(self) {
                return true;
            }
            let next_msg = self.queue.keys().next().map(|k| k.0);
            let mut next = next_msg.unwrap_or(u64::MAX);
            for s in self.nodes.iter().flatten() {
                next = next.min(s.poll_deadline().0);
            }
            for t in self.reboot_at.iter().flatten() {
                next = next.min(t.0);
            }
            if let (Some(_), Some(_)) = (self.call_interval_ms, self.canister) {
                next = next.min(self.next_call.0);
            }
            if next > limit.0 {
                self.now = limit;
                return false;
            }
            self.now = Time(next.max(self.now.0));
            while let Some((&(t, s), _)) = self.queue.iter().next() {
                if t > self.now.0 {
                    break;
                }
                let Some((to, from, bytes)) = self.queue.remove(&(t, s)) else {
                    break;
                };
                if let Some(n) = self.nodes[to].as_mut() {
                    n.handle_peer_bytes(from, &bytes, self.now);
                }
            }
            let now = self.now;
            for n in self.nodes.iter_mut().flatten() {
                if n.poll_deadline() <= now {
                    n.handle_timeout(now);
                }
            }
            self.workload_tick();
        }
    }

    /// Runs for `ms` of simulated time.
    pub fn run_for(&mut self, ms: u64) {
        self.run_until(ms, |_| false);
    }

    /// The lowest executed height among the nodes that are up.
    pub fn min_executed(&self) -> u64 {
        self.nodes
            .iter()
            .flatten()
            .map(|s| s.executed_height())
            .min()
            .unwrap_or(0)
    }

    /// The highest executed height among the nodes that are up.
    pub fn max_executed(&self) -> u64 {
        self.nodes
            .iter()
            .flatten()
            .map(|s| s.executed_height())
            .max()
            .unwrap_or(0)
    }

    /// Sends an update call (anonymous sender) to node `i` over HTTP.
    pub fn call(&mut self, i: usize, canister: Principal, method: &str, arg: &[u8]) {
        self.conn += 1;
        let expiry = self.now.0 + 240 * 1_000_000_000;
        let mut w = Writer::self_describing();
        w.map(1).text("content").map(7);
        w.text("request_type").text("call");
        w.text("sender").bytes(&[4]);
        w.text("ingress_expiry").u64(expiry);
        w.text("nonce").bytes(&self.conn.to_be_bytes());
        w.text("canister_id").bytes(canister.as_slice());
        w.text("method_name").text(method);
        w.text("arg").bytes(arg);
        let body = w.into_bytes();
        let ecid = match method {
            "install_code" => self.canister.unwrap_or(canister),
            _ => canister,
        };
        let mut req = format!(
            "POST /api/v2/canister/{ecid}/call HTTP/1.1\r\nHost: cairn\r\nContent-Type: application/cbor\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        let (now, conn) = (self.now, self.conn);
        if let Some(n) = self.nodes[i].as_mut() {
            n.http_connect(conn, now);
            n.http_receive(conn, &req, now);
            for out in n.take_http_outputs() {
                if std::env::var("SIM_DEBUG").is_ok() {
                    eprintln!("http: {}", String::from_utf8_lossy(&out.bytes));
                }
            }
            n.http_disconnect(conn);
        }
    }

    /// Creates a canister and installs the Motoko counter in it (through node `i`), and waits
    /// until every node that is up runs it.
    pub fn install_counter(&mut self, i: usize) -> Result<Principal, String> {
        // Channels and gossip are up after the first round trips.
        self.run_for(1_000);
        let create_ty = record(&[("amount", candid::opt(Type::Nat))]);
        let create = candid::encode_args(&[(
            create_ty,
            Value::Record(vec![(
                field_id("amount"),
                Value::Opt(Some(Box::new(Value::nat(100_000_000_000_000)))),
            )]),
        )])
        .ok_or("encode create")?;
        let id = Principal::from_canister_index(0);
        self.call(
            i,
            Principal::MANAGEMENT,
            "provisional_create_canister_with_cycles",
            &create,
        );
        let created = self.run_until(30_000, |s| {
            s.nodes
                .iter()
                .flatten()
                .all(|n| n.state_machine().canister(&id).is_some())
        });
        if !created {
            return Err("canister not created".into());
        }
        self.canister = Some(id);
        let wasm = motoko_counter_wasm();
        let ty = record(&[
            ("mode", variant(&[("install", Type::Null)])),
            ("canister_id", Type::Principal),
            ("wasm_module", candid::blob()),
            ("arg", candid::blob()),
        ]);
        let mut fields = vec![
            (
                field_id("mode"),
                Value::Variant(field_id("install"), Box::new(Value::Null)),
            ),
            (field_id("canister_id"), Value::Principal(id)),
            (field_id("wasm_module"), Value::Blob(wasm)),
            (field_id("arg"), Value::Blob(b"DIDL\x00\x00".to_vec())),
        ];
        fields.sort_by_key(|(f, _)| *f);
        let arg = candid::encode_args(&[(ty, Value::Record(fields))]).ok_or("encode install")?;
        self.call(i, Principal::MANAGEMENT, "install_code", &arg);
        let installed = self.run_until(30_000, |s| {
            s.nodes.iter().flatten().all(|n| {
                n.state_machine()
                    .canister(&id)
                    .is_some_and(|c| c.module.is_some())
            })
        });
        if !installed {
            return Err("counter not installed".into());
        }
        Ok(id)
    }

    /// From now on, send an `inc` call every `ms` to the next node that is up.
    pub fn set_call_interval(&mut self, ms: Option<u64>) {
        self.call_interval_ms = ms;
        self.next_call = self.now;
    }

    fn workload_tick(&mut self) {
        let (Some(ms), Some(id)) = (self.call_interval_ms, self.canister) else {
            return;
        };
        if self.now < self.next_call {
            return;
        }
        self.next_call = self.now.plus_millis(ms);
        let n = self.nodes.len();
        for k in 0..n {
            let i = (self.calls_sent as usize + k) % n;
            if self.is_up(i) {
                self.call(i, id, "inc", b"DIDL\x00\x00");
                self.calls_sent += 1;
                return;
            }
        }
    }

    /// The counter's value on node `i` (a query against its state).
    pub fn counter(&self, i: usize) -> Option<u64> {
        let id = self.canister?;
        let reply = self.nodes[i]
            .as_ref()?
            .state_machine()
            .query(
                id,
                "get",
                b"DIDL\x00\x00".to_vec(),
                Principal::ANONYMOUS,
                None,
            )
            .ok()?;
        let v = candid::decode_args(&reply, &[Type::Nat], &Default::default()).ok()?;
        match v.first()? {
            Value::Nat(limbs) => Some(limbs.first().copied().unwrap_or(0)),
            _ => None,
        }
    }
}
