//! Receive-side coalescing (GRO) of the packets the inbound threads write to the TUN.
//!
//! A TCP stream through the tunnel arrives as a train of MTU-sized segments. Writing
//! each one costs a syscall and a trip through the kernel's receive path; writing them
//! as one superpacket (virtio-net header with `GSO_TCPV4`/`GSO_TCPV6`) costs one. This
//! module plans those writes for a batch, the way Linux's GRO and wireguard-go's
//! `tcpGRO` do, and [`Coalescer::write`] performs them with gathered writes (`writev`):
//! the rewritten headers from a small buffer, then the payload of every segment straight
//! from where it is (the receive buffer, or the slot it was copied to). Nothing is
//! copied and nothing is allocated per packet (`tun-rs`'s own GRO copies every packet into a fresh `Vec` and needs each slot to be
//! 64 KiB; measured here it cost 12% more CPU and 8 MiB more memory per end).
//!
//! Segments of one flow merge when they are consecutive (TCP: the next sequence number;
//! UDP: same flow), have identical headers apart from lengths, checksums, sequence
//! numbers and the IPv4 ID, are all the same size except a smaller last one, and carry
//! only `ACK` (TCP; a `PSH` ends the superpacket), or whose UDP length is the
//! datagram's (UDP). Anything else (fragments, IP options, IPv6 extension headers,
//! `SYN`/`FIN`/`RST`/`URG`/ECN flags, a segment without payload, a UDP length that
//! disagrees) is written as it came, and ends the superpacket its flow was building, so
//! that nothing of the flow overtakes it, where its ports can be read (not for a later
//! IPv4 fragment, nor behind IPv6 extension headers: there a segment after it may merge
//! ahead of it, which TCP tolerates as reordering). Packets of different flows may be
//! reordered relative to each other, which GRO does too.
//!
//! The inner checksums are not verified before merging (the kernel takes a superpacket's
//! segments as checksummed): every packet arrived in a UDP datagram whose checksum the
//! kernel verified, or that the encryption stage authenticated.

use std::io::{self, IoSlice};
use std::os::fd::AsFd;

