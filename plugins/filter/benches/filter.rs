//! Per-packet cost of the `filter` stage with a typical rule set.
//!
//! `cargo bench -p lametun-stage-filter`. Each case runs one packet through
//! `Stage::inbound` or `Stage::outbound` of a built filter, as the pipeline does: parse
//! the headers, try the rules in order, count the match. The packet is not copied per
//! iteration (the filter never edits it).

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lametun_core::testing::packets;
use lametun_core::{BuildContext, PacketBuf, PacketMeta, Stage, registry};
use lametun_stage_filter as _; // links the crate, and with it its registration

/// Eight rules of the kind a server has; a packet that no rule matches tries them all.
const TYPICAL: &str = r#"
default: allow
rules:
  - { action: deny,  direction: inbound, proto: tcp, dst_port: 22, name: no-ssh }
  - { action: allow, src: 172.31.255.0/24, proto: [icmp, icmpv6] }
  - { action: deny,  dst: ["fd00:dead::/32", 10.66.0.0/16] }
  - { action: deny,  proto: udp, dst_port: [137-139, 445, 1900, 5353] }
  - { action: deny,  direction: inbound, proto: tcp, dst_port: [23, 25, 3389, 5900-5910] }
  - { action: deny,  src: [192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24] }
  - { action: deny,  proto: [47, 50] }
  - { action: deny,  fragment: later, dst: 172.31.255.1 }
"#;

fn build(yaml: &str) -> Box<dyn Stage> {
    registry::find("filter")
        .expect("registered")
        .build_yaml(yaml, &BuildContext::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn tcp_v4(dport: u16, size: usize) -> Vec<u8> {
    let mut tcp = vec![0u8; size - 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    packets::ipv4([172, 31, 255, 7], [172, 31, 255, 1], 6, &tcp)
}

fn udp_v6_with_extensions() -> Vec<u8> {
    // Hop-by-hop (8 bytes) and destination options (8 bytes), then UDP to port 443.
    let mut body = vec![60, 0, 1, 4, 0, 0, 0, 0, 17, 0, 1, 4, 0, 0, 0, 0];
    let mut udp = vec![0u8; 8 + 1200];
    udp[0..2].copy_from_slice(&5000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&443u16.to_be_bytes());
    body.extend(udp);
    packets::ipv6([0xfd; 16], [0xfe; 16], 0, &body)
}

fn bench(c: &mut Criterion) {
    let typical = build(TYPICAL);
    let empty = build("default: allow");
    let meta = PacketMeta::new(Instant::now(), None);
    let cases: [(&str, &dyn Stage, Vec<u8>, bool); 5] = [
        (
            "no rules, tcp v4 (parse only)",
            &*empty,
            tcp_v4(443, 1400),
            true,
        ),
        (
            "8 rules, ssh denied by rule 0",
            &*typical,
            tcp_v4(22, 60),
            true,
        ),
        (
            "8 rules, tcp v4 to 443, default",
            &*typical,
            tcp_v4(443, 1400),
            true,
        ),
        (
            "8 rules, outbound tcp v4, default",
            &*typical,
            tcp_v4(443, 1400),
            false,
        ),
        (
            "8 rules, udp v6 + 2 ext headers, default",
            &*typical,
            udp_v6_with_extensions(),
            true,
        ),
    ];
    let mut group = c.benchmark_group("filter");
    group.throughput(Throughput::Elements(1));
    for (name, stage, packet, inbound) in cases {
        let mut storage = packet.clone();
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &packet);
        group.bench_function(name, |b| {
            b.iter(|| {
                let verdict = if inbound {
                    stage.inbound(black_box(&mut pkt), &meta)
                } else {
                    stage.outbound(black_box(&mut pkt), &meta)
                };
                black_box(verdict)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
