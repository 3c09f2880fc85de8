//! Two ends in memory, with a tamper step in between (rustls' and quinn-proto's style).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lametun_core::testing::packets;
use lametun_core::{DropReason, PacketBuf, PacketMeta, Stage, Verdict};
use proptest::prelude::*;

use crate::keys::MasterKey;
use crate::replay::WINDOW;
use crate::stage::{CIPHER_MISMATCH, LIVE_SESSIONS, REFLECTED};
use crate::wire::{HEADER_LEN, Header, MIN_DATAGRAM, TAG_LEN};
use crate::{Chacha20Poly1305, Cipher, Psk};

fn psk(byte: u8) -> Psk {
    Psk::from_bytes([byte; 32])
}

fn stage(cipher: Cipher, key: u8) -> Chacha20Poly1305 {
    Chacha20Poly1305::new(cipher, &psk(key)).unwrap()
}

fn pair() -> (Chacha20Poly1305, Chacha20Poly1305) {
    (
        stage(Cipher::ChaCha20Poly1305, 1),
        stage(Cipher::ChaCha20Poly1305, 1),
    )
}

fn meta() -> PacketMeta {
    PacketMeta::new(Instant::now(), Some("192.0.2.9:1234".parse().unwrap()))
}

/// Seals `inner` with exactly the declared room, as the pipeline would.
fn seal(s: &Chacha20Poly1305, inner: &[u8]) -> Vec<u8> {
    let oh = s.overhead();
    let mut storage = vec![0u8; oh.head + inner.len() + oh.tail];
    let mut pkt = PacketBuf::with_data(&mut storage, oh.head, inner);
    assert_eq!(s.outbound(&mut pkt, &meta()), Verdict::Pass);
    pkt.as_slice().to_vec()
}

fn open(s: &Chacha20Poly1305, wire: &[u8]) -> Result<Vec<u8>, DropReason> {
    let mut storage = wire.to_vec();
    let mut pkt = PacketBuf::new(&mut storage, 0, wire.len());
    match s.inbound(&mut pkt, &meta()) {
        Verdict::Pass => Ok(pkt.as_slice().to_vec()),
        Verdict::Drop(r) => Err(r),
        v => panic!("unexpected verdict {v:?}"),
    }
}

fn ping(size: usize) -> Vec<u8> {
    packets::icmp_echo_v4([10, 0, 0, 1], [10, 0, 0, 2], size)
}

#[test]
fn round_trip_of_every_size_and_the_keepalive_with_both_ciphers() {
    for cipher in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
        let (a, b) = (stage(cipher, 3), stage(cipher, 3));
        for size in [0, 1, 28, 64, 576, 1280, 1400, 1500, 9000] {
            let inner = if size >= 28 {
                ping(size)
            } else {
                vec![0x45; size]
            };
            let wire = seal(&a, &inner);
            assert_eq!(wire.len(), inner.len() + HEADER_LEN + TAG_LEN);
            assert_eq!(Header::parse(&wire).unwrap().kind, cipher.kind());
            if size >= 64 {
                // The payload is not in the clear.
                assert!(!wire.windows(16).any(|w| w == &inner[28..44]));
            }
            assert_eq!(open(&b, &wire), Ok(inner), "{cipher} size {size}");
            // And the other way.
            let back = seal(&b, &ping(100));
            assert_eq!(open(&a, &back), Ok(ping(100)));
        }
    }
}

