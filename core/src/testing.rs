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
//! - **round trip** ([`check_round_trip`](Conformance::check_round_trip)): a packet
//!   sent out by one end (`outbound`) and received by the other (`inbound`) comes back
//!   byte for byte, for IPv4 and IPv6 packets of many sizes up to the MTU, both ways;
//! - **keepalive** ([`check_keepalive`](Conformance::check_keepalive)): the empty packet
//!   passes both ways and arrives empty (lametun's keepalives cross the whole chain);
//! - **declared overhead** ([`check_overhead`](Conformance::check_overhead)): packets of
//!   every size up to the MTU, placed in buffers with *exactly* the declared head and tail
//!   room, pass and come back (a stage that needs more than its
//!   [`Overhead`](crate::Overhead) panics in `prepend`/`append`, one that gives up and
//!   drops fails the check); a stage whose
//!   [`grows_inbound`](crate::Stage::grows_inbound) is false must not make an inbound
//!   packet longer than its datagram;
//! - **more room than declared** ([`check_extra_room`](Conformance::check_extra_room)):
//!   in a chain, a buffer has the room of *every* stage, at any offset. The stage must
//!   still grow a packet by no more than it declared (a stage that pads "as far as the
//!   room goes" would break the MTU), and must not assume where the packet starts;
//! - **no panic on hostile input**
//!   ([`check_hostile_input`](Conformance::check_hostile_input)): random bytes, every
//!   truncation and single-bit flips of a genuine datagram, fed to `inbound` (what an
//!   attacker controls), and random bytes fed to `outbound`, never panic;
//! - **many threads** ([`check_concurrent`](Conformance::check_concurrent)): one chain
//!   serves every worker thread, so `outbound` runs on several threads at once; every
//!   packet still comes back;
//! - **time and metrics** ([`check_ticks_and_metrics`](Conformance::check_ticks_and_metrics)):
//!   `on_tick` with time jumping forward (and a tick older than the last packet) does
//!   not panic; metric names are snake_case, counters never go down;
//! - **config rejects unknown keys**
//!   ([`check_rejects_unknown_keys`](Conformance::check_rejects_unknown_keys)): a misspelt
//!   key is an error that names it, not a setting silently ignored;
//! - **the example parses** ([`check_example`](Conformance::check_example)): the
//!   [`StageConfig::EXAMPLE`](crate::StageConfig::EXAMPLE) that `lametun stages` shows
//!   deserializes into the config.
//!
//! Each check is a public method, so a stage whose nature excludes one (a filter that
//! drops what its rules say) can run the others one by one. A failing check panics with
//! a message that says which packet, which size and what was expected.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::stage::{Metric, MetricKind};
use crate::{BuildContext, PacketBuf, PacketMeta, Stage, StageRegistration, Verdict, registry};

/// The largest inner packet the kit sends unless told otherwise (an Ethernet-sized TUN
/// MTU); see [`Conformance::mtu`].
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
    cx: BuildContext,
    now: Instant,
    seed: u64,
    mtu: usize,
}

impl std::fmt::Debug for Conformance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conformance")
            .field("registration", &self.registration.map(|r| r.type_name))
            .field("mtu", &self.mtu)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

fn peer() -> SocketAddr {
    "192.0.2.1:1234".parse().expect("valid address")
}

/// Which end sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    AToB,
    BToA,
}

/// Where a packet sits in its storage: the room in front and behind it.
#[derive(Clone, Copy, Debug)]
struct Room {
    head: usize,
    tail: usize,
}

impl Room {
    /// Exactly the declared room.
    const NONE: Self = Self::new(0, 0);

    const fn new(head: usize, tail: usize) -> Self {
        Self { head, tail }
    }
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

    /// Builds the two ends from different YAML (for stages whose ends differ, or that
    /// write to a file: give each end its own).
    ///
    /// # Panics
    ///
    /// As [`from_yaml`](Self::from_yaml).
    pub fn from_yaml_pair(type_name: &str, yaml_a: &str, yaml_b: &str) -> Self {
        Self::from_yaml_pair_with(type_name, yaml_a, yaml_b, &BuildContext::default())
    }

