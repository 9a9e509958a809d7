//! One end-to-end pass through the C ABI inside the test binary. It is a single test because
//! the driver state is process-wide (other tests use private `State`s); the timeline's part
//! lives in `timeline_tests.rs` and runs at its end.

use std::ffi::c_void;

use cuda_types::*;

use super::array::*;
use super::context::*;
use super::device::*;
use super::memory::*;
use super::procaddr::*;
use crate::nvml::*;

#[test]
fn c_abi_round_trip() {
    unsafe {
        let mut dptr: CUdeviceptr = 0;
        assert_eq!(cuMemAlloc_v2(&mut dptr, 1), CUresult::ERROR_NOT_INITIALIZED);
        assert_eq!(cuInit(0), CUresult::SUCCESS);
        assert_eq!(cuMemAlloc_v2(&mut dptr, 1), CUresult::ERROR_INVALID_CONTEXT);
        let mut ctx: CUcontext = std::ptr::null_mut();
        assert_eq!(cuDevicePrimaryCtxRetain(&mut ctx, 0), CUresult::SUCCESS);
        assert_eq!(cuCtxSetCurrent(ctx), CUresult::SUCCESS);
        assert_eq!(cuMemAlloc_v2(std::ptr::null_mut(), 1), CUresult::ERROR_INVALID_VALUE);

        let desc = CUDA_ARRAY_DESCRIPTOR { Width: 1000, Height: 3, Format: array_format::HALF, NumChannels: 2 };
        let mut arr: CUarray = std::ptr::null_mut();
        assert_eq!(cuArrayCreate_v2(&mut arr, &desc), CUresult::SUCCESS);
        let mut req = CUDA_ARRAY_MEMORY_REQUIREMENTS::default();
        assert_eq!(cuArrayGetMemoryRequirements(&mut req, arr, 0), CUresult::SUCCESS);
        assert_eq!(req.size, 12288); // 1000*3*2*2 = 12000, rounded up to 512
        assert_eq!(cuArrayDestroy(arr), CUresult::SUCCESS);
        assert_eq!(cuArrayDestroy(arr), CUresult::ERROR_INVALID_HANDLE);

        // cuGetProcAddress hands out the very functions the library exports.
        let mut pfn: *mut c_void = std::ptr::null_mut();
        let mut status = 99u32;
        let r = cuGetProcAddress_v2(c"cuMemAlloc".as_ptr(), &mut pfn, 13000, 0, &mut status);
        assert_eq!((r, status), (CUresult::SUCCESS, 0));
        assert_eq!(pfn as usize, cuMemAlloc_v2 as *const () as usize);
        let r = cuGetProcAddress_v2(c"cuMemAllocAsync".as_ptr(), &mut pfn, 11000, 0, &mut status);
        assert_eq!((r, status), (CUresult::ERROR_NOT_FOUND, 2));
        assert!(pfn.is_null());

        // NVML sees the context overhead; a wrong struct version is refused.
        let mut dev: nvmlDevice_t = std::ptr::null_mut();
        assert_eq!(nvmlDeviceGetHandleByIndex_v2(0, &mut dev), nvmlReturn_t::ERROR_UNINITIALIZED);
        assert_eq!(nvmlInit_v2(), nvmlReturn_t::SUCCESS);
        assert_eq!(nvmlDeviceGetHandleByIndex_v2(0, &mut dev), nvmlReturn_t::SUCCESS);
        let mut mem = nvmlMemory_v2_t::default();
        let r = nvmlDeviceGetMemoryInfo_v2(dev, &mut mem);
        assert_eq!(r, nvmlReturn_t::ERROR_ARGUMENT_VERSION_MISMATCH);
        mem.version = NVML_MEMORY_V2;
        assert_eq!(nvmlDeviceGetMemoryInfo_v2(dev, &mut mem), nvmlReturn_t::SUCCESS);
        assert_eq!(mem.used, crate::state::state().cfg.context_overhead);
        // Like drivers 560/570 in a container: no process listed (FAKEGPU_NVML_PROCESSES unset).
        let mut count = 0u32;
        let r = nvmlDeviceGetComputeRunningProcesses_v3(dev, &mut count, std::ptr::null_mut());
        assert_eq!((r, count), (nvmlReturn_t::SUCCESS, 0));
        assert_eq!(nvmlShutdown(), nvmlReturn_t::SUCCESS);
        assert_eq!(nvmlShutdown(), nvmlReturn_t::ERROR_UNINITIALIZED);
        assert_eq!(cuDevicePrimaryCtxRelease_v2(0), CUresult::SUCCESS);
        super::timeline_tests::launch_and_wait();
    }
}
