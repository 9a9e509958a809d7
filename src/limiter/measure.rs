//! What a thread's work took on the GPU, measured with events on the stream it launches on.
//!
//! About every millisecond a launching thread records a *marker* event on its stream, and
//! charges the container's bucket, once a marker completes, with the GPU time of the window of
//! work before it (`vgpu_core::busy`: the queued part exactly, the part the host was still
//! submitting at the kernels' measured time). One launch per marker is timed by an event pair
//! (the marker before it, a sample event after it), which gives the mean GPU time of a launch.
//!
//! GPU times are mapped onto CLOCK_MONOTONIC through an *anchor*: an event recorded on an idle
//! private stream at a known host time. Every time is `anchor_ns + elapsed(anchor, event)`, so
//! the processes of a container can merge their busy intervals, and the submission latency of
//! the anchor and of the work cancel out.
//!
//! A window that includes a pause (ours or the application's: an idle stream) starts a new
//! *segment* instead of being charged.

use std::time::Duration;

use cuda_types::*;
use vgpu_core::busy::{self, KernelSample, LaunchTimes, Window};
use vgpu_core::limiter::BucketState;

use crate::clock::now_ns;
use crate::driver;

/// Markers in flight per thread; when all are pending the GPU is that far behind and we wait.
pub const RING: usize = 8;
/// Markers over which the idle start lag is the least.
const LAGS: usize = 64;
/// How often a new anchor is tried.
const ANCHOR_EVERY_NS: u64 = 100_000_000;
/// The drift allowed between the GPU's clock and the host's: 1 part in DRIFT_PER (20 ppm).
const DRIFT_PER: i64 = 50_000;

#[derive(Clone, Copy)]
struct Marker {
    event: usize,
    /// The window before it is not charged (the stream may have idled).
    starts: bool,
    recorded_ns: u64,
    /// When the record call returned: the driver submits the event at the end of the call.
    submitted_ns: u64,
    launches: u32,
    /// The window's work was launched in a burst slice (charged as burst time).
    burst: bool,
}

const NO_MARKER: Marker =
    Marker { event: 0, starts: false, recorded_ns: 0, submitted_ns: 0, launches: 0, burst: false };

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sample {
    None,
    /// The marker before the launch is recorded; the launch has not returned yet.
    Armed {
        before: usize,
    },
    /// The sample event follows the launch, submitted at `submitted`.
    InFlight {
        before: usize,
        before_ns: u64,
        submitted: u64,
    },
}

pub struct Chain {
    pub ctx: usize,
    pub stream: usize,
    pending: [Marker; RING],
    len: usize,
    /// The last completed marker (0 = none) and when it completed.
    prev: usize,
    prev_ns: u64,
    free: [usize; RING + 2],
    nfree: usize,
    pub new_segment: bool,
    /// The slice the thread launches in now is a burst slice: the markers it records say so.
    pub burst: bool,
    anchor: usize,
    anchor_ns: u64,
    anchor_stream: usize,
    /// A newer anchor being recorded (0 = none), and the host time it was recorded at.
    candidate: usize,
    candidate_ns: u64,
    /// An event for the next candidate (the anchor it replaced).
    free_anchor: usize,
    sample_event: usize,
    sample: Sample,
    /// The last timed launches.
    launch_times: LaunchTimes,
    /// The least lag from a marker's submission to its completion among the last markers: how
    /// long the GPU takes to start what reaches it idle, on the anchor's time scale.
    lags: [i64; LAGS],
    lag_next: usize,
}

impl Chain {
    pub const EMPTY: Chain = Chain {
        ctx: 0,
        stream: 0,
        pending: [NO_MARKER; RING],
        len: 0,
        prev: 0,
        prev_ns: 0,
        free: [0; RING + 2],
        nfree: 0,
        new_segment: true,
        burst: false,
        anchor: 0,
        anchor_ns: 0,
        anchor_stream: 0,
        candidate: 0,
        candidate_ns: 0,
        free_anchor: 0,
        sample_event: 0,
        sample: Sample::None,
        launch_times: LaunchTimes::EMPTY,
        lags: [i64::MAX; LAGS],
        lag_next: 0,
    };

