//! The driver: the only code where packets meet the TUN device and the socket.
//!
//! The article's two goroutines become threads, each with its own single-threaded tokio
//! runtime (so an event wakes the thread that waits for it, never another core):
//!
//! ```text
//!  outbound, one thread per TUN queue:
//!    TUN queue ──read (superpackets split)──► forwarder + stages ──UDP GSO sends──► peer
//!  inbound, one thread:
//!    peer ──recvmmsg + UDP GRO──► forwarder + stages ──TUN writes, coalesced (gro)──► TUN
//! ```
//!
//! Both move batches. A TUN read with offloads on returns a TCP "superpacket" of up to
//! 64 KiB, which `tun-rs` splits into MTU-sized packets; the thread keeps reading until
//! the queue is empty or its slots are full, then runs every packet through the chain,
//! then sends the datagrams in as few `sendmsg` calls as UDP GSO allows (see
//! [`batch`](crate::batch)). The inbound thread receives up to a few hundred datagrams
//! per `recvmmsg`, and [`gro`](crate::gro) merges consecutive TCP and UDP segments back
//! into superpackets for the kernel. Stages still see one packet at a time.
//!
//! Buffers are allocated once per thread and reused: nothing on the per-packet path
//! allocates. Errors that concern one packet are counted and logged at a limited rate;
//! errors that mean the device or socket is gone end the thread, and the tunnel.

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use arrayvec::ArrayVec;
use lametun_core::ratelimit::{LogLimiter, LogPermit};
use lametun_core::{Forwarder, Outcome, PacketBuf};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tun_rs::{SyncDevice, VIRTIO_NET_HDR_LEN};

use crate::batch::{Datagram, GsoLimits, Run, plan_runs};
use crate::device::GSO_MAX_SEGS;
use crate::gro::{Coalescer, WriteReport};

/// Packets per batch (slots of one MTU each), in both directions.
pub const BATCH: usize = 128;
const _: () = assert!(BATCH <= crate::gro::MAX_PACKETS);
/// Receive buffers per `recvmmsg`.
const RX_BUFFERS: usize = 16;
/// Size of one receive buffer: a UDP GRO segment train can be up to 64 KiB.
const RX_BUFFER_LEN: usize = 65_536;
/// Largest datagram a TUN read without offload can return, and the read buffer of one
/// superpacket with the virtio-net header in front.
const SUPERPACKET_LEN: usize = VIRTIO_NET_HDR_LEN + 65_535;

/// What every driver thread shares.
pub struct Shared {
    /// The tunnel logic.
    pub fwd: Arc<Forwarder>,
    /// The tunnel socket.
    pub udp: Arc<UdpSocket>,
    /// Its quinn-udp state.
    pub udp_state: Arc<UdpSocketState>,
    /// Whether to use UDP GSO for sends.
    pub gso: bool,
    /// The TUN MTU: the largest inner packet.
    pub mtu: usize,
    /// Cancelled to stop every thread.
    pub cancel: CancellationToken,
    /// Limits the log lines about IO errors.
    pub error_log: LogLimiter,
}

impl Shared {
    fn log_error(&self, what: &str, e: &io::Error) {
        if let LogPermit::Log { suppressed } = self.error_log.check(Instant::now()) {
            tracing::warn!(error = %e, suppressed, "{what}");
        }
    }
}

/// Whether an error from a TUN or socket call means the descriptor is unusable.
fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EBADF)
            | Some(nix::libc::EBADFD)
            | Some(nix::libc::ENODEV)
            | Some(nix::libc::ENXIO)
    )
}

/// Registers a shared descriptor with the current thread's tokio reactor.
///
/// The device and the socket are shared by several threads, each with its own runtime,
/// so each thread registers them in its own reactor (epoll instance): the TUN queue for
/// reading in its outbound thread, the socket for writing in every outbound thread and
/// for reading in the inbound one.
#[allow(unsafe_code)]
fn register<T: AsRawFd>(inner: Arc<T>, interest: Interest) -> io::Result<AsyncFd<Arc<T>>> {
    // SAFETY: tokio requires the descriptor to stay open and to be the same one for the
    // life of the `AsyncFd`. The `AsyncFd` owns a clone of the `Arc`, and the device or
    // socket inside closes its descriptor only when the last clone is dropped, which
    // cannot happen before this `AsyncFd` is dropped; `as_raw_fd` of these types always
    // returns the descriptor they were created with.
    unsafe { AsyncFd::register_with_interest(inner, interest) }.map_err(|e| e.into_parts().1)
}

