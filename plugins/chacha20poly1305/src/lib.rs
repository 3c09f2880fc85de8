//! `lametun-stage-chacha20poly1305`: the encryption stage of lametun.
//!
//! The article that lametun starts from leaves encryption as homework: "the equivalent
//! would be to extend lametun such that the UDP payloads are encrypted. That part is
//! straightforward, key management is difficult". This crate does the homework with a
//! pre-shared key (PSK): one line in the pipeline of both ends,
//!
//! ```yaml
//! pipeline:
//!   - type: chacha20poly1305
//!     key_file: /etc/lametun/psk     # `lametun genkey /etc/lametun/psk` (mode 0600), copied to both ends
//! ```
//!
//! and every datagram is encrypted and authenticated with ChaCha20-Poly1305 (RFC 8439;
//! `cipher: aes-256-gcm` for AES-256-GCM), through the `ring` crate (three times faster
//! than the pure-Rust `chacha20poly1305` crate on our machines; `cargo bench` keeps that
//! measured). The encryption itself really is the easy part. What this crate is about
//! is the rest: never using a nonce twice, refusing replays, and saying honestly what a
//! PSK cannot do.
//!
//! # Wire format
//!
//! Each datagram is the inner packet, sealed, between a 16-byte header and a 16-byte tag
//! (32 bytes of [`Overhead`](lametun_core::Overhead), declared so that `mtu: auto`
//! makes room for them and nothing fragments: 1500 - 20 - 8 - 32 = 1440 over IPv4):
//!
//! ```text
//!  0        1                                   8                                  16
//!  +--------+-----------------------------------+-----------------------------------+
//!  |  kind  |   counter (56 bits, big-endian)   |   session id (64 bits, random)    |
//!  +--------+-----------------------------------+-----------------------------------+
//!  |             ciphertext (as long as the inner packet; 0 for a keepalive)         |
//!  +---------------------------------------------------------------------------------+
//!  |                         tag (16 bytes, Poly1305 or GHASH)                       |
//!  +---------------------------------------------------------------------------------+
//!
//!  kind        0x01 ChaCha20-Poly1305, 0x02 AES-256-GCM; other values reserved
//!  counter     the sender's packet number in this session, from 0
//!  session id  picked at random by the sender when it starts, and again every hour
//!              or 2^28 packets (AES: 2^23); it names the key (below)
//!  AAD         the 16 header bytes: none of them can be changed unnoticed
//!  nonce       00 00 00 00 | kind | counter   (12 bytes, never sent separately)
//!  key         HKDF-SHA256(PSK; "lametun v1 session key" | cipher | 0x00 | session id)
//! ```
//!
//! An empty inner packet (a keepalive) is sealed like any other, so keepalives are
//! authenticated too: a 32-byte datagram.
//!
//! The `kind` byte costs no overhead: it takes the top byte of what would otherwise be a
//! 64-bit counter (2^56 packets is over two thousand years at a million packets a
//! second, and a session rotates after 2^28 at most anyway). It lets a receiver name a cipher
//! mismatch instead of counting bad tags, and leaves room for a later version of the
//! protocol (a handshake message, say) with the same 32 bytes. It is part of the nonce
//! and of the associated data, so it cannot be changed either.
//!
//! # Why nonces never repeat
//!
//! An AEAD nonce used twice under one key leaks the XOR of the two plaintexts and, for
//! both ciphers here, lets an attacker forge packets. The classic mistake with a PSK is a
//! counter that restarts at 0 when the program restarts: every restart reuses every
//! nonce. Here no key outlives its sender's run:
//!
//! - each sender picks a fresh random 64-bit **session id** at start, and derives the
//!   session's key from the PSK and that id with HKDF ([`keys`]). A restart, of either
//!   end, any number of times, means a new id and therefore a new key. Nothing has to
//!   be stored on disk, and the clock is never read;
//! - within a session the nonce is a **counter** handed out by one atomic `fetch_add`,
//!   so two threads sealing at once never get the same one;
//! - the **two directions** use different keys because the two ends pick different
//!   session ids. A sender also refuses to pick an id that it has already seen from the
//!   peer, and a receiver refuses datagrams carrying one of its own ids (they are its
//!   own datagrams, sent back: a reflection attack);
//! - a sender **rotates** to a new session after an hour, or after 2^28 packets
//!   (ChaCha20-Poly1305) or 2^23 packets (AES-256-GCM). The counter has 56 bits, so it
//!   cannot run out. 2^23 is the confidentiality limit of RFC 9001 §6.6 for AES-GCM
//!   with packets of up to 64 KiB, so it holds at any MTU; ChaCha20-Poly1305 has no
//!   practical confidentiality limit, and 2^28 keeps its sessions the size they have
//!   always been. The other limit of §6.6, on *forgery attempts* against one key (2^36
//!   for ChaCha20-Poly1305, 2^52 for AES-GCM), is not enforced: the receiver counts
//!   datagrams that fail authentication (`bad_tag`) but does not stop trying a key
//!   after any number of them, and a retired session stays resumable (below). 2^36
//!   forged datagrams is 19 hours at a million a second, at the attacker's expense and
//!   in plain sight of that counter.
//!
//! The one residual risk is two sessions drawing the same random id under the same PSK.
//! Sessions from one PSK are few (one per start and per hour): even 2^20 of them,
//! sixty years of hourly rotation at both ends, collide with probability about 2^-25,
//! and a PSK should be replaced long before. Random 96-bit nonces under one key, the
//! textbook alternative, are only safe up to about 2^32 packets.
//!
//! # Keys
//!
//! The PSK is 32 random bytes in base64, made by [`generate_key`] (`lametun genkey`).
//! The config names exactly one source: `key_file` (refused if its mode lets group or
//! others in, with the `chmod 600` that fixes it), `key_env` (an environment variable,
//! for systemd credentials or container secrets), or `key` inline (works, with a
//! warning: configs get copied, pasted and backed up). The key never appears in logs,
//! in `describe()` or in errors, and this crate's own copies of it are wiped when
//! dropped; the key schedules inside `ring` are not covered (ring does not promise to
//! wipe them).
//!
//! # Replay protection
//!
//! A tag proves who sealed a datagram, not that it is new. The receiver keeps, for the
//! current and the previous session of the peer, an RFC 6479 sliding window of 131008
//! counters ([`replay`], wide enough for the reordering between the receiving threads
//! of a tunnel with several workers): a reordered packet within the window passes once, a duplicate
//! or an older packet is dropped (`replayed`). The window moves only after the tag
//! verified, so forged datagrams cannot push it ahead. An older session of the peer is
//! **retired** when newer ones replace it: only its id and highest counter are kept, and
//! its datagrams at or below that counter are refused (`unknown_session`) for as long as
//! the receiver runs. When the peer restarts, its new session is accepted with the first
//! datagram that authenticates, so traffic resumes at once.
//!
//! One deliberate choice: a retired session that sends a datagram *above* its highest
//! counter is resumed, not refused. Refusing it would let anyone who recorded a single
//! datagram cut the tunnel: after a restart of this end (when it remembers nothing), a
//! recorded datagram of an old session authenticates and would retire the live session
//! for good. Resuming keeps the live session working; the cost is that datagrams an
//! on-path attacker withheld (never delivered) can still be delivered once, later.
//!
//! # Threat model
//!
//! Against an attacker who can read, drop, delay, replay, reorder and inject datagrams
//! on the path, but does not have the PSK:
//!
//! - **confidentiality and integrity**: the inner packets cannot be read or changed,
//!   and no datagram can be forged; any change to any byte is detected (`bad_tag`);
//! - **no hijacking**: the listening end learns the peer's address only from a datagram
//!   that authenticated (the core's forwarder does this after the whole chain passed), so
//!   forged datagrams from elsewhere move nothing, while a roaming peer is followed;
//! - **replay** is refused within a session and across the peer's restarts while the
//!   receiver runs.
//!
//! What it does **not** protect against, because a pre-shared key cannot:
//!
//! - **no forward secrecy**: whoever obtains the PSK later can decrypt every recorded
//!   datagram of the past (the session ids are on the wire). WireGuard avoids this with
//!   an ephemeral Diffie-Hellman handshake; use it when this matters;
//! - **no identity hiding or identities at all**: anyone with the PSK is "the peer";
//!   both ends are interchangeable, and a leaked key must be replaced on both;
//! - **replays across a receiver restart**: a receiver that restarts remembers no
//!   session, and has no clock to tell an old session from a new one. An attacker who
//!   recorded earlier traffic can then replay each recorded datagram **once** more (the
//!   windows still stop a second time), and that includes this end's own earlier
//!   datagrams, since their session ids were forgotten too. Inner protocols with their
//!   own sequence numbers (TCP, TLS, QUIC) discard such packets; plain UDP protocols may
//!   act on them. A handshake with fresh randomness from both ends would close this, at
//!   the cost of a round trip and state; so would a wall clock, at the cost of trusting
//!   it. This crate chooses neither: no persistent state, no clock, no handshake;
//! - **traffic analysis**: packet sizes and timing are visible (no padding), and so
//!   is the session id, which links the datagrams of one session across address
//!   changes;
//! - **denial of service**: anyone can send datagrams; each forged one costs the
//!   receiver one key derivation (for an unknown session id) and one tag check, about
//!   as much as a genuine packet, and it is counted and logged at a limited rate.
//!
//! # What this crate does not do
//!
//! No handshake, no public keys, no key rotation of the PSK itself (replace the file on
//! both ends and restart them), no padding. It is the encrypted mode of a point-to-point
//! tunnel between two hosts that share a secret, at the same cost per packet as
//! WireGuard's data path (32 bytes, one AEAD operation).
//!
//! # Drops
//!
//! Every dropped datagram is counted by the pipeline under its reason and logged at
//! `debug`, at most a few lines a second: `too_short`, `malformed` (unknown `kind`),
//! `cipher_mismatch`, `bad_tag`, `replayed`, `unknown_session` (a retired session),
//! `reflected`. A wrong key or cipher on one end is also reported at `warn`, each at most once
//! a minute. [`Stage::metrics`](lametun_core::Stage::metrics) adds the sessions
//! accepted, resumed and rotated.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod keys;
pub mod replay;
pub mod stage;
pub mod wire;

pub use config::{Chacha20Poly1305Config, InlineKey, KeySource};
pub use keys::{Cipher, KEY_LEN, KeyError, Psk, generate_key};
pub use stage::Chacha20Poly1305;

#[cfg(test)]
mod tests;
