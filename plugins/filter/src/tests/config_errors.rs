//! Config errors: every problem at once, each naming its rule index and key.

use lametun_core::{BuildContext, TunnelConfig, registry};

use super::{errors, filter};

/// `path: message` of each error, for compact assertions.
fn lines(yaml: &str) -> Vec<String> {
    errors(yaml)
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect()
}

fn assert_has(lines: &[String], want: &str) {
    assert!(
        lines.iter().any(|l| l.starts_with(want)),
        "no error starts with {want:?}; got:\n{}",
        lines.join("\n")
    );
}

#[test]
fn every_error_is_reported_at_once_with_rule_index_and_key() {
    let errs = lines(
        r#"
default: allow
rules:
  - { action: drop, proto: tcp, dst_port: 22 }
  - { action: deny, proto: tcpp, dst_port: 70000 }
  - { action: allow, src: [10.0.0.0/8, "10.0.0.1/8", banana], direction: sideways }
  - { action: deny, dst: 10.0.0.0/33 }
  - { proto: udp }
  - { action: deny, dst_prot: 53, colour: red }
  - { action: allow, src_port: "2000-1000", icmp_type: 8 }
  - "deny everything"
"#,
    );
    for want in [
        r#"rules[0].action: expected allow or deny, found "drop""#,
        r#"rules[1].proto: unknown protocol "tcpp""#,
        "rules[1].dst_port: invalid port 70000",
        r#"rules[2].src[1]: invalid CIDR "10.0.0.1/8": host bits are set after the /8; did you mean 10.0.0.0/8?"#,
        r#"rules[2].src[2]: invalid CIDR "banana""#,
        r#"rules[2].direction: expected inbound, outbound or both, found "sideways""#,
        r#"rules[3].dst: invalid CIDR "10.0.0.0/33""#,
        "rules[4]: missing `action`",
        "rules[5].dst_prot: unknown key; did you mean `dst_port`?",
        "rules[5].colour: unknown key; a rule has the keys action, name,",
        r#"rules[6].src_port: invalid port range "2000-1000""#,
        "rules[6].icmp_type: a rule matches ports or an ICMP type, not both",
        r#"rules[7]: expected a rule like { action: deny, proto: tcp, dst_port: 22 }, found "deny everything""#,
    ] {
        assert_has(&errs, want);
    }
    assert_eq!(errs.len(), 13, "{}", errs.join("\n"));
}

#[test]
fn the_issue_example_reads_as_promised_through_the_config_file() {
    let text = r#"
peer: { listen: true }
pipeline:
  - type: filter
    default: allow
    rules:
      - { action: deny, proto: tcp, dst_port: 22 }
      - { action: allow, src: 172.31.255.0/24 }
      - { action: allow, proto: icmp }
      - { action: deny, dst: 10.0.0.0/33 }
      - { action: deny, proto: udp, dst_port: 1-2-3 }
"#;
    let config = TunnelConfig::from_yaml(text, Some("server.yaml".as_ref())).expect("parses");
    let errors = config
        .build_pipeline(&BuildContext::default())
        .expect_err("must not build")
        .to_string();
    assert!(
        errors.contains(
            r#"server.yaml:10: pipeline[0] (filter): rules[3].dst: invalid CIDR "10.0.0.0/33""#
        ),
        "{errors}"
    );
    assert!(
        errors.contains(
            r#"server.yaml:11: pipeline[0] (filter): rules[4].dst_port: invalid port "1-2-3""#
        ),
        "{errors}"
    );
}

#[test]
fn top_level_problems() {
    assert_has(
        &lines("rules: []"),
        "default: missing: say `allow` or `deny`",
    );
    assert_has(
        &lines("{default: maybe, rules: {action: deny}}"),
        r#"default: expected allow or deny, found "maybe""#,
    );
    assert_has(
        &lines("{default: deny, rules: {action: deny}}"),
        "rules: expected a list of rules, found a mapping",
    );
    // A misspelt top-level key is refused by serde, naming the key.
    let reg = registry::find("filter").expect("registered");
    let Err(err) = reg.build_yaml("{default: deny, rule: []}", &BuildContext::default()) else {
        panic!("an unknown key was accepted");
    };
    let err = err.to_string();
    assert!(err.contains("unknown field `rule`"), "{err}");
    // Rules may be left out: the default decides everything.
    let f = filter("default: deny");
    assert!(f.is_empty());
}