/// Runs `f` on a new thread with its own single-threaded tokio runtime.
pub fn spawn_thread<F, Fut>(
    name: String,
    f: F,
) -> io::Result<std::thread::JoinHandle<io::Result<()>>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<()>>,
{
    std::thread::Builder::new().name(name).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(f())
    })
}

// ===== outbound: TUN -> peer =====

/// Reads packets from one TUN queue and sends them to the peer until cancelled.
pub async fn outbound(queue: Arc<SyncDevice>, offload: bool, s: Arc<Shared>) -> io::Result<()> {
    let tun = register(queue, Interest::READABLE)?;
    let sock = register(s.udp.clone(), Interest::WRITABLE)?;
    let head = s.fwd.headroom();
    // One slot per packet. A full-size datagram fills its slot exactly, so the datagrams
    // of a superpacket lie back to back and go out in one GSO send without a copy.
    let stride = head + s.mtu + s.fwd.tailroom();
    let mut slab = vec![0u8; stride * BATCH];
    let mut sizes = [0usize; BATCH];
    let mut scratch = vec![0u8; if offload { SUPERPACKET_LEN } else { 0 }];
    let mut gso_buf = vec![0u8; GsoLimits::MAX_BYTES];
    let mut datagrams: Vec<Datagram> = Vec::with_capacity(BATCH);
    let mut runs: Vec<Run> = Vec::with_capacity(BATCH);
    // A read may split into this many packets; only read when that many slots are free.
    let reserve = if offload { GSO_MAX_SEGS as usize } else { 1 };

    loop {
        let mut guard = tokio::select! {
            biased;
            () = s.cancel.cancelled() => return Ok(()),
            g = tun.readable() => g?,
        };
        // Read until the queue is empty or the slots are full.
        let mut n = 0;
        while BATCH - n >= reserve {
            let mut views: ArrayVec<&mut [u8], BATCH> =
                slab[n * stride..].chunks_mut(stride).collect();
            let want = views.len();
            let sizes = &mut sizes[n..n + want];
            match guard.try_io(|fd| {
                fd.get_ref()
                    .recv_multiple(&mut scratch, &mut views, sizes, head)
            }) {
                Ok(Ok(k)) => n += k,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) if is_fatal(&e) => return Err(e),
                Ok(Err(e)) => {
                    // A superpacket tun-rs could not split (malformed offload metadata):
                    // that read is lost; the device is fine.
                    s.fwd.counters().tun_read_errors.inc();
                    s.log_error("TUN read failed", &e);
                }
                Err(_would_block) => break,
            }
        }
        drop(guard);
        if n == 0 {
            continue;
        }

        let now = Instant::now();
        let peer = s.fwd.peer();
        datagrams.clear();
        for (i, &size) in sizes[..n].iter().enumerate() {
            let base = i * stride;
            let mut pkt = PacketBuf::new(&mut slab[base..base + stride], head, size);
            if let Outcome::Send(to) = s.fwd.handle_tun(&mut pkt, peer.as_ref(), now) {
                datagrams.push(Datagram {
                    start: base + pkt.start(),
                    len: pkt.len(),
                    to,
                });
            }
        }
        if datagrams.is_empty() {
            continue;
        }
        let limits = GsoLimits {
            max_segments: if s.gso {
                s.udp_state.max_gso_segments().max(1)
            } else {
                1
            },
            max_bytes: GsoLimits::MAX_BYTES,
        };
        plan_runs(&datagrams, limits, &mut runs);
        for run in &runs {
            let first = datagrams[run.first];
            let contents: &[u8] = if run.contiguous {
                &slab[first.start..first.start + run.bytes]
            } else {
                let mut at = 0;
                for d in &datagrams[run.first..run.first + run.count] {
                    gso_buf[at..at + d.len].copy_from_slice(&slab[d.start..d.start + d.len]);
                    at += d.len;
                }
                &gso_buf[..at]
            };
            send_run(&sock, &s, first.to, contents, run).await?;
        }
        s.fwd.note_sent(now);
    }
}

