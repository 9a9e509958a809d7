//! Every function libvgpu changes, declared once. Everything else reaches the driver untouched.
//!
//! `Lib fn name(args) -> Ret | variant… => handler(selected args);` exports `name` and each variant
//! (the `_ptsz` per-thread-stream twin, or an older version with the same signature that the
//! runtime still asks for, e.g. `cuDevicePrimaryCtxRelease`@7000; each shares the handler but
//! calls its own real function), gives each a real-function slot in [`real`], and lists each in
//! [`HOOKS`] for the `dlsym`/`cuGetProcAddress` doors. The handler receives the real call
//! ([`Real`], which also says whether the export is a `_ptsz` twin) and the arguments the
//! declaration selects, nothing more.

use std::ffi::{c_char, c_int, c_uint, c_void};

use cuda_types::*;

use vgpu_core::ledger::Key;

use crate::driver::nvml::ProcessList::{Compute, Graphics};
use crate::driver::{Code, Lib, RealFn, c_name};
use crate::hooks::{context, footprint, info, launch, memory, nvml, sync};
use crate::intercept::{Hook, guard, procaddr};
use crate::limiter;

/// Whether an export is a per-thread-default-stream twin (`…_ptsz`, `…_ptds`).
const fn per_thread(name: &str) -> bool {
    let b = name.as_bytes();
    let n = b.len();
    n > 5
        && b[n - 5] == b'_'
        && b[n - 4] == b'p'
        && b[n - 3] == b't'
        && matches!((b[n - 2], b[n - 1]), (b's', b'z') | (b'd', b's'))
}

macro_rules! hooks {
    ($( $lib:ident $(straight_if($pass:path))? fn $name:ident $args:tt -> $ret:ty $(| $variant:ident)* => $module:ident :: $handler:ident $selected:tt; )*) => {
        /// Real-function slots, one per export.
        #[allow(non_upper_case_globals)]
        pub mod real {
            use super::*;
            $(
                pub static $name: RealFn = RealFn::new(Lib::$lib, c_name(concat!(stringify!($name), "\0")));
                $( pub static $variant: RealFn = RealFn::new(Lib::$lib, c_name(concat!(stringify!($variant), "\0"))); )*
            )*
        }
        $(
            hooks!(@export $name $args -> $ret, [$($pass)?] => [$module::$handler] $selected);
            hooks!(@variants [$($pass)?] $args -> $ret => [$module::$handler] $selected; $($variant)*);
        )*
        pub static HOOKS: &[Hook] = &[
            $(
                Hook { name: stringify!($name), real: &real::$name, hook: $name as *const c_void },
                $( Hook { name: stringify!($variant), real: &real::$variant, hook: $variant as *const c_void }, )*
            )*
        ];
    };
    // One token tree each for the optional fast path and the handler, so that they repeat with
    // the variants.
    (@variants $passes:tt $args:tt -> $ret:ty => $handler:tt $selected:tt; $($variant:ident)*) => {
        $( hooks!(@export $variant $args -> $ret, $passes => $handler $selected); )*
    };
    (@export $name:ident ($($arg:ident : $ty:ty),*) -> $ret:ty, [$($pass:path)?] => [$handler:path] ($($selected:expr),*)) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            type RealSig = unsafe extern "C" fn($($ty),*) -> $ret;
            // SAFETY: the slot holds the driver's function of exactly this signature.
            let Some(f) = (unsafe { real::$name.get::<RealSig>() }) else {
                return <$ret as Code>::MISSING;
            };
            // The hot calls' fast path: straight to the driver (a tail call) when the handler
            // has nothing to do; `$pass` reads atomics only and cannot panic.
            if false $(|| $pass())? {
                // SAFETY: the caller's own arguments, passed on unchanged.
                return unsafe { f($($arg),*) };
            }
            // Out of line, so the fast path above saves no registers. Its arguments are the
            // driver function's, however many it has; the handler gets the ones it names.
            #[inline(never)]
            #[allow(clippy::too_many_arguments, unused_unsafe)]
            unsafe fn handled(f: RealSig, $($arg: $ty),*) -> $ret {
                const PER_THREAD: bool = per_thread(stringify!($name));
                // SAFETY: the caller's own arguments, passed on unchanged.
                let call = || unsafe { f($($arg),*) };
                // SAFETY: a handler that is an `unsafe fn` receives the caller's arguments under
                // the driver's contract for this entry point, which is its own contract.
                guard(stringify!($name), PER_THREAD, &call, |r| unsafe { $handler(r, $($selected),*) })
            }
            // SAFETY: as above.
            unsafe { handled(f, $($arg),*) }
        }
    };
}

