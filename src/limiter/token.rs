//! Taking turns on a GPU shared with other containers: the node table's token
//! (`vgpu_region::node`, policy in `vgpu_core::sched`).
//!
//! Only the holder's processes launch. The holder keeps the token while nobody else asks; when
//! another container asks and the holder's slice ([`SLICE_NS`]) is over, the holder offers it:
//! the best contender (the holder itself included) gets the next slice. A holder that passes
//! the token on first drains its stream, so the next holder's measured time is its own. A
//! waiter sleeps on the token's futex (woken by the pass, or after a millisecond to repeat its
//! claim); a holder that stops renewing its lease (killed, stopped, `docker pause`d)
//! loses the token when the lease runs out, so no container can stall the others.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use vgpu_core::MAX_DEVICES;
use vgpu_core::limiter::BucketState;
use vgpu_core::sched::{self, Claim};
use vgpu_region::node::{CLAIM_FRESH_NS, GpuToken, NodeTable};

use super::measure::Chain;
use crate::clock::now_ns;
use crate::node::{self, Place};

/// How long a holder keeps the GPU before it offers it to others that ask.
pub const SLICE_NS: u64 = 5_000_000;
/// The longest a waiting thread sleeps before it repeats its claim (a pass wakes it at once).
const WAIT_NAP: Duration = Duration::from_millis(1);
/// A holder drains its queued work before passing the token on, for at most this long.
const DRAIN_LIMIT: Duration = Duration::from_millis(200);
/// The lease a holder keeps after a wait, until it launches again.
const IDLE_LEASE_NS: u64 = 2_000_000;
/// Someone asked for the token this recently: it is wanted.
const WANTED_NS: u64 = 2_000_000;

/// Per device: whether this process's container holds its current slice as burst (time beyond
/// its limit that nobody else wanted: not charged to its budget).
static BURST_SLICE: [AtomicBool; MAX_DEVICES] = [const { AtomicBool::new(false) }; MAX_DEVICES];
/// Per device: the start of the slice whose held time this process has not added yet.
static SLICE_OPEN: [AtomicU64; MAX_DEVICES] = [const { AtomicU64::new(0) }; MAX_DEVICES];

pub fn burst_slice(dev: usize) -> bool {
    BURST_SLICE.get(dev).is_some_and(|b| b.load(Relaxed))
}

/// The entry that should hold `gpu`'s token now, `except` one (no allocation: this runs on the
/// launch path).
fn best(table: &NodeTable, gpu: u64, now: u64, except: Option<usize>) -> Option<usize> {
    table
        .contenders(gpu, now)
        .filter(|(i, _)| Some(*i) != except)
        .min_by_key(|(i, c)| (sched::rank(c), *i))
        .map(|(i, _)| i)
}

/// Adds the wall time since the slice started to the container's held time.
fn close_slice(place: &Place, dev: usize, token: &GpuToken, now: u64) {
    let start = token.slice_start.load(Acquire);
    let open = SLICE_OPEN.get(dev).map_or(0, |s| s.swap(0, Relaxed));
    let from = start.max(open);
    if from != 0 && now > from {
        place.entry.held_ns.fetch_add(now - from, Relaxed);
    }
}

fn open_slice(dev: usize, claim: Claim, now: u64) {
    if let (Some(b), Some(s)) = (BURST_SLICE.get(dev), SLICE_OPEN.get(dev)) {
        b.store(claim == Claim::Burst, Relaxed);
        s.store(now, Relaxed);
    }
}

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The container holds the token (or takes no turns): launch. `waited`: the thread waited
    /// for it, so the stream may have idled.
    Go { waited: bool },
    /// The container's budget ran out (its last slice's drained work was charged): it must
    /// wait for budget, without the token, and then take its turn again.
    OutOfBudget,
}

