//! A deterministic simulator of whole subnets (feature `sim`, std).
//!
//! The simulator owns time, the network and the nodes. Every run has a seed; everything
//! random (latency, jitter, loss, duplication, reordering, the nodes' entropy, Byzantine
//! garbage) is drawn from one ChaCha20 stream seeded by it, and events at the same instant
//! are ordered by insertion, so a seed replays a run exactly.
//!
//! The network delivers each transmission (a whole number of channel frames) as one unit,
//! after a per-link latency plus jitter; units may be lost, duplicated, or held back
//! (reordered). Partitions cut links between groups until healed. A crashed node loses all
//! its memory except its signing watermark (which a real node persists); it restarts from
//! genesis and catches up from its peers.
//!
//! Checkers run after every event, over honest nodes only: at most one finalized block per
//! height across all nodes (agreement), each node's finalized chain extends the common one
//! (prefix: every delivered block's parent is the agreed block below it), and every finalized
//! block is valid (maker's signature, rank within the block makers, height and time order).

pub mod stack_sim;

use crate::consensus::{ConsensusParams, Fault, FinalizedBlock};
use crate::crypto::dealer::{deal_subnet, NodeSecrets, SubnetKeys, SubnetRecord};
use crate::replica::{Replica, ReplicaConfig, STATUS_INTERVAL_MS};
use crate::types::{CryptoHash, Height, NodeId, Time};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// How a node misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    Honest,
    /// Follows the protocol but with one of the consensus-level faults.
    Byzantine(Fault),
    /// Follows the protocol and also sends garbage: raw bytes, mutated frames, and
    /// authenticated channel messages that are not valid wire messages or artifacts.
    GarbageBytes,
}

impl Behavior {
    pub fn is_honest(self) -> bool {
        self == Behavior::Honest
    }
}

/// Network conditions (per link, the same for every link).
#[derive(Clone, Copy, Debug)]
pub struct NetConfig {
    /// One-way latency.
    pub latency_ms: u64,
    /// Uniform extra delay in `0..=jitter_ms`.
    pub jitter_ms: u64,
    /// Units lost, per thousand.
    pub loss_permille: u32,
    /// Units delivered twice, per thousand.
    pub duplicate_permille: u32,
    /// Units held back by up to `4 × latency`, per thousand (reordering).
    pub reorder_permille: u32,
}

impl NetConfig {
    /// A LAN-like network with the given round-trip time and 10% jitter.
    pub fn rtt_ms(rtt: u64) -> NetConfig {
        NetConfig {
            latency_ms: rtt / 2,
            jitter_ms: rtt / 20,
            loss_permille: 0,
            duplicate_permille: 0,
            reorder_permille: 0,
        }
    }
}

/// A simulation's setup.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub n: usize,
    pub seed: u64,
    pub params: ConsensusParams,
    pub net: NetConfig,
    pub behaviors: BTreeMap<usize, Behavior>,
    /// Ingress messages (of this many bytes) submitted to a random node per simulated second.
    pub ingress_per_second: u64,
    pub ingress_bytes: usize,
}