hooks! {
    // The door of the runtime (CUDA ≥ 11.3) and PyTorch: swap by pointer identity.
    Cuda fn cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64) -> CUresult => procaddr::get_proc_address(symbol, pfn, version, flags);
    Cuda fn cuGetProcAddress_v2(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64, status: *mut CUdriverProcAddressQueryResult) -> CUresult => procaddr::get_proc_address(symbol, pfn, version, flags);

    // Allocations: reserve against the cap before the driver call. `_spillable`: may spill past
    // the cap into host memory (CUDA_OVERSUBSCRIBE).
    Cuda fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytes: usize) -> CUresult => memory::alloc_spillable(dptr, bytes as u64);
    Cuda fn cuMemAlloc(dptr: *mut c_uint, bytes: c_uint) -> CUresult => memory::alloc(dptr, bytes.into());
    Cuda fn cuMemAllocPitch_v2(dptr: *mut CUdeviceptr, pitch: *mut usize, width: usize, height: usize, element: c_uint) -> CUresult => memory::alloc_pitch(dptr, pitch, width, height);
    Cuda fn cuMemAllocManaged(dptr: *mut CUdeviceptr, bytes: usize, flags: c_uint) -> CUresult => memory::alloc(dptr, bytes as u64);
    Cuda fn cuMemAllocAsync(dptr: *mut CUdeviceptr, bytes: usize, stream: CUstream) -> CUresult | cuMemAllocAsync_ptsz => memory::alloc_spillable(dptr, bytes as u64);
    Cuda fn cuMemAllocFromPoolAsync(dptr: *mut CUdeviceptr, bytes: usize, pool: CUmemoryPool, stream: CUstream) -> CUresult | cuMemAllocFromPoolAsync_ptsz => memory::alloc_spillable(dptr, bytes as u64);
    Cuda fn cuMemCreate(handle: *mut CUmemGenericAllocationHandle, size: usize, prop: *const CUmemAllocationProp, flags: u64) -> CUresult => memory::create(handle, size, prop);
    Cuda fn cuArrayCreate_v2(array: *mut CUarray, desc: *const CUDA_ARRAY_DESCRIPTOR) -> CUresult => memory::array_create(array, desc);
    Cuda fn cuArray3DCreate_v2(array: *mut CUarray, desc: *const CUDA_ARRAY3D_DESCRIPTOR) -> CUresult => memory::array3d_create(array, desc);
    Cuda fn cuMipmappedArrayCreate(array: *mut CUmipmappedArray, desc: *const CUDA_ARRAY3D_DESCRIPTOR, levels: c_uint) -> CUresult => memory::mipmapped_create(array, desc, levels);

    // Frees always reach the driver and return its code.
    Cuda fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult => memory::free(Key::DevicePtr(dptr));
    Cuda fn cuMemFree(dptr: c_uint) -> CUresult => memory::free(Key::DevicePtr(dptr.into()));
    Cuda fn cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) -> CUresult | cuMemFreeAsync_ptsz => memory::free_async(dptr, stream);
    Cuda fn cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresult => memory::free(Key::VmmHandle(handle));
    Cuda fn cuArrayDestroy(array: CUarray) -> CUresult => memory::free(Key::Array(array as u64));
    Cuda fn cuMipmappedArrayDestroy(array: CUmipmappedArray) -> CUresult => memory::free(Key::MipmappedArray(array as u64));

    // Contexts cost device memory that never passes through an allocation API.
    Cuda fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) -> CUresult => context::primary_retain(pctx, dev);
    Cuda fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult | cuDevicePrimaryCtxRelease => context::primary_gone(dev);
    Cuda fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult | cuDevicePrimaryCtxReset => context::primary_gone(dev);
    Cuda fn cuCtxCreate_v2(pctx: *mut CUcontext, flags: c_uint, dev: CUdevice) -> CUresult | cuCtxCreate => context::create(pctx, dev);
    Cuda fn cuCtxCreate_v3(pctx: *mut CUcontext, params: *mut c_void, count: c_int, flags: c_uint, dev: CUdevice) -> CUresult => context::create(pctx, dev);
    Cuda fn cuCtxCreate_v4(pctx: *mut CUcontext, params: *mut c_void, flags: c_uint, dev: CUdevice) -> CUresult => context::create(pctx, dev);
    Cuda fn cuCtxDestroy_v2(ctx: CUcontext) -> CUresult | cuCtxDestroy => context::destroy(ctx);

    // The driver's footprint grows outside any allocation here: reconcile afterwards.
    Cuda fn cuModuleLoad(module: *mut *mut c_void, fname: *const c_char) -> CUresult => footprint::then_reconcile();
    Cuda fn cuModuleLoadData(module: *mut *mut c_void, image: *const c_void) -> CUresult | cuModuleLoadFatBinary => footprint::then_reconcile();
    Cuda fn cuModuleLoadDataEx(module: *mut *mut c_void, image: *const c_void, count: c_uint, options: *mut c_uint, values: *mut *mut c_void) -> CUresult => footprint::then_reconcile();
    Cuda fn cuLibraryLoadData(library: *mut *mut c_void, code: *const c_void, jit_options: *mut c_uint, jit_values: *mut *mut c_void, jit_count: c_uint, lib_options: *mut c_uint, lib_values: *mut *mut c_void, lib_count: c_uint) -> CUresult | cuLibraryLoadFromFile => footprint::then_reconcile();
    Cuda fn cuGraphInstantiateWithFlags(exec: *mut CUgraphExec, graph: *mut c_void, flags: u64) -> CUresult => footprint::then_reconcile();
    Cuda fn cuGraphInstantiate_v2(exec: *mut CUgraphExec, graph: *mut c_void, error_node: *mut *mut c_void, log: *mut c_char, log_size: usize) -> CUresult | cuGraphInstantiate => footprint::then_reconcile();
    Cuda fn cuGraphInstantiateWithParams(exec: *mut CUgraphExec, graph: *mut c_void, params: *mut c_void) -> CUresult | cuGraphInstantiateWithParams_ptsz => footprint::then_reconcile();

    // Every launch path passes the compute limiter's gate.
    Cuda straight_if(limiter::launch_passes) fn cuLaunchKernel(f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, shared: c_uint, stream: CUstream, params: *mut *mut c_void, extra: *mut *mut c_void) -> CUresult | cuLaunchKernel_ptsz => launch::gate(stream);
    Cuda straight_if(limiter::launch_passes) fn cuLaunchCooperativeKernel(f: CUfunction, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, shared: c_uint, stream: CUstream, params: *mut *mut c_void) -> CUresult | cuLaunchCooperativeKernel_ptsz => launch::gate(stream);
    Cuda straight_if(limiter::launch_passes) fn cuLaunchKernelEx(config: *const CUlaunchConfig, f: CUfunction, params: *mut *mut c_void, extra: *mut *mut c_void) -> CUresult | cuLaunchKernelEx_ptsz => launch::gate_config(config);
    Cuda straight_if(limiter::launch_passes) fn cuGraphLaunch(exec: CUgraphExec, stream: CUstream) -> CUresult | cuGraphLaunch_ptsz => launch::gate(stream);

    // Waits end the limiter's measured interval: a stream idle after a wait is not charged.
    Cuda straight_if(limiter::unmeasured) fn cuStreamSynchronize(stream: CUstream) -> CUresult | cuStreamSynchronize_ptsz => sync::stream(stream);
    Cuda straight_if(limiter::unmeasured) fn cuCtxSynchronize() -> CUresult => sync::context();
    Cuda straight_if(limiter::unmeasured) fn cuCtxSynchronize_v2(ctx: CUcontext) -> CUresult => sync::context_v2(ctx);

    // One virtual view of memory.
    Cuda fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult => info::mem_get_info(free, total);
    Cuda fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult => info::device_total_mem(bytes, dev);
    Nvml fn nvmlDeviceGetMemoryInfo(device: nvmlDevice_t, memory: *mut nvmlMemory_t) -> nvmlReturn_t => nvml::memory_info(device, memory);
    Nvml fn nvmlDeviceGetMemoryInfo_v2(device: nvmlDevice_t, memory: *mut nvmlMemory_v2_t) -> nvmlReturn_t => nvml::memory_info_v2(device, memory);

    // Running processes: the driver's list where it names the container's processes, else the
    // region's (drivers that list none, or host PIDs, inside a container).
    Nvml fn nvmlDeviceGetComputeRunningProcesses(device: nvmlDevice_t, count: *mut c_uint, infos: *mut nvmlProcessInfo_v1_t) -> nvmlReturn_t => nvml::running_processes(Compute, device, count, infos);
    Nvml fn nvmlDeviceGetComputeRunningProcesses_v2(device: nvmlDevice_t, count: *mut c_uint, infos: *mut nvmlProcessInfo_t) -> nvmlReturn_t | nvmlDeviceGetComputeRunningProcesses_v3 => nvml::running_processes(Compute, device, count, infos);
    Nvml fn nvmlDeviceGetGraphicsRunningProcesses(device: nvmlDevice_t, count: *mut c_uint, infos: *mut nvmlProcessInfo_v1_t) -> nvmlReturn_t => nvml::running_processes(Graphics, device, count, infos);
    Nvml fn nvmlDeviceGetGraphicsRunningProcesses_v2(device: nvmlDevice_t, count: *mut c_uint, infos: *mut nvmlProcessInfo_t) -> nvmlReturn_t | nvmlDeviceGetGraphicsRunningProcesses_v3 => nvml::running_processes(Graphics, device, count, infos);
}
