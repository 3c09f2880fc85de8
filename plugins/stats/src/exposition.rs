//! A [`TunnelSnapshot`] in the Prometheus exposition formats, by `prometheus-client`.
//!
//! The snapshot is taken at each scrape and handed to the encoder through a
//! [`Collector`], so nothing is registered ahead of time and the per-packet path
//! never touches the Prometheus library. The metrics, all prefixed `lametun_`:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `lametun_tun_rx_packets_total`, `…_tun_rx_bytes_total` | | read from the TUN device |
//! | `lametun_udp_tx_datagrams_total`, `…_udp_tx_bytes_total` | | sent to the peer (keepalives included) |
//! | `lametun_udp_rx_datagrams_total`, `…_udp_rx_bytes_total` | | received on the socket, from anyone |
//! | `lametun_tun_tx_packets_total`, `…_tun_tx_bytes_total` | | written to the TUN device |
//! | `lametun_keepalives_sent_total`, `…_keepalives_received_total` | | |
//! | `lametun_peer_changes_total` | | the learned peer address of a path changed |
//! | `lametun_{tun_read,tun_write,udp_send,udp_recv}_errors_total` | | failed IO calls |
//! | `lametun_core_passed_total` | `direction` | packets the core's own checks passed |
//! | `lametun_core_dropped_total` | `direction`, `reason` | drops by the core (no peer yet, malformed, wrong source) |
//! | `lametun_stage_passed_total` | `stage`, `type`, `direction` | passes of every stage |
//! | `lametun_stage_dropped_total` | `stage`, `type`, `direction`, `reason` | drops of every stage by reason |
//! | `lametun_stats_packets_total`, `…_stats_bytes_total`, `…_stats_keepalives_total` | `stage`, `direction` | what each `stats` stage counted |
//! | `lametun_<name>` | `stage`, the metric's own | every other [`Metric`] a stage reports, e.g. `lametun_filter_rule_matches_total{stage="filter",rule="3",action="deny",…}` |
//! | `lametun_peer_info` | `peer` | the peer datagrams go to now (absent until known) |
//! | `lametun_uptime_seconds` | | seconds since the endpoint started |
//!
//! `stage` is the stage's label in the chain: its `type`, or `type#index` when the chain
//! holds the type twice. Drop counters list only the reasons that happened.
//!
//! A stage metric is skipped (and logged at `debug`) when its name is not a valid
//! Prometheus name, when it would collide with one of the names above, when it is a
//! gauge named `…_total` (the name of a counter's samples), when it uses the reserved
//! `stage` label, or when two stages report the same name with different kinds.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use lametun_core::TunnelSnapshot;
use lametun_core::stage::{Metric, MetricKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Every metric name starts with `lametun_`.
pub const PREFIX: &str = "lametun";

/// Full sample names, as they appear in the text (counters end in `_total`).
pub mod names {
    /// Passes of the core's own checks, by `direction`.
    pub const CORE_PASSED: &str = "lametun_core_passed_total";
    /// Drops by the core, by `direction` and `reason`.
    pub const CORE_DROPPED: &str = "lametun_core_dropped_total";
    /// Passes of every stage, by `stage`, `type` and `direction`.
    pub const STAGE_PASSED: &str = "lametun_stage_passed_total";
    /// Drops of every stage, by `stage`, `type`, `direction` and `reason`.
    pub const STAGE_DROPPED: &str = "lametun_stage_dropped_total";
    /// Non-empty packets a `stats` stage counted, by `stage` and `direction`.
    pub const STATS_PACKETS: &str = "lametun_stats_packets_total";
    /// Their bytes.
    pub const STATS_BYTES: &str = "lametun_stats_bytes_total";
    /// Keepalives a `stats` stage counted.
    pub const STATS_KEEPALIVES: &str = "lametun_stats_keepalives_total";
    /// The peer, as the `peer` label of a constant 1.
    pub const PEER_INFO: &str = "lametun_peer_info";
    /// Seconds since the endpoint started.
    pub const UPTIME: &str = "lametun_uptime_seconds";
}

const CORE_PASSED: &str = "core_passed";
const CORE_DROPPED: &str = "core_dropped";
const STAGE_PASSED: &str = "stage_passed";
const STAGE_DROPPED: &str = "stage_dropped";
const PEER: &str = "peer";
const UPTIME: &str = "uptime_seconds";

/// The two text formats a scraper may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, what Prometheus asks for first.
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4, for everything else (`curl`, older
    /// scrapers).
    PrometheusText,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics if it names it, else the
    /// classic text format.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::PrometheusText,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// The exposition of `snapshot` (and of the endpoint's `uptime`, if given) in `format`.
pub fn encode(snapshot: &TunnelSnapshot, uptime: Option<Duration>, format: Format) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(SnapshotCollector {
        snapshot: snapshot.clone(),
        uptime,
        format,
    }));
    let mut out = String::with_capacity(8 << 10);
    let result = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
        Format::PrometheusText => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        }
    };
    // Writing to a String cannot fail, and the collector itself returns no other error.
    debug_assert!(result.is_ok());
    out
}

