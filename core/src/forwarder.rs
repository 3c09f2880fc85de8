//! [`Forwarder`]: the whole tunnel logic, minus IO. Feed it what arrived; it says where
//! the bytes go next.
//!
//! This is the article's lametun as a state machine. Its two goroutines become two
//! methods: [`handle_tun`](Forwarder::handle_tun) for a packet read from the TUN device
//! and [`handle_udp`](Forwarder::handle_udp) for a datagram from the socket. Each returns
//! an [`Outcome`] that the driver carries out. On top of the article:
//!
//! - the packet goes through the [`Pipeline`] of stages;
//! - the packet-information header is written and checked here (see [`crate::wire`]);
//! - the listening side learns its peer only from a datagram that the *whole* inbound
//!   chain accepted. The Go program sets `raddr = addr` on any datagram, so anyone who
//!   can send one UDP packet to port 1234 steals the return path; with an authenticating
//!   stage in the chain, a forged datagram here changes nothing;
//! - the connecting side accepts datagrams only from the server it was given;
//! - keepalives (an empty inner packet through the whole chain) keep a NAT mapping and
//!   the server's learned address fresh, and let the server learn a quiet client.
//!
//! The forwarder is shared by all driver threads (`&self` everywhere): counters are
//! atomics and the peer address is swapped atomically.
//!
//! # Paths
//!
//! A tunnel may carry its datagrams over several sockets at once (one per worker, so
//! that several threads receive): the forwarder calls each one a *path*, numbered from
//! 0, and the driver says on which one a datagram arrived
//! ([`handle_udp_on`](Forwarder::handle_udp_on)) and asks where each one sends
//! ([`peer_for`](Forwarder::peer_for)). A connecting side sends every path to its
//! server. A listening side learns an address per path, because a client with several
//! sockets reaches it from several ports. The datagrams of one inner flow should keep to
//! one client socket (two would let the flow's packets overtake each other in the
//! client's two receiving threads), so the choice of address must not flap:
//!
//! - a path keeps the address it learned while that address is *active* (heard within
//!   [`PATH_FRESH`]). A datagram from another port of the same host meanwhile (another
//!   socket of the client, on a server with fewer paths than the client has sockets) is
//!   accepted but teaches the path nothing. A datagram from another host (roaming), or
//!   from a new port once the old one went quiet (a NAT that gave the client a new
//!   port, a restarted client), moves the path at once;
//! - a path answers its own address while it is *fresh*: heard within [`PATH_FRESH`] of
//!   the newest datagram on any path, and of the host that datagram came from;
//! - otherwise (a path that never heard from the peer, a client socket gone quiet, a
//!   client that roamed away) it answers the *primary* address: that of the
//!   lowest-numbered fresh path, which stays the same for as long as that path hears
//!   from the client. [`peer`](Forwarder::peer) returns it too.
//!
//! An empty datagram (a plaintext keepalive without packet information, but also what a
//! port scanner sends) says nothing about its sender. It teaches by these rules only
//! until a datagram with content has taught the peer; from then on, only when it comes
//! from the host of the current peer (a new port of the client, after a NAT or a
//! restart). Otherwise a scan of an idle plaintext server would turn its answers to the
//! scanner until the client's next packet. The price: a plaintext client without packet
//! information that roams to another host while it sends nothing but keepalives is
//! followed at its first real packet, not at its first keepalive.
//!
//! With one path (the default on a client, and the Go lametun's way) this is the
//! article's rule, answer the last address heard from, except that a new port of the
//! same host replaces the known one only once the known one has been quiet for
//! [`PATH_FRESH`].
//!
//! These rules keep a flow's replies on one client socket when the driver lines the
//! paths up with the flows (a client's socket *i* reaching the server's path *i*, which
//! answers the flows the client sent from socket *i*: see the driver's `bind_paths`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::pipeline::{Dropped, Pipeline};
use crate::ratelimit::{LogLimiter, LogPermit};
use crate::telemetry::{SnapshotSource, TelemetryHandle, TunnelCounters, TunnelSnapshot};
use crate::wire::{self, IpVersion};
use crate::{DropReason, Overhead, PacketBuf, PacketMeta};

/// How the forwarder finds its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerMode {
    /// The `-listen` side: learn the peer from the datagrams that the chain accepts, and
    /// answer there.
    Learn,
    /// The `-server HOST` side: send to this address, accept datagrams only from it.
    Fixed(SocketAddr),
}

/// Settings of a [`Forwarder`].
#[derive(Clone, Copy, Debug)]
pub struct ForwarderConfig {
    /// Put the 4-byte packet-information header in every datagram (the Go lametun's
    /// wire format).
    pub packet_info: bool,
    /// How the peer is found.
    pub peer: PeerMode,
    /// Send a keepalive when nothing was sent for this long (`None`: never).
    pub keepalive: Option<Duration>,
    /// Number of paths (sockets) the datagrams travel on, at least 1 (see
    /// [Paths](self#paths)).
    pub paths: usize,
}

/// How long a listening forwarder's path keeps its address without hearing from it,
/// and how far behind the newest datagram a path may be and still answer its own
/// address (see [Paths](self#paths)).
pub const PATH_FRESH: Duration = Duration::from_millis(250);
const PATH_FRESH_MS: u64 = PATH_FRESH.as_millis() as u64;

/// Where to send a datagram: the peer's address, and the local address to send from
/// (the one the peer's datagrams arrived at, so that a multi-homed server answers
/// from the address the client knows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The peer.
    pub addr: SocketAddr,
    /// Our source address for datagrams to it, if known.
    pub local_ip: Option<IpAddr>,
}

