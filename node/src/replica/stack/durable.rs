//! The stack's side of the store: logging, checkpoints, recovery, serving and running state
//! sync (see the module docs of `stack` and `persist`).

use super::{Core, Stack, StackConfig, UpperMessage};
use crate::consensus::{Artifact, BlockProposal, CatchUpPackage, FinalizedBlock};
use crate::replica::persist::{
    as_state_files, bind_checkpoint, decode_finality, encode_finality, is_checkpoint_height,
    state_files, state_from_files, LoggedBlock, StateFilesError, BUFFERED_BLOCKS_MAX,
    BUFFERED_BLOCK_BYTES_MAX, CHECKPOINT_CHUNK_BYTES, RECORD_FINALITY, RECORD_FINALIZED_BLOCK,
    RECORD_OWN_ARTIFACT, RECORD_SIGNING_FLOOR, RECORD_SIGNING_WATERMARK,
};
use crate::replica::state_sync::{SyncClient, SyncProgress, SyncTarget};
use crate::replica::ReplicaError;
use crate::routing::StateMachine;
use crate::store::{BlockDevice, Hash, Manifest, Recovery, Store, StoreError, Structure};
use crate::types::{CryptoHash, Height, NodeId, Time};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

/// Sync requests (manifest or chunk) served to one peer per [`SERVE_WINDOW_MS`].
pub const SERVE_REQUESTS_PER_WINDOW_MAX: u32 = 64;
/// The window of [`SERVE_REQUESTS_PER_WINDOW_MAX`].
pub const SERVE_WINDOW_MS: u64 = 1_000;

/// Counters of persistence, recovery and state sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Chunk bytes those checkpoints wrote (unchanged chunks are not written again).
    pub checkpoint_bytes_written: u64,
    /// Height of the stored checkpoint (0: none).
    pub checkpoint_height: u64,
    /// Height of the retained checkpoint: the CUP's, kept while a newer one is the latest
    /// (0: none).
    pub retained_height: u64,
    /// `pool_sync` calls (flushes before sending).
    pub pool_syncs: u64,
    /// Finalized blocks appended to the pool log.
    pub blocks_logged: u64,
    /// Record bytes of those blocks.
    pub block_bytes_logged: u64,
    /// Finalized blocks too large for a pool record (re-fetched from peers after a restart).
    pub blocks_not_logged: u64,
    /// Artifacts this node signed (or blocks it notarized) appended to the pool log.
    pub own_artifacts_logged: u64,
    /// Record bytes of those artifacts (or of the signing floors logged instead).
    pub own_artifact_bytes_logged: u64,
    /// Own artifacts too large for a pool record (the node signs nothing at their height
    /// after a restart).
    pub own_artifacts_not_logged: u64,
    /// Logged blocks executed again on start.
    pub blocks_replayed: u64,
    /// Checkpoint chunks found bad (on start, or when serving a peer).
    pub bad_chunks_detected: u64,
    /// State syncs completed.
    pub syncs_completed: u64,
    /// The last completed (or the running) sync.
    pub last_sync: SyncProgress,
    /// Manifests and chunks served to peers.
    pub served: u64,
    /// Of `served`, those from the retained checkpoint (the CUP's, kept while a newer one is
    /// the latest).
    pub served_retained: u64,
    /// The state could not be turned into files (or back): a codec failure.
    pub codec_failures: u64,
    /// Artifacts that made heights final (beacons, notarizations, finalizations) appended to
    /// the pool log.
    pub finality_logged: u64,
    /// Record bytes of those artifacts.
    pub finality_bytes_logged: u64,
    /// Of those, too large for a pool record (not logged).
    pub finality_not_logged: u64,
    /// Finality records and finalized blocks put back into the consensus pool on start.
    pub finality_restored: u64,
    /// Finality records found unusable on start (`FinalityRecordError`), skipped.
    pub bad_finality_records: u64,
}

/// The node's own checkpoint.
#[derive(Clone, Copy, Debug)]
pub(super) struct LocalCheckpoint {
    height: u64,
    state_hash: CryptoHash,
}

