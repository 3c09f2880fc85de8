//! A table of crafted packets against rule sets: which rule decides each one.

use lametun_core::Direction::{self, Inbound as In, Outbound as Out};

use super::craft::*;
use super::filter;
use crate::headers::{self, Fragment, Transport};
use crate::{Action, Decision, Filter, Malformed};

const ALLOW: Action = Action::Allow;
const DENY: Action = Action::Deny;

fn rule(index: usize, action: Action) -> Decision {
    Decision::Rule { index, action }
}

/// Default allow, the kind of list a server has.
const SERVER_RULES: &str = r#"
default: allow
rules:
  - { action: deny,  direction: inbound, proto: tcp, dst_port: 22 }      # 0
  - { action: allow, src: 172.31.255.0/24, proto: icmp }                  # 1
  - { action: deny,  dst: "fd00:dead::/32" }                              # 2
  - { action: deny,  proto: udp, dst_port: 1000-2000 }                    # 3
  - { action: deny,  proto: icmpv6, icmp_type: echo-request }             # 4
  - { action: deny,  proto: icmp }                                        # 5
  - { action: deny,  proto: [sctp, 47] }                                  # 6
"#;

fn check(f: &Filter, cases: &[(&str, Direction, Vec<u8>, Decision)]) {
    for (what, dir, packet, want) in cases {
        assert_eq!(f.decide(*dir, packet), *want, "{what} ({dir})");
    }
}

