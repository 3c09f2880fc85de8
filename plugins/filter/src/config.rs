//! The `type: filter` config: read leniently, checked strictly, every error at once.
//!
//! serde stops at the first value of the wrong type, and a user with five mistakes in
//! a rule list should not need five runs to find them. So the rule list is read into a
//! plain [`Value`] tree (anything YAML can say), and this module checks each rule and
//! each key itself, naming every problem with its path (`rules[3].dst`) and carrying on.
//! Only the two top-level keys go through serde, which rejects a misspelt one.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use lametun_core::BuildError;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::headers::{Fragment, proto};
use crate::rules::{Action, ByteSet, Cidr, IcmpTypes, PortRange, Rule, direction_bit};
use lametun_core::Direction;

/// Any YAML value, kept as written so that each field can be checked on its own.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    List(Vec<Self>),
    Map(Vec<(String, Self)>),
}

impl<'de> de::Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<Value, Value>()? {
            let key = match k {
                Value::Str(s) => s,
                other => other.to_string(),
            };
            entries.push((key, v));
        }
        Ok(Value::Map(entries))
    }
}

impl fmt::Display for Value {
    /// How a value is quoted in error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("nothing"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(n) => write!(f, "{n}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Str(s) => write!(f, "{s:?}"),
            Self::List(_) => f.write_str("a list"),
            Self::Map(_) => f.write_str("a mapping"),
        }
    }
}

