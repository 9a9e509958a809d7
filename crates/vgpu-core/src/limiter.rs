//! The compute limiter's policy: a token bucket of GPU time, shared by a container's processes.
//!
//! The bucket fills at `share` nanoseconds of GPU time per nanosecond of wall time, up to a burst
//! of one period's worth; the container's processes drain it by the GPU time their work actually
//! took (measured by the launch hooks with events, after the fact). When it is empty, launching
//! threads wait until it has refilled. Because consumption is measured rather than predicted, the
//! long-run share converges to `share` whatever the kernels' lengths, queue depth or overruns:
//! a kernel longer than the budget drives the bucket negative and is paid back by waiting.
//!
//! `BucketState` is a wire format: it lives in the region's extension, one per device, and is
//! only touched through atomics. Time is an argument (nanoseconds of CLOCK_MONOTONIC, which all
//! processes of a machine share), so the math is tested with a fake clock.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::atomic::{AtomicI64, AtomicU64};

/// Shares are in parts per million of the GPU.
pub const PPM: u64 = 1_000_000;

#[repr(C)]
#[derive(Default)]
pub struct BucketState {
    /// GPU time the container may still use, in ns × PPM (negative = owed). Scaled so that
    /// crediting `elapsed × share` is exact: rounding every refill would leak budget.
    pub tokens: AtomicI64,
    /// Wall time up to which the bucket has been refilled, ns (0 = never).
    pub refilled_to: AtomicU64,
    /// GPU time consumed, ns, since the region was created (for metrics).
    pub consumed_ns: AtomicU64,
    /// Time launching threads spent waiting for the bucket, ns (for metrics).
    pub throttled_ns: AtomicU64,
    /// GPU time (CLOCK_MONOTONIC ns) up to which busy time has been charged: the container's
    /// processes charge the union of their busy intervals, not the sum, since they share a GPU.
    pub charged_until: AtomicU64,
    /// GPU time taken beyond the limit as burst (not charged to `tokens`), ns (for metrics).
    pub burst_ns: AtomicU64,
    pub reserved: [AtomicU64; 2],
}

const _: () = assert!(size_of::<BucketState>() == 64);

/// Whether an SM limit of `percent` limits anything: HAMi stores "no limit" as 0, and 100 or
/// more is the whole GPU. Every reader of `sm_limit` (the limiter, NVML's views, `vgpu`) asks
/// this, so they agree on which devices are limited.
pub fn sm_limit_applies(percent: u64) -> bool {
    percent > 0 && percent < 100
}

/// The share for an SM limit in percent; `None` where the limit does not apply.
pub fn share_ppm(sm_limit_percent: u64) -> Option<u64> {
    sm_limit_applies(sm_limit_percent).then(|| sm_limit_percent * PPM / 100)
}

impl BucketState {
    /// Credits the wall time since the last refill at `share_ppm`, capped at `burst_ns` of GPU
    /// time; returns the tokens after, in ns × PPM. Exactly one caller credits each interval
    /// (CAS on `refilled_to`).
    pub fn refill(&self, now: u64, share_ppm: u64, burst_ns: i64) -> i64 {
        let burst = burst_ns.saturating_mul(PPM as i64);
        let mut last = self.refilled_to.load(Acquire);
        loop {
            if last == 0 {
                // First use: start empty, so a short job is not ahead by a whole burst.
                match self.refilled_to.compare_exchange(0, now, AcqRel, Acquire) {
                    Ok(_) => {
                        self.tokens.store(0, Relaxed);
                        return 0;
                    }
                    Err(seen) => last = seen,
                }
                continue;
            }
            if now <= last {
                return self.tokens.load(Acquire);
            }
            match self.refilled_to.compare_exchange_weak(last, now, AcqRel, Acquire) {
                Ok(_) => break,
                Err(seen) => last = seen,
            }
        }
        let credit = ((now - last) as u128 * share_ppm as u128).min(i64::MAX as u128) as i64;
        let updated = self.tokens.fetch_update(AcqRel, Acquire, |t| Some(t.saturating_add(credit).min(burst)));
        updated.map_or(burst, |before| before.saturating_add(credit).min(burst))
    }

    /// Charges GPU time the container's work took.
    pub fn consume(&self, gpu_ns: u64) {
        let scaled = (gpu_ns as u128 * PPM as u128).min(i64::MAX as u128) as i64;
        let _ = self.tokens.fetch_update(AcqRel, Acquire, |t| Some(t.saturating_sub(scaled)));
        self.consumed_ns.fetch_add(gpu_ns, Relaxed);
    }

    /// Charges the busy interval `[start, end]` (CLOCK_MONOTONIC ns) minus whatever part of it
    /// another process of the container already charged: the container's processes share one
    /// GPU, so their overlapping work took the time once. A burst interval (time nobody else
    /// wanted) is recorded but not taken from the budget.
    pub fn consume_interval(&self, start: u64, end: u64, burst: bool) {
        let before = self.charged_until.fetch_max(end, AcqRel);
        if end > before {
            let busy = end - start.max(before);
            if burst {
                self.burst_ns.fetch_add(busy, Relaxed);
            } else {
                self.consume(busy);
            }
        }
    }

