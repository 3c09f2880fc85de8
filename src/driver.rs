//! The driver: the only code where packets meet the TUN device and the sockets.
//!
//! The article's two goroutines become threads, each with its own single-threaded tokio
//! runtime (so an event wakes the thread that waits for it, never another core). Each
//! TUN queue *q* has an outbound thread, and each UDP socket *p* (path *p* of the
//! forwarder: one per queue, or fewer, see `io.sockets`) an inbound thread:
//!
//! ```text
//!  outbound, lametun-out<q>:
//!    TUN queue q ──read (superpackets split)──► forwarder + stages ──UDP GSO sends──► socket q mod P
//!  inbound, lametun-in<p>:
//!    socket p ──recvmmsg + UDP GRO──► forwarder + stages ──TUN writes, coalesced (gro)──► TUN
//!      │                                    each flow on its own queue (flow_queue)
//!      └─ after a small batch the kernel answers at once: one read of that TUN queue q
//!                                                               ──► socket q mod P
//! ```
//!
//! How the datagrams of a flow keep to one worker at both ends: the kernel queues a
//! flow's outgoing packets on the TUN queue its packets were last written on, and the
//! inbound threads write each flow on the queue [`flow_queue`] picks, so one outbound
//! thread sends the flow, from one socket. A listener's sockets share its port, and the
//! kernel hands each datagram to the socket of its source port (see
//! [`bind_paths`](crate::udp::bind_paths)), so one inbound thread receives it. The
//! answers leave from the socket of the queue they are read from, to the address that
//! path learned (`Forwarder::peer_for`).
//!
//! Both move batches. A TUN read with offloads on returns a TCP "superpacket" of up to
//! 64 KiB, which `tun-rs` splits into MTU-sized packets; the thread keeps reading until
//! the queue is empty or its slots are full, then runs every packet through the chain,
//! then sends the datagrams in as few `sendmsg` calls as UDP GSO allows (see
//! [`batch`](crate::batch)). The inbound thread receives up to a few hundred datagrams
//! per `recvmmsg`, and [`gro`](crate::gro) merges consecutive TCP and UDP segments back
//! into superpackets for the kernel. Stages still see one packet at a time. When the
//! batch it wrote was small and the kernel answered it inside the write (a ping, a
//! request), the inbound thread sends the answer itself (see [`inbound`]).
//!
//! Buffers are allocated once per thread and reused: nothing on the per-packet path
//! allocates. Errors that concern one packet are counted and logged at a limited rate;
//! errors that mean the device or socket is gone end the thread, and the tunnel.

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use arrayvec::ArrayVec;
use lametun_core::ratelimit::{LogLimiter, LogPermit};
use lametun_core::{Forwarder, Outcome, PacketBuf};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tun_rs::{SyncDevice, VIRTIO_NET_HDR_LEN};

use crate::batch::{Datagram, GsoLimits, Run, plan_runs};
use crate::device::GSO_MAX_SEGS;
use crate::gro::{Coalescer, WriteReport, answered_at_once, flow_queue};
use crate::udp::Udp;

/// Packets per batch, in both directions (outbound: slots of one MTU each).
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
    /// The tunnel's sockets, one per path (at least one, at most one per TUN queue):
    /// inbound thread *i* receives on socket *i*; what is read from TUN queue *q* is
    /// sent on the path of that queue ([`Shared::path_of`]).
    pub sockets: Vec<Udp>,
    /// The TUN MTU: the largest inner packet.
    pub mtu: usize,
    /// Cancelled to stop every thread.
    pub cancel: CancellationToken,
    /// Limits the log lines about IO errors.
    pub error_log: LogLimiter,
    /// Outbound threads between waking up and finishing their sends: while one is,
    /// the inbound thread leaves answers to it (see [`inbound`]).
    pub sending: AtomicUsize,
}

impl Shared {
    /// The path (socket) that sends what is read from TUN queue `queue`: the queue's own
    /// socket, or with fewer sockets than queues, one of them, always the same.
    pub fn path_of(&self, queue: usize) -> usize {
        queue % self.sockets.len()
    }

