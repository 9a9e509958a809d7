//! The compute limiter at the launch hooks: gates every launch path on the container's GPU-time
//! budget (policy in `vgpu_core::limiter`) and, where containers share a GPU, on their turn
//! (`token`; policy in `vgpu_core::sched`). What the work took is measured with events
//! (`measure`).
//!
//! Fast path: unlimited → one relaxed load (and a relaxed tick); limited → also a coarse-clock
//! compare and, while the container takes turns, one load of the token. No syscall, lock or
//! allocation. About every millisecond a launching thread does its bookkeeping: it charges the
//! bucket with what its completed work took, takes its turn, waits for budget when the bucket
//! is empty (for a slice of budget, `SLICE_NS`), and records a marker event. Measuring completed
//! work (not predicting it) makes the long-run share converge whatever the kernels' lengths; an
//! overrun is paid back by waiting.
//!
//! Capture is never disturbed: a capturing stream gets no event and its thread never waits
//! (capture is not execution). A wait for the stream (`cuStreamSynchronize`, `cuCtxSynchronize`)
//! closes the measured window, so host time after it is not charged, and hands the token on if
//! another container asks.

mod measure;
mod token;

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::Duration;

use cuda_types::*;
use vgpu_core::MAX_DEVICES;
use vgpu_core::config::CorePolicy;
use vgpu_core::limiter::{BucketState, burst_ns, resume_ns, share_ppm};
use vgpu_core::sched;
use vgpu_region::node::GpuToken;

use crate::clock::{coarse_ns, now_ns};
use crate::driver;
use crate::node::{self, Place};
use crate::state::state;
use measure::Chain;

/// The bucket's burst: one period of budget.
const PERIOD_NS: u64 = 100_000_000;
/// A throttled thread waits until the bucket holds this much wall time at its share.
const SLICE_NS: u64 = 20_000_000;
/// How often a launching thread does its bookkeeping.
const CHECK_NS: u64 = 1_000_000;
/// A thread that launched nothing for this long starts a new segment (its stream may have idled).
const IDLE_NS: u64 = 20_000_000;
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

