//! [`LogLimiter`]: at most a few log lines per second for events an attacker can trigger.
//!
//! Anyone who can reach the UDP port can send garbage. Every such datagram is dropped
//! and counted; if each one also wrote a log line, a flood of forged datagrams would
//! become a flood of log lines (disk, journald, CPU). So drop messages go through a
//! limiter: a burst per second, then silence, then one line saying how many were
//! suppressed. The counters stay exact either way.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows up to `burst` events per second and counts the rest.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    allowed: u32,
    suppressed: u64,
}

/// The answer of [`LogLimiter::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogPermit {
    /// Log it. `suppressed` events were swallowed since the last permitted one.
    Log {
        /// Events not logged since the previous permit.
        suppressed: u64,
    },
    /// Stay quiet (it was counted).
    Quiet,
}

impl LogLimiter {
    /// A limiter allowing `burst` messages per second.
    pub const fn new(burst: u32) -> Self {
        Self {
            burst,
            state: Mutex::new(Window {
                start: None,
                allowed: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether an event at `now` may be logged.
    pub fn check(&self, now: Instant) -> LogPermit {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = w
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1));
        if fresh {
            w.start = Some(now);
            w.allowed = 0;
        }
        if w.allowed < self.burst {
            w.allowed += 1;
            let suppressed = std::mem::take(&mut w.suppressed);
            LogPermit::Log { suppressed }
        } else {
            w.suppressed += 1;
            LogPermit::Quiet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_per_second_and_reports_what_it_swallowed() {
        let l = LogLimiter::new(2);
        let t0 = Instant::now();
        assert_eq!(l.check(t0), LogPermit::Log { suppressed: 0 });
        assert_eq!(l.check(t0), LogPermit::Log { suppressed: 0 });
        for _ in 0..1000 {
            assert_eq!(l.check(t0 + Duration::from_millis(500)), LogPermit::Quiet);
        }
        assert_eq!(
            l.check(t0 + Duration::from_millis(1000)),
            LogPermit::Log { suppressed: 1000 }
        );
    }
}