#[test]
fn every_single_byte_flip_is_caught() {
    let (a, b) = pair();
    for inner in [Vec::new(), ping(64)] {
        let wire = seal(&a, &inner);
        for i in 0..wire.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut bad = wire.clone();
                bad[i] ^= mask;
                let r = open(&b, &bad);
                assert!(r.is_err(), "flip {mask:#x} of byte {i} was accepted");
                // A changed kind is refused before the tag, and a changed counter may
                // name one already seen; everything else fails the tag.
                match i {
                    0 => assert_eq!(r, Err(DropReason::Malformed)),
                    1..8 => assert!(
                        matches!(r, Err(DropReason::BadTag | DropReason::Replayed)),
                        "byte {i}: {r:?}"
                    ),
                    _ => assert_eq!(r, Err(DropReason::BadTag), "byte {i}"),
                }
            }
        }
        // Failed attempts moved no window: the genuine datagram still passes, once.
        assert_eq!(open(&b, &wire), Ok(inner));
        assert_eq!(open(&b, &wire), Err(DropReason::Replayed));
    }
}

#[test]
fn truncated_or_extended_datagrams_are_refused() {
    let (a, b) = pair();
    let wire = seal(&a, &ping(100));
    for cut in 0..wire.len() {
        let r = open(&b, &wire[..cut]);
        let expected = if cut < MIN_DATAGRAM {
            DropReason::TooShort
        } else {
            DropReason::BadTag
        };
        assert_eq!(r, Err(expected), "cut at {cut}");
    }
    let mut longer = wire.clone();
    longer.push(0);
    assert_eq!(open(&b, &longer), Err(DropReason::BadTag));
    assert!(open(&b, &wire).is_ok());
}

#[test]
fn a_replayed_datagram_is_dropped() {
    let (a, b) = pair();
    let wire = seal(&a, &ping(84));
    assert!(open(&b, &wire).is_ok());
    for _ in 0..3 {
        assert_eq!(open(&b, &wire), Err(DropReason::Replayed));
    }
    // Keepalives too.
    let keepalive = seal(&a, &[]);
    assert_eq!(open(&b, &keepalive), Ok(Vec::new()));
    assert_eq!(open(&b, &keepalive), Err(DropReason::Replayed));
}

#[test]
fn reordering_within_the_window_passes_and_beyond_it_drops() {
    let (a, b) = pair();
    let n = WINDOW as usize + 10;
    let sealed: Vec<Vec<u8>> = (0..n).map(|_| seal(&a, &ping(40))).collect();
    // The newest first, then the rest backwards: all within the window pass.
    let newest = n - 1;
    assert!(open(&b, &sealed[newest]).is_ok());
    for i in (newest + 1 - WINDOW as usize..newest).rev() {
        assert!(open(&b, &sealed[i]).is_ok(), "counter {i}");
    }
    // Exactly WINDOW behind the newest, and older: too old.
    for (i, w) in sealed[..=newest - WINDOW as usize].iter().enumerate() {
        assert_eq!(open(&b, w), Err(DropReason::Replayed), "counter {i}");
    }
    // And shuffled arrivals inside the window each pass once.
    let more: Vec<Vec<u8>> = (0..64).map(|_| seal(&a, &ping(40))).collect();
    for i in (0..64).step_by(2).chain((1..64).step_by(2)) {
        assert!(open(&b, &more[i]).is_ok(), "more {i}");
    }
    for m in &more {
        assert_eq!(open(&b, m), Err(DropReason::Replayed));
    }
}

#[test]
fn a_wrong_key_drops_with_bad_tag() {
    let a = stage(Cipher::ChaCha20Poly1305, 1);
    let b = stage(Cipher::ChaCha20Poly1305, 2);
    for _ in 0..10 {
        assert_eq!(open(&b, &seal(&a, &ping(64))), Err(DropReason::BadTag));
    }
    assert_eq!(open(&b, &seal(&a, &[])), Err(DropReason::BadTag));
}

#[test]
fn a_cipher_mismatch_is_named_and_unknown_kinds_are_malformed() {
    let a = stage(Cipher::Aes256Gcm, 1);
    let b = stage(Cipher::ChaCha20Poly1305, 1);
    assert_eq!(open(&b, &seal(&a, &ping(64))), Err(CIPHER_MISMATCH));
    let mut wire = seal(&b, &ping(64));
    wire[0] = 0x7f;
    assert_eq!(open(&a, &wire), Err(DropReason::Malformed));
}

