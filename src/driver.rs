//! Thin calls into the real driver for functions we use but do not hook, returning `Result`
//! (cudarc's `result` layer). Hooked functions' real slots live in `intercept::table::real`.

use std::ffi::{c_char, c_int, c_uint, c_void};

use cuda_types::*;

use crate::intercept::table::real;
use crate::intercept::{Lib, RealFn, c_name};

macro_rules! real_fns {
    ($( $lib:ident fn $name:ident ($($arg:ident : $ty:ty),*) -> $ret:ty; )*) => {
        $(
            #[allow(non_snake_case)]
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                static SLOT: RealFn = RealFn::new(Lib::$lib, c_name(concat!(stringify!($name), "\0")));
                type Sig = unsafe extern "C" fn($($ty),*) -> $ret;
                // SAFETY: the slot holds the driver's function of exactly this signature.
                match unsafe { SLOT.get::<Sig>() } {
                    // SAFETY: arguments forwarded under the caller's contract.
                    Some(f) => unsafe { f($($arg),*) },
                    None => <$ret as crate::intercept::Code>::MISSING,
                }
            }
        )*
    };
}

mod raw {
    use super::*;
    real_fns! {
        Cuda fn cuCtxGetDevice(dev: *mut CUdevice) -> CUresult;
        Cuda fn cuCtxGetCurrent(ctx: *mut CUcontext) -> CUresult;
        Cuda fn cuDeviceGetCount(count: *mut c_int) -> CUresult;
        Cuda fn cuDeviceGetUuid_v2(uuid: *mut CUuuid, dev: CUdevice) -> CUresult;
        Cuda fn cuDevicePrimaryCtxGetState(dev: CUdevice, flags: *mut c_uint, active: *mut c_int) -> CUresult;
        Cuda fn cuArrayGetMemoryRequirements(req: *mut CUDA_ARRAY_MEMORY_REQUIREMENTS, array: CUarray, dev: CUdevice) -> CUresult;
        Cuda fn cuMipmappedArrayGetMemoryRequirements(req: *mut CUDA_ARRAY_MEMORY_REQUIREMENTS, array: CUmipmappedArray, dev: CUdevice) -> CUresult;
        Cuda fn cuEventCreate(event: *mut CUevent, flags: c_uint) -> CUresult;
        Cuda fn cuStreamCreate(stream: *mut CUstream, flags: c_uint) -> CUresult;
        Cuda fn cuEventRecord(event: CUevent, stream: CUstream) -> CUresult;
        Cuda fn cuEventQuery(event: CUevent) -> CUresult;
        Cuda fn cuEventElapsedTime(ms: *mut f32, start: CUevent, end: CUevent) -> CUresult;
        Cuda fn cuStreamIsCapturing(stream: CUstream, status: *mut c_uint) -> CUresult;
        Nvml fn nvmlInit_v2() -> nvmlReturn_t;
        Nvml fn nvmlShutdown() -> nvmlReturn_t;
        Nvml fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t;
        Nvml fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut nvmlDevice_t) -> nvmlReturn_t;
        Nvml fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, device: *mut nvmlDevice_t) -> nvmlReturn_t;
        Nvml fn nvmlDeviceGetUUID(device: nvmlDevice_t, uuid: *mut c_char, len: c_uint) -> nvmlReturn_t;
        Nvml fn nvmlDeviceGetComputeRunningProcesses_v3(device: nvmlDevice_t, count: *mut c_uint, infos: *mut nvmlProcessInfo_t) -> nvmlReturn_t;
        Cuda fn cuDeviceGetGraphMemAttribute(dev: CUdevice, attr: c_uint, value: *mut c_void) -> CUresult;
        Cuda fn cuDeviceGetMemPool(pool: *mut CUmemoryPool, dev: CUdevice) -> CUresult;
        Cuda fn cuMemPoolGetAttribute(pool: CUmemoryPool, attr: c_uint, value: *mut c_void) -> CUresult;
        Cuda fn cuMemAdvise_v2(ptr: CUdeviceptr, count: usize, advice: c_uint, location: CUmemLocation) -> CUresult;
        Cuda fn cuMemAdvise(ptr: CUdeviceptr, count: usize, advice: c_uint, device: CUdevice) -> CUresult;
        Cuda fn cuStreamSynchronize(stream: CUstream) -> CUresult;
    }
}

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

