//! Thin calls into the real CUDA driver for our own queries, returning `Result` (cudarc's
//! `result` layer).

use std::ffi::{c_int, c_uint};

use cuda_types::*;

use super::raw;

/// `cuMemAdvise_v2` (CUDA ≥ 12.2); `Code::MISSING` where the driver lacks it.
///
/// # Safety
/// `ptr..ptr+count` is managed memory of the calling context.
pub unsafe fn mem_advise_v2(ptr: CUdeviceptr, count: usize, advice: c_uint, location: CUmemLocation) -> CUresult {
    // SAFETY: under the caller's contract.
    unsafe { raw::cuMemAdvise_v2(ptr, count, advice, location) }
}

/// The pre-12.2 `cuMemAdvise` (device ordinal; -1 = the host).
///
/// # Safety
/// As [`mem_advise_v2`].
pub unsafe fn mem_advise(ptr: CUdeviceptr, count: usize, advice: c_uint, device: CUdevice) -> CUresult {
    // SAFETY: under the caller's contract.
    unsafe { raw::cuMemAdvise(ptr, count, advice, device) }
}

/// Waits for the work queued on `stream` (the caller's own handle).
pub fn stream_synchronize(stream: CUstream) -> CUresult {
    // SAFETY: a stream handle the application passed us for this very purpose.
    unsafe { raw::cuStreamSynchronize(stream) }
}

fn check(rc: CUresult) -> Result<(), CUresult> {
    if rc.is_success() { Ok(()) } else { Err(rc) }
}

pub fn device_count() -> Result<usize, CUresult> {
    let mut n: c_int = 0;
    // SAFETY: valid out-pointer.
    check(unsafe { raw::cuDeviceGetCount(&mut n) })?;
    Ok(n.max(0) as usize)
}

pub fn device_uuid(dev: usize) -> Result<[u8; 16], CUresult> {
    let mut uuid = CUuuid::default();
    // SAFETY: valid out-pointer.
    check(unsafe { raw::cuDeviceGetUuid_v2(&mut uuid, dev as CUdevice) })?;
    Ok(uuid.bytes)
}

pub fn primary_context_active(dev: usize) -> Result<bool, CUresult> {
    let (mut flags, mut active): (c_uint, c_int) = (0, 0);
    // SAFETY: valid out-pointers.
    check(unsafe { raw::cuDevicePrimaryCtxGetState(dev as CUdevice, &mut flags, &mut active) })?;
    Ok(active != 0)
}

pub fn array_size(array: CUarray, dev: usize) -> Result<u64, CUresult> {
    let mut req = CUDA_ARRAY_MEMORY_REQUIREMENTS::default();
    // SAFETY: valid out-pointer; `array` was just created by the driver.
    check(unsafe { raw::cuArrayGetMemoryRequirements(&mut req, array, dev as CUdevice) })?;
    Ok(req.size as u64)
}

pub fn mipmapped_array_size(array: CUmipmappedArray, dev: usize) -> Result<u64, CUresult> {
    let mut req = CUDA_ARRAY_MEMORY_REQUIREMENTS::default();
    // SAFETY: valid out-pointer; `array` was just created by the driver.
    check(unsafe { raw::cuMipmappedArrayGetMemoryRequirements(&mut req, array, dev as CUdevice) })?;
    Ok(req.size as u64)
}

/// Managed memory (for a spill past the cap); `ptr` receives it.
pub fn mem_alloc_managed(ptr: &mut CUdeviceptr, bytes: usize, flags: c_uint) -> CUresult {
    // SAFETY: a valid out-pointer.
    unsafe { raw::cuMemAllocManaged(ptr, bytes, flags) }
}

/// Frees `dptr`, returning the driver's code (`Code::MISSING` without the function); also
/// undoes an allocation we refused after the fact (the driver's true size broke the cap).
pub fn mem_free(dptr: CUdeviceptr) -> CUresult {
    // SAFETY: the driver checks the pointer; a pointer it did not hand out is an error code.
    unsafe { raw::cuMemFree_v2(dptr) }
}

pub fn destroy_array(array: CUarray) {
    // SAFETY: the driver's cuArrayDestroy, on an array the driver just created for us.
    unsafe { raw::cuArrayDestroy(array) };
}

pub fn destroy_mipmapped_array(array: CUmipmappedArray) {
    // SAFETY: the driver's cuMipmappedArrayDestroy, on an array the driver just created for us.
    unsafe { raw::cuMipmappedArrayDestroy(array) };
}

/// Undo a context we refused after the fact (its cost broke the cap).
pub fn destroy_context(ctx: CUcontext, _dev: usize) {
    // SAFETY: the driver's cuCtxDestroy_v2 on the context the driver just created for us.
    unsafe { raw::cuCtxDestroy_v2(ctx) };
}