#[test]
fn conditions_that_cannot_hold_together() {
    let errs = lines(
        r#"
default: allow
rules:
  - { action: allow, proto: icmp, dst_port: 7 }
  - { action: allow, proto: [tcp, icmp], icmp_type: echo-request }
  - { action: deny, src: 10.0.0.0/8, dst: "fd00::/8" }
  - { action: allow, proto: icmp, dst: "fd00::/8" }
  - { action: deny, proto: icmp, icmp_type: neighbor-solicitation }
  - { action: deny, proto: icmpv6, icmp_type: timestamp-request }
  - { action: deny, icmp_type: teapot }
  - { action: deny, dst_port: [] }
  - { action: deny, proto: 44 }
  - { action: deny, proto: 256 }
  - { action: deny, fragment: later, dst_port: 22 }
  - { action: deny, fragment: sometimes }
  - { action: deny, name: "" }
"#,
    );
    for want in [
        "rules[0].dst_port: ports need proto tcp, udp, sctp, dccp or udplite, but icmp has no ports",
        "rules[1].icmp_type: an ICMP type needs proto icmp or icmpv6 (or no proto), but tcp is listed",
        "rules[2]: can never match: src is IPv4 only but dst is IPv6 only",
        "rules[3]: can never match: dst is IPv6 only but proto is IPv4 only (ICMP is IPv4 only; for IPv6 write proto: icmpv6)",
        r#"rules[4].icmp_type: "neighbor-solicitation" is an ICMPv6 type, but the rule's proto is icmp"#,
        r#"rules[5].icmp_type: "timestamp-request" is an ICMP (IPv4) type, but the rule's proto is icmpv6"#,
        r#"rules[6].icmp_type: unknown ICMP type "teapot""#,
        "rules[7].dst_port: an empty list matches nothing",
        "rules[8].proto: protocol 44 is an IPv6 extension header",
        "rules[9].proto: unknown protocol 256",
        "rules[10]: can never match: later fragments carry no ports",
        r#"rules[11].fragment: expected true (any fragment), false (whole packets), first or later, found "sometimes""#,
        r#"rules[12].name: expected a short text"#,
    ] {
        assert_has(&errs, want);
    }
    assert_eq!(errs.len(), 13, "{}", errs.join("\n"));
}

#[test]
fn names_label_rules_and_must_be_distinct() {
    let errs = lines(
        r#"
default: allow
rules:
  - { action: deny, name: ssh, dst_port: 22 }
  - { action: deny, name: ssh, dst_port: 2222 }
"#,
    );
    assert_eq!(
        errs,
        [r#"rules[1].name: "ssh" is already the name of rules[0]; counters need distinct names"#]
    );
    let f = filter(
        r#"
default: allow
rules:
  - { action: deny, name: no-ssh, direction: inbound, proto: tcp, dst_port: 22 }
  - { action: allow, direction: both, src: [10.0.0.0/8, "fd00::/8"], icmp_type: [echo_request, 0] }
  - { action: deny, fragment: true }
"#,
    );
    assert_eq!(
        f.labels(),
        [
            "no-ssh",
            "allow src=10.0.0.0/8,fd00::/8 icmp_type=echo_request,0",
            "deny fragment=true"
        ]
    );
}

#[test]
fn a_name_is_limited_to_64_characters_not_bytes() {
    // 40 Cyrillic letters are 80 bytes of UTF-8, but 40 characters.
    let cyrillic: String = "правило".chars().cycle().take(40).collect();
    let f = filter(&format!(
        "{{default: allow, rules: [{{action: deny, name: {cyrillic}}}]}}"
    ));
    assert_eq!(f.labels(), [cyrillic]);
    let f = filter(&format!(
        "{{default: allow, rules: [{{action: deny, name: {}}}]}}",
        "a".repeat(64)
    ));
    assert_eq!(f.len(), 1);
    assert_has(
        &lines(&format!(
            "{{default: allow, rules: [{{action: deny, name: {}}}]}}",
            "a".repeat(65)
        )),
        "rules[0].name: expected a short text (at most 64 characters)",
    );
}

#[test]
fn spellings_users_reach_for_are_accepted() {
    let f = filter(
        r#"
default: deny
rules:
  - { action: allow, proto: "6", dst_port: "443" }
  - { action: allow, proto: [UDP, 136], dst_port: [53, "5000-5010"] }
  - { action: allow, proto: ipv6-icmp, icmp_type: [Echo-Request, "129", 135] }
  - { action: allow, src: " 192.0.2.1 ", dst: "192.0.2.0/24" }
  - { action: allow, dst: "2001:db8::/32" }
  - { action: allow, fragment: "no" }
"#,
    );
    assert_eq!(f.len(), 6);
}
