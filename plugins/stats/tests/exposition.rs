//! The exposition text for a given snapshot, and reading it back into a report.

mod common;

use common::snapshot;
use lametun_stage_stats::exposition::{Format, encode};
use lametun_stage_stats::parse::parse;
use lametun_stage_stats::report::{PassDrops, Report};

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn openmetrics_text_holds_every_counter_with_its_labels() {
    let text = encode(
        &snapshot(),
        Some(std::time::Duration::from_millis(12_345)),
        Format::OpenMetrics,
    );
    let l = lines(&text);
    let expected = [
        "# TYPE lametun_tun_rx_packets counter",
        "lametun_tun_rx_packets_total 1000",
        "lametun_tun_rx_bytes_total 1200000",
        "lametun_udp_tx_datagrams_total 998",
        "lametun_keepalives_received_total 5",
        "lametun_peer_changes_total 1",
        "lametun_tun_write_errors_total 2",
        "lametun_core_passed_total{direction=\"outbound\"} 998",
        "lametun_core_dropped_total{direction=\"outbound\",reason=\"no_peer\"} 2",
        "lametun_core_dropped_total{direction=\"inbound\",reason=\"malformed\"} 1",
        "lametun_stage_passed_total{stage=\"filter\",type=\"filter\",direction=\"inbound\"} 1995",
        "lametun_stage_dropped_total{stage=\"filter\",type=\"filter\",direction=\"inbound\",reason=\"filtered\"} 10",
        "lametun_stage_dropped_total{stage=\"chacha20poly1305\",type=\"chacha20poly1305\",direction=\"inbound\",reason=\"bad_tag\"} 3",
        "# HELP lametun_filter_rule_matches help text",
        "lametun_filter_rule_matches_total{stage=\"filter\",rule=\"0\",action=\"deny\"} 10",
        "lametun_filter_rule_matches_total{stage=\"filter\",rule=\"2\",action=\"deny\"} 0",
        "lametun_stats_packets_total{stage=\"stats\",direction=\"outbound\"} 998",
        "lametun_stats_bytes_total{stage=\"stats\",direction=\"inbound\"} 2401200",
        "lametun_stats_keepalives_total{stage=\"stats\",direction=\"inbound\"} 5",
        "# TYPE lametun_replay_window_packets gauge",
        "lametun_replay_window_packets{stage=\"chacha20poly1305\"} 8128",
        "# TYPE lametun_rekeys counter",
        "lametun_rekeys_total{stage=\"chacha20poly1305\"} 2.5",
        "# TYPE lametun_peer info",
        "lametun_peer_info{peer=\"198.51.100.7:40000\"} 1",
        "lametun_uptime_seconds 12.345",
        "# EOF",
    ];
    for line in expected {
        assert!(l.contains(&line), "missing {line:?} in:\n{text}");
    }
    // Each family is described once, though two stages' metrics may share it.
    let types = l.iter().filter(|l| l.starts_with("# TYPE ")).count();
    let mut unique: Vec<_> = l.iter().filter(|l| l.starts_with("# TYPE ")).collect();
    unique.sort();
    unique.dedup();
    assert_eq!(types, unique.len(), "{text}");
    // The skipped metrics left no trace.
    for bad in [
        "bad-name",
        "evil",
        "rule=\"9\"",
        "lametun_stage_passed_total{stage=\"filter\",type=\"filter\",direction=\"outbound\"} 1\n",
    ] {
        assert!(!text.contains(bad), "{bad:?} in:\n{text}");
    }
    assert_eq!(
        text.matches("lametun_tun_rx_packets_total").count(),
        1,
        "{text}"
    );
    // No drop reason that did not happen is listed.
    assert!(!text.contains("reason=\"too_short\""));
}

#[test]
fn classic_text_format_for_everything_else() {
    let text = encode(&snapshot(), None, Format::PrometheusText);
    assert!(
        text.contains("# TYPE lametun_stage_dropped_total counter\n"),
        "{text}"
    );
    assert!(text.contains(
        "lametun_stage_dropped_total{stage=\"filter\",type=\"filter\",direction=\"inbound\",reason=\"filtered\"} 10\n"
    ));
    assert!(!text.contains("# EOF"));
    assert!(!text.contains("uptime"));
    assert_eq!(Format::from_accept(None), Format::PrometheusText);
    assert_eq!(Format::from_accept(Some("*/*")), Format::PrometheusText);
    assert_eq!(
        Format::from_accept(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )),
        Format::OpenMetrics
    );
    assert!(
        Format::OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text")
    );
    assert!(
        Format::PrometheusText
            .content_type()
            .starts_with("text/plain; version=0.0.4")
    );
}

#[test]
fn label_values_are_escaped_and_read_back() {
    let mut s = snapshot();
    s.stages[0].label = "we\"ird\\label\n".into();
    for format in [Format::OpenMetrics, Format::PrometheusText] {
        let text = encode(&s, None, format);
        let report = Report::from_samples(&parse(&text).unwrap());
        assert_eq!(report.stages[0].stage, "we\"ird\\label\n");
    }
}

