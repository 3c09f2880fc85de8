//! The one-line summary that the stage logs every `interval`.
//!
//! ```text
//! out 1.23 kpkt/s 14.5 Mbit/s (total 12.3 kpkt, 17.3 MiB) | in 980 pkt/s 11.2 Mbit/s (total 9.80 kpkt, 12.0 MiB) | dropped 12 (+3): filter filtered 10, core no_peer 2 | errors 0
//! ```
//!
//! Rates are over the time since the previous line, totals since start. Packets and
//! bytes are the ones this stage saw (see the crate docs for where that is); drops and
//! errors come from the whole tunnel's [`TunnelSnapshot`], and are left out when the
//! stage runs without a tunnel (in tests). With several `stats` stages in the chain,
//! the stage prefixes its line with its label (`stats#2: out …`).
//!
//! Everything here is a pure function of counters and times, so it is tested without
//! a clock or a log.

use std::fmt::Write;
use std::time::{Duration, Instant};

use lametun_core::TunnelSnapshot;

use crate::human;
use crate::stage::{DirectionTotals, StatsTotals};

/// Drop reasons shown by name in the summary; the rest are summed as "… N more".
const SHOWN_DROP_REASONS: usize = 4;

/// The figures of one summary, at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Point {
    /// What the stage counted.
    pub totals: StatsTotals,
    /// `(stage label, reason, count)` for every stage and the core, both directions
    /// summed; empty without a tunnel.
    pub drops: Vec<(String, String, u64)>,
    /// `(counter, count)` for the tunnel's IO error counters; `None` without a tunnel.
    pub errors: Option<Vec<(&'static str, u64)>>,
}

impl Point {
    /// The figures from the stage's totals and, if the tunnel runs, its snapshot.
    pub fn new(totals: StatsTotals, snapshot: Option<&TunnelSnapshot>) -> Self {
        let mut point = Self {
            totals,
            ..Self::default()
        };
        let Some(s) = snapshot else {
            return point;
        };
        let mut add = |stage: &str, reason: &str, count: u64| match point
            .drops
            .iter_mut()
            .find(|(s, r, _)| s == stage && r == reason)
        {
            Some((_, _, c)) => *c += count,
            None => point
                .drops
                .push((stage.to_owned(), reason.to_owned(), count)),
        };
        for stage in &s.stages {
            for (reason, count) in stage.outbound.drops.iter().chain(&stage.inbound.drops) {
                add(&stage.label, reason, *count);
            }
        }
        for (reason, count) in s.core_outbound.drops.iter().chain(&s.core_inbound.drops) {
            add("core", reason, *count);
        }
        let c = &s.counters;
        point.errors = Some(vec![
            ("tun_read", c.tun_read_errors),
            ("tun_write", c.tun_write_errors),
            ("udp_send", c.udp_send_errors),
            ("udp_recv", c.udp_recv_errors),
        ]);
        point
    }

    fn dropped(&self) -> u64 {
        self.drops.iter().map(|(_, _, c)| c).sum()
    }
}

/// Decides when a summary is due and keeps the previous figures for the rates.
#[derive(Debug)]
pub struct Reporter {
    interval: Duration,
    last: Option<(Instant, Point)>,
}

impl Reporter {
    /// A reporter that logs every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
        }
    }

    /// True when [`report`](Self::report) should be called: at the first tick (to take
    /// the baseline), then every `interval`.
    pub fn is_due(&self, now: Instant) -> bool {
        match &self.last {
            None => true,
            Some((at, _)) => now.saturating_duration_since(*at) >= self.interval,
        }
    }

    /// Records the figures at `now` and returns the summary line since the previous
    /// call (`None` at the first call, which only sets the baseline).
    pub fn report(
        &mut self,
        now: Instant,
        totals: StatsTotals,
        snapshot: Option<&TunnelSnapshot>,
    ) -> Option<String> {
        let point = Point::new(totals, snapshot);
        let (at, previous) = self.last.replace((now, point))?;
        let current = &self.last.as_ref().expect("just set").1;
        Some(summary_line(
            &previous,
            current,
            now.saturating_duration_since(at),
        ))
    }
}

/// Per second, over `elapsed`; 0 when no time passed or the counter went back (the
/// tunnel restarted).
fn rate(before: u64, after: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 || after < before {
        return 0.0;
    }
    (after - before) as f64 / secs
}

fn direction(
    out: &mut String,
    name: &str,
    before: &DirectionTotals,
    after: &DirectionTotals,
    elapsed: Duration,
) {
    let _ = write!(
        out,
        "{name} {} {} (total {}, {})",
        human::packet_rate(rate(before.packets, after.packets, elapsed)),
        human::bit_rate(rate(before.bytes, after.bytes, elapsed)),
        human::packets(after.packets),
        human::bytes(after.bytes),
    );
}

