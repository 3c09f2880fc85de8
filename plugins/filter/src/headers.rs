//! Reading what a rule can match on from an IP packet, without trusting the packet.
//!
//! A rule looks at five things: the addresses, the upper-layer protocol, the ports (TCP,
//! UDP, SCTP, DCCP, UDP-Lite) or the ICMP type, and whether the packet is a fragment.
//! [`parse`] pulls them out of an IPv4 or IPv6 packet into a small [`Headers`] value, and
//! refuses ([`Malformed`]) anything it cannot read with confidence, so that a rule is
//! never judged on bytes that mean something else to the host behind the tunnel.
//!
//! Every read is bounds-checked (`slice::get`), so no input can make this module panic,
//! and nothing allocates. The layout of each header is cited where it is read:
//!
//! ```text
//!  IPv4 (RFC 791)                          IPv6 (RFC 8200)
//!  0      4      8             16    19      31    0      4             12                31
//!  |ver|IHL| TOS |  total length     |         |ver| class |    flow label             |
//!  | identification  |flags| offset  |         |  payload length  | next hdr | hop limit  |
//!  | TTL | protocol  |  checksum     |         |          source address (16 bytes)       |
//!  |        source address           |         |       destination address (16 bytes)     |
//!  |      destination address        |         then a chain of extension headers, each
//!  |   options (IHL*4 - 20 bytes)    |         naming the next one, up to the transport
//! ```
//!
//! # Why not a packet crate
//!
//! `etherparse` (which the tests use as an oracle) would do most of this, but its
//! slicing keeps walking IPv6 extension headers *after* a fragment header that starts a
//! non-first fragment. Those bytes are the middle of the datagram, not headers, so a
//! legitimate fragment could be refused and a crafted one misread. Fragments are exactly
//! where a filter must be careful, so the ~150 lines of header walking live here, with
//! the fragment rules spelt out.
//!
//! # Fragments
//!
//! - A **first fragment** (offset 0, more-fragments set) is read like a whole packet,
//!   but its transport header must be complete in it: a first fragment too short to hold
//!   the full TCP header is the "tiny fragment" attack of RFC 1858 §3.1, and RFC 7112
//!   requires the whole IPv6 header chain in the first fragment. Both are malformed here.
//! - A **later fragment** (offset above 0) carries no transport header: its ports and
//!   ICMP type are [`Transport::Unknown`]. In IPv6 its protocol is the fragment header's
//!   next-header field, unless that names another extension header, in which case the
//!   protocol is unknown too (`proto: None`). A TCP fragment at offset 1 (8 bytes) could
//!   only serve to overwrite the TCP header of an earlier fragment (RFC 1858 §3.2) and is
//!   malformed.
//! - An **atomic fragment** (a fragment header with offset 0 and no more fragments,
//!   RFC 6946) is a whole packet and is read as one.
//!
//! How rules treat unknown fields is the business of `rules`; see the crate docs.

use std::fmt;

/// IP protocol numbers this module cares about (IANA "Assigned Internet Protocol
/// Numbers").
pub(crate) mod proto {
    /// IPv6 hop-by-hop options (an extension header).
    pub(crate) const HOP_BY_HOP: u8 = 0;
    /// ICMP for IPv4.
    pub(crate) const ICMP: u8 = 1;
    /// TCP.
    pub(crate) const TCP: u8 = 6;
    /// UDP.
    pub(crate) const UDP: u8 = 17;
    /// DCCP.
    pub(crate) const DCCP: u8 = 33;
    /// IPv6 routing header (an extension header).
    pub(crate) const ROUTING: u8 = 43;
    /// IPv6 fragment header (an extension header).
    pub(crate) const FRAGMENT: u8 = 44;
    /// Authentication header: authenticates but does not hide what follows.
    pub(crate) const AH: u8 = 51;
    /// ICMP for IPv6.
    pub(crate) const ICMPV6: u8 = 58;
    /// IPv6 destination options (an extension header).
    pub(crate) const DEST_OPTS: u8 = 60;
    /// SCTP.
    pub(crate) const SCTP: u8 = 132;
    /// UDP-Lite.
    pub(crate) const UDPLITE: u8 = 136;

