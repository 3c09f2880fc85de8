//! What the `stats` stage costs per packet.
//!
//! - `stage/passthrough` vs `stage/stats`: the stage alone, called through `dyn Stage` as
//!   the pipeline does, against a stage that does nothing;
//! - `pipeline/passthrough` vs `pipeline/stats`: a one-stage chain either way, so the
//!   difference is what counting adds (the pipeline's own pass counter is in both);
//! - `contended/2_threads`: two threads counting outbound packets on the same stage at
//!   once, the worst case of two TUN queues (each packet then fights for one cache line).
//!
//! Run with `cargo bench -p lametun-stage-stats`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lametun_core::{BuildContext, PacketBuf, PacketMeta, Pipeline, Stage, registry};
use lametun_stage_stats as _;

const SIZE: usize = 1400;

fn stats() -> Box<dyn Stage> {
    registry::find("stats")
        .expect("registered")
        .build_yaml("interval: off", &BuildContext::default())
        .expect("builds")
}

fn passthrough() -> Box<dyn Stage> {
    registry::find("passthrough")
        .expect("registered")
        .build_yaml("{}", &BuildContext::default())
        .expect("builds")
}

fn bench(c: &mut Criterion) {
    let meta = PacketMeta::new(Instant::now(), None);
    let mut storage = vec![0x45u8; SIZE + 64];

    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Elements(1));
    // `passthrough` is the floor: the dynamic call and the buffer, no work.
    for (name, stage) in [("passthrough", passthrough()), ("stats", stats())] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut pkt = PacketBuf::new(&mut storage, 32, SIZE);
                black_box(stage.outbound(black_box(&mut pkt), &meta))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    for (name, stage) in [("passthrough", passthrough()), ("stats", stats())] {
        let mut p = Pipeline::new();
        p.push("x", "x", stage);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut pkt = PacketBuf::new(&mut storage, 32, SIZE);
                black_box(p.outbound(black_box(&mut pkt), &meta))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("contended");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    let stage: Arc<dyn Stage> = Arc::from(stats());
    g.bench_function("2_threads", |b| {
        b.iter_custom(|iters| {
            // Both threads count `iters` packets; the time is the slower one's, per packet
            // of one thread.
            let barrier = Arc::new(Barrier::new(2));
            let other = {
                let (stage, barrier) = (stage.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut storage = vec![0x45u8; SIZE + 64];
                    let meta = PacketMeta::new(Instant::now(), None);
                    barrier.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        let mut pkt = PacketBuf::new(&mut storage, 32, SIZE);
                        let _ = black_box(stage.outbound(black_box(&mut pkt), &meta));
                    }
                    t.elapsed()
                })
            };
            barrier.wait();
            let t = Instant::now();
            for _ in 0..iters {
                let mut pkt = PacketBuf::new(&mut storage, 32, SIZE);
                let _ = black_box(stage.outbound(black_box(&mut pkt), &meta));
            }
            t.elapsed().max(other.join().expect("thread"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