#[test]
fn our_own_datagrams_sent_back_are_refused() {
    let (a, _) = pair();
    let wire = seal(&a, &ping(64));
    assert_eq!(open(&a, &wire), Err(REFLECTED));
    // Also after a rotation, for the earlier session.
    let a = a.rotate_after(2, Duration::from_secs(3600));
    let first = seal(&a, &ping(64));
    for _ in 0..5 {
        seal(&a, &ping(64));
    }
    assert_ne!(
        Header::parse(&first).unwrap().session.0,
        a.session_id(),
        "rotated"
    );
    assert_eq!(open(&a, &first), Err(REFLECTED));
}

#[test]
fn a_restarted_sender_is_accepted_at_once_and_its_old_session_refused() {
    let (old, b) = pair();
    let before: Vec<Vec<u8>> = (0..5).map(|_| seal(&old, &ping(64))).collect();
    for w in &before[..4] {
        assert!(open(&b, w).is_ok());
    }
    drop(old);
    // The peer restarts: a new session, accepted with its first datagram.
    let new = stage(Cipher::ChaCha20Poly1305, 1);
    assert_ne!(
        new.session_id(),
        Header::parse(&before[0]).unwrap().session.0
    );
    assert_eq!(open(&b, &seal(&new, &ping(64))), Ok(ping(64)));
    // Recorded datagrams of the old session stay refused.
    for w in &before[..4] {
        assert!(open(&b, w).is_err());
    }
    // Once two newer sessions replaced it, the old one is retired: refused as such.
    let newer = stage(Cipher::ChaCha20Poly1305, 1);
    assert!(open(&b, &seal(&newer, &ping(64))).is_ok());
    for w in &before[..4] {
        assert_eq!(open(&b, w), Err(DropReason::UnknownSession));
    }
    assert_eq!(LIVE_SESSIONS, 2);
}

#[test]
fn restarts_never_reuse_a_key_and_nonce_pair_in_either_direction() {
    // Every datagram's (key, nonce) over 10 000 restarts of one end and 100 of the
    // other, both directions, recomputed from the header with the key schedule.
    let master = MasterKey::new(&psk(1));
    let mut seen = HashSet::new();
    let mut record = |wire: &[u8]| {
        let h = Header::parse(wire).unwrap();
        let key = *master.session_key_bytes(Cipher::ChaCha20Poly1305, h.session);
        assert!(seen.insert((key, h.nonce())), "(key, nonce) reused: {h:?}");
    };
    let mut server = stage(Cipher::ChaCha20Poly1305, 1);
    for i in 0..10_000 {
        if i % 100 == 99 {
            server = stage(Cipher::ChaCha20Poly1305, 1);
        }
        let client = stage(Cipher::ChaCha20Poly1305, 1);
        for _ in 0..2 {
            let up = seal(&client, &ping(40));
            record(&up);
            assert!(
                open(&server, &up).is_ok(),
                "restart {i}: new session refused"
            );
            let down = seal(&server, &ping(40));
            record(&down);
            assert!(open(&client, &down).is_ok());
        }
    }
    assert_eq!(seen.len(), 40_000);
}

#[test]
fn a_replayed_old_session_after_our_restart_does_not_cut_the_live_one() {
    let psk_byte = 9;
    let old_peer = stage(Cipher::ChaCha20Poly1305, psk_byte);
    let recorded: Vec<Vec<u8>> = (0..3).map(|_| seal(&old_peer, &ping(64))).collect();
    // This end restarts: it remembers nothing. The peer restarted too, long ago.
    let b = stage(Cipher::ChaCha20Poly1305, psk_byte);
    let peer = stage(Cipher::ChaCha20Poly1305, psk_byte);
    assert!(open(&b, &seal(&peer, &ping(64))).is_ok());
    // An attacker replays each recorded datagram: each gets in once (the documented
    // limit of a PSK without a handshake), never twice...
    for w in &recorded {
        assert!(open(&b, w).is_ok());
        assert!(open(&b, w).is_err());
    }
    // ...and even more old sessions do not lock out the live peer.
    for _ in 0..5 {
        let other_old = stage(Cipher::ChaCha20Poly1305, psk_byte);
        assert!(open(&b, &seal(&other_old, &ping(64))).is_ok());
        assert_eq!(open(&b, &seal(&peer, &ping(64))), Ok(ping(64)));
    }
}