pub(in crate::replica) struct Persist {
    pub(super) store: Store<Box<dyn BlockDevice>>,
    pub(super) failed: Option<StoreError>,
    pub(super) sync: Option<SyncClient>,
    pub(super) stats: StoreStats,
    durable_watermark: u64,
    stored_cup: u64,
    logged_up_to: u64,
    local: Option<LocalCheckpoint>,
    /// The store's retained checkpoint (the one at the CUP height while a newer one is the
    /// latest), when its state hash is known: it moved there from `local`, or it was loaded
    /// when a peer first asked for it after a restart.
    retained: Option<LocalCheckpoint>,
    /// The state is not loaded (bad checkpoint) or behind the CUP: execute nothing.
    blocked: bool,
    /// The local checkpoint failed verification: repair it (if no newer CUP supersedes it).
    repair: Option<(u64, Hash)>,
    buffered: BTreeMap<u64, FinalizedBlock>,
    buffered_bytes: usize,
    serve: BTreeMap<NodeId, (Time, u32)>,
    cup_interval: u64,
    syncs_started: usize,
}

/// `Stack::with_store`.
pub(super) fn start(
    mut config: StackConfig,
    mut store: Store<Box<dyn BlockDevice>>,
    recovery: Recovery,
    now: Time,
) -> Result<Stack, ReplicaError> {
    if store.chunk_bytes() != CHECKPOINT_CHUNK_BYTES {
        return Err(ReplicaError::Store(StoreError::Geometry));
    }
    let stored_cup = match store.cup().map_err(ReplicaError::Store)? {
        Some(bytes) => Some(
            postcard::from_bytes::<CatchUpPackage>(&bytes)
                .map_err(|_| ReplicaError::Store(StoreError::Corrupt(Structure::Cup)))?,
        ),
        None => None,
    };
    let stored_cup_height = stored_cup.as_ref().map_or(0, |c| c.content.height().0);
    if stored_cup.is_some() && store.cup_height() != Some(stored_cup_height) {
        // A store written before the CUP height was stored (meta version 1): tell it, so it
        // retains the checkpoint at the CUP height from now on.
        let bytes = store
            .cup()
            .map_err(ReplicaError::Store)?
            .unwrap_or_default();
        store
            .put_cup_at(stored_cup_height, &bytes)
            .map_err(ReplicaError::Store)?;
    }
    if let Some(cup) = stored_cup {
        let newer = config
            .replica
            .resume_from
            .as_ref()
            .is_none_or(|r| r.content.height() < cup.content.height());
        if newer {
            config.replica.resume_from = Some(cup);
        }
    }
    let purged_below = recovery.pool_purged_below;
    let u64_records = |kind: u32| {
        recovery
            .pool_records
            .iter()
            .filter(move |r| r.kind == kind)
            .filter_map(|r| Some(u64::from_le_bytes(r.bytes.as_slice().try_into().ok()?)))
    };
    let watermark = u64_records(RECORD_SIGNING_WATERMARK).max().unwrap_or(0);
    let hard_floor = u64_records(RECORD_SIGNING_FLOOR).max().unwrap_or(0);
    let signed: Vec<Artifact> = recovery
        .pool_records
        .iter()
        .filter(|r| r.kind == RECORD_OWN_ARTIFACT && r.height >= purged_below)
        .filter_map(|r| Artifact::decode(&r.bytes).ok())
        .collect();
    let signed_up_to = signed.iter().map(|a| a.id().height).max().unwrap_or(0);
    // What made the heights above the CUP final, and the blocks finalized there (as the
    // proposals they were): restored with the own artifacts, through validation.
    let mut bad_finality_records = 0u64;
    let mut finality: Vec<Artifact> = Vec::new();
    for r in &recovery.pool_records {
        if r.height < purged_below || r.height <= stored_cup_height {
            continue;
        }
        match r.kind {
            RECORD_FINALITY => match decode_finality(r.height, &r.bytes) {
                Ok(a) => finality.push(a),
                Err(_) => bad_finality_records += 1,
            },
            RECORD_FINALIZED_BLOCK => {
                if let Some(b) = LoggedBlock::decode(r.height, &r.bytes) {
                    finality.push(Artifact::Block(BlockProposal {
                        block: b.block,
                        signature: b.signature,
                    }));
                }
            }
            _ => {}
        }
    }
    let finality_restored = finality.len() as u64;
    // Consensus resumes above the stored CUP and signs nothing at or below it. Above it, the
    // logged own artifacts say what the node signed; a log that does not cover the
    // watermark (older format) keeps the watermark as the floor.
    let logged_floor = if signed_up_to >= watermark {
        hard_floor
    } else {
        watermark.max(hard_floor)
    };
    config.replica.signing_floor = config
        .replica
        .signing_floor
        .max(Height(logged_floor))
        .max(Height(stored_cup_height));
    let cup_interval = config.replica.params.cup_interval_heights;
    let mut restored = signed;
    restored.extend(finality);
    let mut stack = Stack::start(config, now, Some(restored))?;
    let logged_up_to = recovery
        .pool_records
        .iter()
        .filter(|r| r.kind == RECORD_FINALIZED_BLOCK)
        .map(|r| r.height)
        .max()
        .unwrap_or(0);
    let retained_height = store.retained_height().unwrap_or(0);
    stack.core.persist = Some(Box::new(Persist {
        store,
        failed: None,
        sync: None,
        stats: StoreStats {
            retained_height,
            finality_restored,
            bad_finality_records,
            ..StoreStats::default()
        },
        durable_watermark: watermark,
        stored_cup: stored_cup_height,
        logged_up_to,
        local: None,
        retained: None,
        blocked: false,
        repair: None,
        buffered: BTreeMap::new(),
        buffered_bytes: 0,
        serve: BTreeMap::new(),
        cup_interval,
        syncs_started: 0,
    }));
    stack.core.recover(&recovery)?;
    stack.core.after_step(now);
    Ok(stack)
}