/// What the driver must do with a packet after the forwarder looked at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send the buffer's bytes as one UDP datagram to this endpoint.
    Send(Endpoint),
    /// Write the buffer's bytes (an IP packet) to the TUN device.
    WriteTun,
    /// A keepalive arrived and was accepted; nothing to write.
    Keepalive,
    /// Dropped (already counted).
    Drop(Dropped),
}

/// What a listening forwarder knows of the peer on one path. Aligned to its own cache
/// lines: each path is written by the thread that receives on it, for every datagram.
#[repr(align(128))]
#[derive(Default)]
struct PathPeer {
    /// The address the path last heard from.
    endpoint: ArcSwapOption<Endpoint>,
    /// Milliseconds after `epoch` of the last datagram accepted on it, plus one (0 = never).
    seen_ms: AtomicU64,
}

/// The tunnel logic without IO. See the [module documentation](self).
pub struct Forwarder {
    pipeline: Pipeline,
    config: ForwarderConfig,
    /// The server (connecting side).
    fixed: Option<Endpoint>,
    /// What each path learned (listening side).
    paths: Box<[PathPeer]>,
    epoch: Instant,
    /// Milliseconds after `epoch` of the last datagram sent, plus one (0 = never).
    last_sent_ms: AtomicU64,
    counters: TunnelCounters,
    drop_log: LogLimiter,
    /// Limits the lines about a path's new port (a few a second at most anyway).
    peer_log: LogLimiter,
    /// Whether a datagram carrying something taught the peer's address (see
    /// [Paths](self#paths)): from then on an empty datagram from another host moves
    /// nothing.
    confirmed: AtomicBool,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("pipeline", &self.pipeline)
            .field("config", &self.config)
            .field("peer", &self.peer())
            .finish_non_exhaustive()
    }
}

fn core_drop(reason: DropReason) -> Dropped {
    Dropped {
        stage: None,
        stage_type: "core",
        reason,
    }
}

