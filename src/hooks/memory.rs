//! Allocation and free hooks. Every path that takes device memory reserves it against the cap
//! *before* the driver call (so racing callers can both fail but never both pass) and commits
//! the charge under the key its free will name. Frees always reach the driver and return its
//! code; they release our charge only when the driver freed something.

use std::cell::Cell;
use std::ffi::c_uint;
use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::Instant;

use cuda_types::*;
use vgpu_core::ledger::{Denied, Key, Kind, Reservation};
use vgpu_core::throttle::{Say, Throttle};

use crate::driver;
use crate::driver::Real;
use crate::hooks::context;
use crate::state::state;

type Res = Reservation<'static, crate::container::Container>;

/// Refusals are said once, then at most one line per [`REFUSAL_LINE_INTERVAL`] with the count
/// not shown, and the rest at exit ([`say_unsaid_refusals`]): a program retrying in a loop must
/// not flood its stderr.
static REFUSALS: Throttle = Throttle::new(REFUSAL_LINE_INTERVAL.as_nanos() as u64);
const REFUSAL_LINE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

fn deny(d: Denied) -> CUresult {
    refuse(|| {
        format!(
            "device {}: allocation of {} MiB refused: {} MiB of the {} MiB cap in use",
            d.dev,
            d.requested.div_ceil(1 << 20),
            d.used >> 20,
            d.limit >> 20
        )
    })
}

/// A spill past the spill limit: refused like the cap's refusals, and said the same way.
pub(crate) fn deny_spill(d: Denied) -> CUresult {
    refuse(|| super::spill::describe(&d))
}

fn refuse(line: impl FnOnce() -> String) -> CUresult {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    if let Say::Line { unsaid } = REFUSALS.event(EPOCH.elapsed().as_nanos() as u64) {
        let more = match unsaid {
            0 => String::new(),
            n => format!(" ({n} more refused in the last {} s, not shown)", REFUSAL_LINE_INTERVAL.as_secs()),
        };
        tracing::warn!("{}{more}", line());
    }
    CUresult::ERROR_OUT_OF_MEMORY
}

/// At exit: the refusals not yet said, in one line (straight to stderr: see `log::at_exit_line`).
pub fn say_unsaid_refusals() {
    match REFUSALS.take_unsaid() {
        0 => {}
        n => crate::log::at_exit_line(
            state().config.log_level,
            vgpu_core::config::LogLevel::Warn,
            &format!("{n} more allocations refused since the last message (not shown one by one)"),
        ),
    }
}

thread_local! {
    /// (context, `context::GENERATION` when learned, device) of this thread's last context.
    static LAST_CONTEXT: Cell<(usize, u64, usize)> = const { Cell::new((0, u64::MAX, 0)) };
}

/// The calling thread's current context and its device, the device remembered per thread: a
/// context's device never changes, so while no context has been destroyed since (the
/// generation), one driver call (`cuCtxGetCurrent`) names both; otherwise `cuCtxGetDevice`
/// asks for the device of that same current context.
fn current_context() -> Result<(CUcontext, usize), CUresult> {
    let ctx = driver::current_context_handle()?;
    if ctx.is_null() {
        return Err(CUresult::ERROR_INVALID_CONTEXT);
    }
    let generation = context::GENERATION.load(Ordering::Acquire);
    let (cached, cached_gen, dev) = LAST_CONTEXT.get();
    if cached == ctx as usize && cached_gen == generation {
        return Ok((ctx, dev));
    }
    let dev = driver::current_device()?;
    LAST_CONTEXT.set((ctx as usize, generation, dev));
    Ok((ctx, dev))
}

/// Reserves against the cap; a refusal first reconciles the driver overhead (it may have
/// shrunk since it was last measured) and tries once more, so the cap never refuses what the
/// true footprint has room for.
pub(crate) fn reserve(dev: usize, bytes: u64) -> Result<Res, Denied> {
    state().ledger.reserve_or_reconsider(dev, bytes, || crate::reconcile::at_refusal(dev))
}

