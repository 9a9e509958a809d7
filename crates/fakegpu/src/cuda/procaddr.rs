//! cuGetProcAddress: the door cudart (and anything built on it) uses for every driver call.
//!
//! Callers ask for a *base* name ("cuMemAlloc") plus the CUDA version they were built for;
//! the driver answers with the newest ABI variant that version knows ("cuMemAlloc_v2" from
//! 3.2 on). With the per-thread-default-stream flag, stream-ordered calls resolve to their
//! `_ptsz` variants. The answer is the function's address taken directly from Rust, never
//! via dlsym, exactly as a real driver hands out internal addresses: an interposer that
//! only hooks dlsym would be bypassed here, which is what the tests need to show.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::io::Write;

use cuda_types::{
    CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, CU_GET_PROC_ADDRESS_SUCCESS, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND,
    CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT, CUresult,
};

use super::{array, context, device, graph, guard, ipc, launch, memory, misc, pool, stream, vmm};
use crate::state::state;

/// One base name: the variants in increasing version order (first = oldest supported), and
/// the per-thread variant if there is one.
pub struct Entry {
    pub base: &'static str,
    pub versions: &'static [(i32, &'static str)],
    pub ptsz: Option<&'static str>,
}

macro_rules! entries {
    ($($base:literal $( $ver:literal => $name:literal )+ $( ; ptsz $p:literal )? ,)*) => {
        &[$(Entry { base: $base, versions: &[$(($ver, $name)),+], ptsz: entries!(@p $($p)?) }),*]
    };
    (@p) => { None };
    (@p $p:literal) => { Some($p) };
}

