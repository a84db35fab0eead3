//! Fuzz-style robustness: random and mutated bytes into every artifact decoder, the wire
//! decoder, the registry decoders, the channel, and (mutated but decodable) artifacts into
//! the consensus validator. Errors are fine; panics are not. Deterministic (fixed seeds).

use node::consensus::*;
use node::crypto::dealer::{deal_subnet, NodeKeys, NodeSecrets, SubnetKeys, SubnetRecord};
use node::crypto::ed25519::NodeSigningKey;
use node::p2p::channel::Channels;
use node::p2p::{ArtifactId, PeerStatus, WireBody, WireMessage};
use node::types::{FixedBytes, Height, Rank, Time};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

fn rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

fn sample_artifacts() -> Vec<Artifact> {
    let block = Block {
        version: BLOCK_VERSION,
        parent: [1; 32],
        height: Height(5),
        rank: Rank(1),
        maker: 2,
        time: Time(77),
        payload: Payload {
            ingress: vec![vec![1, 2, 3], vec![9; 40]],
        },
    };
    let content = BlockRef {
        height: Height(5),
        block: block.hash(),
    };
    let sig = FixedBytes([3u8; 48]);
    let beacon = RandomBeacon {
        height: Height(5),
        parent: [4; 32],
        signature: sig,
    };
    vec![
        Artifact::Block(BlockProposal {
            block: block.clone(),
            signature: FixedBytes([5; 64]),
        }),
        Artifact::Notarization(Aggregate {
            content,
            signers: vec![0, 1, 2],
            signature: sig,
        }),
        Artifact::NotarizationShare(Share {
            content,
            signer: 1,
            signature: sig,
        }),
        Artifact::Finalization(Aggregate {
            content,
            signers: vec![0, 2, 3],
            signature: sig,
        }),
        Artifact::FinalizationShare(Share {
            content,
            signer: 3,
            signature: sig,
        }),
        Artifact::RandomBeacon(beacon.clone()),
        Artifact::RandomBeaconShare(RandomBeaconShare {
            height: Height(6),
            parent: beacon.hash(),
            signer: 0,
            signature: sig,
        }),
        Artifact::CatchUpPackage(CatchUpPackage {
            content: CatchUpContent {
                block,
                beacon,
                state_hash: [6; 32],
            },
            signature: sig,
        }),
        Artifact::CatchUpShare(CatchUpShare {
            height: Height(10),
            content: [7; 32],
            signer: 2,
            signature: sig,
        }),
    ]
}

fn mutate(r: &mut ChaCha20Rng, bytes: &[u8]) -> Vec<u8> {
    let mut m = bytes.to_vec();
    for _ in 0..1 + r.next_u32() % 4 {
        match r.next_u32() % 5 {
            0 if !m.is_empty() => {
                let i = r.next_u32() as usize % m.len();
                m[i] ^= 1 << (r.next_u32() % 8);
            }
            1 if !m.is_empty() => {
                let i = r.next_u32() as usize % m.len();
                m[i] = r.next_u32() as u8;
            }
            2 => {
                let cut = r.next_u32() as usize % (m.len() + 1);
                m.truncate(cut);
            }
            3 => {
                let i = r.next_u32() as usize % (m.len() + 1);
                m.insert(i, r.next_u32() as u8);
            }
            _ => {
                let extra = r.next_u32() as usize % 16;
                m.extend((0..extra).map(|_| r.next_u32() as u8));
            }
        }
    }
    m
}

#[test]
fn every_artifact_round_trips_and_survives_mutation() {
    let mut r = rng(1);
    let mut decoded_mutants = 0;
    for a in sample_artifacts() {
        let bytes = a.encode();
        assert_eq!(Artifact::decode(&bytes), Ok(a.clone()));
        for _ in 0..3000 {
            let m = mutate(&mut r, &bytes);
            if let Ok(x) = Artifact::decode(&m) {
                decoded_mutants += 1;
                let _ = x.id();
                let _ = x.encode();
            }
        }
    }
    assert!(
        decoded_mutants > 0,
        "some mutants should still decode (and be validated later)"
    );
}

#[test]
fn random_bytes_into_every_decoder() {
    let mut r = rng(2);
    for i in 0..30_000 {
        let len = (r.next_u32() % if i % 10 == 0 { 2000 } else { 64 }) as usize;
        let mut b = vec![0u8; len];
        r.fill_bytes(&mut b);
        let _ = Artifact::decode(&b);
        let _ = WireMessage::decode(&b);
        let _ = postcard::from_bytes::<SubnetRecord>(&b);
        let _ = postcard::from_bytes::<NodeSecrets>(&b);
        let _ = postcard::from_bytes::<ArtifactId>(&b);
    }
    // Length prefixes that claim huge collections must fail, not allocate or panic.
    for claim in [u32::MAX, 1 << 30, 70_000] {
        let mut b = vec![1u8, 1];
        let mut v = claim;
        while v >= 0x80 {
            b.push((v as u8) | 0x80);
            v >>= 7;
        }
        b.push(v as u8);
        assert!(WireMessage::decode(&b).is_err());
    }
}

