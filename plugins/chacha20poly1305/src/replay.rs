//! The anti-replay window of RFC 6479 ("IPsec Anti-Replay Algorithm without Bit
//! Shifting").
//!
//! UDP may deliver datagrams twice, late, or out of order, and an attacker can record a
//! datagram and send it again. A valid tag proves who sealed a datagram, not that it is
//! new, so the receiver remembers which counters it has accepted:
//!
//! - a counter above the highest seen (`top`) is new: accept it and slide the window up;
//! - a counter within [`WINDOW`] below `top` is accepted once: the bitmap says whether it
//!   was seen (this is what lets reordered packets through);
//! - anything older is refused: we no longer know whether it was seen.
//!
//! The bitmap is a ring of 64-bit blocks. Sliding the window clears whole blocks instead
//! of shifting every bit (RFC 6479 §2), so the cost per packet is constant. With 2048
//! blocks (131072 bits) one block is always being reused, which leaves 131008 counters
//! of window, for 16 KiB per session.
//!
//! Why so wide (WireGuard's kernel module keeps 8128): a tunnel with several workers
//! receives on several sockets, one thread each, and the sender's counters are spread
//! over them. While the scheduler leaves one of those threads off its CPU, the others
//! move the window on, by the tunnel's packet rate times the time it waits; its
//! datagrams, waiting in its socket, are then that far behind. At 5 Gbit/s (about 430
//! thousand datagrams a second) a wait of 10 ms is 4300 counters: with a window of
//! 4032, two workers on two CPUs lost 1.1% of their datagrams (`replayed`) in a 5 s
//! iperf3 run, and 1.6-4.3% in a test of 16 TCP flows. This window covers a wait of 300 ms at that rate, longer than TCP waits
//! before it retransmits anyway. The width costs no security: within the window every
//! counter is still accepted at most once.
//!
//! The caller checks a counter *before* the (expensive) tag verification, to drop
//! duplicates cheaply, and updates the window only *after* the tag verified: a forged
//! datagram must never move the window, or an attacker could push `top` far ahead and
//! make every genuine packet "too old".

/// Bits per block of the bitmap.
const BLOCK_BITS: u64 = u64::BITS as u64;
/// Blocks in the ring (a power of two).
const BLOCKS: u64 = 2048;
/// How far below the highest accepted counter a counter may be and still be accepted.
pub const WINDOW: u64 = (BLOCKS - 1) * BLOCK_BITS;

/// Why a counter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// This counter was already accepted.
    Duplicate,
    /// More than [`WINDOW`] below the highest accepted counter.
    TooOld,
}

/// Which counters of one session were accepted. See the [module docs](self).
#[derive(Clone)]
pub struct ReplayWindow {
    top: u64,
    bitmap: [u64; BLOCKS as usize],
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("top", &self.top)
            .finish_non_exhaustive()
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// A window that has accepted nothing (counter 0 included).
    pub fn new() -> Self {
        Self {
            top: 0,
            bitmap: [0; BLOCKS as usize],
        }
    }

    /// A window that treats every counter up to `top` as seen: for a session that the
    /// receiver forgot the bitmap of and only remembers the highest counter of.
    pub fn seen_up_to(top: u64) -> Self {
        let mut bitmap = [u64::MAX; BLOCKS as usize];
        // In the block of `top`, the counters above it are still unseen.
        let (block, bit) = Self::position(top);
        bitmap[block] = bit | (bit - 1);
        Self { top, bitmap }
    }

    /// The highest accepted counter (0 if none).
    pub fn top(&self) -> u64 {
        self.top
    }

    fn position(counter: u64) -> (usize, u64) {
        let block = (counter / BLOCK_BITS) % BLOCKS;
        (block as usize, 1 << (counter % BLOCK_BITS))
    }