/// When each entry point appeared (approximately, by CUDA release) and which ABI variant
/// each version range gets.
pub static TABLE: &[Entry] = entries![
    "cuInit" 2000 => "cuInit",
    "cuDriverGetVersion" 2020 => "cuDriverGetVersion",
    "cuDeviceGet" 2000 => "cuDeviceGet",
    "cuDeviceGetCount" 2000 => "cuDeviceGetCount",
    "cuDeviceGetName" 2000 => "cuDeviceGetName",
    "cuDeviceGetUuid" 9020 => "cuDeviceGetUuid" 11040 => "cuDeviceGetUuid_v2",
    "cuDeviceTotalMem" 2000 => "cuDeviceTotalMem" 3020 => "cuDeviceTotalMem_v2",
    "cuDeviceGetAttribute" 2000 => "cuDeviceGetAttribute",
    "cuDeviceGetPCIBusId" 4010 => "cuDeviceGetPCIBusId",
    "cuDevicePrimaryCtxRetain" 7000 => "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease" 7000 => "cuDevicePrimaryCtxRelease" 11000 => "cuDevicePrimaryCtxRelease_v2",
    "cuDevicePrimaryCtxReset" 7000 => "cuDevicePrimaryCtxReset" 11000 => "cuDevicePrimaryCtxReset_v2",
    "cuDevicePrimaryCtxGetState" 7000 => "cuDevicePrimaryCtxGetState",
    "cuCtxCreate" 2000 => "cuCtxCreate" 3020 => "cuCtxCreate_v2" 11040 => "cuCtxCreate_v3" 12050 => "cuCtxCreate_v4",
    "cuCtxDestroy" 2000 => "cuCtxDestroy" 4000 => "cuCtxDestroy_v2",
    "cuCtxSetCurrent" 4000 => "cuCtxSetCurrent",
    "cuCtxGetCurrent" 4000 => "cuCtxGetCurrent",
    "cuCtxPushCurrent" 2000 => "cuCtxPushCurrent" 4000 => "cuCtxPushCurrent_v2",
    "cuCtxPopCurrent" 2000 => "cuCtxPopCurrent" 4000 => "cuCtxPopCurrent_v2",
    "cuCtxGetDevice" 2000 => "cuCtxGetDevice",
    "cuCtxSynchronize" 2000 => "cuCtxSynchronize",
    "cuCtxEnablePeerAccess" 4000 => "cuCtxEnablePeerAccess",
    "cuCtxDisablePeerAccess" 4000 => "cuCtxDisablePeerAccess",
    "cuDeviceCanAccessPeer" 4000 => "cuDeviceCanAccessPeer",
    "cuIpcGetMemHandle" 4010 => "cuIpcGetMemHandle",
    "cuIpcOpenMemHandle" 4010 => "cuIpcOpenMemHandle" 11000 => "cuIpcOpenMemHandle_v2",
    "cuIpcCloseMemHandle" 4010 => "cuIpcCloseMemHandle",
    "cuMemAlloc" 2000 => "cuMemAlloc" 3020 => "cuMemAlloc_v2",
    "cuMemAllocPitch" 2000 => "cuMemAllocPitch" 3020 => "cuMemAllocPitch_v2",
    "cuMemAllocManaged" 6000 => "cuMemAllocManaged",
    "cuMemAdvise" 8000 => "cuMemAdvise" 13000 => "cuMemAdvise_v2",
    "cuMemPrefetchAsync" 8000 => "cuMemPrefetchAsync" 13000 => "cuMemPrefetchAsync_v2",
    "cuMemFree" 2000 => "cuMemFree" 3020 => "cuMemFree_v2",
    "cuMemGetInfo" 2000 => "cuMemGetInfo" 3020 => "cuMemGetInfo_v2",
    "cuMemAllocHost" 2000 => "cuMemAllocHost" 3020 => "cuMemAllocHost_v2",
    "cuMemFreeHost" 2000 => "cuMemFreeHost",
    "cuMemcpyHtoD" 2000 => "cuMemcpyHtoD" 3020 => "cuMemcpyHtoD_v2",
    "cuMemcpyDtoH" 2000 => "cuMemcpyDtoH" 3020 => "cuMemcpyDtoH_v2",
    "cuMemsetD8" 2000 => "cuMemsetD8" 3020 => "cuMemsetD8_v2",
    "cuMemAllocAsync" 11020 => "cuMemAllocAsync" ; ptsz "cuMemAllocAsync_ptsz",
    "cuMemAllocFromPoolAsync" 11020 => "cuMemAllocFromPoolAsync" ; ptsz "cuMemAllocFromPoolAsync_ptsz",
    "cuMemFreeAsync" 11020 => "cuMemFreeAsync" ; ptsz "cuMemFreeAsync_ptsz",
    "cuMemPoolCreate" 11020 => "cuMemPoolCreate",
    "cuMemPoolDestroy" 11020 => "cuMemPoolDestroy",
    "cuDeviceGetDefaultMemPool" 11020 => "cuDeviceGetDefaultMemPool",
    "cuMemPoolTrimTo" 11020 => "cuMemPoolTrimTo",
    "cuMemPoolSetAttribute" 11020 => "cuMemPoolSetAttribute",
    "cuMemPoolGetAttribute" 11020 => "cuMemPoolGetAttribute",
    "cuMemGetAllocationGranularity" 10020 => "cuMemGetAllocationGranularity",
    "cuMemCreate" 10020 => "cuMemCreate",
    "cuMemRelease" 10020 => "cuMemRelease",
    "cuMemAddressReserve" 10020 => "cuMemAddressReserve",
    "cuMemAddressFree" 10020 => "cuMemAddressFree",
    "cuMemMap" 10020 => "cuMemMap",
    "cuMemUnmap" 10020 => "cuMemUnmap",
    "cuMemSetAccess" 10020 => "cuMemSetAccess",
    "cuMemExportToShareableHandle" 10020 => "cuMemExportToShareableHandle",
    "cuMemImportFromShareableHandle" 10020 => "cuMemImportFromShareableHandle",
    "cuArrayCreate" 2000 => "cuArrayCreate" 3020 => "cuArrayCreate_v2",
    "cuArray3DCreate" 2000 => "cuArray3DCreate" 3020 => "cuArray3DCreate_v2",
    "cuArrayDestroy" 2000 => "cuArrayDestroy",
    "cuMipmappedArrayCreate" 5000 => "cuMipmappedArrayCreate",
    "cuMipmappedArrayDestroy" 5000 => "cuMipmappedArrayDestroy",
    "cuArrayGetMemoryRequirements" 11060 => "cuArrayGetMemoryRequirements",
    "cuMipmappedArrayGetMemoryRequirements" 11060 => "cuMipmappedArrayGetMemoryRequirements",
    "cuStreamCreate" 2000 => "cuStreamCreate",
    "cuStreamCreateWithPriority" 5050 => "cuStreamCreateWithPriority",
    "cuStreamDestroy" 2000 => "cuStreamDestroy" 4000 => "cuStreamDestroy_v2",
    "cuStreamSynchronize" 2000 => "cuStreamSynchronize" ; ptsz "cuStreamSynchronize_ptsz",
    "cuStreamQuery" 2000 => "cuStreamQuery" ; ptsz "cuStreamQuery_ptsz",
    "cuStreamWaitEvent" 3020 => "cuStreamWaitEvent" ; ptsz "cuStreamWaitEvent_ptsz",
    "cuEventCreate" 2000 => "cuEventCreate",
    "cuEventDestroy" 2000 => "cuEventDestroy" 4000 => "cuEventDestroy_v2",
    "cuEventRecord" 2000 => "cuEventRecord" ; ptsz "cuEventRecord_ptsz",
    "cuEventRecordWithFlags" 11010 => "cuEventRecordWithFlags" ; ptsz "cuEventRecordWithFlags_ptsz",
    "cuEventQuery" 2000 => "cuEventQuery",
    "cuEventSynchronize" 2000 => "cuEventSynchronize",
    "cuEventElapsedTime" 2000 => "cuEventElapsedTime",
    "cuModuleLoad" 2000 => "cuModuleLoad",
    "cuModuleLoadData" 2000 => "cuModuleLoadData",
    "cuModuleLoadDataEx" 2010 => "cuModuleLoadDataEx",
    "cuModuleUnload" 2000 => "cuModuleUnload",
    "cuModuleGetFunction" 2000 => "cuModuleGetFunction",
    "cuLibraryLoadData" 12000 => "cuLibraryLoadData",
    "cuLibraryLoadFromFile" 12000 => "cuLibraryLoadFromFile",
    "cuLibraryUnload" 12000 => "cuLibraryUnload",
    "cuLibraryGetKernel" 12000 => "cuLibraryGetKernel",
    "cuKernelGetFunction" 12000 => "cuKernelGetFunction",
    "cuLaunchKernel" 4000 => "cuLaunchKernel" ; ptsz "cuLaunchKernel_ptsz",
    "cuLaunchKernelEx" 11060 => "cuLaunchKernelEx" ; ptsz "cuLaunchKernelEx_ptsz",
    "cuLaunchCooperativeKernel" 9000 => "cuLaunchCooperativeKernel" ; ptsz "cuLaunchCooperativeKernel_ptsz",
    "cuGraphCreate" 10000 => "cuGraphCreate",
    "cuGraphDestroy" 10000 => "cuGraphDestroy",
    // From 12.0 the base name means the flags form (cuda.h maps it so).
    "cuGraphInstantiate" 10000 => "cuGraphInstantiate" 11000 => "cuGraphInstantiate_v2" 12000 => "cuGraphInstantiateWithFlags",
    "cuGraphInstantiateWithFlags" 11040 => "cuGraphInstantiateWithFlags",
    "cuGraphExecDestroy" 10000 => "cuGraphExecDestroy",
    "cuGraphLaunch" 10000 => "cuGraphLaunch" ; ptsz "cuGraphLaunch_ptsz",
    // One per-thread variant per base name here: the mode-taking one, which every
    // runtime since 10.1 asks for (a 10.0 caller with flags 2 would get the wrong arity).
    "cuStreamBeginCapture" 10000 => "cuStreamBeginCapture" 10010 => "cuStreamBeginCapture_v2" ; ptsz "cuStreamBeginCapture_v2_ptsz",
    "cuStreamEndCapture" 10000 => "cuStreamEndCapture" ; ptsz "cuStreamEndCapture_ptsz",
    "cuStreamIsCapturing" 10000 => "cuStreamIsCapturing" ; ptsz "cuStreamIsCapturing_ptsz",
    "cuGetErrorName" 6000 => "cuGetErrorName",
    "cuGetErrorString" 6000 => "cuGetErrorString",
    "cuGetExportTable" 3000 => "cuGetExportTable",
    "cuGetProcAddress" 11030 => "cuGetProcAddress" 12000 => "cuGetProcAddress_v2",
];

