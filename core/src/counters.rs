//! Lock-free counters for the per-packet path.
//!
//! Every counter here is a relaxed atomic add: no lock per packet. Counters written by
//! different threads (outbound and inbound, which run on different threads) sit on
//! separate cache lines so the two directions never make each other's cache line bounce.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::DropReason;

/// An `AtomicU64` on its own cache line, bumped with relaxed ordering.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// The value now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Passes and drops by reason, for one stage (or the core) in one direction.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PassDropCounters {
    passed: AtomicU64,
    drops: [AtomicU64; DropReason::KNOWN.len()],
    // `DropReason::Custom` names are not known in advance. Drops are the rare path (a
    // forged flood is the worst case, and then this is one short uncontended lock),
    // so a small list behind a mutex is enough.
    custom: Mutex<Vec<(&'static str, u64)>>,
}

impl PassDropCounters {
    /// Counts a packet that went through.
    #[inline]
    pub fn pass(&self) {
        self.passed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a dropped packet.
    pub fn drop_for(&self, reason: DropReason) {
        match reason.index() {
            Some(i) => {
                self.drops[i].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let name = reason.as_str();
                let mut custom = self.custom.lock().unwrap_or_else(|e| e.into_inner());
                match custom.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, count)) => *count += 1,
                    None => custom.push((name, 1)),
                }
            }
        }
    }

    /// Packets that went through.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }

    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        match reason.index() {
            Some(i) => self.drops[i].load(Ordering::Relaxed),
            None => {
                let custom = self.custom.lock().unwrap_or_else(|e| e.into_inner());
                custom
                    .iter()
                    .find(|(n, _)| *n == reason.as_str())
                    .map_or(0, |(_, c)| *c)
            }
        }
    }

    /// A copy of the values now; drops list only reasons that happened.
    pub fn snapshot(&self) -> PassDropSnapshot {
        let mut drops: Vec<(&'static str, u64)> = DropReason::KNOWN
            .iter()
            .zip(&self.drops)
            .map(|(r, c)| (r.as_str(), c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect();
        drops.extend(
            self.custom
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied(),
        );
        PassDropSnapshot {
            passed: self.passed(),
            drops,
        }
    }
}

/// Values of a [`PassDropCounters`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassDropSnapshot {
    /// Packets that went through.
    pub passed: u64,
    /// `(reason, count)` for every reason with at least one drop.
    pub drops: Vec<(&'static str, u64)>,
}

impl PassDropSnapshot {
    /// Sum of all drops.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().map(|(_, c)| c).sum()
    }

    /// Drops for one reason name (0 if none).
    pub fn dropped_for(&self, reason: &str) -> u64 {
        self.drops
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, c)| *c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_passes_and_drops_by_reason() {
        let c = PassDropCounters::default();
        c.pass();
        c.pass();
        c.drop_for(DropReason::BadTag);
        c.drop_for(DropReason::Custom("rate_limited"));
        c.drop_for(DropReason::Custom("rate_limited"));
        let s = c.snapshot();
        assert_eq!(s.passed, 2);
        assert_eq!(s.dropped_for("bad_tag"), 1);
        assert_eq!(s.dropped_for("rate_limited"), 2);
        assert_eq!(s.dropped(), 3);
        assert_eq!(c.dropped(DropReason::Custom("rate_limited")), 2);
        assert_eq!(c.dropped(DropReason::Replayed), 0);
    }
}
