//! Authenticated, encrypted node-to-node channels: Noise `XX` (25519, ChaChaPoly, SHA-256)
//! framed over any byte stream.
//!
//! Binding to node ids: each node's Noise static key is derived from its Ed25519 node key,
//! and the handshake payload of messages 2 and 3 is the node key's signature over
//! `"cairn-noise-static" ‖ static key`. A peer's handshake completes only if that signature
//! verifies under the registered key of the node the driver says is at the other end.
//!
//! Transport messages carry an explicit nonce (Noise's stateless transport), so a lost or
//! reordered frame costs only itself; the layers above are idempotent and retransmit, which
//! is also why replayed frames are harmless (they re-deliver an artifact already held).
//! Randomness (ephemeral keys) comes from a ChaCha20 stream seeded by the driver, through a
//! custom `CryptoResolver`: the node has no entropy source of its own.
//!
//! Stream framing (all integers big-endian):
//!
//! ```text
//! +-----------+--------+---------------------------------------------+
//! | len: u32  | type:u8| body (len − 1 bytes)                        |
//! +-----------+--------+---------------------------------------------+
//! type 1/2/3  handshake message 1/2/3 (Noise bytes)
//! type 4      transport: nonce u64 ‖ ciphertext of
//!             [ message seq u32 | chunk index u16 | chunk count u16 | chunk bytes ]
//! type 5      reset request (empty body): "I cannot decrypt you, handshake again"
//! ```
//!
//! A message above [`CHUNK_BYTES`] travels in several transport frames and is reassembled.

use crate::crypto::ed25519::{NodePublicKey, NodeSigningKey};
use crate::types::{domain_hash, NodeIndex, Time};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{HandshakeState, StatelessTransportState};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_SHA256";
/// Largest Noise message (the Noise spec's limit).
pub const NOISE_MESSAGE_BYTES_MAX: usize = 65535;
/// Noise AEAD tag.
pub const TAG_BYTES: usize = 16;
/// Frame header: length and type.
pub const FRAME_HEADER_BYTES: usize = 5;
/// Largest frame body: a transport nonce plus a full Noise message.
pub const FRAME_BODY_BYTES_MAX: usize = 1 + 8 + NOISE_MESSAGE_BYTES_MAX;
/// Header inside a transport plaintext.
pub const CHUNK_HEADER_BYTES: usize = 8;
/// Message bytes per transport frame.
pub const CHUNK_BYTES: usize = NOISE_MESSAGE_BYTES_MAX - TAG_BYTES - CHUNK_HEADER_BYTES;
/// Largest message a channel carries.
pub const CHANNEL_MESSAGE_BYTES_MAX: usize = 6 * 1024 * 1024;
/// Partially received messages kept per peer; the oldest is dropped beyond this.
pub const PARTIAL_MESSAGES_PER_PEER_MAX: usize = 4;
/// Messages queued for a peer while its handshake runs.
pub const QUEUED_MESSAGES_PER_PEER_MAX: usize = 256;
/// Handshake retry interval, and the least time between reset requests.
pub const HANDSHAKE_RETRY_MS: u64 = 250;

const FRAME_HS1: u8 = 1;
const FRAME_HS2: u8 = 2;
const FRAME_HS3: u8 = 3;
const FRAME_DATA: u8 = 4;
const FRAME_RESET: u8 = 5;
const DOMAIN_NOISE_STATIC: &str = "cairn-noise-static";

/// Why a frame was dropped. Every error is local to one frame or one handshake attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    UnknownPeer,
    BadFrame,
    Handshake,
    PeerNotAuthenticated,
    Decrypt,
    BadChunk,
    TooLarge,
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelError::UnknownPeer => "bytes from an unknown peer",
            ChannelError::BadFrame => "malformed frame",
            ChannelError::Handshake => "Noise handshake failed",
            ChannelError::PeerNotAuthenticated => "peer's static key is not signed by its node key",
            ChannelError::Decrypt => "transport frame does not decrypt",
            ChannelError::BadChunk => "malformed message chunk",
            ChannelError::TooLarge => "message too large",
        })
    }
}

/// ChaCha20 as Noise's RNG.
struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// Snow's pure-Rust primitives, with randomness from an injected seed.
struct SeededResolver {
    seed: [u8; 32],
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.seed))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