macro_rules! addresses {
    ($name:expr; $($m:ident :: $f:ident),* $(,)?) => {
        match $name {
            $(stringify!($f) => Some($m::$f as *const c_void),)*
            _ => None,
        }
    };
}

/// The address of an exported CUDA function, by its exported name.
pub fn address(name: &str) -> Option<*const c_void> {
    addresses!(name;
        device::cuInit, device::cuDriverGetVersion, device::cuDeviceGet, device::cuDeviceGetCount,
        device::cuDeviceGetName, device::cuDeviceGetUuid, device::cuDeviceGetUuid_v2,
        device::cuDeviceTotalMem, device::cuDeviceTotalMem_v2, device::cuDeviceGetAttribute,
        device::cuDeviceGetPCIBusId, device::cuDeviceCanAccessPeer,
        context::cuDevicePrimaryCtxRetain, context::cuDevicePrimaryCtxRelease,
        context::cuDevicePrimaryCtxRelease_v2, context::cuDevicePrimaryCtxReset,
        context::cuDevicePrimaryCtxReset_v2, context::cuDevicePrimaryCtxGetState,
        context::cuCtxCreate, context::cuCtxCreate_v2, context::cuCtxCreate_v3,
        context::cuCtxCreate_v4, context::cuCtxDestroy, context::cuCtxDestroy_v2,
        context::cuCtxSetCurrent, context::cuCtxGetCurrent, context::cuCtxPushCurrent,
        context::cuCtxPushCurrent_v2, context::cuCtxPopCurrent, context::cuCtxPopCurrent_v2,
        context::cuCtxGetDevice, stream::cuCtxSynchronize, context::cuCtxEnablePeerAccess,
        context::cuCtxDisablePeerAccess,
        ipc::cuIpcGetMemHandle, ipc::cuIpcOpenMemHandle, ipc::cuIpcOpenMemHandle_v2, ipc::cuIpcCloseMemHandle,
        memory::cuMemAlloc, memory::cuMemAlloc_v2, memory::cuMemAllocPitch,
        memory::cuMemAllocPitch_v2, memory::cuMemAllocManaged, memory::cuMemAdvise,
        memory::cuMemAdvise_v2, memory::cuMemPrefetchAsync, memory::cuMemPrefetchAsync_v2, memory::cuMemFree,
        memory::cuMemFree_v2, memory::cuMemGetInfo, memory::cuMemGetInfo_v2,
        memory::cuMemAllocHost, memory::cuMemAllocHost_v2, memory::cuMemFreeHost,
        memory::cuMemcpyHtoD, memory::cuMemcpyHtoD_v2, memory::cuMemcpyDtoH,
        memory::cuMemcpyDtoH_v2, memory::cuMemsetD8, memory::cuMemsetD8_v2,
        pool::cuMemAllocAsync, pool::cuMemAllocAsync_ptsz, pool::cuMemAllocFromPoolAsync,
        pool::cuMemAllocFromPoolAsync_ptsz, pool::cuMemFreeAsync, pool::cuMemFreeAsync_ptsz,
        pool::cuMemPoolCreate, pool::cuMemPoolDestroy, pool::cuDeviceGetDefaultMemPool,
        pool::cuMemPoolTrimTo, pool::cuMemPoolSetAttribute, pool::cuMemPoolGetAttribute,
        vmm::cuMemGetAllocationGranularity, vmm::cuMemCreate, vmm::cuMemRelease,
        vmm::cuMemAddressReserve, vmm::cuMemAddressFree, vmm::cuMemMap, vmm::cuMemUnmap,
        vmm::cuMemSetAccess, vmm::cuMemExportToShareableHandle, vmm::cuMemImportFromShareableHandle,
        array::cuArrayCreate, array::cuArrayCreate_v2, array::cuArray3DCreate,
        array::cuArray3DCreate_v2, array::cuArrayDestroy, array::cuMipmappedArrayCreate,
        array::cuMipmappedArrayDestroy, array::cuArrayGetMemoryRequirements,
        array::cuMipmappedArrayGetMemoryRequirements,
        stream::cuStreamCreate, stream::cuStreamCreateWithPriority, stream::cuStreamDestroy,
        stream::cuStreamDestroy_v2, stream::cuStreamSynchronize, stream::cuStreamSynchronize_ptsz,
        stream::cuStreamQuery, stream::cuStreamQuery_ptsz, stream::cuStreamWaitEvent,
        stream::cuStreamWaitEvent_ptsz, stream::cuEventCreate, stream::cuEventDestroy,
        stream::cuEventDestroy_v2, stream::cuEventRecord, stream::cuEventRecord_ptsz,
        stream::cuEventRecordWithFlags, stream::cuEventRecordWithFlags_ptsz, stream::cuEventQuery,
        stream::cuEventSynchronize, stream::cuEventElapsedTime,
        launch::cuModuleLoad, launch::cuModuleLoadData, launch::cuModuleLoadDataEx,
        launch::cuModuleUnload, launch::cuModuleGetFunction, launch::cuLibraryLoadData,
        launch::cuLibraryLoadFromFile, launch::cuLibraryUnload, launch::cuLibraryGetKernel,
        launch::cuKernelGetFunction, launch::cuLaunchKernel, launch::cuLaunchKernel_ptsz,
        launch::cuLaunchKernelEx, launch::cuLaunchKernelEx_ptsz, launch::cuLaunchCooperativeKernel,
        launch::cuLaunchCooperativeKernel_ptsz,
        graph::cuGraphCreate, graph::cuGraphDestroy, graph::cuGraphInstantiate,
        graph::cuGraphInstantiate_v2, graph::cuGraphInstantiateWithFlags, graph::cuGraphExecDestroy,
        graph::cuGraphLaunch, graph::cuGraphLaunch_ptsz, graph::cuStreamBeginCapture,
        graph::cuStreamBeginCapture_v2, graph::cuStreamBeginCapture_v2_ptsz,
        graph::cuStreamEndCapture, graph::cuStreamEndCapture_ptsz, graph::cuStreamIsCapturing,
        graph::cuStreamIsCapturing_ptsz,
        misc::cuGetErrorName, misc::cuGetErrorString, misc::cuGetExportTable,
        self::cuGetProcAddress, self::cuGetProcAddress_v2,
    )
}