    /// Whether `counter` would be accepted now; changes nothing.
    pub fn check(&self, counter: u64) -> Result<(), Refused> {
        if counter > self.top {
            return Ok(());
        }
        if self.top - counter >= WINDOW {
            return Err(Refused::TooOld);
        }
        let (block, bit) = Self::position(counter);
        if self.bitmap[block] & bit != 0 {
            Err(Refused::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Accepts `counter` if [`check`](Self::check) allows it, and remembers it.
    pub fn check_and_update(&mut self, counter: u64) -> Result<(), Refused> {
        self.check(counter)?;
        if counter > self.top {
            // Clear the blocks that the window slides over (at most all of them).
            let current = self.top / BLOCK_BITS;
            let new = counter / BLOCK_BITS;
            let fresh = (new - current).min(BLOCKS);
            for i in 1..=fresh {
                self.bitmap[((current + i) % BLOCKS) as usize] = 0;
            }
            self.top = counter;
        }
        let (block, bit) = Self::position(counter);
        self.bitmap[block] |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_at_least_the_required_2048_and_300_ms_of_datagrams() {
        const { assert!(WINDOW >= 2048) };
        // 300 ms of full-size datagrams at 5 Gbit/s: what a receiving thread of a
        // tunnel with several workers may fall behind the others.
        const { assert!(WINDOW >= 5_000_000_000 / 8 / 1500 * 3 / 10) };
        assert_eq!(WINDOW, 131_008);
    }

    #[test]
    fn accepts_each_counter_once_in_any_order_within_the_window() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check_and_update(0), Ok(()));
        assert_eq!(w.check_and_update(0), Err(Refused::Duplicate));
        assert_eq!(w.check_and_update(100), Ok(()));
        for c in (1..100).rev() {
            assert_eq!(w.check_and_update(c), Ok(()), "counter {c}");
        }
        for c in 0..=100 {
            assert_eq!(w.check(c), Err(Refused::Duplicate));
        }
    }

    #[test]
    fn refuses_counters_older_than_the_window() {
        let mut w = ReplayWindow::new();
        let top = WINDOW + 10_000;
        w.check_and_update(top).unwrap();
        assert_eq!(w.check(top - WINDOW), Err(Refused::TooOld));
        assert_eq!(w.check(top - WINDOW + 1), Ok(()));
        assert_eq!(w.check_and_update(top - WINDOW + 1), Ok(()));
        assert_eq!(w.check(0), Err(Refused::TooOld));
    }

    #[test]
    fn a_big_jump_clears_everything_stale() {
        let mut w = ReplayWindow::new();
        for c in 0..5000 {
            w.check_and_update(c).unwrap();
        }
        w.check_and_update(1_000_000).unwrap();
        // Every counter in the window below the jump is new.
        for c in (1_000_000 - WINDOW + 1)..1_000_000 {
            assert_eq!(w.check(c), Ok(()), "counter {c}");
        }
    }

    #[test]
    fn matches_a_naive_model_on_a_pseudo_random_sequence() {
        use std::collections::HashSet;
        let mut w = ReplayWindow::new();
        let mut seen = HashSet::new();
        let mut top = 0u64;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly forward, sometimes far back, sometimes a big jump.
            let c = match x % 16 {
                0 => top.saturating_sub(x % 8000),
                1 => top + x % 5000,
                _ => (top + 3).saturating_sub(x % 200),
            };
            let expected = if c > top || (top - c < WINDOW && !seen.contains(&c)) {
                Ok(())
            } else if top - c >= WINDOW {
                Err(Refused::TooOld)
            } else {
                Err(Refused::Duplicate)
            };
            // A fresh window accepts 0 even though `top` starts at 0.
            let expected = if seen.is_empty() && c == 0 {
                Ok(())
            } else {
                expected
            };
            assert_eq!(w.check_and_update(c), expected, "counter {c}, top {top}");
            if expected.is_ok() {
                seen.insert(c);
                top = top.max(c);
            }
        }
    }

    #[test]
    fn seen_up_to_refuses_everything_at_or_below_its_top() {
        let mut w = ReplayWindow::seen_up_to(500);
        for c in 0..=500 {
            assert!(w.check(c).is_err(), "counter {c}");
        }
        assert_eq!(w.check_and_update(503), Ok(()));
        assert_eq!(w.check_and_update(501), Ok(()));
        assert_eq!(w.check_and_update(502), Ok(()));
        assert_eq!(w.check(501), Err(Refused::Duplicate));
        assert_eq!(w.check_and_update(10_000), Ok(()));
        assert_eq!(w.check_and_update(9_999), Ok(()));
    }
}
