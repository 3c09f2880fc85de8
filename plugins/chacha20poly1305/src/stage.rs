//! The stage: sealing on the way out, opening and replay checks on the way in.
//!
//! One stage instance serves every worker thread of the tunnel (`&self` everywhere):
//!
//! - **sending** needs one atomic `fetch_add` per packet: the counter of the current
//!   sending session, which lives behind an [`ArcSwap`] so that a rotation swaps it
//!   without blocking the threads that are sealing;
//! - **receiving** takes a short lock twice per datagram: once to find the session and
//!   drop duplicates cheaply, once after the tag verified to update the replay window.
//!   The AEAD work itself runs outside the lock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use lametun_core::ratelimit::{LogLimiter, LogPermit};
use lametun_core::{
    DropReason, Metric, MetricKind, Overhead, PacketBuf, PacketMeta, Stage, Verdict,
};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::KeySource;
use crate::keys::{Cipher, KeyError, MasterKey, Psk};
use crate::replay::{ReplayWindow, WINDOW};
use crate::wire::{COUNTER_MAX, HEADER_LEN, Header, SessionId, TAG_LEN};

/// Peer sessions whose full replay window is kept: the current one and the one before
/// (so that packets still in flight when the peer rotates are not lost).
pub const LIVE_SESSIONS: usize = 2;
/// Retired peer sessions remembered (id and highest counter, 16 bytes each). Only
/// sessions that authenticated get here, so an attacker without the key cannot fill it.
pub const MAX_RETIRED: usize = 1 << 16;
/// A ChaCha20-Poly1305 sender starts a new session after this many packets (see the
/// crate docs on limits).
pub const ROTATE_AFTER_PACKETS: u64 = 1 << 28;
/// An AES-256-GCM sender starts a new session after this many packets: the
/// confidentiality limit of RFC 9001 §6.6 for packets of up to 64 KiB, so it holds
/// whatever the MTU (2^28 holds only for packets of at most 2 KiB).
pub const ROTATE_AFTER_PACKETS_AES_GCM: u64 = 1 << 23;
/// A sender starts a new session after this long.
pub const ROTATE_AFTER_TIME: Duration = Duration::from_secs(60 * 60);

/// The datagram carries one of our own session ids: it is our own datagram, sent back.
pub const REFLECTED: DropReason = DropReason::Custom("reflected");
/// The peer seals with the other cipher.
pub const CIPHER_MISMATCH: DropReason = DropReason::Custom("cipher_mismatch");
/// No nonce left and no new session could be started (the OS RNG failed).
pub const NONCE_EXHAUSTED: DropReason = DropReason::Custom("nonce_exhausted");

/// How often at most each hint (wrong key, wrong cipher) is logged at `warn`.
const HINT_INTERVAL: Duration = Duration::from_secs(60);

/// This end's sending session.
struct SendSession {
    id: SessionId,
    key: LessSafeKey,
    /// The next counter to use. `fetch_add` hands each one out exactly once.
    next: AtomicU64,
    /// When the session was first seen by `on_tick` (for rotation by age).
    born: OnceLock<Instant>,
}

/// A peer session whose replay window is kept.
struct RecvSession {
    id: SessionId,
    key: Arc<LessSafeKey>,
    window: ReplayWindow,
    /// Value of `RecvState::clock` when it last accepted a datagram (for LRU eviction).
    last_used: u64,
}

/// A peer session that is no longer live: only its highest counter is kept.
#[derive(Clone, Copy)]
struct Retired {
    top: u64,
    /// When it was retired (`RecvState::clock`), to evict the oldest when full.
    at: u64,
}

/// What became of an authenticated datagram's session.
enum Accepted {
    /// A live session.
    Known,
    /// A session never seen before.
    New,
    /// A retired session, with a counter above the highest it had.
    Resumed,
}

#[derive(Default)]
struct RecvState {
    live: Vec<RecvSession>,
    retired: HashMap<SessionId, Retired>,
    /// Every session id this end has sent with (so that our own datagrams, sent back to
    /// us, are refused), oldest first.
    own: HashSet<SessionId>,
    own_order: VecDeque<SessionId>,
    /// Counts accepted datagrams; orders sessions by use.
    clock: u64,
}

impl RecvState {
    fn is_taken(&self, id: SessionId) -> bool {
        self.own.contains(&id)
            || self.retired.contains_key(&id)
            || self.live.iter().any(|s| s.id == id)
    }

