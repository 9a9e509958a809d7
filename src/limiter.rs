//! The compute limiter at the launch hooks: gates every launch path on the container's GPU-time
//! bucket (policy in `vgpu_core::limiter`) and measures the GPU time the container's work takes.
//!
//! Fast path: unlimited → one relaxed load (and a relaxed tick); limited → also a
//! coarse-clock compare. No syscall, lock or allocation. About every millisecond a launching
//! thread does its bookkeeping: it records a timing event on the stream it launches on, charges
//! the bucket with the GPU time between that stream's completed events, and, when the bucket is
//! empty, sleeps until it holds a slice of budget again (`SLICE_NS`). Measuring completed work
//! (not predicting it) makes the long-run share converge whatever the kernels' lengths; an
//! overrun is paid back by waiting.
//!
//! Capture is never disturbed: a capturing stream gets no event and its thread never waits
//! (capture is not execution). Intervals that include a pause of ours or of the application
//! (idle stream) start a new measuring segment instead of being charged, and so does the time
//! after the application waits for the stream (`cuStreamSynchronize`, `cuCtxSynchronize`): a
//! stream is charged from its launches to the end of the work a wait drained, not while the host
//! works on a result.

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::Duration;

use cuda_types::*;
use vgpu_core::MAX_DEVICES;
use vgpu_core::config::CorePolicy;
use vgpu_core::limiter::{BucketState, PPM, burst_ns, resume_ns, share_ppm};

use crate::driver;
use crate::node::{self, Place};
use crate::state::state;

/// The bucket's burst: one period of budget.
const PERIOD_NS: u64 = 100_000_000;
/// A throttled thread waits until the bucket holds this much wall time at its share.
const SLICE_NS: u64 = 20_000_000;
/// How often a launching thread does its bookkeeping.
const CHECK_NS: u64 = 1_000_000;
/// A thread that launched nothing for this long starts a new segment (its stream may have idled).
const IDLE_NS: u64 = 20_000_000;
/// Events in flight per thread; when all are pending the GPU is that far behind and we wait.
const RING: usize = 8;
/// One sleep at most, so live limit changes and shutdown are seen promptly.
const MAX_SLEEP_NS: u64 = 200_000_000;
/// The longest sleep of a thread whose container meets others in the node table: its queued
/// work must keep showing as active (`vgpu_region::node::ACTIVE_NS`) while it sleeps.
const COORDINATED_NAP_NS: u64 = 5_000_000;
/// How often a low-priority thread looks again whether the high-priority container is done.
const YIELD_NAP_NS: u64 = 2_000_000;

/// Some device of this process may be limited (refreshed from the region every ~100 ms).
static ACTIVE: AtomicBool = AtomicBool::new(false);
static REFRESHED_AT: AtomicU64 = AtomicU64::new(0);
static HAMI_WRITTEN_AT: AtomicU64 = AtomicU64::new(0);
/// Launches seen, roughly: a relaxed load and store, not a read-modify-write, so threads never
/// contend on it (lost increments only delay a refresh).
static TICK: AtomicU32 = AtomicU32::new(0);

fn coarse_ns() -> u64 {
    clock(libc::CLOCK_MONOTONIC_COARSE)
}

pub(crate) fn now_ns() -> u64 {
    clock(libc::CLOCK_MONOTONIC)
}

fn clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; the vDSO answers without a syscall.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Chain {
    ctx: usize,
    stream: usize,
    /// Recorded events not yet known complete, oldest first, with "starts a segment".
    pending: [(usize, bool); RING],
    len: usize,
    /// The last completed event (0 = none): the start of the next charged interval.
    prev: usize,
    /// Events ready for reuse.
    free: [usize; RING + 2],
    nfree: usize,
    new_segment: bool,
    /// An event recorded on an idle private stream at `anchor_ns` (CLOCK_MONOTONIC): GPU times
    /// are `anchor_ns + elapsed(anchor, event)`, so processes can merge their busy intervals.
    anchor: usize,
    anchor_ns: u64,
    anchor_stream: usize,
    /// GPU time at which `prev` completed.
    prev_ns: u64,
}

impl Chain {
    const EMPTY: Chain = Chain {
        ctx: 0,
        stream: 0,
        pending: [(0, false); RING],
        len: 0,
        prev: 0,
        free: [0; RING + 2],
        nfree: 0,
        new_segment: true,
        anchor: 0,
        anchor_ns: 0,
        anchor_stream: 0,
        prev_ns: 0,
    };
}

thread_local! {
    static NEXT_CHECK: Cell<u64> = const { Cell::new(0) };
    static CHAIN: RefCell<Chain> = const { RefCell::new(Chain::EMPTY) };
}