#[derive(Debug)]
struct SnapshotCollector {
    snapshot: TunnelSnapshot,
    uptime: Option<Duration>,
    format: Format,
}

/// A stage's help text as `format` wants it on its `# HELP` line. The classic format's
/// encoder escapes `\\` and line feeds itself; the OpenMetrics one writes the text as
/// it is, but OpenMetrics also wants `"` escaped (the filter's help quotes
/// `rule="default"`), and a line feed would end the line.
fn help_text(help: &str, format: Format) -> Cow<'_, str> {
    if format == Format::PrometheusText || !help.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(help);
    }
    let mut out = String::with_capacity(help.len() + 8);
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One family: a descriptor and its samples (at least the descriptor, even with no
/// samples, so that the family is known to exist).
fn counter_family<'a>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, f64)>,
) -> fmt::Result {
    family(enc, name, help, MetricKind::Counter, samples)
}

fn family<'a>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricKind,
    samples: impl IntoIterator<Item = (Labels<'a>, f64)>,
) -> fmt::Result {
    let metric_type = match kind {
        MetricKind::Counter => MetricType::Counter,
        MetricKind::Gauge => MetricType::Gauge,
    };
    let mut metric = enc.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        // Whole numbers are written as integers (`12`, not `12.0`).
        let whole = value.fract() == 0.0 && (0.0..9.0e15).contains(&value);
        match (kind, whole) {
            (MetricKind::Counter, true) => ConstCounter::new(value as u64).encode(sample)?,
            (MetricKind::Counter, false) => ConstCounter::new(value).encode(sample)?,
            (MetricKind::Gauge, true) => ConstGauge::new(value as i64).encode(sample)?,
            (MetricKind::Gauge, false) => ConstGauge::new(value).encode(sample)?,
        }
    }
    Ok(())
}

/// `[a-zA-Z_][a-zA-Z0-9_]*` (colons are for recording rules, not exporters).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// A stage metric's family name without prefix and `_total`.
fn stage_metric_name(m: &Metric) -> &'static str {
    match m.kind {
        MetricKind::Counter => m.name.strip_suffix("_total").unwrap_or(m.name),
        MetricKind::Gauge => m.name,
    }
}

/// Names the collector writes itself; a stage metric may not take them.
fn reserved(name: &str, counters: &[&str]) -> bool {
    [
        CORE_PASSED,
        CORE_DROPPED,
        STAGE_PASSED,
        STAGE_DROPPED,
        UPTIME,
        "peer_info",
    ]
    .contains(&name)
        || name == PEER
        || counters.contains(&name)
}

/// The stage metrics grouped into families by name, in the order first seen.
struct StageFamily<'a> {
    name: &'static str,
    help: &'static str,
    kind: MetricKind,
    samples: Vec<(&'a str, &'a Metric)>,
}