/// Reads every file of the store's checkpoint (each chunk verified).
fn read_files<D: BlockDevice>(store: &mut Store<D>) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    match store.checkpoint_height() {
        Some(height) => read_files_at(store, height),
        None => Ok(Vec::new()),
    }
}

/// Reads every file of the store's checkpoint at `height` (latest or retained).
fn read_files_at<D: BlockDevice>(
    store: &mut Store<D>,
    height: u64,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut files = Vec::new();
    for name in store.file_names_at(height) {
        let bytes = store.read_file_at(height, &name)?;
        files.push((name, bytes));
    }
    Ok(files)
}

/// After a checkpoint commit that replaced `previous` as the latest: keeps the state hash of
/// the retained checkpoint the store now holds (if any).
fn note_retained(p: &mut Persist, previous: Option<LocalCheckpoint>) {
    let height = p.store.retained_height();
    p.stats.retained_height = height.unwrap_or(0);
    p.retained = p
        .retained
        .filter(|r| Some(r.height) == height)
        .or(previous.filter(|l| Some(l.height) == height));
}

impl Core {
    fn persist(&mut self) -> Option<&mut Persist> {
        self.persist.as_deref_mut()
    }

    /// Loads the checkpoint and replays the log (at start).
    fn recover(&mut self, recovery: &Recovery) -> Result<(), ReplicaError> {
        let config = self.sm.config().clone();
        let cup_height = self.replica.cup_height().0;
        let Some(p) = self.persist.as_deref_mut() else {
            return Ok(());
        };
        if let Some((height, root)) = recovery.checkpoint {
            p.stats.checkpoint_height = height;
            let loaded = match read_files(&mut p.store) {
                Ok(files) => state_from_files(config, &files),
                Err(StoreError::BadChunk(_)) => {
                    p.stats.bad_chunks_detected += 1;
                    Err(StateFilesError::Store(StoreError::BadChunk(0)))
                }
                Err(e) => return Err(ReplicaError::Store(e)),
            };
            match loaded {
                Ok(sm) if sm.height() == height => {
                    let state_hash = sm.state_hash(height).unwrap_or([0; 32]);
                    p.local = Some(LocalCheckpoint { height, state_hash });
                    self.sm = sm;
                    if height > cup_height {
                        let bound = bind_checkpoint(height, &state_hash, &root);
                        self.replica.set_state_hash(Height(height), bound);
                    }
                }
                other => {
                    if matches!(other, Err(StateFilesError::Codec) | Ok(_)) {
                        p.stats.codec_failures += 1;
                    }
                    // Never execute on it: fetch it again (or a newer certified state).
                    p.repair = Some((height, root));
                    p.blocked = true;
                }
            }
        }
        let floor = recovery.pool_purged_below;
        for r in &recovery.pool_records {
            if r.kind != RECORD_FINALIZED_BLOCK || r.height < floor {
                continue;
            }
            if let Some(block) = LoggedBlock::decode(r.height, &r.bytes) {
                buffer_block(p, block);
            }
        }
        let before = self.sm.height();
        self.drain_buffered();
        let replayed = self.sm.height() - before;
        if let Some(p) = self.persist() {
            p.stats.blocks_replayed = replayed;
        }
        Ok(())
    }