/// The launch hooks' fast path, checked before anything else: `true` when the launch goes
/// straight to the driver. Unlimited, that is every launch but one in 64, which looks again
/// whether a limit appeared. No thread-local access (a TLS lookup in a shared library is a
/// call) and nothing that can panic.
#[inline]
pub fn launch_passes() -> bool {
    if ACTIVE.load(Relaxed) {
        return false;
    }
    let n = TICK.load(Relaxed).wrapping_add(1);
    TICK.store(n, Relaxed);
    n % 64 != 1
}

/// The wait hooks' fast path: nothing is measured, so the wait goes straight to the driver.
#[inline]
pub fn unmeasured() -> bool {
    !ACTIVE.load(Relaxed)
}

/// Called by the launch hooks when [`launch_passes`] said no; `ptsz` when the per-thread-stream
/// variant was called (its NULL stream is the thread's own default stream).
pub fn before_launch(stream: CUstream, ptsz: bool) {
    let now = coarse_ns();
    if !ACTIVE.load(Relaxed) {
        refresh(now);
        return;
    }
    if now < NEXT_CHECK.with(Cell::get) {
        return;
    }
    let last = NEXT_CHECK.with(|c| c.replace(now + CHECK_NS));
    bookkeeping(effective(stream, ptsz), now.saturating_sub(last) > IDLE_NS);
    refresh(now);
}

/// The stream a launch or wait on `stream` uses: the per-thread variants' NULL stream is the
/// thread's own default stream.
fn effective(stream: CUstream, ptsz: bool) -> CUstream {
    if stream.is_null() && ptsz { CU_STREAM_PER_THREAD as CUstream } else { stream }
}

/// Called by the wait hooks (when [`unmeasured`] said no) before the driver waits on `drains`
/// (a stream, or the whole context when `None`). If the wait drains the stream this thread's
/// launches are measured on, an event recorded there closes the measured interval at the
/// stream's last work; `true` then, and the hook calls [`after_sync`] once the wait succeeded.
pub fn before_sync(drains: Option<(CUstream, bool)>) -> bool {
    close_interval(drains)
}

/// The stream is idle now: the next launch starts a new measured segment, and does its
/// bookkeeping at once so that its own work is charged. Without this, an application that waits
/// after every launch (an inference server, a latency probe) would be charged the host time
/// between its kernels as GPU time, and throttled while it uses a few percent of the GPU.
pub fn after_sync() {
    CHAIN.with(|c| {
        if let Ok(mut chain) = c.try_borrow_mut() {
            chain.new_segment = true;
        }
    });
    NEXT_CHECK.with(|c| c.set(0));
}

fn close_interval(drains: Option<(CUstream, bool)>) -> bool {
    CHAIN.with(|c| {
        let Ok(mut chain) = c.try_borrow_mut() else { return false };
        if chain.anchor == 0 || (chain.len == 0 && chain.prev == 0) {
            return false;
        }
        if drains.is_some_and(|(s, ptsz)| effective(s, ptsz) as usize != chain.stream) {
            return false;
        }
        if !driver::current_context_handle().is_ok_and(|ctx| ctx as usize == chain.ctx) {
            return false;
        }
        let stream = chain.stream as CUstream;
        // An event recorded into a capture would become part of the graph.
        if driver::stream_capturing(stream) {
            return false;
        }
        let starts = std::mem::replace(&mut chain.new_segment, false);
        record(&mut chain, stream, starts);
        true
    })
}

/// Re-reads whether anything is limited and, at most once a second, tells HAMi's monitor that
/// the container launches kernels.
#[cold]
fn refresh(now: u64) {
    let last = REFRESHED_AT.load(Relaxed);
    if now.saturating_sub(last) < PERIOD_NS || REFRESHED_AT.compare_exchange(last, now, Relaxed, Relaxed).is_err() {
        return;
    }
    ACTIVE.store((0..MAX_DEVICES).any(|d| share_for(d).is_some()) || coordinates(), Relaxed);
    let written = HAMI_WRITTEN_AT.load(Relaxed);
    if now.saturating_sub(written) >= 1_000_000_000
        && HAMI_WRITTEN_AT.compare_exchange(written, now, Relaxed, Relaxed).is_ok()
    {
        let s = state().ledger.accounting().region().shared();
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        s.last_kernel_time.store(unix, Relaxed);
        if s.recent_kernel.load(Relaxed) >= 0 {
            s.recent_kernel.store(2, Relaxed);
        }
    }
}

