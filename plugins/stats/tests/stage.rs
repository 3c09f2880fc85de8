//! The stage in a tunnel in memory: what it counts, where, and how its config fails.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lametun_core::testing::Conformance;
use lametun_core::{
    BuildContext, Direction, Outcome, Overhead, PacketBuf, PacketMeta, Pipeline, Stage,
    TelemetryHandle, Verdict, registry,
};
use lametun_stage_stats::{DirectionTotals, StatsTotals};

#[test]
fn is_registered_as_stats() {
    use lametun_stage_stats as _;
    let reg = registry::find("stats").expect("registered");
    assert!(!reg.summary.is_empty());
    // The example in the registration is a valid pipeline entry (if its port is taken
    // on this machine, the error must say so).
    let config =
        lametun_core::TunnelConfig::from_yaml(&format!("pipeline:\n{}", reg.example), None)
            .unwrap();
    match config.build_pipeline(&BuildContext::default()) {
        Ok(p) => assert_eq!(p.len(), 1),
        Err(e) => assert!(e.to_string().contains("127.0.0.1:9100: "), "{e}"),
    }
}

#[test]
fn conforms() {
    Conformance::from_yaml("stats", "interval: off").run_all();
    Conformance::from_yaml("stats", "{}").run_all();
}

#[test]
fn counts_packets_and_bytes_per_direction_and_keepalives_apart() {
    let telemetry = TelemetryHandle::default();
    let cx = BuildContext::new(None, telemetry.clone());
    let stats = std::sync::Arc::new(build("interval: off", &cx).unwrap());
    let mut p = Pipeline::new();
    p.push("stats", "stats", Box::new(Shared(stats.clone())));
    let f = client(p, &telemetry);
    let t0 = Instant::now();

    // The first keepalive goes out at once (empty: counted apart).
    assert!(keepalive(&f, t0).is_some());
    for size in [84, 1400, 28] {
        let datagram = send(&f, &ping(size));
        assert_eq!(datagram.len(), 4 + size, "packet info + inner packet");
    }
    // Inbound: two packets and a keepalive from the server.
    assert_eq!(
        receive(&f, &with_packet_info(&ping(100))),
        Outcome::WriteTun
    );
    assert_eq!(receive(&f, &with_packet_info(&ping(60))), Outcome::WriteTun);
    assert_eq!(receive(&f, &[0, 0, 8, 0]), Outcome::Keepalive);

    assert_eq!(
        stats.totals(),
        StatsTotals {
            outbound: DirectionTotals {
                packets: 3,
                bytes: 84 + 1400 + 28,
                keepalives: 1
            },
            inbound: DirectionTotals {
                packets: 2,
                bytes: 160,
                keepalives: 1
            },
        }
    );
    // The same figures reach the telemetry snapshot, as the stage's metrics, beside
    // the core's own counters (which count the wire, packet info and keepalives included).
    let snap = telemetry.snapshot().unwrap();
    let metric = |name: &str, dir: &str| {
        snap.stages[0]
            .metrics
            .iter()
            .find(|m| m.name == name && m.labels == [("direction", dir.to_owned())])
            .unwrap()
            .value
    };
    assert_eq!(metric("stats_packets", "outbound"), 3.0);
    assert_eq!(metric("stats_bytes", "outbound"), 1512.0);
    assert_eq!(metric("stats_keepalives", "outbound"), 1.0);
    assert_eq!(metric("stats_bytes", "inbound"), 160.0);
    assert_eq!(metric("stats_keepalives", "inbound"), 1.0);
    assert_eq!(snap.counters.udp_tx_datagrams, 0, "the driver counts sends");
    assert_eq!(snap.counters.tun_rx_bytes, 1512);
    assert_eq!(snap.counters.udp_rx_bytes, (4 + 100) + (4 + 60) + 4);
    assert_eq!(snap.stages[0].outbound.passed, 4);
    assert_eq!(snap.stages[0].inbound.passed, 3);
}

/// Lets a test keep a handle on a stage that the pipeline owns.
struct Shared(std::sync::Arc<lametun_stage_stats::Stats>);
impl Stage for Shared {
    fn outbound(&self, pkt: &mut PacketBuf<'_>, meta: &PacketMeta) -> Verdict {
        self.0.outbound(pkt, meta)
    }
    fn inbound(&self, pkt: &mut PacketBuf<'_>, meta: &PacketMeta) -> Verdict {
        self.0.inbound(pkt, meta)
    }
    fn metrics(&self, out: &mut Vec<lametun_core::Metric>) {
        self.0.metrics(out)
    }
}

