//! Contexts cost device memory (~520 MiB on an H200) that never passes through an allocation
//! API. The rule: the cap bounds the process's true device footprint, so each context's cost is
//! charged when it is created and released when it is destroyed, together with any allocations
//! the driver frees with it.
//!
//! The cost is measured per context as the change in the device's NVML `used` across the
//! creating call (racy against other processes, so clamped to a plausible range), only where a
//! cap makes it matter, and once per container and node: the first measurement is kept in the
//! region and in the node table (where the smallest of the containers' figures for a GPU wins,
//! since other processes allocating during a measurement can only inflate it), and later
//! processes charge it without starting NVML. `LIBVGPU_CONTEXT_OVERHEAD` fixes it
//! instead; without NVML we charge [`FALLBACK_COST`] and say so once.

use std::sync::atomic::{AtomicBool, Ordering};

use cuda_types::*;
use vgpu_core::devices::format_uuid;
use vgpu_core::ledger::{Key, Kind};

use crate::driver;
use crate::driver::Real;
use crate::state::state;

const FALLBACK_COST: u64 = 512 << 20;
const MAX_PLAUSIBLE_COST: u64 = 4 << 30;

/// Runs `create` and returns its code with the bytes the new context costs.
fn measured(dev: usize, create: impl FnOnce() -> CUresult) -> (CUresult, u64) {
    let timed = crate::startup::OneTime::begin();
    cost_of(dev, || timed.exclude(create))
}

fn cost_of(dev: usize, create: impl FnOnce() -> CUresult) -> (CUresult, u64) {
    let st = state();
    if let Some(fixed) = st.config.context_overhead {
        return (create(), fixed);
    }
    if st.ledger.limit(dev).is_none() {
        return (create(), 0);
    }
    // Measured once per container: contexts of one device cost the same, and NVML's start-up
    // would otherwise be paid by every process.
    let ext = st.container().region().extension();
    let index = st.container().index(dev).get();
    let (Some(cached), Some(creating)) = (ext.context_cost.get(index), ext.contexts_creating.get(index)) else {
        return (create(), FALLBACK_COST);
    };
    let known = cached.load(Ordering::Relaxed);
    if known > 0 {
        return (create(), known);
    }
    // Or once per node: what other containers measured on this GPU.
    let place = crate::node::place(dev);
    if let Some(cost) = place.and_then(|p| crate::node::table()?.context_cost(p.gpu)) {
        let _ = cached.compare_exchange(0, cost, Ordering::Relaxed, Ordering::Relaxed);
        return (create(), cost);
    }
    // One NVML reference for the measurement, given back when it ends.
    let session = driver::NvmlSession::open().ok();
    let nvml = session.as_ref().and_then(|s| {
        let uuid = driver::device_uuid(dev).ok()?;
        driver::nvml_device_by_uuid(s, &format_uuid(&uuid)).ok()
    });
    let at_start = creating.fetch_add(1, Ordering::SeqCst) + 1;
    let before = nvml.and_then(|d| driver::nvml_used(d).ok());
    let rc = create();
    let after = nvml.and_then(|d| driver::nvml_used(d).ok());
    let at_end = creating.fetch_sub(1, Ordering::SeqCst);
    if !rc.is_success() {
        return (rc, 0);
    }
    match (before, after) {
        (Some(b), Some(a)) => {
            let overlap = at_start.max(at_end);
            let cost = cost_estimate(a.saturating_sub(b), overlap);
            // A measurement alone is the container's figure; an overlapped one only until then.
            if overlap == 1 {
                cached.store(cost, Ordering::Relaxed);
            } else {
                let _ = cached.compare_exchange(0, cost, Ordering::Relaxed, Ordering::Relaxed);
            }
            if let (Some(p), true) = (place, cost > 0) {
                p.entry.context_cost.store(cost, Ordering::Relaxed);
            }
            (rc, cost)
        }
        _ => {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "cannot measure the context's memory through NVML; charging {} MiB per context \
                     (set LIBVGPU_CONTEXT_OVERHEAD to override)",
                    FALLBACK_COST >> 20
                );
            }
            (rc, FALLBACK_COST)
        }
    }
}

/// One context's cost from the growth of the device's `used` while `overlap` of the container's
/// contexts (ours included) were being created: 32 processes starting at once would otherwise
/// each charge up to 32 contexts and refuse one another. Clamped to a plausible range.
fn cost_estimate(growth: u64, overlap: u64) -> u64 {
    (growth / overlap.max(1)).min(MAX_PLAUSIBLE_COST)
}

/// The driver freed `ctx` and everything allocated in it.
fn forget(ctx: u64) {
    let ledger = &state().ledger;
    ledger.release(Key::Context(ctx));
    ledger.release_context(ctx);
}