/// Reserve on the current context's device; `Err` carries what to return without the driver.
/// No current context (or anything else odd) is the driver's error to report, so we let it.
fn reserve_current(bytes: u64) -> Result<Option<(Res, u64)>, CUresult> {
    let Ok((ctx, dev)) = current_context() else {
        return Ok(None);
    };
    match reserve(dev, bytes) {
        Ok(r) => Ok(Some((r, ctx as u64))),
        Err(d) => Err(deny(d)),
    }
}

/// The common shape: reserve, call, commit under the returned pointer. `P` is the pointer width
/// the API writes (the 32-bit `cuMemAlloc` of CUDA < 3.2 writes 4 bytes). Managed memory
/// (`cuMemAllocManaged`) may migrate to the host, but it can occupy the whole request on the
/// device, so it is charged in full to the current device.
///
/// # Safety
/// `dptr` is null or valid for the driver to write a `P` (the driver's contract).
pub unsafe fn alloc<P: Copy + Into<u64>>(real: Real<'_, CUresult>, dptr: *mut P, bytes: u64) -> CUresult {
    if dptr.is_null() || bytes == 0 {
        return real.call();
    }
    let reservation = match reserve_current(bytes) {
        Ok(Some(r)) => r,
        Ok(None) => return real.call(),
        Err(rc) => return rc,
    };
    // SAFETY: the caller's arguments, passed on under the driver's contract for this entry point.
    unsafe { call_and_commit(real, dptr, reservation) }
}

/// The driver call of a reserved allocation, and the commit of its pointer if it succeeded.
unsafe fn call_and_commit<P: Copy + Into<u64>>(
    real: Real<'_, CUresult>,
    dptr: *mut P,
    reservation: (Res, u64),
) -> CUresult {
    let rc = real.call();
    reservation.0.driver_answered(rc == CUresult::ERROR_OUT_OF_MEMORY);
    if rc.is_success() {
        let (r, ctx) = reservation;
        // SAFETY: the driver wrote the new pointer through the caller's non-null `dptr`.
        r.commit(Key::DevicePtr(unsafe { *dptr }.into()), ctx);
        crate::startup::allocated();
    }
    rc
}

/// As [`alloc`], for the paths that may spill past the cap into host memory
/// (`CUDA_OVERSUBSCRIBE`, see `spill`): `cuMemAlloc_v2`, `cuMemAllocAsync`,
/// `cuMemAllocFromPoolAsync`. Only a refusal by the cap looks at spilling: the path of an
/// allocation that fits is `alloc`'s.
///
/// # Safety
/// As [`alloc`].
pub unsafe fn alloc_spillable(real: Real<'_, CUresult>, dptr: *mut CUdeviceptr, bytes: u64) -> CUresult {
    if dptr.is_null() || bytes == 0 {
        return real.call();
    }
    let Ok((ctx, dev)) = current_context() else {
        return real.call();
    };
    let st = state();
    let reserved = st.ledger.reserve_or_spill_keeping(
        dev,
        bytes,
        st.config.oversubscribe,
        || crate::reconcile::at_refusal(dev),
        |cap| st.config.spill_limit(cap),
    );
    match reserved {
        // SAFETY: `dptr` is non-null (checked above).
        Ok(r) if r.spilled() => unsafe { super::spill::alloc(dptr, r, dev, ctx as u64) },
        // SAFETY: the caller's arguments, passed on under the driver's contract for this entry point.
        Ok(r) => unsafe { call_and_commit(real, dptr, (r, ctx as u64)) },
        Err(d) if d.spill => deny_spill(d),
        Err(d) => deny(d),
    }
}

