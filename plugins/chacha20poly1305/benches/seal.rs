//! Keeps the choice of `ring` measured (design.md §5): sealing a 1400-byte packet with
//! ring's ChaCha20-Poly1305 against the pure-Rust `chacha20poly1305` crate, ring's
//! AES-256-GCM for comparison, and what the stage adds around the AEAD (header, session,
//! counter, and on the way in the session lookup and the replay window).
//!
//! `cargo bench -p lametun-stage-chacha20poly1305`

use std::hint::black_box;
use std::time::Instant;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use lametun_core::{PacketBuf, PacketMeta, Stage, Verdict};
use lametun_stage_chacha20poly1305::{Chacha20Poly1305, Cipher, Psk};
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

const PACKET: usize = 1400;
const KEY: [u8; 32] = [0x42; 32];

fn aead(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal_1400");
    g.throughput(Throughput::Bytes(PACKET as u64));
    let mut buf = vec![0xabu8; PACKET];
    let aad = [0u8; 16];

    for (name, alg) in [
        ("ring_chacha20poly1305", &CHACHA20_POLY1305),
        ("ring_aes256gcm", &AES_256_GCM),
    ] {
        let key = LessSafeKey::new(UnboundKey::new(alg, &KEY).unwrap());
        let mut n = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_be_bytes());
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&aad),
                        black_box(&mut buf[..]),
                    )
                    .unwrap();
                let _ = black_box(tag);
            })
        });
    }

    let rc = chacha20poly1305::ChaCha20Poly1305::new(&KEY.into());
    let mut n = 0u64;
    g.bench_function("rustcrypto_chacha20poly1305", |b| {
        b.iter(|| {
            n += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&n.to_be_bytes());
            let tag = rc
                .encrypt_in_place_detached(&nonce.into(), &aad, black_box(&mut buf[..]))
                .unwrap();
            let _ = black_box(tag);
        })
    });
    g.finish();
}

fn stage(c: &mut Criterion) {
    let psk = Psk::from_bytes(KEY);
    let mut g = c.benchmark_group("stage_1400");
    g.throughput(Throughput::Bytes(PACKET as u64));
    let meta = PacketMeta::new(Instant::now(), None);
    for cipher in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
        let a = Chacha20Poly1305::new(cipher, &psk).unwrap();
        let b = Chacha20Poly1305::new(cipher, &psk).unwrap();
        let oh = a.overhead();
        let mut storage = vec![0u8; oh.head + PACKET + oh.tail];

        g.bench_function(format!("outbound_{cipher}"), |bench| {
            bench.iter(|| {
                let mut pkt = PacketBuf::new(&mut storage, oh.head, PACKET);
                assert_eq!(a.outbound(&mut pkt, &meta), Verdict::Pass);
                black_box(pkt.len());
            })
        });

        // Each iteration opens a freshly sealed datagram (a replay would be dropped);
        // sealing happens in the untimed setup.
        g.bench_function(format!("inbound_{cipher}"), |bench| {
            bench.iter_batched_ref(
                || {
                    let mut s = vec![0u8; oh.head + PACKET + oh.tail];
                    let mut pkt = PacketBuf::new(&mut s, oh.head, PACKET);
                    assert_eq!(a.outbound(&mut pkt, &meta), Verdict::Pass);
                    s
                },
                |wire| {
                    let len = wire.len();
                    let mut pkt = PacketBuf::new(wire, 0, len);
                    assert_eq!(b.inbound(&mut pkt, &meta), Verdict::Pass);
                    black_box(pkt.len());
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, aead, stage);
criterion_main!(benches);
