//! The stage API: what one step of the packet pipeline looks like.
//!
//! ```text
//!            outbound: stages top to bottom, as listed in the YAML file
//!  TUN ──read──► [stage 1] ► [stage 2] ► … ► [stage n] ──send──► UDP peer
//!  TUN ◄─write── [stage 1] ◄ [stage 2] ◄ … ◄ [stage n] ◄──recv── UDP peer
//!            inbound: the same stages bottom to top
//! ```
//!
//! The stage that encrypts on the way out is the one that decrypts on the way in, so a
//! chain reads like the layers of a packet: `[filter, stats, chacha20poly1305]` filters
//! and counts inner packets and encrypts last.
//!
//! The per-packet methods are synchronous and edit a [`PacketBuf`] in place. They take
//! `&self` because the driver runs one chain for all its worker threads (one per TUN
//! queue and one per UDP socket): state that changes per packet lives in atomics or
//! behind a lock the stage chooses (a send counter is one `fetch_add`; a replay window
//! is a short critical section). Stages never do IO and never read the clock: time
//! arrives in [`PacketMeta::now`] and [`Stage::on_tick`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Instant;

use crate::PacketBuf;

/// Bytes a stage may add to an outbound packet: `head` in front, `tail` behind.
///
/// The pipeline sums the overheads of its stages to reserve room in every buffer and to
/// compute the TUN MTU (see [`mtu`](crate::mtu)), the way quinn's `PacketKey::tag_len`
/// tells QUIC how big a sealed packet gets. A stage must never grow a packet by more than
/// it declares; debug builds check this after every stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Overhead {
    /// Bytes added in front of the packet.
    pub head: usize,
    /// Bytes added behind the packet.
    pub tail: usize,
}

impl Overhead {
    /// A stage that never grows packets.
    pub const NONE: Self = Self { head: 0, tail: 0 };

    /// An overhead of `head` bytes in front and `tail` bytes behind.
    pub const fn new(head: usize, tail: usize) -> Self {
        Self { head, tail }
    }

    /// `head + tail`: how much a packet can grow in all.
    pub const fn total(self) -> usize {
        self.head + self.tail
    }
}

impl std::ops::Add for Overhead {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Self::new(self.head + rhs.head, self.tail + rhs.tail)
    }
}

impl std::iter::Sum for Overhead {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::NONE, |a, b| a + b)
    }
}

/// Which way a packet travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the TUN device toward the peer (read from TUN, sent over UDP).
    Outbound,
    /// From the peer toward the TUN device (received over UDP, written to TUN).
    Inbound,
}

impl Direction {
    /// `"outbound"` or `"inbound"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a stage knows about the packet besides its bytes.
#[derive(Clone, Copy, Debug)]
pub struct PacketMeta {
    /// The time the batch holding this packet was read. One clock read per batch.
    pub now: Instant,
    /// Outbound: where the datagram will go. Inbound: where it came from.
    pub peer: Option<SocketAddr>,
}

impl PacketMeta {
    /// Metadata for a packet at `now` to or from `peer`.
    pub fn new(now: Instant, peer: Option<SocketAddr>) -> Self {
        Self { now, peer }
    }
}

/// What the pipeline should do with a packet after a stage looked at it.
#[must_use = "a verdict decides whether the packet lives"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Hand the packet to the next stage (or the sink).
    Pass,
    /// Drop the packet. Counted per stage and reason; not an error.
    Drop(DropReason),
}

/// Why a packet was dropped.
///
/// A drop is normal operation, not an error: the pipeline counts it per stage and per
/// reason, logs it at `debug` (rate-limited) and goes on with the next packet. Use the
/// most specific reason; [`DropReason::Custom`] takes any static name a stage needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Too short for the header the stage expects (truncated or forged).
    TooShort,
    /// Not an IPv4 or IPv6 packet, or its header is inconsistent.
    Malformed,
    /// A filter rule said no.
    Filtered,
    /// An authentication tag did not verify: forged, corrupted, or the wrong key.
    BadTag,
    /// Already seen, or too old for the replay window.
    Replayed,
    /// From a session the receiver does not know or no longer accepts.
    UnknownSession,
    /// No peer address is known yet to send to (the listening side before its first
    /// authenticated datagram).
    NoPeer,
    /// From an address that is not the configured peer.
    UnknownSource,
    /// Larger than the stage can handle.
    TooLarge,
    /// Anything else; the name is shown in counters and logs.
    Custom(&'static str),
}

impl DropReason {
    /// Every reason except `Custom`, in counter order.
    pub const KNOWN: [Self; 9] = [
        Self::TooShort,
        Self::Malformed,
        Self::Filtered,
        Self::BadTag,
        Self::Replayed,
        Self::UnknownSession,
        Self::NoPeer,
        Self::UnknownSource,
        Self::TooLarge,
    ];

