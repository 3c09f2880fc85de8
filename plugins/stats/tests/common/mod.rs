//! Helpers shared by the integration tests: build the stage from YAML, and a tunnel in
//! memory (a real `Forwarder`) with packets to push through it.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lametun_core::testing::packets;
use lametun_core::{
    BuildContext, BuildError, Forwarder, ForwarderConfig, Outcome, PacketBuf, PeerMode, Pipeline,
    StageConfig, TelemetryHandle,
};
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