impl Value {
    /// The scalar as text (for labels), `None` for lists, mappings and null.
    fn scalar_text(&self) -> Option<String> {
        match self {
            Self::Bool(b) => Some(b.to_string()),
            Self::Int(n) => Some(n.to_string()),
            Self::Float(x) => Some(x.to_string()),
            Self::Str(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// A scalar or each item of a list, with the path suffix to name it in errors
    /// (`""` for a scalar, `"[2]"` for a list item).
    fn items(&self) -> Vec<(String, &Self)> {
        match self {
            Self::List(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("[{i}]"), v))
                .collect(),
            v => vec![(String::new(), v)],
        }
    }

    /// `a,b,c` for a label.
    fn label_text(&self) -> String {
        self.items()
            .iter()
            .filter_map(|(_, v)| v.scalar_text())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The keys a rule may have, in the order error messages list them.
pub(crate) const RULE_KEYS: [&str; 10] = [
    "action",
    "name",
    "direction",
    "proto",
    "src",
    "dst",
    "src_port",
    "dst_port",
    "icmp_type",
    "fragment",
];

/// The compiled form of the whole config.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) default: Action,
    pub(crate) rules: Vec<Rule>,
    /// The rule's `name`, or a summary of its conditions (`deny inbound proto=tcp
    /// dst_port=22`): how counters show it.
    pub(crate) labels: Vec<String>,
}

/// Checks both top-level keys and every rule; returns all problems or the rules.
pub(crate) fn compile(
    default: Option<&Value>,
    rules: Option<&Value>,
) -> Result<Compiled, BuildError> {
    let mut errors = BuildError::default();
    let default = match default {
        None => {
            errors.push(
                "default",
                "missing: say `allow` or `deny`, what happens to a packet no rule matches",
            );
            None
        }
        Some(v) => parse_action(v).map_err(|m| errors.push("default", m)).ok(),
    };
    let mut compiled = Vec::new();
    let mut labels = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    match rules {
        None | Some(Value::Null) => {}
        Some(Value::List(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("rules[{i}]");
                let Value::Map(entries) = item else {
                    errors.push(
                        at,
                        format!(
                            "expected a rule like {{ action: deny, proto: tcp, dst_port: 22 }}, found {item}"
                        ),
                    );
                    continue;
                };
                if let Some((rule, label)) = compile_rule(&at, entries, &mut errors) {
                    if let Some(Value::Str(name)) =
                        entries.iter().find(|(k, _)| k == "name").map(|(_, v)| v)
                    {
                        if let Some(first) = names.insert(name.clone(), i) {
                            errors.push(
                                format!("{at}.name"),
                                format!("{name:?} is already the name of rules[{first}]; counters need distinct names"),
                            );
                        }
                    }
                    compiled.push(rule);
                    labels.push(label);
                }
            }
        }
        Some(other) => errors.push("rules", format!("expected a list of rules, found {other}")),
    }
    match default {
        Some(default) if errors.is_empty() => Ok(Compiled {
            default,
            rules: compiled,
            labels,
        }),
        _ => Err(errors),
    }
}

/// Checks one rule. Every problem goes into `errors`; `None` if there was one.
fn compile_rule(
    at: &str,
    entries: &[(String, Value)],
    errors: &mut BuildError,
) -> Option<(Rule, String)> {
    let before = errors.errors.len();
    let get = |key: &str| entries.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    for (key, _) in entries {
        if !RULE_KEYS.contains(&key.as_str()) {
            let hint = match closest(key, &RULE_KEYS) {
                Some(k) => format!("did you mean `{k}`? "),
                None => String::new(),
            };
            errors.push(
                format!("{at}.{key}"),
                format!(
                    "unknown key; {hint}a rule has the keys {}",
                    RULE_KEYS.join(", ")
                ),
            );
        }
    }

    // Each field is checked even when another one failed, so all errors show at once.
    let field = |key: &str| format!("{at}.{key}");
    let action = match get("action") {
        None => {
            errors.push(at, "missing `action` (allow or deny)");
            None
        }
        Some(v) => parse_action(v)
            .map_err(|m| errors.push(field("action"), m))
            .ok(),
    };
    let mut rule = Rule::any(action.unwrap_or(Action::Deny));
    let mut label = vec![rule.action.as_str().to_owned()];

    if let Some(v) = get("name") {
        match v {
            Value::Str(s)
                if !s.trim().is_empty()
                    && s.chars().count() <= 64
                    && !s.chars().any(char::is_control) => {}
            _ => errors.push(
                field("name"),
                format!("expected a short text (at most 64 characters), found {v}"),
            ),
        }
    }
    if let Some(v) = get("direction") {
        match v {
            Value::Str(s) if s == "inbound" => rule.directions = direction_bit(Direction::Inbound),
            Value::Str(s) if s == "outbound" => {
                rule.directions = direction_bit(Direction::Outbound)
            }
            Value::Str(s) if s == "both" => {}
            _ => errors.push(
                field("direction"),
                format!("expected inbound, outbound or both, found {v}"),
            ),
        }
        if rule.directions != 0b11 {
            label.push(v.label_text());
        }
    }
    let protos = get("proto").map(|v| {
        label.push(format!("proto={}", v.label_text()));
        let mut set = ByteSet::default();
        each_item(v, &field("proto"), errors, |item| {
            set.insert(parse_proto(item)?);
            Ok(())
        });
        set
    });
    rule.protos = protos;
    let mut families = Vec::new();
    for key in ["src", "dst"] {
        let Some(v) = get(key) else { continue };
        label.push(format!("{key}={}", v.label_text()));
        let mut nets = Vec::new();
        each_item(v, &field(key), errors, |item| {
            nets.push(parse_cidr(item)?);
            Ok(())
        });
        families.push((
            key.to_owned(),
            nets.iter().fold(0, |f, n| f | family_bit(n.family)),
        ));
        let nets = Some(nets.into_boxed_slice());
        if key == "src" {
            rule.src = nets;
        } else {
            rule.dst = nets;
        }
    }
    for key in ["src_port", "dst_port"] {
        let Some(v) = get(key) else { continue };
        label.push(format!("{key}={}", v.label_text()));
        let mut ranges = Vec::new();
        each_item(v, &field(key), errors, |item| {
            ranges.push(parse_ports(item)?);
            Ok(())
        });
        if let Some(protos) = &protos
            && let Some(p) = protos.iter().find(|&p| !proto::has_ports(p))
        {
            errors.push(
                field(key),
                format!(
                    "ports need proto tcp, udp, sctp, dccp or udplite, but {} has no ports",
                    proto_name(p)
                ),
            );
        }
        let ranges = Some(ranges.into_boxed_slice());
        if key == "src_port" {
            rule.src_ports = ranges;
        } else {
            rule.dst_ports = ranges;
        }
    }
    if let Some(v) = get("icmp_type") {
        label.push(format!("icmp_type={}", v.label_text()));
        // Names resolve in the protocols the rule allows, or both ICMP and ICMPv6.
        let (v4, v6) = match &protos {
            None => (true, true),
            Some(p) => (p.contains(proto::ICMP), p.contains(proto::ICMPV6)),
        };
        if let Some(p) = protos
            .as_ref()
            .and_then(|p| p.iter().find(|&p| p != proto::ICMP && p != proto::ICMPV6))
        {
            errors.push(
                field("icmp_type"),
                format!(
                    "an ICMP type needs proto icmp or icmpv6 (or no proto), but {} is listed",
                    proto_name(p)
                ),
            );
        }
        if rule.src_ports.is_some() || rule.dst_ports.is_some() {
            errors.push(
                field("icmp_type"),
                "a rule matches ports or an ICMP type, not both",
            );
        }
        let mut types = IcmpTypes::default();
        each_item(v, &field("icmp_type"), errors, |item| {
            add_icmp_type(item, v4, v6, &mut types)
        });
        rule.icmp_types = Some(types);
    }
    if let Some(v) = get("fragment") {
        label.push(format!("fragment={}", v.label_text()));
        match parse_fragment(v) {
            Ok(bits) => rule.fragments = bits,
            Err(m) => errors.push(field("fragment"), m),
        }
        let needs_transport =
            rule.src_ports.is_some() || rule.dst_ports.is_some() || rule.icmp_types.is_some();
        if rule.fragments == Fragment::Later.bit() && needs_transport && rule.action == Action::Deny
        {
            errors.push(
                at,
                "can never match: later fragments carry no ports or ICMP type, and a deny rule does not match unknown ones",
            );
        }
    }
    if let Some(p) = &protos {
        // ICMP is an IPv4 protocol and ICMPv6 an IPv6 one; other protocols run on both.
        let bits = p.iter().fold(0, |f, p| {
            f | match p {
                proto::ICMP => FAMILY_V4,
                proto::ICMPV6 => FAMILY_V6,
                _ => FAMILY_V4 | FAMILY_V6,
            }
        });
        if !p.is_empty() {
            families.push(("proto".to_owned(), bits));
        }
    }
    check_families(at, &families, errors);

    let label = match get("name") {
        Some(Value::Str(s)) => s.clone(),
        _ => label.join(" "),
    };
    (errors.errors.len() == before).then_some((rule, label))
}

const FAMILY_V4: u8 = 1;
const FAMILY_V6: u8 = 2;

fn family_bit(f: crate::headers::Family) -> u8 {
    match f {
        crate::headers::Family::V4 => FAMILY_V4,
        crate::headers::Family::V6 => FAMILY_V6,
    }
}

fn family_name(bits: u8) -> &'static str {
    match bits {
        FAMILY_V4 => "IPv4",
        FAMILY_V6 => "IPv6",
        _ => "IPv4 and IPv6",
    }
}

/// A rule whose address and protocol conditions allow no common address family can
/// never match: almost always `proto: icmp` meant `icmpv6`, or a mistyped prefix.
fn check_families(at: &str, families: &[(String, u8)], errors: &mut BuildError) {
    for (i, (a, fa)) in families.iter().enumerate() {
        for (b, fb) in &families[i + 1..] {
            if *fa != 0 && *fb != 0 && fa & fb == 0 {
                let hint = if a == "proto" || b == "proto" {
                    " (ICMP is IPv4 only; for IPv6 write proto: icmpv6)"
                } else {
                    ""
                };
                errors.push(
                    at,
                    format!(
                        "can never match: {a} is {} only but {b} is {} only{hint}",
                        family_name(*fa),
                        family_name(*fb)
                    ),
                );
                return;
            }
        }
    }
}

/// Calls `f` on the scalar `v` or on each item of the list `v`, pushing each failure
/// at `path` (plus `[i]` for a list item). An empty list is an error: it would match
/// nothing, which is never what a rule means.
fn each_item(
    v: &Value,
    path: &str,
    errors: &mut BuildError,
    mut f: impl FnMut(&Value) -> Result<(), String>,
) {
    if matches!(v, Value::List(items) if items.is_empty()) {
        errors.push(
            path,
            "an empty list matches nothing; leave the key out to match anything",
        );
        return;
    }
    for (suffix, item) in v.items() {
        if let Err(m) = f(item) {
            errors.push(format!("{path}{suffix}"), m);
        }
    }
}

fn parse_action(v: &Value) -> Result<Action, String> {
    match v {
        Value::Str(s) if s == "allow" => Ok(Action::Allow),
        Value::Str(s) if s == "deny" => Ok(Action::Deny),
        _ => Err(format!("expected allow or deny, found {v}")),
    }
}

/// Protocol names accepted by `proto`, with their numbers.
pub(crate) const PROTOCOLS: [(&str, u8); 13] = [
    ("icmp", proto::ICMP),
    ("igmp", 2),
    ("ipip", 4),
    ("tcp", proto::TCP),
    ("udp", proto::UDP),
    ("dccp", proto::DCCP),
    ("ipv6", 41),
    ("gre", 47),
    ("esp", 50),
    ("icmpv6", proto::ICMPV6),
    ("ospf", 89),
    ("sctp", proto::SCTP),
    ("udplite", proto::UDPLITE),
];

fn proto_name(p: u8) -> String {
    PROTOCOLS
        .iter()
        .find(|(_, n)| *n == p)
        .map_or_else(|| format!("protocol {p}"), |(name, _)| (*name).to_owned())
}

fn parse_proto(v: &Value) -> Result<u8, String> {
    let n = match v {
        Value::Int(n) => u8::try_from(*n).ok(),
        Value::Str(s) => match PROTOCOLS
            .iter()
            .find(|(name, _)| s.eq_ignore_ascii_case(name))
        {
            Some((_, n)) => Some(*n),
            None if s == "ipv6-icmp" => Some(proto::ICMPV6),
            None => s.parse::<u8>().ok(),
        },
        _ => None,
    };
    let Some(n) = n else {
        let names: Vec<_> = PROTOCOLS.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "unknown protocol {v}: expected a number from 0 to 255 or one of {}",
            names.join(", ")
        ));
    };
    if proto::is_walked(n) {
        return Err(format!(
            "protocol {n} is an IPv6 extension header (or AH), which the filter walks past to the transport header; match the protocol after it"
        ));
    }
    Ok(n)
}

