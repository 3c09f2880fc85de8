//! `lametun-stage-filter`: the `filter` stage, which decides which inner packets may
//! cross the tunnel.
//!
//! ```yaml
//! pipeline:
//!   - type: filter
//!     default: allow              # what happens to a packet no rule matches (or deny)
//!     rules:                      # in order; the first rule that matches decides
//!       - { action: deny,  direction: inbound, proto: tcp, dst_port: 22, name: no-ssh }
//!       - { action: allow, src: 172.31.255.0/24, proto: icmp }
//!       - { action: deny,  dst: "fd00::/8" }
//!   - type: chacha20poly1305      # the filter sits above encryption: it reads IP packets
//!     key_file: tunnel.key
//! ```
//!
//! A rule matches when all of its conditions hold; a condition left out matches
//! anything. The conditions are `direction` (`inbound`: from the peer toward this host's
//! TUN device; `outbound`: read from the TUN device toward the peer; `both`, the
//! default), `proto` (a name such as `tcp`, `udp`, `icmp`, `icmpv6`, `sctp`, or a number),
//! `src` and `dst` (an address or a CIDR, IPv4 or IPv6), `src_port` and `dst_port` (a
//! port or a range such as `1000-2000`), `icmp_type` (a name such as `echo-request` or a
//! number) and `fragment`. Every one of them but `direction` and `fragment` also takes a
//! list, which matches if any item does: `dst_port: [80, 443, 8000-8999]`. `name` labels
//! the rule in counters. The full reference, with the reasons behind each choice, is the
//! section "Filter" of lametun's top-level `README.md` (the crate's own `README.md` only
//! points there).
//!
//! # How a packet is judged
//!
//! An empty packet is a lametun keepalive and always passes. Anything else must be an
//! IPv4 or IPv6 packet whose headers can be read with confidence (see [`Malformed`]),
//! or it is dropped as [`DropReason::Malformed`]: a filter that let through what it
//! could not read would be a filter only for the well-behaved. IPv6 extension headers
//! (hop-by-hop, routing, fragment, destination options) and AH are walked to reach the
//! transport header, so `proto: tcp` means TCP however many headers precede it.
//!
//! The rules are tried in order and the first that matches decides; if none does,
//! `default` decides. A denied packet is dropped as [`DropReason::Filtered`].
//!
//! # Fragments
//!
//! Only the first fragment of a datagram holds its transport header. A first fragment
//! is judged like a whole packet, and must hold the whole transport header (else it is
//! malformed: the tiny-fragment attack of RFC 1858). A later fragment has no ports and
//! no ICMP type, so such a condition can be neither true nor false for it: it counts as
//! matching in an `allow` rule and as not matching in a `deny` rule. A later fragment
//! thus passes if it could belong to a datagram the rules allow. That is safe for deny
//! rules because the datagram is judged on its first fragment: if that was dropped, the
//! receiving host can never reassemble the datagram and discards the other fragments at
//! its reassembly timeout. Conditions on addresses and protocol are known in every
//! fragment and apply as usual, so `deny src: 10.0.0.0/8` drops every fragment.
//! `fragment: true` (any fragment), `first`, `later` or `false` (whole packets only)
//! matches on the fragment kind, for those who want to drop fragments outright.
//!
//! # Counters
//!
//! Each rule counts the packets it decided, per direction, and so does the default.
//! [`Stage::metrics`] reports them as `filter_rule_matches{rule, name, action,
//! direction}` (`rule="default"` for the default), which the `stats` stage and
//! `lametun stats` show: the `deny` rows say which rule dropped what. Counting is one
//! relaxed atomic add per packet; the per-packet path takes no lock and allocates
//! nothing.
//!
//! # What this crate does not do
//!
//! - It keeps no connection state. It is a stateless packet filter like a router's
//!   access list, not a stateful firewall: with `default: deny`, the replies to allowed
//!   outbound traffic need rules of their own (for example `{ action: allow, direction:
//!   inbound, proto: tcp, src_port: 443 }`).
//! - It does not reassemble fragments, verify checksums or rate-limit.
//! - It reads IP packets, so it must stand above (before) any encryption stage in the
//!   pipeline; below it, it would see ciphertext and drop everything as malformed (it
//!   says so in the log if that happens).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod headers;
mod rules;

