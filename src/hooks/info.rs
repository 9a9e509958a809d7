//! The virtual memory view for CUDA: `cuMemGetInfo_v2` and `cuDeviceTotalMem_v2` report the cap
//! (never more than the device has) and free memory within it; uncapped devices get the driver's
//! numbers untouched.
//!
//! `cuMemGetInfo_v2` is polled by allocators (PyTorch's caching allocator, vLLM's profiler), so a
//! capped answer must cost less than the driver's own: it comes from our ledger plus a cached
//! physical (total, free) per device, refreshed through the real function on the first call and
//! then at most every [`REFRESH_NS`]. Between refreshes the cached physical free is moved by what
//! the container's ledger charged or released since, so our own allocations show at once. The
//! device is named by the real `cuCtxGetDevice`; whenever it fails (no current context) or an
//! out-pointer is NULL, the real function answers, so the driver's error codes reach the caller
//! unchanged.

use std::sync::atomic::{AtomicU64, Ordering};

use cuda_types::*;
use vgpu_core::MAX_DEVICES;
use vgpu_core::view::{virtual_total, virtual_view};

use crate::clock::coarse_ns as now_ns;
use crate::driver::{self, Real};
use crate::state::state;

/// How stale the cached physical numbers may get.
const REFRESH_NS: u64 = 100_000_000;

/// The driver's physical numbers for one device, as of `stamp`, under a sequence lock (odd =
/// being written; a reader that sees it change asks the driver instead).
struct Physical {
    seq: AtomicU64,
    /// `now_ns()` of the refresh + 1 (0 = never refreshed).
    stamp: AtomicU64,
    total: AtomicU64,
    free: AtomicU64,
    /// The ledger's `used(dev)` when `free` was read.
    used: AtomicU64,
}

static PHYSICAL: [Physical; MAX_DEVICES] = [const {
    Physical {
        seq: AtomicU64::new(0),
        stamp: AtomicU64::new(0),
        total: AtomicU64::new(0),
        free: AtomicU64::new(0),
        used: AtomicU64::new(0),
    }
}; MAX_DEVICES];

impl Physical {
    /// (total, free, used-at-read), if fresh and read consistently.
    fn read(&self, now: u64) -> Option<(u64, u64, u64)> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let stamp = self.stamp.load(Ordering::Relaxed);
        let v =
            (self.total.load(Ordering::Relaxed), self.free.load(Ordering::Relaxed), self.used.load(Ordering::Relaxed));
        std::sync::atomic::fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != s1 || stamp == 0 || now.wrapping_sub(stamp - 1) >= REFRESH_NS {
            return None;
        }
        Some(v)
    }

    fn store(&self, now: u64, total: u64, free: u64, used: u64) {
        let s = self.seq.load(Ordering::Relaxed);
        if s & 1 != 0 || self.seq.compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return; // another thread is refreshing
        }
        std::sync::atomic::fence(Ordering::Release);
        self.stamp.store(now + 1, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        self.free.store(free, Ordering::Relaxed);
        self.used.store(used, Ordering::Relaxed);
        self.seq.store(s + 2, Ordering::Release);
    }
}

/// # Safety
/// `free` and `total` null or valid for writes (the driver's contract).
pub unsafe fn mem_get_info(real: Real<'_, CUresult>, free: *mut usize, total: *mut usize) -> CUresult {
    let ledger = &state().ledger;
    // Uncapped everywhere: the driver's answer, without a single extra driver call.
    if !ledger.any_limit() || free.is_null() || total.is_null() {
        return real.call();
    }
    let Some(dev) = driver::current_tracked_device() else {
        return real.call();
    };
    let Some(cap) = ledger.limit(dev) else {
        return real.call();
    };
    let now = now_ns();
    // Driver overhead (what the driver spent outside our hooks) joins `used` first.
    crate::reconcile::on_view(dev, now);
    let used = ledger.used(dev);
    let slot = &PHYSICAL[dev];
    let (phys_total, phys_free) = match slot.read(now) {
        // Our container's charges since the read moved the device's free memory as much.
        Some((t, f, used_then)) => (t, (f + used_then).saturating_sub(used).min(t)),
        None => {
            let rc = real.call();
            if !rc.is_success() {
                return rc;
            }
            // SAFETY: the driver just wrote both non-null out-pointers.
            let (t, f) = unsafe { (*total as u64, *free as u64) };
            slot.store(now, t, f, used);
            (t, f)
        }
    };
    let v = virtual_view(Some(cap), used, phys_total, phys_free);
    // SAFETY: both out-pointers are non-null (checked above); the caller provides them.
    unsafe {
        *free = v.free as usize;
        *total = v.total as usize;
    }
    CUresult::SUCCESS
}

/// # Safety
/// `bytes` null or valid for writes (the driver's contract).
pub unsafe fn device_total_mem(real: Real<'_, CUresult>, bytes: *mut usize, dev: CUdevice) -> CUresult {
    let rc = real.call();
    if !rc.is_success() || bytes.is_null() {
        return rc;
    }
    let Ok(dev) = usize::try_from(dev) else {
        return rc;
    };
    // Runtimes ask before any context exists: the cap is the one of the device's place.
    crate::state::record_cuda_uuids();
    // SAFETY: the driver just wrote the non-null out-pointer.
    unsafe { *bytes = virtual_total(state().ledger.limit(dev), *bytes as u64) as usize };
    rc
}
