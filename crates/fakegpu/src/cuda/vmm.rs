//! The virtual memory management API: physical handles (cuMemCreate) are charged to their
//! device when created and stay charged until released *and* unmapped everywhere; address
//! reservations cost nothing. These calls are device-addressed and need no current context.
//!
//! A handle created with `requestedHandleTypes` including POSIX file descriptors can be
//! exported (cuMemExportToShareableHandle): the descriptor is a memfd holding the record of
//! state/shared.rs, and any process that gets the descriptor (SCM_RIGHTS, pidfd_getfd, or
//! opening `/proc/<pid>/fd/<n>`) imports it (cuMemImportFromShareableHandle) as a handle of its
//! own, charged to none of its devices.

use std::ffi::{c_int, c_void};

use cuda_types::{
    CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_LOCATION_TYPE_DEVICE, CU_MEM_LOCATION_TYPE_HOST,
    CU_MEM_LOCATION_TYPE_HOST_NUMA, CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT, CUdeviceptr, CUmemAccessDesc,
    CUmemAllocationProp, CUmemGenericAllocationHandle, CUresult,
};

use super::{guard, need_init, nn};
use crate::state::{HANDLE_TYPE_POSIX_FD, Res, SHAREABLE_RECORD_SIZE, ShareableRecord, State, VMM_GRANULARITY, state};

/// The device a property set places memory on; `None` for host locations.
fn location(st: &State, prop: *const CUmemAllocationProp) -> Res<Option<usize>> {
    if prop.is_null() {
        return Err(CUresult::ERROR_INVALID_VALUE);
    }
    let prop = unsafe { *prop };
    if prop.type_ != CU_MEM_ALLOCATION_TYPE_PINNED {
        return Err(CUresult::ERROR_INVALID_VALUE);
    }
    match prop.location.type_ {
        CU_MEM_LOCATION_TYPE_DEVICE => {
            st.device(prop.location.id).map(Some).map_err(|_| CUresult::ERROR_INVALID_DEVICE)
        }
        CU_MEM_LOCATION_TYPE_HOST | CU_MEM_LOCATION_TYPE_HOST_NUMA | CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT => Ok(None),
        _ => Err(CUresult::ERROR_INVALID_VALUE),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetAllocationGranularity(
    granularity: *mut usize,
    prop: *const CUmemAllocationProp,
    option: u32,
) -> CUresult {
    crate::tally!("cuMemGetAllocationGranularity");
    guard(|| {
        let out = nn(granularity)?;
        need_init()?;
        location(&state(), prop)?;
        if option > 1 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        unsafe { out.write(VMM_GRANULARITY as usize) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut CUmemGenericAllocationHandle,
    size: usize,
    prop: *const CUmemAllocationProp,
    flags: u64,
) -> CUresult {
    crate::tally!("cuMemCreate");
    guard(|| {
        let out = nn(handle)?;
        need_init()?;
        if flags != 0 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let mut st = state();
        let dev = location(&st, prop)?;
        // `location` has checked that `prop` is not NULL.
        let types = unsafe { (*prop).requestedHandleTypes };
        let h = st.vmm_create(size as u64, dev, types)?;
        unsafe { out.write(h) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresult {
    crate::tally!("cuMemRelease");
    guard(|| {
        need_init()?;
        state().vmm_release(handle)
    })
}

/// The address hint is ignored (allowed: it is only a hint).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAddressReserve(
    ptr: *mut CUdeviceptr,
    size: usize,
    alignment: usize,
    _addr: CUdeviceptr,
    flags: u64,
) -> CUresult {
    crate::tally!("cuMemAddressReserve");
    guard(|| {
        let out = nn(ptr)?;
        need_init()?;
        if flags != 0 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let p = state().address_reserve(size as u64, alignment as u64)?;
        unsafe { out.write(p) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) -> CUresult {
    crate::tally!("cuMemAddressFree");
    guard(|| {
        need_init()?;
        state().address_free(ptr, size as u64)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemMap(
    ptr: CUdeviceptr,
    size: usize,
    offset: usize,
    handle: CUmemGenericAllocationHandle,
    flags: u64,
) -> CUresult {
    crate::tally!("cuMemMap");
    guard(|| {
        need_init()?;
        if flags != 0 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        state().map(ptr, size as u64, offset as u64, handle)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult {
    crate::tally!("cuMemUnmap");
    guard(|| {
        need_init()?;
        state().unmap(ptr, size as u64)
    })
}

/// Accepted for any mapped range; access rights change nothing the fake tracks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemSetAccess(
    ptr: CUdeviceptr,
    size: usize,
    desc: *const CUmemAccessDesc,
    count: usize,
) -> CUresult {
    crate::tally!("cuMemSetAccess");
    guard(|| {
        need_init()?;
        if desc.is_null() || count == 0 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let st = state();
        if !st.fully_mapped(ptr, size as u64) {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        Ok(())
    })
}

/// Exports as a POSIX file descriptor (the caller owns it), the one type the fake supports.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemExportToShareableHandle(
    shareable: *mut c_void,
    handle: CUmemGenericAllocationHandle,
    handle_type: u32,
    flags: u64,
) -> CUresult {
    crate::tally!("cuMemExportToShareableHandle");
    guard(|| {
        let out = nn(shareable.cast::<c_int>())?;
        need_init()?;
        if flags != 0 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let record = state().vmm_export(handle, handle_type)?.encode();
        // SAFETY: plain syscalls on a descriptor this function owns until it is handed out.
        let fd = unsafe { libc::memfd_create(c"fakegpu-vmm".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(CUresult::ERROR_OUT_OF_MEMORY);
        }
        let written = unsafe { libc::pwrite(fd, record.as_ptr().cast(), record.len(), 0) };
        if written != record.len() as isize {
            unsafe { libc::close(fd) };
            return Err(CUresult::ERROR_OUT_OF_MEMORY);
        }
        unsafe { out.write(fd) };
        Ok(())
    })
}

/// For a POSIX descriptor `os_handle` is the descriptor's value, not a pointer to it; the
/// caller keeps the descriptor.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemImportFromShareableHandle(
    handle: *mut CUmemGenericAllocationHandle,
    os_handle: *mut c_void,
    handle_type: u32,
) -> CUresult {
    crate::tally!("cuMemImportFromShareableHandle");
    guard(|| {
        let out = nn(handle)?;
        need_init()?;
        if handle_type != HANDLE_TYPE_POSIX_FD {
            return Err(CUresult::ERROR_NOT_SUPPORTED);
        }
        let fd = c_int::try_from(os_handle as usize).map_err(|_| CUresult::ERROR_INVALID_VALUE)?;
        let mut buf = [0u8; SHAREABLE_RECORD_SIZE];
        // SAFETY: reads into a local buffer of the given length.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        let record = usize::try_from(n)
            .ok()
            .and_then(|n| ShareableRecord::decode(&buf[..n]))
            .ok_or(CUresult::ERROR_INVALID_VALUE)?;
        let h = state().vmm_import(&record)?;
        unsafe { out.write(h) };
        Ok(())
    })
}
