//! A conformance kit for stage crates: the checks every stage must pass, runnable from
//! the stage's own tests, without a device or a socket.
//!
//! ```
//! use lametun_core::testing::Conformance;
//!
//! // Two ends built from the same YAML, as both hosts of a tunnel would be.
//! Conformance::from_yaml("passthrough", "{}").run_all();
//! ```
//!
//! What [`Conformance::run_all`] checks, and why:
//!
//! - **round trip**: a packet sent out by one end (`outbound`) and received by the other
//!   (`inbound`) comes back byte for byte, for IPv4 and IPv6 packets of many sizes and for
//!   the empty keepalive;
//! - **declared overhead**: packets up to the largest the MTU allows, placed in buffers
//!   with exactly the declared head and tail room, never need more (a stage that grows a
//!   packet past its [`Overhead`](crate::Overhead) panics in `prepend`/`append`);
//! - **no panic on hostile input**: random bytes, and every truncation of a valid
//!   datagram, fed to `inbound` (what an attacker controls) and random bytes fed to
//!   `outbound`, never panic; whatever the verdict, the buffer stays within its storage;
//! - **config rejects unknown keys**: a misspelt key is an error, not ignored.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::{BuildContext, PacketBuf, PacketMeta, Stage, StageRegistration, Verdict, registry};

/// The largest inner packet the kit sends (an Ethernet-sized TUN MTU).
pub const MAX_PACKET: usize = 1500;

/// Deterministic pseudo-random bytes (xorshift64*), so that a failure can be replayed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// Crafted IP packets with valid headers, for stage tests.
pub mod packets {
    /// Internet checksum (RFC 1071) of `data`.
    pub fn checksum(data: &[u8]) -> u16 {
        let mut sum: u32 = data
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// An IPv4 packet `src -> dst` with protocol `proto` and `payload`.
    pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
        let total = 20 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40; // don't fragment
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..].copy_from_slice(payload);
        p
    }

    /// An IPv6 packet `src -> dst` with next header `next` and `payload`.
    pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload.len()];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p[6] = next;
        p[7] = 64;
        p[8..24].copy_from_slice(&src);
        p[24..40].copy_from_slice(&dst);
        p[40..].copy_from_slice(payload);
        p
    }

    /// An ICMP echo request (type 8) of `total` bytes in all, IPv4.
    pub fn icmp_echo_v4(src: [u8; 4], dst: [u8; 4], total: usize) -> Vec<u8> {
        let mut icmp = vec![0u8; total.max(28) - 20];
        icmp[0] = 8;
        for (i, b) in icmp.iter_mut().enumerate().skip(8) {
            *b = i as u8;
        }
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        ipv4(src, dst, 1, &icmp)
    }

    /// A UDP datagram `sport -> dport` with `payload`, in IPv4 (checksum left 0, which
    /// IPv4 allows).
    pub fn udp_v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut udp = vec![0u8; 8 + payload.len()];
        udp[0..2].copy_from_slice(&sport.to_be_bytes());
        udp[2..4].copy_from_slice(&dport.to_be_bytes());
        let len = udp.len() as u16;
        udp[4..6].copy_from_slice(&len.to_be_bytes());
        udp[8..].copy_from_slice(payload);
        ipv4(src, dst, 17, &udp)
    }

    /// A TCP SYN `sport -> dport`, in IPv4 (20-byte header, checksum not computed).
    pub fn tcp_syn_v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x02;
        ipv4(src, dst, 6, &tcp)
    }

    /// A UDP datagram in IPv6, `payload` bytes long.
    pub fn udp_v6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut udp = vec![0u8; 8 + payload.len()];
        udp[0..2].copy_from_slice(&sport.to_be_bytes());
        udp[2..4].copy_from_slice(&dport.to_be_bytes());
        let len = udp.len() as u16;
        udp[4..6].copy_from_slice(&len.to_be_bytes());
        udp[8..].copy_from_slice(payload);
        ipv6(src, dst, 17, &udp)
    }
}

/// Two ends of a tunnel with the stage under test, and the checks.
pub struct Conformance {
    /// The sending end.
    pub a: Box<dyn Stage>,
    /// The receiving end.
    pub b: Box<dyn Stage>,
    registration: Option<&'static StageRegistration>,
    valid_yaml: String,
    now: Instant,
    seed: u64,
}

