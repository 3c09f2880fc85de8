//! Two whole tunnel ends in memory (the core's `Forwarder` with this stage in its
//! pipeline), with an attacker who can record, replay and forge datagrams. What the
//! real-device tests check in network namespaces, minus the kernel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lametun_core::testing::packets;
use lametun_core::{
    DropReason, Dropped, Endpoint, Forwarder, ForwarderConfig, Outcome, PacketBuf, PeerMode,
    Pipeline, TelemetryHandle,
};
use lametun_stage_chacha20poly1305::{Chacha20Poly1305, Cipher, Psk};

const SERVER: &str = "192.0.2.1:1234";
const CLIENT: &str = "198.51.100.7:40000";
const ROAMED: &str = "198.51.100.99:51000";
const ATTACKER: &str = "203.0.113.66:1234";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn end(peer: PeerMode, psk: &Psk) -> Arc<Forwarder> {
    let mut pipeline = Pipeline::new();
    pipeline.push(
        "chacha20poly1305",
        "chacha20poly1305",
        Box::new(Chacha20Poly1305::new(Cipher::ChaCha20Poly1305, psk).unwrap()),
    );
    Forwarder::new(
        pipeline,
        ForwarderConfig {
            packet_info: false,
            peer,
            keepalive: Some(Duration::from_secs(25)),
            paths: 1,
        },
        &TelemetryHandle::default(),
        Instant::now(),
    )
}

fn server(psk: &Psk) -> Arc<Forwarder> {
    end(PeerMode::Learn, psk)
}

fn client(psk: &Psk) -> Arc<Forwarder> {
    end(PeerMode::Fixed(addr(SERVER)), psk)
}

/// A packet read from `f`'s TUN device, as the datagram it sends (and to where).
fn send(f: &Forwarder, inner: &[u8]) -> Option<(Vec<u8>, Endpoint)> {
    let mut storage = vec![0u8; f.headroom() + inner.len() + f.tailroom()];
    let mut pkt = PacketBuf::with_data(&mut storage, f.headroom(), inner);
    let peer = f.peer();
    match f.handle_tun(&mut pkt, peer.as_ref(), Instant::now()) {
        Outcome::Send(to) => Some((pkt.as_slice().to_vec(), to)),
        _ => None,
    }
}

/// A datagram arriving at `f` from `from`.
fn receive(f: &Forwarder, datagram: &[u8], from: &str) -> (Outcome, Vec<u8>) {
    let mut storage = datagram.to_vec();
    let mut pkt = PacketBuf::new(&mut storage, 0, datagram.len());
    let outcome = f.handle_udp(&mut pkt, addr(from), None, Instant::now());
    (outcome, pkt.as_slice().to_vec())
}

fn delivered(f: &Forwarder) -> u64 {
    f.counters().core_inbound.passed()
}

fn ping(seq: u8) -> Vec<u8> {
    let mut p = packets::icmp_echo_v4([172, 31, 255, 7], [172, 31, 255, 13], 84);
    p[30] = seq;
    p
}

#[test]
fn traffic_passes_both_ways_and_the_wire_holds_no_plaintext() {
    let psk = Psk::generate().unwrap();
    let (s, c) = (server(&psk), client(&psk));
    let marker = b"MARKER-a8f3-plaintext-must-not-leak";
    let inner = packets::udp_v4([172, 31, 255, 7], [172, 31, 255, 13], 5000, 5001, marker);
    let (wire, to) = send(&c, &inner).unwrap();
    assert_eq!(to.addr, addr(SERVER));
    assert!(!wire.windows(marker.len()).any(|w| w == marker));
    assert_eq!(receive(&s, &wire, CLIENT), (Outcome::WriteTun, inner));
    assert_eq!(s.peer().unwrap().addr, addr(CLIENT));
    let (reply, to) = send(&s, &ping(1)).unwrap();
    assert_eq!(to.addr, addr(CLIENT));
    assert_eq!(receive(&c, &reply, SERVER), (Outcome::WriteTun, ping(1)));
}

#[test]
fn keepalives_are_authenticated_and_let_the_server_learn_the_client() {
    let psk = Psk::generate().unwrap();
    let (s, c) = (server(&psk), client(&psk));
    let mut storage = vec![0u8; c.headroom() + c.tailroom()];
    let mut pkt = PacketBuf::new(&mut storage, c.headroom(), 0);
    let to = c.poll_keepalive(&mut pkt, Instant::now()).unwrap();
    assert_eq!(to.addr, addr(SERVER));
    let keepalive = pkt.as_slice().to_vec();
    assert_eq!(keepalive.len(), 32);
    // A forged keepalive from an attacker teaches the server nothing...
    let mut forged = keepalive.clone();
    forged[20] ^= 1;
    assert!(matches!(
        receive(&s, &forged, ATTACKER).0,
        Outcome::Drop(Dropped {
            reason: DropReason::BadTag,
            ..
        })
    ));
    assert_eq!(s.peer(), None);
    // ...the genuine one does, once.
    assert_eq!(receive(&s, &keepalive, CLIENT).0, Outcome::Keepalive);
    assert_eq!(s.peer().unwrap().addr, addr(CLIENT));
    assert!(matches!(
        receive(&s, &keepalive, ATTACKER).0,
        Outcome::Drop(Dropped {
            reason: DropReason::Replayed,
            ..
        })
    ));
    assert_eq!(s.peer().unwrap().addr, addr(CLIENT));
}