fn parse_cidr(v: &Value) -> Result<Cidr, String> {
    let Value::Str(s) = v else {
        return Err(format!(
            "expected an address or a CIDR such as 10.0.0.0/8 or fd00::/8, found {v}"
        ));
    };
    let invalid = |why: &str| format!("invalid CIDR {s:?}: {why}");
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s.as_str(), None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| invalid("not an IPv4 or IPv6 address"))?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.trim().parse::<u8>() {
            Ok(p) if p <= max => p,
            _ => {
                return Err(invalid(&format!(
                    "the prefix length must be a number from 0 to {max}"
                )));
            }
        },
    };
    Cidr::new(addr, prefix).ok_or_else(|| {
        // Host bits set: say which network was probably meant.
        let masked = Cidr::new(mask_addr(addr, prefix), prefix).map(|c| c.net);
        let meant = masked.map(|net| match addr {
            IpAddr::V4(_) => IpAddr::from((net as u32).to_be_bytes()).to_string(),
            IpAddr::V6(_) => IpAddr::from(net.to_be_bytes()).to_string(),
        });
        invalid(&format!(
            "host bits are set after the /{prefix}; did you mean {}/{prefix}?",
            meant.unwrap_or_default()
        ))
    })
}

fn mask_addr(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((u32::from(a) & mask).to_be_bytes())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((u128::from(a) & mask).to_be_bytes())
        }
    }
}

