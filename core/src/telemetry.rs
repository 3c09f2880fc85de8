//! The tunnel's own counters, and a handle through which stages read all counters.
//!
//! The per-packet code bumps relaxed atomics ([`Counter`]); readers (the stats stage,
//! the log summary, tests) take a [`TunnelSnapshot`], a plain copy of everything at one
//! moment: the tunnel's counters, the core's drops, and every stage's passes, drops and
//! metrics.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};

use crate::counters::{Counter, PassDropCounters, PassDropSnapshot};
use crate::pipeline::StageSnapshot;

/// Counters of the tunnel itself (not of a stage). Written by the forwarder and the
/// driver; each sits on its own cache line.
#[derive(Debug, Default)]
pub struct TunnelCounters {
    /// Packets read from the TUN device.
    pub tun_rx_packets: Counter,
    /// Bytes read from the TUN device.
    pub tun_rx_bytes: Counter,
    /// Datagrams sent to the peer (keepalives included).
    pub udp_tx_datagrams: Counter,
    /// UDP payload bytes sent to the peer.
    pub udp_tx_bytes: Counter,
    /// Datagrams received on the UDP socket, from anyone.
    pub udp_rx_datagrams: Counter,
    /// UDP payload bytes received.
    pub udp_rx_bytes: Counter,
    /// Packets written to the TUN device.
    pub tun_tx_packets: Counter,
    /// Bytes written to the TUN device.
    pub tun_tx_bytes: Counter,
    /// Keepalives sent.
    pub keepalives_sent: Counter,
    /// Keepalives received (and accepted by the whole chain).
    pub keepalives_received: Counter,
    /// Times the learned peer address of a path changed (roaming, NAT rebinding, a
    /// restart; with several workers, also once per client socket a path learns).
    pub peer_changes: Counter,
    /// Failed reads from the TUN device.
    pub tun_read_errors: Counter,
    /// Failed writes to the TUN device.
    pub tun_write_errors: Counter,
    /// Failed sends on the UDP socket.
    pub udp_send_errors: Counter,
    /// Failed receives on the UDP socket.
    pub udp_recv_errors: Counter,
    /// Drops by the core itself on the way out (no peer yet, not IP).
    pub core_outbound: PassDropCounters,
    /// Drops by the core itself on the way in (too short, malformed, wrong source).
    pub core_inbound: PassDropCounters,
}

impl TunnelCounters {
    /// Plain values now.
    pub fn values(&self) -> CounterValues {
        CounterValues {
            tun_rx_packets: self.tun_rx_packets.get(),
            tun_rx_bytes: self.tun_rx_bytes.get(),
            udp_tx_datagrams: self.udp_tx_datagrams.get(),
            udp_tx_bytes: self.udp_tx_bytes.get(),
            udp_rx_datagrams: self.udp_rx_datagrams.get(),
            udp_rx_bytes: self.udp_rx_bytes.get(),
            tun_tx_packets: self.tun_tx_packets.get(),
            tun_tx_bytes: self.tun_tx_bytes.get(),
            keepalives_sent: self.keepalives_sent.get(),
            keepalives_received: self.keepalives_received.get(),
            peer_changes: self.peer_changes.get(),
            tun_read_errors: self.tun_read_errors.get(),
            tun_write_errors: self.tun_write_errors.get(),
            udp_send_errors: self.udp_send_errors.get(),
            udp_recv_errors: self.udp_recv_errors.get(),
        }
    }
}

/// A copy of [`TunnelCounters`] at one moment (field meanings are the same).
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValues {
    pub tun_rx_packets: u64,
    pub tun_rx_bytes: u64,
    pub udp_tx_datagrams: u64,
    pub udp_tx_bytes: u64,
    pub udp_rx_datagrams: u64,
    pub udp_rx_bytes: u64,
    pub tun_tx_packets: u64,
    pub tun_tx_bytes: u64,
    pub keepalives_sent: u64,
    pub keepalives_received: u64,
    pub peer_changes: u64,
    pub tun_read_errors: u64,
    pub tun_write_errors: u64,
    pub udp_send_errors: u64,
    pub udp_recv_errors: u64,
}

impl CounterValues {
    /// `(name, help, value)` for every counter, in a fixed order (for exporters).
    pub fn named(&self) -> [(&'static str, &'static str, u64); 15] {
        [
            (
                "tun_rx_packets",
                "Packets read from the TUN device",
                self.tun_rx_packets,
            ),
            (
                "tun_rx_bytes",
                "Bytes read from the TUN device",
                self.tun_rx_bytes,
            ),
            (
                "udp_tx_datagrams",
                "Datagrams sent to the peer",
                self.udp_tx_datagrams,
            ),
            (
                "udp_tx_bytes",
                "UDP payload bytes sent to the peer",
                self.udp_tx_bytes,
            ),
            (
                "udp_rx_datagrams",
                "Datagrams received on the UDP socket",
                self.udp_rx_datagrams,
            ),
            (
                "udp_rx_bytes",
                "UDP payload bytes received",
                self.udp_rx_bytes,
            ),
            (
                "tun_tx_packets",
                "Packets written to the TUN device",
                self.tun_tx_packets,
            ),
            (
                "tun_tx_bytes",
                "Bytes written to the TUN device",
                self.tun_tx_bytes,
            ),
            ("keepalives_sent", "Keepalives sent", self.keepalives_sent),
            (
                "keepalives_received",
                "Keepalives received",
                self.keepalives_received,
            ),
            (
                "peer_changes",
                "Changes of the learned peer address",
                self.peer_changes,
            ),
            ("tun_read_errors", "Failed TUN reads", self.tun_read_errors),
            (
                "tun_write_errors",
                "Failed TUN writes",
                self.tun_write_errors,
            ),
            ("udp_send_errors", "Failed UDP sends", self.udp_send_errors),
            (
                "udp_recv_errors",
                "Failed UDP receives",
                self.udp_recv_errors,
            ),
        ]
    }
}

/// Everything counted, at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct TunnelSnapshot {
    /// Where datagrams go now (the learned or configured peer).
    pub peer: Option<SocketAddr>,
    /// The tunnel's counters.
    pub counters: CounterValues,
    /// Drops by the core on the way out.
    pub core_outbound: PassDropSnapshot,
    /// Drops by the core on the way in.
    pub core_inbound: PassDropSnapshot,
    /// Every stage, in chain order.
    pub stages: Vec<StageSnapshot>,
}

/// Something that can produce a [`TunnelSnapshot`] (the forwarder).
pub trait SnapshotSource: Send + Sync {
    /// Everything counted, now.
    fn snapshot(&self) -> TunnelSnapshot;
}

/// A handle on the running tunnel's counters, given to stages at build time.
///
/// Stages are built before the tunnel that will hold them, so the handle starts empty
/// and is attached once the tunnel exists; [`snapshot`](Self::snapshot) returns `None`
/// until then (and after the tunnel is gone).
#[derive(Clone, Default)]
pub struct TelemetryHandle(Arc<OnceLock<Weak<dyn SnapshotSource>>>);

impl std::fmt::Debug for TelemetryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryHandle")
            .field("attached", &self.0.get().is_some())
            .finish()
    }
}

impl TelemetryHandle {
    /// Attaches the tunnel (done by the core; a second attach is ignored).
    pub fn attach(&self, source: Weak<dyn SnapshotSource>) {
        let _ = self.0.set(source);
    }

    /// Everything counted, now; `None` before the tunnel runs.
    pub fn snapshot(&self) -> Option<TunnelSnapshot> {
        self.0.get()?.upgrade().map(|s| s.snapshot())
    }
}
