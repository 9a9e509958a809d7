//! How much GPU time a measured window of a stream's work took.
//!
//! The launch hooks record a marker event on the stream about every millisecond. Between two
//! markers, the time from the first's completion to the second's is *in flight*, not busy: a
//! host-bound job (a Python loop of small kernels) leaves the GPU idle between its kernels
//! while it submits the next, and charging in-flight time over-charged such a job about 2.4×
//! on the H200. Two facts bound the busy part without an event per kernel:
//! - every launch of the window was submitted before the closing marker was recorded, so from
//!   that moment until the marker completes the GPU worked through a queue: busy;
//! - before that moment the host was still submitting: the GPU was busy at most the launches'
//!   kernel time, which one kernel per marker, timed by an event pair, estimates.
//!
//! Times are CLOCK_MONOTONIC ns (GPU times mapped onto it by the caller's anchor event).

/// One window between two marker events on a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// When the previous marker completed.
    pub prev_done: u64,
    /// When this marker was recorded (the host had submitted the window's launches).
    pub recorded: u64,
    /// When this marker completed.
    pub done: u64,
    /// Launches submitted in the window.
    pub launches: u32,
}

/// The GPU time of the window's work. `mean_kernel_ns`: the recent mean GPU time of one launch
/// (`None`: not known yet, and then the whole window counts, as the safe side of a limit).
pub fn busy_ns(w: &Window, mean_kernel_ns: Option<u64>) -> u64 {
    if w.done <= w.prev_done {
        return 0;
    }
    let span = w.done - w.prev_done;
    let queued = w.done - w.recorded.clamp(w.prev_done, w.done);
    let submitting = span - queued;
    let estimate = match mean_kernel_ns {
        Some(mean) => (mean as u128 * w.launches as u128).min(submitting as u128) as u64,
        None => submitting,
    };
    queued + estimate
}

/// One launch timed by an event before it and one after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSample {
    /// When the event recorded before the launch completed.
    pub before_done: u64,
    /// The earliest the GPU could start the launch: when its call returned (a driver submits
    /// the work at the end of the call) plus the time an idle GPU takes to start what it is
    /// given. On the H200, timing a 4 MiB elementwise kernel from the call's midpoint instead
    /// gave 4.5 µs, and from its end without the start lag about 1.5 µs, against 3.3 µs of
    /// the GPU's own busy time.
    pub submitted: u64,
    /// When the event recorded after the launch completed.
    pub after_done: u64,
}

/// The launch's GPU time: from when it could start (the earlier work done and the launch
/// submitted) to its end.
pub fn kernel_ns(s: &KernelSample) -> u64 {
    s.after_done.saturating_sub(s.before_done.max(s.submitted))
}

/// Whether the launch was queued behind earlier work (the work before it ended after it was
/// submitted), so that it started as that work ended and its time is its execution alone.
pub fn was_queued(s: &KernelSample) -> bool {
    s.before_done > s.submitted
}

/// The last [`SAMPLES`] launch times of a thread, and their central mean: the mean of the
/// middle half, so that a launch delayed by something else (the thread preempted, the GPU
/// waking from idle: seen up to 40 µs for a 3 µs kernel on the H200) does not move it.
#[derive(Clone, Copy, Debug)]
pub struct LaunchTimes {
    ring: [u32; SAMPLES],
    len: usize,
    next: usize,
}

pub const SAMPLES: usize = 32;

impl LaunchTimes {
    pub const EMPTY: LaunchTimes = LaunchTimes { ring: [0; SAMPLES], len: 0, next: 0 };

    pub fn add(&mut self, ns: u64) {
        self.ring[self.next] = ns.min(u32::MAX as u64) as u32;
        self.next = (self.next + 1) % SAMPLES;
        self.len = (self.len + 1).min(SAMPLES);
    }

    /// `None` until there is a sample.
    pub fn central_mean(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let mut v = self.ring;
        let v = &mut v[..self.len];
        v.sort_unstable();
        let (lo, hi) = (self.len / 4, self.len - self.len / 4);
        let mid = &v[lo..hi.max(lo + 1)];
        Some(mid.iter().map(|&x| x as u64).sum::<u64>() / mid.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    #[test]
    fn a_gpu_bound_window_is_busy_throughout() {
        // The queue was deep: the marker was recorded long before the previous one completed.
        let w = Window { prev_done: 1000 * US, recorded: 400 * US, done: 2000 * US, launches: 2 };
        assert_eq!(busy_ns(&w, Some(500 * US)), 1000 * US);
        assert_eq!(busy_ns(&w, None), 1000 * US);
    }

    #[test]
    fn a_host_bound_window_counts_its_kernels_not_its_gaps() {
        // 1 ms window, 50 launches of 8 µs each while the host took 20 µs per launch; the last
        // kernel was still running 5 µs after the marker was recorded.
        let w = Window { prev_done: 0, recorded: 1000 * US, done: 1005 * US, launches: 50 };
        assert_eq!(busy_ns(&w, Some(8 * US)), 5 * US + 400 * US);
        assert_eq!(busy_ns(&w, None), 1005 * US, "no estimate yet: all of it");
        assert_eq!(busy_ns(&w, Some(100 * US)), 1005 * US, "never more than the window");
    }

    #[test]
    fn degenerate_windows() {
        let w = Window { prev_done: 10, recorded: 5, done: 10, launches: 3 };
        assert_eq!(busy_ns(&w, Some(1)), 0);
        let w = Window { prev_done: 10, recorded: 50, done: 40, launches: 0 };
        assert_eq!(busy_ns(&w, Some(1)), 0, "recorded after completion (clock skew): nothing queued");
    }

    #[test]
    fn kernel_samples() {
        // Idle stream: the kernel starts when submitted, not when the marker completed.
        let s = KernelSample { before_done: 100, submitted: 103, after_done: 111 };
        assert_eq!(kernel_ns(&s), 8);
        // Busy stream: it starts when the earlier work is done.
        let s = KernelSample { before_done: 500, submitted: 103, after_done: 520 };
        assert_eq!(kernel_ns(&s), 20);
        assert_eq!(kernel_ns(&KernelSample { before_done: 9, submitted: 9, after_done: 1 }), 0);
        assert!(was_queued(&KernelSample { before_done: 500, submitted: 103, after_done: 520 }));
        assert!(!was_queued(&KernelSample { before_done: 100, submitted: 103, after_done: 111 }));
        let mut t = LaunchTimes::EMPTY;
        assert_eq!(t.central_mean(), None);
        t.add(800);
        assert_eq!(t.central_mean(), Some(800));
        for _ in 0..40 {
            t.add(800);
        }
        t.add(40_000);
        t.add(40_000);
        assert_eq!(t.central_mean(), Some(800), "outliers do not move it");
        for i in 0..SAMPLES as u64 {
            t.add(1000 + i);
        }
        assert_eq!(t.central_mean(), Some(1015), "the last samples only");
    }
}