use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

use lametun_core::{
    BuildContext, BuildError, Direction, DropReason, Metric, MetricKind, PacketBuf, PacketMeta,
    Stage, StageConfig, Verdict,
};
use serde::Deserialize;

pub use headers::Malformed;
pub use rules::Action;

use config::Value;
use rules::{Counter, Hits, Rule, direction_bit, direction_index};

/// The keys of a `type: filter` pipeline entry. See the [crate docs](crate) for the
/// rule syntax.
///
/// The rule list is read leniently and checked by hand, so that every mistake in it is
/// reported at once, each with its rule index and key (`rules[3].dst: invalid CIDR
/// "10.0.0.0/33": ...`), and a misspelt key in a rule is an error like any other.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// `allow` or `deny`: what happens to a packet no rule matches. Required, so that a
    /// filter never fails open or closed by accident.
    #[serde(default)]
    default: Option<Value>,
    /// The rules, in order.
    #[serde(default)]
    rules: Option<Value>,
}

impl StageConfig for FilterConfig {
    const TYPE: &'static str = "filter";
    const SUMMARY: &'static str =
        "allow or deny inner packets by address, protocol, port and ICMP type; counts per rule";
    const EXAMPLE: &'static str = "\
- type: filter
  default: allow
  rules:
    - { action: deny,  direction: inbound, proto: tcp, dst_port: 22, name: no-ssh }
    - { action: allow, src: 172.31.255.0/24, proto: [icmp, icmpv6] }
    - { action: deny,  dst: \"fd00::/8\" }
";
    type Stage = Filter;

    fn build(self, _cx: &BuildContext) -> Result<Filter, BuildError> {
        let compiled = config::compile(self.default.as_ref(), self.rules.as_ref())?;
        let hits = Hits::new(compiled.rules.len());
        Ok(Filter {
            default: compiled.default,
            rules: compiled.rules.into_boxed_slice(),
            labels: compiled.labels.into_boxed_slice(),
            hits,
            malformed: Default::default(),
            health: Mutex::default(),
        })
    }
}

lametun_core::register_stage!(FilterConfig);

/// What the filter decides about one packet (see [`Filter::decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// An empty packet, a lametun keepalive: always passed, never counted by a rule.
    Keepalive,
    /// The rule at `index` (0-based, in the order listed) matched first.
    Rule {
        /// Position of the rule in `rules`.
        index: usize,
        /// Its action.
        action: Action,
    },
    /// No rule matched; the default action applies.
    Default(Action),
    /// The packet could not be read; it is dropped.
    Malformed(Malformed),
}

impl Decision {
    /// The verdict the stage returns for this decision.
    pub const fn verdict(self) -> Verdict {
        match self {
            Self::Keepalive => Verdict::Pass,
            Self::Rule { action, .. } | Self::Default(action) => action.verdict(),
            Self::Malformed(_) => Verdict::Drop(DropReason::Malformed),
        }
    }
}

/// The `filter` stage: ordered rules compiled at start-up, first match wins.
///
/// One instance serves every worker thread: the rules are read-only and the counters
/// are atomics.
pub struct Filter {
    default: Action,
    rules: Box<[Rule]>,
    labels: Box<[String]>,
    hits: Hits,
    malformed: [Counter; 2],
    health: Mutex<Health>,
}

/// What `on_tick` remembers to notice a filter that sees only garbage.
#[derive(Debug, Default)]
struct Health {
    last_malformed: u64,
    last_read: u64,
    warned: bool,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("default", &self.default)
            .field("rules", &self.labels)
            .finish_non_exhaustive()
    }
}

impl Filter {
    /// What the filter would do with `packet` travelling in `direction`, without
    /// counting it (for tests and tools; the stage itself counts).
    pub fn decide(&self, direction: Direction, packet: &[u8]) -> Decision {
        if packet.is_empty() {
            return Decision::Keepalive;
        }
        let headers = match headers::parse(packet) {
            Ok(h) => h,
            Err(e) => return Decision::Malformed(e),
        };
        let bit = direction_bit(direction);
        match self.rules.iter().position(|r| r.matches(bit, &headers)) {
            Some(index) => Decision::Rule {
                index,
                action: self.rules[index].action,
            },
            None => Decision::Default(self.default),
        }
    }