    /// As [`from_yaml_pair`](Self::from_yaml_pair), building with `cx`, e.g. a context
    /// whose config directory is a scratch directory, so that relative paths in the
    /// stage's config land there.
    ///
    /// # Panics
    ///
    /// As [`from_yaml`](Self::from_yaml).
    pub fn from_yaml_pair_with(
        type_name: &str,
        yaml_a: &str,
        yaml_b: &str,
        cx: &BuildContext,
    ) -> Self {
        let reg = registry::find(type_name).unwrap_or_else(|| {
            panic!(
                "stage type {type_name:?} is not registered; known: {:?}. Is the stage's crate \
                 linked into this test binary? Add `use your_crate as _;` to the test",
                registry::names()
            )
        });
        let build = |y: &str| {
            reg.build_yaml(y, cx)
                .unwrap_or_else(|e| panic!("{type_name}: {y:?} does not build: {e}"))
        };
        Self {
            a: build(yaml_a),
            b: build(yaml_b),
            registration: Some(reg),
            valid_yaml: yaml_a.to_owned(),
            cx: cx.clone(),
            now: Instant::now(),
            seed: 0x5eed,
            mtu: MAX_PACKET,
        }
    }

    /// Wraps two already built stages (stages that are not registered, or need setup).
    /// The config checks are skipped.
    pub fn from_stages(a: Box<dyn Stage>, b: Box<dyn Stage>) -> Self {
        Self {
            a,
            b,
            registration: None,
            valid_yaml: String::new(),
            cx: BuildContext::default(),
            now: Instant::now(),
            seed: 0x5eed,
            mtu: MAX_PACKET,
        }
    }

    /// Sets the seed of the random inputs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the largest inner packet the checks send (the TUN MTU; default
    /// [`MAX_PACKET`]). A tunnel over jumbo frames or a 9000-byte veth wants more.
    ///
    /// # Panics
    ///
    /// Outside 68 (the IPv4 minimum) to 65535.
    pub fn mtu(mut self, mtu: usize) -> Self {
        assert!(
            (68..=65_535).contains(&mtu),
            "an MTU from 68 to 65535, not {mtu}"
        );
        self.mtu = mtu;
        self
    }

    fn meta(&self, step: u64) -> PacketMeta {
        PacketMeta::new(self.now + Duration::from_micros(step), Some(peer()))
    }

    fn ends(&self, way: Way) -> (&dyn Stage, &dyn Stage) {
        match way {
            Way::AToB => (&*self.a, &*self.b),
            Way::BToA => (&*self.b, &*self.a),
        }
    }

    /// Runs every check.
    pub fn run_all(&self) {
        self.check_round_trip(); // includes check_keepalive
        self.check_overhead();
        self.check_extra_room();
        self.check_hostile_input(2000);
        self.check_concurrent();
        self.check_ticks_and_metrics();
        self.check_rejects_unknown_keys();
        self.check_example();
    }

    /// Sends `inner` from `a` to `b`; returns what `b` delivers (`None` if a stage
    /// dropped it). Buffers have exactly the declared room.
    pub fn transfer(&self, inner: &[u8], step: u64) -> Option<Vec<u8>> {
        self.transfer_with(Way::AToB, inner, step, Room::NONE).ok()
    }

    /// Sends `inner` one way with `extra` room beyond the declared overhead on both
    /// sides of the outbound buffer, and checks that the sender grew the packet by no
    /// more than it declared. `Err` names the end that dropped it and why.
    fn transfer_with(
        &self,
        way: Way,
        inner: &[u8],
        step: u64,
        extra: Room,
    ) -> Result<Vec<u8>, String> {
        let (tx, rx) = self.ends(way);
        let oh = tx.overhead();
        let (head, tail) = (oh.head + extra.head, oh.tail + extra.tail);
        let mut storage = vec![0u8; head + inner.len() + tail];
        let mut pkt = PacketBuf::with_data(&mut storage, head, inner);
        let meta = self.meta(step);
        match tx.outbound(&mut pkt, &meta) {
            Verdict::Pass => {}
            other => return Err(format!("the sender's outbound said {other:?}")),
        }
        let grew_front = head.saturating_sub(pkt.start());
        let grew_back = pkt.end().saturating_sub(head + inner.len());
        assert!(
            grew_front <= oh.head && grew_back <= oh.tail,
            "outbound grew a {}-byte packet by {grew_front} bytes in front and {grew_back} \
             behind, but the stage declared {oh:?}: with more room in the buffer than it \
             declared (as in a chain), a stage must still add no more than its overhead",
            inner.len()
        );
        let wire = pkt.as_slice().to_vec();
        // Inbound: the datagram at an offset (the driver keeps a few bytes in front) with
        // room behind it up to the MTU, which is what stages that grow a packet on the
        // way in (decompression) may use.
        let front = 3 + extra.head;
        let mut storage = vec![0u8; front + wire.len() + self.mtu + extra.tail];
        let mut pkt = PacketBuf::with_data(&mut storage, front, &wire);
        let verdict = rx.inbound(&mut pkt, &meta);
        assert!(
            rx.grows_inbound() || pkt.end() <= front + wire.len(),
            "inbound made a {}-byte datagram end {} bytes further, but the stage's \
             grows_inbound() is false: the driver gives it no room behind the datagram",
            wire.len(),
            pkt.end() - (front + wire.len())
        );
        match verdict {
            Verdict::Pass => Ok(pkt.as_slice().to_vec()),
            other => Err(format!("the receiver's inbound said {other:?}")),
        }
    }