    /// A finalized block from consensus, with a store.
    pub(super) fn execute_durable(&mut self, block: FinalizedBlock) {
        let height = block.height.0;
        let executed = self.sm.height();
        let Some(p) = self.persist.as_deref_mut() else {
            return;
        };
        if p.failed.is_some() {
            return;
        }
        if height > p.logged_up_to {
            let bytes = LoggedBlock::encode(&block);
            match p.store.pool_append(height, RECORD_FINALIZED_BLOCK, &bytes) {
                Ok(()) => {
                    p.stats.blocks_logged += 1;
                    p.stats.block_bytes_logged += bytes.len() as u64;
                    p.logged_up_to = height;
                }
                Err(StoreError::RecordTooLarge) => p.stats.blocks_not_logged += 1,
                Err(e) => {
                    p.failed = Some(e);
                    return;
                }
            }
        }
        if height <= executed && !p.blocked {
            return; // executed already (replayed from the log)
        }
        if p.blocked || height != executed + 1 || !p.buffered.is_empty() {
            buffer_block(p, block);
            self.drain_buffered();
            return;
        }
        self.execute_block(block);
    }

    /// Executes buffered blocks that follow the state.
    fn drain_buffered(&mut self) {
        loop {
            let next = self.sm.height() + 1;
            let Some(p) = self.persist.as_deref_mut() else {
                return;
            };
            if p.blocked || p.failed.is_some() {
                return;
            }
            let Some((&h, _)) = p.buffered.first_key_value() else {
                return;
            };
            if h > next {
                return;
            }
            let Some((_, block)) = p.buffered.pop_first() else {
                return;
            };
            p.buffered_bytes = p
                .buffered_bytes
                .saturating_sub(block.block.payload.size_bytes());
            if h == next {
                self.execute_block(block);
            }
        }
    }

    /// At checkpoint heights (with a store): aborts paused executions, writes the checkpoint
    /// and returns the state hash consensus certifies there; elsewhere `state_hash`.
    pub(super) fn checkpoint_if_due(&mut self, height: u64, state_hash: CryptoHash) -> CryptoHash {
        let Some(p) = self.persist.as_deref_mut() else {
            return state_hash;
        };
        if !is_checkpoint_height(height, p.cup_interval) {
            return state_hash;
        }
        self.sm.abort_paused_executions();
        let state_hash = self.sm.state_hash(height).unwrap_or(state_hash);
        let files = match state_files(&self.sm) {
            Ok(files) => files,
            Err(_) => {
                // Deterministic on every replica: certify the state hash with an empty root.
                p.stats.codec_failures += 1;
                return bind_checkpoint(height, &state_hash, &[0; 32]);
            }
        };
        let views = as_state_files(&files);
        let root = match p.store.checkpoint(height, &views) {
            Ok(stats) => {
                p.stats.checkpoints += 1;
                p.stats.checkpoint_bytes_written += stats.chunk_bytes_written;
                p.stats.checkpoint_height = height;
                let previous = p.local.replace(LocalCheckpoint { height, state_hash });
                note_retained(p, previous);
                Some(stats.root_hash)
            }
            Err(StoreError::StaleHeight) => None,
            Err(e) => {
                p.failed.get_or_insert(e);
                None
            }
        };
        // The root every replica computes, whatever happened to this node's disk.
        let root = root.unwrap_or_else(|| {
            Manifest::compute(CHECKPOINT_CHUNK_BYTES, &views)
                .map(|m| m.root_hash())
                .unwrap_or([0; 32])
        });
        bind_checkpoint(height, &state_hash, &root)
    }