#[test]
fn server_rules_decide_whole_packets() {
    let f = filter(SERVER_RULES);
    let hbh_rt_do = [Ext::HopByHop(0), Ext::Routing(1), Ext::DestOpts(2)];
    check(
        &f,
        &[
            ("keepalive", In, vec![], Decision::Keepalive),
            (
                "ssh in, v4",
                In,
                v4(CLIENT4, SERVER4, TCP, &tcp(40000, 22, 0)),
                rule(0, DENY),
            ),
            (
                "ssh out is another direction",
                Out,
                v4(SERVER4, CLIENT4, TCP, &tcp(40000, 22, 0)),
                Decision::Default(ALLOW),
            ),
            (
                "http in",
                In,
                v4(CLIENT4, SERVER4, TCP, &tcp(40000, 80, 100)),
                Decision::Default(ALLOW),
            ),
            (
                "ssh in, v6",
                In,
                v6(CLIENT6, SERVER6, &[], TCP, &tcp(40000, 22, 0)),
                rule(0, DENY),
            ),
            (
                "ssh in, v6 behind hop-by-hop, routing, destination options",
                In,
                v6(CLIENT6, SERVER6, &hbh_rt_do, TCP, &tcp(40000, 22, 0)),
                rule(0, DENY),
            ),
            (
                "ssh in, v6 behind AH",
                In,
                v6(CLIENT6, SERVER6, &[Ext::Ah(3)], TCP, &tcp(40000, 22, 0)),
                rule(0, DENY),
            ),
            (
                "ssh in, v4 behind AH",
                In,
                v4(CLIENT4, SERVER4, 51, &{
                    let mut p = vec![
                        TCP, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    ];
                    p.extend(tcp(40000, 22, 0));
                    p
                }),
                rule(0, DENY),
            ),
            (
                "ssh in, v4 with options",
                In,
                v4_options(CLIENT4, SERVER4, TCP, &tcp(40000, 22, 0), 3),
                rule(0, DENY),
            ),
            (
                "ssh in, v4 with link padding after the total length",
                In,
                {
                    let mut p = v4(CLIENT4, SERVER4, TCP, &tcp(40000, 22, 0));
                    p.extend([0xff; 6]);
                    p
                },
                rule(0, DENY),
            ),
            (
                "ssh in, v6 in an atomic fragment (RFC 6946)",
                In,
                v6(
                    CLIENT6,
                    SERVER6,
                    &[Ext::Fragment {
                        offset: 0,
                        more: false,
                    }],
                    TCP,
                    &tcp(40000, 22, 0),
                ),
                rule(0, DENY),
            ),
            (
                "ping from the tunnel subnet",
                In,
                v4(CLIENT4, SERVER4, ICMP, &icmp(8, 56)),
                rule(1, ALLOW),
            ),
            (
                "ping from elsewhere",
                In,
                v4(OTHER4, SERVER4, ICMP, &icmp(8, 56)),
                rule(5, DENY),
            ),
            (
                "anything to fd00:dead::/32",
                Out,
                v6(SERVER6, DEAD6, &[], UDP, &udp(1, 2, 3)),
                rule(2, DENY),
            ),
            (
                "udp 999",
                Out,
                v4(SERVER4, CLIENT4, UDP, &udp(5, 999, 0)),
                Decision::Default(ALLOW),
            ),
            (
                "udp 1000",
                Out,
                v4(SERVER4, CLIENT4, UDP, &udp(5, 1000, 0)),
                rule(3, DENY),
            ),
            (
                "udp 2000, v6",
                Out,
                v6(SERVER6, CLIENT6, &[], UDP, &udp(5, 2000, 0)),
                rule(3, DENY),
            ),
            (
                "udp 2001",
                Out,
                v4(SERVER4, CLIENT4, UDP, &udp(5, 2001, 0)),
                Decision::Default(ALLOW),
            ),
            (
                "tcp 1500 is not udp",
                Out,
                v4(SERVER4, CLIENT4, TCP, &tcp(5, 1500, 0)),
                Decision::Default(ALLOW),
            ),
            (
                "icmpv6 echo request",
                In,
                v6(CLIENT6, SERVER6, &[], ICMPV6, &icmp(128, 8)),
                rule(4, DENY),
            ),
            (
                "icmpv6 echo reply",
                In,
                v6(CLIENT6, SERVER6, &[], ICMPV6, &icmp(129, 8)),
                Decision::Default(ALLOW),
            ),
            (
                "icmpv6 echo request behind destination options",
                In,
                v6(CLIENT6, SERVER6, &[Ext::DestOpts(0)], ICMPV6, &icmp(128, 8)),
                rule(4, DENY),
            ),
            (
                "sctp by name",
                In,
                v4(CLIENT4, SERVER4, 132, &[0u8; 12]),
                rule(6, DENY),
            ),
            (
                "gre by number",
                In,
                v4(CLIENT4, SERVER4, 47, &[0u8; 4]),
                rule(6, DENY),
            ),
            (
                "esp: no ports, no rule",
                In,
                v6(CLIENT6, SERVER6, &[], 50, &[0u8; 16]),
                Decision::Default(ALLOW),
            ),
            (
                "no next header",
                In,
                v6(CLIENT6, SERVER6, &[Ext::DestOpts(0)], 59, &[]),
                Decision::Default(ALLOW),
            ),
        ],
    );
}

#[test]
fn fragments_are_judged_on_what_they_carry() {
    let f = filter(SERVER_RULES);
    let later = |offset| Ext::Fragment { offset, more: true };
    check(
        &f,
        &[
            (
                "first v4 fragment of ssh",
                In,
                v4_frag(CLIENT4, SERVER4, TCP, &tcp(40000, 22, 20), 0, true),
                rule(0, DENY),
            ),
            (
                "later v4 fragment of tcp: a deny rule on ports does not match",
                In,
                v4_frag(CLIENT4, SERVER4, TCP, &[0u8; 64], 100, true),
                Decision::Default(ALLOW),
            ),
            (
                "last v4 fragment of udp: ports unknown, rule 3 does not match",
                Out,
                v4_frag(SERVER4, CLIENT4, UDP, &[0u8; 64], 185, false),
                Decision::Default(ALLOW),
            ),
            (
                "later v4 fragment of icmp: the protocol is known",
                In,
                v4_frag(OTHER4, SERVER4, ICMP, &[0u8; 64], 185, false),
                rule(5, DENY),
            ),
            (
                "later v4 fragment from the subnet: rule 1 needs only address and proto",
                In,
                v4_frag(CLIENT4, SERVER4, ICMP, &[0u8; 64], 185, false),
                rule(1, ALLOW),
            ),
            (
                "first v6 fragment of ssh",
                In,
                v6(CLIENT6, SERVER6, &[later(0)], TCP, &tcp(40000, 22, 20)),
                rule(0, DENY),
            ),
            (
                "later v6 fragment to a denied network: addresses are known",
                Out,
                v6(SERVER6, DEAD6, &[later(10)], UDP, &[0u8; 64]),
                rule(2, DENY),
            ),
            (
                "later v6 fragment of icmpv6: the type is unknown",
                In,
                v6(CLIENT6, SERVER6, &[later(10)], ICMPV6, &[0u8; 64]),
                Decision::Default(ALLOW),
            ),
            (
                "later v6 fragment whose fragmentable part starts with destination options",
                In,
                v6(CLIENT6, SERVER6, &[later(10)], 60, &[0u8; 64]),
                Decision::Default(ALLOW),
            ),
        ],
    );
}