/// `::ffff:a.b.c.d` (how a dual-stack socket reports an IPv4 sender) as `a.b.c.d`.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Forwarder {
    /// A forwarder for `pipeline` and attaches `telemetry` (the handle given to the
    /// stages at build time) to it. `now` is the start of its clock.
    pub fn new(
        pipeline: Pipeline,
        config: ForwarderConfig,
        telemetry: &TelemetryHandle,
        now: Instant,
    ) -> Arc<Self> {
        let fixed = match config.peer {
            PeerMode::Fixed(addr) => Some(Endpoint {
                addr: canonical(addr),
                local_ip: None,
            }),
            PeerMode::Learn => None,
        };
        let fwd = Arc::new(Self {
            pipeline,
            config,
            fixed,
            paths: (0..config.paths.max(1))
                .map(|_| PathPeer::default())
                .collect(),
            epoch: now,
            last_sent_ms: AtomicU64::new(0),
            counters: TunnelCounters::default(),
            drop_log: LogLimiter::new(10),
            peer_log: LogLimiter::new(2),
            confirmed: AtomicBool::new(false),
        });
        let weak: std::sync::Weak<dyn SnapshotSource> = Arc::downgrade(&fwd) as _;
        telemetry.attach(weak);
        fwd
    }

    /// The stage chain.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The settings.
    pub fn config(&self) -> &ForwarderConfig {
        &self.config
    }

    /// The tunnel's counters.
    pub fn counters(&self) -> &TunnelCounters {
        &self.counters
    }

    /// Bytes added in front of an inner packet on its way out (packet info + stages):
    /// the head room every buffer needs.
    pub fn headroom(&self) -> usize {
        self.packet_info_len() + self.pipeline.overhead().head
    }

    /// Bytes added behind an inner packet on its way out: the tail room every buffer needs.
    pub fn tailroom(&self) -> usize {
        self.pipeline.overhead().tail
    }

    /// Everything added inside the UDP payload.
    pub fn overhead(&self) -> Overhead {
        Overhead::new(self.headroom(), self.tailroom())
    }

    fn packet_info_len(&self) -> usize {
        if self.config.packet_info {
            crate::mtu::PACKET_INFO_LEN
        } else {
            0
        }
    }

    /// The number of paths.
    pub fn paths(&self) -> usize {
        self.paths.len()
    }

    /// Where the tunnel's datagrams go now: the server, or a listener's primary address
    /// (see [Paths](self#paths)). For the datagrams of one path, ask
    /// [`peer_for`](Self::peer_for).
    pub fn peer(&self) -> Option<Endpoint> {
        self.fixed.or_else(|| {
            let newest = self.newest()?;
            self.primary(newest)
        })
    }

    /// Where the datagrams of `path` go (see [Paths](self#paths)). The driver reads it
    /// once per batch.
    pub fn peer_for(&self, path: usize) -> Option<Endpoint> {
        if let Some(fixed) = self.fixed {
            return Some(fixed);
        }
        let newest = self.newest()?;
        let own = self.path(path);
        match own.endpoint.load().as_deref() {
            Some(e) if Self::fresh(own, newest, e) => Some(*e),
            _ => self.primary(newest),
        }
    }

    /// The newest datagram accepted on any path: its time and its address.
    fn newest(&self) -> Option<(u64, Endpoint)> {
        let (index, seen) = self
            .paths
            .iter()
            .map(|p| p.seen_ms.load(Ordering::Acquire))
            .enumerate()
            .max_by_key(|&(i, seen)| (seen, std::cmp::Reverse(i)))?;
        Some((seen, *self.paths[index].endpoint.load().as_deref()?))
    }

    /// Whether `path`, which knows `e`, heard from it within [`PATH_FRESH`] of the
    /// `newest` datagram, and `e` is on the host that datagram came from.
    fn fresh(path: &PathPeer, (top, newest): (u64, Endpoint), e: &Endpoint) -> bool {
        let seen = path.seen_ms.load(Ordering::Acquire);
        seen != 0 && top.saturating_sub(seen) <= PATH_FRESH_MS && e.addr.ip() == newest.addr.ip()
    }

    /// The address of the lowest-numbered fresh path (there is one: the newest).
    fn primary(&self, newest: (u64, Endpoint)) -> Option<Endpoint> {
        self.paths
            .iter()
            .find_map(|p| {
                let e = *p.endpoint.load().as_deref()?;
                Self::fresh(p, newest, &e).then_some(e)
            })
            .or(Some(newest.1))
    }

    /// Path `index` (the last one if out of range: a driver bug, caught in debug builds).
    fn path(&self, index: usize) -> &PathPeer {
        debug_assert!(
            index < self.paths.len(),
            "path {index} of {}",
            self.paths.len()
        );
        &self.paths[index.min(self.paths.len() - 1)]
    }

    /// Milliseconds after `epoch`, plus one (so that 0 can mean never).
    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    /// A packet read from the TUN device, to be sent to `peer` (what [`peer`](Self::peer)
    /// returned for this batch). On [`Outcome::Send`] the buffer holds the datagram.
    pub fn handle_tun(
        &self,
        pkt: &mut PacketBuf<'_>,
        peer: Option<&Endpoint>,
        now: Instant,
    ) -> Outcome {
        self.counters.tun_rx_packets.inc();
        self.counters.tun_rx_bytes.add(pkt.len() as u64);
        // The device only hands us IP packets; a packet that is not one would have no
        // EtherType for the packet-information header.
        let Some(version) = IpVersion::of(pkt.as_slice()) else {
            return self.drop_outbound(DropReason::Malformed, now);
        };
        // The article's "UDP connection to server has not been established yet".
        let Some(peer) = peer else {
            return self.drop_outbound(DropReason::NoPeer, now);
        };
        self.seal(pkt, version, *peer, now)
    }

    /// Runs an outbound packet (or an empty keepalive) through the chain and frames it.
    fn seal(
        &self,
        pkt: &mut PacketBuf<'_>,
        version: IpVersion,
        peer: Endpoint,
        now: Instant,
    ) -> Outcome {
        let meta = PacketMeta::new(now, Some(peer.addr));
        if let Err(dropped) = self.pipeline.outbound(pkt, &meta) {
            self.log_drop(dropped, now, None);
            return Outcome::Drop(dropped);
        }
        if self.config.packet_info {
            pkt.prepend(crate::mtu::PACKET_INFO_LEN)
                .copy_from_slice(&wire::packet_info(version));
        }
        self.counters.core_outbound.pass();
        Outcome::Send(peer)
    }

    fn drop_outbound(&self, reason: DropReason, now: Instant) -> Outcome {
        self.counters.core_outbound.drop_for(reason);
        let dropped = core_drop(reason);
        if reason != DropReason::NoPeer {
            self.log_drop(dropped, now, None);
        }
        Outcome::Drop(dropped)
    }

    fn drop_inbound(&self, reason: DropReason, from: SocketAddr, now: Instant) -> Outcome {
        self.counters.core_inbound.drop_for(reason);
        let dropped = core_drop(reason);
        self.log_drop(dropped, now, Some(from));
        Outcome::Drop(dropped)
    }

    fn log_drop(&self, dropped: Dropped, now: Instant, from: Option<SocketAddr>) {
        if let LogPermit::Log { suppressed } = self.drop_log.check(now) {
            tracing::debug!(
                stage = dropped.stage_type,
                reason = %dropped.reason,
                from = ?from,
                suppressed,
                "dropped a packet"
            );
        }
    }

    /// A datagram received from `from` on local address `local_ip`, on path 0. On
    /// [`Outcome::WriteTun`] the buffer holds the IP packet.
    pub fn handle_udp(
        &self,
        pkt: &mut PacketBuf<'_>,
        from: SocketAddr,
        local_ip: Option<IpAddr>,
        now: Instant,
    ) -> Outcome {
        self.handle_udp_on(0, pkt, from, local_ip, now)
    }

    /// A datagram received on `path` from `from`, on local address `local_ip`. On
    /// [`Outcome::WriteTun`] the buffer holds the IP packet.
    pub fn handle_udp_on(
        &self,
        path: usize,
        pkt: &mut PacketBuf<'_>,
        from: SocketAddr,
        local_ip: Option<IpAddr>,
        now: Instant,
    ) -> Outcome {
        self.counters.udp_rx_datagrams.inc();
        self.counters.udp_rx_bytes.add(pkt.len() as u64);
        // An empty datagram (a plaintext keepalive without packet info, or a port
        // scanner's probe) is no evidence of who sent it: see `learn`.
        let evidence = !pkt.is_empty();
        let from = canonical(from);
        if let PeerMode::Fixed(server) = self.config.peer
            && canonical(server) != from
        {
            return self.drop_inbound(DropReason::UnknownSource, from, now);
        }
        let claimed = if self.config.packet_info {
            let Some(header) = pkt.strip_front(crate::mtu::PACKET_INFO_LEN) else {
                return self.drop_inbound(DropReason::TooShort, from, now);
            };
            let header: [u8; 4] = (&*header).try_into().expect("4 bytes");
            match IpVersion::from_ethertype(wire::parse_packet_info(&header)) {
                Some(v) => Some(v),
                None => return self.drop_inbound(DropReason::Malformed, from, now),
            }
        } else {
            None
        };
        let meta = PacketMeta::new(now, Some(from));
        if let Err(dropped) = self.pipeline.inbound(pkt, &meta) {
            self.log_drop(dropped, now, Some(from));
            return Outcome::Drop(dropped);
        }
        if pkt.is_empty() {
            self.counters.core_inbound.pass();
            self.counters.keepalives_received.inc();
            self.learn(path, from, local_ip, now, evidence);
            return Outcome::Keepalive;
        }
        match wire::check_ip(pkt.as_slice()) {
            Ok(version) if claimed.is_none_or(|c| c == version) => {}
            Ok(_) => return self.drop_inbound(DropReason::Malformed, from, now),
            Err(reason) => return self.drop_inbound(reason, from, now),
        }
        self.counters.core_inbound.pass();
        self.learn(path, from, local_ip, now, true);
        Outcome::WriteTun
    }

    /// Remembers `from` as the peer on `path` (listening side only), by the rules of
    /// [Paths](self#paths). Called only for datagrams the whole chain accepted;
    /// `evidence` is false for a datagram that was empty on the wire.
    fn learn(
        &self,
        path: usize,
        from: SocketAddr,
        local_ip: Option<IpAddr>,
        now: Instant,
        evidence: bool,
    ) {
        if self.config.peer != PeerMode::Learn {
            return;
        }
        if evidence {
            if !self.confirmed.load(Ordering::Relaxed) {
                self.confirmed.store(true, Ordering::Relaxed);
            }
        } else if self.confirmed.load(Ordering::Relaxed)
            && self.peer().is_some_and(|p| p.addr.ip() != from.ip())
        {
            if let LogPermit::Log { suppressed } = self.peer_log.check(now) {
                tracing::debug!(from = %from, suppressed, "an empty datagram from another host did not move the peer");
            }
            return;
        }
        let own = self.path(path);
        let ms = self.ms(now);
        let new = Endpoint {
            addr: from,
            local_ip,
        };
        let seen = own.seen_ms.load(Ordering::Relaxed);
        match own.endpoint.load().as_deref() {
            Some(known) if *known == new => {}
            // Another port of the same host while the known one is active: another
            // socket of a client with more sockets than this end has paths.
            Some(known)
                if known.addr.ip() == from.ip()
                    && known.addr.port() != from.port()
                    && seen != 0
                    && ms.saturating_sub(seen) <= PATH_FRESH_MS =>
            {
                return;
            }
            known => {
                match (self.peer(), known) {
                    (None, _) => tracing::info!(peer = %from, "learned the peer's address"),
                    (Some(old), _) if old.addr.ip() != from.ip() => {
                        tracing::info!(old = %old.addr, new = %from, "peer address changed")
                    }
                    // One path: the client's NAT gave it a new port, or it restarted.
                    (Some(_), Some(k)) if k.addr != from && self.paths.len() == 1 => {
                        tracing::info!(old = %k.addr, new = %from, "peer address changed")
                    }
                    (Some(_), Some(k)) if k.addr != from => {
                        if let LogPermit::Log { suppressed } = self.peer_log.check(now) {
                            tracing::info!(path, old = %k.addr, new = %from, suppressed, "peer port changed on a path");
                        }
                    }
                    (Some(_), Some(_)) => {
                        tracing::debug!(peer = %from, local = ?local_ip, "peer's local address changed")
                    }
                    (Some(_), None) => {
                        tracing::debug!(path, peer = %from, "path learned the peer's address")
                    }
                }
                self.counters.peer_changes.inc();
                own.endpoint.store(Some(Arc::new(new)));
            }
        }
        if seen < ms {
            // Release: whoever sees this time also sees the address stored above.
            own.seen_ms.store(ms, Ordering::Release);
        }
    }

    /// The driver reports that it sent datagrams at `now` (once per batch is enough).
    pub fn note_sent(&self, now: Instant) {
        self.last_sent_ms.fetch_max(self.ms(now), Ordering::Relaxed);
    }

    /// If a keepalive is due at `now`, builds it in `pkt` (which must be empty, with the
    /// forwarder's head and tail room) and says where to send it. Due means: keepalives
    /// are on, a peer is known, and nothing was sent for the keepalive interval (or
    /// nothing was ever sent: the first one goes out at once, so that the server learns
    /// a client that has no traffic yet).
    pub fn poll_keepalive(&self, pkt: &mut PacketBuf<'_>, now: Instant) -> Option<Endpoint> {
        let interval = self.config.keepalive?;
        let peer = self.peer()?;
        let last = self.last_sent_ms.load(Ordering::Relaxed);
        if last != 0 && self.ms(now).saturating_sub(last) < interval.as_millis() as u64 {
            return None;
        }
        debug_assert!(pkt.is_empty());
        // An empty packet has no IP version; the header says IPv4, which the kernel of a
        // Go lametun peer accepts for a 4-byte write (and then discards as too short).
        match self.seal(pkt, IpVersion::V4, peer, now) {
            Outcome::Send(to) => {
                self.counters.keepalives_sent.inc();
                self.note_sent(now);
                Some(to)
            }
            _ => None,
        }
    }

    /// Gives the stages the time (about once a second).
    pub fn handle_tick(&self, now: Instant) {
        self.pipeline.on_tick(now);
    }
}

