//! The node table's token (one per GPU): which container may have work in flight, as one atomic
//! word — holder, generation, lease — moved by compare-and-swap only, and a futex word its
//! waiters sleep on. Part of the node table's wire format (`node`); the policy of who gets it
//! is `vgpu_core::sched`'s.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use crate::node::NODE_ENTRIES;

/// How long the token stays with a holder that stops renewing it.
pub const LEASE_NS: u64 = 50_000_000;
/// The lease a pass gives, until the new holder renews it: a grantee that is not there to take
/// it (it stopped asking just now) holds the GPU up only this long.
pub const GRANT_NS: u64 = 5_000_000;

/// Which container may have work in flight on one GPU.
#[repr(C)]
pub struct GpuToken {
    /// The GPU's key; 0 = an unused token.
    pub gpu: AtomicU64,
    /// [`Holder`], packed.
    pub word: AtomicU64,
    /// CLOCK_MONOTONIC ns when the current holder got it (or last kept it for a new slice).
    pub slice_start: AtomicU64,
    /// The last time a container that does not hold the token asked for it.
    pub wanted_at: AtomicU64,
    /// Times the token changed hands (metrics).
    pub handoffs: AtomicU64,
    /// Bumped at every change of hands: waiters sleep on it (a futex shared by every process
    /// mapping the file), so a passed token is taken within microseconds, not a polling period.
    pub wake: AtomicU32,
    pub pad: AtomicU32,
    pub reserved: [AtomicU64; 2],
}

/// The token's holder: an entry index, a generation (every change of hands adds one, so a
/// compare-and-swap never mistakes a new holding for an old one) and the lease's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub entry: Option<usize>,
    pub generation: u32,
    /// CLOCK_MONOTONIC milliseconds.
    pub lease_until_ms: u64,
    raw: u64,
}

const ENTRY_BITS: u32 = 9;
const GEN_BITS: u32 = 15;
const _: () = assert!(NODE_ENTRIES < 1 << ENTRY_BITS);

impl Holder {
    fn unpack(raw: u64) -> Holder {
        let idx = raw & ((1 << ENTRY_BITS) - 1);
        Holder {
            entry: (idx != 0 && idx as usize <= NODE_ENTRIES).then(|| idx as usize - 1),
            generation: ((raw >> ENTRY_BITS) & ((1 << GEN_BITS) - 1)) as u32,
            lease_until_ms: raw >> (ENTRY_BITS + GEN_BITS),
            raw,
        }
    }

    fn pack(entry: Option<usize>, generation: u32, lease_until_ms: u64) -> u64 {
        let idx = entry.map_or(0, |e| e as u64 + 1);
        (lease_until_ms << (ENTRY_BITS + GEN_BITS)) | ((generation as u64 & ((1 << GEN_BITS) - 1)) << ENTRY_BITS) | idx
    }

    /// Whether the holder's lease ran out (then anyone may take the token).
    pub fn expired(&self, now: u64) -> bool {
        self.entry.is_none() || now / 1_000_000 > self.lease_until_ms
    }
}

impl GpuToken {
    pub fn holder(&self) -> Holder {
        Holder::unpack(self.word.load(Acquire))
    }

    /// Moves the token from `seen` (as read by [`holder`](Self::holder)) to `to`, for a new
    /// slice starting `now` with a lease of [`GRANT_NS`] (the new holder renews it). `false`
    /// when someone else moved it first.
    pub fn pass(&self, seen: Holder, to: Option<usize>, now: u64) -> bool {
        let next = Holder::pack(to, seen.generation.wrapping_add(1), (now + GRANT_NS).div_ceil(1_000_000));
        // The slice's start is written first: whoever sees the new holder sees its start.
        if to.is_some() {
            self.slice_start.store(now, Release);
        }
        let moved = self.word.compare_exchange(seen.raw, next, AcqRel, Acquire).is_ok();
        if moved {
            self.handoffs.fetch_add(1, Relaxed);
            self.wake.fetch_add(1, Release);
            futex(&self.wake, libc::FUTEX_WAKE, i32::MAX as u32, None);
        }
        moved
    }

    /// The change counter, to be read before looking at the holder and then waited on.
    pub fn changes(&self) -> u32 {
        self.wake.load(Acquire)
    }

    /// Sleeps until the token changes hands after `seen` (from [`changes`](Self::changes)), or
    /// `timeout` passes, or a signal arrives: a bounded wait, whatever the other processes do.
    pub fn wait_for_change(&self, seen: u32, timeout: Duration) {
        if self.wake.load(Acquire) != seen {
            return;
        }
        futex(&self.wake, libc::FUTEX_WAIT, seen, Some(timeout));
    }

    /// Extends the lease of `entry`, which holds the token; `false` when it no longer does.
    pub fn renew(&self, entry: usize, now: u64) -> bool {
        let until = (now + LEASE_NS) / 1_000_000;
        let mut seen = self.word.load(Acquire);
        loop {
            let h = Holder::unpack(seen);
            if h.entry != Some(entry) {
                return false;
            }
            if h.lease_until_ms >= until {
                return true;
            }
            match self.word.compare_exchange_weak(seen, Holder::pack(h.entry, h.generation, until), AcqRel, Acquire) {
                Ok(_) => return true,
                Err(now_seen) => seen = now_seen,
            }
        }
    }

    /// Cuts the lease of `entry`, which holds the token, to end by `until` (CLOCK_MONOTONIC ns):
    /// a holder that may not launch again soon lets the others take the token then, unless it
    /// renews. `false` when `entry` no longer holds it.
    pub fn shorten_lease(&self, entry: usize, until: u64) -> bool {
        let until = until.div_ceil(1_000_000);
        let mut seen = self.word.load(Acquire);
        loop {
            let h = Holder::unpack(seen);
            if h.entry != Some(entry) {
                return false;
            }
            if h.lease_until_ms <= until {
                return true;
            }
            match self.word.compare_exchange_weak(seen, Holder::pack(h.entry, h.generation, until), AcqRel, Acquire) {
                Ok(_) => return true,
                Err(now_seen) => seen = now_seen,
            }
        }
    }

    /// Whether a container other than the holder asked for the token since `since`.
    pub fn wanted_since(&self, since: u64) -> bool {
        self.wanted_at.load(Relaxed) >= since
    }
}

/// A futex operation on a word of the shared mapping (not `FUTEX_PRIVATE_FLAG`: the waiters
/// are other processes). Errors (`EAGAIN`: the word changed; `ETIMEDOUT`; `EINTR`) all mean
/// "look again", so none is reported.
fn futex(word: &AtomicU32, op: libc::c_int, val: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec { tv_sec: t.as_secs() as libc::time_t, tv_nsec: t.subsec_nanos() as _ });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, 4-byte-aligned atomic (in the mapping or in memory we own) for
    // the duration of the call; FUTEX_WAIT reads it and sleeps, FUTEX_WAKE only wakes sleepers;
    // the timeout pointer is null or points at `ts`, which outlives the call.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), op, val, ts_ptr, std::ptr::null::<u32>(), 0u32);
    }
}