#[test]
fn with_default_deny_later_fragments_pass_only_if_an_allow_rule_could_match() {
    let f = filter(
        r#"
default: deny
rules:
  - { action: allow, proto: udp, dst_port: 53 }
  - { action: allow, icmp_type: echo-request }
  - { action: allow, proto: tcp, src: 10.0.0.0/8, dst_port: 443 }
"#,
    );
    let frag6 = |offset, proto, payload: &[u8]| {
        v6(
            CLIENT6,
            SERVER6,
            &[Ext::Fragment { offset, more: true }],
            proto,
            payload,
        )
    };
    check(
        &f,
        &[
            (
                "first udp fragment to 53",
                In,
                v4_frag(CLIENT4, SERVER4, UDP, &udp(5000, 53, 1000), 0, true),
                rule(0, ALLOW),
            ),
            (
                "first udp fragment to 54",
                In,
                v4_frag(CLIENT4, SERVER4, UDP, &udp(5000, 54, 1000), 0, true),
                Decision::Default(DENY),
            ),
            (
                "later udp fragment: could be port 53",
                In,
                v4_frag(CLIENT4, SERVER4, UDP, &[0u8; 512], 128, false),
                rule(0, ALLOW),
            ),
            (
                "later tcp fragment from outside 10/8: no allow rule could match",
                In,
                v4_frag(CLIENT4, SERVER4, TCP, &[0u8; 512], 128, false),
                Decision::Default(DENY),
            ),
            (
                "later tcp fragment from 10/8: could be port 443",
                In,
                v4_frag(OTHER4, SERVER4, TCP, &[0u8; 512], 128, false),
                rule(2, ALLOW),
            ),
            (
                "later icmpv6 fragment: could be an echo request",
                In,
                frag6(20, ICMPV6, &[0u8; 64]),
                rule(1, ALLOW),
            ),
            (
                "later v6 fragment of unknown protocol: could be udp 53",
                In,
                frag6(20, 60, &[0u8; 64]),
                rule(0, ALLOW),
            ),
            (
                "icmpv6 echo request",
                In,
                v6(CLIENT6, SERVER6, &[], ICMPV6, &icmp(128, 0)),
                rule(1, ALLOW),
            ),
            (
                "icmp echo request",
                In,
                v4(CLIENT4, SERVER4, ICMP, &icmp(8, 0)),
                rule(1, ALLOW),
            ),
            (
                "icmp echo reply",
                In,
                v4(CLIENT4, SERVER4, ICMP, &icmp(0, 0)),
                Decision::Default(DENY),
            ),
        ],
    );
}