    /// The size of a packet slot: room for the chain's headers, an MTU, its trailers.
    fn slot_len(&self) -> usize {
        self.fwd.headroom() + self.mtu + self.fwd.tailroom()
    }

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
/// The device queues and the sockets are shared by several threads, each with its own
/// runtime, so each thread registers what it waits for in its own reactor (epoll
/// instance): its TUN queue for reading in an outbound thread, its socket for reading
/// in an inbound one. Nobody registers for writing: see [`send_transmit`].
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
        let result = rt.block_on(f());
        // The runtime's shutdown allocates; that is not forwarding.
        crate::alloc::unwatch_this_thread();
        result
    })
}

// ===== outbound: TUN -> peer =====

/// A batch on its way from a TUN queue to the peer: slots that reads fill, the chain,
/// and the UDP (GSO) sends. It never waits for the device (reads stop at an empty
/// queue), only for room in the socket buffer, so both kinds of thread use it: an
/// outbound thread whenever its queue is readable, and the inbound thread right after
/// it wrote packets the local kernel answers at once (see [`inbound`]).
struct Outgoing {
    /// Room before each packet for the chain's headers.
    head: usize,
    /// Size of one slot.
    stride: usize,
    /// One slot per packet. A full-size datagram fills its slot exactly, so the
    /// datagrams of a superpacket lie back to back and go out in one GSO send without
    /// a copy.
    slab: Vec<u8>,
    sizes: [usize; BATCH],
    /// A read with offloads on lands here whole, then `tun-rs` splits it into slots.
    scratch: Vec<u8>,
    /// Where the datagrams of a GSO run that are not back to back are gathered.
    gso_buf: Vec<u8>,
    datagrams: Vec<Datagram>,
    runs: Vec<Run>,
    /// A read may split into this many packets; only read when that many slots are free.
    reserve: usize,
}

impl Outgoing {
    fn new(s: &Shared, offload: bool) -> Self {
        Self {
            head: s.fwd.headroom(),
            stride: s.slot_len(),
            slab: vec![0u8; s.slot_len() * BATCH],
            sizes: [0; BATCH],
            scratch: vec![0u8; if offload { SUPERPACKET_LEN } else { 0 }],
            gso_buf: vec![0u8; GsoLimits::MAX_BYTES],
            datagrams: Vec::with_capacity(BATCH),
            runs: Vec::with_capacity(BATCH),
            reserve: if offload { GSO_MAX_SEGS as usize } else { 1 },
        }
    }

    /// Reads at most `reads` times from `queue`, stopping early when the slots are full
    /// or the queue is empty. Returns the number of packets read and whether the queue
    /// was found empty.
    fn read(&mut self, queue: &SyncDevice, reads: usize, s: &Shared) -> io::Result<(usize, bool)> {
        let mut n = 0;
        let mut calls = 0;
        while calls < reads && BATCH - n >= self.reserve {
            calls += 1;
            let mut views: ArrayVec<&mut [u8], BATCH> = self.slab[n * self.stride..]
                .chunks_mut(self.stride)
                .collect();
            let want = views.len();
            let sizes = &mut self.sizes[n..n + want];
            match queue.recv_multiple(&mut self.scratch, &mut views, sizes, self.head) {
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((n, true)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    calls -= 1; // a signal, not a read: try again
                    continue;
                }
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => {
                    // A superpacket tun-rs could not split (malformed offload metadata):
                    // that read is lost; the device is fine.
                    s.fwd.counters().tun_read_errors.inc();
                    s.log_error("TUN read failed", &e);
                }
            }
        }
        Ok((n, false))
    }