fn check_nvml(rc: nvmlReturn_t) -> Result<(), nvmlReturn_t> {
    if rc.is_success() { Ok(()) } else { Err(rc) }
}

/// The calling thread's current context and its device.
pub fn current_context() -> Result<(CUcontext, usize), CUresult> {
    let mut ctx: CUcontext = std::ptr::null_mut();
    let mut dev: CUdevice = 0;
    // SAFETY: valid out-pointers.
    check(unsafe { raw::cuCtxGetCurrent(&mut ctx) })?;
    if ctx.is_null() {
        return Err(CUresult::ERROR_INVALID_CONTEXT);
    }
    // SAFETY: valid out-pointer.
    check(unsafe { raw::cuCtxGetDevice(&mut dev) })?;
    usize::try_from(dev).map(|d| (ctx, d)).map_err(|_| CUresult::ERROR_INVALID_DEVICE)
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

/// Undo an allocation we refused after the fact (the driver's true size broke the cap).
pub fn free_device_ptr(dptr: CUdeviceptr) {
    type Sig = unsafe extern "C" fn(CUdeviceptr) -> CUresult;
    // SAFETY: the real cuMemFree_v2, on a pointer the driver just returned to us.
    if let Some(f) = unsafe { real::cuMemFree_v2.get::<Sig>() } {
        // SAFETY: the real function just resolved, on the pointer named above.
        unsafe { f(dptr) };
    }
}

pub fn destroy_array(array: CUarray) {
    type Sig = unsafe extern "C" fn(CUarray) -> CUresult;
    // SAFETY: the real cuArrayDestroy, on an array the driver just created for us.
    if let Some(f) = unsafe { real::cuArrayDestroy.get::<Sig>() } {
        // SAFETY: the real function just resolved, on the array named above.
        unsafe { f(array) };
    }
}

pub fn destroy_mipmapped_array(array: CUmipmappedArray) {
    type Sig = unsafe extern "C" fn(CUmipmappedArray) -> CUresult;
    // SAFETY: the real cuMipmappedArrayDestroy, on an array the driver just created for us.
    if let Some(f) = unsafe { real::cuMipmappedArrayDestroy.get::<Sig>() } {
        // SAFETY: the real function just resolved, on the array named above.
        unsafe { f(array) };
    }
}

/// Undo a context we refused after the fact (its cost broke the cap).
pub fn destroy_context(ctx: CUcontext, _dev: usize) {
    type Sig = unsafe extern "C" fn(CUcontext) -> CUresult;
    // SAFETY: the real cuCtxDestroy_v2 on the context the driver just created for us.
    if let Some(f) = unsafe { real::cuCtxDestroy_v2.get::<Sig>() } {
        // SAFETY: the real function just resolved, on the context named above.
        unsafe { f(ctx) };
    }
}

pub fn release_primary_context(dev: usize) {
    type Sig = unsafe extern "C" fn(CUdevice) -> CUresult;
    // SAFETY: the real cuDevicePrimaryCtxRelease_v2, balancing the retain we just refused.
    if let Some(f) = unsafe { real::cuDevicePrimaryCtxRelease_v2.get::<Sig>() } {
        // SAFETY: the real function just resolved, on the device named above.
        unsafe { f(dev as CUdevice) };
    }
}

/// One reference to NVML for our own queries, given back on drop: NVML counts init/shutdown
/// pairs, so the application's own `nvmlShutdown` still shuts it down.
pub struct NvmlSession(());

impl NvmlSession {
    pub fn open() -> Result<Self, nvmlReturn_t> {
        // SAFETY: nvmlInit_v2 takes no arguments.
        check_nvml(unsafe { raw::nvmlInit_v2() })?;
        Ok(NvmlSession(()))
    }
}

impl Drop for NvmlSession {
    fn drop(&mut self) {
        // SAFETY: balances the nvmlInit_v2 of `open`.
        unsafe { raw::nvmlShutdown() };
    }
}

pub fn nvml_device_uuid(device: nvmlDevice_t) -> Result<String, nvmlReturn_t> {
    let mut buf = [0 as c_char; NVML_DEVICE_UUID_V2_BUFFER_SIZE as usize];
    // SAFETY: the buffer is as long as we say.
    check_nvml(unsafe { raw::nvmlDeviceGetUUID(device, buf.as_mut_ptr(), buf.len() as c_uint) })?;
    // SAFETY: NVML NUL-terminates within the buffer on success.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(s.to_string_lossy().into_owned())
}

/// UUIDs of every device NVML sees, by NVML index.
pub fn nvml_uuids(_session: &NvmlSession) -> Result<Vec<String>, nvmlReturn_t> {
    let mut n: c_uint = 0;
    // SAFETY: valid out-pointer.
    check_nvml(unsafe { raw::nvmlDeviceGetCount_v2(&mut n) })?;
    (0..n)
        .map(|i| {
            let mut device: nvmlDevice_t = std::ptr::null_mut();
            // SAFETY: valid out-pointer.
            check_nvml(unsafe { raw::nvmlDeviceGetHandleByIndex_v2(i, &mut device) })?;
            nvml_device_uuid(device)
        })
        .collect()
}

pub fn nvml_device_by_uuid(_session: &NvmlSession, uuid: &str) -> Result<nvmlDevice_t, nvmlReturn_t> {
    let c = std::ffi::CString::new(uuid).map_err(|_| nvmlReturn_t::ERROR_INVALID_ARGUMENT)?;
    let mut device: nvmlDevice_t = std::ptr::null_mut();
    // SAFETY: valid C string and out-pointer.
    check_nvml(unsafe { raw::nvmlDeviceGetHandleByUUID(c.as_ptr(), &mut device) })?;
    Ok(device)
}

/// Device-wide used bytes as NVML reports them (through the real function, not our view).
pub fn nvml_used(device: nvmlDevice_t) -> Result<u64, nvmlReturn_t> {
    type Sig = unsafe extern "C" fn(nvmlDevice_t, *mut nvmlMemory_t) -> nvmlReturn_t;
    let mut m = nvmlMemory_t::default();
    // SAFETY: the real nvmlDeviceGetMemoryInfo with a valid out-pointer.
    let f = unsafe { real::nvmlDeviceGetMemoryInfo.get::<Sig>() }.ok_or(nvmlReturn_t::ERROR_FUNCTION_NOT_FOUND)?;
    // SAFETY: the real function just resolved, with a valid out-pointer.
    check_nvml(unsafe { f(device, &mut m) })?;
    Ok(m.used)
}

/// The calling thread's current device alone (cheaper than `current_context`).
pub fn current_device() -> Result<usize, CUresult> {
    let mut dev: CUdevice = 0;
    // SAFETY: valid out-pointer.
    check(unsafe { raw::cuCtxGetDevice(&mut dev) })?;
    usize::try_from(dev).map_err(|_| CUresult::ERROR_INVALID_DEVICE)
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

/// NVML's "value not available" for a process's `usedGpuMemory` (e.g. without the rights to see
/// other processes' details).
const NVML_VALUE_NOT_AVAILABLE: u64 = u64::MAX;

/// The memory NVML counts for the processes `pids` on `device` (their rows summed; MIG may list
/// one row per instance), through the real function, never our own view. `Ok(None)`: listed no
/// such process, or could not say how much.
pub fn nvml_process_used(device: nvmlDevice_t, pids: &[u32]) -> Result<Option<u64>, nvmlReturn_t> {
    let mut rows = vec![nvmlProcessInfo_t::default(); 64];
    for _ in 0..3 {
        let mut n = rows.len() as c_uint;
        // SAFETY: `rows` holds `n` entries; NVML writes at most that many and sets `n`.
        let rc = unsafe { raw::nvmlDeviceGetComputeRunningProcesses_v3(device, &mut n, rows.as_mut_ptr()) };
        if rc == nvmlReturn_t::ERROR_INSUFFICIENT_SIZE {
            rows.resize(n as usize + 16, nvmlProcessInfo_t::default());
            continue;
        }
        check_nvml(rc)?;
        let mine = rows.iter().take(n as usize).filter(|r| pids.contains(&r.pid));
        let mut total: Option<u64> = None;
        for r in mine {
            if r.usedGpuMemory == NVML_VALUE_NOT_AVAILABLE {
                return Ok(None);
            }
            total = Some(total.unwrap_or(0).saturating_add(r.usedGpuMemory));
        }
        return Ok(total);
    }
    Err(nvmlReturn_t::ERROR_INSUFFICIENT_SIZE)
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
