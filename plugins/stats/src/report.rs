//! What `lametun stats` shows: the samples of a scrape as a [`Report`], and a report as
//! a table.
//!
//! ```text
//! lametun stats  http://127.0.0.1:9100/metrics
//! peer 192.0.2.7:40000 · up 5m 12s · rates over the last 2s
//!
//! TRAFFIC                      packets       bytes        rate      bandwidth
//! out  read from TUN             1,234    1.21 MiB    12.0 pkt/s  96.5 kbit/s
//! out  at stats                  1,234    1.21 MiB    12.0 pkt/s  96.5 kbit/s
//! out  sent to peer (UDP)        1,236    1.28 MiB    12.0 pkt/s   102 kbit/s
//! …
//! ```
//!
//! [`Report::from_samples`] reads the metric names of [`exposition`](crate::exposition)
//! and ignores the rest, so it works against a newer or older lametun too (what it does
//! not know it does not show). [`render`] is a pure function of one or two reports:
//! with the previous report and the time between them it shows current rates (the
//! `--watch` view), without it the averages since the endpoint started.

use std::fmt::Write as _;
use std::time::Duration;

use lametun_core::telemetry::CounterValues;

use crate::exposition::names;
use crate::human;
use crate::parse::Sample;
use crate::stage::DirectionTotals;

/// Passes and drops of one stage (or the core) in one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassDrops {
    /// Packets passed.
    pub passed: u64,
    /// `(reason, count)`, in the order scraped.
    pub drops: Vec<(String, u64)>,
}

impl PassDrops {
    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().map(|(_, c)| c).sum()
    }
}

/// One stage of the chain (or the core, as stage `core`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageRow {
    /// The stage's label (`filter`, `stats#2`, `core`).
    pub stage: String,
    /// Its `type`.
    pub type_name: String,
    /// Toward the peer.
    pub outbound: PassDrops,
    /// Toward the TUN device.
    pub inbound: PassDrops,
}

/// What one `stats` stage counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsPoint {
    /// The stage's label.
    pub stage: String,
    /// Toward the peer.
    pub outbound: DirectionTotals,
    /// Toward the TUN device.
    pub inbound: DirectionTotals,
}

/// Any other metric a stage reports (e.g. drops per filter rule).
#[derive(Clone, Debug, PartialEq)]
pub struct StageMetric {
    /// The stage's label.
    pub stage: String,
    /// The metric name without the `lametun_` prefix (`filter_rule_matches_total`).
    pub name: String,
    /// Its labels other than `stage`.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

/// Everything `lametun stats` shows, read from one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// The peer datagrams go to, if known.
    pub peer: Option<String>,
    /// How long the endpoint has been up.
    pub uptime: Option<Duration>,
    /// The tunnel's own counters.
    pub tunnel: CounterValues,
    /// Every `stats` stage, in chain order.
    pub points: Vec<StatsPoint>,
    /// Every stage in chain order, then the core.
    pub stages: Vec<StageRow>,
    /// The stages' own metrics, in the order scraped.
    pub stage_metrics: Vec<StageMetric>,
}

fn counter_field<'a>(c: &'a mut CounterValues, name: &str) -> Option<&'a mut u64> {
    Some(match name {
        "tun_rx_packets" => &mut c.tun_rx_packets,
        "tun_rx_bytes" => &mut c.tun_rx_bytes,
        "udp_tx_datagrams" => &mut c.udp_tx_datagrams,
        "udp_tx_bytes" => &mut c.udp_tx_bytes,
        "udp_rx_datagrams" => &mut c.udp_rx_datagrams,
        "udp_rx_bytes" => &mut c.udp_rx_bytes,
        "tun_tx_packets" => &mut c.tun_tx_packets,
        "tun_tx_bytes" => &mut c.tun_tx_bytes,
        "keepalives_sent" => &mut c.keepalives_sent,
        "keepalives_received" => &mut c.keepalives_received,
        "peer_changes" => &mut c.peer_changes,
        "tun_read_errors" => &mut c.tun_read_errors,
        "tun_write_errors" => &mut c.tun_write_errors,
        "udp_send_errors" => &mut c.udp_send_errors,
        "udp_recv_errors" => &mut c.udp_recv_errors,
        _ => return None,
    })
}

