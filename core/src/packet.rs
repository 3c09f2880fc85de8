//! [`PacketBuf`]: one packet inside a larger buffer, with spare room on both sides.
//!
//! A tunnel wraps packets: on the way out a stage may put a header in front (the
//! packet-information header, a nonce) and a trailer behind (an authentication tag); on
//! the way in it takes them off again. If every stage allocated a new buffer for that,
//! a 10 Gbit/s tunnel would spend its time in the allocator and in `memcpy`. Instead the
//! packet sits in the middle of a buffer the driver allocated once, with *head room*
//! in front and *tail room* behind, sized from the overheads the stages declared (see
//! [`Overhead`](crate::Overhead)). Growing and shrinking only moves two indices; the
//! bytes never move. The Linux kernel's `sk_buff` works the same way (`skb_push`,
//! `skb_put`, `skb_pull`, `skb_trim`).
//!
//! ```text
//!  storage: [ head room | packet bytes ............ | tail room ]
//!             0       start                        end        storage.len()
//!  prepend(n): start -= n          append(n): end += n
//!  strip_front(n): start += n      strip_back(n): end -= n
//! ```
//!
//! A `PacketBuf` borrows its storage, so the driver decides where packets live (one
//! slot per packet, or consecutive slots of one big buffer that a single UDP GSO send
//! can take whole) and stages never know.

use std::fmt;

/// One packet (or tunnel datagram) inside borrowed storage, with head and tail room.
///
/// Stages receive `&mut PacketBuf` and edit it in place. The methods that grow the packet
/// ([`prepend`](Self::prepend), [`append`](Self::append)) panic when the room is missing,
/// because the pipeline reserves exactly the room that the stages declared: running out
/// of it is a bug in a stage's [`Stage::overhead`](crate::Stage::overhead), not bad input.
/// The methods that shrink it ([`strip_front`](Self::strip_front),
/// [`strip_back`](Self::strip_back)) return `None` when the packet is too short, because
/// that *is* bad input (a truncated or forged datagram) and must become a drop.
pub struct PacketBuf<'a> {
    storage: &'a mut [u8],
    start: usize,
    end: usize,
}

impl<'a> PacketBuf<'a> {
    /// Wraps `storage[start..start + len]` as the packet; the rest is head and tail room.
    ///
    /// # Panics
    ///
    /// If `start + len` exceeds the storage. IO code computes these from what it read.
    pub fn new(storage: &'a mut [u8], start: usize, len: usize) -> Self {
        let end = start
            .checked_add(len)
            .filter(|&end| end <= storage.len())
            .unwrap_or_else(|| {
                panic!(
                    "packet {start}+{len} does not fit storage of {}",
                    storage.len()
                )
            });
        Self {
            storage,
            start,
            end,
        }
    }

    /// Copies `data` into `storage` after `headroom` bytes and wraps it (handy in tests).
    ///
    /// # Panics
    ///
    /// If `headroom + data.len()` exceeds the storage.
    pub fn with_data(storage: &'a mut [u8], headroom: usize, data: &[u8]) -> Self {
        storage[headroom..headroom + data.len()].copy_from_slice(data);
        Self::new(storage, headroom, data.len())
    }