/// Appends a 16-byte "tag" on the way out and checks it on the way in: a stand-in for
/// an encryption stage.
struct Seal;
impl Stage for Seal {
    fn overhead(&self) -> Overhead {
        Overhead::new(0, 16)
    }
    fn outbound(&self, pkt: &mut PacketBuf<'_>, _: &PacketMeta) -> Verdict {
        pkt.append(16).fill(0xaa);
        Verdict::Pass
    }
    fn inbound(&self, pkt: &mut PacketBuf<'_>, _: &PacketMeta) -> Verdict {
        match pkt.strip_back(16) {
            Some(tag) if tag.iter().all(|&b| b == 0xaa) => Verdict::Pass,
            Some(_) => Verdict::Drop(lametun_core::DropReason::BadTag),
            None => Verdict::Drop(lametun_core::DropReason::TooShort),
        }
    }
}

#[test]
fn above_a_sealing_stage_it_counts_inner_packets_below_it_the_wire() {
    let telemetry = TelemetryHandle::default();
    let cx = BuildContext::new(None, telemetry.clone());
    let inner = std::sync::Arc::new(build("interval: off", &cx).unwrap());
    let wire = std::sync::Arc::new(build("interval: off", &cx).unwrap());
    let mut p = Pipeline::new();
    p.push("stats", "stats#0", Box::new(Shared(inner.clone())));
    p.push("seal", "seal", Box::new(Seal));
    p.push("stats", "stats#2", Box::new(Shared(wire.clone())));
    let f = client(p, &telemetry);

    assert!(keepalive(&f, Instant::now()).is_some());
    let datagram = send(&f, &ping(84));
    assert_eq!(datagram.len(), 4 + 84 + 16);
    let mut reply = with_packet_info(&ping(84));
    reply.extend_from_slice(&[0xaa; 16]);
    assert_eq!(receive(&f, &reply), Outcome::WriteTun);
    let mut forged = with_packet_info(&ping(84));
    forged.extend_from_slice(&[0xbb; 16]);
    assert!(matches!(receive(&f, &forged), Outcome::Drop(_)));

    let (i, w) = (inner.totals(), wire.totals());
    // Inner: the ping, and the keepalive apart.
    assert_eq!(
        (i.outbound.packets, i.outbound.bytes, i.outbound.keepalives),
        (1, 84, 1)
    );
    // Wire: the sealed keepalive is a 16-byte datagram like any other.
    assert_eq!(
        (w.outbound.packets, w.outbound.bytes, w.outbound.keepalives),
        (2, 84 + 16 + 16, 0)
    );
    // Inbound the wire counter sees the forged datagram too; the seal then drops it, so
    // the inner counter does not.
    assert_eq!((w.inbound.packets, w.inbound.bytes), (2, 2 * (84 + 16)));
    assert_eq!((i.inbound.packets, i.inbound.bytes), (1, 84));
    let snap = telemetry.snapshot().unwrap();
    assert_eq!(snap.stages[1].inbound.dropped_for("bad_tag"), 1);
    let _ = Direction::Inbound;
}

#[test]
fn config_errors_name_the_key_and_come_together() {
    let cx = BuildContext::default();
    let reg = registry::find("stats").unwrap();

    let err = reg
        .build_yaml("intervall: 5s", &cx)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("intervall"), "{err}");

    let err = build("listen: localhost", &cx).unwrap_err();
    assert_eq!(err.errors.len(), 1);
    assert_eq!(err.errors[0].path, "listen");
    assert!(
        err.errors[0]
            .message
            .contains("invalid address \"localhost\""),
        "{err}"
    );
    assert!(err.errors[0].message.contains("127.0.0.1:9100"), "{err}");

    let err = build("interval: fast\nlisten: 127.0.0.1", &cx).unwrap_err();
    let paths: Vec<_> = err.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["interval", "listen"], "{err}");
    assert!(err.errors[0].message.contains("\"fast\""), "{err}");

    for bad in [
        "interval: -1",
        "interval: true",
        "interval: 1e12",
        "interval: \"-1\"",
        "interval: \"inf\"",
    ] {
        let err = build(bad, &cx).unwrap_err();
        assert_eq!(err.errors[0].path, "interval", "{bad}: {err}");
    }
    let err = reg
        .build_yaml("interval: [1]", &cx)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("interval") && err.contains("duration"),
        "{err}"
    );
}