/// The summary line for the change from `previous` to `current`, `elapsed` apart.
pub fn summary_line(previous: &Point, current: &Point, elapsed: Duration) -> String {
    let mut line = String::with_capacity(200);
    let (before, after) = (&previous.totals, &current.totals);
    direction(&mut line, "out", &before.outbound, &after.outbound, elapsed);
    line.push_str(" | ");
    direction(&mut line, "in", &before.inbound, &after.inbound, elapsed);

    if let Some(errors) = &current.errors {
        let dropped = current.dropped();
        let _ = write!(line, " | dropped {}", human::grouped(dropped));
        let new = dropped.saturating_sub(previous.dropped());
        if new > 0 {
            let _ = write!(line, " (+{})", human::grouped(new));
        }
        let mut drops: Vec<_> = current.drops.iter().filter(|d| d.2 > 0).collect();
        drops.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
        for (i, (stage, reason, count)) in drops.iter().take(SHOWN_DROP_REASONS).enumerate() {
            let sep = if i == 0 { ": " } else { ", " };
            let _ = write!(line, "{sep}{stage} {reason} {}", human::grouped(*count));
        }
        if drops.len() > SHOWN_DROP_REASONS {
            let rest: u64 = drops[SHOWN_DROP_REASONS..].iter().map(|d| d.2).sum();
            let _ = write!(line, ", … {} more", human::grouped(rest));
        }

        let total: u64 = errors.iter().map(|(_, c)| c).sum();
        let _ = write!(line, " | errors {}", human::grouped(total));
        for (i, (name, count)) in errors.iter().filter(|e| e.1 > 0).enumerate() {
            let sep = if i == 0 { ": " } else { ", " };
            let _ = write!(line, "{sep}{name} {}", human::grouped(*count));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(out: (u64, u64), inb: (u64, u64)) -> StatsTotals {
        StatsTotals {
            outbound: DirectionTotals {
                packets: out.0,
                bytes: out.1,
                keepalives: 0,
            },
            inbound: DirectionTotals {
                packets: inb.0,
                bytes: inb.1,
                keepalives: 3,
            },
        }
    }

    #[test]
    fn line_without_a_tunnel_has_rates_and_totals_in_human_units() {
        let before = Point::new(totals((0, 0), (0, 0)), None);
        let after = Point::new(totals((12_300, 18_140_000), (9_800, 12_582_912)), None);
        let line = summary_line(&before, &after, Duration::from_secs(10));
        assert_eq!(
            line,
            "out 1.23 kpkt/s 14.5 Mbit/s (total 12.3 kpkt, 17.3 MiB) | in 980 pkt/s 10.1 Mbit/s (total 9.80 kpkt, 12.0 MiB)"
        );
    }

    #[test]
    fn line_with_a_tunnel_names_drops_by_stage_and_reason_and_errors() {
        let mut before = Point::new(totals((5, 500), (5, 500)), None);
        before.drops = vec![("filter".into(), "filtered".into(), 7)];
        before.errors = Some(vec![("udp_send", 0)]);
        let mut after = before.clone();
        after.totals = totals((15, 1500), (5, 500));
        after.drops = vec![
            ("core".into(), "no_peer".into(), 2),
            ("filter".into(), "filtered".into(), 10),
            ("stats".into(), "never".into(), 0),
        ];
        after.errors = Some(vec![("tun_read", 0), ("udp_send", 3)]);
        let line = summary_line(&before, &after, Duration::from_secs(2));
        assert_eq!(
            line,
            "out 5 pkt/s 4.00 kbit/s (total 15 pkt, 1.46 KiB) | in 0 pkt/s 0 bit/s (total 5 pkt, 500 B) | dropped 12 (+5): filter filtered 10, core no_peer 2 | errors 3: udp_send 3"
        );
    }

    #[test]
    fn many_drop_reasons_are_cut_to_the_largest() {
        let before = Point::default();
        let mut after = Point {
            errors: Some(Vec::new()),
            ..Point::default()
        };
        for (i, reason) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
            after
                .drops
                .push(("x".into(), (*reason).into(), i as u64 + 1));
        }
        let line = summary_line(&before, &after, Duration::from_secs(1));
        assert!(
            line.ends_with("dropped 21 (+21): x f 6, x e 5, x d 4, x c 3, … 3 more | errors 0"),
            "{line}"
        );
    }

    #[test]
    fn reporter_takes_a_baseline_then_reports_every_interval_over_the_real_elapsed_time() {
        let t0 = Instant::now();
        let mut r = Reporter::new(Duration::from_secs(10));
        assert!(r.is_due(t0));
        assert_eq!(r.report(t0, totals((0, 0), (0, 0)), None), None);
        assert!(!r.is_due(t0 + Duration::from_secs(9)));
        let t1 = t0 + Duration::from_secs(11);
        assert!(r.is_due(t1));
        let line = r.report(t1, totals((110, 110_000), (0, 0)), None).unwrap();
        assert!(line.starts_with("out 10 pkt/s 80.0 kbit/s"), "{line}");
        assert!(!r.is_due(t1 + Duration::from_secs(1)));
    }

    #[test]
    fn a_counter_that_went_back_gives_no_negative_rate() {
        assert_eq!(rate(10, 5, Duration::from_secs(1)), 0.0);
        assert_eq!(rate(0, 5, Duration::ZERO), 0.0);
    }
}