fn parse_ports(v: &Value) -> Result<PortRange, String> {
    let bad =
        || format!("invalid port {v}: expected a number from 0 to 65535 or a range like 1000-2000");
    let port = |s: &str| s.trim().parse::<u16>().map_err(|_| bad());
    match v {
        Value::Int(n) => {
            let p = u16::try_from(*n).map_err(|_| bad())?;
            Ok(PortRange { lo: p, hi: p })
        }
        Value::Str(s) => {
            let (lo, hi) = match s.split_once('-') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => {
                    let p = port(s)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(format!(
                    "invalid port range {v}: the first port is above the last"
                ));
            }
            Ok(PortRange { lo, hi })
        }
        _ => Err(bad()),
    }
}

/// ICMP (RFC 792 and later) message types by name.
pub(crate) const ICMP_TYPES: [(&str, u8); 11] = [
    ("echo-reply", 0),
    ("destination-unreachable", 3),
    ("source-quench", 4),
    ("redirect", 5),
    ("echo-request", 8),
    ("router-advertisement", 9),
    ("router-solicitation", 10),
    ("time-exceeded", 11),
    ("parameter-problem", 12),
    ("timestamp-request", 13),
    ("timestamp-reply", 14),
];

/// ICMPv6 (RFC 4443, 4861, 2710) message types by name.
pub(crate) const ICMPV6_TYPES: [(&str, u8); 14] = [
    ("destination-unreachable", 1),
    ("packet-too-big", 2),
    ("time-exceeded", 3),
    ("parameter-problem", 4),
    ("echo-request", 128),
    ("echo-reply", 129),
    ("multicast-listener-query", 130),
    ("multicast-listener-report", 131),
    ("multicast-listener-done", 132),
    ("router-solicitation", 133),
    ("router-advertisement", 134),
    ("neighbor-solicitation", 135),
    ("neighbor-advertisement", 136),
    ("redirect", 137),
];