/// Pitched rows are padded by the driver; reserve our estimate, then settle on the real
/// `pitch × height` (refusing, and freeing, if the padding is what breaks the cap).
///
/// # Safety
/// `dptr` and `pitch` null or valid for the driver to write (the driver's contract).
pub unsafe fn alloc_pitch(
    real: Real<'_, CUresult>,
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
) -> CUresult {
    if dptr.is_null() || pitch.is_null() || width == 0 || height == 0 {
        return real.call();
    }
    let estimate = (width as u64).next_multiple_of(512).saturating_mul(height as u64);
    let (mut r, ctx) = match reserve_current(estimate) {
        Ok(Some(r)) => r,
        Ok(None) => return real.call(),
        Err(rc) => return rc,
    };
    let rc = real.call();
    r.driver_answered(rc == CUresult::ERROR_OUT_OF_MEMORY);
    if !rc.is_success() {
        return rc;
    }
    // SAFETY: on success the driver wrote both out-pointers, which are non-null.
    let (ptr, actual) = unsafe { (*dptr, (*pitch as u64).saturating_mul(height as u64)) };
    if let Err(d) = r.resize(actual) {
        driver::mem_free(ptr);
        return deny(d);
    }
    r.commit(Key::DevicePtr(ptr), ctx);
    rc
}

/// VMM physical memory is charged to the device it is created on (`location.id`), which need
/// not be the current one; host-located memory (NCCL uses it) is not device memory.
///
/// # Safety
/// `handle` null or valid for the driver to write, `prop` null or valid to read.
pub unsafe fn create(
    real: Real<'_, CUresult>,
    handle: *mut CUmemGenericAllocationHandle,
    size: usize,
    prop: *const CUmemAllocationProp,
) -> CUresult {
    // SAFETY: `prop` is read only when non-null, as the driver would.
    let Some(prop) = (unsafe { prop.as_ref() }) else {
        return real.call();
    };
    if handle.is_null() || size == 0 || prop.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
        return real.call();
    }
    let Ok(dev) = usize::try_from(prop.location.id) else {
        return real.call();
    };
    let r = match reserve(dev, size as u64) {
        Ok(r) => r,
        Err(d) => return deny(d),
    };
    let rc = real.call();
    r.driver_answered(rc == CUresult::ERROR_OUT_OF_MEMORY);
    if rc.is_success() {
        // SAFETY: the driver wrote the handle through the caller's non-null pointer.
        r.commit(Key::VmmHandle(unsafe { *handle }), 0);
    }
    rc
}

fn array_estimate(width: usize, height: usize, depth: usize, format: u32, channels: u32) -> u64 {
    [width, height.max(1), depth.max(1)]
        .iter()
        .fold(array_format::channel_bytes(format).saturating_mul(channels.max(1) as u64), |acc, &n| {
            acc.saturating_mul(n as u64)
        })
}

/// Arrays: reserve the element-size estimate, then settle on the driver's own size where it
/// reports one (`cu*GetMemoryRequirements`, CUDA ≥ 11.6).
unsafe fn array_common(
    real: Real<'_, CUresult>,
    out: *mut *mut std::ffi::c_void,
    estimate: u64,
    key: fn(u64) -> Key,
    size_of: fn(*mut std::ffi::c_void, usize) -> Result<u64, CUresult>,
    destroy: fn(*mut std::ffi::c_void),
) -> CUresult {
    if out.is_null() {
        return real.call();
    }
    let Ok((ctx, dev)) = current_context() else {
        return real.call();
    };
    let mut r = match reserve(dev, estimate) {
        Ok(r) => r,
        Err(d) => return deny(d),
    };
    let rc = real.call();
    r.driver_answered(rc == CUresult::ERROR_OUT_OF_MEMORY);
    if !rc.is_success() {
        return rc;
    }
    // SAFETY: on success the driver wrote the new handle through `out`.
    let array = unsafe { *out };
    if let Ok(actual) = size_of(array, dev)
        && let Err(d) = r.resize(actual)
    {
        destroy(array);
        return deny(d);
    }
    r.commit(key(array as u64), ctx as u64);
    rc
}