#[test]
fn fragment_key_matches_the_fragment_kind() {
    let f = filter(
        r#"
default: allow
rules:
  - { action: deny, fragment: later }
  - { action: deny, proto: udp, fragment: first }
  - { action: allow, fragment: false, proto: udp }
  - { action: deny, proto: udp }
"#,
    );
    check(
        &f,
        &[
            (
                "later",
                In,
                v4_frag(CLIENT4, SERVER4, TCP, &[0u8; 64], 9, true),
                rule(0, DENY),
            ),
            (
                "first udp",
                In,
                v4_frag(CLIENT4, SERVER4, UDP, &udp(1, 2, 64), 0, true),
                rule(1, DENY),
            ),
            (
                "first tcp",
                In,
                v4_frag(CLIENT4, SERVER4, TCP, &tcp(1, 2, 64), 0, true),
                Decision::Default(ALLOW),
            ),
            (
                "whole udp",
                In,
                v4(CLIENT4, SERVER4, UDP, &udp(1, 2, 64)),
                rule(2, ALLOW),
            ),
            (
                "atomic v6 fragment is a whole packet",
                In,
                v6(
                    CLIENT6,
                    SERVER6,
                    &[Ext::Fragment {
                        offset: 0,
                        more: false,
                    }],
                    UDP,
                    &udp(1, 2, 0),
                ),
                rule(2, ALLOW),
            ),
        ],
    );
}

#[test]
fn lists_match_any_item() {
    let f = filter(
        r#"
default: deny
rules:
  - action: allow
    src: [10.0.0.0/8, "fd00::/16", 192.0.2.1]
    dst_port: [22, 80, "8000-8999"]
    proto: [tcp, udp]
"#,
    );
    let from = |src: [u8; 4], dport| v4(src, SERVER4, TCP, &tcp(1, dport, 0));
    assert_eq!(f.decide(In, &from(OTHER4, 80)), rule(0, ALLOW));
    assert_eq!(f.decide(In, &from(OTHER4, 8500)), rule(0, ALLOW));
    assert_eq!(f.decide(In, &from([192, 0, 2, 1], 22)), rule(0, ALLOW));
    assert_eq!(
        f.decide(In, &from([192, 0, 2, 2], 22)),
        Decision::Default(DENY)
    );
    assert_eq!(f.decide(In, &from(OTHER4, 443)), Decision::Default(DENY));
    assert_eq!(
        f.decide(In, &v6(CLIENT6, SERVER6, &[], UDP, &udp(1, 8999, 0))),
        rule(0, ALLOW)
    );
    // Ports without a proto list match any protocol that has ports, and only those.
    let f = filter("{default: allow, rules: [{action: deny, dst_port: 53}]}");
    assert_eq!(
        f.decide(Out, &v4(SERVER4, CLIENT4, UDP, &udp(1, 53, 0))),
        rule(0, DENY)
    );
    assert_eq!(
        f.decide(Out, &v4(SERVER4, CLIENT4, TCP, &tcp(1, 53, 0))),
        rule(0, DENY)
    );
    assert_eq!(
        f.decide(Out, &v4(SERVER4, CLIENT4, 132, &udp(1, 53, 4))),
        rule(0, DENY)
    );
    assert_eq!(
        f.decide(Out, &v4(SERVER4, CLIENT4, ICMP, &icmp(53, 0))),
        Decision::Default(ALLOW)
    );
}