impl SnapshotSource for Forwarder {
    fn snapshot(&self) -> TunnelSnapshot {
        TunnelSnapshot {
            peer: self.peer().map(|p| p.addr),
            counters: self.counters.values(),
            core_outbound: self.counters.core_outbound.snapshot(),
            core_inbound: self.counters.core_inbound.snapshot(),
            stages: self.pipeline.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Stage, Verdict};

    const SERVER: &str = "192.0.2.1:1234";
    const CLIENT: &str = "198.51.100.7:40000";

    fn icmp_v4() -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[9] = 1;
        p
    }

    fn fwd(peer: PeerMode, packet_info: bool, pipeline: Pipeline) -> Arc<Forwarder> {
        Forwarder::new(
            pipeline,
            ForwarderConfig {
                packet_info,
                peer,
                keepalive: Some(Duration::from_secs(25)),
                paths: 1,
            },
            &TelemetryHandle::default(),
            Instant::now(),
        )
    }

    /// Drops every inbound datagram whose first byte is 0xff: a stand-in for an
    /// authenticating stage.
    struct Auth;
    impl Stage for Auth {
        fn inbound(&self, pkt: &mut PacketBuf<'_>, _: &PacketMeta) -> Verdict {
            if pkt.as_slice().first() == Some(&0xff) {
                Verdict::Drop(DropReason::BadTag)
            } else {
                Verdict::Pass
            }
        }
    }