struct Session {
    transport: StatelessTransportState,
    send_nonce: u64,
}

struct Pending {
    state: HandshakeState,
    initiator: bool,
    started: Time,
}

struct Partial {
    count: u16,
    bytes: usize,
    chunks: BTreeMap<u16, Vec<u8>>,
}

#[derive(Default)]
struct Peer {
    rx: Vec<u8>,
    session: Option<Session>,
    pending: Option<Pending>,
    queued: VecDeque<Vec<u8>>,
    next_seq: u32,
    partial: BTreeMap<u32, Partial>,
    last_reset_sent: Option<Time>,
    last_attempt: Option<Time>,
}

/// Counters, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub frames_in: u64,
    pub frames_dropped: u64,
    pub handshakes_completed: u64,
    pub messages_in: u64,
    pub messages_out: u64,
}

/// All of one node's channels.
pub struct Channels {
    me: NodeIndex,
    node_key: NodeSigningKey,
    static_secret: [u8; 32],
    static_public: [u8; 32],
    static_signature: [u8; 64],
    peer_keys: Vec<NodePublicKey>,
    peers: Vec<Peer>,
    rng: ChaCha20Rng,
    out: VecDeque<(NodeIndex, Vec<u8>)>,
    stats: ChannelStats,
}

impl Channels {
    /// Channels for node `me` among nodes with `peer_keys` (indexed like the registry);
    /// `entropy` seeds the ephemeral keys.
    pub fn new(
        me: NodeIndex,
        node_key: NodeSigningKey,
        peer_keys: Vec<NodePublicKey>,
        entropy: [u8; 32],
    ) -> Channels {
        let static_secret = domain_hash(DOMAIN_NOISE_STATIC, &node_key.seed());
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .expect("snow built with use-curve25519");
        dh.set(&static_secret);
        let mut static_public = [0u8; 32];
        static_public.copy_from_slice(dh.pubkey());
        let static_signature = node_key.sign(&static_binding(&static_public));
        let peers = (0..peer_keys.len()).map(|_| Peer::default()).collect();
        Channels {
            me,
            node_key,
            static_secret,
            static_public,
            static_signature,
            peer_keys,
            peers,
            rng: ChaCha20Rng::from_seed(entropy),
            out: VecDeque::new(),
            stats: ChannelStats::default(),
        }
    }

    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// The node key whose signature binds this node's static key.
    pub fn node_key(&self) -> &NodeSigningKey {
        &self.node_key
    }

    /// This node's Noise static public key.
    pub fn static_public(&self) -> [u8; 32] {
        self.static_public
    }

    pub fn is_established(&self, peer: NodeIndex) -> bool {
        self.peers
            .get(peer as usize)
            .is_some_and(|p| p.session.is_some())
    }

    /// Sends `message` to `peer`, starting a handshake (and queueing) if there is no session.
    pub fn send(&mut self, peer: NodeIndex, message: &[u8], now: Time) {
        if peer == self.me || message.len() > CHANNEL_MESSAGE_BYTES_MAX {
            return;
        }
        let Some(p) = self.peers.get_mut(peer as usize) else {
            return;
        };
        if p.session.is_none() {
            if p.queued.len() < QUEUED_MESSAGES_PER_PEER_MAX {
                p.queued.push_back(message.to_vec());
            }
            if p.pending.is_none() {
                self.initiate(peer, now);
            }
            return;
        }
        self.stats.messages_out += 1;
        self.write_message(peer, message);
    }

    /// The driver's connection to `peer` was (re)opened: partial frames are void.
    pub fn reset_stream(&mut self, peer: NodeIndex) {
        if let Some(p) = self.peers.get_mut(peer as usize) {
            p.rx.clear();
        }
    }

    /// Retries handshakes that stalled. Call at [`Channels::next_deadline`].
    pub fn tick(&mut self, now: Time) {
        for peer in 0..self.peers.len() as NodeIndex {
            if peer == self.me {
                continue;
            }
            let p = &self.peers[peer as usize];
            let stalled = p
                .pending
                .as_ref()
                .is_some_and(|h| now.saturating_sub(h.started) >= retry_ns());
            let idle_without_session = p.session.is_none()
                && p.pending.is_none()
                && p.last_attempt
                    .is_none_or(|t| now.saturating_sub(t) >= retry_ns());
            if stalled || idle_without_session {
                self.peers[peer as usize].pending = None;
                self.initiate(peer, now);
            }
        }
    }