/// # Safety
/// `array` null or valid for the driver to write, `desc` null or valid to read.
pub unsafe fn array_create(
    real: Real<'_, CUresult>,
    array: *mut CUarray,
    desc: *const CUDA_ARRAY_DESCRIPTOR,
) -> CUresult {
    // SAFETY: read only when non-null.
    let Some(d) = (unsafe { desc.as_ref() }) else {
        return real.call();
    };
    let estimate = array_estimate(d.Width, d.Height, 1, d.Format, d.NumChannels);
    // SAFETY: the caller's arguments, passed on under the driver's contract for this entry point.
    unsafe { array_common(real, array, estimate, Key::Array, driver::array_size, driver::destroy_array) }
}

/// # Safety
/// `array` null or valid for the driver to write, `desc` null or valid to read.
pub unsafe fn array3d_create(
    real: Real<'_, CUresult>,
    array: *mut CUarray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
) -> CUresult {
    // SAFETY: read only when non-null.
    let Some(d) = (unsafe { desc.as_ref() }) else {
        return real.call();
    };
    let estimate = array_estimate(d.Width, d.Height, d.Depth, d.Format, d.NumChannels);
    // SAFETY: the caller's arguments, passed on under the driver's contract for this entry point.
    unsafe { array_common(real, array, estimate, Key::Array, driver::array_size, driver::destroy_array) }
}

/// # Safety
/// `array` null or valid for the driver to write, `desc` null or valid to read.
pub unsafe fn mipmapped_create(
    real: Real<'_, CUresult>,
    array: *mut CUmipmappedArray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
    levels: c_uint,
) -> CUresult {
    // SAFETY: read only when non-null.
    let Some(d) = (unsafe { desc.as_ref() }) else {
        return real.call();
    };
    let estimate = (0..levels.clamp(1, 64))
        .map(|l| {
            let shrink = |n: usize| (n >> l).max(1);
            array_estimate(shrink(d.Width), shrink(d.Height), shrink(d.Depth), d.Format, d.NumChannels)
        })
        .fold(0u64, u64::saturating_add);
    // SAFETY: the caller's arguments, passed on under the driver's contract for this entry point.
    unsafe {
        array_common(
            real,
            array,
            estimate,
            Key::MipmappedArray,
            driver::mipmapped_array_size,
            driver::destroy_mipmapped_array,
        )
    }
}

/// The record is taken out before the driver frees: once it has, another thread may be handed
/// the same pointer and record it, which a release after the call would then remove.
pub fn free(real: Real<'_, CUresult>, key: Key) -> CUresult {
    let ledger = &state().ledger;
    let taken = ledger.take(key);
    let rc = real.call();
    match taken {
        Some(a) if rc.is_success() => ledger.uncharge(&a),
        Some(a) => ledger.restore(key, a),
        None => {}
    }
    rc
}

/// A spilled pointer is managed memory, not pool memory: `spill::free_async` frees it.
pub fn free_async(real: Real<'_, CUresult>, dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    let ledger = &state().ledger;
    let key = Key::DevicePtr(dptr);
    let taken = ledger.take(key);
    let rc = match taken {
        Some(a) if a.kind == Kind::Spilled => super::spill::free_async(real, dptr, stream),
        _ => real.call(),
    };
    match taken {
        Some(a) if rc.is_success() => ledger.uncharge(&a),
        Some(a) => ledger.restore(key, a),
        None => {}
    }
    rc
}

#[cfg(test)]
mod tests {
    use super::array_estimate;
    use cuda_types::array_format::*;

    #[test]
    fn array_estimates() {
        assert_eq!(array_estimate(1024, 0, 0, FLOAT, 1), 4096);
        assert_eq!(array_estimate(1024, 512, 0, HALF, 4), 1024 * 512 * 8);
        assert_eq!(array_estimate(64, 64, 64, UNSIGNED_INT8, 2), 64 * 64 * 64 * 2);
        assert_eq!(array_estimate(usize::MAX, usize::MAX, 2, FLOAT, 4), u64::MAX);
    }
}
