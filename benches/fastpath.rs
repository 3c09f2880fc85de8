//! What the driver's batch planning costs, per batch of 128 packets, without a device:
//!
//! - `gro/plan/tcp`: merging 128 TCP segments of three flows into superpackets;
//! - `gro/plan/not_mergeable`: 128 packets that cannot merge (the worst case of the scan);
//! - `gro/write/tcp`: planning and writing them with `writev` to `/dev/null`, i.e. the
//!   gathered write without the kernel's receive path;
//! - `gso/plan_runs`: grouping 128 outgoing datagrams into UDP GSO sends.
//!
//! Run with `cargo bench -p lametun`. The whole-tunnel figures are `bench/run.sh`'s.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lametun::batch::{Datagram, GsoLimits, plan_runs};
use lametun::gro::Coalescer;
use lametun_core::Endpoint;
use lametun_core::testing::packets::ipv4;

const MSS: usize = 1428;

fn tcp(flow: u16, seq: u32, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20 + MSS];
    t[0..2].copy_from_slice(&flow.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&512u16.to_be_bytes());
    ipv4([172, 31, 255, 7], [172, 31, 255, 13], 6, &t)
}

fn bench(c: &mut Criterion) {
    let mergeable: Vec<Vec<u8>> = (0..128u32)
        .map(|i| tcp((i % 3) as u16, (i / 3) * MSS as u32, 0x10))
        .collect();
    // SYNs never merge: every packet is its own write and scans the open flows.
    let single: Vec<Vec<u8>> = (0..128u32).map(|i| tcp(i as u16, 0, 0x02)).collect();
    let mut g = c.benchmark_group("gro");
    g.throughput(Throughput::Elements(128));
    for (name, packets) in [("plan/tcp", &mergeable), ("plan/not_mergeable", &single)] {
        let refs: Vec<&[u8]> = packets.iter().map(|p| &p[..]).collect();
        let mut co = Coalescer::new(true, true);
        g.bench_function(name, |b| b.iter(|| black_box(co.plan(black_box(&refs)))));
    }
    let refs: Vec<&[u8]> = mergeable.iter().map(|p| &p[..]).collect();
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let mut co = Coalescer::new(true, true);
    g.bench_function("write/tcp", |b| {
        b.iter(|| {
            co.plan(&refs);
            black_box(co.write(&null, &refs).unwrap())
        })
    });
    g.finish();

    let to = Endpoint {
        addr: "10.99.0.1:1234".parse().unwrap(),
        local_ip: None,
    };
    let datagrams: Vec<Datagram> = (0..128)
        .map(|i| Datagram {
            start: i * 1500,
            len: if i % 45 == 44 { 600 } else { 1472 },
            to,
        })
        .collect();
    let mut runs = Vec::with_capacity(128);
    let mut g = c.benchmark_group("gso");
    g.throughput(Throughput::Elements(128));
    g.bench_function("plan_runs", |b| {
        b.iter(|| {
            plan_runs(
                black_box(&datagrams),
                GsoLimits {
                    max_segments: 64,
                    max_bytes: GsoLimits::MAX_BYTES,
                },
                &mut runs,
            );
            black_box(runs.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
