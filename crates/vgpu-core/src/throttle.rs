//! Rate-limited log lines: a program that retries a refused allocation in a loop must not flood
//! its own stderr with one WARN line per refusal. The first event of a kind is said in
//! full; later ones are counted, and said at most once per interval, with the count of those not
//! shown; what is left is said at exit. Time is an argument, so the policy is tested with a fake
//! clock.

use std::sync::Mutex;

/// What the caller should print for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Say {
    /// Nothing: the event is counted, and said later.
    Nothing,
    /// The event's own line; `unsaid` earlier events were not shown since the last line.
    Line { unsaid: u64 },
}

#[derive(Default)]
struct Inner {
    said_any: bool,
    last_said_ns: u64,
    unsaid: u64,
}

pub struct Throttle {
    interval_ns: u64,
    inner: Mutex<Inner>,
}

impl Throttle {
    /// At most one line per `interval_ns` after the first.
    pub const fn new(interval_ns: u64) -> Self {
        Throttle { interval_ns, inner: Mutex::new(Inner { said_any: false, last_said_ns: 0, unsaid: 0 }) }
    }

    /// One event at `now_ns` (a monotonic clock).
    pub fn event(&self, now_ns: u64) -> Say {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if s.said_any && now_ns.saturating_sub(s.last_said_ns) < self.interval_ns {
            s.unsaid += 1;
            return Say::Nothing;
        }
        s.said_any = true;
        s.last_said_ns = now_ns;
        Say::Line { unsaid: std::mem::take(&mut s.unsaid) }
    }

    /// The events never said (at exit); counts them as said.
    pub fn take_unsaid(&self) -> u64 {
        std::mem::take(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()).unsaid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn first_event_is_said_then_one_line_per_interval() {
        let t = Throttle::new(5 * S);
        assert_eq!(t.event(100), Say::Line { unsaid: 0 });
        // 200 refusals within a second: nothing more.
        for i in 0..200 {
            assert_eq!(t.event(100 + i * 1000), Say::Nothing);
        }
        assert_eq!(t.event(100 + 5 * S), Say::Line { unsaid: 200 });
        assert_eq!(t.event(100 + 6 * S), Say::Nothing);
        assert_eq!(t.take_unsaid(), 1);
        assert_eq!(t.take_unsaid(), 0, "said once");
    }

    #[test]
    fn a_flood_over_a_minute_says_few_lines() {
        let t = Throttle::new(5 * S);
        let lines = (0..60_000u64).filter(|ms| t.event(ms * 1_000_000) != Say::Nothing).count();
        assert_eq!(lines, 12, "the first, then one per 5 s");
    }
}