    /// How long a launching thread must wait until the bucket holds `floor_ns` of GPU time
    /// (capped at the burst) again; 0 = go. A thread that must wait at all (floor 0) waits for a
    /// slice (see [`resume_ns`]): waking after every millisecond of work costs a host-bound job
    /// a warm-up each time, charged to it as busy time.
    pub fn wait_ns(&self, now: u64, share_ppm: u64, burst_ns: i64, floor_ns: i64) -> u64 {
        let tokens = self.refill(now, share_ppm, burst_ns);
        let floor = floor_ns.clamp(0, burst_ns.max(0)).saturating_mul(PPM as i64);
        if tokens >= floor || share_ppm == 0 {
            return 0;
        }
        ((floor as i128 - tokens as i128) as u128).div_ceil(share_ppm as u128).min(u64::MAX as u128) as u64
    }

    pub fn record_throttle(&self, ns: u64) {
        self.throttled_ns.fetch_add(ns, Relaxed);
    }
}

/// The budget a throttled thread waits for before it launches again: `slice_ns` of wall time
/// at the share, so the job alternates runs and waits of about `slice_ns` rather than of the
/// bookkeeping's millisecond.
pub fn resume_ns(share_ppm: u64, slice_ns: u64) -> i64 {
    (slice_ns as u128 * share_ppm as u128 / PPM as u128) as i64
}

/// The burst allowed at once: one period of budget.
pub fn burst_ns(share_ppm: u64, period_ns: u64) -> i64 {
    (period_ns as u128 * share_ppm as u128 / PPM as u128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn overlapping_intervals_are_charged_once() {
        let b = BucketState::default();
        b.consume_interval(100, 200, false);
        b.consume_interval(150, 260, false);
        b.consume_interval(120, 180, false);
        b.consume_interval(300, 310, false);
        assert_eq!(b.consumed_ns.load(Relaxed), 100 + 60 + 10);
        // A burst is recorded apart, and the budget keeps what it had.
        let tokens = b.tokens.load(Relaxed);
        b.consume_interval(310, 410, true);
        assert_eq!((b.consumed_ns.load(Relaxed), b.burst_ns.load(Relaxed)), (170, 100));
        assert_eq!(b.tokens.load(Relaxed), tokens);
    }

    #[test]
    fn shares_from_percent() {
        assert_eq!(share_ppm(30), Some(300_000));
        assert_eq!(share_ppm(0), None);
        assert_eq!(share_ppm(100), None);
        assert_eq!(share_ppm(250), None);
    }

    #[test]
    fn starts_empty_refills_at_the_share_and_caps_at_the_burst() {
        let b = BucketState::default();
        let (share, burst) = (300_000, burst_ns(300_000, 100 * MS));
        assert_eq!(burst, 30 * MS as i64);
        let full = burst * PPM as i64;
        assert_eq!(b.refill(1_000 * MS, share, burst), 0);
        b.tokens.store(full, Relaxed);
        b.consume(50 * MS);
        assert_eq!(b.tokens.load(Relaxed), -20 * (MS * PPM) as i64);
        // 20 ms owed at 30 % takes 66.7 ms of wall time to repay.
        assert_eq!(b.wait_ns(1_000 * MS, share, burst, 0), 66_666_667);
        assert_eq!(b.wait_ns(1_050 * MS, share, burst, 0), 16_666_667);
        assert_eq!(b.wait_ns(1_066 * MS + 666_667, share, burst, 0), 0, "repaid exactly, no rounding leak");
        // Waiting for a slice: 6 ms more at 30 % is 20 ms of wall time.
        assert_eq!(b.wait_ns(1_066 * MS + 666_667, share, burst, resume_ns(share, 20 * MS)), 20 * MS);
        assert_eq!(b.wait_ns(1_066 * MS + 666_667, share, burst, i64::MAX), 100 * MS, "at most a burst");
        assert_eq!(b.refill(2_000 * MS, share, burst), full, "capped at one period's budget");
        assert_eq!(b.refill(1_999 * MS, share, burst), full, "time never runs backwards");
    }

    /// A simulated job that always has work: it launches while the bucket allows and each
    /// kernel occupies the GPU for `kernel` ns. Its long-run share must be the target.
    fn simulate(share_pct: u64, kernel: u64) -> f64 {
        let b = BucketState::default();
        let share = share_ppm(share_pct).unwrap();
        let burst = burst_ns(share, 100 * MS);
        let (mut now, mut busy) = (1u64, 0u64);
        let end = (20_000 * MS).max(400 * kernel);
        while now < end {
            if b.wait_ns(now, share, burst, 0) > 0 {
                now += b.wait_ns(now, share, burst, resume_ns(share, 20 * MS));
                continue;
            }
            now += kernel;
            busy += kernel;
            b.consume(kernel);
        }
        busy as f64 / now as f64
    }

    #[test]
    fn long_run_share_converges_for_short_and_long_kernels() {
        for pct in [10, 25, 50, 75, 90] {
            for kernel in [20_000, 500_000, 5 * MS, 250 * MS] {
                let got = simulate(pct, kernel) * 100.0;
                assert!((got - pct as f64).abs() < 1.0, "{pct}% with {kernel} ns kernels: {got:.2}%");
            }
        }
    }

    #[test]
    fn concurrent_refills_credit_each_interval_once() {
        let b = std::sync::Arc::new(BucketState::default());
        b.refill(1, PPM, i64::MAX / PPM as i64);
        b.tokens.store(0, Relaxed);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let b = std::sync::Arc::clone(&b);
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        b.refill(1 + i * 8 + t, PPM, i64::MAX / PPM as i64);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let to = b.refilled_to.load(Relaxed);
        let tokens = b.tokens.load(Relaxed);
        assert_eq!(tokens as u64, (to - 1) * PPM, "every nanosecond credited exactly once");
    }
}