    /// Sends every packet both ways with `extra` room and asserts each one arrives
    /// unchanged; `what` says which check this is in the panic message.
    fn round_trips(&self, what: &str, packets: &[Vec<u8>], extra: Room) {
        for way in [Way::AToB, Way::BToA] {
            for (i, p) in packets.iter().enumerate() {
                let back = self
                    .transfer_with(way, p, i as u64, extra)
                    .unwrap_or_else(|e| {
                        panic!(
                            "{what}: packet {i} ({} bytes, {way:?}) was dropped: {e}",
                            p.len()
                        )
                    });
                assert!(
                    back == *p,
                    "{what}: packet {i} ({} bytes, {way:?}) came back changed ({} bytes)",
                    p.len(),
                    back.len()
                );
            }
        }
    }

    fn sample_packets(&self) -> Vec<Vec<u8>> {
        let (s4, d4) = ([172, 31, 255, 7], [172, 31, 255, 13]);
        let (s6, d6) = ([0xfd; 16], [0xfe; 16]);
        let mut v = vec![
            packets::icmp_echo_v4(s4, d4, 84),
            packets::tcp_syn_v4(s4, d4, 40000, 22),
            packets::udp_v6(s6, d6, 5353, 53, b"query"),
        ];
        for size in [28, 64, 576, 1280, 1400, self.mtu] {
            if size > self.mtu {
                continue;
            }
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

    /// Packets of many sizes in both IP versions, with random payloads, up to the MTU.
    fn sized_packets(&self) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(self.seed);
        let mtu = self.mtu;
        let mut sizes = vec![28, 29, 48, 49, 100, 576, 1000, 1280, mtu - 1, mtu];
        sizes.retain(|&s| s <= mtu);
        sizes.sort_unstable();
        sizes.dedup();
        let mut out = Vec::new();
        for size in sizes {
            let mut icmp = vec![0u8; size - 20];
            rng.fill(&mut icmp[8..]);
            icmp[0] = 8;
            let c = packets::checksum(&icmp);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            out.push(packets::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 1, &icmp));
            if size >= 48 {
                let mut payload = vec![0u8; size - 48];
                rng.fill(&mut payload);
                out.push(packets::udp_v6([0xfd; 16], [0xfe; 16], 3, 4, &payload));
            }
        }
        out
    }

    /// A packet sent out by one end and received by the other comes back byte for
    /// byte, both ways; the keepalive too ([`check_keepalive`](Self::check_keepalive)).
    pub fn check_round_trip(&self) {
        self.round_trips("round trip", &self.sample_packets(), Room::NONE);
        self.check_keepalive();
    }

    /// The empty packet (a keepalive) passes outbound and inbound, both ways, and
    /// arrives empty. Stages that parse IP headers must let it through untouched.
    pub fn check_keepalive(&self) {
        for way in [Way::AToB, Way::BToA] {
            match self.transfer_with(way, &[], 0, Room::NONE) {
                Ok(back) => assert!(
                    back.is_empty(),
                    "keepalive ({way:?}): the empty packet came back as {} bytes",
                    back.len()
                ),
                Err(e) => panic!(
                    "keepalive ({way:?}): the empty packet was dropped: {e}. lametun's \
                     keepalives are empty packets that cross the whole chain; a stage \
                     must let them pass"
                ),
            }
        }
    }