#[test]
fn a_gauge_named_like_a_counters_sample_is_skipped_not_a_duplicate_series() {
    use lametun_core::MetricKind::Gauge;
    // A counter `x` is written as the sample `x_total`: a gauge named `x_total` would
    // write a second series of that name, of another type.
    let mut s = snapshot();
    s.stages[2].metrics.extend([
        common::metric("tun_rx_packets_total", Gauge, &[], 7.0),
        common::metric("filter_rule_matches_total", Gauge, &[("rule", "8")], 7.0),
        common::metric("stats_packets_total", Gauge, &[("direction", "x")], 7.0),
    ]);
    for format in [Format::OpenMetrics, Format::PrometheusText] {
        let text = encode(&s, None, format);
        for name in [
            "lametun_tun_rx_packets_total",
            "lametun_filter_rule_matches_total",
            "lametun_stats_packets_total",
        ] {
            let gauge = format!("# TYPE {name} gauge");
            assert!(
                !text.lines().any(|l| l == gauge),
                "{name} typed as a gauge in:\n{text}"
            );
        }
        assert!(!text.contains(" 7\n"), "{text}");
    }
}

#[test]
fn help_texts_are_escaped_as_each_format_wants() {
    // The filter's help quotes a label value (`rule="default"`); OpenMetrics allows `"`
    // in a HELP text only escaped, the classic format as it is. Both escape `\\` and
    // line feeds, which would otherwise end the line.
    let mut s = snapshot();
    s.stages[0].metrics[0].help = "rule=\"default\" counts the rest \\ and\nmore";
    let text = encode(&s, None, Format::OpenMetrics);
    assert!(
        text.contains(
            "# HELP lametun_filter_rule_matches rule=\\\"default\\\" counts the rest \\\\ and\\nmore\n"
        ),
        "{text}"
    );
    assert!(parse(&text).is_ok(), "{text}");
    let text = encode(&s, None, Format::PrometheusText);
    assert!(
        text.contains(
            "# HELP lametun_filter_rule_matches_total rule=\"default\" counts the rest \\\\ and\\nmore\n"
        ),
        "{text}"
    );
    assert!(parse(&text).is_ok(), "{text}");
}

#[test]
fn both_formats_read_back_into_the_same_report() {
    let snap = snapshot();
    for format in [Format::OpenMetrics, Format::PrometheusText] {
        let text = encode(&snap, Some(std::time::Duration::from_secs(60)), format);
        let r = Report::from_samples(&parse(&text).unwrap());
        assert_eq!(r.tunnel, snap.counters, "{format:?}");
        assert_eq!(r.peer.as_deref(), Some("198.51.100.7:40000"), "{format:?}");
        assert_eq!(r.uptime, Some(std::time::Duration::from_secs(60)));
        let names: Vec<_> = r.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(names, ["filter", "stats", "chacha20poly1305", "core"]);
        assert_eq!(
            r.stages[0].inbound,
            PassDrops {
                passed: 1995,
                drops: vec![("filtered".into(), 10), ("malformed".into(), 1)]
            }
        );
        assert_eq!(r.stages[3].outbound.drops, [("no_peer".to_owned(), 2)]);
        assert_eq!(r.stages[3].inbound.passed, 1995);
        assert_eq!(r.points.len(), 1);
        assert_eq!(r.points[0].stage, "stats");
        assert_eq!(r.points[0].outbound.packets, 998);
        assert_eq!(r.points[0].inbound.bytes, 2_401_200);
        assert_eq!(r.points[0].inbound.keepalives, 5);
        let metrics: Vec<_> = r
            .stage_metrics
            .iter()
            .map(|m| (m.stage.as_str(), m.name.as_str(), m.labels.clone(), m.value))
            .collect();
        assert_eq!(
            metrics,
            [
                (
                    "filter",
                    "filter_rule_matches_total",
                    vec![
                        ("rule".to_owned(), "0".to_owned()),
                        ("action".to_owned(), "deny".to_owned())
                    ],
                    10.0
                ),
                (
                    "filter",
                    "filter_rule_matches_total",
                    vec![
                        ("rule".to_owned(), "2".to_owned()),
                        ("action".to_owned(), "deny".to_owned())
                    ],
                    0.0
                ),
                ("chacha20poly1305", "replay_window_packets", vec![], 8128.0),
                ("chacha20poly1305", "rekeys_total", vec![], 2.5),
            ],
            "{format:?}"
        );
    }
}

#[test]
fn a_real_forwarder_snapshot_encodes_what_went_through() {
    use common::*;
    use lametun_core::{BuildContext, Pipeline, TelemetryHandle};
    let telemetry = TelemetryHandle::default();
    let cx = BuildContext::new(None, telemetry.clone());
    let mut p = Pipeline::new();
    p.push(
        "stats",
        "stats",
        Box::new(build("interval: off", &cx).unwrap()),
    );
    let f = client(p, &telemetry);
    for _ in 0..7 {
        send(&f, &ping(84));
    }
    receive(&f, &with_packet_info(&ping(100)));
    receive(&f, b"\x00\x00"); // too short: a core drop
    let text = encode(&telemetry.snapshot().unwrap(), None, Format::OpenMetrics);
    for line in [
        "lametun_tun_rx_packets_total 7",
        "lametun_tun_rx_bytes_total 588",
        "lametun_udp_rx_datagrams_total 2",
        "lametun_stats_packets_total{stage=\"stats\",direction=\"outbound\"} 7",
        "lametun_stats_bytes_total{stage=\"stats\",direction=\"outbound\"} 588",
        "lametun_stats_packets_total{stage=\"stats\",direction=\"inbound\"} 1",
        "lametun_stage_passed_total{stage=\"stats\",type=\"stats\",direction=\"outbound\"} 7",
        "lametun_core_dropped_total{direction=\"inbound\",reason=\"too_short\"} 1",
        "lametun_peer_info{peer=\"192.0.2.1:1234\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}
