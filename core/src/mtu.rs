//! MTU arithmetic: how big an inner packet may be so that the outer one is not fragmented.
//!
//! The article does the sum for a plain UDP tunnel over IPv4 (its section "MTU"):
//!
//! ```text
//!   1500  Ethernet MTU of the underlay link (the largest outer IP packet)
//! -   20  outer IPv4 header (40 for IPv6)
//! -    8  outer UDP header
//! = 1472  the article's TUN MTU
//! ```
//!
//! and then notices in its own test that the largest ping that does not fragment is
//! `-s 1440`, not `-s 1444`: "we actually remove another 4 bytes due to metadata the TUN
//! device includes". That metadata is the 4-byte packet-information header (flags and
//! EtherType) that rides in every UDP payload because the Go program opens the TUN
//! without `IFF_NO_PI`. So the right MTU for the article's wire format is 1468, and a
//! full-size 1472-byte packet at the article's setting becomes a 1500 + 4 byte IP packet
//! that the kernel fragments. With every stage declaring its [`Overhead`], the sum is
//! done here once, for any chain:
//!
//! ```text
//! tun mtu = underlay mtu - outer IP (20 | 40) - UDP (8) - packet info (4 | 0) - Σ stage overhead
//! ```

use std::fmt;

use crate::Overhead;

/// MTU of an Ethernet link, the usual underlay.
pub const ETHERNET_MTU: u16 = 1500;
/// IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// IPv6 fixed header.
pub const IPV6_HEADER_LEN: usize = 40;
/// UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// The TUN packet-information header (`struct tun_pi`: 2 bytes flags, 2 bytes EtherType).
pub const PACKET_INFO_LEN: usize = 4;
/// Smallest MTU an IPv4 link may have (RFC 791).
pub const IPV4_MIN_MTU: u16 = 68;
/// Smallest MTU an IPv6 link may have (RFC 8200); below it IPv6 cannot run in the tunnel.
pub const IPV6_MIN_MTU: u16 = 1280;
/// Largest MTU we let a TUN device have (an IPv4 packet's total length is 16 bits).
pub const MAX_MTU: u16 = 65535;

/// The IP version of the *outer* packets, the ones that cross the underlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OuterIp {
    /// Outer IPv4: 20-byte header.
    V4,
    /// Outer IPv6: 40-byte header.
    V6,
}

impl OuterIp {
    /// Header length of this IP version.
    pub const fn header_len(self) -> usize {
        match self {
            Self::V4 => IPV4_HEADER_LEN,
            Self::V6 => IPV6_HEADER_LEN,
        }
    }
}

/// The result of the sum, with every term kept so that it can be printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MtuBudget {
    /// MTU of the underlay link.
    pub underlay: u16,
    /// Outer IP version.
    pub outer: OuterIp,
    /// Whether the 4-byte packet-information header rides along.
    pub packet_info: bool,
    /// Sum of the stages' overheads.
    pub stages: Overhead,
}

/// Why no MTU fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the underlay MTU {underlay} leaves {left} bytes for inner packets, below the IPv4 minimum of 68"
)]
pub struct MtuError {
    /// The underlay MTU that was given.
    pub underlay: u16,
    /// What was left (may be negative).
    pub left: i64,
}

impl MtuBudget {
    /// Bytes added to every inner packet on the way to the wire, outer headers included.
    pub fn overhead(&self) -> usize {
        self.outer.header_len() + UDP_HEADER_LEN + self.tunnel_overhead()
    }

    /// Bytes added inside the UDP payload: packet info plus stage overheads.
    pub fn tunnel_overhead(&self) -> usize {
        (if self.packet_info { PACKET_INFO_LEN } else { 0 }) + self.stages.total()
    }

    /// The largest inner packet that leaves an outer packet of at most `underlay` bytes.
    pub fn tun_mtu(&self) -> Result<u16, MtuError> {
        let left = i64::from(self.underlay) - self.overhead() as i64;
        if left < i64::from(IPV4_MIN_MTU) {
            return Err(MtuError {
                underlay: self.underlay,
                left,
            });
        }
        Ok(left.min(i64::from(MAX_MTU)) as u16)
    }

    /// The largest UDP payload a given inner MTU produces.
    pub fn max_datagram(&self, tun_mtu: u16) -> usize {
        usize::from(tun_mtu) + self.tunnel_overhead()
    }
}

impl fmt::Display for MtuBudget {
    /// `1500 - 20 (IPv4) - 8 (UDP) - 4 (packet info) - 24 (stages) = 1444`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} - {} ({}) - {} (UDP)",
            self.underlay,
            self.outer.header_len(),
            match self.outer {
                OuterIp::V4 => "IPv4",
                OuterIp::V6 => "IPv6",
            },
            UDP_HEADER_LEN
        )?;
        if self.packet_info {
            write!(f, " - {PACKET_INFO_LEN} (packet info)")?;
        }
        if self.stages.total() > 0 {
            write!(f, " - {} (stages)", self.stages.total())?;
        }
        match self.tun_mtu() {
            Ok(mtu) => write!(f, " = {mtu}"),
            Err(e) => write!(f, " = {} (too small)", e.left),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(outer: OuterIp, packet_info: bool, stages: Overhead) -> MtuBudget {
        MtuBudget {
            underlay: ETHERNET_MTU,
            outer,
            packet_info,
            stages,
        }
    }

    #[test]
    fn the_article_forgot_the_packet_info_header() {
        // The article's sum, without the header the Go program actually sends.
        assert_eq!(
            budget(OuterIp::V4, false, Overhead::NONE).tun_mtu(),
            Ok(1472)
        );
        // What its own ping test measured: 1440 + 8 (ICMP) + 20 (IP) = 1468.
        assert_eq!(
            budget(OuterIp::V4, true, Overhead::NONE).tun_mtu(),
            Ok(1468)
        );
    }

    #[test]
    fn outer_ipv6_and_stage_overheads_are_subtracted() {
        assert_eq!(
            budget(OuterIp::V6, true, Overhead::NONE).tun_mtu(),
            Ok(1448)
        );
        let aead = Overhead::new(12, 16);
        let b = budget(OuterIp::V4, false, aead);
        assert_eq!(b.tun_mtu(), Ok(1444));
        assert_eq!(b.max_datagram(1444), 1472);
        assert_eq!(
            b.to_string(),
            "1500 - 20 (IPv4) - 8 (UDP) - 28 (stages) = 1444"
        );
    }

    #[test]
    fn a_chain_too_big_for_the_underlay_is_an_error() {
        let b = MtuBudget {
            underlay: 100,
            outer: OuterIp::V6,
            packet_info: true,
            stages: Overhead::NONE,
        };
        assert_eq!(
            b.tun_mtu(),
            Err(MtuError {
                underlay: 100,
                left: 48
            })
        );
    }
}
