//! Compiled rules: what a YAML rule becomes at build time, and how it meets a packet.
//!
//! Every condition is turned into a form that needs no parsing, no allocation and no
//! string work per packet: addresses become `(network, mask)` pairs of `u128`, protocol
//! and ICMP type lists become 256-bit sets, port lists become ranges, and direction and
//! fragment kinds become bit masks. A rule then costs a handful of compares.
//!
//! # Unknown fields
//!
//! A later fragment has no transport header, so a rule's port or ICMP type condition
//! (and in IPv6 sometimes its protocol condition) can be neither true nor false for it.
//! Such a condition counts as *matching for an `allow` rule and not matching for a
//! `deny` rule*. In words: a later fragment passes if it could belong to a datagram that
//! the rules allow. The datagram itself is judged on its first fragment, which carries
//! the transport header, so a datagram whose first fragment was denied never reaches an
//! application: the receiver cannot reassemble it and drops the rest at its reassembly
//! timeout. Dropping later fragments instead would break every large datagram that the
//! rules allow (DNS over UDP with EDNS, for one) under `default: deny`. A rule with
//! `fragment: later` or `fragment: true` is there for those who want fragments gone.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use lametun_core::{Direction, Verdict};

use crate::headers::{Family, Headers, Transport, proto};

/// What a rule does with the packets it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let the packet through.
    Allow,
    /// Drop it, counted as [`DropReason::Filtered`](lametun_core::DropReason::Filtered).
    Deny,
}

impl Action {
    /// `"allow"` or `"deny"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }

    /// The verdict for a packet this action applies to.
    pub(crate) const fn verdict(self) -> Verdict {
        match self {
            Self::Allow => Verdict::Pass,
            Self::Deny => Verdict::Drop(lametun_core::DropReason::Filtered),
        }
    }
}

/// Bit of a direction in [`Rule::directions`].
pub(crate) const fn direction_bit(d: Direction) -> u8 {
    match d {
        Direction::Outbound => 1,
        Direction::Inbound => 2,
    }
}

/// Index of a direction in per-direction counters.
pub(crate) const fn direction_index(d: Direction) -> usize {
    match d {
        Direction::Outbound => 0,
        Direction::Inbound => 1,
    }
}

/// One network: a packet address `a` of the same family is inside when
/// `a & mask == net`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    pub(crate) family: Family,
    pub(crate) net: u128,
    pub(crate) mask: u128,
}

impl Cidr {
    /// `addr/prefix`, or `None` if the prefix is too long or host bits are set.
    pub(crate) fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let (family, bits, value) = match addr {
            IpAddr::V4(a) => (Family::V4, 32, u128::from(u32::from(a))),
            IpAddr::V6(a) => (Family::V6, 128, u128::from(a)),
        };
        if prefix > bits {
            return None;
        }
        // `prefix` ones, then zeros, in the low `bits` bits.
        let mask = if prefix == 0 {
            0
        } else {
            (u128::MAX << (128 - u32::from(prefix))) >> (128 - bits)
        };
        (value & !mask == 0).then_some(Self {
            family,
            net: value,
            mask,
        })
    }

    #[inline]
    fn contains(&self, family: Family, addr: u128) -> bool {
        self.family == family && addr & self.mask == self.net
    }
}

/// A set of 256 small numbers (protocols, ICMP types), one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ByteSet([u64; 4]);

impl ByteSet {
    pub(crate) fn insert(&mut self, n: u8) {
        self.0[usize::from(n >> 6)] |= 1 << (n & 63);
    }

    #[inline]
    pub(crate) fn contains(&self, n: u8) -> bool {
        self.0[usize::from(n >> 6)] & (1 << (n & 63)) != 0
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(|&n| self.contains(n))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PortRange {
    pub(crate) lo: u16,
    pub(crate) hi: u16,
}

fn any_range(ranges: &[PortRange], port: u16) -> bool {
    ranges.iter().any(|r| r.lo <= port && port <= r.hi)
}

fn any_net(nets: &[Cidr], family: Family, addr: u128) -> bool {
    nets.iter().any(|n| n.contains(family, addr))
}

/// ICMP types a rule matches: one set for ICMP (protocol 1), one for ICMPv6 (58),
/// because the same name has different numbers in each (echo request: 8 and 128).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IcmpTypes {
    pub(crate) v4: ByteSet,
    pub(crate) v6: ByteSet,
}

/// One compiled rule. Conditions that are `None` (or all bits set) match everything.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) action: Action,
    /// Bits of [`direction_bit`].
    pub(crate) directions: u8,
    /// Bits of [`Fragment::bit`](crate::headers::Fragment::bit).
    pub(crate) fragments: u8,
    pub(crate) protos: Option<ByteSet>,
    pub(crate) src: Option<Box<[Cidr]>>,
    pub(crate) dst: Option<Box<[Cidr]>>,
    pub(crate) src_ports: Option<Box<[PortRange]>>,
    pub(crate) dst_ports: Option<Box<[PortRange]>>,
    pub(crate) icmp_types: Option<IcmpTypes>,
}

impl Rule {
    /// A rule that matches every packet, for building up in config and tests.
    pub(crate) fn any(action: Action) -> Self {
        Self {
            action,
            directions: 0b11,
            fragments: 0b111,
            protos: None,
            src: None,
            dst: None,
            src_ports: None,
            dst_ports: None,
            icmp_types: None,
        }
    }