impl std::fmt::Debug for Conformance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conformance")
            .field("registration", &self.registration.map(|r| r.type_name))
            .finish_non_exhaustive()
    }
}

fn peer() -> SocketAddr {
    "192.0.2.1:1234".parse().expect("valid address")
}

impl Conformance {
    /// Builds both ends of registered stage `type_name` from the same YAML keys.
    ///
    /// # Panics
    ///
    /// If the type is not registered (is the crate linked? see the registry docs) or the
    /// YAML does not build.
    pub fn from_yaml(type_name: &str, yaml: &str) -> Self {
        Self::from_yaml_pair(type_name, yaml, yaml)
    }

    /// Builds the two ends from different YAML (for stages whose ends differ).
    ///
    /// # Panics
    ///
    /// As [`from_yaml`](Self::from_yaml).
    pub fn from_yaml_pair(type_name: &str, yaml_a: &str, yaml_b: &str) -> Self {
        let reg = registry::find(type_name).unwrap_or_else(|| {
            panic!(
                "stage type {type_name:?} is not registered; known: {:?} (add `use your_crate as _;`)",
                registry::names()
            )
        });
        let cx = BuildContext::default();
        let build = |y: &str| {
            reg.build_yaml(y, &cx)
                .unwrap_or_else(|e| panic!("{type_name}: {y:?} does not build: {e}"))
        };
        Self {
            a: build(yaml_a),
            b: build(yaml_b),
            registration: Some(reg),
            valid_yaml: yaml_a.to_owned(),
            now: Instant::now(),
            seed: 0x5eed,
        }
    }

    /// Wraps two already built stages (stages that are not registered, or need setup).
    pub fn from_stages(a: Box<dyn Stage>, b: Box<dyn Stage>) -> Self {
        Self {
            a,
            b,
            registration: None,
            valid_yaml: String::new(),
            now: Instant::now(),
            seed: 0x5eed,
        }
    }