pub fn release_primary_context(dev: usize) {
    // SAFETY: the driver's cuDevicePrimaryCtxRelease_v2, balancing the retain we just refused.
    unsafe { raw::cuDevicePrimaryCtxRelease_v2(dev as CUdevice) };
}

/// The calling thread's current device alone (cheaper than `current_context`).
pub fn current_device() -> Result<usize, CUresult> {
    let mut dev: CUdevice = 0;
    // SAFETY: valid out-pointer.
    check(unsafe { raw::cuCtxGetDevice(&mut dev) })?;
    usize::try_from(dev).map_err(|_| CUresult::ERROR_INVALID_DEVICE)
}

/// As [`current_device`], for the per-device tables libvgpu keeps: `None` for no current
/// context, or a device past the `MAX_DEVICES` it tracks.
pub fn current_tracked_device() -> Option<usize> {
    current_device().ok().filter(|&d| d < vgpu_core::MAX_DEVICES)
}

pub fn current_context_handle() -> Result<CUcontext, CUresult> {
    let mut ctx: CUcontext = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    check(unsafe { raw::cuCtxGetCurrent(&mut ctx) })?;
    Ok(ctx)
}

/// Whether `stream` is capturing (then its launches are recorded, not executed). Errors count
/// as capturing: when in doubt, leave the stream alone.
pub fn stream_capturing(stream: CUstream) -> bool {
    let mut status: c_uint = 0;
    // SAFETY: valid out-pointer; `stream` is the caller's own stream handle.
    let rc = unsafe { raw::cuStreamIsCapturing(stream, &mut status) };
    !rc.is_success() || status != 0
}

pub fn event_create() -> Result<CUevent, CUresult> {
    let mut e: CUevent = std::ptr::null_mut();
    // SAFETY: valid out-pointer; default flags (timing enabled).
    check(unsafe { raw::cuEventCreate(&mut e, 0) })?;
    Ok(e)
}

pub fn event_record(event: CUevent, stream: CUstream) -> Result<(), CUresult> {
    // SAFETY: an event we created, on the stream the caller launched on.
    check(unsafe { raw::cuEventRecord(event, stream) })
}

/// `Ok(true)` when the work before the event has completed.
pub fn event_done(event: CUevent) -> Result<bool, CUresult> {
    // SAFETY: an event we created.
    match unsafe { raw::cuEventQuery(event) } {
        CUresult::SUCCESS => Ok(true),
        CUresult::ERROR_NOT_READY => Ok(false),
        e => Err(e),
    }
}

/// GPU time from `start` to `end` (negative when `end` completed first), ns; both completed.
pub fn event_elapsed_ns(start: CUevent, end: CUevent) -> Result<i64, CUresult> {
    let mut ms: f32 = 0.0;
    // SAFETY: valid out-pointer; both events are ours and completed.
    check(unsafe { raw::cuEventElapsedTime(&mut ms, start, end) })?;
    Ok((ms as f64 * 1e6) as i64)
}

/// A private non-blocking stream (for the limiter's clock anchor).
pub fn stream_create() -> Result<CUstream, CUresult> {
    let mut s: CUstream = std::ptr::null_mut();
    // SAFETY: valid out-pointer; flag 1 = CU_STREAM_NON_BLOCKING.
    check(unsafe { raw::cuStreamCreate(&mut s, 1) })?;
    Ok(s)
}

/// `CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT`: device memory reserved for graph memory nodes.
pub fn graph_mem_reserved(dev: usize) -> Result<u64, CUresult> {
    let mut v: u64 = 0;
    // SAFETY: the attribute's value is a cuuint64_t; valid out-pointer.
    check(unsafe { raw::cuDeviceGetGraphMemAttribute(dev as CUdevice, 2, (&mut v as *mut u64).cast()) })?;
    Ok(v)
}

/// (reserved, used) bytes of the device's current stream-ordered pool.
pub fn pool_reserved_used(dev: usize) -> Result<(u64, u64), CUresult> {
    use cuda_types::mempool_attr::{RESERVED_MEM_CURRENT, USED_MEM_CURRENT};
    let mut pool: CUmemoryPool = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    check(unsafe { raw::cuDeviceGetMemPool(&mut pool, dev as CUdevice) })?;
    let get = |attr: u32| {
        let mut v: u64 = 0;
        // SAFETY: both attributes take a cuuint64_t; `pool` is the driver's own.
        check(unsafe { raw::cuMemPoolGetAttribute(pool, attr, (&mut v as *mut u64).cast()) }).map(|_| v)
    };
    Ok((get(RESERVED_MEM_CURRENT)?, get(USED_MEM_CURRENT)?))
}