fn stage_families<'a>(snapshot: &'a TunnelSnapshot, counters: &[&str]) -> Vec<StageFamily<'a>> {
    let mut families: Vec<StageFamily<'a>> = Vec::new();
    for stage in &snapshot.stages {
        for m in &stage.metrics {
            let name = stage_metric_name(m);
            let bad_label = m
                .labels
                .iter()
                .any(|(k, _)| *k == "stage" || !valid_name(k));
            // A counter `x` writes the sample `x_total`: a gauge of that name would be a
            // second series of the same name (and `_total` means a counter to readers).
            let counter_like = m.kind == MetricKind::Gauge && name.ends_with("_total");
            if !valid_name(name) || reserved(name, counters) || bad_label || counter_like {
                tracing::debug!(stage = %stage.label, metric = m.name, "skipped a stage metric: invalid or reserved name or label");
                continue;
            }
            match families.iter_mut().find(|f| f.name == name) {
                Some(f) if f.kind != m.kind => {
                    tracing::debug!(stage = %stage.label, metric = m.name, "skipped a stage metric: another stage reports it with another kind");
                }
                Some(f) => f.samples.push((&stage.label, m)),
                None => families.push(StageFamily {
                    name,
                    help: m.help,
                    kind: m.kind,
                    samples: vec![(&stage.label, m)],
                }),
            }
        }
    }
    families
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let s = &self.snapshot;
        let named = s.counters.named();
        for (name, help, value) in named {
            counter_family(&mut enc, name, help, [(Vec::new(), value as f64)])?;
        }

        let core = [("outbound", &s.core_outbound), ("inbound", &s.core_inbound)];
        counter_family(
            &mut enc,
            CORE_PASSED,
            "Packets that passed the core's own checks",
            core.iter()
                .map(|(dir, c)| (vec![("direction", *dir)], c.passed as f64)),
        )?;
        counter_family(
            &mut enc,
            CORE_DROPPED,
            "Packets dropped by the core (no peer yet, malformed, wrong source), by reason",
            core.iter().flat_map(|(dir, c)| {
                c.drops.iter().map(move |(reason, n)| {
                    (vec![("direction", *dir), ("reason", *reason)], *n as f64)
                })
            }),
        )?;

        let stages = || {
            s.stages.iter().flat_map(|st| {
                [("outbound", &st.outbound), ("inbound", &st.inbound)]
                    .into_iter()
                    .map(move |(dir, c)| (st, dir, c))
            })
        };
        counter_family(
            &mut enc,
            STAGE_PASSED,
            "Packets that passed a stage",
            stages().map(|(st, dir, c)| {
                (
                    vec![
                        ("stage", st.label.as_str()),
                        ("type", st.type_name),
                        ("direction", dir),
                    ],
                    c.passed as f64,
                )
            }),
        )?;
        counter_family(
            &mut enc,
            STAGE_DROPPED,
            "Packets a stage dropped, by reason",
            stages().flat_map(|(st, dir, c)| {
                c.drops.iter().map(move |(reason, n)| {
                    (
                        vec![
                            ("stage", st.label.as_str()),
                            ("type", st.type_name),
                            ("direction", dir),
                            ("reason", *reason),
                        ],
                        *n as f64,
                    )
                })
            }),
        )?;

        let counter_names: Vec<&str> = named.iter().map(|(n, _, _)| *n).collect();
        for f in stage_families(s, &counter_names) {
            family(
                &mut enc,
                f.name,
                &help_text(f.help, self.format),
                f.kind,
                f.samples.iter().map(|(stage, m)| {
                    let mut labels: Labels<'_> = vec![("stage", *stage)];
                    labels.extend(m.labels.iter().map(|(k, v)| (*k, v.as_str())));
                    (labels, m.value)
                }),
            )?;
        }

        if let Some(peer) = s.peer {
            let peer = peer.to_string();
            let info = Info::new(vec![("peer", peer.as_str())]);
            let metric = enc.encode_descriptor(
                PEER,
                "The peer that datagrams go to now",
                None,
                MetricType::Info,
            )?;
            info.encode(metric)?;
        }
        if let Some(uptime) = self.uptime {
            family(
                &mut enc,
                UPTIME,
                "Seconds since the metrics endpoint started",
                MetricKind::Gauge,
                [(Vec::new(), (uptime.as_secs_f64() * 1000.0).round() / 1000.0)],
            )?;
        }
        Ok(())
    }
}
