//! Per-rule counters, metrics, the stage inside a pipeline, and the conformance kit.

use std::sync::Arc;
use std::time::Instant;

use lametun_core::testing::Conformance;
use lametun_core::{
    Direction, DropReason, Metric, PacketBuf, PacketMeta, Pipeline, Stage, Verdict,
};

use super::craft::*;
use super::filter;
use crate::Filter;

const RULES: &str = r#"
default: allow
rules:
  - { action: deny, name: no-ssh, direction: inbound, proto: tcp, dst_port: 22 }
  - { action: allow, proto: icmp }
"#;

fn meta() -> PacketMeta {
    PacketMeta::new(Instant::now(), None)
}

fn run(stage: &dyn Stage, direction: Direction, packet: &[u8]) -> Verdict {
    let mut storage = packet.to_vec();
    let mut pkt = PacketBuf::with_data(&mut storage, 0, packet);
    let verdict = match direction {
        Direction::Outbound => stage.outbound(&mut pkt, &meta()),
        Direction::Inbound => stage.inbound(&mut pkt, &meta()),
    };
    assert_eq!(pkt.as_slice(), packet, "the filter never edits a packet");
    verdict
}

/// The value of `filter_rule_matches` for `rule` in `direction`.
fn metric(metrics: &[Metric], rule: &str, direction: &str) -> f64 {
    let found: Vec<_> = metrics
        .iter()
        .filter(|m| {
            m.labels.contains(&("rule", rule.to_owned()))
                && m.labels.contains(&("direction", direction.to_owned()))
        })
        .collect();
    assert_eq!(found.len(), 1, "one series for rule {rule} {direction}");
    found[0].value
}

#[test]
fn each_rule_counts_what_it_decided_per_direction() {
    let f = filter(RULES);
    let ssh = v4(CLIENT4, SERVER4, TCP, &tcp(40000, 22, 0));
    let ping = v4(CLIENT4, SERVER4, ICMP, &icmp(8, 56));
    let web = v4(CLIENT4, SERVER4, TCP, &tcp(40000, 80, 0));
    for _ in 0..3 {
        assert_eq!(
            run(&f, Direction::Inbound, &ssh),
            Verdict::Drop(DropReason::Filtered)
        );
    }
    assert_eq!(run(&f, Direction::Outbound, &ssh), Verdict::Pass);
    assert_eq!(run(&f, Direction::Outbound, &ping), Verdict::Pass);
    assert_eq!(run(&f, Direction::Inbound, &ping), Verdict::Pass);
    assert_eq!(run(&f, Direction::Inbound, &web), Verdict::Pass);
    assert_eq!(run(&f, Direction::Inbound, &[]), Verdict::Pass);
    assert_eq!(
        run(&f, Direction::Inbound, &[0x45, 0, 0]),
        Verdict::Drop(DropReason::Malformed)
    );

    assert_eq!(f.rule_matches(0, Direction::Inbound), Some(3));
    assert_eq!(f.rule_matches(0, Direction::Outbound), Some(0));
    assert_eq!(f.rule_matches(1, Direction::Inbound), Some(1));
    assert_eq!(f.rule_matches(1, Direction::Outbound), Some(1));
    assert_eq!(f.rule_matches(2, Direction::Inbound), None);
    assert_eq!(f.default_matches(Direction::Inbound), 1);
    assert_eq!(f.default_matches(Direction::Outbound), 1);
    assert_eq!(f.malformed(Direction::Inbound), 1);

    let mut m = Vec::new();
    f.metrics(&mut m);
    assert_eq!(m.len(), 6, "two directions for each rule and the default");
    assert!(m.iter().all(|m| m.name == "filter_rule_matches"));
    assert_eq!(metric(&m, "0", "inbound"), 3.0);
    assert_eq!(metric(&m, "0", "outbound"), 0.0);
    assert_eq!(metric(&m, "1", "outbound"), 1.0);
    assert_eq!(metric(&m, "default", "inbound"), 1.0);
    let no_ssh = m.iter().find(|m| m.labels[0].1 == "0").unwrap();
    assert_eq!(
        no_ssh.labels,
        [
            ("rule", "0".to_owned()),
            ("name", "no-ssh".to_owned()),
            ("action", "deny".to_owned()),
            ("direction", "outbound".to_owned()),
        ]
    );
    assert_eq!(f.describe(), "default allow, 2 rules (1 allow, 1 deny)");
}

#[test]
fn counters_are_exact_under_two_threads() {
    let f = Arc::new(filter(RULES));
    let ssh = v4(CLIENT4, SERVER4, TCP, &tcp(40000, 22, 0));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let f = f.clone();
            let ssh = ssh.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    let _ = run(&*f, Direction::Inbound, &ssh);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(f.rule_matches(0, Direction::Inbound), Some(20_000));
}

#[test]
fn in_a_pipeline_denials_are_counted_as_filtered() {
    let mut p = Pipeline::new();
    p.push("filter", "filter", Box::new(filter(RULES)));
    let ssh = v4(CLIENT4, SERVER4, TCP, &tcp(40000, 22, 0));
    let mut storage = ssh.clone();
    let mut pkt = PacketBuf::with_data(&mut storage, 0, &ssh);
    let dropped = p.inbound(&mut pkt, &meta()).unwrap_err();
    assert_eq!(dropped.reason, DropReason::Filtered);
    assert_eq!(dropped.stage_type, "filter");
    let snap = p.snapshot();
    assert_eq!(snap[0].inbound.dropped_for("filtered"), 1);
    assert_eq!(metric(&snap[0].metrics, "0", "inbound"), 1.0);
}

#[test]
fn describe_counts_rules() {
    assert_eq!(
        filter("default: deny").describe(),
        "default deny, 0 rules (0 allow, 0 deny)"
    );
    assert_eq!(
        filter("{default: deny, rules: [{action: allow}]}").describe(),
        "default deny, 1 rule (1 allow, 0 deny)"
    );
}

#[test]
fn on_tick_survives_garbage_and_quiet() {
    let f = filter(RULES);
    f.on_tick(Instant::now());
    for _ in 0..20 {
        let _ = run(&f, Direction::Inbound, &[0xff; 60]);
    }
    f.on_tick(Instant::now()); // warns once (seen in the log)
    f.on_tick(Instant::now());
    assert_eq!(f.malformed(Direction::Inbound), 20);
}

#[test]
fn conforms_with_default_allow() {
    Conformance::from_yaml(
        "filter",
        "{default: allow, rules: [{action: deny, proto: tcp, dst_port: 23}, {action: deny, src: 10.99.0.0/16}]}",
    )
    .run_all();
}

#[test]
fn conforms_with_default_deny() {
    Conformance::from_yaml(
        "filter",
        "{default: deny, rules: [{action: allow, proto: [tcp, udp, icmp]}]}",
    )
    .seed(7)
    .run_all();
}

#[test]
fn the_example_builds() {
    use lametun_core::StageConfig;
    let example: String = crate::FilterConfig::EXAMPLE
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    let config = lametun_core::TunnelConfig::from_yaml(&format!("pipeline:\n{example}"), None)
        .expect("the example parses");
    let pipeline = config
        .build_pipeline(&Default::default())
        .expect("the example builds");
    assert_eq!(
        pipeline.describe()[0].details,
        "default allow, 3 rules (1 allow, 2 deny)"
    );
}

#[test]
fn a_filter_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Filter>();
}