impl SimConfig {
    pub fn new(n: usize, seed: u64) -> SimConfig {
        SimConfig {
            n,
            seed,
            params: ConsensusParams::FAST,
            net: NetConfig::rtt_ms(30),
            behaviors: BTreeMap::new(),
            ingress_per_second: 0,
            ingress_bytes: 0,
        }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum EventKind {
    Deliver {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    Wake {
        node: usize,
        generation: u64,
    },
    Ingress,
}

struct Node {
    replica: Option<Replica>,
    behavior: Behavior,
    secrets: NodeSecrets,
    wake_generation: u64,
    scheduled_wake: Option<Time>,
    signing_watermark: Height,
    /// Highest height this incarnation delivered.
    delivered: Height,
    /// Finalization latency samples: (block time → delivery time), ns.
    latencies_ns: Vec<u64>,
    finalized_count: u64,
}

/// Where a safety check failed.
#[derive(Clone, Debug)]
pub struct Violation {
    pub node: usize,
    pub height: Height,
    pub what: String,
}

/// A deterministic subnet simulation.
pub struct Sim {
    pub config: SimConfig,
    pub now: Time,
    rng: ChaCha20Rng,
    record: SubnetRecord,
    keys: SubnetKeys,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<(Time, u64, EventKind)>>,
    seq: u64,
    group: Vec<u32>,
    /// The agreed finalized chain: height → (hash, block time).
    agreed: BTreeMap<Height, (CryptoHash, Time)>,
    pub violations: Vec<Violation>,
    pub delivered_units: u64,
    pub events: u64,
}

/// The command that reproduces a run.
pub fn reproduce_hint(seed: u64) -> String {
    format!("SEED={seed} cargo test -p node --features sim <test name>")
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&config.seed.to_le_bytes());
        let mut rng = ChaCha20Rng::from_seed(seed_bytes);
        let mut dealer_seed = [0u8; 32];
        rng.fill_bytes(&mut dealer_seed);
        let genesis = Time::from_millis(1_700_000_000_000);
        let (record, secrets) = deal_subnet(&dealer_seed, config.n, genesis).expect("deal subnet");
        let keys = SubnetKeys::from_record(&record).expect("dealt record parses");
        let mut sim = Sim {
            now: genesis,
            rng,
            keys,
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            group: vec![0; config.n],
            agreed: BTreeMap::new(),
            violations: Vec::new(),
            delivered_units: 0,
            events: 0,
            record,
            config,
        };
        for (i, s) in secrets.into_iter().enumerate() {
            let behavior = sim
                .config
                .behaviors
                .get(&i)
                .copied()
                .unwrap_or(Behavior::Honest);
            sim.nodes.push(Node {
                replica: None,
                behavior,
                secrets: s,
                wake_generation: 0,
                scheduled_wake: None,
                signing_watermark: Height(0),
                delivered: Height(0),
                latencies_ns: Vec::new(),
                finalized_count: 0,
            });
        }
        for i in 0..sim.config.n {
            sim.start(i);
        }
        if sim.config.ingress_per_second > 0 {
            sim.push(sim.now, EventKind::Ingress);
        }
        sim
    }

    fn start(&mut self, i: usize) {
        let mut entropy = [0u8; 32];
        self.rng.fill_bytes(&mut entropy);
        let cfg = ReplicaConfig {
            record: self.record.clone(),
            secrets: self.nodes[i].secrets.clone(),
            params: self.config.params,
            entropy,
            signing_floor: self.nodes[i].signing_watermark,
            status_interval_ms: STATUS_INTERVAL_MS,
            resume_from: None,
        };
        let mut r = Replica::new(cfg, self.now).expect("replica starts");
        if let Behavior::Byzantine(f) = self.nodes[i].behavior {
            r.set_fault(Some(f));
        }
        self.nodes[i].replica = Some(r);
        self.nodes[i].delivered = Height(0);
        self.after_input(i);
    }

    fn push(&mut self, t: Time, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, kind)));
    }

    fn chance(&mut self, permille: u32) -> bool {
        permille > 0 && (self.rng.next_u32() % 1000) < permille
    }

    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.rng.next_u64() % bound
        }
    }

    fn link_up(&self, a: usize, b: usize) -> bool {
        self.group[a] == self.group[b]
    }

    /// Sends one unit over the simulated network, with the configured faults.
    fn transmit(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        if !self.link_up(from, to) {
            return;
        }
        let net = self.config.net;
        if self.chance(net.loss_permille) {
            return;
        }
        let mut delay_ms = net.latency_ms + self.below(net.jitter_ms + 1);
        if self.chance(net.reorder_permille) {
            delay_ms += self.below(4 * net.latency_ms.max(1) + 1);
        }
        let t = self.now.plus_millis(delay_ms);
        if self.chance(net.duplicate_permille) {
            let extra = self.below(net.latency_ms + 1);
            self.push(
                t.plus_millis(extra),
                EventKind::Deliver {
                    from,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
        self.push(t, EventKind::Deliver { from, to, bytes });
    }

    /// Drains a node's outputs after an input, and reschedules its wake-up.
    fn after_input(&mut self, i: usize) {
        let Some(r) = self.nodes[i].replica.as_mut() else {
            return;
        };
        let mut outs = Vec::new();
        while let Some((peer, bytes)) = r.poll_transmit() {
            outs.push((peer, bytes));
        }
        let mut finalized = Vec::new();
        while let Some(b) = r.poll_finalized() {
            finalized.push(b);
        }
        let deadline = r.poll_deadline();
        let watermark = r.signing_watermark();
        self.nodes[i].signing_watermark = self.nodes[i].signing_watermark.max(watermark);
        for (peer, bytes) in outs {
            let Some(to) = self.index_of(&peer) else {
                continue;
            };
            if self.nodes[i].behavior == Behavior::GarbageBytes {
                self.send_garbage(i, to, &bytes);
            }
            self.transmit(i, to, bytes);
        }
        for b in finalized {
            self.check_finalized(i, b);
        }
        let node = &mut self.nodes[i];
        let deadline = deadline.max(Time(self.now.0 + 1));
        if node
            .scheduled_wake
            .is_none_or(|t| deadline < t || t <= self.now)
        {
            node.wake_generation += 1;
            node.scheduled_wake = Some(deadline);
            let generation = node.wake_generation;
            self.push(
                deadline,
                EventKind::Wake {
                    node: i,
                    generation,
                },
            );
        }
    }

    fn send_garbage(&mut self, from: usize, to: usize, real: &[u8]) {
        match self.rng.next_u32() % 4 {
            0 => {
                let len = 1 + self.below(300) as usize;
                let mut junk = vec![0u8; len];
                self.rng.fill_bytes(&mut junk);
                self.transmit(from, to, junk);
            }
            1 if !real.is_empty() => {
                let mut mutated = real.to_vec();
                let at = self.below(mutated.len() as u64) as usize;
                mutated[at] ^= 1 << (self.rng.next_u32() % 8);
                self.transmit(from, to, mutated);
            }
            2 => {
                let len = 1 + self.below(200) as usize;
                let mut junk = vec![0u8; len];
                self.rng.fill_bytes(&mut junk);
                // A valid channel message whose content is junk (or a junk artifact list).
                if self.rng.next_u32().is_multiple_of(2) {
                    let body = crate::p2p::WireBody::Artifacts(vec![junk.clone()]);
                    junk = crate::p2p::WireMessage::new(body).encode();
                }
                let peer = self.keys.node_ids[to];
                let now = self.now;
                if let Some(r) = self.nodes[from].replica.as_mut() {
                    r.send_raw_message(peer, &junk, now);
                    let mut raw = Vec::new();
                    while let Some((p, b)) = r.poll_transmit() {
                        raw.push((p, b));
                    }
                    for (p, b) in raw {
                        if let Some(t) = self.index_of(&p) {
                            self.transmit(from, t, b);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.keys.node_ids.iter().position(|x| x == id)
    }

    fn check_finalized(&mut self, i: usize, fb: FinalizedBlock) {
        let node = &mut self.nodes[i];
        node.finalized_count += 1;
        node.latencies_ns
            .push(self.now.0.saturating_sub(fb.block.time.0));
        let prev_delivered = node.delivered;
        node.delivered = fb.height;
        if !node.behavior.is_honest() {
            return;
        }
        let mut violation = |what: String| {
            self.violations.push(Violation {
                node: i,
                height: fb.height,
                what,
            })
        };
        if fb.height <= prev_delivered {
            violation(format!(
                "delivered height {} after {}",
                fb.height, prev_delivered
            ));
        }
        if fb.block.hash() != fb.hash || fb.block.height != fb.height {
            violation("delivered block does not match its hash or height".into());
        }
        match self.agreed.get(&fb.height) {
            Some((h, _)) if *h != fb.hash => {
                violation("two different blocks finalized at one height".into())
            }
            _ => {}
        }
        if let Some((parent, parent_time)) = self.agreed.get(&fb.height.prev()) {
            if *parent != fb.block.parent {
                violation("finalized block does not extend the agreed chain".into());
            }
            if fb.block.time <= *parent_time {
                violation("finalized block's time does not increase".into());
            }
        }
        let b = &fb.block;
        let maker_ok = (b.maker as usize) < self.keys.n()
            && (b.rank.0 as usize) <= self.keys.f()
            && self.keys.node_keys[b.maker as usize]
                .verify(
                    &crate::consensus::BlockProposal::signed_message(&fb.hash),
                    &fb.signature.0,
                )
                .is_ok();
        if !maker_ok {
            violation("finalized block's maker or rank is invalid".into());
        }
        self.agreed
            .entry(fb.height)
            .or_insert((fb.hash, fb.block.time));
        if !self.violations.is_empty() {
            let v = &self.violations[0];
            panic!(
                "safety violation at node {} height {}: {} — reproduce with {}",
                v.node,
                v.height,
                v.what,
                reproduce_hint(self.config.seed)
            );
        }
    }

    /// Runs one event. False when nothing is scheduled.
    pub fn step(&mut self) -> bool {
        let Some(Reverse((t, _, kind))) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(t);
        self.events += 1;
        match kind {
            EventKind::Deliver { from, to, bytes } => {
                // A partition that started while the unit was in flight cuts it too.
                if !self.link_up(from, to) {
                    return true;
                }
                let peer = self.keys.node_ids[from];
                let now = self.now;
                if let Some(r) = self.nodes[to].replica.as_mut() {
                    self.delivered_units += 1;
                    r.handle_peer_bytes(peer, &bytes, now);
                    self.after_input(to);
                }
            }
            EventKind::Wake { node, generation } => {
                if self.nodes[node].wake_generation != generation {
                    return true;
                }
                self.nodes[node].scheduled_wake = None;
                let now = self.now;
                if let Some(r) = self.nodes[node].replica.as_mut() {
                    r.handle_timeout(now);
                    self.after_input(node);
                }
            }
            EventKind::Ingress => {
                let node = self.below(self.config.n as u64) as usize;
                let mut msg = vec![0u8; self.config.ingress_bytes.max(8)];
                self.rng.fill_bytes(&mut msg);
                if let Some(r) = self.nodes[node].replica.as_mut() {
                    let _ = r.submit_ingress(msg);
                }
                let gap_ms = 1000 / self.config.ingress_per_second.max(1);
                let next = self.now.plus_millis(gap_ms.max(1));
                self.push(next, EventKind::Ingress);
            }
        }
        true
    }

    /// Runs until simulated time `t`.
    pub fn run_until(&mut self, t: Time) {
        while let Some(Reverse((next, _, _))) = self.queue.peek() {
            if *next > t {
                break;
            }
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// Runs for `ms` more simulated milliseconds.
    pub fn run_for_ms(&mut self, ms: u64) {
        let t = self.now.plus_millis(ms);
        self.run_until(t);
    }

    pub fn crash(&mut self, i: usize) {
        if let Some(r) = self.nodes[i].replica.take() {
            let w = r.signing_watermark();
            self.nodes[i].signing_watermark = self.nodes[i].signing_watermark.max(w);
        }
        self.nodes[i].wake_generation += 1;
        self.nodes[i].scheduled_wake = None;
    }

    pub fn restart(&mut self, i: usize) {
        self.crash(i);
        self.start(i);
        let id = self.keys.node_ids[i];
        for j in 0..self.config.n {
            if let (true, Some(r)) = (j != i, self.nodes[j].replica.as_mut()) {
                r.peer_connection_reset(id);
            }
        }
    }

    /// Splits the nodes: `groups[k]` lists the nodes of group `k`; unlisted nodes form their
    /// own group.
    pub fn partition(&mut self, groups: &[&[usize]]) {
        for g in self.group.iter_mut() {
            *g = u32::MAX;
        }
        for (k, members) in groups.iter().enumerate() {
            for &m in *members {
                self.group[m] = k as u32;
            }
        }
    }

    pub fn heal(&mut self) {
        for g in self.group.iter_mut() {
            *g = 0;
        }
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].replica.is_some()
    }

    pub fn behavior(&self, i: usize) -> Behavior {
        self.nodes[i].behavior
    }

    pub fn finalized_height(&self, i: usize) -> Height {
        self.nodes[i]
            .replica
            .as_ref()
            .map_or(Height(0), |r| r.finalized_height())
    }

    pub fn replica(&self, i: usize) -> Option<&Replica> {
        self.nodes[i].replica.as_ref()
    }

    /// Lowest finalized height among honest nodes that are up.
    pub fn min_honest_finalized(&self) -> Height {
        (0..self.config.n)
            .filter(|&i| self.is_up(i) && self.behavior(i).is_honest())
            .map(|i| self.finalized_height(i))
            .min()
            .unwrap_or(Height(0))
    }

    pub fn max_finalized(&self) -> Height {
        (0..self.config.n)
            .map(|i| self.finalized_height(i))
            .max()
            .unwrap_or(Height(0))
    }

    /// Highest height of the agreed chain.
    pub fn agreed_height(&self) -> Height {
        self.agreed.keys().next_back().copied().unwrap_or(Height(0))
    }

    /// The agreed finalized chain (height, block hash).
    pub fn agreed_chain(&self) -> Vec<(Height, CryptoHash)> {
        self.agreed
            .iter()
            .map(|(h, (hash, _))| (*h, *hash))
            .collect()
    }

    /// Finalization latencies of all honest nodes (ns), and finalized block count.
    pub fn latencies_ns(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.behavior.is_honest())
            .flat_map(|n| n.latencies_ns.iter().copied())
            .collect();
        v.sort_unstable();
        v
    }

    pub fn total_finalized_deliveries(&self) -> u64 {
        self.nodes.iter().map(|n| n.finalized_count).sum()
    }

    pub fn keys(&self) -> &SubnetKeys {
        &self.keys
    }
}