    /// Packets of every size up to the MTU fit in exactly the declared room, pass and
    /// come back (a stage that needs more panics in `prepend` or `append`).
    pub fn check_overhead(&self) {
        self.round_trips("declared overhead", &self.sized_packets(), Room::NONE);
    }

    /// With more room than declared, at odd offsets, a packet grows by no more than the
    /// declared overhead and still comes back unchanged.
    pub fn check_extra_room(&self) {
        let mut packets = self.sized_packets();
        packets.push(Vec::new());
        for extra in [Room::new(5, 0), Room::new(37, 123)] {
            self.round_trips("more room than declared", &packets, extra);
        }
    }

    /// Random bytes, truncated datagrams and datagrams with one bit flipped never make
    /// a stage panic.
    pub fn check_hostile_input(&self, iterations: usize) {
        let mut rng = Rng::new(self.seed);
        let oh = self.a.overhead();
        let mut storage = vec![0u8; oh.head + 2 * self.mtu + 64 + oh.tail];
        for i in 0..iterations {
            let len = match i % 4 {
                0 => rng.below(64),
                1 => rng.below(self.mtu + 64),
                _ => rng.below(256),
            };
            let mut data = vec![0u8; len];
            rng.fill(&mut data);
            self.hostile_inbound(&mut storage, oh.head, &data, i as u64);
            if len <= self.mtu {
                let mut pkt = PacketBuf::with_data(&mut storage, oh.head, &data);
                let _ = self.a.outbound(&mut pkt, &self.meta(i as u64));
            }
        }
        // Every truncation and some bit flips of genuine datagrams (a keepalive and a
        // packet): what a broken path or an attacker who saw real traffic sends.
        let inner = packets::udp_v4([10, 0, 0, 1], [10, 0, 0, 2], 1000, 2000, &[7u8; 200]);
        for inner in [&[][..], &inner[..]] {
            let mut sealed = vec![0u8; oh.head + inner.len() + oh.tail];
            let mut pkt = PacketBuf::with_data(&mut sealed, oh.head, inner);
            if self.a.outbound(&mut pkt, &self.meta(0)) != Verdict::Pass {
                continue;
            }
            let wire = pkt.as_slice().to_vec();
            for cut in 0..wire.len() {
                self.hostile_inbound(&mut storage, 0, &wire[..cut], cut as u64);
            }
            let mut flipped = wire.clone();
            for bit in (0..wire.len() * 8).step_by(7).take(400) {
                flipped.copy_from_slice(&wire);
                flipped[bit / 8] ^= 1 << (bit % 8);
                self.hostile_inbound(&mut storage, 0, &flipped, bit as u64);
            }
        }
    }

    /// Feeds `data` to `b`'s `inbound` at offset `at` of `storage`, or, for a stage
    /// whose `grows_inbound()` is false, in a buffer that ends where `data` does (as the
    /// driver runs such chains): growing there panics, also on input no genuine peer
    /// sends.
    fn hostile_inbound(&self, storage: &mut [u8], at: usize, data: &[u8], step: u64) {
        if self.b.grows_inbound() {
            let mut pkt = PacketBuf::with_data(storage, at, data);
            let _ = self.b.inbound(&mut pkt, &self.meta(step));
            assert!(pkt.end() <= storage.len());
        } else {
            let exact = &mut storage[..at + data.len()];
            let mut pkt = PacketBuf::with_data(exact, at, data);
            let _ = self.b.inbound(&mut pkt, &self.meta(step));
        }
    }