    /// Makes the pool log durable before anything is sent; false if the store failed.
    pub(super) fn make_durable(&mut self) -> bool {
        let watermark = self.replica.signing_watermark().0;
        let Some(p) = self.persist.as_deref_mut() else {
            return true;
        };
        if p.failed.is_some() {
            return false;
        }
        while let Some(artifact) = self.replica.poll_signed() {
            let height = artifact.id().height;
            let bytes = artifact.encode();
            let r = match p.store.pool_append(height, RECORD_OWN_ARTIFACT, &bytes) {
                Err(StoreError::RecordTooLarge) => {
                    p.stats.own_artifacts_not_logged += 1;
                    p.store
                        .pool_append(height, RECORD_SIGNING_FLOOR, &height.to_le_bytes())
                        .map(|()| 8)
                }
                r => r.map(|()| bytes.len()),
            };
            match r {
                Ok(len) => p.stats.own_artifact_bytes_logged += len as u64,
                Err(e) => {
                    p.failed = Some(e);
                    return false;
                }
            }
            p.stats.own_artifacts_logged += 1;
        }
        while let Some(artifact) = self.replica.poll_finality() {
            let height = artifact.id().height;
            let bytes = encode_finality(&artifact);
            match p.store.pool_append(height, RECORD_FINALITY, &bytes) {
                Ok(()) => {
                    p.stats.finality_logged += 1;
                    p.stats.finality_bytes_logged += bytes.len() as u64;
                }
                // Not needed for safety: peers have it, or the node re-finalizes from shares.
                Err(StoreError::RecordTooLarge) => p.stats.finality_not_logged += 1,
                Err(e) => {
                    p.failed = Some(e);
                    return false;
                }
            }
        }
        if watermark > p.durable_watermark {
            let bytes = watermark.to_le_bytes();
            if let Err(e) = p
                .store
                .pool_append(watermark, RECORD_SIGNING_WATERMARK, &bytes)
            {
                p.failed = Some(e);
                return false;
            }
        }
        if p.store.pool_pending() > 0 {
            if let Err(e) = p.store.pool_sync() {
                p.failed = Some(e);
                return false;
            }
            p.stats.pool_syncs += 1;
        }
        p.durable_watermark = p.durable_watermark.max(watermark);
        true
    }

    /// After every input: store the CUP, purge, start or finish state sync.
    pub(super) fn after_step(&mut self, now: Time) {
        let cup_height = self.replica.cup_height().0;
        let executed = self.sm.height();
        let Some(p) = self.persist.as_deref_mut() else {
            return;
        };
        if p.failed.is_some() {
            return;
        }
        if cup_height > p.stored_cup {
            let bytes = postcard::to_allocvec(self.replica.cup()).unwrap_or_default();
            // Drops the checkpoint retained for the previous CUP.
            if let Err(e) = p.store.put_cup_at(cup_height, &bytes) {
                p.failed = Some(e);
                return;
            }
            p.stored_cup = cup_height;
            note_retained(p, None);
        }
        let floor = p.local.map_or(0, |l| l.height).min(p.stored_cup);
        if floor > 0 && floor + 1 > p.store.pool_purged_below() {
            if let Err(e) = p.store.pool_purge_below(floor + 1) {
                p.failed = Some(e);
                return;
            }
        }
        // What state the node needs and does not have.
        let target = match p.repair {
            Some((height, root)) if height >= cup_height => {
                Some(SyncTarget::LocalRoot { height, root })
            }
            _ if p.blocked || cup_height > executed => Some(SyncTarget::Certified {
                height: cup_height,
                bound: self.replica.cup().content.state_hash,
            }),
            _ => None,
        };
        self.stalled = target.is_some();
        if let Some(t) = target {
            p.blocked = true;
            if p.sync.as_ref().is_none_or(|s| s.target() != t) {
                if let Some(old) = p.sync.take() {
                    old.abort(&mut p.store);
                }
                let me = self.replica.node_id();
                let peers: Vec<NodeId> = self
                    .replica
                    .members()
                    .iter()
                    .copied()
                    .filter(|m| *m != me)
                    .collect();
                p.syncs_started += 1;
                let rotation = p.syncs_started + executed as usize;
                p.sync = Some(SyncClient::new(t, peers, rotation));
                self.sync_tick(now);
            }
        }
        self.finish_sync();
    }

    /// Drives the running sync's timers.
    pub(super) fn sync_tick(&mut self, now: Time) {
        let mut out = Vec::new();
        if let Some(p) = self.persist.as_deref_mut() {
            if let Some(sync) = p.sync.as_mut() {
                sync.tick(now, &mut out);
                p.stats.last_sync = sync.progress();
            }
        }
        self.send_sync(out, now);
    }

    pub(super) fn sync_deadline(&self) -> Option<Time> {
        let p = self.persist.as_deref()?;
        if p.failed.is_some() || self.replica.members().len() < 2 {
            return None;
        }
        p.sync.as_ref()?.deadline()
    }

    fn send_sync(&mut self, out: Vec<(NodeId, UpperMessage)>, now: Time) {
        for (peer, message) in out {
            self.replica.send_upper(Some(peer), message.encode(), now);
        }
    }