    /// Measures `stream` of context `ctx` from now on: events belong to a context, and a new
    /// stream starts a new segment.
    pub fn bind(&mut self, ctx: usize, stream: usize) {
        if self.ctx != ctx {
            *self = Chain::EMPTY;
            self.ctx = ctx;
        }
        if self.stream != stream {
            self.stream = stream;
            self.new_segment = true;
        }
    }

    /// Nothing of ours is pending on the stream.
    pub fn idle(&self) -> bool {
        self.len == 0
    }

    pub fn full(&self) -> bool {
        self.len == RING
    }

    /// Whether a marker was ever recorded (then a wait can close the measured window).
    pub fn measuring(&self) -> bool {
        self.anchor != 0 && (self.len > 0 || self.prev != 0)
    }

    /// Keeps the anchor fresh and as early as it can be. An anchor event completes when the
    /// GPU gets to it: at once on an idle GPU, later while another process's context has its
    /// time slice. A late anchor maps every GPU time too early (and a window's queued part
    /// short), so every [`ANCHOR_EVERY_NS`] a candidate is recorded and, once complete, taken
    /// at the better of its own time and the current anchor's mapping carried forward (less a
    /// drift allowance): the mapping only improves, and follows the host clock. `false` when no
    /// anchor can be made (then nothing is measured this time).
    pub fn anchored(&mut self) -> bool {
        if self.anchor == 0 {
            return self.first_anchor();
        }
        let now = now_ns();
        if self.candidate == 0 {
            if now.saturating_sub(self.anchor_ns) >= ANCHOR_EVERY_NS {
                self.record_candidate();
            }
            return true;
        }
        if !driver::event_done(self.candidate as CUevent).unwrap_or(false) {
            // A candidate that never completes (a broken context) is replaced after a while.
            if now.saturating_sub(self.candidate_ns) > 10 * ANCHOR_EVERY_NS {
                self.candidate = 0;
            }
            return true;
        }
        if let Ok(elapsed) = driver::event_elapsed_ns(self.anchor as CUevent, self.candidate as CUevent) {
            let carried = (self.anchor_ns as i64).saturating_add(elapsed - elapsed / DRIFT_PER);
            let at = self.candidate_ns.max(carried.max(0) as u64);
            (self.anchor, self.candidate) = (self.candidate, self.anchor);
            self.anchor_ns = at;
            // The old anchor's event is the next candidate's.
            let spare = std::mem::replace(&mut self.candidate, 0);
            self.free_anchor = spare;
        }
        true
    }

    fn first_anchor(&mut self) -> bool {
        if self.anchor_stream == 0 {
            match driver::stream_create() {
                Ok(s) => self.anchor_stream = s as usize,
                Err(_) => return false,
            }
        }
        let Ok(event) = driver::event_create() else { return false };
        // The private stream is idle: the event completes as soon as the GPU takes it.
        let before = now_ns();
        if driver::event_record(event, self.anchor_stream as CUstream).is_err() {
            return false;
        }
        self.anchor = event as usize;
        self.anchor_ns = before / 2 + now_ns() / 2;
        self.new_segment = true;
        true
    }

    fn record_candidate(&mut self) {
        let event = match std::mem::replace(&mut self.free_anchor, 0) {
            0 => match driver::event_create() {
                Ok(e) => e as usize,
                Err(_) => return,
            },
            e => e,
        };
        let before = now_ns();
        if driver::event_record(event as CUevent, self.anchor_stream as CUstream).is_err() {
            self.free_anchor = event;
            return;
        }
        self.candidate = event;
        self.candidate_ns = before / 2 + now_ns() / 2;
    }

    fn gpu_time(&self, event: usize) -> Option<u64> {
        let elapsed = driver::event_elapsed_ns(self.anchor as CUevent, event as CUevent).ok()?;
        u64::try_from((self.anchor_ns as i64).saturating_add(elapsed)).ok()
    }