    fn add_own(&mut self, id: SessionId) {
        if self.own_order.len() >= MAX_RETIRED
            && let Some(old) = self.own_order.pop_front()
        {
            self.own.remove(&old);
        }
        self.own.insert(id);
        self.own_order.push_back(id);
    }

    /// Before the tag is checked: the key of a live session (after a cheap replay
    /// check), `None` for a session that must be derived, or why to drop.
    fn lookup(&self, h: &Header) -> Result<Option<Arc<LessSafeKey>>, DropReason> {
        if let Some(s) = self.live.iter().find(|s| s.id == h.session) {
            s.window
                .check(h.counter)
                .map_err(|_| DropReason::Replayed)?;
            return Ok(Some(s.key.clone()));
        }
        if self.own.contains(&h.session) {
            return Err(REFLECTED);
        }
        match self.retired.get(&h.session) {
            Some(r) if h.counter <= r.top => Err(DropReason::UnknownSession),
            _ => Ok(None),
        }
    }

    /// After the tag verified: the authoritative replay check, and the window update.
    fn accept(&mut self, h: &Header, key: Arc<LessSafeKey>) -> Result<Accepted, DropReason> {
        self.clock += 1;
        let clock = self.clock;
        if let Some(s) = self.live.iter_mut().find(|s| s.id == h.session) {
            s.window
                .check_and_update(h.counter)
                .map_err(|_| DropReason::Replayed)?;
            s.last_used = clock;
            return Ok(Accepted::Known);
        }
        self.admit(h, key, clock)
    }

    /// A session not live yet: new, or a retired one resumed. Kept out of `accept` (and
    /// so out of every datagram's `open`): its 16 KiB window on the stack gave those a
    /// 33 KiB frame, whose stack probes touched eight pages per datagram.
    #[cold]
    #[inline(never)]
    fn admit(
        &mut self,
        h: &Header,
        key: Arc<LessSafeKey>,
        clock: u64,
    ) -> Result<Accepted, DropReason> {
        if self.own.contains(&h.session) {
            return Err(REFLECTED);
        }
        let (mut window, accepted) = match self.retired.get(&h.session).copied() {
            // Checked before the tag too, but another thread may have retired it since.
            Some(r) if h.counter <= r.top => return Err(DropReason::UnknownSession),
            Some(r) => {
                self.retired.remove(&h.session);
                (ReplayWindow::seen_up_to(r.top), Accepted::Resumed)
            }
            None => (ReplayWindow::new(), Accepted::New),
        };
        window
            .check_and_update(h.counter)
            .map_err(|_| DropReason::Replayed)?;
        if self.live.len() >= LIVE_SESSIONS
            && let Some(lru) = (0..self.live.len()).min_by_key(|&i| self.live[i].last_used)
        {
            let old = self.live.swap_remove(lru);
            self.retire(old.id, old.window.top());
        }
        self.live.push(RecvSession {
            id: h.session,
            key,
            window,
            last_used: clock,
        });
        Ok(accepted)
    }

    fn retire(&mut self, id: SessionId, top: u64) {
        if self.retired.len() >= MAX_RETIRED
            && let Some(oldest) = self
                .retired
                .iter()
                .min_by_key(|(_, r)| r.at)
                .map(|(id, _)| *id)
        {
            // Its old datagrams could now be replayed once more; after 65536 sessions.
            self.retired.remove(&oldest);
        }
        self.retired.insert(
            id,
            Retired {
                top,
                at: self.clock,
            },
        );
    }
}

/// The `chacha20poly1305` stage. See the [crate docs](crate) for the protocol.
pub struct Chacha20Poly1305 {
    cipher: Cipher,
    master: MasterKey,
    source: KeySource,
    rng: SystemRandom,
    rotate_after_packets: u64,
    rotate_after_time: Duration,
    send: ArcSwap<SendSession>,
    /// Held while a new sending session is made (one rotation at a time).
    rotating: Mutex<()>,
    recv: Mutex<RecvState>,
    sessions_accepted: AtomicU64,
    sessions_resumed: AtomicU64,
    rotations: AtomicU64,
    drop_log: LogLimiter,
    session_log: LogLimiter,
    /// When each hint was last logged: [wrong key, wrong cipher]. Apart, so that a
    /// cipher mismatch found right after a key was fixed is not kept quiet for a minute
    /// by the wrong-key hint.
    last_hint: Mutex<[Option<Instant>; 2]>,
}

impl fmt::Debug for Chacha20Poly1305 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chacha20Poly1305")
            .field("cipher", &self.cipher)
            .field("source", &self.source)
            .field("session", &self.send.load().id)
            .finish_non_exhaustive()
    }
}

