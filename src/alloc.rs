//! Counting the heap allocations of the forwarding threads, to show that the hot path
//! makes none.
//!
//! Every buffer the driver uses is allocated when its thread starts and reused for
//! every batch after. [`CountingAllocator`] wraps the system allocator and counts the
//! allocations made on threads that called [`watch_this_thread`], which each driver
//! thread does once its buffers exist, until its loop ends. The shutdown summary
//! reports the count ([`forwarding_allocations`]), and the tests on real devices assert
//! that it stays at a few dozen over a transfer of tens of thousands of packets.
//!
//! What it finds on a healthy tunnel (seen with a backtrace per allocation): log lines
//! (a peer address learned, a rate-limited error), a new session of the peer in the
//! chacha20poly1305 stage, one `arc_swap` slot per thread, and the GRO planner's list
//! of writes growing to the largest batch in the first few batches. Nothing per packet
//! or per batch: 10-30 per end over a 5-second transfer of 3.5 million packets.
//!
//! The `lametun` binary installs it; a custom binary can too:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: lametun::alloc::CountingAllocator = lametun::alloc::CountingAllocator;
//! ```
//!
//! The cost is one thread-local read per allocation on every thread, and one relaxed
//! atomic add per allocation on a watched one (which should be none). It is written
//! here, not taken from a crate: the counting crates on crates.io either count for the
//! whole process, which the control loop and the runtime would pollute, or are young
//! single-author crates, which a VPN should not take as its global allocator for
//! twenty lines.

#![allow(unsafe_code)] // a GlobalAlloc is unsafe by definition; each call forwards to System

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

thread_local! {
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

static COUNTED: AtomicU64 = AtomicU64::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting the allocations of watched threads.
pub struct CountingAllocator;

impl CountingAllocator {
    #[inline]
    fn note() {
        // `try_with`: the thread-local may already be gone while a thread exits.
        if WATCHED.try_with(Cell::get).unwrap_or(false) {
            COUNTED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so it
// upholds exactly the contract `System` does; the counting touches only a const
// thread-local `Cell` and an atomic, neither of which allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::note();
        // SAFETY: forwarded unchanged (see above).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::note();
        // SAFETY: forwarded unchanged (see above).
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::note();
        // SAFETY: forwarded unchanged (see above).
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged (see above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Counts the allocations the calling thread makes from now on. A driver thread calls
/// it once its buffers are allocated, just before its loop.
pub fn watch_this_thread() {
    WATCHED.with(|w| w.set(true));
    // Whether the counter is installed: the allocation below reaches `note` only if it
    // is, and then counts once, which this takes back.
    let before = COUNTED.load(Ordering::Relaxed);
    drop(std::hint::black_box(Box::new(0u8)));
    if COUNTED.load(Ordering::Relaxed) > before {
        INSTALLED.store(true, Ordering::Relaxed);
        COUNTED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Stops counting the calling thread's allocations (a driver thread whose loop ended).
pub fn unwatch_this_thread() {
    let _ = WATCHED.try_with(|w| w.set(false));
}

/// The allocations made on watched threads so far, or `None` when
/// [`CountingAllocator`] is not this program's global allocator.
pub fn forwarding_allocations() -> Option<u64> {
    INSTALLED
        .load(Ordering::Relaxed)
        .then(|| COUNTED.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOCATOR: CountingAllocator = CountingAllocator;

    #[test]
    fn only_the_allocations_of_watched_threads_count() {
        // Other tests run on other threads, unwatched: they never count.
        std::thread::spawn(|| {
            watch_this_thread();
            let before = forwarding_allocations().expect("installed in this test binary");
            let mut v = std::hint::black_box(Vec::<u64>::with_capacity(4));
            v.extend(0..100); // grows: reallocations count too
            let during = forwarding_allocations().unwrap() - before;
            assert!(during >= 2, "{during}");
            drop(v);
            let reused = forwarding_allocations().unwrap();
            let mut buffer = [0u8; 64];
            buffer.fill(std::hint::black_box(7));
            assert_eq!(
                forwarding_allocations().unwrap(),
                reused,
                "no heap, no count"
            );
            unwatch_this_thread();
            drop(std::hint::black_box(Box::new(1u8)));
            assert_eq!(forwarding_allocations().unwrap(), reused);
        })
        .join()
        .unwrap();
    }
}