/// Whether launches must look at the other containers even without a limit: a high-priority
/// container tells the node when it is active; a low-priority one yields to it (or to HAMi's
/// monitor, which blocks a container by setting `recent_kernel` to -1).
fn coordinates() -> bool {
    let st = state();
    if hami_blocked() {
        return true;
    }
    let Some(path) = st.config.node_file.as_deref() else { return false };
    if st.config.priority == 0 {
        return node::table().is_some();
    }
    // Low priority and unlimited: never create the table, only look whether one exists.
    let table = match node::opened() {
        Some(t) => Some(t),
        None if std::path::Path::new(path).exists() => node::table(),
        None => None,
    };
    table.is_some_and(|t| t.has_high_priority(now_ns()))
}

/// HAMi's monitor blocks a container (a higher-priority one is running) with `recent_kernel = -1`.
fn hami_blocked() -> bool {
    state().ledger.accounting().region().shared().recent_kernel.load(Relaxed) < 0
}

/// The share (ppm) device `dev` is limited to now, if any.
fn share_for(dev: usize) -> Option<u64> {
    let st = state();
    let s = st.ledger.accounting().region().shared();
    let limit = s.sm_limit.get(st.ledger.accounting().index(dev))?.load(Relaxed);
    let on = match st.config.core_policy {
        CorePolicy::Force => true,
        CorePolicy::Disable => false,
        CorePolicy::Default => s.utilization_switch.load(Relaxed) != 0,
    };
    if on { share_ppm(limit) } else { None }
}

#[cold]
fn bookkeeping(stream: CUstream, idle: bool) {
    let Ok(dev) = driver::current_device() else { return };
    let share = share_for(dev);
    let st = state();
    let low = st.config.priority != 0;
    let place = if share.is_some() || coordinates() { node::place(dev) } else { None };
    if share.is_none() && place.is_none() && !hami_blocked() {
        return;
    }
    // Capture records work, it does not run it: never add an event to a graph or wait.
    if driver::stream_capturing(stream) {
        return;
    }
    let Some(bucket) = st.ledger.accounting().region().extension().buckets.get(st.ledger.accounting().index(dev))
    else {
        return;
    };
    let now = now_ns();
    if let Some(p) = place {
        p.entry.mark_busy(now);
    }
    if low {
        yield_to_high_priority(place, bucket);
    }
    let Some(share) = share else { return };
    // Time the GPU shared with other containers' work is theirs as much as ours: a kernel that
    // waited for theirs is not charged their time. Looked up at every charge, since neighbours
    // come and go while we sleep.
    let weight = || place.map_or(PPM, |p| PPM / (1 + node::neighbours(p, now_ns()).active as u64));
    // Asleep, we still tell the neighbours while our queued work occupies the GPU.
    let nap_max = if place.is_some() { COORDINATED_NAP_NS } else { MAX_SLEEP_NS };
    let Ok(ctx) = driver::current_context_handle() else { return };
    let burst = burst_ns(share, PERIOD_NS);
    CHAIN.with(|c| {
        let Ok(mut chain) = c.try_borrow_mut() else { return };
        if chain.ctx != ctx as usize || chain.stream != stream as usize {
            // Events belong to a context; a new stream starts a new segment.
            if chain.ctx != ctx as usize {
                *chain = Chain::EMPTY;
                chain.ctx = ctx as usize;
            }
            chain.stream = stream as usize;
            chain.new_segment = true;
        }
        if !anchored(&mut chain) {
            return;
        }
        charge_completed(&mut chain, bucket, weight());
        // A thread away for a while may have left its stream idle, and that gap is not GPU time;
        // but if our last event is still pending the stream has been busy all along.
        chain.new_segment |= idle && chain.len == 0;
        // The GPU is RING events behind: wait for the oldest before queueing more.
        let mut waited = 0;
        while chain.len == RING && waited < 2_000 {
            std::thread::sleep(Duration::from_micros(200));
            waited += 1;
            charge_completed(&mut chain, bucket, weight());
        }
        let segment = std::mem::replace(&mut chain.new_segment, false);
        record(&mut chain, stream, segment);
        let resume = resume_ns(share, SLICE_NS);
        let mut wait = bucket.wait_ns(now_ns(), share, burst, 0);
        if wait > 0 {
            wait = bucket.wait_ns(now_ns(), share, burst, resume);
        }
        let slept = wait > 0;
        while wait > 0 {
            let nap = wait.min(nap_max);
            std::thread::sleep(Duration::from_nanos(nap));
            bucket.record_throttle(nap);
            charge_completed(&mut chain, bucket, weight());
            if let (Some(p), true) = (place, chain.len > 0) {
                p.entry.mark_busy(now_ns());
            }
            wait = bucket.wait_ns(now_ns(), share, burst, resume);
        }
        // If everything we queued completed while we slept, the stream idled: what follows starts
        // a new segment, and it must start *here*, before the launch we held back. Starting it at
        // the next check instead would leave that launch uncharged, once per sleep: with 0.2 ms
        // kernels and a sleep every few ms that is a tenth of the work, and the share overshoots.
        // Work still pending means the stream stayed busy, and the interval counts as it is.
        if slept && chain.len == 0 {
            record(&mut chain, stream, true);
        }
        if slept {
            // The time asleep is not the thread being away from its stream.
            NEXT_CHECK.with(|c| c.set(coarse_ns() + CHECK_NS));
        }
    });
}