    /// True if the rule decides this packet (see the module docs for unknown fields).
    #[inline]
    pub(crate) fn matches(&self, direction: u8, h: &Headers) -> bool {
        if self.directions & direction == 0 || self.fragments & h.fragment.bit() == 0 {
            return false;
        }
        if let Some(nets) = &self.src
            && !any_net(nets, h.family, h.src)
        {
            return false;
        }
        if let Some(nets) = &self.dst
            && !any_net(nets, h.family, h.dst)
        {
            return false;
        }
        let mut unknown = false;
        if let Some(protos) = &self.protos {
            match h.proto {
                Some(p) if protos.contains(p) => {}
                Some(_) => return false,
                None => unknown = true,
            }
        }
        let wants_ports = self.src_ports.is_some() || self.dst_ports.is_some();
        if wants_ports || self.icmp_types.is_some() {
            match h.transport {
                Transport::Ports { src, dst } => {
                    if self.icmp_types.is_some() {
                        return false;
                    }
                    if let Some(r) = &self.src_ports
                        && !any_range(r, src)
                    {
                        return false;
                    }
                    if let Some(r) = &self.dst_ports
                        && !any_range(r, dst)
                    {
                        return false;
                    }
                }
                Transport::Icmp { ty } => {
                    let Some(types) = &self.icmp_types else {
                        return false;
                    };
                    if wants_ports {
                        return false;
                    }
                    let set = if h.proto == Some(proto::ICMPV6) {
                        &types.v6
                    } else {
                        &types.v4
                    };
                    if !set.contains(ty) {
                        return false;
                    }
                }
                Transport::Neither => return false,
                Transport::Unknown => {
                    // Ports and ICMP types imply their protocols, which a later fragment
                    // may still show.
                    if let Some(p) = h.proto
                        && ((wants_ports && !proto::has_ports(p))
                            || (self.icmp_types.is_some()
                                && p != proto::ICMP
                                && p != proto::ICMPV6))
                    {
                        return false;
                    }
                    unknown = true;
                }
            }
        }
        // An undecidable condition matches an allow rule and not a deny rule.
        !unknown || self.action == Action::Allow
    }
}

/// A counter alone on its cache line (64 bytes on x86-64 and most ARM cores).
///
/// The rules are read by every worker thread and the counters written by all of them.
/// Kept apart, a count on one core never evicts the rules from another core's cache,
/// and the outbound threads (one per TUN queue) and the inbound thread (the socket)
/// never write the same line unless they count the very same thing.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Packets decided per rule, and by the default, for each direction.
#[derive(Debug)]
pub(crate) struct Hits {
    /// `[direction][rule]`; the last entry of each is the default.
    by_direction: [Box<[Counter]>; 2],
}

impl Hits {
    /// Counters for `rules` rules and the default.
    pub(crate) fn new(rules: usize) -> Self {
        let row = || (0..=rules).map(|_| Counter::default()).collect();
        Self {
            by_direction: [row(), row()],
        }
    }

    /// The counter of rule `index` (or the default, at `index == rules`).
    #[inline]
    pub(crate) fn get(&self, direction: Direction, index: usize) -> Option<&Counter> {
        self.by_direction[direction_index(direction)].get(index)
    }

    /// All packets counted, both directions.
    pub(crate) fn total(&self) -> u64 {
        self.by_direction
            .iter()
            .flat_map(|row| row.iter())
            .map(Counter::get)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_masks_and_refuses_host_bits() {
        let c = Cidr::new("10.1.0.0".parse().unwrap(), 16).unwrap();
        assert_eq!(c.mask, 0xffff_0000);
        assert!(c.contains(Family::V4, 0x0a01_ffff));
        assert!(!c.contains(Family::V4, 0x0a02_0000));
        assert!(!c.contains(Family::V6, 0x0a01_0000));
        assert!(Cidr::new("10.1.0.1".parse().unwrap(), 16).is_none());
        assert!(Cidr::new("10.1.0.0".parse().unwrap(), 33).is_none());
        let all4 = Cidr::new("0.0.0.0".parse().unwrap(), 0).unwrap();
        assert!(all4.contains(Family::V4, 0xffff_ffff));
        assert!(!all4.contains(Family::V6, 0));
        let host = Cidr::new("10.0.0.7".parse().unwrap(), 32).unwrap();
        assert_eq!(host.mask, 0xffff_ffff);
        let v6 = Cidr::new("fd00::".parse().unwrap(), 8).unwrap();
        assert_eq!(v6.mask, 0xff << 120);
        assert!(v6.contains(Family::V6, 0xfd12 << 112));
        assert!(Cidr::new("fd00::".parse().unwrap(), 129).is_none());
        let all6 = Cidr::new("::".parse().unwrap(), 0).unwrap();
        assert!(all6.contains(Family::V6, u128::MAX));
        assert!(Cidr::new("::1".parse().unwrap(), 128).is_some());
    }

    #[test]
    fn byte_set_holds_every_value() {
        let mut s = ByteSet::default();
        assert!(s.is_empty());
        for n in [0u8, 1, 63, 64, 127, 128, 200, 255] {
            s.insert(n);
        }
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [0, 1, 63, 64, 127, 128, 200, 255]
        );
        assert!(!s.contains(2));
    }
}