/// Why a datagram was dropped, with what is known of it (for the log).
struct Rejected {
    reason: DropReason,
    header: Option<Header>,
}

impl Rejected {
    fn new(reason: DropReason, header: &Header) -> Self {
        Self {
            reason,
            header: Some(*header),
        }
    }
}

impl Chacha20Poly1305 {
    /// A stage sealing with `cipher` under session keys derived from `psk`. Picks a
    /// random sending session; fails only if the OS random number generator does.
    pub fn new(cipher: Cipher, psk: &Psk) -> Result<Self, KeyError> {
        Self::with_source(cipher, psk, KeySource::Program)
    }

    pub(crate) fn with_source(
        cipher: Cipher,
        psk: &Psk,
        source: KeySource,
    ) -> Result<Self, KeyError> {
        let master = MasterKey::new(psk);
        let rng = SystemRandom::new();
        let mut recv = RecvState::default();
        let first = new_send_session(&master, cipher, &rng, &recv)?;
        recv.add_own(first.id);
        Ok(Self {
            cipher,
            master,
            source,
            rng,
            rotate_after_packets: match cipher {
                Cipher::ChaCha20Poly1305 => ROTATE_AFTER_PACKETS,
                Cipher::Aes256Gcm => ROTATE_AFTER_PACKETS_AES_GCM,
            },
            rotate_after_time: ROTATE_AFTER_TIME,
            send: ArcSwap::from_pointee(first),
            rotating: Mutex::new(()),
            recv: Mutex::new(recv),
            sessions_accepted: AtomicU64::new(0),
            sessions_resumed: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            drop_log: LogLimiter::new(5),
            session_log: LogLimiter::new(5),
            last_hint: Mutex::new([None; 2]),
        })
    }

    /// Starts a new sending session after `packets` packets or `age` (defaults:
    /// [`ROTATE_AFTER_PACKETS`] or [`ROTATE_AFTER_PACKETS_AES_GCM`], [`ROTATE_AFTER_TIME`];
    /// age is measured by
    /// [`Stage::on_tick`]). `packets` is capped at 2^56, the counter's range.
    pub fn rotate_after(mut self, packets: u64, age: Duration) -> Self {
        self.rotate_after_packets = packets.clamp(1, COUNTER_MAX + 1);
        self.rotate_after_time = age;
        self
    }

    /// The cipher.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// The id of this end's current sending session.
    pub fn session_id(&self) -> u64 {
        self.send.load().id.0
    }