    /// True for the headers the filter walks past to reach the transport header.
    pub(crate) const fn is_walked(p: u8) -> bool {
        matches!(p, HOP_BY_HOP | ROUTING | FRAGMENT | AH | DEST_OPTS)
    }

    /// True for the protocols whose header starts with a 16-bit source and destination
    /// port.
    pub(crate) const fn has_ports(p: u8) -> bool {
        matches!(p, TCP | UDP | DCCP | SCTP | UDPLITE)
    }
}

/// At most this many extension headers are walked. RFC 8200 §4.1 allows each at most
/// once (destination options twice), so a real chain has no more than 6; a longer one is
/// an attempt to make middleboxes give up (RFC 7045 §2.1) and is refused.
pub(crate) const MAX_EXTENSION_HEADERS: usize = 8;

/// The address family of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// IPv4: addresses in the low 32 bits of the `u128`s.
    V4,
    /// IPv6.
    V6,
}

/// Where a packet stands in a fragmented datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// A whole datagram (including an atomic fragment).
    No,
    /// Offset 0, more fragments follow: holds the transport header.
    First,
    /// Offset above 0: the middle or end of a datagram, with no transport header.
    Later,
}

impl Fragment {
    /// A one-bit mask, for rules that match a set of kinds.
    pub(crate) const fn bit(self) -> u8 {
        match self {
            Self::No => 1,
            Self::First => 2,
            Self::Later => 4,
        }
    }
}

/// What the transport header said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// TCP, UDP, SCTP, DCCP or UDP-Lite.
    Ports {
        /// Source port.
        src: u16,
        /// Destination port.
        dst: u16,
    },
    /// ICMP or ICMPv6 (which one is in [`Headers::proto`]).
    Icmp {
        /// The message type (8 = IPv4 echo request, 128 = IPv6 echo request).
        ty: u8,
    },
    /// A protocol without ports or ICMP types (GRE, ESP, OSPF, …).
    Neither,
    /// A later fragment: the transport header is in another packet.
    Unknown,
}

/// What rules can match on, read from one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Headers {
    /// IPv4 or IPv6.
    pub(crate) family: Family,
    /// Source address (IPv4 in the low 32 bits).
    pub(crate) src: u128,
    /// Destination address (IPv4 in the low 32 bits).
    pub(crate) dst: u128,
    /// The upper-layer protocol, past every walked header; `None` for a later IPv6
    /// fragment whose fragmentable part starts with an extension header.
    pub(crate) proto: Option<u8>,
    /// Fragment or whole packet.
    pub(crate) fragment: Fragment,
    /// Ports, ICMP type, or why there are none.
    pub(crate) transport: Transport,
}

/// Why a packet could not be read. Every variant is dropped as
/// [`DropReason::Malformed`](lametun_core::DropReason::Malformed); the variants exist for
/// tests and debug logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformed {
    /// The version nibble is neither 4 nor 6.
    NotIp,
    /// Shorter than its fixed IP header.
    ShortIpHeader,
    /// IPv4 header length below 20 bytes, or a length field that disagrees with the
    /// packet (IPv4 total length, IPv6 payload length).
    BadLength,
    /// An extension header (or AH) runs past the end of the packet.
    ShortExtensionHeader,
    /// Hop-by-hop options not right after the IPv6 header, a second fragment header, or
    /// more than 8 extension headers (a real chain has at most 6).
    BadHeaderChain,
    /// The transport header is cut short (in a first fragment: the tiny-fragment
    /// attack of RFC 1858), or its TCP data offset is impossible.
    ShortTransportHeader,
    /// A TCP fragment at offset 8 bytes, which could only overwrite the TCP header of
    /// the first fragment (RFC 1858 §3.2).
    OverlappingTcpFragment,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotIp => "not an IPv4 or IPv6 packet",
            Self::ShortIpHeader => "shorter than its IP header",
            Self::BadLength => "IP length field disagrees with the packet",
            Self::ShortExtensionHeader => "extension header runs past the end",
            Self::BadHeaderChain => "invalid IPv6 extension header chain",
            Self::ShortTransportHeader => "transport header missing or cut short",
            Self::OverlappingTcpFragment => "TCP fragment at offset 8 (RFC 1858)",
        })
    }
}

impl std::error::Error for Malformed {}

fn byte(p: &[u8], at: usize) -> Option<u8> {
    p.get(at).copied()
}