/// Waits until the container holds the GPU's token, offering it to others at the end of a
/// slice. `claim` says what the container asks for now (re-read while waiting: a budget
/// refills; `None`: out of budget).
pub fn take_turn(
    place: &Place,
    dev: usize,
    claim: &dyn Fn() -> Option<Claim>,
    chain: &mut Chain,
    bucket: Option<&BucketState>,
) -> Turn {
    let (Some(token), Some(table)) = (place.token, node::opened()) else { return Turn::Go { waited: false } };
    let mut waited = false;
    loop {
        let now = now_ns();
        let Some(want) = claim() else {
            if token.holder().entry == Some(place.index) {
                release(place, dev, chain, bucket);
            }
            return Turn::OutOfBudget;
        };
        let was_contending =
            now.saturating_sub(place.entry.claimed_at.load(Relaxed)) <= CLAIM_FRESH_NS && place.entry.claim().is_some();
        if !was_contending {
            resume(place, table, now);
        }
        place.entry.set_claim(Some(want), now);
        let changes = token.changes();
        let h = token.holder();
        if h.entry == Some(place.index) {
            token.renew(place.index, now);
            if waited || SLICE_OPEN.get(dev).is_some_and(|s| s.load(Relaxed) == 0) {
                open_slice(dev, want, token.slice_start.load(Acquire).max(1));
            }
            let start = token.slice_start.load(Acquire);
            if !sched::slice_over(now, start, SLICE_NS) || !token.wanted_since(now.saturating_sub(WANTED_NS)) {
                return Turn::Go { waited };
            }
            // The slice is over and someone asks: the best contender gets the next one.
            let next = best(table, place.gpu, now, None);
            if next.is_none_or(|n| n == place.index) {
                close_slice(place, dev, token, now);
                token.slice_start.store(now, Release);
                open_slice(dev, want, now);
                return Turn::Go { waited };
            }
            chain.drain(bucket, DRAIN_LIMIT, || {
                token.renew(place.index, now_ns());
            });
            // The drain is the holder's time too: its work ran until then.
            let end = now_ns();
            close_slice(place, dev, token, end);
            token.pass(token.holder(), next, end);
            continue;
        }
        token.wanted_at.fetch_max(now, Relaxed);
        // A free token (or one whose holder stopped renewing it) goes to whoever asks first:
        // waiting for the best contender would leave the GPU idle while it works on the host,
        // and the order is restored at the next slice's end.
        if h.expired(now) && token.pass(h, Some(place.index), now) {
            token.renew(place.index, now);
            open_slice(dev, want, now);
            return Turn::Go { waited: true };
        }
        token.wait_for_change(changes, WAIT_NAP);
        waited = true;
    }
}

/// Gives the token up (the container stops launching for a while: out of budget, yielding to a
/// high-priority container): drains, then passes it to the best contender, or frees it.
pub fn release(place: &Place, dev: usize, chain: &mut Chain, bucket: Option<&BucketState>) {
    let (Some(token), Some(table)) = (place.token, node::opened()) else { return };
    place.entry.set_claim(None, now_ns());
    if token.holder().entry != Some(place.index) {
        return;
    }
    chain.drain(bucket, DRAIN_LIMIT, || {
        token.renew(place.index, now_ns());
    });
    pass_on(place, dev, token, table);
}

/// After a wait that drained the container's work: if another container asks and the slice
/// is over, it gets the token now (nothing of ours is in flight, so no drain is needed). Within
/// the slice the token stays, on a short lease: an application that launches again at once
/// (a training loop that synchronises every few steps) keeps its turn, one that goes on
/// working on the host (a server between requests) lets the others in after [`IDLE_LEASE_NS`].
pub fn after_wait(place: &Place, dev: usize) {
    let (Some(token), Some(table)) = (place.token, node::opened()) else { return };
    let now = now_ns();
    if token.holder().entry != Some(place.index) || !token.wanted_since(now.saturating_sub(WANTED_NS)) {
        return;
    }
    if sched::slice_over(now, token.slice_start.load(Acquire), SLICE_NS) {
        // Offered like any slice's end: the container keeps it if it is still the best claim.
        if best(table, place.gpu, now, None).is_some_and(|b| b != place.index) {
            pass_on(place, dev, token, table);
        } else {
            close_slice(place, dev, token, now);
            token.slice_start.store(now, Release);
            if let Some(claim) = place.entry.claim() {
                open_slice(dev, claim, now);
            }
        }
    } else {
        token.shorten_lease(place.index, now + IDLE_LEASE_NS);
    }
}

fn pass_on(place: &Place, dev: usize, token: &GpuToken, table: &NodeTable) {
    let now = now_ns();
    close_slice(place, dev, token, now);
    let next = best(table, place.gpu, now, Some(place.index));
    let h = token.holder();
    if h.entry == Some(place.index) {
        token.pass(h, next, now);
    }
}

/// A container that starts asking again competes from the others' virtual time, not from
/// where it left off: it cannot claim the time it was away.
fn resume(place: &Place, table: &NodeTable, now: u64) {
    let share = place.entry.share_ppm.load(Relaxed) as u64;
    let floor = table.contenders(place.gpu, now).filter(|(i, _)| *i != place.index).map(|(_, c)| c.vtime()).min();
    let held = place.entry.held_ns.load(Relaxed);
    let resumed = sched::resume_held(held, share, floor);
    if resumed != held {
        place.entry.held_ns.store(resumed, Relaxed);
    }
}