    /// When [`Channels::tick`] next has work.
    pub fn next_deadline(&self) -> Option<Time> {
        self.peers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as NodeIndex != self.me)
            .filter_map(|(_, p)| match (&p.pending, &p.session) {
                (Some(h), _) => Some(Time(h.started.0.saturating_add(retry_ns()))),
                (None, None) => Some(Time(
                    p.last_attempt.map_or(0, |t| t.0).saturating_add(retry_ns()),
                )),
                (None, Some(_)) => None,
            })
            .min()
    }

    /// Bytes to write to a peer's stream.
    pub fn poll_transmit(&mut self) -> Option<(NodeIndex, Vec<u8>)> {
        self.out.pop_front()
    }

    /// Bytes read from `peer`'s stream; returns the complete messages they finish.
    pub fn receive(&mut self, peer: NodeIndex, bytes: &[u8], now: Time) -> Vec<Vec<u8>> {
        let mut delivered = Vec::new();
        let Some(p) = self.peers.get_mut(peer as usize) else {
            return delivered;
        };
        if peer == self.me {
            return delivered;
        }
        p.rx.extend_from_slice(bytes);
        loop {
            let p = &mut self.peers[peer as usize];
            if p.rx.len() < 4 {
                break;
            }
            let len = u32::from_be_bytes([p.rx[0], p.rx[1], p.rx[2], p.rx[3]]) as usize;
            if len == 0 || len > FRAME_BODY_BYTES_MAX {
                // The stream is out of step; nothing after this point can be trusted to be
                // aligned, so drop what is buffered (the driver's next read starts fresh).
                p.rx.clear();
                self.stats.frames_dropped += 1;
                break;
            }
            if p.rx.len() < 4 + len {
                break;
            }
            let frame: Vec<u8> = p.rx.drain(..4 + len).skip(4).collect();
            self.stats.frames_in += 1;
            match self.on_frame(peer, &frame, now) {
                Ok(Some(m)) => {
                    self.stats.messages_in += 1;
                    delivered.push(m)
                }
                Ok(None) => {}
                Err(_) => self.stats.frames_dropped += 1,
            }
        }
        delivered
    }

    fn on_frame(
        &mut self,
        peer: NodeIndex,
        frame: &[u8],
        now: Time,
    ) -> Result<Option<Vec<u8>>, ChannelError> {
        let (&kind, body) = frame.split_first().ok_or(ChannelError::BadFrame)?;
        match kind {
            FRAME_HS1 => self.on_hs1(peer, body, now).map(|_| None),
            FRAME_HS2 => self.on_hs2(peer, body).map(|_| None),
            FRAME_HS3 => self.on_hs3(peer, body).map(|_| None),
            FRAME_DATA => self.on_data(peer, body, now),
            FRAME_RESET => {
                let p = &self.peers[peer as usize];
                let recent = p
                    .last_attempt
                    .is_some_and(|t| now.saturating_sub(t) < retry_ns());
                if p.pending.is_none() && !recent {
                    self.initiate(peer, now);
                }
                Ok(None)
            }
            _ => Err(ChannelError::BadFrame),
        }
    }

    fn builder_seed(&mut self) -> [u8; 32] {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        seed
    }

    fn new_handshake(&mut self, initiator: bool) -> Result<HandshakeState, ChannelError> {
        let params = NOISE_PARAMS.parse().map_err(|_| ChannelError::Handshake)?;
        let seed = self.builder_seed();
        let builder = snow::Builder::with_resolver(params, Box::new(SeededResolver { seed }))
            .local_private_key(&self.static_secret)
            .map_err(|_| ChannelError::Handshake)?;
        let built = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        };
        built.map_err(|_| ChannelError::Handshake)
    }

    fn initiate(&mut self, peer: NodeIndex, now: Time) {
        let Ok(mut state) = self.new_handshake(true) else {
            return;
        };
        let mut buf = vec![0u8; 256];
        let Ok(n) = state.write_message(&[], &mut buf) else {
            return;
        };
        self.push_frame(peer, FRAME_HS1, &buf[..n]);
        let p = &mut self.peers[peer as usize];
        p.last_attempt = Some(now);
        p.pending = Some(Pending {
            state,
            initiator: true,
            started: now,
        });
    }

    fn on_hs1(&mut self, peer: NodeIndex, body: &[u8], now: Time) -> Result<(), ChannelError> {
        // Both ends may start at once: the lower index's handshake wins.
        let p = &self.peers[peer as usize];
        if p.pending.as_ref().is_some_and(|h| h.initiator) && self.me < peer {
            return Ok(());
        }
        let mut state = self.new_handshake(false)?;
        let mut scratch = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
        state
            .read_message(body, &mut scratch)
            .map_err(|_| ChannelError::Handshake)?;
        let payload = self.static_signature;
        let n = state
            .write_message(&payload, &mut scratch)
            .map_err(|_| ChannelError::Handshake)?;
        self.push_frame(peer, FRAME_HS2, &scratch[..n]);
        self.peers[peer as usize].pending = Some(Pending {
            state,
            initiator: false,
            started: now,
        });
        Ok(())
    }

    fn on_hs2(&mut self, peer: NodeIndex, body: &[u8]) -> Result<(), ChannelError> {
        let p = &mut self.peers[peer as usize];
        match &p.pending {
            Some(h) if h.initiator => {}
            _ => return Err(ChannelError::Handshake),
        }
        let Some(mut pending) = p.pending.take() else {
            return Err(ChannelError::Handshake);
        };
        let mut scratch = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
        let n = pending
            .state
            .read_message(body, &mut scratch)
            .map_err(|_| ChannelError::Handshake)?;
        self.authenticate(peer, &pending.state, &scratch[..n])?;
        let payload = self.static_signature;
        let n = pending
            .state
            .write_message(&payload, &mut scratch)
            .map_err(|_| ChannelError::Handshake)?;
        self.push_frame(peer, FRAME_HS3, &scratch[..n]);
        self.establish(peer, pending.state)
    }

    fn on_hs3(&mut self, peer: NodeIndex, body: &[u8]) -> Result<(), ChannelError> {
        let p = &mut self.peers[peer as usize];
        match &p.pending {
            Some(h) if !h.initiator => {}
            _ => return Err(ChannelError::Handshake),
        }
        let Some(mut pending) = p.pending.take() else {
            return Err(ChannelError::Handshake);
        };
        let mut scratch = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
        let n = pending
            .state
            .read_message(body, &mut scratch)
            .map_err(|_| ChannelError::Handshake)?;
        self.authenticate(peer, &pending.state, &scratch[..n])?;
        self.establish(peer, pending.state)
    }

    /// The payload must be the peer's node-key signature over the static key it used.
    fn authenticate(
        &self,
        peer: NodeIndex,
        state: &HandshakeState,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        let remote = state
            .get_remote_static()
            .ok_or(ChannelError::PeerNotAuthenticated)?;
        let key = self
            .peer_keys
            .get(peer as usize)
            .ok_or(ChannelError::UnknownPeer)?;
        key.verify(&static_binding(remote), payload)
            .map_err(|_| ChannelError::PeerNotAuthenticated)
    }

    fn establish(&mut self, peer: NodeIndex, state: HandshakeState) -> Result<(), ChannelError> {
        let transport = state
            .into_stateless_transport_mode()
            .map_err(|_| ChannelError::Handshake)?;
        let p = &mut self.peers[peer as usize];
        p.session = Some(Session {
            transport,
            send_nonce: 0,
        });
        p.partial.clear();
        self.stats.handshakes_completed += 1;
        let queued: Vec<Vec<u8>> = p.queued.drain(..).collect();
        for m in queued {
            self.stats.messages_out += 1;
            self.write_message(peer, &m);
        }
        Ok(())
    }

    fn write_message(&mut self, peer: NodeIndex, message: &[u8]) {
        let p = &mut self.peers[peer as usize];
        let seq = p.next_seq;
        p.next_seq = p.next_seq.wrapping_add(1);
        let count = message.len().div_ceil(CHUNK_BYTES).max(1);
        let mut frames = Vec::with_capacity(count);
        for i in 0..count {
            let chunk = message
                .get(i * CHUNK_BYTES..((i + 1) * CHUNK_BYTES).min(message.len()))
                .unwrap_or(&[]);
            let mut plain = Vec::with_capacity(CHUNK_HEADER_BYTES + chunk.len());
            plain.extend_from_slice(&seq.to_be_bytes());
            plain.extend_from_slice(&(i as u16).to_be_bytes());
            plain.extend_from_slice(&(count as u16).to_be_bytes());
            plain.extend_from_slice(chunk);
            let Some(session) = p.session.as_mut() else {
                return;
            };
            let nonce = session.send_nonce;
            session.send_nonce += 1;
            let mut body = vec![0u8; 8 + plain.len() + TAG_BYTES];
            body[..8].copy_from_slice(&nonce.to_be_bytes());
            match session
                .transport
                .write_message(nonce, &plain, &mut body[8..])
            {
                Ok(n) => body.truncate(8 + n),
                Err(_) => return,
            }
            frames.push(body);
        }
        for body in frames {
            self.push_frame(peer, FRAME_DATA, &body);
        }
    }

    fn on_data(
        &mut self,
        peer: NodeIndex,
        body: &[u8],
        now: Time,
    ) -> Result<Option<Vec<u8>>, ChannelError> {
        let p = &mut self.peers[peer as usize];
        let (nonce, cipher) = body.split_at_checked(8).ok_or(ChannelError::BadFrame)?;
        let nonce = u64::from_be_bytes(nonce.try_into().map_err(|_| ChannelError::BadFrame)?);
        let mut plain = vec![0u8; cipher.len()];
        let decrypted = p
            .session
            .as_ref()
            .map(|s| s.transport.read_message(nonce, cipher, &mut plain));
        let n = match decrypted {
            Some(Ok(n)) => n,
            _ => {
                // No session, or a stale one (the peer restarted): ask for a new handshake,
                // at most once per retry interval.
                let due = p
                    .last_reset_sent
                    .is_none_or(|t| now.saturating_sub(t) >= retry_ns());
                if due && p.pending.is_none() {
                    p.last_reset_sent = Some(now);
                    self.push_frame(peer, FRAME_RESET, &[]);
                }
                return Err(ChannelError::Decrypt);
            }
        };
        plain.truncate(n);
        self.reassemble(peer, &plain)
    }

    fn reassemble(
        &mut self,
        peer: NodeIndex,
        plain: &[u8],
    ) -> Result<Option<Vec<u8>>, ChannelError> {
        if plain.len() < CHUNK_HEADER_BYTES {
            return Err(ChannelError::BadChunk);
        }
        let seq = u32::from_be_bytes([plain[0], plain[1], plain[2], plain[3]]);
        let index = u16::from_be_bytes([plain[4], plain[5]]);
        let count = u16::from_be_bytes([plain[6], plain[7]]);
        let chunk = &plain[CHUNK_HEADER_BYTES..];
        if count == 0
            || index >= count
            || (count as usize) * CHUNK_BYTES > CHANNEL_MESSAGE_BYTES_MAX + CHUNK_BYTES
        {
            return Err(ChannelError::BadChunk);
        }
        if count == 1 {
            return Ok(Some(chunk.to_vec()));
        }
        let p = &mut self.peers[peer as usize];
        if !p.partial.contains_key(&seq) && p.partial.len() >= PARTIAL_MESSAGES_PER_PEER_MAX {
            let oldest = p.partial.keys().next().copied();
            if let Some(k) = oldest {
                p.partial.remove(&k);
            }
        }
        let entry = p.partial.entry(seq).or_insert(Partial {
            count,
            bytes: 0,
            chunks: BTreeMap::new(),
        });
        if entry.count != count {
            return Err(ChannelError::BadChunk);
        }
        if entry.bytes + chunk.len() > CHANNEL_MESSAGE_BYTES_MAX {
            p.partial.remove(&seq);
            return Err(ChannelError::TooLarge);
        }
        if entry.chunks.insert(index, chunk.to_vec()).is_none() {
            entry.bytes += chunk.len();
        }
        if entry.chunks.len() < count as usize {
            return Ok(None);
        }
        let Some(done) = p.partial.remove(&seq) else {
            return Ok(None);
        };
        Ok(Some(done.chunks.into_values().flatten().collect()))
    }

    fn push_frame(&mut self, peer: NodeIndex, kind: u8, body: &[u8]) {
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
        frame.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
        frame.push(kind);
        frame.extend_from_slice(body);
        // Frames to one peer coalesce into one write when they are queued back to back.
        match self.out.back_mut() {
            Some((p, bytes)) if *p == peer && bytes.len() + frame.len() <= FRAME_BODY_BYTES_MAX => {
                bytes.extend_from_slice(&frame)
            }
            _ => self.out.push_back((peer, frame)),
        }
    }
}