/// Creates a context and charges its measured cost. A context the cap has no room for is
/// undone (`undo`) and refused with `CUDA_ERROR_OUT_OF_MEMORY`, as a driver out of memory would:
/// the cap bounds the true footprint, contexts included.
unsafe fn create_common(
    real: Real<'_, CUresult>,
    pctx: *mut CUcontext,
    dev: CUdevice,
    undo: fn(CUcontext, usize),
) -> CUresult {
    let Ok(d) = usize::try_from(dev) else { return real.call() };
    if pctx.is_null() {
        return real.call();
    }
    // The device's place in the region first: its cost is charged there.
    crate::state::record_cuda_uuids();
    let (rc, cost) = measured(d, || real.call());
    if !rc.is_success() {
        return rc;
    }
    // SAFETY: the driver wrote the new context through the non-null `pctx`.
    let ctx = unsafe { *pctx };
    // Not reconciled at a refusal: the driver's count already holds the new context, which the
    // ledger does not yet, so a reconciliation now would charge it twice.
    match state().ledger.reserve(d, cost) {
        Ok(r) => {
            tracing::debug!("context {ctx:?} on device {d} costs {} MiB", cost >> 20);
            r.commit_as(Key::Context(ctx as u64), 0, Kind::Context);
            crate::reconcile::context_created(d);
        }
        Err(denied) if denied.limit < cost => {
            tracing::warn!(
                "device {d}: the cap, {} MiB, is below what one CUDA context costs ({} MiB): no context \
                 can be created under it; raise CUDA_DEVICE_MEMORY_LIMIT",
                denied.limit >> 20,
                cost >> 20
            );
            undo(ctx, d);
            // SAFETY: same out-pointer; the caller must not see a context that no longer exists.
            unsafe { *pctx = std::ptr::null_mut() };
            return CUresult::ERROR_OUT_OF_MEMORY;
        }
        Err(denied) => {
            tracing::warn!(
                "device {d}: a new context ({} MiB) does not fit in the {} MiB cap ({} MiB in use)",
                cost >> 20,
                denied.limit >> 20,
                denied.used >> 20
            );
            undo(ctx, d);
            // SAFETY: same out-pointer; the caller must not see a context that no longer exists.
            unsafe { *pctx = std::ptr::null_mut() };
            return CUresult::ERROR_OUT_OF_MEMORY;
        }
    }
    rc
}

/// `cuCtxCreate` (every version): the new context is charged, or undone past the cap.
///
/// # Safety
/// `pctx` null or valid for the driver to write (the driver's contract).
pub unsafe fn create(real: Real<'_, CUresult>, pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    // SAFETY: the caller's arguments, under the driver's contract for this entry point.
    unsafe { create_common(real, pctx, dev, driver::destroy_context) }
}

/// Bumped after every call that may destroy a context, so per-thread caches of context →
/// device (`memory::current_context`) never trust a handle the driver may since have reused.
pub static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn contexts_may_have_gone() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

pub fn destroy(real: Real<'_, CUresult>, ctx: CUcontext) -> CUresult {
    let rc = real.call();
    contexts_may_have_gone();
    if rc.is_success() {
        forget(ctx as u64);
    }
    rc
}

/// The primary context is created by the first retain (the driver keeps the count; we ask it
/// whether the context is active rather than keeping a second count that could drift).
///
/// # Safety
/// As [`create`].
pub unsafe fn primary_retain(real: Real<'_, CUresult>, pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    let Some(slot) = usize::try_from(dev).ok().and_then(|d| state().primary.get(d)) else {
        return real.call();
    };
    let Ok(d) = usize::try_from(dev) else {
        return real.call();
    };
    if pctx.is_null() || driver::primary_context_active(d).unwrap_or(true) {
        return real.call();
    }
    // SAFETY: the caller's arguments, passed on under the driver's contract for this entry point.
    let rc = unsafe { create_common(real, pctx, dev, |_, d| driver::release_primary_context(d)) };
    if rc.is_success() {
        // SAFETY: written by the driver on success.
        slot.store(unsafe { *pctx } as u64, Ordering::Release);
    }
    rc
}

/// After the last release (or a reset) the driver destroys the primary context.
pub fn primary_gone(real: Real<'_, CUresult>, dev: CUdevice) -> CUresult {
    let rc = real.call();
    contexts_may_have_gone();
    let Ok(d) = usize::try_from(dev) else {
        return rc;
    };
    let Some(slot) = state().primary.get(d) else {
        return rc;
    };
    if rc.is_success() && !driver::primary_context_active(d).unwrap_or(true) {
        let ctx = slot.swap(0, Ordering::AcqRel);
        if ctx != 0 {
            forget(ctx);
        }
    }
    rc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_creations_share_the_growth() {
        assert_eq!(cost_estimate(520 << 20, 1), 520 << 20);
        assert_eq!(cost_estimate(32 * (520 << 20), 32), 520 << 20);
        assert_eq!(cost_estimate(3 << 30, 0), 3 << 30);
        assert_eq!(cost_estimate(64 << 30, 1), MAX_PLAUSIBLE_COST);
    }
}