    /// A state sync message from `from` (a request to serve, or an answer to our sync).
    pub(super) fn on_sync_message(&mut self, from: NodeId, message: UpperMessage, now: Time) {
        let Some(p) = self.persist.as_deref_mut() else {
            if let UpperMessage::ManifestRequest { height }
            | UpperMessage::ChunkRequest { height, .. } = message
            {
                // No store, nothing to serve.
                let reply = UpperMessage::Unavailable { height };
                self.replica.send_upper(Some(from), reply.encode(), now);
            }
            return;
        };
        if p.failed.is_some() {
            return;
        }
        let mut out = Vec::new();
        match message {
            UpperMessage::ManifestRequest { height } => {
                if let Some(reply) = serve_manifest(p, &self.sm, from, height, now) {
                    out.push((from, reply));
                }
            }
            UpperMessage::ChunkRequest { height, index } => {
                if let Some(reply) = serve_chunk(p, from, height, index, now) {
                    out.push((from, reply));
                }
            }
            UpperMessage::Manifest {
                height,
                state_hash,
                bytes,
            } => {
                if let Some(sync) = p.sync.as_mut() {
                    let r = sync.on_manifest(
                        &mut p.store,
                        from,
                        height,
                        state_hash,
                        &bytes,
                        now,
                        &mut out,
                    );
                    p.stats.last_sync = sync.progress();
                    if let Err(e) = r {
                        p.failed = Some(e);
                    }
                }
            }
            UpperMessage::Chunk {
                height,
                index,
                bytes,
            } => {
                if let Some(sync) = p.sync.as_mut() {
                    let r = sync.on_chunk(&mut p.store, from, height, index, &bytes, now, &mut out);
                    p.stats.last_sync = sync.progress();
                    if let Err(e) = r {
                        p.failed = Some(e);
                    }
                }
            }
            UpperMessage::Unavailable { height } => {
                if let Some(sync) = p.sync.as_mut() {
                    sync.on_unavailable(from, height, now, &mut out);
                }
            }
            UpperMessage::Ingress(_) | UpperMessage::Share(_) => {}
        }
        self.send_sync(out, now);
        self.finish_sync();
    }

    /// Installs a complete sync: commit, load, check, continue with the buffered blocks.
    fn finish_sync(&mut self) {
        let config = self.sm.config().clone();
        let cup_height = self.replica.cup_height().0;
        let Some(p) = self.persist.as_deref_mut() else {
            return;
        };
        if !p.sync.as_ref().is_some_and(|s| s.is_complete()) {
            return;
        }
        let Some(sync) = p.sync.take() else {
            return;
        };
        let target = sync.target();
        let done = match sync.finish(&mut p.store) {
            Ok(done) => done,
            Err(e) => {
                p.failed = Some(e);
                return;
            }
        };
        // A sync to a height above the latest checkpoint may retain it (at the CUP height).
        let previous = p.local.take();
        note_retained(p, previous);
        p.stats.last_sync = done.progress;
        let loaded = match read_files(&mut p.store) {
            Ok(files) => state_from_files(config, &files),
            Err(e) => Err(StateFilesError::Store(e)),
        };
        let sm = match loaded {
            Ok(sm) if sm.height() == done.height => sm,
            Ok(_) | Err(StateFilesError::Codec | StateFilesError::Mismatch) => {
                // Certified files that do not decode: a codec bug, not a peer's lie.
                p.stats.codec_failures += 1;
                p.failed = Some(StoreError::Corrupt(Structure::Manifest));
                return;
            }
            Err(StateFilesError::Store(e)) => {
                // The chunks were just verified; a fault since: sync again.
                if matches!(e, StoreError::BadChunk(_)) {
                    p.stats.bad_chunks_detected += 1;
                    p.repair = Some((done.height, done.root));
                } else {
                    p.failed = Some(e);
                }
                return;
            }
        };
        let state_hash = sm.state_hash(done.height).unwrap_or([0; 32]);
        let bound = bind_checkpoint(done.height, &state_hash, &done.root);
        if let SyncTarget::Certified { bound: want, .. } = target {
            if bound != want {
                p.stats.codec_failures += 1;
                p.failed = Some(StoreError::Corrupt(Structure::Manifest));
                return;
            }
        }
        p.local = Some(LocalCheckpoint {
            height: done.height,
            state_hash,
        });
        p.stats.checkpoint_height = done.height;
        p.stats.syncs_completed += 1;
        p.repair = None;
        p.blocked = false;
        self.sm = sm;
        self.trees.clear();
        self.stalled = false;
        if done.height > cup_height {
            self.replica.set_state_hash(Height(done.height), bound);
        }
        self.drain_buffered();
    }
}