/// A counter value as an integer (counters are whole; a broken one becomes 0).
fn whole(v: f64) -> u64 {
    if v.is_finite() && v >= 0.0 {
        v as u64
    } else {
        0
    }
}

impl Report {
    /// The report in `samples` (see [`parse`](crate::parse::parse)). Samples it does not
    /// know are ignored.
    pub fn from_samples(samples: &[Sample]) -> Self {
        let mut r = Self::default();
        let mut core = StageRow {
            stage: "core".into(),
            type_name: "core".into(),
            ..StageRow::default()
        };
        for s in samples {
            let Some(short) = s.name.strip_prefix("lametun_") else {
                continue;
            };
            let direction = s.label("direction");
            match s.name.as_str() {
                names::PEER_INFO => r.peer = s.label("peer").map(str::to_owned),
                names::UPTIME if s.value.is_finite() && s.value >= 0.0 => {
                    r.uptime = Some(Duration::from_secs_f64(s.value.min(1e12)));
                }
                names::CORE_PASSED => {
                    if let Some(pd) = pass_drops(&mut core, direction) {
                        pd.passed = whole(s.value);
                    }
                }
                names::CORE_DROPPED => {
                    if let Some(pd) = pass_drops(&mut core, direction) {
                        pd.drops
                            .push((s.label("reason").unwrap_or("?").to_owned(), whole(s.value)));
                    }
                }
                names::STAGE_PASSED | names::STAGE_DROPPED => {
                    let Some(stage) = s.label("stage") else {
                        continue;
                    };
                    let row = stage_row(&mut r.stages, stage, s.label("type"));
                    let Some(pd) = pass_drops(row, direction) else {
                        continue;
                    };
                    if s.name == names::STAGE_PASSED {
                        pd.passed = whole(s.value);
                    } else {
                        pd.drops
                            .push((s.label("reason").unwrap_or("?").to_owned(), whole(s.value)));
                    }
                }
                names::STATS_PACKETS | names::STATS_BYTES | names::STATS_KEEPALIVES => {
                    let Some(stage) = s.label("stage") else {
                        continue;
                    };
                    let point = match r.points.iter().position(|p| p.stage == stage) {
                        Some(i) => &mut r.points[i],
                        None => {
                            r.points.push(StatsPoint {
                                stage: stage.to_owned(),
                                ..StatsPoint::default()
                            });
                            r.points.last_mut().expect("just pushed")
                        }
                    };
                    let totals = match direction {
                        Some("outbound") => &mut point.outbound,
                        Some("inbound") => &mut point.inbound,
                        _ => continue,
                    };
                    let field = match s.name.as_str() {
                        names::STATS_PACKETS => &mut totals.packets,
                        names::STATS_BYTES => &mut totals.bytes,
                        _ => &mut totals.keepalives,
                    };
                    *field = whole(s.value);
                }
                _ => {
                    let base = short.strip_suffix("_total").unwrap_or(short);
                    if let Some(field) = counter_field(&mut r.tunnel, base) {
                        *field = whole(s.value);
                    } else if let Some(stage) = s.label("stage") {
                        r.stage_metrics.push(StageMetric {
                            stage: stage.to_owned(),
                            name: short.to_owned(),
                            labels: s
                                .labels
                                .iter()
                                .filter(|(k, _)| k != "stage")
                                .cloned()
                                .collect(),
                            value: s.value,
                        });
                    }
                }
            }
        }
        r.stages.push(core);
        r
    }

    fn stage(&self, stage: &str) -> Option<&StageRow> {
        self.stages.iter().find(|s| s.stage == stage)
    }

    fn point(&self, stage: &str) -> Option<&StatsPoint> {
        self.points.iter().find(|s| s.stage == stage)
    }
}

fn stage_row<'a>(
    rows: &'a mut Vec<StageRow>,
    stage: &str,
    type_name: Option<&str>,
) -> &'a mut StageRow {
    match rows.iter().position(|r| r.stage == stage) {
        Some(i) => &mut rows[i],
        None => {
            rows.push(StageRow {
                stage: stage.to_owned(),
                type_name: type_name.unwrap_or(stage).to_owned(),
                ..StageRow::default()
            });
            rows.last_mut().expect("just pushed")
        }
    }
}

