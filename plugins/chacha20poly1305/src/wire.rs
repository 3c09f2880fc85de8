//! The 16-byte header in front of every sealed datagram, as a typed view (smoltcp's
//! `wire` style: named offsets, one checked parse, then no accessor can panic).
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
//! ```
//!
//! The whole header is the AEAD's associated data, so none of it can be changed without
//! the tag failing. The nonce is never sent separately: it is four zero bytes followed
//! by header bytes 0..8 (`kind` and `counter`), so it is unique for as long as the
//! counter is, under a key that is unique to (pre-shared key, cipher, session id).

use std::fmt;

use crate::Cipher;

/// Bytes in front of the ciphertext.
pub const HEADER_LEN: usize = 16;
/// Bytes of authentication tag behind the ciphertext.
pub const TAG_LEN: usize = 16;
/// The shortest valid datagram: a sealed keepalive (header and tag, no payload).
pub const MIN_DATAGRAM: usize = HEADER_LEN + TAG_LEN;
/// The largest counter that fits in the header (2^56 - 1).
pub const COUNTER_MAX: u64 = (1 << 56) - 1;

// Field offsets.
const KIND: usize = 0;
const COUNTER: std::ops::Range<usize> = 1..8;
const SESSION: std::ops::Range<usize> = 8..16;

/// A sender's session: a random 64-bit number, and the name of one derived key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// The decoded header of a sealed datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What follows: `0x01` ChaCha20-Poly1305 data, `0x02` AES-256-GCM data (see
    /// [`Cipher::kind`]). Other values are reserved for later versions of the protocol.
    pub kind: u8,
    /// The sender's packet number in this session, at most [`COUNTER_MAX`].
    pub counter: u64,
    /// The sender's session.
    pub session: SessionId,
}

impl Header {
    /// Reads the header of `datagram`; `None` if the datagram is shorter than a sealed
    /// keepalive ([`MIN_DATAGRAM`]), so that a `Some` also guarantees room for the tag.
    pub fn parse(datagram: &[u8]) -> Option<Self> {
        if datagram.len() < MIN_DATAGRAM {
            return None;
        }
        let mut counter = [0u8; 8];
        counter[1..].copy_from_slice(&datagram[COUNTER]);
        let mut session = [0u8; 8];
        session.copy_from_slice(&datagram[SESSION]);
        Some(Self {
            kind: datagram[KIND],
            counter: u64::from_be_bytes(counter),
            session: SessionId(u64::from_be_bytes(session)),
        })
    }

    /// The header for packet `counter` of `session` sealed with `cipher`.
    ///
    /// # Panics
    ///
    /// In debug builds, if `counter` exceeds [`COUNTER_MAX`] (the sender rotates its
    /// session long before).
    pub fn new(cipher: Cipher, session: SessionId, counter: u64) -> Self {
        debug_assert!(counter <= COUNTER_MAX);
        Self {
            kind: cipher.kind(),
            counter,
            session,
        }
    }

    /// The 16 bytes on the wire (also the associated data).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[KIND] = self.kind;
        out[COUNTER].copy_from_slice(&(self.counter & COUNTER_MAX).to_be_bytes()[1..]);
        out[SESSION].copy_from_slice(&self.session.0.to_be_bytes());
        out
    }

    /// The 96-bit AEAD nonce: `00 00 00 00 | kind | counter`.
    pub fn nonce(&self) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.to_bytes()[..8]);
        nonce
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_places_fields_at_their_offsets() {
        let h = Header::new(
            Cipher::ChaCha20Poly1305,
            SessionId(0x0102_0304_0506_0708),
            0x00aa_bbcc_ddee_ff11,
        );
        let bytes = h.to_bytes();
        assert_eq!(
            bytes,
            [
                0x01, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x11, 1, 2, 3, 4, 5, 6, 7, 8
            ]
        );
        let mut datagram = bytes.to_vec();
        datagram.extend_from_slice(&[0u8; TAG_LEN]);
        assert_eq!(Header::parse(&datagram), Some(h));
        assert_eq!(
            h.nonce(),
            [0, 0, 0, 0, 0x01, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x11]
        );
    }

    #[test]
    fn shorter_than_a_sealed_keepalive_does_not_parse() {
        assert!(Header::parse(&[0u8; MIN_DATAGRAM - 1]).is_none());
        assert!(Header::parse(&[0u8; MIN_DATAGRAM]).is_some());
    }
}