/// A launching thread's gate state, one thread-local read per limited launch.
#[derive(Clone, Copy)]
struct Gate {
    /// `coarse_ns` at which the next bookkeeping is due.
    next_check: u64,
    /// Launches since the last marker.
    launches: u32,
    /// The token this thread's container holds (checked at every launch: another process of
    /// the container may have passed it on) and the container's entry index.
    token: Option<(&'static GpuToken, usize)>,
}

thread_local! {
    static GATE: Cell<Gate> = const { Cell::new(Gate { next_check: 0, launches: 0, token: None }) };
    static CHAIN: RefCell<Chain> = const { RefCell::new(Chain::EMPTY) };
}

/// Changes this thread's gate state (a copy in a `Cell`: one thread-local access).
fn update_gate<T>(f: impl FnOnce(&mut Gate) -> T) -> T {
    GATE.with(|g| {
        let mut gate = g.get();
        let out = f(&mut gate);
        g.set(gate);
        out
    })
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
/// variant was called (its NULL stream is the thread's own default stream). `true`: the hook
/// calls [`after_launch`] once the driver answered (this launch is timed).
pub fn before_launch(stream: CUstream, ptsz: bool) -> bool {
    let now = coarse_ns();
    if !ACTIVE.load(Relaxed) {
        refresh(now);
        return false;
    }
    let mut gate = GATE.with(Cell::get);
    gate.launches = gate.launches.saturating_add(1);
    let our_turn = gate.token.is_none_or(|(t, me)| t.holder().entry == Some(me));
    if now < gate.next_check && our_turn {
        GATE.with(|g| g.set(gate));
        return false;
    }
    let idle = now.saturating_sub(gate.next_check) > IDLE_NS;
    // The launches before this one make the window the next marker closes.
    let window = gate.launches - 1;
    GATE.with(|g| g.set(Gate { next_check: now + CHECK_NS, launches: 1, token: gate.token }));
    let sample = bookkeeping(effective(stream, ptsz), idle, window);
    refresh(now);
    sample
}

/// The launch that [`before_launch`] chose to time returned with `rc`.
pub fn after_launch(stream: CUstream, ptsz: bool, rc: CUresult) {
    CHAIN.with(|c| {
        if let Ok(mut chain) = c.try_borrow_mut() {
            if rc.is_success() { chain.after_launch(effective(stream, ptsz)) } else { chain.launch_failed() }
        }
    });
}

/// The stream a launch or wait on `stream` uses: the per-thread variants' NULL stream is the
/// thread's own default stream.
fn effective(stream: CUstream, ptsz: bool) -> CUstream {
    if stream.is_null() && ptsz { CU_STREAM_PER_THREAD as CUstream } else { stream }
}

/// Called by the wait hooks (when [`unmeasured`] said no) before the driver waits on `drains`
/// (a stream, or the whole context when `None`). If the wait drains the stream this thread's
/// launches are measured on, a marker closes the measured window at the stream's last work;
/// `true` then, and the hook calls [`after_sync`] once the wait succeeded.
pub fn before_sync(drains: Option<(CUstream, bool)>) -> bool {
    let window = update_gate(|gate| std::mem::take(&mut gate.launches));
    CHAIN.with(|c| {
        let Ok(mut chain) = c.try_borrow_mut() else { return false };
        if !chain.measuring() {
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
        chain.record(stream, starts, window, false)
    })
}

/// The stream is idle now: the next launch starts a new measured segment, and does its
/// bookkeeping at once so that its own work is charged. Without this, an application that waits
/// after every launch (an inference server, a latency probe) would be charged the host time
/// between its kernels as GPU time. If another container asks for the GPU, it gets it now.
pub fn after_sync() {
    CHAIN.with(|c| {
        if let Ok(mut chain) = c.try_borrow_mut() {
            chain.new_segment = true;
        }
    });
    update_gate(|gate| gate.next_check = 0);
    if let Ok(dev) = driver::current_device()
        && let Some(place) = placed(dev)
    {
        token::after_wait(place, dev);
    }
}

/// This device's place in the node table if it was made already (no file system access).
fn placed(dev: usize) -> Option<&'static Place> {
    node::opened()?;
    node::placed(dev)
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
        let s = state().container().region().shared();
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        s.last_kernel_time.store(unix, Relaxed);
        if s.recent_kernel.load(Relaxed) >= 0 {
            s.recent_kernel.store(2, Relaxed);
        }
    }
}

/// Whether launches must look at the other containers even without a limit: a high-priority
/// container takes part in the turns; an unlimited one does while limited containers are on
/// the node (its work would otherwise overlap theirs and be charged to them); a low-priority
/// one yields to high-priority ones (or to HAMi's monitor, which blocks a container by setting
/// `recent_kernel` to -1).
fn coordinates() -> bool {
    let st = state();
    if hami_blocked() {
        return true;
    }
    let Some(path) = st.config.node_file.as_deref() else { return false };
    if st.config.priority == 0 {
        return node::table().is_some();
    }
    // Unlimited: never create the table, only look whether one exists.
    let table = match node::opened() {
        Some(t) => Some(t),
        None if std::path::Path::new(path).exists() => node::table(),
        None => None,
    };
    let now = now_ns();
    table.is_some_and(|t| t.has_high_priority(now) || t.has_limited(node::owner(), now))
}

/// HAMi's monitor blocks a container (a higher-priority one is running) with `recent_kernel = -1`.
fn hami_blocked() -> bool {
    state().container().region().shared().recent_kernel.load(Relaxed) < 0
}

/// The share (ppm) device `dev` is limited to now, if any.
fn share_for(dev: usize) -> Option<u64> {
    let st = state();
    let s = st.container().region().shared();
    let limit = st.container().sm_limit_at(st.container().index(dev));
    let on = match st.config.core_policy {
        CorePolicy::Force => true,
        CorePolicy::Disable => false,
        CorePolicy::Default => s.utilization_switch.load(Relaxed) != 0,
    };
    if on { share_ppm(limit) } else { None }
}

/// What this launch must wait for, in order: a high-priority container (or HAMi's monitor),
/// the container's budget, and its turn on the GPU; then a marker closes the window.
/// `true` when the launch is to be timed.
#[cold]
fn bookkeeping(stream: CUstream, idle: bool, window: u32) -> bool {
    let Ok(dev) = driver::current_device() else { return false };
    let share = share_for(dev);
    let st = state();
    let place = if share.is_some() || coordinates() { node::place(dev) } else { None };
    if share.is_none() && place.is_none() && !hami_blocked() {
        return false;
    }
    // Capture records work, it does not run it: never add an event to a graph or wait.
    if driver::stream_capturing(stream) {
        return false;
    }
    let bucket = share.and(st.container().bucket(dev));
    let Ok(ctx) = driver::current_context_handle() else { return false };
    let now = now_ns();
    if let Some(p) = place {
        p.entry.mark_busy(now);
        p.entry.share_ppm.store(share.unwrap_or(0) as u32, Relaxed);
        p.entry.flags.store(if st.config.sm_burst { vgpu_region::node::FLAG_BURST } else { 0 }, Relaxed);
    }
    update_gate(|gate| gate.token = place.and_then(|p| Some((p.token?, p.index))));
    CHAIN.with(|c| {
        let Ok(mut chain) = c.try_borrow_mut() else { return false };
        chain.bind(ctx as usize, stream as usize);
        if !chain.anchored() {
            return false;
        }
        chain.charge_completed(bucket);
        // A thread away for a while may have left its stream idle, and that gap is not GPU time;
        // but if our last marker is still pending the stream has been busy all along.
        chain.new_segment |= idle && chain.idle();
        wait_for_a_free_marker(&mut chain, place, bucket);
        // The window of launches so far is closed now: whatever waiting follows is not in it.
        let segment = std::mem::replace(&mut chain.new_segment, false);
        chain.record(stream, segment, window, false);
        let waited = wait_for_budget_and_turn(dev, share, place, bucket, &mut chain);
        // What is launched from here on is charged as this slice is (burst or not).
        chain.burst = token::burst_slice(dev);
        if waited { resume_after_wait(&mut chain, stream) } else { chain.arm_sample() }
    })
}

/// The GPU is `RING` markers behind: waits (bounded) for the oldest before queueing more,
/// keeping the turn's lease alive meanwhile.
fn wait_for_a_free_marker(chain: &mut Chain, place: Option<&Place>, bucket: Option<&BucketState>) {
    let mut waited = 0;
    while chain.full() && waited < 2_000 {
        std::thread::sleep(Duration::from_micros(200));
        waited += 1;
        if let Some(p) = place
            && let Some(t) = p.token
        {
            t.renew(p.index, now_ns());
        }
        chain.charge_completed(bucket);
    }
}

/// Waits for a high-priority container, then the budget, then the turn on the GPU; whether it
/// waited at all.
fn wait_for_budget_and_turn(
    dev: usize,
    share: Option<u64>,
    place: Option<&'static Place>,
    bucket: Option<&BucketState>,
    chain: &mut Chain,
) -> bool {
    let st = state();
    let mut waited = false;
    if st.config.priority != 0 && must_yield(place) {
        if let Some(p) = place {
            token::release(p, dev, chain, bucket);
        }
        waited |= yield_to_high_priority(place, bucket);
    }
    let burst = st.config.sm_burst && place.is_some_and(|p| p.token.is_some());
    let claim = || {
        let within = match (share, bucket) {
            (Some(s), Some(b)) => b.wait_ns(now_ns(), s, burst_ns(s, PERIOD_NS), 0) == 0,
            _ => true,
        };
        sched::claim(share, burst, within)
    };
    // Budget first, then the turn; a turn's end can charge the slice's drained work and use
    // the budget up again, and then it is budget again: never a launch without the turn.
    for _ in 0..1_000 {
        if let (Some(share), Some(b), false) = (share, bucket, burst) {
            waited |= throttle(share, b, place, dev, chain);
        }
        let Some(p) = place else { break };
        match token::take_turn(p, dev, &claim, chain, bucket) {
            token::Turn::Go { waited: w } => {
                waited |= w;
                break;
            }
            token::Turn::OutOfBudget => waited = true,
        }
    }
    waited
}

/// After a wait, the launch held back starts the next window.
fn resume_after_wait(chain: &mut Chain, stream: CUstream) -> bool {
    // The time spent waiting is not the thread being away from its stream.
    update_gate(|gate| gate.next_check = coarse_ns() + CHECK_NS);
    // If everything we queued completed while we waited, the stream idled: what follows
    // starts a new segment, and it must start *here*, before the launch we held back.
    // Starting it at the next check instead would leave that launch uncharged, once per
    // wait: with 0.2 ms kernels and a wait every few ms that is a tenth of the work, and the
    // share overshoots. Work still pending means the stream stayed busy, and the window
    // counts as it is.
    chain.new_segment = false;
    if chain.idle() { chain.record(stream, true, 0, true) } else { chain.arm_sample() }
}

/// Waits while the container's budget is used up. A container that takes turns with others
/// gives its turn up first, and says it is busy while its queued work still runs.
fn throttle(share: u64, bucket: &BucketState, place: Option<&Place>, dev: usize, chain: &mut Chain) -> bool {
    let burst = burst_ns(share, PERIOD_NS);
    let mut wait = bucket.wait_ns(now_ns(), share, burst, 0);
    if wait == 0 {
        return false;
    }
    if let Some(p) = place {
        token::release(p, dev, chain, Some(bucket));
    }
    // Asleep, we still tell the neighbours while our queued work occupies the GPU.
    let nap_max = if place.is_some() { COORDINATED_NAP_NS } else { MAX_SLEEP_NS };
    let resume = resume_ns(share, SLICE_NS);
    wait = bucket.wait_ns(now_ns(), share, burst, resume);
    let slept = wait > 0;
    while wait > 0 {
        let nap = wait.min(nap_max);
        std::thread::sleep(Duration::from_nanos(nap));
        bucket.record_throttle(nap);
        chain.charge_completed(Some(bucket));
        if let (Some(p), false) = (place, chain.idle()) {
            p.entry.mark_busy(now_ns());
        }
        wait = bucket.wait_ns(now_ns(), share, burst, resume);
    }
    slept
}

fn must_yield(place: Option<&Place>) -> bool {
    hami_blocked() || place.is_some_and(|p| node::neighbours(p, now_ns()).high_priority_active)
}

/// A low-priority container launches nothing while a high-priority one on the same GPU is
/// active (or HAMi's monitor blocks it), for at most `MAX_SLEEP_NS` at a time.
fn yield_to_high_priority(place: Option<&Place>, bucket: Option<&BucketState>) -> bool {
    let mut waited = 0;
    while waited < MAX_SLEEP_NS && must_yield(place) {
        std::thread::sleep(Duration::from_nanos(YIELD_NAP_NS));
        if let Some(b) = bucket {
            b.record_throttle(YIELD_NAP_NS);
        }
        waited += YIELD_NAP_NS;
    }
    waited > 0
}