    /// Charges every completed window to `bucket` (as burst time when its marker says so:
    /// work queued in a guaranteed slice and completing in a burst one is still guaranteed
    /// time, or a container that keeps the GPU across the change would escape its budget). A
    /// window still in
    /// flight is charged up to now for the part known busy (its work was all queued), so a
    /// thread cannot run a deep queue of long kernels ahead of its budget; its completion
    /// charges the rest (the bucket charges the union of intervals).
    pub fn charge_completed(&mut self, bucket: Option<&BucketState>) {
        self.take_sample();
        while self.len > 0 {
            let m = self.pending[0];
            match driver::event_done(m.event as CUevent) {
                Ok(true) => {}
                Ok(false) => {
                    let now = now_ns();
                    if let (false, true, Some(b)) = (m.starts, self.prev != 0 && self.prev_ns != 0, bucket)
                        && now > m.recorded_ns.max(self.prev_ns)
                    {
                        self.charge_window(b, m, now);
                    }
                    return;
                }
                Err(_) => {
                    // The event is unusable (e.g. the context is going away): drop the chain.
                    let (ctx, stream) = (self.ctx, self.stream);
                    *self = Chain::EMPTY;
                    (self.ctx, self.stream) = (ctx, stream);
                    return;
                }
            }
            let at = self.gpu_time(m.event);
            if let Some(t) = at {
                self.lags[self.lag_next] = t as i64 - m.submitted_ns as i64;
                self.lag_next = (self.lag_next + 1) % LAGS;
            }
            if let Sample::Armed { before, .. } | Sample::InFlight { before, .. } = self.sample
                && before == m.event
            {
                self.sample_marker_done(at);
            }
            if let (Some(done), false, true, Some(b)) = (at, m.starts, self.prev != 0, bucket) {
                self.charge_window(b, m, done);
            }
            if self.prev != 0 {
                self.free[self.nfree] = self.prev;
                self.nfree += 1;
            }
            self.prev = m.event;
            self.prev_ns = at.unwrap_or(0);
            self.pending.copy_within(1..self.len, 0);
            self.len -= 1;
            self.take_sample();
        }
    }

    /// Charges the window before marker `m` up to `end` (its completion, or now while it is
    /// pending) as one interval that ends there and starts early enough to hold the busy time
    /// of the part the host was still submitting: the same start each time, so the bucket's
    /// union of intervals charges a pending window once and its completion only the rest.
    fn charge_window(&self, bucket: &BucketState, m: Marker, end: u64) {
        let w = Window { prev_done: self.prev_ns, recorded: m.recorded_ns, done: end, launches: m.launches };
        let mean = self.launch_times.central_mean();
        let busy = busy::busy_ns(&w, mean);
        trace::window(&w, mean, busy);
        let queued_from = m.recorded_ns.clamp(self.prev_ns, end);
        let start = queued_from.saturating_sub(busy.saturating_sub(end - queued_from));
        bucket.consume_interval(start, end, m.burst);
    }

    fn sample_marker_done(&mut self, at: Option<u64>) {
        match (self.sample, at) {
            (Sample::InFlight { before, submitted, .. }, Some(t)) => {
                self.sample = Sample::InFlight { before, before_ns: t, submitted };
            }
            // The launch never followed (it failed), or the marker has no time: no sample.
            _ => self.sample = Sample::None,
        }
    }

    /// Folds a completed sample into the mean launch time.
    fn take_sample(&mut self) {
        let Sample::InFlight { before_ns, submitted, .. } = self.sample else { return };
        if before_ns == 0 || !driver::event_done(self.sample_event as CUevent).unwrap_or(false) {
            return;
        }
        self.sample = Sample::None;
        if let Some(after_done) = self.gpu_time(self.sample_event) {
            // The kernel reached the GPU when its call returned, and an idle GPU starts it as
            // late after that as it completes an idle marker after its call: the same lag,
            // measured here on the anchor's time scale (so the anchor's own error cancels).
            let lag = self.idle_lag();
            let submitted = (submitted as i64).saturating_add(lag).max(0) as u64;
            let sample = KernelSample { before_done: before_ns, submitted, after_done };
            let ns = busy::kernel_ns(&sample);
            trace::sample(&sample, ns);
            self.launch_times.add(ns);
        }
    }

    /// The lag of a marker that reached an idle GPU: a low quantile (the tenth percentile) of
    /// the last markers' lags, since queued markers lag more and a thread preempted right
    /// after submitting makes a lag look shorter than it was.
    fn idle_lag(&self) -> i64 {
        let mut v = self.lags;
        let known = v.iter().filter(|&&l| l != i64::MAX).count();
        if known == 0 {
            return 0;
        }
        v.sort_unstable();
        v[known / 10]
    }

