//! `stats`: see what the tunnel does. Counts packets and bytes where it stands in the
//! chain, and reports them, together with everything the core counts, three ways.
//!
//! ```yaml
//! pipeline:
//!   - type: stats
//!     interval: 10s            # a summary line in the log every 10 s; `off` disables
//!     listen: 127.0.0.1:9100   # optional: a Prometheus endpoint at /metrics
//!   - type: chacha20poly1305   # stats above encryption counts inner packets
//! ```
//!
//! # Where it stands decides what it counts
//!
//! Outbound packets visit the stages top to bottom and inbound packets bottom to top
//! (see [`lametun_core::stage`]). A `stats` stage above an encryption stage sees inner IP
//! packets: the traffic the applications sent. Below it, it sees the sealed datagrams
//! that go on the wire, with their nonces and tags. A chain may hold several `stats`
//! stages (say one at each end) to see the overhead; they are told apart by their
//! `stage` label (`stats#0`, `stats#2`).
//!
//! An empty packet is a keepalive (see [`Stage`](lametun_core::Stage)). It is counted on its own, in
//! `lametun_stats_keepalives_total`, and *not* in the packet and byte counters, so that
//! those match the traffic that was sent. Below an encryption stage a keepalive is a
//! sealed, non-empty datagram, and is counted as one: it is on the wire.
//!
//! Inbound, the stage counts what the stages below it passed; a packet that a stage
//! above it (or the core's final check) then drops was still counted here. The drops
//! are in the per-stage counters.
//!
//! # The three reports
//!
//! 1. **The log** ([`summary`]): every `interval` (default 10 s), one `info` line with
//!    rates and totals per direction in human units, the drops by stage and reason,
//!    and the IO errors.
//! 2. **A Prometheus endpoint** ([`exposition`], [`server`]), when `listen` is set:
//!    `GET /metrics` returns the stage's counters and the whole
//!    [`TunnelSnapshot`](lametun_core::TunnelSnapshot) (tunnel counters, core drops, every
//!    stage's passes and drops by reason, and the stages' own metrics such as drops per
//!    filter rule) in the OpenMetrics or Prometheus text format, names prefixed
//!    `lametun_`.
//! 3. **`lametun stats [ADDR] [--watch]`** ([`client`]): reads that endpoint and prints
//!    a table; with `--watch` it refreshes it in place, `top`-style, with rates. The
//!    binary's CLI calls [`run_stats_command`]; the parsing ([`parse`]) and the table
//!    ([`report`]) are pure functions, tested on their own.
//!
//! # Cost on the per-packet path
//!
//! Two relaxed atomic adds (packets and bytes) on a cache line of their own per
//! direction: no lock, no allocation, no clock read. `cargo bench -p
//! lametun-stage-stats` measures it. Everything else (summaries, rates, the endpoint)
//! happens off the packet path, in [`on_tick`](lametun_core::Stage::on_tick) and on the runtime.
//!
//! # What this crate does not do
//!
//! It keeps no history (Prometheus does that), no per-peer or per-flow counters (the
//! tunnel has one peer; flows are the filter's business), no latency histograms, and the
//! endpoint speaks plain HTTP/1.1 without TLS or authentication: bind it to loopback,
//! or to an address only your monitoring can reach.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod exposition;
pub mod human;
pub mod parse;
pub mod report;
pub mod server;
mod stage;
pub mod summary;

pub use client::{DEFAULT_ADDR, run_stats_command};
pub use stage::{DEFAULT_INTERVAL, DirectionTotals, Stats, StatsConfig, StatsTotals};

lametun_core::register_stage!(StatsConfig);
