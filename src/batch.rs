//! How a batch of datagrams becomes as few `sendmsg` calls as possible.
//!
//! UDP generic segmentation offload (GSO, Linux 4.18+) sends many datagrams with one
//! system call: the buffer holds them back to back, and the `UDP_SEGMENT` control message
//! says where to cut. The kernel requires every segment to have the same size, except
//! the last, which may be shorter, and all of them to go to one destination. A batch read
//! from the TUN device is mostly that already: a TCP superpacket splits into equal
//! segments with a shorter tail. Small packets of one size (a flood of 64-byte UDP, or
//! pure ACKs) also group well.
//!
//! [`plan_runs`] groups consecutive datagrams into such runs. Nothing here does IO; the
//! driver sends each run. When the datagrams of a run lie back to back in memory (full
//! segments fill their slots exactly) the run is sent in place; otherwise it is copied
//! into one contiguous buffer first.

use lametun_core::Endpoint;

/// One datagram ready to send: where its bytes are in the batch buffer, and where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Offset of the first byte in the batch buffer.
    pub start: usize,
    /// Length in bytes.
    pub len: usize,
    /// Destination.
    pub to: Endpoint,
}

/// Consecutive datagrams that one GSO send can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Index of the first datagram.
    pub first: usize,
    /// Number of datagrams (at least 1).
    pub count: usize,
    /// Size of every segment but the last (the GSO segment size).
    pub segment: usize,
    /// Sum of the lengths.
    pub bytes: usize,
    /// Whether the datagrams lie back to back in the buffer (send in place).
    pub contiguous: bool,
}

/// Limits of one GSO send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GsoLimits {
    /// Most segments per send (1 = no GSO).
    pub max_segments: usize,
    /// Most bytes per send (a UDP datagram, and so a GSO buffer, has 16-bit length).
    pub max_bytes: usize,
}

impl GsoLimits {
    /// The kernel's limit on the payload of one UDP send, minus headroom for headers.
    pub const MAX_BYTES: usize = 65_000;
}

/// Groups `datagrams` into runs: same destination, same size except a shorter last one.
pub fn plan_runs(datagrams: &[Datagram], limits: GsoLimits, out: &mut Vec<Run>) {
    out.clear();
    let mut i = 0;
    while i < datagrams.len() {
        let d = datagrams[i];
        let mut run = Run {
            first: i,
            count: 1,
            segment: d.len,
            bytes: d.len,
            contiguous: true,
        };
        i += 1;
        while i < datagrams.len()
            && run.count < limits.max_segments
            && run.bytes + datagrams[i].len <= limits.max_bytes
        {
            let prev = datagrams[i - 1];
            let next = datagrams[i];
            // A shorter segment ends the run: only the last one may be short.
            if next.to != d.to || next.len > run.segment || prev.len != run.segment || next.len == 0
            {
                break;
            }
            run.contiguous &= prev.start + prev.len == next.start;
            run.count += 1;
            run.bytes += next.len;
            i += 1;
        }
        out.push(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            addr: ([192, 0, 2, 1], port).into(),
            local_ip: None,
        }
    }

    fn slots(lens: &[usize], stride: usize, port: u16) -> Vec<Datagram> {
        lens.iter()
            .enumerate()
            .map(|(i, &len)| Datagram {
                start: i * stride,
                len,
                to: ep(port),
            })
            .collect()
    }

    const LIMITS: GsoLimits = GsoLimits {
        max_segments: 64,
        max_bytes: GsoLimits::MAX_BYTES,
    };

    #[test]
    fn a_superpacket_is_one_contiguous_run_with_a_short_tail() {
        let d = slots(&[1500, 1500, 1500, 700], 1500, 1);
        let mut runs = Vec::new();
        plan_runs(&d, LIMITS, &mut runs);
        assert_eq!(
            runs,
            [Run {
                first: 0,
                count: 4,
                segment: 1500,
                bytes: 5200,
                contiguous: true
            }]
        );
    }

    #[test]
    fn small_equal_packets_group_but_need_a_copy() {
        let d = slots(&[92; 10], 1500, 1);
        let mut runs = Vec::new();
        plan_runs(&d, LIMITS, &mut runs);
        assert_eq!(runs.len(), 1);
        assert_eq!(
            (runs[0].count, runs[0].segment, runs[0].contiguous),
            (10, 92, false)
        );
    }

    #[test]
    fn a_short_segment_or_a_bigger_one_or_another_peer_ends_a_run() {
        let mut d = slots(&[100, 60, 100, 100, 200, 200], 1000, 1);
        d[5].to = ep(2);
        let mut runs = Vec::new();
        plan_runs(&d, LIMITS, &mut runs);
        let shape: Vec<(usize, usize)> = runs.iter().map(|r| (r.first, r.count)).collect();
        assert_eq!(shape, [(0, 2), (2, 2), (4, 1), (5, 1)]);
    }

    #[test]
    fn limits_split_long_runs() {
        let d = slots(&[1400; 100], 1400, 1);
        let mut runs = Vec::new();
        plan_runs(&d, LIMITS, &mut runs);
        // 65 000 / 1400 = 46 segments per send.
        assert_eq!(
            runs.iter().map(|r| r.count).collect::<Vec<_>>(),
            [46, 46, 8]
        );
        plan_runs(
            &d,
            GsoLimits {
                max_segments: 1,
                max_bytes: GsoLimits::MAX_BYTES,
            },
            &mut runs,
        );
        assert_eq!(runs.len(), 100);
        assert!(runs.iter().all(|r| r.count == 1 && r.contiguous));
    }

    #[test]
    fn empty_datagrams_are_never_grouped() {
        let d = slots(&[0, 0, 0], 100, 1);
        let mut runs = Vec::new();
        plan_runs(&d, LIMITS, &mut runs);
        assert_eq!(runs.len(), 3);
    }
}