    /// Times the next launch ([`Self::after_launch`]) against the last marker, which must be
    /// the last thing this thread queued. `true` when armed.
    pub fn arm_sample(&mut self) -> bool {
        if self.len == 0 || self.sample != Sample::None {
            return false;
        }
        if self.sample_event == 0 {
            self.sample_event = driver::event_create().map_or(0, |e| e as usize);
        }
        if self.sample_event == 0 {
            return false;
        }
        self.sample = Sample::Armed { before: self.pending[self.len - 1].event };
        true
    }

    /// Records a marker on `stream` ending a window of `launches` launches; `starts`: the
    /// window is not charged. With `sample`, the next launch is timed ([`Self::after_launch`]).
    pub fn record(&mut self, stream: CUstream, starts: bool, launches: u32, sample: bool) -> bool {
        if self.len == RING {
            return false;
        }
        let event = if self.nfree > 0 {
            self.nfree -= 1;
            self.free[self.nfree]
        } else {
            match driver::event_create() {
                Ok(e) => e as usize,
                Err(_) => return false,
            }
        };
        let recorded_ns = now_ns();
        if driver::event_record(event as CUevent, stream).is_err() {
            self.free[self.nfree] = event;
            self.nfree += 1;
            return false;
        }
        let submitted_ns = now_ns();
        self.pending[self.len] = Marker { event, starts, recorded_ns, submitted_ns, launches, burst: self.burst };
        self.len += 1;
        if sample {
            return self.arm_sample();
        }
        true
    }

    /// The launch after an armed marker returned: the sample event follows it. The launch
    /// counts as submitted when the call returns (`busy::KernelSample`).
    pub fn after_launch(&mut self, stream: CUstream) {
        let Sample::Armed { before, .. } = self.sample else { return };
        let submitted = now_ns();
        self.sample = if driver::event_record(self.sample_event as CUevent, stream).is_ok() {
            Sample::InFlight { before, before_ns: 0, submitted }
        } else {
            Sample::None
        };
    }

    /// The launch after an armed marker failed: nothing to time.
    pub fn launch_failed(&mut self) {
        if let Sample::Armed { .. } = self.sample {
            self.sample = Sample::None;
        }
    }

    /// Waits (polling, at most `limit`) until everything this thread queued on its stream has
    /// completed, charging it; `keep_alive` runs between polls. `false` if it did not drain
    /// in time or could not be asked.
    pub fn drain(&mut self, bucket: Option<&BucketState>, limit: Duration, keep_alive: impl Fn()) -> bool {
        if self.stream == 0 && self.ctx == 0 {
            return true;
        }
        let stream = self.stream as CUstream;
        if driver::stream_capturing(stream) || !self.record(stream, false, 0, false) {
            return false;
        }
        let start = now_ns();
        loop {
            self.charge_completed(bucket);
            if self.len == 0 {
                return true;
            }
            if now_ns().saturating_sub(start) > limit.as_nanos() as u64 {
                return false;
            }
            keep_alive();
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// `LIBVGPU_LIMITER_TRACE=<file>`: one line per completed window and per timed launch, appended
/// to the file (never stdout), to see on a real GPU what the limiter measures. Off by default.
mod trace {
    use std::io::Write;
    use std::sync::{Mutex, OnceLock};

    use vgpu_core::busy::{KernelSample, Window};

    fn file() -> Option<&'static Mutex<std::fs::File>> {
        static FILE: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
        FILE.get_or_init(|| {
            let path = std::env::var_os("LIBVGPU_LIMITER_TRACE")?;
            std::fs::OpenOptions::new().create(true).append(true).open(path).ok().map(Mutex::new)
        })
        .as_ref()
    }

    pub fn window(w: &Window, mean: Option<u64>, busy: u64) {
        if let Some(f) = file()
            && let Ok(mut f) = f.lock()
        {
            let _ = writeln!(
                f,
                "window span={} submitting={} launches={} mean={} busy={}",
                w.done.saturating_sub(w.prev_done),
                w.recorded.clamp(w.prev_done, w.done.max(w.prev_done)) - w.prev_done,
                w.launches,
                mean.unwrap_or(0),
                busy
            );
        }
    }

    pub fn sample(s: &KernelSample, ns: u64) {
        if let Some(f) = file()
            && let Ok(mut f) = f.lock()
        {
            let _ = writeln!(
                f,
                "sample ns={ns} queued={} before_minus_submitted={}",
                vgpu_core::busy::was_queued(s),
                s.before_done as i64 - s.submitted as i64
            );
        }
    }
}