    fn lock_recv(&self) -> MutexGuard<'_, RecvState> {
        self.recv.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the sending session `old` by a fresh one (unless another thread did
    /// already). False if no session could be made.
    fn rotate(&self, old: &SendSession, why: &'static str) -> bool {
        let _one_at_a_time = self.rotating.lock().unwrap_or_else(|e| e.into_inner());
        if !std::ptr::eq(&**self.send.load(), old) {
            return true;
        }
        let new = {
            let mut recv = self.lock_recv();
            match new_send_session(&self.master, self.cipher, &self.rng, &recv) {
                Ok(new) => {
                    // Known as ours before the first datagram of it leaves.
                    recv.add_own(new.id);
                    new
                }
                Err(e) => {
                    tracing::error!("chacha20poly1305: cannot start a new session: {e}");
                    return false;
                }
            }
        };
        tracing::debug!(
            old = %old.id,
            new = %new.id,
            sealed = old.next.load(Ordering::Relaxed).min(self.rotate_after_packets),
            why,
            "chacha20poly1305: new sending session"
        );
        self.send.store(Arc::new(new));
        self.rotations.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn seal(&self, session: &SendSession, counter: u64, pkt: &mut PacketBuf<'_>) -> Verdict {
        let header = Header::new(self.cipher, session.id, counter);
        let bytes = header.to_bytes();
        let nonce = Nonce::assume_unique_for_key(header.nonce());
        let Ok(tag) =
            session
                .key
                .seal_in_place_separate_tag(nonce, Aad::from(&bytes), pkt.as_mut_slice())
        else {
            // Only for inputs of 256 GiB and more.
            return Verdict::Drop(DropReason::TooLarge);
        };
        pkt.prepend(HEADER_LEN).copy_from_slice(&bytes);
        pkt.append(TAG_LEN).copy_from_slice(tag.as_ref());
        Verdict::Pass
    }

    fn open(&self, pkt: &mut PacketBuf<'_>) -> Result<(), Rejected> {
        let Some(header) = Header::parse(pkt.as_slice()) else {
            return Err(Rejected {
                reason: DropReason::TooShort,
                header: None,
            });
        };
        if header.kind != self.cipher.kind() {
            let reason = match Cipher::from_kind(header.kind) {
                Some(_) => CIPHER_MISMATCH,
                None => DropReason::Malformed,
            };
            return Err(Rejected::new(reason, &header));
        }
        let known = self
            .lock_recv()
            .lookup(&header)
            .map_err(|r| Rejected::new(r, &header))?;
        // A session we do not know yet: derive its key and let the tag decide. (An
        // attacker can make us do this for every forged datagram: one HKDF, about a
        // microsecond, on top of the tag check that every datagram costs anyway.)
        let key =
            known.unwrap_or_else(|| Arc::new(self.master.session_key(self.cipher, header.session)));

        let mut aad = [0u8; HEADER_LEN];
        aad.copy_from_slice(&pkt.as_slice()[..HEADER_LEN]);
        let mut tag = [0u8; TAG_LEN];
        // `parse` guaranteed room for both.
        if let Some(t) = pkt.strip_back(TAG_LEN) {
            tag.copy_from_slice(t);
        }
        let _ = pkt.strip_front(HEADER_LEN);
        let nonce = Nonce::assume_unique_for_key(header.nonce());
        key.open_in_place_separate_tag(
            nonce,
            Aad::from(&aad),
            Tag::from(tag),
            pkt.as_mut_slice(),
            0..,
        )
        .map_err(|_| Rejected::new(DropReason::BadTag, &header))?;

        let accepted = self
            .lock_recv()
            .accept(&header, key)
            .map_err(|r| Rejected::new(r, &header))?;
        match accepted {
            Accepted::Known => {}
            Accepted::New => {
                self.sessions_accepted.fetch_add(1, Ordering::Relaxed);
                self.log_session(&header, "accepted a new session of the peer");
            }
            Accepted::Resumed => {
                self.sessions_resumed.fetch_add(1, Ordering::Relaxed);
                self.log_session(&header, "resumed an earlier session of the peer");
            }
        }
        Ok(())
    }

    fn log_session(&self, header: &Header, what: &'static str) {
        // Only authenticated datagrams get here, but a recorded one replayed after our
        // restart does too: keep this bounded as well.
        if let LogPermit::Log { suppressed } = self.session_log.check(Instant::now()) {
            tracing::info!(
                session = %header.session,
                counter = header.counter,
                suppressed,
                "chacha20poly1305: {what}"
            );
        }
    }

    fn log_drop(&self, rejected: &Rejected, meta: &PacketMeta) {
        let reason = rejected.reason;
        if let LogPermit::Log { suppressed } = self.drop_log.check(meta.now) {
            match &rejected.header {
                Some(h) => tracing::debug!(
                    %reason,
                    session = %h.session,
                    counter = h.counter,
                    from = %source(meta),
                    suppressed,
                    "chacha20poly1305: dropped a datagram"
                ),
                None => tracing::debug!(
                    %reason,
                    from = %source(meta),
                    suppressed,
                    "chacha20poly1305: dropped a datagram"
                ),
            }
        }
        // A wrong key or cipher on one end looks exactly like this, and nobody runs at
        // debug level by default: say it at warn, at most once a minute.
        if reason == DropReason::BadTag || reason == CIPHER_MISMATCH {
            let mut last = self.last_hint.lock().unwrap_or_else(|e| e.into_inner());
            let last = &mut last[usize::from(reason == CIPHER_MISMATCH)];
            if last.is_none_or(|t| meta.now.saturating_duration_since(t) >= HINT_INTERVAL) {
                *last = Some(meta.now);
                let hint = match (reason, rejected.header.and_then(|h| Cipher::from_kind(h.kind))) {
                    (CIPHER_MISMATCH, Some(theirs)) => format!(
                        "the sender uses cipher {theirs} and this end {}: set the same `cipher` on both ends",
                        self.cipher
                    ),
                    _ => "a datagram failed authentication: if none gets through, the two ends have different keys (or someone sends forged datagrams)".to_owned(),
                };
                tracing::warn!(from = %source(meta), "chacha20poly1305: {hint}");
            }
        }
    }
}

/// Where a datagram came from, for logs.
fn source(meta: &PacketMeta) -> String {
    meta.peer
        .map_or_else(|| "unknown".to_owned(), |p| p.to_string())
}

/// A sending session with a fresh random id that is not in use by either end.
fn new_send_session(
    master: &MasterKey,
    cipher: Cipher,
    rng: &SystemRandom,
    recv: &RecvState,
) -> Result<SendSession, KeyError> {
    // A collision has probability 2^-64 per known id; retrying is free.
    for _ in 0..8 {
        let mut id = [0u8; 8];
        rng.fill(&mut id).map_err(|_| KeyError::Rng)?;
        let id = SessionId(u64::from_be_bytes(id));
        if !recv.is_taken(id) {
            return Ok(SendSession {
                id,
                key: master.session_key(cipher, id),
                next: AtomicU64::new(0),
                born: OnceLock::new(),
            });
        }
    }
    Err(KeyError::Rng)
}

impl Stage for Chacha20Poly1305 {
    fn overhead(&self) -> Overhead {
        Overhead::new(HEADER_LEN, TAG_LEN)
    }

    /// Opening takes the header and the tag off: a packet only shrinks.
    fn grows_inbound(&self) -> bool {
        false
    }

    fn outbound(&self, pkt: &mut PacketBuf<'_>, _meta: &PacketMeta) -> Verdict {
        // Bounded: each round either seals or starts a new session; a second failure to
        // start one means the RNG is broken.
        for _ in 0..4 {
            let session = self.send.load();
            let counter = session.next.fetch_add(1, Ordering::Relaxed);
            if counter < self.rotate_after_packets {
                return self.seal(&session, counter, pkt);
            }
            if !self.rotate(&session, "packet limit") {
                // Keep sealing with the old session while its counter lasts.
                if counter <= COUNTER_MAX {
                    return self.seal(&session, counter, pkt);
                }
                break;
            }
        }
        Verdict::Drop(NONCE_EXHAUSTED)
    }

    fn inbound(&self, pkt: &mut PacketBuf<'_>, meta: &PacketMeta) -> Verdict {
        match self.open(pkt) {
            Ok(()) => Verdict::Pass,
            Err(rejected) => {
                self.log_drop(&rejected, meta);
                Verdict::Drop(rejected.reason)
            }
        }
    }

    fn on_tick(&self, now: Instant) {
        let session = self.send.load_full();
        let born = *session.born.get_or_init(|| now);
        if now.saturating_duration_since(born) >= self.rotate_after_time {
            self.rotate(&session, "age");
        }
    }

    fn describe(&self) -> String {
        format!(
            "cipher {}, {}, replay window {WINDOW} packets, new session every {} packets or {}",
            self.cipher,
            self.source,
            count(self.rotate_after_packets),
            humanize(self.rotate_after_time),
        )
    }

    fn metrics(&self, out: &mut Vec<Metric>) {
        let (live, retired) = {
            let recv = self.lock_recv();
            (recv.live.len(), recv.retired.len())
        };
        let sealed = self
            .send
            .load()
            .next
            .load(Ordering::Relaxed)
            .min(self.rotate_after_packets);
        let metric = |name, help, kind, value: u64| Metric {
            name,
            help,
            kind,
            labels: Vec::new(),
            value: value as f64,
        };
        out.extend([
            metric(
                "crypto_sessions_accepted",
                "Peer sessions accepted (a new session id whose first datagram authenticated)",
                MetricKind::Counter,
                self.sessions_accepted.load(Ordering::Relaxed),
            ),
            metric(
                "crypto_sessions_resumed",
                "Retired peer sessions accepted again with a counter above their last one",
                MetricKind::Counter,
                self.sessions_resumed.load(Ordering::Relaxed),
            ),
            metric(
                "crypto_send_rotations",
                "New sending sessions started after the packet or time limit",
                MetricKind::Counter,
                self.rotations.load(Ordering::Relaxed),
            ),
            metric(
                "crypto_live_sessions",
                "Peer sessions with a full replay window",
                MetricKind::Gauge,
                live as u64,
            ),
            metric(
                "crypto_retired_sessions",
                "Earlier peer sessions remembered to refuse their datagrams",
                MetricKind::Gauge,
                retired as u64,
            ),
            metric(
                "crypto_send_counter",
                "Datagrams sealed in the current sending session",
                MetricKind::Gauge,
                sealed,
            ),
        ]);
    }
}

/// `268435456` as `2^28`; other numbers as they are.
fn count(n: u64) -> String {
    if n.is_power_of_two() && n >= 1 << 10 {
        format!("2^{}", n.trailing_zeros())
    } else {
        n.to_string()
    }
}

/// `3600s` as `1h`, `90s` as `90s`.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s >= 60 && s % 60 == 0 {
        format!("{}min", s / 60)
    } else {
        format!("{:?}", d)
    }
}