#[test]
fn malformed_packets_are_named() {
    let f = filter(SERVER_RULES);
    let ssh4 = v4(CLIENT4, SERVER4, TCP, &tcp(40000, 22, 0));
    let mut bad_ihl = ssh4.clone();
    bad_ihl[0] = 0x44;
    let mut long_total = ssh4.clone();
    long_total[3] += 1;
    let mut bad_doff = ssh4.clone();
    bad_doff[20 + 12] = 4 << 4;
    let mut long_doff = ssh4.clone();
    long_doff[20 + 12] = 6 << 4;
    let mut long_payload6 = v6(CLIENT6, SERVER6, &[], UDP, &udp(1, 2, 0));
    long_payload6[5] += 1;
    let nine_dest_opts = [Ext::DestOpts(0); 9];
    let cases: Vec<(&str, Vec<u8>, Malformed)> = vec![
        ("version 5", vec![0x50; 40], Malformed::NotIp),
        ("version 0", vec![0x00; 40], Malformed::NotIp),
        (
            "19 bytes of v4",
            ssh4[..19].to_vec(),
            Malformed::ShortIpHeader,
        ),
        ("39 bytes of v6", vec![0x60; 39], Malformed::ShortIpHeader),
        ("IHL 4", bad_ihl, Malformed::BadLength),
        (
            "total length past the end",
            long_total,
            Malformed::BadLength,
        ),
        (
            "payload length past the end",
            long_payload6,
            Malformed::BadLength,
        ),
        (
            "TCP data offset 4",
            bad_doff,
            Malformed::ShortTransportHeader,
        ),
        (
            "TCP data offset past the end",
            long_doff,
            Malformed::ShortTransportHeader,
        ),
        (
            "tiny first fragment (RFC 1858)",
            v4_frag(CLIENT4, SERVER4, TCP, &tcp(1, 22, 0)[..8], 0, true),
            Malformed::ShortTransportHeader,
        ),
        (
            "TCP fragment at offset 8 bytes (RFC 1858)",
            v4_frag(CLIENT4, SERVER4, TCP, &[0u8; 16], 1, true),
            Malformed::OverlappingTcpFragment,
        ),
        (
            "v6 TCP fragment at offset 8 bytes",
            v6(
                CLIENT6,
                SERVER6,
                &[Ext::Fragment {
                    offset: 1,
                    more: false,
                }],
                TCP,
                &[0u8; 16],
            ),
            Malformed::OverlappingTcpFragment,
        ),
        (
            "first v6 fragment without the whole header chain (RFC 7112)",
            {
                let mut p = v6(
                    CLIENT6,
                    SERVER6,
                    &[
                        Ext::Fragment {
                            offset: 0,
                            more: true,
                        },
                        Ext::DestOpts(3),
                    ],
                    TCP,
                    &[],
                );
                p.truncate(40 + 8 + 16);
                p[4..6].copy_from_slice(&24u16.to_be_bytes());
                p
            },
            Malformed::ShortExtensionHeader,
        ),
        (
            "first v6 fragment with half a TCP header",
            v6(
                CLIENT6,
                SERVER6,
                &[Ext::Fragment {
                    offset: 0,
                    more: true,
                }],
                TCP,
                &[0u8; 8],
            ),
            Malformed::ShortTransportHeader,
        ),
        (
            "hop-by-hop after routing",
            v6(
                CLIENT6,
                SERVER6,
                &[Ext::Routing(0), Ext::HopByHop(0)],
                UDP,
                &udp(1, 2, 0),
            ),
            Malformed::BadHeaderChain,
        ),
        (
            "two fragment headers",
            v6(
                CLIENT6,
                SERVER6,
                &[
                    Ext::Fragment {
                        offset: 0,
                        more: true,
                    },
                    Ext::Fragment {
                        offset: 0,
                        more: true,
                    },
                ],
                UDP,
                &udp(1, 2, 0),
            ),
            Malformed::BadHeaderChain,
        ),
        (
            "nine destination options headers",
            v6(CLIENT6, SERVER6, &nine_dest_opts, UDP, &udp(1, 2, 0)),
            Malformed::BadHeaderChain,
        ),
        (
            "UDP header of 7 bytes",
            v4(CLIENT4, SERVER4, UDP, &[0u8; 7]),
            Malformed::ShortTransportHeader,
        ),
        (
            "ICMPv6 header of 4 bytes",
            v6(CLIENT6, SERVER6, &[], ICMPV6, &[128, 0, 0, 0]),
            Malformed::ShortTransportHeader,
        ),
    ];
    for (what, packet, want) in cases {
        for dir in [In, Out] {
            assert_eq!(f.decide(dir, &packet), Decision::Malformed(want), "{what}");
        }
    }
    // Eight destination options headers are still a (strange) valid chain.
    let eight = [Ext::DestOpts(0); 8];
    assert_eq!(
        f.decide(In, &v6(CLIENT6, SERVER6, &eight, TCP, &tcp(1, 22, 0))),
        rule(0, DENY)
    );
}

