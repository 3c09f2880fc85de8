//! The table `lametun stats` prints, from a report read back from the exposition.

mod common;

use std::time::Duration;

use common::snapshot;
use lametun_stage_stats::exposition::{Format, encode};
use lametun_stage_stats::parse::parse;
use lametun_stage_stats::report::{Report, render};

const URL: &str = "http://127.0.0.1:9100/metrics";

fn report(snap: &lametun_core::TunnelSnapshot, uptime: Option<u64>) -> Report {
    let text = encode(snap, uptime.map(Duration::from_secs), Format::OpenMetrics);
    Report::from_samples(&parse(&text).unwrap())
}

/// The table's lines with runs of spaces collapsed, so that tests do not depend on
/// column widths.
fn squeezed(table: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn assert_has(table: &str, lines: &[&str]) {
    let got = squeezed(table);
    for line in lines {
        assert!(
            got.iter().any(|g| g == line),
            "missing {line:?} in:\n{table}"
        );
    }
}

#[test]
fn one_shot_table_shows_totals_and_average_rates_since_start() {
    let table = render(&report(&snapshot(), Some(100)), None, URL);
    assert_has(
        &table,
        &[
            "lametun stats http://127.0.0.1:9100/metrics",
            "peer 198.51.100.7:40000 · up 1m 40s · average rates since start",
            "TRAFFIC packets bytes rate bandwidth",
            "out read from TUN 1,000 1.14 MiB 10 pkt/s 96.0 kbit/s",
            "out at stats 998 1.14 MiB 9.98 pkt/s 95.8 kbit/s",
            "out sent to peer (UDP) 998 1.17 MiB 9.98 pkt/s 98.4 kbit/s",
            "in received (UDP) 2,010 2.38 MiB 20.1 pkt/s 200 kbit/s",
            "in at stats 2,001 2.29 MiB 20.0 pkt/s 192 kbit/s",
            "in written to TUN 1,990 2.29 MiB 19.9 pkt/s 192 kbit/s",
            "keepalives: sent 0, received 5 (the UDP rows include them; the stats rows do not)",
            "STAGES passed dropped drops/s drop reasons",
            "filter out 998 0 0.0",
            "filter in 1,995 11 0.1 filtered 10, malformed 1",
            "chacha20poly1305 in 2,006 4 0.0 bad_tag 3, replayed 1",
            "core out 998 2 0.0 no_peer 2",
            "core in 1,995 1 0.0 malformed 1",
            "STAGE METRICS value change",
            "filter filter_rule_matches_total rule=0 action=deny 10",
            "(1 stage counter at 0 not shown)",
            "chacha20poly1305 replay_window_packets 8,128",
            "chacha20poly1305 rekeys_total 2.500",
            "ERRORS tun read 0 · tun write 2 · udp send 0 · udp recv 0 · peer changes 1",
        ],
    );
    // The inbound stats rows come in chain order from the wire: the reverse.
    let order: Vec<_> = squeezed(&table)
        .into_iter()
        .filter(|l| l.starts_with("in ") || l.starts_with("out "))
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        order,
        [
            "out read from",
            "out at stats",
            "out sent to",
            "in received (UDP)",
            "in at stats",
            "in written to"
        ]
    );
    // Columns line up: every traffic row has the same length.
    let widths: Vec<_> = table
        .lines()
        .filter(|l| l.starts_with("out ") || l.starts_with("in "))
        .map(|l| l.chars().count())
        .collect();
    assert!(widths.windows(2).all(|w| w[0] == w[1]), "{table}");
}

#[test]
fn watch_table_shows_rates_since_the_previous_scrape_and_changes() {
    let before = report(&snapshot(), Some(100));
    let mut later = snapshot();
    later.counters.tun_rx_packets += 500;
    later.counters.tun_rx_bytes += 600_000;
    later.stages[0].inbound.drops[0].1 += 4;
    later.stages[0].metrics[0].value += 4.0;
    let after = report(&later, Some(102));
    let table = render(&after, Some((&before, Duration::from_secs(2))), URL);
    assert_has(
        &table,
        &[
            "peer 198.51.100.7:40000 · up 1m 42s · rates over the last 2.0s",
            "out read from TUN 1,500 1.72 MiB 250 pkt/s 2.40 Mbit/s",
            "out at stats 998 1.14 MiB 0 pkt/s 0 bit/s",
            "filter in 1,995 15 2.0 filtered 14, malformed 1",
            "filter filter_rule_matches_total rule=0 action=deny 14 +4",
        ],
    );
}

#[test]
fn without_uptime_or_a_peer_there_are_no_rates_and_it_says_so() {
    let mut snap = snapshot();
    snap.peer = None;
    let table = render(&report(&snap, None), None, URL);
    assert_has(
        &table,
        &[
            "no peer yet · no rates",
            "out read from TUN 1,000 1.14 MiB - -",
            "filter in 1,995 11 - filtered 10, malformed 1",
        ],
    );
}

#[test]
fn a_chain_without_stats_or_stage_metrics_still_renders() {
    let mut snap = snapshot();
    snap.stages.clear();
    let table = render(&report(&snap, Some(5)), None, URL);
    assert!(!table.contains("STAGE METRICS"), "{table}");
    assert!(!table.contains("at stats"), "{table}");
    assert_has(
        &table,
        &[
            "keepalives: sent 0, received 5 (the UDP rows include them)",
            "core out 998 2 0.4 no_peer 2",
        ],
    );
}

#[test]
fn samples_of_other_exporters_and_unknown_names_are_ignored() {
    let text = "process_cpu_seconds_total 12\n\
                lametun_future_thing_total 3\n\
                lametun_stage_passed_total{direction=\"outbound\"} 1\n\
                lametun_stage_passed_total{stage=\"x\",type=\"x\",direction=\"sideways\"} 1\n\
                lametun_tun_rx_packets_total 7\n";
    let r = Report::from_samples(&parse(text).unwrap());
    assert_eq!(r.tunnel.tun_rx_packets, 7);
    assert!(r.stage_metrics.is_empty());
    let names: Vec<_> = r.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(names, ["x", "core"]);
    assert_eq!(r.stages[0].outbound.passed, 0);
}