use arrayvec::ArrayVec;
use tun_rs::{
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4,
    VIRTIO_NET_HDR_LEN, VirtioNetHdr,
};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` (linux/virtio_net.h): the checksum starts at
/// `csum_start` and is stored at `csum_offset` from there.
const NEEDS_CSUM: u8 = 1;

/// Most packets in one batch (a packet's index is stored in a `u8`).
pub const MAX_PACKETS: usize = 255;
/// Most segments in one superpacket (the device's `gso_max_segs`).
pub const MAX_SEGMENTS: usize = crate::device::GSO_MAX_SEGS as usize;
/// Most bytes in one superpacket (an IP length field).
const MAX_BYTES: usize = 65_535;
/// Largest IPv6 + TCP header with options: room for the rewritten headers.
const MAX_HEADERS: usize = 40 + 60;

const TCP: u8 = 6;
const UDP: u8 = 17;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// The fields of an IPv4 or IPv6 header that the functions of this module look at.
struct IpHeader {
    v6: bool,
    /// Length of the IP header (IPv6: the fixed header only).
    len: usize,
    /// The transport protocol (IPv6: the first next header).
    proto: u8,
    /// The length the header declares for the whole packet.
    total: usize,
    /// A fragment, first or later (IPv4 only: IPv6 fragments show as `proto` 44).
    fragment: bool,
    /// A fragment other than the first: no transport header.
    later_fragment: bool,
}

impl IpHeader {
    fn of(p: &[u8]) -> Option<Self> {
        let be16 = |at| be16(p, at);
        match p.first()? >> 4 {
            4 if p.len() >= 20 => Some(Self {
                v6: false,
                len: usize::from(p[0] & 0x0f) * 4,
                proto: p[9],
                total: be16(2),
                fragment: be16(6) & 0x3fff != 0,
                later_fragment: be16(6) & 0x1fff != 0,
            }),
            6 if p.len() >= 40 => Some(Self {
                v6: true,
                len: 40,
                proto: p[6],
                total: 40 + be16(4),
                fragment: false,
                later_fragment: false,
            }),
            _ => None,
        }
    }
}

/// The big-endian 16-bit field at `at` of `p` (which must hold it).
fn be16(p: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([p[at], p[at + 1]]))
}

/// The source and destination addresses of the IPv6 (`v6`) or IPv4 header `p`.
fn addresses(p: &[u8], v6: bool) -> &[u8] {
    if v6 { &p[8..40] } else { &p[12..20] }
}

/// Where the transport header of a packet is, if the packet may be merged.
#[derive(Clone, Copy)]
struct Parsed {
    v6: bool,
    proto: u8,
    /// Length of the IP header.
    ip: usize,
    /// Length of the IP and transport headers.
    headers: usize,
}

impl Parsed {
    fn of(p: &[u8], udp_ok: bool) -> Option<Self> {
        let h = IpHeader::of(p)?;
        // No IPv4 options, exactly the packet's length, not a fragment.
        if (!h.v6 && h.len != 20) || h.total != p.len() || h.fragment {
            return None;
        }
        let (v6, ip, proto) = (h.v6, h.len, h.proto);
        let l4 = match proto {
            TCP => {
                let flags = *p.get(ip + 13)?;
                let len = usize::from(p[ip + 12] >> 4) * 4;
                if len < 20 || flags & !(ACK | PSH) != 0 || flags & ACK == 0 {
                    return None;
                }
                len
            }
            // The UDP length must be the datagram's (Linux's GRO flushes on a padded or
            // inconsistent one): a merged header gets the superpacket's length, and the
            // kernel would cut each datagram at `gso_size`, not at its own length.
            UDP if udp_ok && p.len() >= ip + 8 && be16(p, ip + 4) == p.len() - ip => 8,
            _ => return None,
        };
        let headers = ip + l4;
        // A segment with no payload (a pure ACK) is not merged.
        (p.len() > headers).then_some(Self {
            v6,
            proto,
            ip,
            headers,
        })
    }

    /// A TCP segment with `PSH`: it ends its superpacket.
    fn pushed(self, p: &[u8]) -> bool {
        self.proto == TCP && p[self.ip + 13] & PSH != 0
    }
}

/// Whether the local kernel may answer `p` inside the write that delivers it: an echo
/// request (the echo reply), or a TCP segment that carries data, or opens or closes a
/// connection (the ACK, the SYN-ACK). When the write returns, the answer is then
/// already in the TUN queue. Not always: TCP may delay its ACK, and a packet this host
/// routes on elsewhere is answered by another host; a wrong guess costs one empty read.
/// A pure ACK is not answered, and what a program answers (UDP, say) comes later, when
/// that program has run.
pub fn answered_at_once(p: &[u8]) -> bool {
    const ICMP: u8 = 1;
    const ICMPV6: u8 = 58;
    const ECHO_REQUEST: u8 = 8;
    const ECHO_REQUEST_V6: u8 = 128;
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    // Only the first fragment has the transport header.
    let Some(h) = IpHeader::of(p).filter(|h| !h.later_fragment) else {
        return false;
    };
    let (ip, total) = (h.len, h.total.min(p.len()));
    match (h.proto, h.v6) {
        (ICMP, false) => p.get(ip) == Some(&ECHO_REQUEST),
        (ICMPV6, true) => p.get(ip) == Some(&ECHO_REQUEST_V6),
        (TCP, _) => {
            let (Some(&offset), Some(&flags)) = (p.get(ip + 12), p.get(ip + 13)) else {
                return false;
            };
            let headers = ip + usize::from(offset >> 4) * 4;
            flags & RST == 0 && (flags & (SYN | FIN) != 0 || total > headers)
        }
        _ => false,
    }
}

/// The TUN queue, of `queues`, that packet `p` is written on: the same for every packet
/// of a flow and for both of its directions.
///
/// The kernel remembers, per flow, the queue a packet of that flow was last written on
/// (`tun_flow_update`), and queues the flow's packets the other way on that same queue
/// (`tun_automq_select_queue`). Writing every flow on one queue would send every flow
/// that has received something to that queue's worker; spreading the writes by flow
/// spreads the flows over the workers, and a flow's packets stay on one queue, in order.
///
/// The flow is the pair of addresses, the protocol and, for TCP and UDP packets that
/// are not fragments, the pair of ports; the pairs are combined symmetrically (a
/// packet and its answer are one flow). Anything that is not IPv4 or IPv6 goes to
/// queue 0. So the fragments of a datagram share a queue, but not necessarily the
/// queue of the same flow's unfragmented datagrams, and an IPv6 packet with extension
/// headers is hashed by its first one: such packets of one flow may be written on
/// two queues and reach the host in another order than they came (UDP allows it;
/// TCP is not fragmented and rarely carries extension headers).
pub fn flow_queue(p: &[u8], queues: usize) -> usize {
    if queues <= 1 {
        return 0;
    }
    let Some(ip) = IpHeader::of(p) else {
        return 0;
    };
    let addresses = addresses(p, ip.v6)
        .chunks_exact(4)
        .fold(0, |h, w| h ^ u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    let at = ip.len;
    let proto = ip.proto;
    let ports = match proto {
        TCP | UDP if !ip.fragment && p.len() >= at + 4 => u32::from(
            u16::from_be_bytes([p[at], p[at + 1]]) ^ u16::from_be_bytes([p[at + 2], p[at + 3]]),
        ),
        _ => 0,
    };
    // murmur3's finalizer spreads the bits, then the high bits pick the queue.
    let mut h = addresses ^ ports.rotate_left(16) ^ u32::from(proto);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    ((u64::from(h) * queues as u64) >> 32) as usize
}

/// One write to the TUN: the (rewritten) headers, then byte ranges of packets.
struct Write {
    /// The virtio-net header, then for a superpacket the IP and transport headers.
    head: ArrayVec<u8, { VIRTIO_NET_HDR_LEN + MAX_HEADERS }>,
    /// `(packet, start, end)`: for a superpacket the payloads, else the whole packet.
    parts: ArrayVec<(u8, u16, u16), MAX_SEGMENTS>,
    /// The flow of a packet that may be merged, and what the next segment must be.
    flow: Option<Flow>,
    /// Whether the flow may still take segments.
    open: bool,
}

#[derive(Clone, Copy)]
struct Flow {
    first: usize,
    parsed: Parsed,
    /// Size of every segment's payload so far.
    segment: usize,
    /// IP and transport headers plus all payloads.
    bytes: usize,
    /// TCP: the sequence number the next segment must carry.
    next_seq: u32,
}

/// Plans and performs coalesced writes of a batch of packets to a TUN queue.
pub struct Coalescer {
    /// The queue has the virtio-net header on (offloads negotiated).
    vnet: bool,
    /// The queue accepts UDP superpackets (`GSO_UDP_L4`).
    udp: bool,
    writes: Vec<Write>,
}

impl Coalescer {
    /// A coalescer for a queue with (`vnet`) or without the virtio-net header, and with
    /// or without UDP segmentation offload. Without the header, every packet is written
    /// as it is.
    pub fn new(vnet: bool, udp: bool) -> Self {
        Self {
            vnet,
            udp: vnet && udp,
            // Grows to the largest batch in the first few batches, then is reused.
            writes: Vec::new(),
        }
    }

    /// Plans the writes of `packets` (at most [`MAX_PACKETS`]). Returns how many writes.
    pub fn plan(&mut self, packets: &[&[u8]]) -> usize {
        debug_assert!(packets.len() <= MAX_PACKETS);
        self.writes.clear();
        for (i, p) in packets.iter().enumerate() {
            let parsed = if self.vnet {
                Parsed::of(p, self.udp)
            } else {
                None
            };
            match parsed {
                Some(parsed) if self.merge(packets, i, parsed) => continue,
                Some(_) => {}
                // Not mergeable (a pure ACK, FIN, options...), but it may belong to a
                // flow that is being merged: that superpacket must end before it, or the
                // segments after it would overtake it.
                None if self.vnet => self.close_flow_of(packets, p),
                None => {}
            }
            let mut head = ArrayVec::new();
            if self.vnet {
                head.extend([0u8; VIRTIO_NET_HDR_LEN]);
            }
            let mut parts = ArrayVec::new();
            parts.push((i as u8, 0, p.len() as u16));
            let flow = parsed.map(|parsed| Flow {
                first: i,
                parsed,
                segment: p.len() - parsed.headers,
                bytes: p.len(),
                next_seq: seq(p, parsed).wrapping_add((p.len() - parsed.headers) as u32),
            });
            // A pushed segment ends its superpacket, also as the first one.
            let pushed = parsed.is_some_and(|x| x.pushed(p));
            self.writes.push(Write {
                head,
                parts,
                open: flow.is_some() && !pushed,
                flow,
            });
        }
        for w in &mut self.writes {
            if w.parts.len() > 1 {
                finish(w, packets);
            }
        }
        self.writes.len()
    }

    /// Ends the open superpacket of the TCP or UDP flow of `p`, if there is one.
    fn close_flow_of(&mut self, packets: &[&[u8]], p: &[u8]) {
        let Some(h) = IpHeader::of(p) else { return };
        if h.later_fragment || !matches!(h.proto, TCP | UDP) || p.len() < h.len + 4 {
            return;
        }
        // Where its ports are: enough for `same_flow` (which reads no further).
        let ports = Parsed {
            v6: h.v6,
            proto: h.proto,
            ip: h.len,
            headers: h.len + 4,
        };
        for w in self.writes.iter_mut().filter(|w| w.open) {
            if let Some(flow) = w.flow
                && same_flow(packets[flow.first], flow.parsed, p, ports)
            {
                w.open = false;
            }
        }
    }

    /// Appends packet `i` to an open flow it continues. A packet of a flow it cannot
    /// continue closes that flow, so that nothing later overtakes it.
    fn merge(&mut self, packets: &[&[u8]], i: usize, parsed: Parsed) -> bool {
        let p = packets[i];
        let payload = p.len() - parsed.headers;
        for w in self.writes.iter_mut().rev() {
            let Some(flow) = w.flow.filter(|_| w.open) else {
                continue;
            };
            let first = packets[flow.first];
            if !same_flow(first, flow.parsed, p, parsed) {
                continue;
            }
            let fits = flow.parsed.headers == parsed.headers
                && same_headers(first, p, parsed)
                && payload <= flow.segment
                && (parsed.proto == UDP || seq(p, parsed) == flow.next_seq)
                && flow.bytes + payload <= MAX_BYTES
                && !w.parts.is_full();
            if !fits {
                w.open = false;
                return false;
            }
            if w.parts.len() == 1 {
                // The first packet's part becomes its payload; its headers are
                // rewritten into `head` when the write is finished.
                w.parts[0].1 = flow.parsed.headers as u16;
            }
            w.parts
                .push((i as u8, parsed.headers as u16, p.len() as u16));
            w.open = payload == flow.segment && !parsed.pushed(p);
            w.flow = Some(Flow {
                bytes: flow.bytes + payload,
                next_seq: flow.next_seq.wrapping_add(payload as u32),
                ..flow
            });
            return true;
        }
        false
    }

    /// Performs the planned writes on `fd`. Errors of single writes (a packet the kernel
    /// refuses) are counted in the result, not returned; an error that means the device
    /// is unusable is returned.
    pub fn write(&self, fd: impl AsFd, packets: &[&[u8]]) -> io::Result<WriteReport> {
        let mut report = WriteReport::default();
        for w in &self.writes {
            let mut iov: ArrayVec<IoSlice<'_>, { MAX_SEGMENTS + 1 }> = ArrayVec::new();
            if !w.head.is_empty() {
                iov.push(IoSlice::new(&w.head));
            }
            for &(k, start, end) in &w.parts {
                iov.push(IoSlice::new(
                    &packets[usize::from(k)][usize::from(start)..usize::from(end)],
                ));
            }
            match nix::sys::uio::writev(fd.as_fd(), &iov) {
                Ok(_) => {
                    report.writes += 1;
                    report.packets += w.parts.len();
                    report.bytes += w
                        .parts
                        .iter()
                        .map(|&(k, _, _)| packets[usize::from(k)].len())
                        .sum::<usize>();
                }
                Err(e)
                    if matches!(
                        e,
                        nix::Error::EBADF | nix::Error::EBADFD | nix::Error::ENODEV
                    ) =>
                {
                    return Err(e.into());
                }
                Err(e) => {
                    report.lost += w.parts.len();
                    report.error = Some(e.into());
                }
            }
        }
        Ok(report)
    }
}

/// What [`Coalescer::write`] did.
#[derive(Debug, Default)]
pub struct WriteReport {
    /// Writes made (superpackets and single packets).
    pub writes: usize,
    /// Packets they carried.
    pub packets: usize,
    /// Bytes of those packets (as they would be written one by one).
    pub bytes: usize,
    /// Packets in writes that failed.
    pub lost: usize,
    /// The last error of a failed write.
    pub error: Option<io::Error>,
}

impl WriteReport {
    /// Adds the counts of `other`; its error, if any, becomes the last error.
    pub fn add(&mut self, other: Self) {
        self.writes += other.writes;
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.lost += other.lost;
        if other.error.is_some() {
            self.error = other.error;
        }
    }
}

fn seq(p: &[u8], parsed: Parsed) -> u32 {
    if parsed.proto == TCP {
        let at = parsed.ip + 4;
        u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
    } else {
        0
    }
}

/// Same addresses, protocol and ports.
fn same_flow(a: &[u8], pa: Parsed, b: &[u8], pb: Parsed) -> bool {
    if pa.v6 != pb.v6 || pa.proto != pb.proto {
        return false;
    }
    addresses(a, pa.v6) == addresses(b, pb.v6) && a[pa.ip..pa.ip + 4] == b[pb.ip..pb.ip + 4]
}

/// Headers equal apart from what differs between the segments of one superpacket.
fn same_headers(a: &[u8], b: &[u8], p: Parsed) -> bool {
    let ip_same = if p.v6 {
        // version, traffic class, flow label; next header and hop limit
        a[0..4] == b[0..4] && a[6..8] == b[6..8]
    } else {
        // TOS; flags (DF); TTL and protocol
        a[1] == b[1] && a[6] == b[6] && a[8..10] == b[8..10]
    };
    let t = p.ip;
    let l4_same = if p.proto == TCP {
        // ACK number, data offset, flags apart from PSH, window, urgent pointer, options
        a[t + 8..t + 13] == b[t + 8..t + 13]
            && a[t + 13] & !PSH == b[t + 13] & !PSH
            && a[t + 14..t + 16] == b[t + 14..t + 16]
            && a[t + 18..p.headers] == b[t + 18..p.headers]
    } else {
        true
    };
    ip_same && l4_same
}

/// Writes the virtio-net header and the superpacket's IP and transport headers.
fn finish(w: &mut Write, packets: &[&[u8]]) {
    let Some(flow) = w.flow else { return };
    let p = flow.parsed;
    let first = packets[flow.first];
    let total: usize = p.headers
        + w.parts
            .iter()
            .map(|&(_, s, e)| usize::from(e - s))
            .sum::<usize>();
    let (gso_type, csum_offset) = match (p.proto, p.v6) {
        (TCP, false) => (VIRTIO_NET_HDR_GSO_TCPV4, 16),
        (TCP, true) => (VIRTIO_NET_HDR_GSO_TCPV6, 16),
        _ => (VIRTIO_NET_HDR_GSO_UDP_L4, 6),
    };
    let segment = usize::from(w.parts[0].2 - w.parts[0].1);
    let vnet = VirtioNetHdr {
        flags: NEEDS_CSUM,
        gso_type,
        hdr_len: p.headers as u16,
        gso_size: segment as u16,
        csum_start: p.ip as u16,
        csum_offset,
    };
    w.head.clear();
    w.head.extend([0u8; VIRTIO_NET_HDR_LEN]);
    vnet.encode(&mut w.head[..])
        .expect("the buffer is VIRTIO_NET_HDR_LEN long");
    let at = w.head.len();
    w.head
        .try_extend_from_slice(&first[..p.headers])
        .expect("headers fit MAX_HEADERS");
    let h = &mut w.head[at..];
    let l4_len = total - p.ip;
    if p.v6 {
        h[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    } else {
        h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let c = !tun_rs::checksum(&h[..20], 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
    }
    if p.proto == TCP {
        // The last segment's PSH goes on the superpacket.
        let last = packets[usize::from(w.parts[w.parts.len() - 1].0)];
        h[p.ip + 13] |= last[p.ip + 13] & PSH;
    } else {
        h[p.ip + 4..p.ip + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    // The transport checksum field holds the pseudo-header sum; the kernel completes
    // it (NEEDS_CSUM) for every segment it makes.
    let pseudo = tun_rs::checksum(addresses(h, p.v6), u64::from(p.proto) + l4_len as u64);
    let c = p.ip + usize::from(csum_offset);
    h[c..c + 2].copy_from_slice(&pseudo.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use lametun_core::testing::packets::{checksum, ipv4, ipv6};
    use std::io::Read;

    const A: [u8; 4] = [172, 31, 255, 7];
    const B: [u8; 4] = [172, 31, 255, 13];

    fn tcp_header(sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&777u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t.extend_from_slice(payload);
        t
    }

    fn payload(seq: u32, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seq as usize + i) as u8).collect()
    }

    /// A TCP segment `sport -> 5201` at `seq` with `len` bytes of payload.
    fn tcp4(sport: u16, seq: u32, len: usize, flags: u8) -> Vec<u8> {
        ipv4(
            A,
            B,
            TCP,
            &tcp_header(sport, seq, flags, &payload(seq, len)),
        )
    }

    fn tcp6(seq: u32, len: usize) -> Vec<u8> {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        a[0] = 0xfd;
        a[15] = 7;
        b[0] = 0xfd;
        b[15] = 13;
        ipv6(a, b, TCP, &tcp_header(4000, seq, ACK, &payload(seq, len)))
    }

    fn udp4(len: usize, fill: u8) -> Vec<u8> {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&4000u16.to_be_bytes());
        u[2..4].copy_from_slice(&5201u16.to_be_bytes());
        u[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
        u.extend(std::iter::repeat_n(fill, len));
        ipv4(A, B, UDP, &u)
    }

    /// `p` (IPv4 UDP) with its UDP length field set to `len`.
    fn udp_len(mut p: Vec<u8>, len: u16) -> Vec<u8> {
        p[24..26].copy_from_slice(&len.to_be_bytes());
        p
    }

    /// What each planned write puts on the device, as bytes.
    fn written(c: &Coalescer, packets: &[&[u8]]) -> Vec<Vec<u8>> {
        c.writes
            .iter()
            .map(|w| {
                let mut out = w.head.to_vec();
                for &(k, s, e) in &w.parts {
                    out.extend_from_slice(&packets[usize::from(k)][usize::from(s)..usize::from(e)]);
                }
                out
            })
            .collect()
    }

    /// Cuts a written superpacket back into packets the way the kernel segments it, with
    /// the checksum fields and the IPv4 ID zeroed (the kernel fills them in).
    fn segment(write: &[u8]) -> Vec<Vec<u8>> {
        let hdr = VirtioNetHdr::decode(write).unwrap();
        let pkt = &write[VIRTIO_NET_HDR_LEN..];
        if hdr.gso_type == 0 {
            return vec![normalize(pkt)];
        }
        assert_eq!(hdr.flags, NEEDS_CSUM);
        let headers = usize::from(hdr.hdr_len);
        let ip = usize::from(hdr.csum_start);
        let v6 = pkt[0] >> 4 == 6;
        let mut out = Vec::new();
        for (i, chunk) in pkt[headers..].chunks(usize::from(hdr.gso_size)).enumerate() {
            let mut p = pkt[..headers].to_vec();
            p.extend_from_slice(chunk);
            let len = p.len();
            if v6 {
                p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
            } else {
                p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            }
            if hdr.gso_type == VIRTIO_NET_HDR_GSO_UDP_L4 {
                p[ip + 4..ip + 6].copy_from_slice(&((len - ip) as u16).to_be_bytes());
            } else {
                let seq = u32::from_be_bytes(p[ip + 4..ip + 8].try_into().unwrap());
                let seq = seq.wrapping_add((i * usize::from(hdr.gso_size)) as u32);
                p[ip + 4..ip + 8].copy_from_slice(&seq.to_be_bytes());
                if (i + 1) * usize::from(hdr.gso_size) < pkt.len() - headers {
                    p[ip + 13] &= !PSH; // the kernel puts PSH on the last segment only
                }
            }
            out.push(normalize(&p));
        }
        out
    }

    fn normalize(p: &[u8]) -> Vec<u8> {
        let mut p = p.to_vec();
        if p.len() < 40 {
            return p;
        }
        let (ip, v6) = if p[0] >> 4 == 6 {
            (40, true)
        } else {
            (20, false)
        };
        if !v6 {
            p[4..6].fill(0);
            p[10..12].fill(0);
        }
        let c = ip
            + if p[if v6 { 6 } else { 9 }] == TCP {
                16
            } else {
                6
            };
        if let Some(field) = p.get_mut(c..c + 2) {
            field.fill(0);
        }
        p
    }

    fn plan(vnet: bool, udp: bool, packets: &[Vec<u8>]) -> (Coalescer, Vec<Vec<u8>>) {
        let refs: Vec<&[u8]> = packets.iter().map(|p| &p[..]).collect();
        let mut c = Coalescer::new(vnet, udp);
        c.plan(&refs);
        let out = written(&c, &refs);
        (c, out)
    }

    /// The packets the kernel sees, in order, after segmenting every write.
    fn delivered(writes: &[Vec<u8>]) -> Vec<Vec<u8>> {
        writes.iter().flat_map(|w| segment(w)).collect()
    }

    #[test]
    fn consecutive_segments_become_one_superpacket_the_kernel_cuts_back() {
        let packets: Vec<_> = (0..4)
            .map(|i| tcp4(4000, 1000 + i * 1000, if i == 3 { 500 } else { 1000 }, ACK))
            .collect();
        let (_, writes) = plan(true, true, &packets);
        assert_eq!(writes.len(), 1);
        let hdr = VirtioNetHdr::decode(&writes[0]).unwrap();
        assert_eq!(
            (
                hdr.gso_type,
                hdr.gso_size,
                hdr.hdr_len,
                hdr.csum_start,
                hdr.csum_offset
            ),
            (VIRTIO_NET_HDR_GSO_TCPV4, 1000, 40, 20, 16)
        );
        let sp = &writes[0][VIRTIO_NET_HDR_LEN..];
        assert_eq!(usize::from(u16::from_be_bytes([sp[2], sp[3]])), sp.len());
        assert_eq!(checksum(&sp[..20]), 0, "IPv4 header checksum");
        // The TCP checksum field holds the pseudo-header sum over the whole segment.
        let mut pseudo = sp[12..20].to_vec();
        pseudo.extend([0, TCP]);
        pseudo.extend(((sp.len() - 20) as u16).to_be_bytes());
        assert_eq!(u16::from_be_bytes([sp[36], sp[37]]), !checksum(&pseudo));
        let want: Vec<_> = packets.iter().map(|p| normalize(p)).collect();
        assert_eq!(delivered(&writes), want);
    }

    #[test]
    fn ipv6_segments_merge_with_their_own_gso_type() {
        let packets: Vec<_> = (0..3).map(|i| tcp6(i * 1200, 1200)).collect();
        let (_, writes) = plan(true, false, &packets);
        assert_eq!(writes.len(), 1);
        let hdr = VirtioNetHdr::decode(&writes[0]).unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.csum_start),
            (VIRTIO_NET_HDR_GSO_TCPV6, 40)
        );
        let want: Vec<_> = packets.iter().map(|p| normalize(p)).collect();
        assert_eq!(delivered(&writes), want);
    }

    #[test]
    fn interleaved_flows_merge_each_and_keep_their_own_order() {
        let packets = vec![
            tcp4(1, 0, 1000, ACK),
            tcp4(2, 0, 1000, ACK),
            tcp4(1, 1000, 1000, ACK),
            tcp4(2, 1000, 1000, ACK),
            tcp4(1, 2000, 10, ACK),
        ];
        let (_, writes) = plan(true, true, &packets);
        assert_eq!(writes.len(), 2);
        let got = delivered(&writes);
        let flow = |port: u16| -> Vec<Vec<u8>> {
            got.iter()
                .filter(|p| p[20..22] == port.to_be_bytes())
                .cloned()
                .collect()
        };
        assert_eq!(flow(1), [0, 2, 4].map(|i| normalize(&packets[i])));
        assert_eq!(flow(2), [1, 3].map(|i| normalize(&packets[i])));
    }

    #[test]
    fn what_cannot_continue_a_superpacket_ends_it_and_stays_in_order() {
        let mut options = tcp4(4000, 3000, 1000, ACK);
        options[33] = 0x0f; // window differs
        let cases: Vec<(&str, Vec<Vec<u8>>, usize)> = vec![
            (
                "a gap in the sequence",
                vec![tcp4(4000, 0, 1000, ACK), tcp4(4000, 2000, 1000, ACK)],
                2,
            ),
            (
                "PSH ends it after the pushed segment",
                vec![
                    tcp4(4000, 0, 1000, ACK),
                    tcp4(4000, 1000, 1000, ACK | PSH),
                    tcp4(4000, 2000, 1000, ACK),
                ],
                2,
            ),
            (
                "a shorter segment ends it",
                vec![
                    tcp4(4000, 0, 1000, ACK),
                    tcp4(4000, 1000, 500, ACK),
                    tcp4(4000, 1500, 500, ACK),
                ],
                2,
            ),
            (
                "a longer segment",
                vec![tcp4(4000, 0, 500, ACK), tcp4(4000, 500, 1000, ACK)],
                2,
            ),
            (
                "PSH on the first segment",
                vec![tcp4(4000, 0, 1000, ACK | PSH), tcp4(4000, 1000, 1000, ACK)],
                2,
            ),
            (
                "FIN is written alone",
                vec![tcp4(4000, 0, 1000, ACK), tcp4(4000, 1000, 1000, ACK | 0x01)],
                2,
            ),
            (
                "SYN",
                vec![tcp4(4000, 0, 10, 0x02), tcp4(4000, 10, 10, 0x02)],
                2,
            ),
            (
                "pure ACKs",
                vec![tcp4(4000, 0, 0, ACK), tcp4(4000, 0, 0, ACK)],
                2,
            ),
            (
                "another window",
                vec![tcp4(4000, 2000, 1000, ACK), options],
                2,
            ),
            (
                "a pure ACK of the flow between two segments (a duplicate ACK, say)",
                vec![
                    tcp4(4000, 0, 1000, ACK),
                    tcp4(4000, 1000, 0, ACK),
                    tcp4(4000, 1000, 1000, ACK),
                ],
                3,
            ),
            (
                "an empty UDP datagram between two others",
                vec![udp4(100, 1), udp4(0, 2), udp4(100, 3)],
                3,
            ),
            (
                "a UDP length that is not the datagram's",
                vec![udp_len(udp4(100, 1), 20), udp4(100, 2), udp4(100, 3)],
                2,
            ),
            (
                "a UDP length that claims more than the datagram",
                vec![udp4(100, 1), udp_len(udp4(100, 2), 2000), udp4(100, 3)],
                3,
            ),
        ];
        for (what, packets, n) in cases {
            let (_, writes) = plan(true, true, &packets);
            assert_eq!(writes.len(), n, "{what}");
            let want: Vec<_> = packets.iter().map(|p| normalize(p)).collect();
            assert_eq!(delivered(&writes), want, "{what}");
        }
    }

    #[test]
    fn fragments_options_and_extension_headers_are_written_as_they_came() {
        let mut frag = tcp4(4000, 0, 1000, ACK);
        frag[6] = 0x20; // more fragments
        let mut frag2 = tcp4(4000, 1000, 1000, ACK);
        frag2[6] = 0x20;
        let mut hop_by_hop = tcp6(0, 100);
        hop_by_hop[6] = 0; // next header: hop-by-hop options
        let packets = vec![frag, frag2, hop_by_hop.clone(), hop_by_hop];
        let (_, writes) = plan(true, true, &packets);
        assert_eq!(writes.len(), 4);
        for (w, p) in writes.iter().zip(&packets) {
            assert_eq!(&w[..VIRTIO_NET_HDR_LEN], &[0u8; VIRTIO_NET_HDR_LEN]);
            assert_eq!(&w[VIRTIO_NET_HDR_LEN..], &p[..]);
        }
    }

    #[test]
    fn limits_of_64_segments_and_64_kib() {
        let small: Vec<_> = (0..100).map(|i| tcp4(4000, i * 100, 100, ACK)).collect();
        let (c, _) = plan(true, true, &small);
        let sizes: Vec<_> = c.writes.iter().map(|w| w.parts.len()).collect();
        assert_eq!(sizes, [64, 36]);
        let big: Vec<_> = (0..50).map(|i| tcp4(4000, i * 1400, 1400, ACK)).collect();
        let (c, writes) = plan(true, true, &big);
        assert!(
            c.writes
                .iter()
                .all(|w| w.parts.len() == 46 || w.parts.len() == 4)
        );
        assert!(
            writes
                .iter()
                .all(|w| w.len() - VIRTIO_NET_HDR_LEN <= MAX_BYTES)
        );
        let want: Vec<_> = big.iter().map(|p| normalize(p)).collect();
        assert_eq!(delivered(&writes), want);
    }

    #[test]
    fn udp_merges_only_where_the_device_takes_udp_superpackets() {
        let packets = vec![udp4(64, 1), udp4(64, 2), udp4(64, 3), udp4(20, 4)];
        let (_, writes) = plan(true, true, &packets);
        assert_eq!(writes.len(), 1);
        let hdr = VirtioNetHdr::decode(&writes[0]).unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.gso_size, hdr.csum_offset),
            (VIRTIO_NET_HDR_GSO_UDP_L4, 64, 6)
        );
        let want: Vec<_> = packets.iter().map(|p| normalize(p)).collect();
        assert_eq!(delivered(&writes), want);
        let (_, writes) = plan(true, false, &packets);
        assert_eq!(writes.len(), 4);
    }

    #[test]
    fn without_the_virtio_header_every_packet_goes_as_it_is() {
        let packets: Vec<_> = (0..4).map(|i| tcp4(4000, i * 1000, 1000, ACK)).collect();
        let (_, writes) = plan(false, true, &packets);
        assert_eq!(writes, packets);
    }

    #[test]
    fn what_the_kernel_answers_inside_the_write() {
        use lametun_core::testing::packets::{icmp_echo_v4, tcp_syn_v4, udp_v4};
        // Answered at once: echo requests (both families), data, SYN, FIN.
        assert!(answered_at_once(&icmp_echo_v4(A, B, 84)));
        let mut echo6 = vec![0u8; 16];
        echo6[0] = 128;
        assert!(answered_at_once(&ipv6([0xfd; 16], [0xfe; 16], 58, &echo6)));
        assert!(answered_at_once(&tcp4(4000, 1, 100, ACK)));
        assert!(answered_at_once(&tcp6(1, 100)));
        assert!(answered_at_once(&tcp_syn_v4(A, B, 4000, 5201)));
        assert!(answered_at_once(&tcp4(4000, 1, 0, ACK | 0x01)));
        // Not: a pure ACK, a RST, an echo reply, UDP, a later fragment, ICMP in IPv6.
        assert!(!answered_at_once(&tcp4(4000, 1, 0, ACK)));
        assert!(!answered_at_once(&tcp4(4000, 1, 0, 0x04)));
        let mut reply = icmp_echo_v4(A, B, 84);
        reply[20] = 0;
        assert!(!answered_at_once(&reply));
        assert!(!answered_at_once(&udp_v4(A, B, 4000, 53, b"query")));
        let mut later = tcp4(4000, 1, 100, ACK);
        later[7] = 1;
        assert!(!answered_at_once(&later));
        assert!(!answered_at_once(&ipv6(
            [0xfd; 16],
            [0xfe; 16],
            1,
            &[8, 0, 0, 0]
        )));
        // Anything short or malformed is not, and never panics.
        let mut rng = lametun_core::testing::Rng::new(11);
        for len in 0..80 {
            let mut p = vec![0u8; len];
            rng.fill(&mut p);
            answered_at_once(&p);
        }
        assert!(!answered_at_once(&tcp4(4000, 1, 100, ACK)[..33]));
    }

    #[test]
    fn a_flow_and_its_answers_share_a_queue_and_flows_spread_over_the_queues() {
        use lametun_core::testing::packets::{icmp_echo_v4, udp_v4};
        let swap4 = |p: &[u8]| {
            // The same packet the other way: addresses and ports swapped.
            let mut q = p.to_vec();
            q[12..16].copy_from_slice(&p[16..20]);
            q[16..20].copy_from_slice(&p[12..16]);
            q[20..22].copy_from_slice(&p[22..24]);
            q[22..24].copy_from_slice(&p[20..22]);
            q
        };
        for queues in [2, 3, 4] {
            let mut used = vec![0usize; queues];
            for sport in 40_000..40_064u16 {
                let data = tcp4(sport, 1, 100, ACK);
                let q = flow_queue(&data, queues);
                used[q] += 1;
                // Every packet of the flow, whatever its flags or size, and the answers.
                assert_eq!(flow_queue(&tcp4(sport, 9, 0, ACK | 0x01), queues), q);
                assert_eq!(flow_queue(&swap4(&data), queues), q);
                let dns = udp_v4(A, B, sport, 53, b"query");
                assert_eq!(flow_queue(&swap4(&dns), queues), flow_queue(&dns, queues));
            }
            // 64 flows over 2-4 queues: none is left idle or takes nearly all.
            assert!(
                used.iter().all(|&n| n >= 64 / queues / 3),
                "{queues} queues: {used:?}"
            );
        }
        // IPv6, both ways.
        let six = tcp6(1, 100);
        let mut back = six.clone();
        back[8..24].copy_from_slice(&six[24..40]);
        back[24..40].copy_from_slice(&six[8..24]);
        back[40..42].copy_from_slice(&six[42..44]);
        back[42..44].copy_from_slice(&six[40..42]);
        assert_eq!(flow_queue(&six, 4), flow_queue(&back, 4));
        // An echo and its reply; every fragment of a datagram (no ports in later ones).
        let echo = icmp_echo_v4(A, B, 84);
        let mut reply = echo.clone();
        reply[12..16].copy_from_slice(&echo[16..20]);
        reply[16..20].copy_from_slice(&echo[12..16]);
        assert_eq!(flow_queue(&echo, 4), flow_queue(&reply, 4));
        let mut first = udp_v4(A, B, 4000, 53, &[7; 100]);
        first[6] = 0x20; // more fragments
        let mut later = first.clone();
        later[6..8].copy_from_slice(&[0, 10]);
        later[20..24].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(flow_queue(&first, 4), flow_queue(&later, 4));
        // One queue, or anything that is not IP: queue 0; short or random bytes never panic.
        assert_eq!(flow_queue(&tcp4(4000, 1, 100, ACK), 1), 0);
        assert_eq!(flow_queue(&[0x00; 60], 4), 0);
        let mut rng = lametun_core::testing::Rng::new(5);
        for len in 0..240 {
            let mut p = vec![0u8; len / 3];
            rng.fill(&mut p);
            if let Some(first) = p.first_mut() {
                // IPv4, IPv6 or anything, with any header length.
                *first = [0x40, 0x60, 0][len % 3] | (*first & 0x0f);
            }
            assert!(flow_queue(&p, 3) < 3);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_are_written_whole() {
        let mut rng = lametun_core::testing::Rng::new(7);
        for round in 0..2000 {
            let mut packets = Vec::new();
            for _ in 0..rng.below(20) + 1 {
                // Mostly near-valid segments with one byte changed, some pure noise.
                let mut p = if rng.below(4) == 0 {
                    let mut p = vec![0u8; rng.below(120)];
                    rng.fill(&mut p);
                    p
                } else {
                    let seq = rng.below(4) as u32 * 100;
                    tcp4(4000 + rng.below(2) as u16, seq, 100, ACK)
                };
                if !p.is_empty() && round % 2 == 0 {
                    let at = rng.below(p.len());
                    p[at] = rng.next_u64() as u8;
                }
                packets.push(p);
            }
            let (_, writes) = plan(true, true, &packets);
            // Every packet reaches the kernel once, unchanged.
            let mut got = delivered(&writes);
            let mut want: Vec<_> = packets.iter().map(|p| normalize(p)).collect();
            got.sort();
            want.sort();
            if got != want {
                let i = (0..got.len())
                    .find(|&i| got.get(i) != want.get(i))
                    .unwrap_or(0);
                panic!(
                    "round {round}: {} vs {} packets; first difference at {i}:\n{:?}\n{:?}\ninput: {packets:?}",
                    got.len(),
                    want.len(),
                    got.get(i),
                    want.get(i)
                );
            }
        }
    }

    #[test]
    fn write_gathers_headers_and_payloads_into_one_write_each() {
        let packets: Vec<_> = (0..3).map(|i| tcp4(4000, i * 1000, 1000, ACK)).collect();
        let refs: Vec<&[u8]> = packets.iter().map(|p| &p[..]).collect();
        let mut c = Coalescer::new(true, true);
        assert_eq!(c.plan(&refs), 1);
        let (mut r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let report = c.write(&w, &refs).unwrap();
        assert_eq!((report.writes, report.packets, report.lost), (1, 3, 0));
        assert_eq!(report.bytes, packets.iter().map(Vec::len).sum::<usize>());
        drop(w);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, written(&c, &refs)[0]);
    }
}