fn buffer_block(p: &mut Persist, block: FinalizedBlock) {
    let bytes = block.block.payload.size_bytes();
    if p.buffered.contains_key(&block.height.0)
        || p.buffered.len() >= BUFFERED_BLOCKS_MAX
        || p.buffered_bytes + bytes > BUFFERED_BLOCK_BYTES_MAX
    {
        return;
    }
    p.buffered_bytes += bytes;
    p.buffered.insert(block.height.0, block);
}

/// Whether `from` may be served one more request now.
fn serve_allowed(p: &mut Persist, from: NodeId, now: Time) -> bool {
    let entry = p.serve.entry(from).or_insert((now, 0));
    if now >= entry.0.plus_millis(SERVE_WINDOW_MS) {
        *entry = (now, 0);
    }
    if entry.1 >= SERVE_REQUESTS_PER_WINDOW_MAX {
        return false;
    }
    entry.1 += 1;
    true
}

/// The state hash of the store's retained checkpoint at `height`: known, or computed once by
/// loading its files (after a restart). `None` if there is none at `height` or it is bad.
fn retained_state_hash(p: &mut Persist, sm: &StateMachine, height: u64) -> Option<CryptoHash> {
    if p.store.retained_height() != Some(height) {
        return None;
    }
    if let Some(r) = p.retained.filter(|r| r.height == height) {
        return Some(r.state_hash);
    }
    let loaded = match read_files_at(&mut p.store, height) {
        Ok(files) => state_from_files(sm.config().clone(), &files),
        Err(e) => {
            if matches!(e, StoreError::BadChunk(_)) {
                p.stats.bad_chunks_detected += 1;
            }
            return None;
        }
    };
    let state_hash = match loaded {
        Ok(state) if state.height() == height => state.state_hash(height)?,
        _ => {
            p.stats.codec_failures += 1;
            return None;
        }
    };
    p.retained = Some(LocalCheckpoint { height, state_hash });
    Some(state_hash)
}

/// Serves the manifest of the latest checkpoint (if its state is loaded) or of the retained
/// one, by height.
fn serve_manifest(
    p: &mut Persist,
    sm: &StateMachine,
    from: NodeId,
    height: u64,
    now: Time,
) -> Option<UpperMessage> {
    if !serve_allowed(p, from, now) {
        return None;
    }
    let local = p
        .local
        .filter(|l| l.height == height && !p.blocked)
        .or_else(|| {
            let state_hash = retained_state_hash(p, sm, height)?;
            Some(LocalCheckpoint { height, state_hash })
        });
    let manifest = p.store.manifest_at(height).filter(|_| local.is_some());
    Some(match (local, manifest) {
        (Some(l), Some(m)) => {
            p.stats.served += 1;
            if p.store.retained_height() == Some(height) {
                p.stats.served_retained += 1;
            }
            UpperMessage::Manifest {
                height,
                state_hash: l.state_hash,
                bytes: m.to_bytes(),
            }
        }
        _ => UpperMessage::Unavailable { height },
    })
}

fn serve_chunk(
    p: &mut Persist,
    from: NodeId,
    height: u64,
    index: u32,
    now: Time,
) -> Option<UpperMessage> {
    if !serve_allowed(p, from, now) {
        return None;
    }
    let latest = !p.blocked && p.local.is_some_and(|l| l.height == height);
    if !latest && p.store.retained_height() != Some(height) {
        return Some(UpperMessage::Unavailable { height });
    }
    Some(match p.store.read_chunk_of(height, index) {
        Ok(bytes) => {
            p.stats.served += 1;
            if !latest {
                p.stats.served_retained += 1;
            }
            UpperMessage::Chunk {
                height,
                index,
                bytes,
            }
        }
        Err(StoreError::BadChunk(_)) => {
            p.stats.bad_chunks_detected += 1;
            UpperMessage::Unavailable { height }
        }
        Err(StoreError::NotFound | StoreError::NoCheckpoint) => {
            UpperMessage::Unavailable { height }
        }
        Err(e) => {
            p.failed = Some(e);
            return None;
        }
    })
}