    /// The packet bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.end]
    }

    /// The packet bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.end]
    }

    /// Length of the packet in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True for a zero-length packet. Lametun uses an empty inner packet as a keepalive.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Bytes free in front of the packet.
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Bytes free behind the packet.
    pub fn tailroom(&self) -> usize {
        self.storage.len() - self.end
    }

    /// Grows the packet by `n` bytes at the front and returns them (their content is
    /// whatever the storage held: write all of it).
    ///
    /// # Panics
    ///
    /// If the head room is smaller than `n`: the stage's declared overhead is wrong.
    pub fn prepend(&mut self, n: usize) -> &mut [u8] {
        assert!(
            n <= self.start,
            "prepend({n}) with {} bytes of head room: a stage adds more than its declared overhead",
            self.start
        );
        self.start -= n;
        &mut self.storage[self.start..self.start + n]
    }

    /// Grows the packet by `n` bytes at the back and returns them (write all of it).
    ///
    /// # Panics
    ///
    /// If the tail room is smaller than `n`: the stage's declared overhead is wrong.
    pub fn append(&mut self, n: usize) -> &mut [u8] {
        assert!(
            n <= self.tailroom(),
            "append({n}) with {} bytes of tail room: a stage adds more than its declared overhead, or grows an inbound packet and says it does not (Stage::grows_inbound)",
            self.tailroom()
        );
        self.end += n;
        &mut self.storage[self.end - n..self.end]
    }

    /// Like [`prepend`](Self::prepend), but `None` instead of a panic when room is short.
    pub fn try_prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        (n <= self.start).then(|| self.prepend(n))
    }

    /// Like [`append`](Self::append), but `None` instead of a panic when room is short.
    pub fn try_append(&mut self, n: usize) -> Option<&mut [u8]> {
        (n <= self.tailroom()).then(|| self.append(n))
    }

    /// Removes `n` bytes from the front and returns them; `None` (and no change) if the
    /// packet is shorter than `n`. The removed bytes stay valid until the next write.
    pub fn strip_front(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.len() {
            return None;
        }
        self.start += n;
        Some(&mut self.storage[self.start - n..self.start])
    }

    /// Removes `n` bytes from the back and returns them; `None` (and no change) if the
    /// packet is shorter than `n`.
    pub fn strip_back(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.len() {
            return None;
        }
        self.end -= n;
        Some(&mut self.storage[self.end..self.end + n])
    }

    /// Shortens the packet to `len` bytes; does nothing if it is already shorter.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.end = self.start + len;
        }
    }

    /// Offset of the first packet byte in the storage (for IO code).
    pub fn start(&self) -> usize {
        self.start
    }

    /// Offset one past the last packet byte in the storage (for IO code).
    pub fn end(&self) -> usize {
        self.end
    }
}

impl fmt::Debug for PacketBuf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketBuf")
            .field("start", &self.start)
            .field("len", &self.len())
            .field("headroom", &self.headroom())
            .field("tailroom", &self.tailroom())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_and_shrink_move_indices_only() {
        let mut storage = [0u8; 32];
        let mut p = PacketBuf::with_data(&mut storage, 8, b"hello");
        assert_eq!((p.headroom(), p.len(), p.tailroom()), (8, 5, 19));
        p.prepend(4).copy_from_slice(b"HEAD");
        p.append(2).copy_from_slice(b"!!");
        assert_eq!(p.as_slice(), b"HEADhello!!");
        assert_eq!(p.strip_front(4).unwrap(), b"HEAD");
        assert_eq!(p.strip_back(2).unwrap(), b"!!");
        assert_eq!(p.as_slice(), b"hello");
        assert_eq!((p.start(), p.end()), (8, 13));
    }

    #[test]
    fn shrinking_a_short_packet_is_refused_without_change() {
        let mut storage = [0u8; 16];
        let mut p = PacketBuf::with_data(&mut storage, 4, b"abc");
        assert!(p.strip_front(4).is_none());
        assert!(p.strip_back(4).is_none());
        assert_eq!(p.as_slice(), b"abc");
        p.truncate(10);
        assert_eq!(p.len(), 3);
        p.truncate(1);
        assert_eq!(p.as_slice(), b"a");
    }

    #[test]
    fn try_grow_reports_missing_room() {
        let mut storage = [0u8; 8];
        let mut p = PacketBuf::with_data(&mut storage, 2, b"xy");
        assert!(p.try_prepend(3).is_none());
        assert!(p.try_append(5).is_none());
        assert!(p.try_prepend(2).is_some());
        assert!(p.try_append(4).is_some());
        assert_eq!(p.len(), 8);
    }

    #[test]
    #[should_panic(expected = "declared overhead")]
    fn prepend_past_head_room_panics() {
        let mut storage = [0u8; 8];
        let mut p = PacketBuf::new(&mut storage, 1, 0);
        p.prepend(2);
    }
}