#[test]
fn forged_and_replayed_datagrams_from_a_third_address_move_nothing() {
    let psk = Psk::generate().unwrap();
    let (s, c) = (server(&psk), client(&psk));
    let mut recorded = Vec::new();
    for i in 0..10 {
        let (wire, _) = send(&c, &ping(i)).unwrap();
        assert_eq!(receive(&s, &wire, CLIENT).0, Outcome::WriteTun);
        recorded.push(wire);
    }
    let before = delivered(&s);
    let changes = s.counters().peer_changes.get();
    // Replays, from the attacker's address and from the client's own.
    for wire in &recorded {
        for from in [ATTACKER, CLIENT] {
            assert!(matches!(receive(&s, wire, from).0, Outcome::Drop(_)));
        }
    }
    // Forgeries: garbage, truncations, and datagrams sealed under another key.
    let other = client(&Psk::generate().unwrap());
    for i in 0..50u8 {
        let (wire, _) = send(&other, &ping(i)).unwrap();
        assert!(matches!(receive(&s, &wire, ATTACKER).0, Outcome::Drop(_)));
        let garbage = vec![i; usize::from(i) * 7];
        assert!(matches!(
            receive(&s, &garbage, ATTACKER).0,
            Outcome::Drop(_)
        ));
    }
    assert_eq!(delivered(&s), before, "nothing reached the TUN device");
    assert_eq!(s.peer().unwrap().addr, addr(CLIENT));
    assert_eq!(s.counters().peer_changes.get(), changes);
    let stage = &s.pipeline().snapshot()[0].inbound;
    assert_eq!(stage.dropped_for("replayed"), 20);
    assert!(stage.dropped_for("bad_tag") >= 50);
    // Every refusal happened in the stage, each counted under its reason.
    assert_eq!(stage.dropped(), 20 + 100, "{stage:?}");
}

#[test]
fn a_roaming_client_is_followed_on_its_first_authenticated_datagram() {
    let psk = Psk::generate().unwrap();
    let (s, c) = (server(&psk), client(&psk));
    let (wire, _) = send(&c, &ping(1)).unwrap();
    assert_eq!(receive(&s, &wire, CLIENT).0, Outcome::WriteTun);
    // The client's NAT mapping changes: its next datagram comes from elsewhere.
    let (wire, _) = send(&c, &ping(2)).unwrap();
    assert_eq!(receive(&s, &wire, ROAMED).0, Outcome::WriteTun);
    assert_eq!(s.peer().unwrap().addr, addr(ROAMED));
    let (reply, to) = send(&s, &ping(3)).unwrap();
    assert_eq!(to.addr, addr(ROAMED));
    assert_eq!(receive(&c, &reply, SERVER).0, Outcome::WriteTun);
}

#[test]
fn a_restarted_end_resumes_at_once_and_its_old_datagrams_stay_refused() {
    let psk = Psk::generate().unwrap();
    let s = server(&psk);
    let old = client(&psk);
    let mut recorded = Vec::new();
    for i in 0..5 {
        let (wire, _) = send(&old, &ping(i)).unwrap();
        assert_eq!(receive(&s, &wire, CLIENT).0, Outcome::WriteTun);
        recorded.push(wire);
    }
    drop(old);
    // The client restarts (same key, new process): its first datagram gets through.
    let new = client(&psk);
    let (wire, _) = send(&new, &ping(9)).unwrap();
    assert_eq!(receive(&s, &wire, ROAMED).0, Outcome::WriteTun);
    assert_eq!(s.peer().unwrap().addr, addr(ROAMED));
    let (reply, _) = send(&s, &ping(10)).unwrap();
    assert_eq!(receive(&new, &reply, SERVER).0, Outcome::WriteTun);
    // The old session's recorded datagrams are refused, and do not steal the peer.
    for wire in &recorded {
        assert!(matches!(receive(&s, wire, CLIENT).0, Outcome::Drop(_)));
    }
    assert_eq!(s.peer().unwrap().addr, addr(ROAMED));

    // The server restarts: the client's current session is new to it, and accepted.
    let s2 = server(&psk);
    let (wire, _) = send(&new, &ping(11)).unwrap();
    assert_eq!(receive(&s2, &wire, ROAMED).0, Outcome::WriteTun);
    let (reply, _) = send(&s2, &ping(12)).unwrap();
    assert_eq!(receive(&new, &reply, SERVER).0, Outcome::WriteTun);
}