    /// Runs the first `n` packets, read from TUN queue `queue`, through the chain and
    /// sends the datagrams they become on that queue's path, in as few GSO sends as
    /// their sizes and destinations allow.
    fn send(&mut self, n: usize, s: &Shared, queue: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let path = s.path_of(queue);
        let peer = s.fwd.peer_for(path);
        let udp = &s.sockets[path];
        self.datagrams.clear();
        for (i, &size) in self.sizes[..n].iter().enumerate() {
            let base = i * self.stride;
            let mut pkt = PacketBuf::new(&mut self.slab[base..base + self.stride], self.head, size);
            if let Outcome::Send(to) = s.fwd.handle_tun(&mut pkt, peer.as_ref(), now) {
                self.datagrams.push(Datagram {
                    start: base + pkt.start(),
                    len: pkt.len(),
                    to,
                });
            }
        }
        if self.datagrams.is_empty() {
            return Ok(());
        }
        let limits = GsoLimits {
            max_segments: if udp.gso {
                udp.state.max_gso_segments().max(1)
            } else {
                1
            },
            max_bytes: GsoLimits::MAX_BYTES,
        };
        plan_runs(&self.datagrams, limits, &mut self.runs);
        for run in &self.runs {
            let first = self.datagrams[run.first];
            let contents: &[u8] = if run.contiguous {
                &self.slab[first.start..first.start + run.bytes]
            } else {
                let mut at = 0;
                for d in &self.datagrams[run.first..run.first + run.count] {
                    self.gso_buf[at..at + d.len]
                        .copy_from_slice(&self.slab[d.start..d.start + d.len]);
                    at += d.len;
                }
                &self.gso_buf[..at]
            };
            send_run(s, udp, first.to, contents, run)?;
        }
        s.fwd.note_sent(now);
        Ok(())
    }
}

/// Reads packets from TUN queue number `index` and sends them to the peer until
/// cancelled.
pub async fn outbound(
    index: usize,
    queue: Arc<SyncDevice>,
    offload: bool,
    s: Arc<Shared>,
) -> io::Result<()> {
    let tun = register(queue, Interest::READABLE)?;
    let mut out = Outgoing::new(&s, offload);
    crate::alloc::watch_this_thread();
    loop {
        let mut guard = tokio::select! {
            biased;
            () = s.cancel.cancelled() => return Ok(()),
            g = tun.readable() => g?,
        };
        s.sending.fetch_add(1, Ordering::Relaxed);
        // Read until the queue is empty or the slots are full.
        let read = out.read(guard.get_inner(), usize::MAX, &s);
        if let Ok((_, true)) = read {
            guard.clear_ready();
        }
        drop(guard);
        let sent = read.and_then(|(n, _)| out.send(n, &s, index));
        s.sending.fetch_sub(1, Ordering::Relaxed);
        sent?;
    }
}

