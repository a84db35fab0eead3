//! The deterministic state hash: SHA-256 over a canonical, length-prefixed encoding of
//! everything in [`ReplicatedState`] that affects future execution. Field order is fixed
//! here; collections are ordered. Certification (the API layer's state tree) is separate:
//! this hash is the replicas' "same state" check per height.

use sha2::{Digest, Sha256};

use super::{
    CallOrigin, CanisterMessage, CanisterState, CanisterStatus, IngressStatus, Payload, Reject,
    ReplicatedState,
};
use crate::execution::runtime::GlobalValue;

const DOMAIN: &[u8] = b"cairn-state-v1";

struct Feed(Sha256);

impl Feed {
    fn u8(&mut self, v: u8) {
        self.0.update([v]);
    }
    fn u64(&mut self, v: u64) {
        self.0.update(v.to_le_bytes());
    }
    fn u128(&mut self, v: u128) {
        self.0.update(v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.update(b);
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(x) => {
                self.u8(1);
                self.u64(x)
            }
            None => self.u8(0),
        }
    }
    fn reject(&mut self, r: &Reject) {
        self.u8(r.code as u8);
        self.bytes(r.message.as_bytes());
        self.bytes(r.error_code.as_bytes());
    }
    fn origin(&mut self, o: &CallOrigin) {
        match o {
            CallOrigin::Ingress { id, sender } => {
                self.u8(0);
                self.0.update(id);
                self.bytes(sender.as_slice());
            }
            CallOrigin::Canister { caller, callback } => {
                self.u8(1);
                self.bytes(caller.as_slice());
                self.u64(*callback);
            }
            CallOrigin::System => self.u8(2),
        }
    }
    fn message(&mut self, m: &CanisterMessage) {
        match m {
            CanisterMessage::Ingress(i) => {
                self.u8(0);
                self.0.update(i.id);
                self.bytes(i.sender.as_slice());
                self.bytes(i.receiver.as_slice());
                self.bytes(i.method.as_bytes());
                self.bytes(&i.arg);
            }
            CanisterMessage::Request(r) => {
                self.u8(1);
                self.bytes(r.sender.as_slice());
                self.bytes(r.receiver.as_slice());
                self.bytes(r.method.as_bytes());
                self.bytes(&r.payload);
                self.u128(r.cycles);
                self.u64(r.sender_callback);
            }
            CanisterMessage::Response(r) => {
                self.u8(2);
                self.bytes(r.originator.as_slice());
                self.bytes(r.respondent.as_slice());
                self.u64(r.originator_callback);
                match &r.payload {
                    Payload::Reply(b) => {
                        self.u8(0);
                        self.bytes(b);
                    }
                    Payload::Reject(rj) => {
                        self.u8(1);
                        self.reject(rj);
                    }
                }
                self.u128(r.refund);
            }
        }
    }
}

/// SHA-256 of a canister's heap snapshot (memory and globals).
pub fn heap_hash(heap: &crate::execution::runtime::HeapSnapshot) -> [u8; 32] {
    let mut f = Feed(Sha256::new());
    f.bytes(&heap.memory);
    f.u64(heap.globals.len() as u64);
    for g in &heap.globals {
        match g {
            GlobalValue::I32(x) => {
                f.u8(0);
                f.u64(*x as u32 as u64)
            }
            GlobalValue::I64(x) => {
                f.u8(1);
                f.u64(*x as u64)
            }
            GlobalValue::F32(x) => {
                f.u8(2);
                f.u64(*x as u64)
            }
            GlobalValue::F64(x) => {
                f.u8(3);
                f.u64(*x)
            }
        }
    }
    f.0.finalize().into()
}