/// Sends one run (one datagram, or several with GSO), waiting while the socket buffer
/// is full. Errors other than a dead socket drop the run and are counted.
async fn send_run(
    sock: &AsyncFd<Arc<UdpSocket>>,
    s: &Shared,
    to: lametun_core::Endpoint,
    contents: &[u8],
    run: &Run,
) -> io::Result<()> {
    let transmit = Transmit {
        destination: to.addr,
        ecn: None,
        contents,
        segment_size: (run.count > 1).then_some(run.segment),
        src_ip: to.local_ip,
    };
    match send_transmit(sock, s, &transmit).await {
        Ok(()) => {
            let c = s.fwd.counters();
            c.udp_tx_datagrams.add(run.count as u64);
            c.udp_tx_bytes.add(run.bytes as u64);
            Ok(())
        }
        Err(e) if is_fatal(&e) => Err(e),
        Err(e) if transmit.segment_size.is_some() && s.udp_state.max_gso_segments() == 1 => {
            // The kernel or the NIC refused GSO (EIO): quinn-udp has switched it off for
            // this socket; send this run's datagrams one by one.
            tracing::info!(error = %e, "UDP GSO refused by the kernel; sending datagrams one by one from now on");
            for chunk in contents.chunks(run.segment) {
                let single = Transmit {
                    contents: chunk,
                    segment_size: None,
                    ..transmit
                };
                if let Err(e) = send_transmit(sock, s, &single).await {
                    s.fwd.counters().udp_send_errors.inc();
                    s.log_error("UDP send failed", &e);
                } else {
                    s.fwd.counters().udp_tx_datagrams.inc();
                    s.fwd.counters().udp_tx_bytes.add(chunk.len() as u64);
                }
            }
            Ok(())
        }
        Err(e) => {
            s.fwd.counters().udp_send_errors.add(run.count as u64);
            if e.raw_os_error() == Some(nix::libc::EMSGSIZE) {
                s.log_error(
                    "datagram too large for the path (lower device.mtu, or peer.underlay_mtu)",
                    &e,
                );
            } else {
                s.log_error("UDP send failed", &e);
            }
            Ok(())
        }
    }
}