    /// `outbound` runs on four threads at once (as with one worker per TUN queue); the
    /// datagrams, delivered in about the order they were made, all come back.
    pub fn check_concurrent(&self) {
        const THREADS: usize = 4;
        const PER_THREAD: usize = 48;
        let packets = self.sample_packets();
        let ticket = AtomicUsize::new(0);
        let sent: Vec<(usize, usize, Vec<u8>)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (packets, ticket, a) = (&packets, &ticket, &*self.a);
                    let oh = a.overhead();
                    s.spawn(move || {
                        let mut out = Vec::new();
                        for k in 0..PER_THREAD {
                            let which = (t * PER_THREAD + k) % packets.len();
                            let inner = &packets[which];
                            let mut storage = vec![0u8; oh.head + inner.len() + oh.tail];
                            let mut pkt = PacketBuf::with_data(&mut storage, oh.head, inner);
                            let verdict = a.outbound(&mut pkt, &self.meta(k as u64));
                            assert_eq!(
                                verdict,
                                Verdict::Pass,
                                "concurrent outbound dropped packet {which} on thread {t}"
                            );
                            let order = ticket.fetch_add(1, Ordering::Relaxed);
                            out.push((order, which, pkt.as_slice().to_vec()));
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("an outbound thread panicked"))
                .collect()
        });
        let mut sent = sent;
        // About the order the datagrams left in: a replay window accepts that much.
        sent.sort_by_key(|(order, ..)| *order);
        assert_eq!(sent.len(), THREADS * PER_THREAD);
        for (order, which, wire) in sent {
            let mut storage = vec![0u8; wire.len() + self.mtu];
            let mut pkt = PacketBuf::with_data(&mut storage, 0, &wire);
            let verdict = self.b.inbound(&mut pkt, &self.meta(order as u64));
            assert!(
                verdict == Verdict::Pass && pkt.as_slice() == packets[which],
                "concurrent: datagram {order} (packet {which}) did not come back: {verdict:?}"
            );
        }
    }

    /// `on_tick` with time going forward by a second, by an hour, and a tick older than
    /// the last packet never panics; `describe` and `metrics` work before and after
    /// traffic; metric names are snake_case without the `lametun_` prefix, help texts
    /// are given, values are finite, and counters never go down.
    pub fn check_ticks_and_metrics(&self) {
        for (end, stage) in [("a", &*self.a), ("b", &*self.b)] {
            let _ = stage.describe();
            let before = metrics_of(end, stage);
            stage.on_tick(self.now);
            let _ = self.transfer(&packets::icmp_echo_v4([10, 0, 0, 1], [10, 0, 0, 2], 84), 5);
            stage.on_tick(self.now + Duration::from_secs(1));
            stage.on_tick(self.now + Duration::from_secs(3600));
            // The clock thread read the time before a worker read its batch's.
            stage.on_tick(self.now + Duration::from_secs(3599));
            let _ = self.transfer(&[], 3_600_000_000);
            let after = metrics_of(end, stage);
            for m in after.iter().filter(|m| m.kind == MetricKind::Counter) {
                if let Some(old) = before
                    .iter()
                    .find(|o| o.name == m.name && o.labels == m.labels)
                {
                    assert!(
                        m.value >= old.value,
                        "{end}: counter {} {:?} went down from {} to {}",
                        m.name,
                        m.labels,
                        old.value,
                        m.value
                    );
                }
            }
        }
    }

    /// A config with an extra, misspelt key does not build, and the error names the key.
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
        match reg.build_yaml(&yaml, &self.cx) {
            Ok(_) => panic!(
                "{}: an unknown key was accepted (add #[serde(deny_unknown_fields)] to the \
                 config struct): {yaml}",
                reg.type_name
            ),
            Err(e) => assert!(
                e.to_string().contains("no_such_key_xyz"),
                "{}: the error should name the unknown key, got: {e}",
                reg.type_name
            ),
        }
    }

    /// The stage's [`StageConfig::EXAMPLE`](crate::StageConfig::EXAMPLE), if it has one,
    /// is YAML with at least one pipeline entry of this type (a list of entries, one
    /// entry, or an excerpt with a `pipeline:` key), and every such entry deserializes
    /// into its config (it is not built: an example may name a key file that is not
    /// there).
    pub fn check_example(&self) {
        let Some(reg) = self.registration else { return };
        if reg.example.trim().is_empty() {
            return;
        }
        let name = reg.type_name;
        let value: yaml_serde::Value = yaml_serde::from_str(reg.example)
            .unwrap_or_else(|e| panic!("{name}: EXAMPLE is not YAML: {e}\n{}", reg.example));
        // The usual form is a list of pipeline entries; one entry alone, or a config
        // excerpt with a `pipeline:` key, are understood too.
        let value = match value.get("pipeline") {
            Some(pipeline) => pipeline.clone(),
            None => value,
        };
        let entries = match &value {
            yaml_serde::Value::Sequence(entries) => entries.clone(),
            yaml_serde::Value::Mapping(_) => vec![value.clone()],
            _ => {
                panic!("{name}: EXAMPLE should be a list of pipeline entries (`- type: {name}` …)")
            }
        };
        let mut seen = 0;
        for entry in &entries {
            if entry.get("type").and_then(yaml_serde::Value::as_str) != Some(name) {
                continue;
            }
            let yaml = yaml_serde::to_string(entry).expect("serializes");
            if let Err(e) = reg.parse_yaml(&yaml) {
                panic!("{name}: EXAMPLE does not parse: {e}\n{}", reg.example);
            }
            seen += 1;
        }
        assert!(seen > 0, "{name}: EXAMPLE has no entry `- type: {name}`");
    }
}

