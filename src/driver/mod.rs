//! Every call into the real driver libraries (`libcuda`, `libnvidia-ml`) goes through here:
//! the libraries' handles ([`libs`]), the symbol slots ([`symbols`]), the call a hook was made
//! for ([`Real`]) and thin `Result` wrappers for our own queries ([`cuda`], [`nvml`]). Nothing
//! in this module knows about hooks, limits or the region. (A hooked function's own slot, which
//! its export calls, is generated from its one declaration in `intercept::table`; when we call
//! a hooked function for ourselves, it is through a slot here.)

pub mod cuda;
pub mod libs;
pub mod nvml;
mod real;
pub mod symbols;

pub use cuda::*;
pub use libs::Lib;
pub use nvml::*;
pub use real::Real;
pub use symbols::{Code, RealFn, c_name};

use std::ffi::{c_char, c_int, c_uint, c_void};

use cuda_types::*;

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
                    None => <$ret as Code>::MISSING,
                }
            }
        )*
    };
}

pub(super) mod raw {
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
        // Hooked functions we also call for ourselves (undoing what the cap refused after the
        // fact, spilling, reading the true figures): the driver's, never our hooks.
        Cuda fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult;
        Cuda fn cuMemAllocManaged(dptr: *mut CUdeviceptr, bytes: usize, flags: c_uint) -> CUresult;
        Cuda fn cuArrayDestroy(array: CUarray) -> CUresult;
        Cuda fn cuMipmappedArrayDestroy(array: CUmipmappedArray) -> CUresult;
        Cuda fn cuCtxDestroy_v2(ctx: CUcontext) -> CUresult;
        Cuda fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult;
        Nvml fn nvmlDeviceGetMemoryInfo(device: nvmlDevice_t, memory: *mut nvmlMemory_t) -> nvmlReturn_t;
        Nvml fn nvmlDeviceGetGraphicsRunningProcesses_v3(device: nvmlDevice_t, count: *mut c_uint, infos: *mut nvmlProcessInfo_t) -> nvmlReturn_t;
    }
}