fn pass_drops<'a>(row: &'a mut StageRow, direction: Option<&str>) -> Option<&'a mut PassDrops> {
    match direction {
        Some("outbound") => Some(&mut row.outbound),
        Some("inbound") => Some(&mut row.inbound),
        _ => None,
    }
}

/// How rates are computed: against a previous report, or as averages since start.
enum Rates {
    Since(f64),
    Average(f64),
    None,
}

impl Rates {
    /// Per second: `(now - before) / secs`, or `now / uptime`; `None` if unknown.
    fn rate(&self, now: u64, before: Option<u64>) -> Option<f64> {
        match (self, before) {
            (Self::Since(secs), Some(b)) if *secs > 0.0 => {
                Some(now.checked_sub(b).map_or(0.0, |d| d as f64 / secs))
            }
            (Self::Average(secs), _) if *secs > 0.0 => Some(now as f64 / secs),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}
use Align::{Left, Right};

/// Rows of cells, padded to the widest cell of each column.
struct Table {
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            aligns: columns.iter().map(|c| c.1).collect(),
            rows: vec![columns.iter().map(|c| c.0.to_owned()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.aligns.len());
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let width = |c: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.aligns.len()).map(width).collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                let pad = widths[c].saturating_sub(cell.chars().count());
                if self.aligns[c] == Left {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                } else {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

fn opt(v: Option<f64>, f: fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

/// The table for `report`, read from `source`. With `previous` (the report before and
/// the time between the two), rates are the current ones; without, the averages since
/// the endpoint started.
pub fn render(report: &Report, previous: Option<(&Report, Duration)>, source: &str) -> String {
    let rates = match (previous, report.uptime) {
        (Some((_, elapsed)), _) => Rates::Since(elapsed.as_secs_f64()),
        (None, Some(up)) => Rates::Average(up.as_secs_f64()),
        (None, None) => Rates::None,
    };
    let prev = previous.map(|(p, _)| p);
    let mut out = String::with_capacity(4096);

    let _ = writeln!(out, "lametun stats  {source}");
    let mut facts = Vec::new();
    facts.push(match &report.peer {
        Some(peer) => format!("peer {peer}"),
        None => "no peer yet".to_owned(),
    });
    if let Some(up) = report.uptime {
        facts.push(format!("up {}", human::duration(up)));
    }
    facts.push(match (&rates, previous) {
        (Rates::Since(_), Some((_, elapsed))) => {
            format!("rates over the last {:.1}s", elapsed.as_secs_f64())
        }
        (Rates::Average(_), _) => "average rates since start".to_owned(),
        _ => "no rates".to_owned(),
    });
    let _ = writeln!(out, "{}", facts.join(" · "));
    out.push('\n');

    // Traffic, in the order a packet meets the counters.
    let mut t = Table::new(&[
        ("TRAFFIC", Left),
        ("", Left),
        ("packets", Right),
        ("bytes", Right),
        ("rate", Right),
        ("bandwidth", Right),
    ]);
    let mut traffic =
        |dir: &str, what: String, packets: u64, bytes: u64, before: Option<(u64, u64)>| {
            t.row(vec![
                dir.to_owned(),
                what,
                human::grouped(packets),
                human::bytes(bytes),
                opt(rates.rate(packets, before.map(|b| b.0)), human::packet_rate),
                opt(rates.rate(bytes, before.map(|b| b.1)), human::bit_rate),
            ]);
        };
    let c = &report.tunnel;
    let pc = prev.map(|p| &p.tunnel);
    traffic(
        "out",
        "read from TUN".into(),
        c.tun_rx_packets,
        c.tun_rx_bytes,
        pc.map(|p| (p.tun_rx_packets, p.tun_rx_bytes)),
    );
    for point in &report.points {
        let before = prev
            .and_then(|p| p.point(&point.stage))
            .map(|p| &p.outbound);
        traffic(
            "out",
            format!("at {}", point.stage),
            point.outbound.packets,
            point.outbound.bytes,
            before.map(|b| (b.packets, b.bytes)),
        );
    }
    traffic(
        "out",
        "sent to peer (UDP)".into(),
        c.udp_tx_datagrams,
        c.udp_tx_bytes,
        pc.map(|p| (p.udp_tx_datagrams, p.udp_tx_bytes)),
    );
    traffic(
        "in",
        "received (UDP)".into(),
        c.udp_rx_datagrams,
        c.udp_rx_bytes,
        pc.map(|p| (p.udp_rx_datagrams, p.udp_rx_bytes)),
    );
    for point in report.points.iter().rev() {
        let before = prev.and_then(|p| p.point(&point.stage)).map(|p| &p.inbound);
        traffic(
            "in",
            format!("at {}", point.stage),
            point.inbound.packets,
            point.inbound.bytes,
            before.map(|b| (b.packets, b.bytes)),
        );
    }
    traffic(
        "in",
        "written to TUN".into(),
        c.tun_tx_packets,
        c.tun_tx_bytes,
        pc.map(|p| (p.tun_tx_packets, p.tun_tx_bytes)),
    );
    t.render(&mut out);
    let mut keepalives = format!(
        "keepalives: sent {}, received {} (the UDP rows include them",
        human::grouped(c.keepalives_sent),
        human::grouped(c.keepalives_received)
    );
    if !report.points.is_empty() {
        keepalives.push_str("; the stats rows do not");
    }
    keepalives.push(')');
    let _ = writeln!(out, "{keepalives}");
    out.push('\n');

    // Stages, in chain order, then the core.
    let mut t = Table::new(&[
        ("STAGES", Left),
        ("", Left),
        ("passed", Right),
        ("dropped", Right),
        ("drops/s", Right),
        ("drop reasons", Left),
    ]);
    for row in &report.stages {
        let before = prev.and_then(|p| p.stage(&row.stage));
        for (dir, pd, pd_before) in [
            ("out", &row.outbound, before.map(|b| &b.outbound)),
            ("in", &row.inbound, before.map(|b| &b.inbound)),
        ] {
            let name = if row.type_name != row.stage && row.stage != "core" {
                format!("{} ({})", row.stage, row.type_name)
            } else {
                row.stage.clone()
            };
            let reasons = pd
                .drops
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| format!("{r} {}", human::grouped(*n)))
                .collect::<Vec<_>>()
                .join(", ");
            t.row(vec![
                name,
                dir.to_owned(),
                human::grouped(pd.passed),
                human::grouped(pd.dropped()),
                opt(
                    rates.rate(pd.dropped(), pd_before.map(PassDrops::dropped)),
                    |r| format!("{r:.1}"),
                ),
                reasons,
            ]);
        }
    }
    t.render(&mut out);

    // Counters still at 0 (a filter rule that never matched, in each direction) would
    // bury the ones that moved: they are counted, not listed.
    let is_idle_counter = |m: &StageMetric| m.value == 0.0 && m.name.ends_with("_total");
    let idle = report
        .stage_metrics
        .iter()
        .filter(|m| is_idle_counter(m))
        .count();
    if idle < report.stage_metrics.len() {
        out.push('\n');
        let mut t = Table::new(&[
            ("STAGE METRICS", Left),
            ("", Left),
            ("", Left),
            ("value", Right),
            ("change", Right),
        ]);
        for m in report.stage_metrics.iter().filter(|m| !is_idle_counter(m)) {
            let labels = m
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            let before = prev.and_then(|p| {
                p.stage_metrics
                    .iter()
                    .find(|b| b.stage == m.stage && b.name == m.name && b.labels == m.labels)
            });
            let change = match before {
                Some(b) if m.value != b.value => format!("{:+}", m.value - b.value),
                _ => String::new(),
            };
            t.row(vec![
                m.stage.clone(),
                m.name.clone(),
                labels,
                format_value(m.value),
                change,
            ]);
        }
        t.render(&mut out);
    }
    if idle > 0 {
        let _ = writeln!(
            out,
            "({idle} stage counter{} at 0 not shown)",
            if idle == 1 { "" } else { "s" }
        );
    }

    out.push('\n');
    let _ = writeln!(
        out,
        "ERRORS  tun read {} · tun write {} · udp send {} · udp recv {} · peer changes {}",
        human::grouped(c.tun_read_errors),
        human::grouped(c.tun_write_errors),
        human::grouped(c.udp_send_errors),
        human::grouped(c.udp_recv_errors),
        human::grouped(c.peer_changes),
    );
    out
}

/// A metric value: whole numbers grouped, others with up to 3 decimals.
fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && (0.0..1.8e19).contains(&v) {
        human::grouped(v as u64)
    } else {
        format!("{v:.3}")
    }
}