    /// Sets the seed of the random inputs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    fn meta(&self, step: u64) -> PacketMeta {
        PacketMeta::new(self.now + Duration::from_micros(step), Some(peer()))
    }

    /// Runs every check.
    pub fn run_all(&self) {
        self.check_round_trip();
        self.check_overhead();
        self.check_hostile_input(2000);
        self.check_rejects_unknown_keys();
    }

    /// Sends `inner` from `a` to `b`; returns what `b` delivers (`None` if a stage
    /// dropped it). Buffers have exactly the declared room.
    pub fn transfer(&self, inner: &[u8], step: u64) -> Option<Vec<u8>> {
        let oh = self.a.overhead();
        let mut storage = vec![0u8; oh.head + inner.len() + oh.tail];
        let mut pkt = PacketBuf::with_data(&mut storage, oh.head, inner);
        if self.a.outbound(&mut pkt, &self.meta(step)) != Verdict::Pass {
            return None;
        }
        let wire = pkt.as_slice().to_vec();
        let mut storage = vec![0u8; wire.len() + MAX_PACKET];
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &wire);
        match self.b.inbound(&mut pkt, &self.meta(step)) {
            Verdict::Pass => Some(pkt.as_slice().to_vec()),
            _ => None,
        }
    }

    fn sample_packets(&self) -> Vec<Vec<u8>> {
        let (s4, d4) = ([172, 31, 255, 7], [172, 31, 255, 13]);
        let (s6, d6) = ([0xfd; 16], [0xfe; 16]);
        let mut v = vec![
            Vec::new(),
            packets::icmp_echo_v4(s4, d4, 84),
            packets::tcp_syn_v4(s4, d4, 40000, 22),
            packets::udp_v6(s6, d6, 5353, 53, b"query"),
        ];
        for size in [28, 64, 576, 1280, 1400, MAX_PACKET] {
            v.push(packets::icmp_echo_v4(s4, d4, size));
            v.push(packets::udp_v6(
                s6,
                d6,
                1,
                2,
                &vec![0xab; size.max(48) - 48],
            ));
        }
        v
    }

    /// A packet sent out by `a` and received by `b` comes back byte for byte.
    pub fn check_round_trip(&self) {
        for (i, p) in self.sample_packets().iter().enumerate() {
            let back = self.transfer(p, i as u64);
            assert_eq!(
                back.as_deref(),
                Some(&p[..]),
                "round trip of packet {i} ({} bytes) failed",
                p.len()
            );
        }
    }

    /// Full-size packets fit in exactly the declared room (a stage that needs more
    /// panics here, in `prepend` or `append`).
    pub fn check_overhead(&self) {
        let mut rng = Rng::new(self.seed);
        for size in [0, 1, 20, 40, 1000, 1400, MAX_PACKET] {
            let mut inner = packets::icmp_echo_v4([10, 0, 0, 1], [10, 0, 0, 2], size.max(28));
            inner.truncate(size.max(28));
            rng.fill(&mut inner[28..]);
            let _ = self.transfer(&inner, size as u64);
        }
    }

    /// Random bytes and truncated datagrams never make a stage panic.
    pub fn check_hostile_input(&self, iterations: usize) {
        let mut rng = Rng::new(self.seed);
        let oh = self.a.overhead();
        let mut storage = vec![0u8; oh.head + 2 * MAX_PACKET + oh.tail];
        for i in 0..iterations {
            let len = match i % 4 {
                0 => rng.below(64),
                1 => rng.below(MAX_PACKET + 64),
                _ => rng.below(256),
            };
            let mut data = vec![0u8; len];
            rng.fill(&mut data);
            let mut pkt = PacketBuf::with_data(&mut storage, oh.head, &data);
            let _ = self.b.inbound(&mut pkt, &self.meta(i as u64));
            assert!(pkt.end() <= storage.len());
            if len <= MAX_PACKET {
                let mut pkt = PacketBuf::with_data(&mut storage, oh.head, &data);
                let _ = self.a.outbound(&mut pkt, &self.meta(i as u64));
            }
        }
        // Every truncation of a genuine datagram.
        let inner = packets::udp_v4([10, 0, 0, 1], [10, 0, 0, 2], 1000, 2000, &[7u8; 200]);
        let mut sealed = vec![0u8; oh.head + inner.len() + oh.tail];
        let mut pkt = PacketBuf::with_data(&mut sealed, oh.head, &inner);
        if self.a.outbound(&mut pkt, &self.meta(0)) == Verdict::Pass {
            let wire = pkt.as_slice().to_vec();
            for cut in 0..wire.len() {
                let mut pkt = PacketBuf::with_data(&mut storage, 0, &wire[..cut]);
                let _ = self.b.inbound(&mut pkt, &self.meta(cut as u64));
            }
        }
    }

    /// A config with an extra, misspelt key does not build.
    pub fn check_rejects_unknown_keys(&self) {
        let Some(reg) = self.registration else { return };
        let mut value: yaml_serde::Value =
            yaml_serde::from_str(&self.valid_yaml).expect("the valid YAML parses");
        if value.is_null() {
            value = yaml_serde::Value::Mapping(Default::default());
        }
        let map = value.as_mapping_mut().expect("stage keys are a mapping");
        map.insert("no_such_key_xyz".into(), 1.into());
        let yaml = yaml_serde::to_string(&value).expect("serializes");
        match reg.build_yaml(&yaml, &BuildContext::default()) {
            Ok(_) => panic!("{}: an unknown key was accepted: {yaml}", reg.type_name),
            Err(e) => assert!(
                e.to_string().contains("no_such_key_xyz"),
                "{}: the error should name the unknown key, got: {e}",
                reg.type_name
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_conforms() {
        Conformance::from_yaml("passthrough", "{}").run_all();
    }

    #[test]
    fn crafted_ipv4_headers_have_valid_checksums() {
        let p = packets::icmp_echo_v4([10, 0, 0, 1], [10, 0, 0, 2], 84);
        assert_eq!(p.len(), 84);
        assert_eq!(packets::checksum(&p[..20]), 0);
        assert_eq!(packets::checksum(&p[20..]), 0);
        assert!(crate::wire::check_ip(&p).is_ok());
        assert!(crate::wire::check_ip(&packets::udp_v6([1; 16], [2; 16], 1, 2, b"x")).is_ok());
    }
}
