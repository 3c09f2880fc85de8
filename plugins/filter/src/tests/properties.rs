//! Properties over random input: nothing panics, and on well-formed packets our header
//! walk agrees with an independent implementation (etherparse).

use lametun_core::Direction;
use proptest::prelude::*;

use super::craft::*;
use super::filter;
use super::table::sample_packets;
use crate::Decision;
use crate::headers::{self, Fragment, Transport};

/// A rule set touching every kind of condition, so that matching code runs too.
const RULES: &str = r#"
default: deny
rules:
  - { action: deny, direction: inbound, proto: tcp, dst_port: [22, 1000-2000] }
  - { action: allow, src: [172.31.255.0/24, "fd00::/8"], proto: [icmp, icmpv6], icmp_type: [echo-request, 0] }
  - { action: deny, dst: "fd00:dead::/32", fragment: later }
  - { action: allow, proto: udp, src_port: 53 }
  - { action: deny, proto: 47 }
  - { action: allow, fragment: first }
"#;

fn any_ext() -> impl Strategy<Value = Ext> {
    prop_oneof![
        (0u8..3).prop_map(Ext::Routing),
        (0u8..3).prop_map(Ext::DestOpts),
        (0u8..4).prop_map(Ext::Ah),
    ]
}

/// A transport: protocol and payload bytes, well-formed.
fn any_transport(v6: bool) -> impl Strategy<Value = (u8, Vec<u8>)> {
    let icmp_proto = if v6 { ICMPV6 } else { ICMP };
    prop_oneof![
        (any::<u16>(), any::<u16>(), 0usize..40).prop_map(|(s, d, n)| (TCP, tcp(s, d, n))),
        (any::<u16>(), any::<u16>(), 0usize..40).prop_map(|(s, d, n)| (UDP, udp(s, d, n))),
        // (etherparse wants 20 bytes for an ICMP timestamp, 13 and 14; the kernel 8.)
        (
            any::<u8>().prop_filter("timestamp", move |t| v6 || !(13..=14).contains(t)),
            0usize..40
        )
            .prop_map(move |(t, n)| (icmp_proto, icmp(t, n))),
        (0usize..40).prop_map(|n| (47, vec![0u8; n])),
    ]
}

/// A well-formed IPv6 packet with a random valid extension header chain (hop-by-hop
/// first if present; an atomic fragment header somewhere, maybe).
fn any_v6() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop::collection::vec(any_ext(), 0..4),
        any::<Option<prop::sample::Index>>(),
        any_transport(true),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
    )
        .prop_map(|(hbh, mut chain, atomic, (proto, payload), src, dst)| {
            if let Some(at) = atomic {
                let i = at.index(chain.len() + 1);
                chain.insert(
                    i,
                    Ext::Fragment {
                        offset: 0,
                        more: false,
                    },
                );
            }
            if hbh {
                chain.insert(0, Ext::HopByHop(1));
            }
            v6(src, dst, &chain, proto, &payload)
        })
}

fn any_v4() -> impl Strategy<Value = Vec<u8>> {
    (
        0usize..4,
        any_transport(false),
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
    )
        .prop_map(|(words, (proto, payload), src, dst)| {
            v4_options(src, dst, proto, &payload, words)
        })
}

/// What etherparse reads: protocol, then ports or ICMP type if it decodes them.
fn oracle(packet: &[u8]) -> (u8, Option<Transport>) {
    use etherparse::{IpSlice, SlicedPacket, TransportSlice};
    let ip = IpSlice::from_slice(packet).expect("etherparse reads it");
    let proto = ip.payload_ip_number().0;
    let sliced = SlicedPacket::from_ip(packet).expect("etherparse reads it");
    let transport = sliced.transport.map(|t| match t {
        TransportSlice::Tcp(t) => Transport::Ports {
            src: t.source_port(),
            dst: t.destination_port(),
        },
        TransportSlice::Udp(u) => Transport::Ports {
            src: u.source_port(),
            dst: u.destination_port(),
        },
        TransportSlice::Icmpv4(i) => Transport::Icmp { ty: i.type_u8() },
        TransportSlice::Icmpv6(i) => Transport::Icmp { ty: i.type_u8() },
        TransportSlice::Igmp(_) => Transport::Neither,
    });
    (proto, transport)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1600)) {
        let f = filter(RULES);
        for dir in [Direction::Inbound, Direction::Outbound] {
            let _ = f.decide(dir, &bytes);
        }
    }

    #[test]
    fn random_bytes_behind_a_plausible_header_never_panic(
        v6: bool,
        next in prop_oneof![Just(0u8), Just(43), Just(44), Just(51), Just(60), Just(6), Just(17), Just(58), any::<u8>()],
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        // Consistent IP lengths, so that the walk goes past the IP header into the
        // random bytes.
        let packet = if v6 {
            lametun_core::testing::packets::ipv6([1; 16], [2; 16], next, &body)
        } else {
            let mut p = v4(CLIENT4, SERVER4, next, &body);
            p[6] = body.first().copied().unwrap_or(0) & 0x3f; // random fragment fields
            p
        };
        let f = filter(RULES);
        let _ = f.decide(Direction::Inbound, &packet);
    }

    #[test]
    fn mutated_samples_never_panic(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let samples = sample_packets();
        let mut packet = samples[which.index(samples.len())].clone();
        for (at, value) in edits {
            let i = at.index(packet.len());
            packet[i] = value;
        }
        packet.truncate(cut.index(packet.len() + 1));
        let f = filter(RULES);
        let d = f.decide(Direction::Inbound, &packet);
        if packet.is_empty() {
            prop_assert_eq!(d, Decision::Keepalive);
        }
    }

    #[test]
    fn agrees_with_etherparse_on_ipv6(packet in any_v6()) {
        let h = headers::parse(&packet).expect("well-formed");
        let (proto, transport) = oracle(&packet);
        prop_assert_eq!(h.proto, Some(proto));
        prop_assert_eq!(h.fragment, Fragment::No);
        prop_assert_eq!(h.transport, transport.unwrap_or(Transport::Neither));
    }

    #[test]
    fn agrees_with_etherparse_on_ipv4(packet in any_v4()) {
        let h = headers::parse(&packet).expect("well-formed");
        let (proto, transport) = oracle(&packet);
        prop_assert_eq!(h.proto, Some(proto));
        prop_assert_eq!(h.transport, transport.unwrap_or(Transport::Neither));
        prop_assert_eq!(h.src, u128::from(u32::from_be_bytes(packet[12..16].try_into().unwrap())));
        prop_assert_eq!(h.dst, u128::from(u32::from_be_bytes(packet[16..20].try_into().unwrap())));
    }
}

/// The reason this crate walks IPv6 headers itself: after a fragment header that starts
/// a later fragment, etherparse goes on reading payload bytes as extension headers.
#[test]
fn etherparse_reads_payload_of_a_later_fragment_as_headers() {
    // A later fragment whose fragmentable part began with destination options: its
    // bytes are the middle of the datagram, here shaped like a header claiming 2 KiB.
    let mut payload = vec![0u8; 64];
    payload[1] = 255;
    let packet = v6(
        CLIENT6,
        SERVER6,
        &[Ext::Fragment {
            offset: 40,
            more: true,
        }],
        60,
        &payload,
    );
    assert!(
        etherparse::IpSlice::from_slice(&packet).is_err(),
        "etherparse refuses a legitimate fragment"
    );
    let h = headers::parse(&packet).expect("we read it");
    assert_eq!(h.fragment, Fragment::Later);
    assert_eq!(h.proto, None);
    assert_eq!(h.transport, Transport::Unknown);
}
