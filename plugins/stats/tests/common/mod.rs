//! Helpers shared by the integration tests: build the stage from YAML, and a tunnel in
//! memory (a real `Forwarder`) with packets to push through it.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lametun_core::counters::PassDropSnapshot;
use lametun_core::pipeline::StageSnapshot;
use lametun_core::telemetry::CounterValues;
use lametun_core::testing::packets;
use lametun_core::{
    BuildContext, BuildError, Forwarder, ForwarderConfig, Outcome, PacketBuf, PeerMode, Pipeline,
    StageConfig, TelemetryHandle,
};
use lametun_core::{Metric, MetricKind, TunnelSnapshot};
use lametun_stage_stats::{Stats, StatsConfig};

pub const SERVER: &str = "192.0.2.1:1234";

/// Builds the stage from its YAML keys, keeping the concrete type.
pub fn build(yaml: &str, cx: &BuildContext) -> Result<Stats, BuildError> {
    let config: StatsConfig =
        yaml_serde::from_str(yaml).map_err(|e| BuildError::new(e.to_string()))?;
    config.build(cx)
}

/// The client end of a tunnel whose pipeline holds `stages`, with packet info on.
pub fn client(pipeline: Pipeline, telemetry: &TelemetryHandle) -> Arc<Forwarder> {
    Forwarder::new(
        pipeline,
        ForwarderConfig {
            packet_info: true,
            peer: PeerMode::Fixed(SERVER.parse().unwrap()),
            keepalive: Some(Duration::from_secs(25)),
            paths: 1,
        },
        telemetry,
        Instant::now(),
    )
}

/// An ICMP echo of `size` bytes, 172.31.255.7 -> 172.31.255.1.
pub fn ping(size: usize) -> Vec<u8> {
    packets::icmp_echo_v4([172, 31, 255, 7], [172, 31, 255, 1], size)
}

/// Sends `inner` out through `f` (as read from the TUN device); returns the datagram.
pub fn send(f: &Forwarder, inner: &[u8]) -> Vec<u8> {
    let mut storage = vec![0u8; f.headroom() + inner.len() + f.tailroom()];
    let mut pkt = PacketBuf::with_data(&mut storage, f.headroom(), inner);
    let peer = f.peer();
    match f.handle_tun(&mut pkt, peer.as_ref(), Instant::now()) {
        Outcome::Send(_) => pkt.as_slice().to_vec(),
        other => panic!("not sent: {other:?}"),
    }
}

/// Hands `datagram` to `f` as if received from the server.
pub fn receive(f: &Forwarder, datagram: &[u8]) -> Outcome {
    let mut storage = vec![0u8; datagram.len()];
    let mut pkt = PacketBuf::with_data(&mut storage, 0, datagram);
    let from: SocketAddr = SERVER.parse().unwrap();
    f.handle_udp(&mut pkt, from, None, Instant::now())
}

/// A keepalive from `f`, if due; returns the datagram.
pub fn keepalive(f: &Forwarder, now: Instant) -> Option<Vec<u8>> {
    let mut storage = vec![0u8; f.headroom() + f.tailroom()];
    let mut pkt = PacketBuf::new(&mut storage, f.headroom(), 0);
    f.poll_keepalive(&mut pkt, now)?;
    Some(pkt.as_slice().to_vec())
}

/// `[0, 0, 8, 0]` + `inner`: what a Go lametun peer sends for an IPv4 packet.
pub fn with_packet_info(inner: &[u8]) -> Vec<u8> {
    let mut d = vec![0, 0, 0x08, 0x00];
    d.extend_from_slice(inner);
    d
}

pub fn metric(
    name: &'static str,
    kind: MetricKind,
    labels: &[(&'static str, &str)],
    value: f64,
) -> Metric {
    Metric {
        name,
        help: "help text",
        kind,
        labels: labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        value,
    }
}

pub fn pd(passed: u64, drops: &[(&'static str, u64)]) -> PassDropSnapshot {
    PassDropSnapshot {
        passed,
        drops: drops.to_vec(),
    }
}

/// A server-side snapshot of `[filter, stats, chacha20poly1305]`, built by hand.
pub fn snapshot() -> TunnelSnapshot {
    use MetricKind::{Counter, Gauge};
    TunnelSnapshot {
        peer: Some("198.51.100.7:40000".parse().unwrap()),
        counters: CounterValues {
            tun_rx_packets: 1000,
            tun_rx_bytes: 1_200_000,
            udp_tx_datagrams: 998,
            udp_tx_bytes: 1_230_000,
            udp_rx_datagrams: 2010,
            udp_rx_bytes: 2_500_000,
            tun_tx_packets: 1990,
            tun_tx_bytes: 2_400_000,
            keepalives_sent: 0,
            keepalives_received: 5,
            peer_changes: 1,
            tun_read_errors: 0,
            tun_write_errors: 2,
            udp_send_errors: 0,
            udp_recv_errors: 0,
        },
        core_outbound: pd(998, &[("no_peer", 2)]),
        core_inbound: pd(1995, &[("malformed", 1)]),
        stages: vec![
            StageSnapshot {
                index: 0,
                type_name: "filter",
                label: "filter".into(),
                outbound: pd(998, &[]),
                inbound: pd(1995, &[("filtered", 10), ("malformed", 1)]),
                metrics: vec![
                    metric(
                        "filter_rule_matches",
                        Counter,
                        &[("rule", "0"), ("action", "deny")],
                        10.0,
                    ),
                    metric(
                        "filter_rule_matches",
                        Counter,
                        &[("rule", "2"), ("action", "deny")],
                        0.0,
                    ),
                    // Not valid or reserved: skipped, never a broken exposition.
                    metric("bad-name", Counter, &[], 1.0),
                    metric("stage_passed", Counter, &[], 1.0),
                    metric("tun_rx_packets", Counter, &[], 1.0),
                    metric("x_with_stage_label", Counter, &[("stage", "evil")], 1.0),
                ],
            },
            StageSnapshot {
                index: 1,
                type_name: "stats",
                label: "stats".into(),
                outbound: pd(998, &[]),
                inbound: pd(2006, &[]),
                metrics: vec![
                    metric(
                        "stats_packets",
                        Counter,
                        &[("direction", "outbound")],
                        998.0,
                    ),
                    metric(
                        "stats_bytes",
                        Counter,
                        &[("direction", "outbound")],
                        1_197_600.0,
                    ),
                    metric(
                        "stats_keepalives",
                        Counter,
                        &[("direction", "outbound")],
                        0.0,
                    ),
                    metric(
                        "stats_packets",
                        Counter,
                        &[("direction", "inbound")],
                        2001.0,
                    ),
                    metric(
                        "stats_bytes",
                        Counter,
                        &[("direction", "inbound")],
                        2_401_200.0,
                    ),
                    metric(
                        "stats_keepalives",
                        Counter,
                        &[("direction", "inbound")],
                        5.0,
                    ),
                ],
            },
            StageSnapshot {
                index: 2,
                type_name: "chacha20poly1305",
                label: "chacha20poly1305".into(),
                outbound: pd(998, &[]),
                inbound: pd(2006, &[("bad_tag", 3), ("replayed", 1)]),
                metrics: vec![
                    metric("replay_window_packets", Gauge, &[], 8128.0),
                    // A counter named with its suffix already: not doubled.
                    metric("rekeys_total", Counter, &[], 2.5),
                    // Same name as a counter above, other kind: skipped.
                    metric("filter_rule_matches", Gauge, &[("rule", "9")], 1.0),
                ],
            },
        ],
    }
}