#[test]
fn rotation_by_packet_count_is_followed_by_the_receiver() {
    let a = stage(Cipher::ChaCha20Poly1305, 1).rotate_after(100, Duration::from_secs(3600));
    let b = stage(Cipher::ChaCha20Poly1305, 1);
    let mut sessions = HashSet::new();
    let mut in_flight = Vec::new();
    for i in 0..1000 {
        let w = seal(&a, &ping(40));
        let h = Header::parse(&w).unwrap();
        assert!(h.counter < 100);
        sessions.insert(h.session);
        // Hold back a few packets around each rotation, deliver them late.
        if h.counter >= 97 {
            in_flight.push(w);
        } else {
            assert!(open(&b, &w).is_ok(), "packet {i}");
            if h.counter == 2 {
                for late in in_flight.drain(..) {
                    assert!(
                        open(&b, &late).is_ok(),
                        "late packet of the previous session"
                    );
                }
            }
        }
    }
    assert_eq!(sessions.len(), 10);
}

#[test]
fn rotation_by_age_happens_on_tick() {
    let a = stage(Cipher::ChaCha20Poly1305, 1).rotate_after(1 << 20, Duration::from_secs(60));
    let b = stage(Cipher::ChaCha20Poly1305, 1);
    let t0 = Instant::now();
    let first = a.session_id();
    a.on_tick(t0);
    a.on_tick(t0 + Duration::from_secs(59));
    assert_eq!(a.session_id(), first);
    a.on_tick(t0 + Duration::from_secs(60));
    let second = a.session_id();
    assert_ne!(second, first);
    assert!(open(&b, &seal(&a, &ping(40))).is_ok());
    a.on_tick(t0 + Duration::from_secs(61));
    assert_eq!(
        a.session_id(),
        second,
        "the new session's age starts at its first tick"
    );
}

#[test]
fn threads_sealing_at_once_never_share_a_counter() {
    let (a, b) = pair();
    let a = a.rotate_after(5000, Duration::from_secs(3600));
    let wires: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..3000).map(|_| seal(&a, &ping(40))).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let unique: HashSet<_> = wires
        .iter()
        .map(|w| {
            let h = Header::parse(w).unwrap();
            (h.session, h.counter)
        })
        .collect();
    assert_eq!(unique.len(), 12_000);
    // Delivered in counter order per session (as a quiet network would), all pass.
    let mut sorted = wires.clone();
    sorted.sort_by_key(|w| {
        let h = Header::parse(w).unwrap();
        (h.counter, h.session)
    });
    let delivered = sorted.iter().filter(|w| open(&b, w).is_ok()).count();
    assert_eq!(delivered, 12_000);
}

#[test]
fn describe_debug_and_errors_never_show_the_key() {
    let key = crate::generate_key();
    let s =
        Chacha20Poly1305::new(Cipher::ChaCha20Poly1305, &Psk::from_base64(&key).unwrap()).unwrap();
    let text = format!("{} {:?}", s.describe(), s);
    assert!(!text.contains(&key));
    assert!(!text.contains(&key[..20]));
    assert_eq!(
        s.describe(),
        "cipher chacha20poly1305, key given by the program, replay window 131008 packets, \
         new session every 2^28 packets or 1h"
    );
    // AES-GCM rotates at its confidentiality limit for packets of any size (RFC 9001).
    let s = Chacha20Poly1305::new(Cipher::Aes256Gcm, &Psk::from_base64(&key).unwrap()).unwrap();
    assert!(
        s.describe()
            .ends_with("new session every 2^23 packets or 1h"),
        "{}",
        s.describe()
    );
}