fn canister(f: &mut Feed, c: &mut CanisterState) {
    f.bytes(c.id.as_slice());
    f.u64(c.controllers.len() as u64);
    for p in &c.controllers {
        f.bytes(p.as_slice());
    }
    f.u8(match c.status {
        CanisterStatus::Running => 1,
        CanisterStatus::Stopping => 2,
        CanisterStatus::Stopped => 3,
    });
    f.u64(c.stop_waiters.len() as u64);
    for w in &c.stop_waiters {
        f.origin(w);
    }
    f.u128(c.cycles);
    f.u64(c.freezing_threshold_seconds);
    f.u64(c.wasm_memory_limit_bytes);
    f.u64(c.compute_allocation);
    f.u64(c.memory_allocation);
    match c.module_hash() {
        Some(h) => {
            f.u8(1);
            f.0.update(h)
        }
        None => f.u8(0),
    }
    match &c.heap {
        Some(h) => {
            let hh = *c.heap_hash.get_or_insert_with(|| heap_hash(h));
            f.u8(1);
            f.0.update(hh);
        }
        None => f.u8(0),
    }
    f.u64(c.stable.pages());
    for (i, chunk) in c.stable.chunks() {
        f.u64(i);
        f.0.update(chunk);
    }
    f.bytes(&c.certified_data);
    f.opt_u64(c.global_timer);
    f.u64(c.version);
    f.u64(c.input_queue.len() as u64);
    for m in &c.input_queue {
        f.message(m);
    }
    f.u64(c.next_call_context);
    f.u64(c.call_contexts.len() as u64);
    for (id, cc) in &c.call_contexts {
        f.u64(*id);
        f.origin(&cc.origin);
        f.u8(cc.responded as u8);
        f.u64(cc.outstanding as u64);
        f.u128(cc.cycles_available);
        f.bytes(cc.method.as_bytes());
    }
    f.u64(c.next_callback);
    f.u64(c.callbacks.len() as u64);
    for (id, cb) in &c.callbacks {
        f.u64(*id);
        f.u64(cb.call_context);
        f.bytes(cb.respondent.as_slice());
        f.u64(cb.on_reply.fun);
        f.u64(cb.on_reply.env);
        f.u64(cb.on_reject.fun);
        f.u64(cb.on_reject.env);
        match cb.on_cleanup {
            Some(c) => {
                f.u8(1);
                f.u64(c.fun);
                f.u64(c.env);
            }
            None => f.u8(0),
        }
    }
    match &c.paused {
        // The paused execution's live state is deterministic (same instructions executed on
        // every replica); its progress stands for it here.
        Some(p) => {
            f.u8(1);
            f.u64(p.execution.instructions);
            f.u64(p.call_context);
            f.u128(p.prepaid_cycles);
            match &p.message {
                Some(m) => {
                    f.u8(1);
                    f.message(m);
                }
                None => f.u8(0),
            }
        }
        None => f.u8(0),
    }
    f.u64(c.instructions_total);
    // An empty chunk store adds nothing, so the hashes of states without one are as before
    // the store existed. Chunks are keyed by their SHA-256: the keys stand for the bytes.
    if !c.wasm_chunk_store.is_empty() {
        f.0.update(b"wasm_chunk_store");
        f.u64(c.wasm_chunk_store.len() as u64);
        for (hash, chunk) in &c.wasm_chunk_store {
            f.0.update(hash);
            f.u64(chunk.len() as u64);
        }
    }
}

impl ReplicatedState {
    /// The deterministic hash of the whole state.
    pub fn hash(&mut self) -> [u8; 32] {
        let mut f = Feed(Sha256::new());
        f.0.update(DOMAIN);
        f.u64(self.height);
        f.u64(self.time_ns);
        f.u64(self.next_canister_index);
        f.0.update(self.randomness);
        f.u64(self.raw_rand_draws);
        f.u64(self.canisters.len() as u64);
        for c in self.canisters.values_mut() {
            canister(&mut f, c);
        }
        f.u64(self.ingress_history.len() as u64);
        for (id, st) in &self.ingress_history {
            f.0.update(id);
            match st {
                IngressStatus::Received => f.u8(0),
                IngressStatus::Processing => f.u8(1),
                IngressStatus::Replied(b) => {
                    f.u8(2);
                    f.bytes(b);
                }
                IngressStatus::Rejected(r) => {
                    f.u8(3);
                    f.reject(r);
                }
                IngressStatus::Done => f.u8(4),
            }
        }
        f.u64(self.ingress_finished_ns.len() as u64);
        for (id, t) in &self.ingress_finished_ns {
            f.0.update(id);
            f.u64(*t);
        }
        f.u64(self.subnet_queue.len() as u64);
        for (origin, caller, method, arg, cycles) in &self.subnet_queue {
            f.origin(origin);
            f.bytes(caller.as_slice());
            f.bytes(method.as_bytes());
            f.bytes(arg);
            f.u128(*cycles);
        }
        f.0.finalize().into()
    }
}