#[test]
fn wire_messages_round_trip_and_survive_mutation() {
    let mut r = rng(3);
    let ids: Vec<ArtifactId> = sample_artifacts().iter().map(|a| a.id()).collect();
    let bodies = vec![
        WireBody::Status(PeerStatus {
            finalized_height: 9,
            cup_height: 0,
        }),
        WireBody::Adverts(ids.clone()),
        WireBody::Requests(ids),
        WireBody::Artifacts(sample_artifacts().iter().map(|a| a.encode()).collect()),
    ];
    for body in bodies {
        let m = WireMessage::new(body);
        let bytes = m.encode();
        assert_eq!(WireMessage::decode(&bytes), Ok(m));
        for _ in 0..3000 {
            let _ = WireMessage::decode(&mutate(&mut r, &bytes));
        }
    }
}

/// Decodable mutants go through full validation; nothing panics, nothing invalid is accepted.
#[test]
fn mutated_artifacts_into_the_validator() {
    let (record, secrets) = deal_subnet(&[9; 32], 4, Time(1_000)).unwrap();
    let keys = SubnetKeys::from_record(&record).unwrap();
    let me = NodeKeys::from_secrets(&secrets[0]).unwrap();
    let mut c = Consensus::new(keys, me, ConsensusParams::FAST, None, Height(0));
    let mut r = rng(4);
    let samples: Vec<Vec<u8>> = sample_artifacts().iter().map(|a| a.encode()).collect();
    let mut fed = 0;
    for i in 0..4000u64 {
        let base = &samples[i as usize % samples.len()];
        if let Ok(a) = Artifact::decode(&mutate(&mut r, base)) {
            c.on_artifact(1 + (i % 3) as u32, a);
            fed += 1;
        }
        if i % 50 == 0 {
            c.step(Time(1_000 + i * 1_000_000));
        }
    }
    c.step(Time(10_000_000_000));
    assert!(fed > 100);
    // Forged artifacts never make progress.
    assert_eq!(c.finalized_height(), Height(0));
    assert_eq!(c.notarized_height(), Height(0));
}

fn pump(a: &mut Channels, b: &mut Channels, now: Time) -> Vec<Vec<u8>> {
    let mut at_b = Vec::new();
    for _ in 0..10 {
        while let Some((_, bytes)) = a.poll_transmit() {
            at_b.extend(b.receive(0, &bytes, now));
        }
        while let Some((_, bytes)) = b.poll_transmit() {
            let _ = a.receive(1, &bytes, now);
        }
    }
    at_b
}

#[test]
fn channel_survives_random_and_mutated_frames() {
    let ka = NodeSigningKey::from_seed(&[1; 32]);
    let kb = NodeSigningKey::from_seed(&[2; 32]);
    let keys = vec![ka.public_key(), kb.public_key()];
    let mut a = Channels::new(0, ka, keys.clone(), [3; 32]);
    let mut b = Channels::new(1, kb, keys, [4; 32]);
    let mut r = rng(5);
    // Garbage before any handshake.
    for _ in 0..2000 {
        let len = (r.next_u32() % 300) as usize;
        let mut junk = vec![0u8; len];
        r.fill_bytes(&mut junk);
        let _ = b.receive(0, &junk, Time(0));
        b.reset_stream(0);
    }
    let _ = pump(&mut a, &mut b, Time(0));
    a.send(1, b"first", Time(1));
    let mut frames = Vec::new();
    while let Some((_, bytes)) = a.poll_transmit() {
        frames.push(bytes);
    }
    // Handshake and data frames, mutated, in and out of order.
    for _ in 0..3000 {
        let f = &frames[r.next_u32() as usize % frames.len()];
        let _ = b.receive(0, &mutate(&mut r, f), Time(2));
        if r.next_u32().is_multiple_of(3) {
            b.reset_stream(0);
        }
    }
    b.reset_stream(0);
    // After all that, a fresh exchange still works end to end.
    // (Stale handshake replies spoil attempts in flight; the retry timer recovers.)
    let mut later = Time::from_millis(10_000);
    for _ in 0..10 {
        later = later.plus_millis(300);
        a.tick(later);
        b.tick(later);
        let _ = pump(&mut a, &mut b, later);
    }
    assert!(a.is_established(1) && b.is_established(0));
    a.send(1, b"still works", later);
    let got = pump(&mut a, &mut b, later);
    assert!(got.contains(&b"still works".to_vec()), "got {got:?}");
    assert!(b.stats().frames_dropped > 0);
}