#[test]
fn a_port_in_use_is_a_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = build(&format!("listen: {addr}"), &BuildContext::default()).unwrap_err();
    assert_eq!(err.errors[0].path, "listen");
    assert!(err.errors[0].message.contains("in use"), "{err}");
    assert!(err.errors[0].message.contains(&addr.to_string()), "{err}");
}

#[test]
fn intervals_and_describe() {
    let cx = BuildContext::default();
    let cases = [
        ("{}", Some(Duration::from_secs(10))),
        ("interval: 30s", Some(Duration::from_secs(30))),
        ("interval: 1m 30s", Some(Duration::from_secs(90))),
        ("interval: 5", Some(Duration::from_secs(5))),
        ("interval: 0.5", Some(Duration::from_millis(500))),
        ("interval: 0", None),
        ("interval: off", None),
        ("interval: \"0\"", None),
        // A number in quotes is still a number of seconds.
        ("interval: \"30\"", Some(Duration::from_secs(30))),
        ("interval: \" 0.5 \"", Some(Duration::from_millis(500))),
        ("interval: false", None),
    ];
    for (yaml, want) in cases {
        assert_eq!(build(yaml, &cx).unwrap().interval(), want, "{yaml}");
    }
    let s = build("interval: off\nlisten: 127.0.0.1:0", &cx).unwrap();
    let addr = s.local_addr().unwrap();
    assert_eq!(
        s.describe(),
        format!(
            "counts packets and bytes at this point; no summary; metrics at http://{addr}/metrics"
        )
    );
    assert!(!s.describe().contains('\n'));
    let s = build("{}", &cx).unwrap();
    assert_eq!(
        s.describe(),
        "counts packets and bytes at this point; summary every 10s; no endpoint"
    );
    assert!(s.background().is_none());
}

#[test]
fn ticks_without_a_tunnel_or_with_reports_off_do_nothing_harmful() {
    let cx = BuildContext::default();
    let t0 = Instant::now();
    for yaml in ["interval: 1s", "interval: off"] {
        let s = build(yaml, &cx).unwrap();
        for i in 0..5 {
            s.on_tick(t0 + Duration::from_secs(i));
        }
    }
}

/// What `f` logs (at `info` and above), as the binary's log would show it.
fn logged(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_target(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
}

#[test]
fn two_stats_stages_say_which_one_a_summary_line_is_from() {
    let telemetry = TelemetryHandle::default();
    let cx = BuildContext::new(None, telemetry.clone());
    let above = std::sync::Arc::new(build("interval: 1s", &cx.for_stage(0)).unwrap());
    let below = std::sync::Arc::new(build("interval: 1s", &cx.for_stage(1)).unwrap());
    let mut p = Pipeline::new();
    p.push("stats", "stats#0", Box::new(Shared(above.clone())));
    p.push("stats", "stats#1", Box::new(Shared(below.clone())));
    let f = client(p, &telemetry);
    send(&f, &ping(100));
    let t0 = Instant::now();
    let log = logged(|| {
        for i in 0..2 {
            above.on_tick(t0 + Duration::from_secs(i));
            below.on_tick(t0 + Duration::from_secs(i));
        }
    });
    let lines: Vec<_> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains(" stats#0: out "), "{log}");
    assert!(lines[1].contains(" stats#1: out "), "{log}");

    // Alone in its chain, a stats stage's line is as the README shows it.
    let telemetry = TelemetryHandle::default();
    let cx = BuildContext::new(None, telemetry.clone());
    let alone = std::sync::Arc::new(build("interval: 1s", &cx).unwrap());
    let mut p = Pipeline::new();
    p.push("stats", "stats", Box::new(Shared(alone.clone())));
    let _f = client(p, &telemetry);
    let log = logged(|| {
        for i in 0..2 {
            alone.on_tick(t0 + Duration::from_secs(i));
        }
    });
    assert!(log.contains(" INFO out 0 pkt/s"), "{log}");
}