/// Every packet of the tables above, for the truncation and mutation tests.
pub(crate) fn sample_packets() -> Vec<Vec<u8>> {
    let chain = [
        Ext::HopByHop(1),
        Ext::DestOpts(0),
        Ext::Routing(2),
        Ext::Ah(1),
        Ext::Fragment {
            offset: 0,
            more: true,
        },
        Ext::DestOpts(1),
    ];
    vec![
        v4(CLIENT4, SERVER4, TCP, &tcp(40000, 22, 30)),
        v4_options(CLIENT4, SERVER4, UDP, &udp(1, 53, 30), 2),
        v4(CLIENT4, SERVER4, ICMP, &icmp(8, 56)),
        v4_frag(CLIENT4, SERVER4, TCP, &tcp(40000, 22, 20), 0, true),
        v4_frag(CLIENT4, SERVER4, UDP, &[0u8; 48], 100, false),
        v4(CLIENT4, SERVER4, 47, &[0u8; 24]),
        v6(CLIENT6, SERVER6, &[], TCP, &tcp(40000, 22, 10)),
        v6(CLIENT6, SERVER6, &[], ICMPV6, &icmp(128, 16)),
        v6(CLIENT6, SERVER6, &chain, TCP, &tcp(40000, 22, 10)),
        v6(CLIENT6, SERVER6, &chain, UDP, &udp(1, 2, 10)),
        v6(CLIENT6, SERVER6, &chain[..4], ICMPV6, &icmp(1, 40)),
        v6(
            CLIENT6,
            SERVER6,
            &[Ext::Fragment {
                offset: 77,
                more: true,
            }],
            UDP,
            &[0u8; 32],
        ),
    ]
}

#[test]
fn every_truncation_is_malformed_never_a_rule_decision() {
    let f = filter(SERVER_RULES);
    for packet in sample_packets() {
        assert!(
            !matches!(f.decide(In, &packet), Decision::Malformed(_)),
            "the whole packet reads: {packet:02x?}"
        );
        for cut in 0..packet.len() {
            let d = f.decide(In, &packet[..cut]);
            if cut == 0 {
                assert_eq!(d, Decision::Keepalive);
            } else {
                assert!(
                    matches!(d, Decision::Malformed(_)),
                    "{cut} of {} bytes gave {d:?}: {packet:02x?}",
                    packet.len()
                );
            }
        }
    }
}

#[test]
fn parsed_fields_of_a_long_chain() {
    let chain = [
        Ext::HopByHop(1),
        Ext::DestOpts(0),
        Ext::Routing(2),
        Ext::Ah(1),
        Ext::Fragment {
            offset: 0,
            more: true,
        },
        Ext::DestOpts(1),
    ];
    let h = headers::parse(&v6(CLIENT6, DEAD6, &chain, UDP, &udp(7, 9, 3))).unwrap();
    assert_eq!(h.src, u128::from_be_bytes(CLIENT6));
    assert_eq!(h.dst, u128::from_be_bytes(DEAD6));
    assert_eq!(h.proto, Some(UDP));
    assert_eq!(h.fragment, Fragment::First);
    assert_eq!(h.transport, Transport::Ports { src: 7, dst: 9 });
}

#[test]
fn redirect_names_the_icmp_and_the_icmpv6_redirect() {
    // RFC 792 type 5 and RFC 4861 §4.5 type 137: "drop redirects" must drop both.
    let f = filter("{default: allow, rules: [{action: deny, icmp_type: redirect}]}");
    check(
        &f,
        &[
            (
                "icmp redirect",
                In,
                v4(CLIENT4, SERVER4, ICMP, &icmp(5, 32)),
                rule(0, DENY),
            ),
            (
                "icmpv6 redirect",
                In,
                v6(CLIENT6, SERVER6, &[], ICMPV6, &icmp(137, 32)),
                rule(0, DENY),
            ),
            (
                "icmpv6 type 5 is no redirect",
                In,
                v6(CLIENT6, SERVER6, &[], ICMPV6, &icmp(5, 32)),
                Decision::Default(ALLOW),
            ),
        ],
    );
    let f = filter("{default: allow, rules: [{action: deny, proto: icmpv6, icmp_type: redirect}]}");
    assert_eq!(
        f.decide(In, &v6(CLIENT6, SERVER6, &[], ICMPV6, &icmp(137, 32))),
        rule(0, DENY)
    );
}
