//! Crafted packets for the tests: IPv4 with fragment fields and options, IPv6 with any
//! chain of extension headers, and the transport headers the filter reads.

use lametun_core::testing::packets;

pub(crate) const CLIENT4: [u8; 4] = [172, 31, 255, 7];
pub(crate) const SERVER4: [u8; 4] = [172, 31, 255, 1];
pub(crate) const OTHER4: [u8; 4] = [10, 9, 9, 9];
pub(crate) const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
pub(crate) const SERVER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub(crate) const DEAD6: [u8; 16] = [0xfd, 0, 0xde, 0xad, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

pub(crate) const TCP: u8 = 6;
pub(crate) const UDP: u8 = 17;
pub(crate) const ICMP: u8 = 1;
pub(crate) const ICMPV6: u8 = 58;

/// A 20-byte TCP header (SYN) with `extra` bytes of payload.
pub(crate) fn tcp(sport: u16, dport: u16, extra: usize) -> Vec<u8> {
    let mut t = vec![0u8; 20 + extra];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t
}

/// A UDP header with `extra` payload bytes.
pub(crate) fn udp(sport: u16, dport: u16, extra: usize) -> Vec<u8> {
    let mut u = vec![0u8; 8 + extra];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + extra) as u16).to_be_bytes());
    u
}

/// An ICMP or ICMPv6 message of type `ty` (8 bytes of header, `extra` of data).
pub(crate) fn icmp(ty: u8, extra: usize) -> Vec<u8> {
    let mut m = vec![0u8; 8 + extra];
    m[0] = ty;
    m
}

/// IPv4 `src -> dst` carrying `payload` as protocol `proto`.
pub(crate) fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    packets::ipv4(src, dst, proto, payload)
}

/// An IPv4 fragment: `offset` in 8-byte units, `more` = more fragments follow.
pub(crate) fn v4_frag(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    payload: &[u8],
    offset: u16,
    more: bool,
) -> Vec<u8> {
    let mut p = v4(src, dst, proto, payload);
    let word = offset | if more { 0x2000 } else { 0 };
    p[6..8].copy_from_slice(&word.to_be_bytes());
    p
}

/// IPv4 with `words` 32-bit words of options (NOP) after the fixed header.
pub(crate) fn v4_options(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    payload: &[u8],
    words: usize,
) -> Vec<u8> {
    let base = v4(src, dst, proto, payload);
    let mut p = base[..20].to_vec();
    p.extend(std::iter::repeat_n(1u8, words * 4)); // NOP options
    p.extend_from_slice(payload);
    p[0] = 0x40 | (5 + words as u8);
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p
}

/// An IPv6 extension header in a crafted chain.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ext {
    /// Hop-by-hop options, `(n + 1) * 8` bytes.
    HopByHop(u8),
    /// A routing header (type 4, segment routing, no segments left), `(n + 1) * 8` bytes.
    Routing(u8),
    /// Destination options, `(n + 1) * 8` bytes.
    DestOpts(u8),
    /// Authentication header with `n` 32-bit words of ICV after its 12 fixed bytes.
    Ah(u8),
    /// Fragment header.
    Fragment {
        /// In 8-byte units.
        offset: u16,
        /// More fragments follow.
        more: bool,
    },
}

impl Ext {
    pub(crate) fn number(self) -> u8 {
        match self {
            Self::HopByHop(_) => 0,
            Self::Routing(_) => 43,
            Self::DestOpts(_) => 60,
            Self::Ah(_) => 51,
            Self::Fragment { .. } => 44,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Self::HopByHop(n) | Self::DestOpts(n) => {
                // PadN option filling the header.
                let len = (usize::from(n) + 1) * 8;
                let mut h = vec![0u8; len];
                h[0] = next;
                h[1] = n;
                h[2] = 1; // PadN
                h[3] = (len - 4) as u8;
                h
            }
            Self::Routing(n) => {
                let mut h = vec![0u8; (usize::from(n) + 1) * 8];
                h[0] = next;
                h[1] = n;
                h[2] = 4;
                h
            }
            Self::Ah(n) => {
                let len = 12 + usize::from(n) * 4;
                let mut h = vec![0u8; len];
                h[0] = next;
                h[1] = (len / 4 - 2) as u8;
                h[4..8].copy_from_slice(&[0, 0, 1, 0]); // SPI
                h
            }
            Self::Fragment { offset, more } => {
                let mut h = vec![0u8; 8];
                h[0] = next;
                let word = (offset << 3) | u16::from(more);
                h[2..4].copy_from_slice(&word.to_be_bytes());
                h[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
                h
            }
        }
    }
}

/// IPv6 `src -> dst` with the extension headers `chain`, then `payload` as `proto`.
pub(crate) fn v6(
    src: [u8; 16],
    dst: [u8; 16],
    chain: &[Ext],
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, ext) in chain.iter().enumerate() {
        let next = chain.get(i + 1).map_or(proto, |e| e.number());
        body.extend(ext.bytes(next));
    }
    body.extend_from_slice(payload);
    let first = chain.first().map_or(proto, |e| e.number());
    packets::ipv6(src, dst, first, &body)
}