/// The stage's metrics, checked for well-formed names and values.
fn metrics_of(end: &str, stage: &dyn Stage) -> Vec<Metric> {
    fn snake(s: &str) -> bool {
        s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }
    let mut out = Vec::new();
    stage.metrics(&mut out);
    for m in &out {
        assert!(
            snake(m.name) && !m.name.starts_with("lametun_"),
            "{end}: metric name {:?}: use snake_case, without the lametun_ prefix (added on export)",
            m.name
        );
        assert!(
            !m.help.trim().is_empty(),
            "{end}: metric {} has no help text",
            m.name
        );
        assert!(
            m.value.is_finite(),
            "{end}: metric {} is {}",
            m.name,
            m.value
        );
        assert!(
            m.kind == MetricKind::Gauge || m.value >= 0.0,
            "{end}: counter {} is negative",
            m.name
        );
        for (label, _) in &m.labels {
            assert!(
                snake(label),
                "{end}: metric {}: label {label:?} is not snake_case",
                m.name
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BuildError, DropReason, Overhead, StageConfig};

    #[test]
    fn passthrough_conforms() {
        Conformance::from_yaml("passthrough", "{}").run_all();
        Conformance::from_yaml("passthrough", "")
            .mtu(9000)
            .seed(7)
            .run_all();
    }

    /// A stage that appends a 2-byte trailer (declared) and checks it on the way in;
    /// the knobs make it break one rule each.
    #[derive(Default)]
    struct Trailer {
        /// Appends this many bytes more than it declares.
        excess: usize,
        /// Pads into whatever tail room there is ("as far as the room goes").
        greedy: bool,
        /// Drops the empty packet.
        drops_keepalives: bool,
        /// Indexes the packet without a length check.
        trusts_input: bool,
        /// Grows inbound packets by a byte, though `grows_inbound` says it does not.
        grows_inbound_anyway: bool,
        /// The same, but only on datagrams too short to carry the trailer.
        grows_on_garbage: bool,
    }

    impl Stage for Trailer {
        fn overhead(&self) -> Overhead {
            Overhead::new(0, 2)
        }
        fn grows_inbound(&self) -> bool {
            false
        }
        fn outbound(&self, pkt: &mut PacketBuf<'_>, _: &PacketMeta) -> Verdict {
            if self.drops_keepalives && pkt.is_empty() {
                return Verdict::Drop(DropReason::TooShort);
            }
            let n = if self.greedy {
                pkt.tailroom()
            } else {
                2 + self.excess
            };
            let len = pkt.len();
            let tail = pkt.append(n);
            tail.fill(0);
            tail[n - 2..].copy_from_slice(&((n - 2 + len) as u16).to_be_bytes());
            Verdict::Pass
        }
        fn inbound(&self, pkt: &mut PacketBuf<'_>, _: &PacketMeta) -> Verdict {
            if self.trusts_input {
                let _ = pkt.as_slice()[1];
            }
            if self.grows_on_garbage && pkt.len() < 2 {
                pkt.append(1).fill(0);
            }
            let Some(t) = pkt.strip_back(2) else {
                return Verdict::Drop(DropReason::TooShort);
            };
            let len = u16::from_be_bytes([t[0], t[1]]) as usize;
            if len > pkt.len() {
                return Verdict::Drop(DropReason::Malformed);
            }
            let pad = pkt.len() - len;
            let _ = pkt.strip_back(pad);
            if self.grows_inbound_anyway {
                pkt.append(3).fill(0);
            }
            Verdict::Pass
        }
    }

    fn kit(stage: impl Fn() -> Trailer) -> Conformance {
        Conformance::from_stages(Box::new(stage()), Box::new(stage()))
    }

    #[test]
    fn a_well_behaved_stage_passes_everything_but_the_config_checks() {
        kit(Trailer::default).run_all();
    }

    #[test]
    #[should_panic(expected = "declared overhead")]
    fn growing_past_the_declared_overhead_is_caught() {
        kit(|| Trailer {
            excess: 1,
            ..Default::default()
        })
        .check_overhead();
    }

    #[test]
    #[should_panic(expected = "grows_inbound() is false")]
    fn growing_an_inbound_packet_after_promising_not_to_is_caught() {
        kit(|| Trailer {
            grows_inbound_anyway: true,
            ..Default::default()
        })
        .check_overhead();
    }

    #[test]
    #[should_panic(expected = "Stage::grows_inbound")]
    fn growing_an_inbound_packet_only_on_garbage_is_caught_too() {
        let kit = kit(|| Trailer {
            grows_on_garbage: true,
            ..Default::default()
        });
        kit.check_overhead(); // genuine datagrams never take that path
        kit.check_hostile_input(100);
    }

    #[test]
    #[should_panic(expected = "a stage must still add no more than its overhead")]
    fn padding_into_room_that_was_not_declared_is_caught() {
        kit(|| Trailer {
            greedy: true,
            ..Default::default()
        })
        .check_extra_room();
    }

    #[test]
    #[should_panic(expected = "must let them pass")]
    fn dropping_keepalives_is_caught() {
        kit(|| Trailer {
            drops_keepalives: true,
            ..Default::default()
        })
        .check_round_trip();
    }

    #[test]
    #[should_panic(expected = "index out of bounds")]
    fn trusting_input_length_is_caught() {
        kit(|| Trailer {
            trusts_input: true,
            ..Default::default()
        })
        .check_hostile_input(100);
    }

    /// A registered config without `deny_unknown_fields`, and with a broken example.
    #[derive(serde::Deserialize)]
    struct LaxConfig {
        #[serde(default)]
        _level: u8,
    }

    impl StageConfig for LaxConfig {
        const TYPE: &'static str = "kit-test-lax";
        const SUMMARY: &'static str = "test only";
        const EXAMPLE: &'static str = "- type: kit-test-lax\n  _level: high\n";
        type Stage = crate::stages::passthrough::Passthrough;
        fn build(self, _: &BuildContext) -> Result<Self::Stage, BuildError> {
            Ok(crate::stages::passthrough::Passthrough)
        }
    }

    crate::register_stage!(LaxConfig);

    #[test]
    #[should_panic(expected = "deny_unknown_fields")]
    fn accepting_unknown_keys_is_caught() {
        Conformance::from_yaml("kit-test-lax", "{}").check_rejects_unknown_keys();
    }

    #[test]
    #[should_panic(expected = "EXAMPLE does not parse")]
    fn an_example_that_does_not_parse_is_caught() {
        Conformance::from_yaml("kit-test-lax", "{}").check_example();
    }

    /// The forms of EXAMPLE that `check_example` understands.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ExcerptConfig {
        #[serde(default)]
        _level: u8,
    }

    impl StageConfig for ExcerptConfig {
        const TYPE: &'static str = "kit-test-excerpt";
        const SUMMARY: &'static str = "test only";
        const EXAMPLE: &'static str = "# a comment\npipeline:\n  - type: passthrough\n  - type: kit-test-excerpt\n    _level: 3\n";
        type Stage = crate::stages::passthrough::Passthrough;
        fn build(self, _: &BuildContext) -> Result<Self::Stage, BuildError> {
            Ok(crate::stages::passthrough::Passthrough)
        }
    }

    crate::register_stage!(ExcerptConfig);

    #[test]
    fn an_example_may_be_a_config_excerpt() {
        Conformance::from_yaml("kit-test-excerpt", "{}").run_all();
    }

    #[test]
    fn the_passthrough_example_parses_without_building() {
        let reg = registry::find("passthrough").unwrap();
        assert!(reg.parse_yaml("type: passthrough").is_ok());
        let e = reg.parse_yaml("{bogus: 1}").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    #[should_panic(expected = "is not registered")]
    fn an_unlinked_stage_says_how_to_link_it() {
        let _ = Conformance::from_yaml("no-such-stage", "{}");
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