fn static_binding(static_public: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(1 + DOMAIN_NOISE_STATIC.len() + static_public.len());
    m.push(DOMAIN_NOISE_STATIC.len() as u8);
    m.extend_from_slice(DOMAIN_NOISE_STATIC.as_bytes());
    m.extend_from_slice(static_public);
    m
}

fn retry_ns() -> u64 {
    HANDSHAKE_RETRY_MS * crate::types::NANOS_PER_MILLI
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Channels, Channels) {
        let a = NodeSigningKey::from_seed(&[1; 32]);
        let b = NodeSigningKey::from_seed(&[2; 32]);
        let keys = vec![a.public_key(), b.public_key()];
        (
            Channels::new(0, a, keys.clone(), [7; 32]),
            Channels::new(1, b, keys, [8; 32]),
        )
    }

    /// Moves every pending transmission across; returns messages each side received.
    fn pump(a: &mut Channels, b: &mut Channels, now: Time) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
        loop {
            let mut moved = false;
            while let Some((to, bytes)) = a.poll_transmit() {
                assert_eq!(to, 1);
                at_b.extend(b.receive(0, &bytes, now));
                moved = true;
            }
            while let Some((to, bytes)) = b.poll_transmit() {
                assert_eq!(to, 0);
                at_a.extend(a.receive(1, &bytes, now));
                moved = true;
            }
            if !moved {
                return (at_a, at_b);
            }
        }
    }

    #[test]
    fn handshake_then_messages_both_ways_including_large() {
        let (mut a, mut b) = pair();
        a.send(1, b"hello", Time(0));
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        b.send(0, &big, Time(0));
        let (at_a, at_b) = pump(&mut a, &mut b, Time(0));
        assert_eq!(at_b, vec![b"hello".to_vec()]);
        assert_eq!(at_a, vec![big]);
        assert!(a.is_established(1) && b.is_established(0));
    }

    #[test]
    fn restarted_peer_rehandshakes() {
        let (mut a, mut b) = pair();
        a.send(1, b"one", Time(0));
        pump(&mut a, &mut b, Time(0));
        // b restarts with fresh state and different entropy.
        let bk = NodeSigningKey::from_seed(&[2; 32]);
        let keys = vec![
            NodeSigningKey::from_seed(&[1; 32]).public_key(),
            bk.public_key(),
        ];
        let mut b = Channels::new(1, bk, keys, [9; 32]);
        let t = Time::from_millis(10);
        a.send(1, b"lost", t);
        let (_, at_b) = pump(&mut a, &mut b, t);
        assert!(at_b.is_empty(), "stale session must not decrypt");
        let t = Time::from_millis(2 * HANDSHAKE_RETRY_MS);
        a.tick(t);
        b.tick(t);
        pump(&mut a, &mut b, t);
        a.send(1, b"two", t);
        let (_, at_b) = pump(&mut a, &mut b, t);
        assert_eq!(at_b, vec![b"two".to_vec()]);
    }

    #[test]
    fn impostor_static_key_is_refused() {
        let a = NodeSigningKey::from_seed(&[1; 32]);
        let b = NodeSigningKey::from_seed(&[2; 32]);
        let mallory = NodeSigningKey::from_seed(&[3; 32]);
        let keys = vec![a.public_key(), b.public_key()];
        let mut a = Channels::new(0, a, keys.clone(), [7; 32]);
        // Mallory claims to be node 1 but signs with her own key.
        let mut m = Channels::new(1, mallory, keys, [8; 32]);
        a.send(1, b"secret", Time(0));
        let (_, at_m) = pump(&mut a, &mut m, Time(0));
        assert!(at_m.is_empty());
        assert!(!a.is_established(1));
    }
}
