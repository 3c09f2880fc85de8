//! Receive-side coalescing (GRO) of the packets the inbound thread writes to the TUN.
//!
//! A TCP stream through the tunnel arrives as a train of MTU-sized segments. Writing
//! each one costs a syscall and a trip through the kernel's receive path; writing them
//! as one superpacket (virtio-net header with `GSO_TCPV4`/`GSO_TCPV6`) costs one. This
//! module plans those writes for a batch, the way Linux's GRO and wireguard-go's
//! `tcpGRO` do, and [`Coalescer::write`] performs them with gathered writes (`writev`):
//! the rewritten headers from a small buffer, then the payload of every segment straight
//! from the slot it arrived in. Nothing is copied and nothing is allocated per packet
//! (`tun-rs`'s own GRO copies every packet into a fresh `Vec` and needs each slot to be
//! 64 KiB; measured here it cost 12% more CPU and 8 MiB more memory per end).
//!
//! Segments of one flow merge when they are consecutive (TCP: the next sequence number;
//! UDP: same flow), have identical headers apart from lengths, checksums, sequence
//! numbers and the IPv4 ID, are all the same size except a smaller last one, and carry
//! only `ACK` (TCP; a `PSH` ends the superpacket). Anything else (fragments, IP
//! options, IPv6 extension headers, `SYN`/`FIN`/`RST`/`URG`/ECN flags) is written as it
//! came. Packets of a flow stay in order; packets of different flows may be reordered
//! relative to each other, which GRO does too.
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

/// Most packets in one batch.
pub const MAX_PACKETS: usize = 128;
/// Most segments in one superpacket (the device's `gso_max_segs`).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes in one superpacket (an IP length field).
const MAX_BYTES: usize = 65_535;
/// Largest IPv6 + TCP header with options: room for the rewritten headers.
const MAX_HEADERS: usize = 40 + 60;

const TCP: u8 = 6;
const UDP: u8 = 17;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

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
    fn of(p: &[u8], udp_ok: bool) -> Option<Parsed> {
        let (v6, ip, proto) = match p.first()? >> 4 {
            4 => {
                let total = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
                // No options, exactly the packet's length, not a fragment.
                let fragment = u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0;
                if p[0] != 0x45 || total != p.len() || fragment {
                    return None;
                }
                (false, 20, p[9])
            }
            6 => {
                let payload = usize::from(u16::from_be_bytes([*p.get(4)?, *p.get(5)?]));
                if p.len() < 40 || payload + 40 != p.len() {
                    return None;
                }
                (true, 40, p[6])
            }
            _ => return None,
        };
        let l4 = match proto {
            TCP => {
                let flags = *p.get(ip + 13)?;
                let len = usize::from(p[ip + 12] >> 4) * 4;
                if len < 20 || flags & !(ACK | PSH) != 0 || flags & ACK == 0 {
                    return None;
                }
                len
            }
            UDP if udp_ok => 8,
            _ => return None,
        };
        let headers = ip + l4;
        // A segment with no payload (a pure ACK) is not merged.
        (p.len() > headers).then_some(Parsed {
            v6,
            proto,
            ip,
            headers,
        })
    }
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
        Coalescer {
            vnet,
            udp: vnet && udp,
            writes: Vec::with_capacity(MAX_PACKETS),
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
            if let Some(parsed) = parsed
                && self.merge(packets, i, parsed)
            {
                continue;
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
            self.writes.push(Write {
                head,
                parts,
                open: flow.is_some(),
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
            w.parts.push((i as u8, parsed.headers as u16, p.len() as u16));
            let push = parsed.proto == TCP && p[parsed.ip + 13] & PSH != 0;
            w.open = payload == flow.segment && !push;
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
                Err(e) if matches!(e, nix::Error::EBADF | nix::Error::EBADFD | nix::Error::ENODEV) => {
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
    let addrs = if pa.v6 { 8..40 } else { 12..20 };
    a[addrs.clone()] == b[addrs] && a[pa.ip..pa.ip + 4] == b[pb.ip..pb.ip + 4]
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
    vnet.encode(&mut w.head[..]).expect("the buffer is VIRTIO_NET_HDR_LEN long");
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
        let c = !fold(sum(&h[..20]));
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
    let addrs = if p.v6 { &h[8..40] } else { &h[12..20] };
    let pseudo = fold(sum(addrs) + u32::from(p.proto) + l4_len as u32);
    let c = p.ip + usize::from(csum_offset);
    h[c..c + 2].copy_from_slice(&pseudo.to_be_bytes());
}

fn sum(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}