    #[test]
    fn outbound_writes_the_go_wire_format() {
        let server: SocketAddr = SERVER.parse().unwrap();
        let f = fwd(PeerMode::Fixed(server), true, Pipeline::new());
        let mut storage = [0u8; 64];
        let mut pkt = PacketBuf::with_data(&mut storage, f.headroom(), &icmp_v4());
        let peer = f.peer();
        assert_eq!(
            f.handle_tun(&mut pkt, peer.as_ref(), Instant::now()),
            Outcome::Send(Endpoint {
                addr: server,
                local_ip: None
            })
        );
        assert_eq!(&pkt.as_slice()[..4], &[0, 0, 0x08, 0x00]);
        assert_eq!(&pkt.as_slice()[4..], &icmp_v4()[..]);
    }

    #[test]
    fn listener_has_no_peer_until_a_datagram_arrives_then_answers_it() {
        let f = fwd(PeerMode::Learn, true, Pipeline::new());
        let now = Instant::now();
        let mut storage = [0u8; 64];
        let mut pkt = PacketBuf::with_data(&mut storage, f.headroom(), &icmp_v4());
        assert!(matches!(
            f.handle_tun(&mut pkt, None, now),
            Outcome::Drop(Dropped {
                reason: DropReason::NoPeer,
                ..
            })
        ));

        let client: SocketAddr = CLIENT.parse().unwrap();
        let mut datagram = vec![0, 0, 0x08, 0x00];
        datagram.extend(icmp_v4());
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &datagram);
        assert_eq!(f.handle_udp(&mut pkt, client, None, now), Outcome::WriteTun);
        assert_eq!(pkt.as_slice(), &icmp_v4()[..]);
        assert_eq!(f.peer().unwrap().addr, client);
        assert_eq!(f.counters().peer_changes.get(), 1);
    }

    #[test]
    fn v4_mapped_sources_are_canonical() {
        let f = fwd(PeerMode::Learn, false, Pipeline::new());
        let mut storage = [0u8; 64];
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &icmp_v4());
        let mapped: SocketAddr = "[::ffff:198.51.100.7]:40000".parse().unwrap();
        assert_eq!(
            f.handle_udp(&mut pkt, mapped, None, Instant::now()),
            Outcome::WriteTun
        );
        assert_eq!(f.peer().unwrap().addr, CLIENT.parse().unwrap());
    }

    #[test]
    fn a_datagram_the_chain_refuses_does_not_move_the_peer() {
        let mut p = Pipeline::new();
        p.push("auth", "auth", Box::new(Auth));
        let f = fwd(PeerMode::Learn, false, p);
        let now = Instant::now();
        let client: SocketAddr = CLIENT.parse().unwrap();
        let mut storage = [0u8; 64];
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &icmp_v4());
        assert_eq!(f.handle_udp(&mut pkt, client, None, now), Outcome::WriteTun);

        let attacker: SocketAddr = "203.0.113.66:1234".parse().unwrap();
        let mut forged = icmp_v4();
        forged[0] = 0xff;
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &forged);
        assert!(matches!(
            f.handle_udp(&mut pkt, attacker, None, now),
            Outcome::Drop(Dropped {
                stage: Some(0),
                reason: DropReason::BadTag,
                ..
            })
        ));
        assert_eq!(f.peer().unwrap().addr, client);
    }

    #[test]
    fn garbage_is_dropped_and_counted_by_reason() {
        let f = fwd(PeerMode::Learn, true, Pipeline::new());
        let now = Instant::now();
        let from: SocketAddr = CLIENT.parse().unwrap();
        let cases: &[(&[u8], &str)] = &[
            (b"\x00\x00", "too_short"),
            (b"\x00\x00\x08\x06abcdefgh", "malformed"), // ARP EtherType
            (b"\x00\x00\x08\x00\x45\x00", "too_short"), // truncated IPv4 header
            (b"\x00\x00\x86\xdd\x45\x00\x00\x14\x00\x00\x00\x00\x40\x01\x00\x00\x0a\x00\x00\x01\x0a\x00\x00\x02", "malformed"), // header says IPv6, packet is IPv4
            (b"\x00\x00\x08\x00\x15\x15\x15\x15\x15\x15\x15\x15\x15\x15\x15\x15\x15\x15\x15\x15\x15\x15\x15\x15", "malformed"), // version 1
        ];
        for (datagram, _) in cases {
            let mut storage = [0u8; 64];
            let mut pkt = PacketBuf::with_data(&mut storage, 0, datagram);
            assert!(matches!(
                f.handle_udp(&mut pkt, from, None, now),
                Outcome::Drop(_)
            ));
        }
        let drops = f.counters().core_inbound.snapshot();
        assert_eq!(drops.dropped_for("too_short"), 2);
        assert_eq!(drops.dropped_for("malformed"), 3);
        assert!(
            f.peer().is_none(),
            "garbage must not teach the listener a peer"
        );
    }

    #[test]
    fn client_ignores_datagrams_from_other_addresses() {
        let f = fwd(
            PeerMode::Fixed(SERVER.parse().unwrap()),
            false,
            Pipeline::new(),
        );
        let mut storage = [0u8; 64];
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &icmp_v4());
        let other: SocketAddr = "192.0.2.99:1234".parse().unwrap();
        assert!(matches!(
            f.handle_udp(&mut pkt, other, None, Instant::now()),
            Outcome::Drop(Dropped {
                reason: DropReason::UnknownSource,
                ..
            })
        ));
    }

    #[test]
    fn keepalives_go_out_at_once_then_after_idle_intervals_and_teach_the_listener() {
        let server: SocketAddr = SERVER.parse().unwrap();
        let t0 = Instant::now();
        let client = fwd(PeerMode::Fixed(server), true, Pipeline::new());
        let mut storage = [0u8; 64];
        let room = client.headroom();
        let mut pkt = PacketBuf::new(&mut storage, room, 0);
        assert_eq!(client.poll_keepalive(&mut pkt, t0).unwrap().addr, server);
        assert_eq!(pkt.as_slice(), &[0, 0, 0x08, 0x00]);

        let mut pkt = PacketBuf::new(&mut storage, room, 0);
        assert!(
            client
                .poll_keepalive(&mut pkt, t0 + Duration::from_secs(10))
                .is_none()
        );
        client.note_sent(t0 + Duration::from_secs(20));
        let mut pkt = PacketBuf::new(&mut storage, room, 0);
        assert!(
            client
                .poll_keepalive(&mut pkt, t0 + Duration::from_secs(40))
                .is_none()
        );
        let mut pkt = PacketBuf::new(&mut storage, room, 0);
        assert!(
            client
                .poll_keepalive(&mut pkt, t0 + Duration::from_secs(45))
                .is_some()
        );
        assert_eq!(client.counters().keepalives_sent.get(), 2);

        let listener = fwd(PeerMode::Learn, true, Pipeline::new());
        let from: SocketAddr = CLIENT.parse().unwrap();
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &[0, 0, 0x08, 0x00]);
        assert_eq!(
            listener.handle_udp(&mut pkt, from, None, t0),
            Outcome::Keepalive
        );
        assert_eq!(listener.peer().unwrap().addr, from);
        assert_eq!(listener.counters().keepalives_received.get(), 1);
    }

    fn listener_with_paths(paths: usize, pipeline: Pipeline) -> Arc<Forwarder> {
        Forwarder::new(
            pipeline,
            ForwarderConfig {
                packet_info: false,
                peer: PeerMode::Learn,
                keepalive: None,
                paths,
            },
            &TelemetryHandle::default(),
            Instant::now(),
        )
    }

    /// Feeds `f` one ICMP packet from `from` on `path` at `at`.
    fn arrive(f: &Forwarder, path: usize, from: &str, at: Instant) -> Outcome {
        let mut storage = [0u8; 64];
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &icmp_v4());
        f.handle_udp_on(path, &mut pkt, from.parse().unwrap(), None, at)
    }

    fn addr_for(f: &Forwarder, path: usize) -> SocketAddr {
        f.peer_for(path).expect("a peer").addr
    }

    const CLIENT_2: &str = "198.51.100.7:40001";
    const CLIENT_3: &str = "198.51.100.7:40002";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Feeds `f` an empty datagram (a keepalive without packet info) from `from`.
    fn arrive_empty(f: &Forwarder, from: &str, at: Instant) -> Outcome {
        let mut storage = [0u8; 8];
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &[]);
        f.handle_udp_on(0, &mut pkt, from.parse().unwrap(), None, at)
    }

    #[test]
    fn an_empty_datagram_from_another_host_does_not_move_a_confirmed_peer() {
        const SCANNER: &str = "203.0.113.9:51000";
        const OTHER: &str = "203.0.113.10:51000";
        let f = listener_with_paths(1, Pipeline::new());
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        // Before any packet with content, an empty one teaches (a client whose first
        // datagram is its keepalive), and the next one from elsewhere moves it.
        assert_eq!(arrive_empty(&f, SCANNER, t0), Outcome::Keepalive);
        assert_eq!(f.peer().unwrap().addr, addr(SCANNER));
        assert_eq!(arrive_empty(&f, CLIENT, later(1)), Outcome::Keepalive);
        assert_eq!(f.peer().unwrap().addr, addr(CLIENT));
        // A packet confirms the client; a scan of the idle server then moves nothing.
        assert_eq!(arrive(&f, 0, CLIENT, later(2)), Outcome::WriteTun);
        assert_eq!(arrive_empty(&f, SCANNER, later(30)), Outcome::Keepalive);
        assert_eq!(f.peer().unwrap().addr, addr(CLIENT));
        assert_eq!(f.counters().keepalives_received.get(), 3);
        // The client's keepalive from a new port (its NAT renumbered it) still moves it.
        assert_eq!(arrive_empty(&f, CLIENT_2, later(40)), Outcome::Keepalive);
        assert_eq!(f.peer().unwrap().addr, addr(CLIENT_2));
        // A packet with content from another host (roaming) moves it at once, and
        // that host is the one confirmed from then on.
        assert_eq!(arrive(&f, 0, OTHER, later(50)), Outcome::WriteTun);
        assert_eq!(f.peer().unwrap().addr, addr(OTHER));
        assert_eq!(arrive_empty(&f, CLIENT, later(60)), Outcome::Keepalive);
        assert_eq!(f.peer().unwrap().addr, addr(OTHER));
    }

    #[test]
    fn each_path_answers_the_client_socket_it_heard_from() {
        let f = listener_with_paths(2, Pipeline::new());
        let t0 = Instant::now();
        assert!(f.peer_for(0).is_none() && f.peer_for(1).is_none());
        assert_eq!(arrive(&f, 0, CLIENT, t0), Outcome::WriteTun);
        // Until path 1 hears from the client, it answers what path 0 heard.
        assert_eq!(addr_for(&f, 1), addr(CLIENT));
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(arrive(&f, 1, CLIENT_2, t1), Outcome::WriteTun);
        assert_eq!(addr_for(&f, 0), addr(CLIENT));
        assert_eq!(addr_for(&f, 1), addr(CLIENT_2));
        assert_eq!(f.peer().unwrap().addr, addr(CLIENT), "the primary: path 0");
        assert_eq!(f.counters().peer_changes.get(), 2);
        // More datagrams on known addresses change nothing.
        arrive(&f, 0, CLIENT, t1);
        arrive(&f, 1, CLIENT_2, t1);
        assert_eq!(f.counters().peer_changes.get(), 2);
    }

    /// A server with fewer paths than the client has sockets: the one path hears two
    /// ports of the client, datagram after datagram, and keeps answering the first
    /// while it is active (answering each in turn would spread the replies of one flow
    /// over two client sockets, which may reorder them); when the first goes quiet, the
    /// other takes over.
    #[test]
    fn a_path_keeps_the_active_socket_of_a_client_with_more_sockets() {
        let f = listener_with_paths(1, Pipeline::new());
        let t0 = Instant::now();
        let mut t = t0;
        for i in 0..100 {
            t = t0 + Duration::from_millis(i);
            let from = if i % 2 == 0 { CLIENT } else { CLIENT_2 };
            assert_eq!(
                arrive(&f, 0, from, t),
                Outcome::WriteTun,
                "both are accepted"
            );
            assert_eq!(addr_for(&f, 0), addr(CLIENT));
        }
        assert_eq!(f.counters().peer_changes.get(), 1);
        // CLIENT goes quiet.
        arrive(&f, 0, CLIENT_2, t + PATH_FRESH / 2);
        assert_eq!(addr_for(&f, 0), addr(CLIENT));
        arrive(&f, 0, CLIENT_2, t + PATH_FRESH + Duration::from_millis(1));
        assert_eq!(addr_for(&f, 0), addr(CLIENT_2));
        assert_eq!(f.counters().peer_changes.get(), 2);
    }

    /// A path that never heard from the client answers the primary address (path 0's
    /// here), however the fresher datagrams alternate between the other paths.
    #[test]
    fn a_path_that_never_heard_answers_one_address_without_flapping() {
        let f = listener_with_paths(4, Pipeline::new());
        let t0 = Instant::now();
        for i in 0..50 {
            let t = t0 + Duration::from_millis(i);
            let (path, from) = [(0, CLIENT), (1, CLIENT_2), (2, CLIENT_3)][i as usize % 3];
            arrive(&f, path, from, t);
            if i >= 2 {
                assert_eq!(addr_for(&f, 3), addr(CLIENT));
                assert_eq!(f.peer().unwrap().addr, addr(CLIENT));
            }
        }
    }

    #[test]
    fn a_path_that_went_quiet_answers_the_primary_address() {
        let f = listener_with_paths(3, Pipeline::new());
        let t0 = Instant::now();
        arrive(&f, 0, CLIENT, t0);
        arrive(&f, 1, CLIENT_2, t0);
        // Path 2 never heard from anyone.
        assert_eq!(addr_for(&f, 2), addr(CLIENT));
        // Only path 0 keeps hearing; path 1's address (a client socket gone quiet, or a
        // NAT mapping that expired) is answered until it is PATH_FRESH behind.
        let mut t = t0;
        while t < t0 + PATH_FRESH {
            t += Duration::from_millis(10);
            arrive(&f, 0, CLIENT, t);
        }
        assert_eq!(addr_for(&f, 1), addr(CLIENT_2));
        arrive(&f, 0, CLIENT, t + Duration::from_millis(10));
        assert_eq!(addr_for(&f, 1), addr(CLIENT));
        // Once it hears again, it answers there again.
        arrive(&f, 1, CLIENT_2, t + Duration::from_millis(20));
        assert_eq!(addr_for(&f, 1), addr(CLIENT_2));
    }

    #[test]
    fn a_peer_that_moves_to_another_host_is_followed_on_every_path_at_once() {
        let f = listener_with_paths(2, Pipeline::new());
        let t0 = Instant::now();
        arrive(&f, 0, CLIENT, t0);
        arrive(&f, 1, CLIENT_2, t0);
        let moved = "203.0.113.9:5000";
        let t1 = t0 + Duration::from_millis(100);
        arrive(&f, 1, moved, t1);
        // Path 0's address is fresh, but of the host the peer left.
        assert_eq!(addr_for(&f, 0), addr(moved));
        assert_eq!(addr_for(&f, 1), addr(moved));
        assert_eq!(f.peer().unwrap().addr, addr(moved));
    }

    #[test]
    fn one_path_answers_the_last_address_however_old() {
        let f = listener_with_paths(1, Pipeline::new());
        let t0 = Instant::now();
        arrive(&f, 0, CLIENT, t0);
        // Idle for an hour, then a NAT's new port for the same client.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(addr_for(&f, 0), addr(CLIENT));
        arrive(&f, 0, CLIENT_2, later);
        assert_eq!(addr_for(&f, 0), addr(CLIENT_2));
    }

    #[test]
    fn a_forged_datagram_teaches_no_path() {
        let mut p = Pipeline::new();
        p.push("auth", "auth", Box::new(Auth));
        let f = listener_with_paths(2, p);
        let t0 = Instant::now();
        arrive(&f, 0, CLIENT, t0);
        let mut storage = [0u8; 64];
        let mut forged = icmp_v4();
        forged[0] = 0xff;
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &forged);
        let attacker: SocketAddr = "203.0.113.66:1234".parse().unwrap();
        // Later than the client's datagram: had it been learned, it would be the newest.
        let t1 = t0 + Duration::from_millis(1);
        assert!(matches!(
            f.handle_udp_on(1, &mut pkt, attacker, None, t1),
            Outcome::Drop(_)
        ));
        assert_eq!(addr_for(&f, 1), addr(CLIENT));
        assert_eq!(addr_for(&f, 0), addr(CLIENT));
        assert_eq!(f.counters().peer_changes.get(), 1);
    }

    #[test]
    fn a_new_local_address_moves_the_path_at_once() {
        let f = listener_with_paths(1, Pipeline::new());
        let t0 = Instant::now();
        arrive(&f, 0, CLIENT, t0);
        let mut storage = [0u8; 64];
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &icmp_v4());
        let local: IpAddr = "192.0.2.80".parse().unwrap();
        f.handle_udp_on(0, &mut pkt, addr(CLIENT), Some(local), t0);
        let peer = f.peer_for(0).unwrap();
        assert_eq!((peer.addr, peer.local_ip), (addr(CLIENT), Some(local)));
        assert_eq!(f.counters().peer_changes.get(), 2);
    }

    /// A NAT gives the client's socket a new port, which the server steers to another
    /// path: the old path stays fresh for up to PATH_FRESH, and is the primary (it is
    /// path 0) until then; after that everything answers the new port.
    #[test]
    fn a_rebound_client_socket_is_answered_within_path_fresh() {
        let f = listener_with_paths(2, Pipeline::new());
        let t0 = Instant::now();
        arrive(&f, 0, CLIENT, t0);
        let mut t = t0;
        while t < t0 + PATH_FRESH {
            t += Duration::from_millis(10);
            arrive(&f, 1, CLIENT_2, t);
            let expected = if t - t0 <= PATH_FRESH {
                CLIENT
            } else {
                CLIENT_2
            };
            assert_eq!(f.peer().unwrap().addr, addr(expected), "{:?}", t - t0);
        }
        t += Duration::from_millis(10);
        arrive(&f, 1, CLIENT_2, t);
        assert_eq!(addr_for(&f, 0), addr(CLIENT_2));
        assert_eq!(addr_for(&f, 1), addr(CLIENT_2));
    }

    #[test]
    fn every_path_of_a_client_sends_to_its_server() {
        let server: SocketAddr = SERVER.parse().unwrap();
        let f = Forwarder::new(
            Pipeline::new(),
            ForwarderConfig {
                packet_info: true,
                peer: PeerMode::Fixed(server),
                keepalive: None,
                paths: 2,
            },
            &TelemetryHandle::default(),
            Instant::now(),
        );
        let now = Instant::now();
        assert_eq!(addr_for(&f, 0), server);
        assert_eq!(addr_for(&f, 1), server);
        let mut storage = [0u8; 64];
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &icmp_v4());
        let other: SocketAddr = CLIENT.parse().unwrap();
        assert!(matches!(
            f.handle_udp_on(1, &mut pkt, other, None, now),
            Outcome::Drop(Dropped {
                reason: DropReason::UnknownSource,
                ..
            })
        ));
    }

    #[test]
    fn snapshot_is_reachable_through_the_telemetry_handle() {
        let handle = TelemetryHandle::default();
        assert!(handle.snapshot().is_none());
        let f = Forwarder::new(
            Pipeline::new(),
            ForwarderConfig {
                packet_info: false,
                peer: PeerMode::Learn,
                keepalive: None,
                paths: 1,
            },
            &handle,
            Instant::now(),
        );
        let mut storage = [0u8; 64];
        let mut pkt = PacketBuf::with_data(&mut storage, 0, &icmp_v4());
        let _ = f.handle_udp(&mut pkt, CLIENT.parse().unwrap(), None, Instant::now());
        let snap = handle.snapshot().unwrap();
        assert_eq!(snap.counters.udp_rx_datagrams, 1);
        assert_eq!(snap.peer, Some(CLIENT.parse().unwrap()));
        drop(f);
        assert!(handle.snapshot().is_none());
    }
}