    /// Decides and counts.
    #[inline]
    fn handle(&self, direction: Direction, packet: &[u8]) -> Verdict {
        let decision = self.decide(direction, packet);
        let counter = match decision {
            Decision::Keepalive => None,
            Decision::Rule { index, .. } => self.hits.get(direction, index),
            Decision::Default(_) => self.hits.get(direction, self.rules.len()),
            Decision::Malformed(_) => Some(&self.malformed[direction_index(direction)]),
        };
        if let Some(counter) = counter {
            counter.inc();
        }
        decision.verdict()
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True if there are no rules (the default decides everything).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// How each rule is shown in counters: its `name`, or a summary of its conditions
    /// such as `deny inbound proto=tcp dst_port=22`.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Packets the rule at `index` decided in `direction` so far (`None` past the end).
    pub fn rule_matches(&self, index: usize, direction: Direction) -> Option<u64> {
        (index < self.rules.len()).then(|| self.hits.get(direction, index).map_or(0, Counter::get))
    }

    /// Packets no rule matched, decided by the default, in `direction` so far.
    pub fn default_matches(&self, direction: Direction) -> u64 {
        self.hits
            .get(direction, self.rules.len())
            .map_or(0, Counter::get)
    }

    /// Packets dropped as malformed in `direction` so far.
    pub fn malformed(&self, direction: Direction) -> u64 {
        self.malformed[direction_index(direction)].get()
    }
}

const DIRECTIONS: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

/// A filter that saw at least this many packets in a tick, all malformed, is warned
/// about once: it is most likely listed below an encryption stage.
const GARBAGE_WARNING_THRESHOLD: u64 = 16;

impl Stage for Filter {
    /// The filter only reads packets.
    fn grows_inbound(&self) -> bool {
        false
    }

    fn outbound(&self, pkt: &mut PacketBuf<'_>, _meta: &PacketMeta) -> Verdict {
        self.handle(Direction::Outbound, pkt.as_slice())
    }

    fn inbound(&self, pkt: &mut PacketBuf<'_>, _meta: &PacketMeta) -> Verdict {
        self.handle(Direction::Inbound, pkt.as_slice())
    }

    fn on_tick(&self, _now: Instant) {
        let malformed = self.malformed.iter().map(Counter::get).sum::<u64>();
        let read = self.hits.total();
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let new_garbage = malformed - health.last_malformed;
        if !health.warned && new_garbage >= GARBAGE_WARNING_THRESHOLD && read == health.last_read {
            health.warned = true;
            tracing::warn!(
                malformed = new_garbage,
                "the filter stage could read none of the last {new_garbage} packets: it \
                 reads IP packets, so it must be listed above (before) any encryption stage"
            );
        }
        health.last_malformed = malformed;
        health.last_read = read;
    }

    fn describe(&self) -> String {
        let deny = self
            .rules
            .iter()
            .filter(|r| r.action == Action::Deny)
            .count();
        format!(
            "default {}, {} rule{} ({} allow, {deny} deny)",
            self.default.as_str(),
            self.rules.len(),
            if self.rules.len() == 1 { "" } else { "s" },
            self.rules.len() - deny,
        )
    }

    fn metrics(&self, out: &mut Vec<Metric>) {
        const NAME: &str = "filter_rule_matches";
        const HELP: &str = "Packets decided by each filter rule (the first that matched); \
                            rule=\"default\" counts those no rule matched";
        let rows = self
            .rules
            .iter()
            .zip(self.labels.iter())
            .enumerate()
            .map(|(i, (r, label))| (i, i.to_string(), label.as_str(), r.action))
            .chain(std::iter::once((
                self.rules.len(),
                "default".to_owned(),
                "default",
                self.default,
            )));
        for (index, rule, name, action) in rows {
            for direction in DIRECTIONS {
                out.push(Metric {
                    name: NAME,
                    help: HELP,
                    kind: MetricKind::Counter,
                    labels: vec![
                        ("rule", rule.clone()),
                        ("name", name.to_owned()),
                        ("action", action.as_str().to_owned()),
                        ("direction", direction.as_str().to_owned()),
                    ],
                    value: self.hits.get(direction, index).map_or(0, Counter::get) as f64,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