#[test]
fn metrics_count_sessions_and_rotations() {
    let a = stage(Cipher::ChaCha20Poly1305, 1).rotate_after(3, Duration::from_secs(3600));
    let b = stage(Cipher::ChaCha20Poly1305, 1);
    for _ in 0..7 {
        assert!(open(&b, &seal(&a, &ping(40))).is_ok());
    }
    let value = |s: &Chacha20Poly1305, name: &str| {
        let mut m = Vec::new();
        s.metrics(&mut m);
        m.iter().find(|m| m.name == name).unwrap().value
    };
    assert_eq!(value(&a, "crypto_send_rotations"), 2.0);
    assert_eq!(value(&a, "crypto_send_counter"), 1.0);
    assert_eq!(value(&b, "crypto_sessions_accepted"), 3.0);
    assert_eq!(value(&b, "crypto_live_sessions"), 2.0);
    assert_eq!(value(&b, "crypto_retired_sessions"), 1.0);
}

#[test]
fn a_retired_session_resumes_only_above_its_last_counter() {
    let (a, b) = pair();
    let held: Vec<Vec<u8>> = (0..4).map(|_| seal(&a, &ping(40))).collect();
    assert!(open(&b, &held[1]).is_ok());
    // Two other sessions push `a` out of the live set.
    for _ in 0..2 {
        assert!(open(&b, &seal(&stage(Cipher::ChaCha20Poly1305, 1), &ping(40))).is_ok());
    }
    assert_eq!(open(&b, &held[0]), Err(DropReason::UnknownSession));
    assert_eq!(open(&b, &held[1]), Err(DropReason::UnknownSession));
    assert!(open(&b, &held[3]).is_ok(), "above its last counter");
    assert!(open(&b, &held[2]).is_ok(), "above its last counter, late");
    assert_eq!(open(&b, &held[2]), Err(DropReason::Replayed));
    assert_eq!(open(&b, &held[3]), Err(DropReason::Replayed));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_and_never_pass(data in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let (_, b) = pair();
        let mut storage = data.clone();
        storage.extend_from_slice(&[0u8; 64]);
        let mut pkt = PacketBuf::new(&mut storage, 0, data.len());
        let verdict = b.inbound(&mut pkt, &meta());
        prop_assert!(verdict != Verdict::Pass);
        prop_assert!(pkt.end() <= data.len() + 64);
    }

    #[test]
    fn arbitrary_edits_of_a_genuine_datagram_never_pass(
        inner in proptest::collection::vec(any::<u8>(), 0..300),
        edits in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4),
    ) {
        let (a, b) = pair();
        let wire = seal(&a, &inner);
        let mut bad = wire.clone();
        for (at, x) in edits {
            let i = at % bad.len();
            bad[i] ^= x;
        }
        prop_assume!(bad != wire);
        prop_assert!(open(&b, &bad).is_err());
        prop_assert_eq!(open(&b, &wire), Ok(inner));
    }

    #[test]
    fn arbitrary_headers_on_a_keyed_session_never_panic(
        kind in any::<u8>(), counter in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 16..200),
    ) {
        let (a, b) = pair();
        // A known session id, so the window code is reached with any counter.
        assert!(open(&b, &seal(&a, &[])).is_ok());
        let mut wire = Vec::new();
        wire.push(kind);
        wire.extend_from_slice(&counter.to_be_bytes()[1..]);
        wire.extend_from_slice(&a.session_id().to_be_bytes());
        wire.extend_from_slice(&tail);
        prop_assert!(open(&b, &wire).is_err());
    }
}