    /// A stable snake_case name, used in counters, metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TooShort => "too_short",
            Self::Malformed => "malformed",
            Self::Filtered => "filtered",
            Self::BadTag => "bad_tag",
            Self::Replayed => "replayed",
            Self::UnknownSession => "unknown_session",
            Self::NoPeer => "no_peer",
            Self::UnknownSource => "unknown_source",
            Self::TooLarge => "too_large",
            Self::Custom(name) => name,
        }
    }

    /// Index into [`DropReason::KNOWN`], `None` for `Custom`.
    pub(crate) const fn index(self) -> Option<usize> {
        Some(match self {
            Self::TooShort => 0,
            Self::Malformed => 1,
            Self::Filtered => 2,
            Self::BadTag => 3,
            Self::Replayed => 4,
            Self::UnknownSession => 5,
            Self::NoPeer => 6,
            Self::UnknownSource => 7,
            Self::TooLarge => 8,
            Self::Custom(_) => return None,
        })
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One value a stage reports about itself (see [`Stage::metrics`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// Metric name without the `lametun_` prefix, snake_case (e.g. `filter_rule_drops`).
    pub name: &'static str,
    /// One line saying what it counts.
    pub help: &'static str,
    /// Whether it only goes up (a counter) or moves both ways (a gauge).
    pub kind: MetricKind,
    /// Extra labels, e.g. `[("rule", "3")]`.
    pub labels: Vec<(&'static str, String)>,
    /// The value now.
    pub value: f64,
}

/// Counter or gauge (the Prometheus meaning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (packets, bytes, drops).
    Counter,
    /// Goes up and down (window size, sessions).
    Gauge,
}

/// A future a stage wants the driver to run beside the tunnel (see [`Stage::background`]).
pub type BackgroundTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// One step of the packet pipeline.
///
/// Outbound packets (TUN → peer) visit stages in the order they appear in the YAML file;
/// inbound packets (peer → TUN) visit them in reverse, so a stage that encrypts on the way
/// out decrypts on the way back in. Stages never do IO and never read the clock.
///
/// An empty packet is a keepalive: it crosses the whole chain so that a stage which
/// authenticates datagrams authenticates keepalives too. Stages that look at IP headers
/// must let an empty packet pass.
///
/// A stage is built from its YAML keys by a [`StageConfig`](crate::StageConfig) and
/// registered by name with [`register_stage!`](crate::register_stage).
///
/// **Writing one?** The [stage author's guide](crate::guide) walks through a complete
/// stage and its tests, and says what each method may and may not do.
pub trait Stage: Send + Sync + 'static {
    /// Bytes this stage may add to an outbound packet (for buffer room and the MTU).
    fn overhead(&self) -> Overhead {
        Overhead::NONE
    }

    /// Whether [`inbound`](Self::inbound) may move the end of a packet further back than
    /// where it was when the stage got it, i.e. `append` (decompression, which may grow
    /// a packet up to the MTU).
    ///
    /// The default is `true`: the driver then copies every received datagram into a
    /// buffer with that room before the chain runs. A stage that only looks at packets,
    /// changes them in place or strips bytes (decryption) returns `false`. The promise
    /// is about the end of the packet: a stage that strips a header in front and
    /// appends as many bytes behind still grows it. When every stage of the chain
    /// promises it, the chain runs on the datagrams where the socket put them, and a
    /// copy of every packet is saved (2-5% of the CPU per byte, measured here). There is
    /// then no room behind the packet: `append` panics. The conformance kit checks the
    /// promise, and debug builds check it after every stage.
    fn grows_inbound(&self) -> bool {
        true
    }

    /// A packet read from the TUN device, travelling toward the peer.
    fn outbound(&self, pkt: &mut PacketBuf<'_>, meta: &PacketMeta) -> Verdict {
        let _ = (pkt, meta);
        Verdict::Pass
    }

    /// A datagram payload received from the peer, travelling toward the TUN device.
    fn inbound(&self, pkt: &mut PacketBuf<'_>, meta: &PacketMeta) -> Verdict {
        let _ = (pkt, meta);
        Verdict::Pass
    }

    /// Called about once a second with the current time (reports, timers, aging).
    fn on_tick(&self, now: Instant) {
        let _ = now;
    }

    /// One line for `lametun check-config` describing the resolved settings. Never
    /// include secrets.
    fn describe(&self) -> String {
        String::new()
    }

    /// Reports the stage's own counters (the core already counts passes and drops per
    /// reason for every stage; this is for anything finer, such as drops per rule).
    fn metrics(&self, out: &mut Vec<Metric>) {
        let _ = out;
    }

    /// A future to run beside the tunnel on its async runtime, such as an HTTP endpoint.
    /// Called once, after the pipeline is built; the driver drops the future at shutdown.
    /// Bind sockets in [`StageConfig::build`](crate::StageConfig::build), so that a port in
    /// use is a start-up error, and only serve them here.
    fn background(&self) -> Option<BackgroundTask> {
        None
    }
}
