//! The `stats` stage itself: its config, its counters, and how it hooks into the core.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lametun_core::{
    BackgroundTask, BuildContext, BuildError, Metric, MetricKind, PacketBuf, PacketMeta, Stage,
    StageConfig, TelemetryHandle, TunnelSnapshot, Verdict,
};
use serde::Deserialize;

use crate::server;
use crate::summary::Reporter;

/// How often the summary line is logged unless `interval` says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Config of `type: stats`.
///
/// ```yaml
/// - type: stats
///   interval: 10s            # log a summary every 10 s (default); 0 or off: never
///   listen: 127.0.0.1:9100   # serve Prometheus metrics at http://127.0.0.1:9100/metrics
/// ```
///
/// `interval` takes a duration (`10s`, `1m`, `1m 30s`), a number of seconds, or `off`
/// (`0` and `false` mean the same). `listen` takes `IP:PORT` (`[::1]:9100` for IPv6);
/// the port is bound when the config is built, so a port in use is a start-up error.
/// Without `listen` there is no endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    #[serde(default)]
    interval: Option<RawInterval>,
    #[serde(default)]
    listen: Option<String>,
}

/// `interval` as written; checked in `build`, so that its error and a `listen` error
/// are reported together.
#[derive(Debug)]
enum RawInterval {
    Bool(bool),
    Number(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawInterval {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawInterval;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 10s or 1m, a number of seconds, or off")
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawInterval, E> {
                Ok(RawInterval::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawInterval, E> {
                Ok(RawInterval::Number(v as f64))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawInterval, E> {
                Ok(RawInterval::Number(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawInterval, E> {
                Ok(RawInterval::Number(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawInterval, E> {
                Ok(RawInterval::Text(v.to_owned()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Checks `interval`: `None` means off.
fn parse_interval(raw: &RawInterval) -> Result<Option<Duration>, String> {
    const EXPECTED: &str = "expected a duration such as 10s or 1m, a number of seconds, or off";
    match raw {
        RawInterval::Bool(false) => Ok(None),
        RawInterval::Bool(true) => Err(format!(
            "{EXPECTED}, found true (the default is {})",
            humantime::format_duration(DEFAULT_INTERVAL)
        )),
        RawInterval::Number(n) if *n == 0.0 => Ok(None),
        RawInterval::Number(n) if n.is_finite() && *n >= 0.001 && *n <= 1e9 => {
            Ok(Some(Duration::from_secs_f64(*n)))
        }
        RawInterval::Number(n) => Err(format!("{EXPECTED}, found {n}")),
        RawInterval::Text(s) => {
            let s = s.trim();
            if s == "off" {
                return Ok(None);
            }
            // A number in quotes (`"30"`) is a number of seconds, as without them.
            if let Ok(n) = s.parse::<f64>() {
                return parse_interval(&RawInterval::Number(n));
            }
            match humantime::parse_duration(s) {
                Ok(d) if d.is_zero() => Ok(None),
                Ok(d) => Ok(Some(d)),
                Err(e) => Err(format!("{EXPECTED}, found {s:?} ({e})")),
            }
        }
    }
}

/// Checks `listen`.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("invalid address {text:?}: expected IP:PORT, such as 127.0.0.1:9100 or [::1]:9100")
    })
}

impl StageConfig for StatsConfig {
    const TYPE: &'static str = "stats";
    const SUMMARY: &'static str = "count packets and bytes here; log a summary, serve Prometheus metrics (`lametun stats` reads them)";
    const EXAMPLE: &'static str = "- type: stats\n  interval: 10s\n  listen: 127.0.0.1:9100\n";
    type Stage = Stats;

    fn build(self, cx: &BuildContext) -> Result<Stats, BuildError> {
        let mut errors = BuildError::default();
        let interval = match self.interval.as_ref().map(parse_interval) {
            None => Some(DEFAULT_INTERVAL),
            Some(Ok(interval)) => interval,
            Some(Err(message)) => {
                errors.push("interval", message);
                None
            }
        };
        // A dry run (`lametun check-config`, perhaps beside the running tunnel) checks the
        // address but binds nothing; a real build binds now, so that a port in use is a
        // start-up error.
        let (listener, local_addr) = match self.listen.as_deref().map(parse_listen) {
            None => (None, None),
            Some(Ok(addr)) if cx.dry_run() => (None, Some(addr)),
            Some(Ok(addr)) => match server::bind(addr) {
                Ok(listener) => {
                    let local = listener.local_addr().ok();
                    (Some(listener), local)
                }
                Err(message) => {
                    errors.push("listen", message);
                    (None, None)
                }
            },
            Some(Err(message)) => {
                errors.push("listen", message);
                (None, None)
            }
        };
        errors.or_ok(Stats {
            index: cx.stage_index(),
            outbound: DirCounters::default(),
            inbound: DirCounters::default(),
            interval,
            telemetry: cx.telemetry().clone(),
            reporter: Mutex::new(interval.map(Reporter::new)),
            listener: Mutex::new(listener),
            local_addr,
        })
    }
}

/// The counters of one direction, on a cache line of their own: the outbound and the
/// inbound path run on different threads and must not bounce each other's line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct DirCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    keepalives: AtomicU64,
}

impl DirCounters {
    /// The whole per-packet cost of the stage: relaxed adds, no lock.
    #[inline]
    fn count(&self, len: usize) {
        if len == 0 {
            self.keepalives.fetch_add(1, Ordering::Relaxed);
        } else {
            self.packets.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
    }

    fn totals(&self) -> DirectionTotals {
        DirectionTotals {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            keepalives: self.keepalives.load(Ordering::Relaxed),
        }
    }
}

/// What one `stats` stage counted in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionTotals {
    /// Non-empty packets that reached the stage.
    pub packets: u64,
    /// Their bytes (as the stage saw them: inner packets above an encryption stage,
    /// sealed datagrams below it).
    pub bytes: u64,
    /// Empty packets (keepalives), counted apart and in neither figure above.
    pub keepalives: u64,
}

/// What one `stats` stage counted, both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsTotals {
    /// Toward the peer.
    pub outbound: DirectionTotals,
    /// Toward the TUN device.
    pub inbound: DirectionTotals,
}

/// The `stats` stage: counts what passes, never drops. See the [crate docs](crate).
pub struct Stats {
    /// Position in the chain, to find this stage's label in a snapshot.
    index: usize,
    outbound: DirCounters,
    inbound: DirCounters,
    interval: Option<Duration>,
    telemetry: TelemetryHandle,
    /// Used by `on_tick` only (once a second), never per packet.
    reporter: Mutex<Option<Reporter>>,
    /// Bound in `build`, handed to the server task by `background`.
    listener: Mutex<Option<std::net::TcpListener>>,
    local_addr: Option<SocketAddr>,
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats")
            .field("totals", &self.totals())
            .field("interval", &self.interval)
            .field("listen", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Stats {
    /// Everything counted so far.
    pub fn totals(&self) -> StatsTotals {
        StatsTotals {
            outbound: self.outbound.totals(),
            inbound: self.inbound.totals(),
        }
    }

    /// The address the endpoint listens on (with the real port when `listen` said 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// How often the summary is logged; `None`: never.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// This stage's label (`stats#2`) when the chain holds the type more than once, so
    /// that the summary lines of several `stats` stages can be told apart; `None` when
    /// it is the only one (its label is then just `stats`).
    fn label_among_several<'a>(&self, snapshot: &'a TunnelSnapshot) -> Option<&'a str> {
        snapshot
            .stages
            .iter()
            .find(|s| s.index == self.index)
            .filter(|s| s.label != s.type_name)
            .map(|s| s.label.as_str())
    }
}

impl Stage for Stats {
    /// Counting only reads packets.
    fn grows_inbound(&self) -> bool {
        false
    }

    #[inline]
    fn outbound(&self, pkt: &mut PacketBuf<'_>, _meta: &PacketMeta) -> Verdict {
        self.outbound.count(pkt.len());
        Verdict::Pass
    }

    #[inline]
    fn inbound(&self, pkt: &mut PacketBuf<'_>, _meta: &PacketMeta) -> Verdict {
        self.inbound.count(pkt.len());
        Verdict::Pass
    }

    fn on_tick(&self, now: Instant) {
        let mut reporter = self.reporter.lock().unwrap_or_else(|e| e.into_inner());
        let Some(reporter) = reporter.as_mut() else {
            return;
        };
        if !reporter.is_due(now) {
            return;
        }
        // The snapshot calls `metrics` on every stage, this one included: it only reads
        // atomics, so holding the reporter lock here is fine.
        let snapshot = self.telemetry.snapshot();
        if let Some(line) = reporter.report(now, self.totals(), snapshot.as_ref()) {
            match snapshot.as_ref().and_then(|s| self.label_among_several(s)) {
                Some(label) => tracing::info!(target: "lametun::stats", "{label}: {line}"),
                None => tracing::info!(target: "lametun::stats", "{line}"),
            }
        }
    }

    fn describe(&self) -> String {
        let log = match self.interval {
            Some(i) => format!("summary every {}", humantime::format_duration(i)),
            None => "no summary".to_owned(),
        };
        let endpoint = match self.local_addr {
            Some(addr) => format!("metrics at http://{addr}/metrics"),
            None => "no endpoint".to_owned(),
        };
        format!("counts packets and bytes at this point; {log}; {endpoint}")
    }

    fn metrics(&self, out: &mut Vec<Metric>) {
        for (direction, counters) in [("outbound", &self.outbound), ("inbound", &self.inbound)] {
            let t = counters.totals();
            let labels = || vec![("direction", direction.to_owned())];
            out.push(Metric {
                name: "stats_packets",
                help: "Non-empty packets that passed this stats stage",
                kind: MetricKind::Counter,
                labels: labels(),
                value: t.packets as f64,
            });
            out.push(Metric {
                name: "stats_bytes",
                help: "Bytes of the packets that passed this stats stage",
                kind: MetricKind::Counter,
                labels: labels(),
                value: t.bytes as f64,
            });
            out.push(Metric {
                name: "stats_keepalives",
                help: "Empty packets (keepalives) that passed this stats stage, not in packets or bytes",
                kind: MetricKind::Counter,
                labels: labels(),
                value: t.keepalives as f64,
            });
        }
    }

    fn background(&self) -> Option<BackgroundTask> {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        Some(Box::pin(server::serve(listener, self.telemetry.clone())))
    }
}