/// The exported name a request resolves to, or the `symbolStatus` explaining why none.
pub fn resolve(base: &str, version: i32, flags: u64) -> Result<&'static str, u32> {
    let entry = TABLE.iter().find(|e| e.base == base).ok_or(CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND)?;
    let newest = entry
        .versions
        .iter()
        .rev()
        .find(|(since, _)| *since <= version)
        .ok_or(CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT)?;
    if flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM != 0
        && let Some(p) = entry.ptsz
    {
        return Ok(p);
    }
    Ok(newest.1)
}

/// Appends one line per request to `FAKEGPU_LOG`, opened per line so several processes can
/// share one file.
fn log(symbol: &str, version: i32, flags: u64, result: Option<&str>) {
    let result = result.unwrap_or("NULL");
    log_line(&format!("procaddr {symbol} {version} {flags} -> {result}"));
}

/// Appends one line to `FAKEGPU_LOG`, if set.
pub fn log_line(line: &str) {
    let Some(path) = state().cfg.log.clone() else {
        return;
    };
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
    if let Ok(mut f) = file {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

fn get_proc_address(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut u32,
) -> CUresult {
    guard(|| {
        if symbol.is_null() || pfn.is_null() {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let name = unsafe { CStr::from_ptr(symbol) }.to_string_lossy();
        let resolved = resolve(&name, version, flags);
        log(&name, version, flags, resolved.ok());
        let (ptr, code) = match resolved.map(address) {
            Ok(Some(p)) => (p, CU_GET_PROC_ADDRESS_SUCCESS),
            Ok(None) => (std::ptr::null(), CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND),
            Err(code) => (std::ptr::null(), code),
        };
        unsafe {
            pfn.write(ptr as *mut c_void);
            if !status.is_null() {
                status.write(code);
            }
        }
        if code == CU_GET_PROC_ADDRESS_SUCCESS { Ok(()) } else { Err(CUresult::ERROR_NOT_FOUND) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CUresult {
    crate::tally!("cuGetProcAddress");
    get_proc_address(symbol, pfn, version, flags, std::ptr::null_mut())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut u32,
) -> CUresult {
    crate::tally!("cuGetProcAddress_v2");
    get_proc_address(symbol, pfn, version, flags, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_name_has_an_address() {
        for e in TABLE {
            let names = e.versions.iter().map(|v| v.1).chain(e.ptsz);
            for name in names {
                assert!(address(name).is_some(), "{name}");
            }
        }
    }

    #[test]
    fn versions_and_flags() {
        assert_eq!(resolve("cuMemAlloc", 3010, 0), Ok("cuMemAlloc"));
        assert_eq!(resolve("cuMemAlloc", 13000, 0), Ok("cuMemAlloc_v2"));
        assert_eq!(resolve("cuCtxCreate", 11040, 0), Ok("cuCtxCreate_v3"));
        assert_eq!(resolve("cuCtxCreate", 12050, 0), Ok("cuCtxCreate_v4"));
        assert_eq!(resolve("cuGetProcAddress", 11080, 0), Ok("cuGetProcAddress"));
        assert_eq!(resolve("cuGetProcAddress", 12000, 0), Ok("cuGetProcAddress_v2"));
        assert_eq!(resolve("cuMemAllocAsync", 13000, 2), Ok("cuMemAllocAsync_ptsz"));
        assert_eq!(resolve("cuMemAlloc", 13000, 2), Ok("cuMemAlloc_v2"));
        assert_eq!(resolve("cuMemAllocAsync", 11000, 0), Err(CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT));
        assert_eq!(resolve("cuMemAlloc_v2", 13000, 0), Err(CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND));
        assert_eq!(resolve("cuNoSuchThing", 13000, 0), Err(CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND));
        assert_ne!(address("cuMemAllocAsync"), address("cuMemAllocAsync_ptsz"));
        assert_eq!(resolve("cuLaunchKernelEx", 11060, 0), Ok("cuLaunchKernelEx"));
        assert_eq!(resolve("cuLaunchKernelEx", 11050, 0), Err(CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT));
        assert_eq!(resolve("cuLaunchKernelEx", 12000, 2), Ok("cuLaunchKernelEx_ptsz"));
        assert_eq!(resolve("cuGraphLaunch", 12080, 2), Ok("cuGraphLaunch_ptsz"));
        assert_eq!(resolve("cuGraphInstantiate", 11000, 0), Ok("cuGraphInstantiate_v2"));
        assert_eq!(resolve("cuGraphInstantiate", 12000, 0), Ok("cuGraphInstantiateWithFlags"));
        assert_eq!(resolve("cuStreamBeginCapture", 10000, 0), Ok("cuStreamBeginCapture"));
        assert_eq!(resolve("cuStreamBeginCapture", 12000, 0), Ok("cuStreamBeginCapture_v2"));
        assert_eq!(resolve("cuEventDestroy", 12000, 0), Ok("cuEventDestroy_v2"));
        assert_eq!(resolve("cuEventRecord", 12000, 2), Ok("cuEventRecord_ptsz"));
        assert_eq!(resolve("cuEventQuery", 12000, 2), Ok("cuEventQuery"), "not stream-ordered");
        assert_eq!(resolve("cuIpcOpenMemHandle", 10020, 0), Ok("cuIpcOpenMemHandle"));
        assert_eq!(resolve("cuIpcOpenMemHandle", 12000, 0), Ok("cuIpcOpenMemHandle_v2"));
        // Every launch flavour is its own function.
        let launches = [
            "cuLaunchKernel",
            "cuLaunchKernel_ptsz",
            "cuLaunchKernelEx",
            "cuLaunchKernelEx_ptsz",
            "cuLaunchCooperativeKernel",
            "cuLaunchCooperativeKernel_ptsz",
            "cuGraphLaunch",
            "cuGraphLaunch_ptsz",
        ];
        let mut addrs: Vec<usize> = launches.iter().map(|n| address(n).unwrap() as usize).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), launches.len());
    }
}