fn be16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([byte(p, at)?, byte(p, at + 1)?]))
}

fn be32(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?))
}

fn be128(p: &[u8], at: usize) -> Option<u128> {
    Some(u128::from_be_bytes(p.get(at..at + 16)?.try_into().ok()?))
}

/// Reads the matchable fields of an IPv4 or IPv6 packet (not empty: the caller passes
/// keepalives through before asking).
pub(crate) fn parse(packet: &[u8]) -> Result<Headers, Malformed> {
    match byte(packet, 0).map(|b| b >> 4) {
        Some(4) => parse_v4(packet),
        Some(6) => parse_v6(packet),
        _ => Err(Malformed::NotIp),
    }
}

fn parse_v4(p: &[u8]) -> Result<Headers, Malformed> {
    // RFC 791 §3.1. IHL counts 32-bit words and covers the options.
    let ihl = usize::from(byte(p, 0).ok_or(Malformed::ShortIpHeader)? & 0x0f) * 4;
    if p.len() < 20 {
        return Err(Malformed::ShortIpHeader);
    }
    let total = usize::from(be16(p, 2).ok_or(Malformed::ShortIpHeader)?);
    if ihl < 20 || total < ihl || total > p.len() {
        return Err(Malformed::BadLength);
    }
    // Bytes past the total length are link padding; the kernel trims them too.
    let p = p.get(..total).ok_or(Malformed::BadLength)?;
    let flags_offset = be16(p, 6).ok_or(Malformed::ShortIpHeader)?;
    let offset = flags_offset & 0x1fff; // in units of 8 bytes
    let more = flags_offset & 0x2000 != 0;
    let fragment = match (offset, more) {
        (0, false) => Fragment::No,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    };
    let mut proto = byte(p, 9).ok_or(Malformed::ShortIpHeader)?;
    let src = be32(p, 12).ok_or(Malformed::ShortIpHeader)?;
    let dst = be32(p, 16).ok_or(Malformed::ShortIpHeader)?;
    let mut payload = p.get(ihl..).ok_or(Malformed::BadLength)?;

    let known_proto = if fragment == Fragment::Later {
        // Only the first fragment holds the AH header; later ones hold payload bytes.
        (proto != proto::AH).then_some(proto)
    } else {
        if proto == proto::AH {
            (proto, payload) = skip_ah(payload)?;
        }
        Some(proto)
    };
    Ok(Headers {
        family: Family::V4,
        src: u128::from(src),
        dst: u128::from(dst),
        proto: known_proto,
        fragment,
        transport: transport(proto, payload, fragment, offset)?,
    })
}

/// Skips an authentication header (RFC 4302 §2: next header, then its length in 32-bit
/// words minus 2). Returns the next protocol and what follows.
fn skip_ah(p: &[u8]) -> Result<(u8, &[u8]), Malformed> {
    let next = byte(p, 0).ok_or(Malformed::ShortExtensionHeader)?;
    let len = (usize::from(byte(p, 1).ok_or(Malformed::ShortExtensionHeader)?) + 2) * 4;
    Ok((next, p.get(len..).ok_or(Malformed::ShortExtensionHeader)?))
}

