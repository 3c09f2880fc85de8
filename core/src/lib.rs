//! `lametun-core`: the sans-IO heart of lametun, a userspace VPN tunnel.
//!
//! lametun starts from the toy Go program of the article "VPNs from first principles":
//! read IP packets from a TUN device, send each one to the peer in a UDP datagram, and
//! write what comes back to the TUN device. This crate holds everything of that which is
//! *logic*: what a packet buffer is, how a chain of stages processes a packet, how the
//! stages are registered and configured, how big the MTU may be, what goes on the wire,
//! and who the peer is.
//!
//! ```text
//!            outbound: stages top to bottom as listed in the YAML
//!  TUN ──read──► [stage 1] ► [stage 2] ► … ► [stage n] ──send──► UDP peer
//!  TUN ◄─write── [stage 1] ◄ [stage 2] ◄ … ◄ [stage n] ◄──recv── UDP peer
//!            inbound: the same stages bottom to top
//! ```
//!
//! # What this crate does not do
//!
//! It does no IO and never reads the clock: no sockets, no TUN device, no async runtime.
//! Every input is an argument (the packet, its source address, the time) and every output
//! is a return value ([`Outcome`]). The `lametun` crate owns the device, the socket and
//! the threads; this split (quinn-proto's) is what lets every stage and the whole
//! forwarding logic be tested with packets in memory. The one exception is start-up:
//! a stage's [`StageConfig::build`] may read a key file or bind a socket.
//!
//! # Layout
//!
//! - [`guide`]: **writing a stage of your own**, from the trait to a running tunnel.
//! - [`packet`]: [`PacketBuf`], a packet with head and tail room, edited in place.
//! - [`stage`]: the [`Stage`] trait, [`Verdict`], [`DropReason`], [`Overhead`].
//! - [`pipeline`]: [`Pipeline`], the ordered chain with per-stage counters.
//! - [`registry`]: [`StageConfig`], [`register_stage!`], lookup by `type` name.
//! - [`config`]: the YAML model and errors that name file, line and key.
//! - [`mtu`]: the article's MTU arithmetic, done right.
//! - [`wire`]: the packet-information header and the checks on inbound packets.
//! - [`forwarder`]: [`Forwarder`], the tunnel logic: peer learning, keepalives, framing.
//! - [`telemetry`], [`counters`]: lock-free counters and snapshots of them.
//! - [`ratelimit`]: rate-limited logging for events an attacker can trigger.
//! - [`stages`]: the built-in `passthrough` stage.
//! - [`testing`]: the conformance kit every stage crate runs in its tests.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod counters;
pub mod forwarder;
pub mod guide;
pub mod mtu;
pub mod packet;
pub mod pipeline;
pub mod ratelimit;
pub mod registry;
pub mod stage;
pub mod stages;
pub mod telemetry;
pub mod testing;
pub mod wire;

pub use config::{ConfigError, ConfigErrors, TunnelConfig};
pub use forwarder::{Endpoint, Forwarder, ForwarderConfig, Outcome, PeerMode};
pub use packet::PacketBuf;
pub use pipeline::{Dropped, Pipeline};
pub use registry::{BuildContext, BuildError, StageConfig, StageRegistration};
pub use stage::{
    BackgroundTask, Direction, DropReason, Metric, MetricKind, Overhead, PacketMeta, Stage, Verdict,
};
pub use telemetry::{TelemetryHandle, TunnelSnapshot};

#[doc(hidden)]
pub mod __private {
    // `register_stage!` expands to `inventory::submit!` through this path, so stage
    // crates need no `inventory` dependency of their own.
    pub use inventory;
}