/// Sends one run (one datagram, or several with GSO), waiting while the socket buffer
/// is full. Errors other than a dead socket drop the run and are counted.
fn send_run(
    s: &Shared,
    udp: &Udp,
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
    match send_transmit(s, udp, &transmit) {
        Ok(Sent::Yes) => {
            let c = s.fwd.counters();
            c.udp_tx_datagrams.add(run.count as u64);
            c.udp_tx_bytes.add(run.bytes as u64);
            Ok(())
        }
        Ok(Sent::Stopping) => Ok(()),
        Err(e) if is_fatal(&e) => Err(e),
        Err(e) if transmit.segment_size.is_some() && udp.state.max_gso_segments() == 1 => {
            // The kernel or the NIC refused GSO (EIO): quinn-udp has switched it off for
            // this socket; send this run's datagrams one by one.
            tracing::info!(error = %e, "UDP GSO refused by the kernel; sending datagrams one by one from now on");
            for chunk in contents.chunks(run.segment) {
                let single = Transmit {
                    contents: chunk,
                    segment_size: None,
                    ..transmit
                };
                match send_transmit(s, udp, &single) {
                    Ok(Sent::Yes) => {
                        s.fwd.counters().udp_tx_datagrams.inc();
                        s.fwd.counters().udp_tx_bytes.add(chunk.len() as u64);
                    }
                    Ok(Sent::Stopping) => break,
                    Err(e) => {
                        s.fwd.counters().udp_send_errors.inc();
                        s.log_error("UDP send failed", &e);
                    }
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

/// How long a send waits for room in the socket buffer before looking whether the
/// tunnel is stopping.
const SEND_WAIT_MS: u8 = 100;

/// Sends one transmit, waiting with `poll(2)` while the socket buffer is full.
///
/// The wait is in the kernel, not in the thread's reactor: a socket registered for
/// writability there gets an event for every datagram the kernel frees, and a thread
/// that only sends (the inbound thread's answers) would be woken by the other threads'
/// sends. A full socket buffer is the only case that waits.
fn send_transmit(s: &Shared, udp: &Udp, t: &Transmit<'_>) -> io::Result<Sent> {
    loop {
        match udp.state.try_send(UdpSockRef::from(&*udp.socket), t) {
            Ok(()) => return Ok(Sent::Yes),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if s.cancel.is_cancelled() {
                    return Ok(Sent::Stopping);
                }
                let mut fds = [PollFd::new(udp.socket.as_fd(), PollFlags::POLLOUT)];
                match poll(&mut fds, PollTimeout::from(SEND_WAIT_MS)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// What became of a transmit that did not fail.
enum Sent {
    /// The kernel took it.
    Yes,
    /// Abandoned while waiting for room in the socket buffer: the tunnel is stopping.
    Stopping,
}

// ===== inbound: peer -> TUN =====

/// The inbound side's packets: the receive buffers the socket fills, the chain's work
/// on each datagram, and the [`Coalescer`] that writes the packets to the TUN queues,
/// consecutive segments of a flow merged into superpackets with gathered writes.
///
/// When no stage grows inbound packets ([`Pipeline::grows_inbound`]), the chain runs on
/// each datagram where the socket put it, in the receive buffer (packets only shrink
/// there). Otherwise each datagram is first copied into a slot with room up to the
/// MTU. Either way each packet stays where the chain left it: the coalescer writes the
/// headers from its own buffer and the payloads from where the packets are, so nothing
/// needs spare room for a superpacket (a test writes from slots sized exactly to the
/// packets).
///
/// [`Pipeline::grows_inbound`]: lametun_core::Pipeline::grows_inbound
pub struct TunWriter {
    /// The TUN queues; each flow is written on its own (see [`flow_queue`]).
    queues: Vec<Arc<SyncDevice>>,
    /// Receive buffers, for [`push_received`](Self::push_received).
    rx: Vec<Vec<u8>>,
    /// Whether the chain runs on datagrams where they were received.
    in_place: bool,
    /// Slots for packets that need room of their own.
    slots: Vec<Vec<u8>>,
    /// Slots in use.
    used: usize,
    /// Where each waiting packet is, and the queue it goes to.
    spans: ArrayVec<Span, BATCH>,
    /// Room a packet may take in a slot: inbound stages may grow it up to the MTU
    /// (decompression).
    room: usize,
    gro: Coalescer,
    /// The queue of the first packet pushed since the last
    /// [`take_answered`](Self::take_answered) that the local kernel answers inside the
    /// write.
    answered: Option<usize>,
}

/// A packet waiting to be written.
#[derive(Clone, Copy)]
struct Span {
    /// A receive buffer (`true`) or a slot, and its index.
    rx: bool,
    buffer: usize,
    start: usize,
    end: usize,
    queue: usize,
}

impl TunWriter {
    /// A writer to `queues` (all of one device). It has `rx_buffers` receive buffers of
    /// `rx_len` bytes, and [`BATCH`] slots of `room` bytes, the most a datagram and the
    /// packet it becomes may take (a longer datagram grows its slot). `in_place`: run
    /// the chain on received datagrams where they are (only if no stage grows inbound
    /// packets).
    pub fn new(
        queues: &[Arc<SyncDevice>],
        room: usize,
        (rx_buffers, rx_len): (usize, usize),
        in_place: bool,
    ) -> Self {
        assert!(!queues.is_empty(), "a TUN device has at least one queue");
        Self {
            queues: queues.to_vec(),
            rx: (0..rx_buffers).map(|_| vec![0u8; rx_len]).collect(),
            in_place,
            slots: (0..BATCH).map(|_| Vec::new()).collect(),
            used: 0,
            spans: ArrayVec::new(),
            room,
            gro: Coalescer::new(queues[0].tcp_gso(), queues[0].udp_gso()),
            answered: None,
        }
    }

    /// The receive buffers, to receive into. Only between flushes: the waiting
    /// packets may be in them.
    pub fn rx_mut(&mut self) -> &mut [Vec<u8>] {
        debug_assert!(self.spans.is_empty(), "received over waiting packets");
        &mut self.rx
    }

    /// Lets `handle` (the chain) turn the datagram at `range` of receive buffer
    /// `buffer` into an inner packet, in place or in a slot (see [`TunWriter`]). The
    /// packet is kept for the next flush when `handle` returns true. Returns true when
    /// no more packets fit: flush before pushing again.
    pub fn push_received(
        &mut self,
        buffer: usize,
        range: std::ops::Range<usize>,
        handle: impl FnOnce(&mut PacketBuf<'_>) -> bool,
    ) -> bool {
        let len = range.len();
        if !self.in_place {
            let slot = &mut self.slots[self.used];
            slot.clear();
            slot.extend_from_slice(&self.rx[buffer][range]);
            return self.handle_slot(len, handle);
        }
        let mut pkt = PacketBuf::new(&mut self.rx[buffer][range.clone()], 0, len);
        if handle(&mut pkt) {
            let (start, end) = (range.start + pkt.start(), range.start + pkt.end());
            self.keep(true, buffer, start, end);
        }
        self.spans.is_full()
    }

    /// Copies `datagram` into the next free slot and lets `handle` (the chain) turn it
    /// into an inner packet there. The packet is kept for the next flush when `handle`
    /// returns true. Returns true when no more packets fit: flush before pushing again.
    pub fn push(
        &mut self,
        datagram: &[u8],
        handle: impl FnOnce(&mut PacketBuf<'_>) -> bool,
    ) -> bool {
        let slot = &mut self.slots[self.used];
        slot.clear();
        slot.extend_from_slice(datagram);
        self.handle_slot(datagram.len(), handle)
    }

    /// Runs `handle` on the datagram of `len` bytes just copied into the next slot.
    fn handle_slot(&mut self, len: usize, handle: impl FnOnce(&mut PacketBuf<'_>) -> bool) -> bool {
        let slot = &mut self.slots[self.used];
        slot.resize(self.room.max(len), 0);
        let mut pkt = PacketBuf::new(&mut slot[..], 0, len);
        if handle(&mut pkt) {
            let (start, end) = (pkt.start(), pkt.end());
            self.keep(false, self.used, start, end);
            self.used += 1;
        }
        self.spans.is_full()
    }

    fn keep(&mut self, rx: bool, buffer: usize, start: usize, end: usize) {
        let p = if rx {
            &self.rx[buffer][start..end]
        } else {
            &self.slots[buffer][start..end]
        };
        let queue = flow_queue(p, self.queues.len());
        if self.answered.is_none() && answered_at_once(p) {
            self.answered = Some(queue);
        }
        self.spans.push(Span {
            rx,
            buffer,
            start,
            end,
            queue,
        });
    }

    /// The queue (its index, and the queue) of a packet pushed since the last call that
    /// the local kernel answers inside the write that delivers it (an echo request, TCP
    /// data: see [`answered_at_once`]); the answer is queued there.
    pub fn take_answered(&mut self) -> Option<(usize, &Arc<SyncDevice>)> {
        self.answered.take().map(|q| (q, &self.queues[q]))
    }

    /// Packets waiting for [`flush`](Self::flush).
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether no packet is waiting.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Writes the waiting packets, each to the queue of its flow, coalesced where it
    /// can. An error is returned only when the device is unusable; packets the kernel
    /// refused are in the report.
    pub fn flush(&mut self) -> io::Result<WriteReport> {
        let mut total = WriteReport::default();
        let mut result = Ok(());
        for (q, queue) in self.queues.iter().enumerate() {
            let packets: ArrayVec<&[u8], BATCH> = self
                .spans
                .iter()
                .filter(|span| span.queue == q)
                .map(|span| {
                    let buffer = if span.rx {
                        &self.rx[span.buffer]
                    } else {
                        &self.slots[span.buffer]
                    };
                    &buffer[span.start..span.end]
                })
                .collect();
            if packets.is_empty() {
                continue;
            }
            self.gro.plan(&packets);
            match self.gro.write(queue, &packets) {
                Ok(r) => total.add(r),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.spans.clear();
        self.used = 0;
        result.map(|()| total)
    }
}

/// The inbound thread answers in place only after batches of at most this many packets.
///
/// A busy tunnel's outbound thread is awake anyway (the kernel wakes it when the answer
/// arrives in its queue, whoever reads it), and reading the answers of bulk data in the
/// inbound thread cost 7% of plaintext throughput here: what it saves is the latency of
/// a light tunnel (ping, interactive sessions, requests).
pub const ANSWER_BATCH: usize = 2;

/// Receives datagrams on path `path` and writes the packets they carry to the TUN
/// device until cancelled.
///
/// When a batch held packets the local kernel may answer inside the write (an echo
/// request, TCP data the host ACKs at once: see [`answered_at_once`]), the answer is in
/// the TUN queue the request was written on (the queue of its flow: [`flow_queue`])
/// when the write returns, and this thread reads it (one read) and sends it
/// itself, as boringtun's shared event loop does. The outbound thread is woken by the
/// answer too, but need not be scheduled before it leaves: on an idle tunnel that takes
/// a wakeup off a ping's critical path. When nothing was queued (a delayed ACK, traffic
/// routed on elsewhere) the read finds the queue empty; it costs one syscall.
///
/// Only small batches are answered so (see [`ANSWER_BATCH`]), never pure ACKs (their
/// answer is the data they release on the sending side of a TCP transfer, the outbound
/// thread's work), and not while an outbound thread is busy: the one read takes what
/// is at the head of the queue, which on a loaded tunnel may be another flow's data,
/// and sending it beside the outbound thread could reorder that flow. (The check is a
/// heuristic: an outbound thread waking just after it may still race this read.)
/// Sending may wait for room in the socket buffer, as the outbound threads do.
///
/// `queues` are all the device's queues: each packet is written on the queue of its flow,
/// which makes the kernel queue the flow's packets the other way on that same queue, so
/// the flows spread over the outbound threads (see [`flow_queue`]).
pub async fn inbound(
    path: usize,
    queues: Vec<Arc<SyncDevice>>,
    offload: bool,
    s: Arc<Shared>,
) -> io::Result<()> {
    let udp = &s.sockets[path];
    let sock = register(udp.socket.clone(), Interest::READABLE)?;
    let in_place = !s.fwd.pipeline().grows_inbound();
    let mut out = TunWriter::new(&queues, s.slot_len(), (RX_BUFFERS, RX_BUFFER_LEN), in_place);
    let mut answers = Outgoing::new(&s, offload);
    let mut metas = [RecvMeta::default(); RX_BUFFERS];
    crate::alloc::watch_this_thread();
    loop {
        let mut guard = tokio::select! {
            biased;
            () = s.cancel.cancelled() => return Ok(()),
            g = sock.readable() => g?,
        };
        let mut iovs: ArrayVec<IoSliceMut<'_>, RX_BUFFERS> = out
            .rx_mut()
            .iter_mut()
            .map(|b| IoSliceMut::new(b))
            .collect();
        let got = match guard.try_io(|fd| {
            udp.state
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
        let mut written = 0;
        for (buffer, meta) in metas[..got].iter().enumerate() {
            // A GRO train: datagrams of `stride` bytes back to back, the last one shorter.
            // An empty datagram (a keepalive without packet info or encryption) is one.
            let stride = meta.stride.max(1);
            let dst_ip = meta.dst_ip.map(|ip| ip.to_canonical());
            for at in (0..meta.len.max(1)).step_by(stride) {
                let full = out.push_received(buffer, at..meta.len.min(at + stride), |pkt| {
                    s.fwd.handle_udp_on(path, pkt, meta.addr, dst_ip, now) == Outcome::WriteTun
                });
                if full {
                    written += write_tun(&mut out, &s)?;
                }
            }
        }
        if !out.is_empty() {
            written += write_tun(&mut out, &s)?;
        }
        if let Some((index, queue)) = out.take_answered()
            && written <= ANSWER_BATCH
            && s.sending.load(Ordering::Relaxed) == 0
        {
            // Sent on the path of the queue, as its outbound thread would: the flow's
            // datagrams leave from one socket.
            let (n, _) = answers.read(queue, 1, &s)?;
            answers.send(n, &s, index)?;
        }
    }
}

/// Flushes `out` to the TUN queues, counts the result and returns the number of packets
/// written.
fn write_tun(out: &mut TunWriter, s: &Shared) -> io::Result<usize> {
    let report = out.flush()?;
    let c = s.fwd.counters();
    c.tun_tx_packets.add(report.packets as u64);
    c.tun_tx_bytes.add(report.bytes as u64);
    if let Some(e) = report.error {
        // e.g. an invalid header that passed our checks: those packets are lost alone.
        c.tun_write_errors.add(report.lost as u64);
        s.log_error("TUN write failed", &e);
    }
    Ok(report.packets)
}