async fn send_transmit(
    sock: &AsyncFd<Arc<UdpSocket>>,
    s: &Shared,
    t: &Transmit<'_>,
) -> io::Result<()> {
    loop {
        let mut guard = tokio::select! {
            biased;
            () = s.cancel.cancelled() => return Ok(()),
            g = sock.writable() => g?,
        };
        match guard.try_io(|fd| s.udp_state.try_send(UdpSockRef::from(&**fd.get_ref()), t)) {
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

// ===== inbound: peer -> TUN =====

/// The inbound side's TUN writes: slots the chain fills with packets, and the
/// [`Coalescer`] that writes them, consecutive segments of a flow merged into
/// superpackets with gathered writes.
///
/// Each packet stays where the chain left it in its slot: the coalescer writes the
/// headers from its own buffer and the payloads from the slots, so a slot needs no
/// spare room for a superpacket (a test writes from slots sized exactly to the
/// packets).
pub struct TunWriter {
    slots: Vec<Vec<u8>>,
    /// `(start, end)` of the packet in each filled slot.
    spans: ArrayVec<(usize, usize), BATCH>,
    /// Room a packet may take: inbound stages may grow it up to the MTU (decompression).
    room: usize,
    gro: Coalescer,
}

impl TunWriter {
    /// A writer for `queue` with [`BATCH`] slots of `room` bytes, the most a datagram
    /// and the packet it becomes may take (a longer datagram grows its slot).
    pub fn new(queue: &SyncDevice, room: usize) -> Self {
        Self {
            slots: (0..BATCH).map(|_| Vec::with_capacity(room)).collect(),
            spans: ArrayVec::new(),
            room,
            gro: Coalescer::new(queue.tcp_gso(), queue.udp_gso()),
        }
    }

    /// Copies `datagram` into the next free slot and lets `handle` (the chain) turn it
    /// into an inner packet in place. The packet is kept for the next flush when
    /// `handle` returns true. Returns true when the slots are full: flush before pushing
    /// again.
    pub fn push(
        &mut self,
        datagram: &[u8],
        handle: impl FnOnce(&mut PacketBuf<'_>) -> bool,
    ) -> bool {
        let slot = &mut self.slots[self.spans.len()];
        slot.clear();
        slot.extend_from_slice(datagram);
        slot.resize(self.room.max(datagram.len()), 0);
        let mut pkt = PacketBuf::new(&mut slot[..], 0, datagram.len());
        if handle(&mut pkt) {
            let span = (pkt.start(), pkt.end());
            self.spans.push(span);
        }
        self.spans.is_full()
    }

    /// Packets waiting for [`flush`](Self::flush).
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether no packet is waiting.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Writes the waiting packets to `queue`, coalesced where it can. An error is
    /// returned only when the device is unusable; packets the kernel refused are in the
    /// report.
    pub fn flush(&mut self, queue: &SyncDevice) -> io::Result<WriteReport> {
        let packets: ArrayVec<&[u8], BATCH> = self
            .spans
            .iter()
            .zip(&self.slots)
            .map(|(&(start, end), slot)| &slot[start..end])
            .collect();
        self.gro.plan(&packets);
        let report = self.gro.write(queue, &packets);
        self.spans.clear();
        report
    }
}

/// Receives datagrams and writes the packets they carry to the TUN device until cancelled.
pub async fn inbound(queue: Arc<SyncDevice>, s: Arc<Shared>) -> io::Result<()> {
    let sock = register(s.udp.clone(), Interest::READABLE)?;
    let mut out = TunWriter::new(&queue, s.fwd.headroom() + s.mtu + s.fwd.tailroom());
    let mut rx: Vec<Vec<u8>> = (0..RX_BUFFERS).map(|_| vec![0u8; RX_BUFFER_LEN]).collect();
    let mut metas = [RecvMeta::default(); RX_BUFFERS];

    loop {
        let mut guard = tokio::select! {
            biased;
            () = s.cancel.cancelled() => return Ok(()),
            g = sock.readable() => g?,
        };
        let mut iovs: ArrayVec<IoSliceMut<'_>, RX_BUFFERS> =
            rx.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let got = match guard.try_io(|fd| {
            s.udp_state
                .recv(UdpSockRef::from(&**fd.get_ref()), &mut iovs, &mut metas)
        }) {
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) if is_fatal(&e) => return Err(e),
            Ok(Err(e)) => {
                // e.g. ECONNREFUSED from an ICMP error queued on the socket: not fatal.
                s.fwd.counters().udp_recv_errors.inc();
                s.log_error("UDP receive failed", &e);
                continue;
            }
            Err(_would_block) => continue,
        };
        drop(guard);
        drop(iovs);

        let now = Instant::now();
        for (buf, meta) in rx.iter().zip(&metas[..got]) {
            let stride = meta.stride.max(1);
            let dst_ip = meta.dst_ip.map(|ip| ip.to_canonical());
            for datagram in buf[..meta.len].chunks(stride) {
                let full = out.push(datagram, |pkt| {
                    s.fwd.handle_udp(pkt, meta.addr, dst_ip, now) == Outcome::WriteTun
                });
                if full {
                    write_tun(&queue, &mut out, &s)?;
                }
            }
        }
        if !out.is_empty() {
            write_tun(&queue, &mut out, &s)?;
        }
    }
}

/// Flushes `out` to the TUN queue and counts the result.
fn write_tun(queue: &SyncDevice, out: &mut TunWriter, s: &Shared) -> io::Result<()> {
    let report = out.flush(queue)?;
    let c = s.fwd.counters();
    c.tun_tx_packets.add(report.packets as u64);
    c.tun_tx_bytes.add(report.bytes as u64);
    if let Some(e) = report.error {
        // e.g. an invalid header that passed our checks: those packets are lost alone.
        c.tun_write_errors.add(report.lost as u64);
        s.log_error("TUN write failed", &e);
    }
    Ok(())
}