fn add_icmp_type(v: &Value, v4: bool, v6: bool, types: &mut IcmpTypes) -> Result<(), String> {
    let number = match v {
        Value::Int(n) => u8::try_from(*n).ok(),
        Value::Str(s) => s.parse::<u8>().ok(),
        _ => None,
    };
    if let Some(n) = number {
        if v4 {
            types.v4.insert(n);
        }
        if v6 {
            types.v6.insert(n);
        }
        return Ok(());
    }
    let Value::Str(s) = v else {
        return Err(format!(
            "expected an ICMP type name or a number from 0 to 255, found {v}"
        ));
    };
    let name = s.replace('_', "-").to_ascii_lowercase();
    let find = |table: &[(&str, u8)]| table.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
    let (in4, in6) = (find(&ICMP_TYPES), find(&ICMPV6_TYPES));
    let mut found = false;
    if v4 && let Some(t) = in4 {
        types.v4.insert(t);
        found = true;
    }
    if v6 && let Some(t) = in6 {
        types.v6.insert(t);
        found = true;
    }
    if found {
        return Ok(());
    }
    Err(match (in4, in6) {
        (Some(_), _) => format!("{s:?} is an ICMP (IPv4) type, but the rule's proto is icmpv6"),
        (_, Some(_)) => format!("{s:?} is an ICMPv6 type, but the rule's proto is icmp"),
        _ => {
            let mut names: Vec<_> = ICMP_TYPES
                .iter()
                .chain(&ICMPV6_TYPES)
                .map(|(n, _)| *n)
                .collect();
            names.sort_unstable();
            names.dedup();
            format!(
                "unknown ICMP type {s:?}: expected a number or one of {}",
                names.join(", ")
            )
        }
    })
}

fn parse_fragment(v: &Value) -> Result<u8, String> {
    let first = Fragment::First.bit();
    let later = Fragment::Later.bit();
    match v {
        Value::Bool(true) => Ok(first | later),
        Value::Bool(false) => Ok(Fragment::No.bit()),
        Value::Str(s) => match s.as_str() {
            "true" | "yes" => Ok(first | later),
            "false" | "no" => Ok(Fragment::No.bit()),
            "first" => Ok(first),
            "later" => Ok(later),
            _ => Err(format!(
                "expected true (any fragment), false (whole packets), first or later, found {v}"
            )),
        },
        _ => Err(format!(
            "expected true (any fragment), false (whole packets), first or later, found {v}"
        )),
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    candidates
        .iter()
        .map(|c| (distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