/// A low-priority container launches nothing while a high-priority one on the same GPU is
/// active (or HAMi's monitor blocks it), for at most `MAX_SLEEP_NS` at a time.
fn yield_to_high_priority(place: Option<&Place>, bucket: &BucketState) {
    let mut waited = 0;
    while waited < MAX_SLEEP_NS
        && (hami_blocked() || place.is_some_and(|p| node::neighbours(p, now_ns()).high_priority_active))
    {
        std::thread::sleep(Duration::from_nanos(YIELD_NAP_NS));
        bucket.record_throttle(YIELD_NAP_NS);
        waited += YIELD_NAP_NS;
    }
}

/// Re-anchors the chain's clock every 10 s (elapsed times are f32 milliseconds). `false` when no
/// anchor can be made (then nothing is measured this time).
fn anchored(chain: &mut Chain) -> bool {
    let now = now_ns();
    if chain.anchor != 0 && now.saturating_sub(chain.anchor_ns) < 10_000_000_000 {
        return true;
    }
    if chain.anchor_stream == 0 {
        match driver::stream_create() {
            Ok(s) => chain.anchor_stream = s as usize,
            Err(_) => return false,
        }
    }
    let event = match chain.anchor {
        0 => match driver::event_create() {
            Ok(e) => e as usize,
            Err(_) => return false,
        },
        e => e,
    };
    // The private stream is idle: the event completes as soon as it is recorded.
    let before = now_ns();
    if driver::event_record(event as CUevent, chain.anchor_stream as CUstream).is_err() {
        return false;
    }
    chain.anchor = event;
    chain.anchor_ns = before / 2 + now_ns() / 2;
    // Intervals measured against the old anchor must not be joined to the new one.
    chain.new_segment = true;
    true
}

/// Charges the GPU time between consecutive completed events of a segment, as absolute
/// intervals so that the container's processes charge their union.
fn charge_completed(chain: &mut Chain, bucket: &BucketState, weight: u64) {
    while chain.len > 0 {
        let (event, starts) = chain.pending[0];
        match driver::event_done(event as CUevent) {
            Ok(true) => {}
            Ok(false) => {
                // The stream has been busy since `prev` completed and still is: charge that much
                // now, not when the event completes, so a thread cannot run a deep queue of long
                // kernels ahead of its budget. The completion charges only the rest (the bucket
                // charges the union of intervals).
                if !starts && chain.prev != 0 && chain.prev_ns != 0 {
                    bucket.consume_interval(chain.prev_ns, now_ns(), weight);
                }
                return;
            }
            Err(_) => {
                // The event is unusable (e.g. the context is going away): drop the chain.
                *chain = Chain::EMPTY;
                return;
            }
        }
        let at =
            driver::event_elapsed_ns(chain.anchor as CUevent, event as CUevent).ok().map(|ns| chain.anchor_ns + ns);
        if let (Some(end), false, true) = (at, starts, chain.prev != 0) {
            bucket.consume_interval(chain.prev_ns, end, weight);
        }
        if chain.prev != 0 {
            let n = chain.nfree;
            chain.free[n] = chain.prev;
            chain.nfree += 1;
        }
        chain.prev = event;
        chain.prev_ns = at.unwrap_or(0);
        chain.pending.copy_within(1..chain.len, 0);
        chain.len -= 1;
    }
}

fn record(chain: &mut Chain, stream: CUstream, starts: bool) {
    if chain.len == RING {
        return;
    }
    let event = if chain.nfree > 0 {
        chain.nfree -= 1;
        chain.free[chain.nfree]
    } else {
        match driver::event_create() {
            Ok(e) => e as usize,
            Err(_) => return,
        }
    };
    if driver::event_record(event as CUevent, stream).is_err() {
        let n = chain.nfree;
        chain.free[n] = event;
        chain.nfree += 1;
        return;
    }
    let n = chain.len;
    chain.pending[n] = (event, starts);
    chain.len += 1;
}