fn parse_v6(p: &[u8]) -> Result<Headers, Malformed> {
    // RFC 8200 §3: a fixed 40-byte header, then `payload length` bytes.
    if p.len() < 40 {
        return Err(Malformed::ShortIpHeader);
    }
    let payload_len = usize::from(be16(p, 4).ok_or(Malformed::ShortIpHeader)?);
    // A zero payload length with a jumbo payload option (RFC 2675) cannot cross a TUN
    // device (its MTU is at most 65535); it is read as an empty payload.
    let p = p.get(..40 + payload_len).ok_or(Malformed::BadLength)?;
    let src = be128(p, 8).ok_or(Malformed::ShortIpHeader)?;
    let dst = be128(p, 24).ok_or(Malformed::ShortIpHeader)?;
    let mut next = byte(p, 6).ok_or(Malformed::ShortIpHeader)?;
    let mut at = 40;
    let mut fragment = Fragment::No;
    let mut offset = 0;
    let mut seen_fragment_header = false;

    // RFC 8200 §4: each extension header names the next one. The walk ends at the first
    // header that is not an extension header the filter knows, the upper-layer protocol
    // (or ESP, whose contents are encrypted, or "no next header", 59).
    let mut walked = 0;
    while proto::is_walked(next) {
        walked += 1;
        if walked > MAX_EXTENSION_HEADERS {
            return Err(Malformed::BadHeaderChain);
        }
        let header = next;
        next = byte(p, at).ok_or(Malformed::ShortExtensionHeader)?;
        let len_byte = usize::from(byte(p, at + 1).ok_or(Malformed::ShortExtensionHeader)?);
        let len = match header {
            // §4.3: hop-by-hop options must come first.
            proto::HOP_BY_HOP if walked != 1 => return Err(Malformed::BadHeaderChain),
            // §4.5: a fixed 8 bytes: next header, reserved, offset (13 bits) + M flag,
            // identification.
            proto::FRAGMENT => {
                if seen_fragment_header {
                    return Err(Malformed::BadHeaderChain);
                }
                seen_fragment_header = true;
                let word = be16(p, at + 2).ok_or(Malformed::ShortExtensionHeader)?;
                offset = word >> 3;
                let more = word & 1 != 0;
                if p.len() < at + 8 {
                    return Err(Malformed::ShortExtensionHeader);
                }
                fragment = match (offset, more) {
                    (0, false) => Fragment::No, // atomic fragment, RFC 6946
                    (0, true) => Fragment::First,
                    _ => Fragment::Later,
                };
                if fragment == Fragment::Later {
                    // What follows is the middle of the datagram, not headers. The
                    // next-header field names the first header of the fragmentable part;
                    // if that is another extension header, the protocol is unknown.
                    let proto = (!proto::is_walked(next)).then_some(next);
                    return Ok(Headers {
                        family: Family::V6,
                        src,
                        dst,
                        proto,
                        fragment,
                        transport: transport(next, &[], fragment, offset)?,
                    });
                }
                8
            }
            // RFC 4302 §2.2: length in 32-bit words minus 2.
            proto::AH => (len_byte + 2) * 4,
            // §4.3, §4.4, §4.6: length in 8-byte units, not counting the first 8.
            _ => (len_byte + 1) * 8,
        };
        if p.len() < at + len {
            return Err(Malformed::ShortExtensionHeader);
        }
        at += len;
    }
    let payload = p.get(at..).ok_or(Malformed::ShortExtensionHeader)?;
    Ok(Headers {
        family: Family::V6,
        src,
        dst,
        proto: Some(next),
        fragment,
        transport: transport(next, payload, fragment, offset)?,
    })
}

/// Reads the ports or ICMP type of `proto` from `payload`, the bytes after the last
/// walked header. `offset` is the fragment offset in 8-byte units.
fn transport(
    proto: u8,
    payload: &[u8],
    fragment: Fragment,
    offset: u16,
) -> Result<Transport, Malformed> {
    if fragment == Fragment::Later {
        if proto == proto::TCP && offset == 1 {
            return Err(Malformed::OverlappingTcpFragment);
        }
        return Ok(Transport::Unknown);
    }
    // The shortest header each protocol may have: the kernel drops anything shorter, and
    // a first fragment must hold all of it (RFC 1858 §3.1, RFC 7112).
    let min = match proto {
        proto::TCP => 20,
        proto::UDP | proto::UDPLITE | proto::ICMP | proto::ICMPV6 => 8,
        proto::SCTP | proto::DCCP => 12,
        _ => return Ok(Transport::Neither),
    };
    if payload.len() < min {
        return Err(Malformed::ShortTransportHeader);
    }
    if proto == proto::TCP {
        // RFC 9293 §3.1: the data offset counts 32-bit words, at least 5.
        let data_offset = usize::from(byte(payload, 12).unwrap_or(0) >> 4) * 4;
        if data_offset < 20 || (fragment == Fragment::No && data_offset > payload.len()) {
            return Err(Malformed::ShortTransportHeader);
        }
    }
    if proto::has_ports(proto) {
        let src = be16(payload, 0).ok_or(Malformed::ShortTransportHeader)?;
        let dst = be16(payload, 2).ok_or(Malformed::ShortTransportHeader)?;
        Ok(Transport::Ports { src, dst })
    } else {
        let ty = byte(payload, 0).ok_or(Malformed::ShortTransportHeader)?;
        Ok(Transport::Icmp { ty })
    }
}
