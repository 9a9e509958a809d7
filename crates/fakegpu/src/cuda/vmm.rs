//! The virtual memory management API: physical handles (cuMemCreate) are charged to their
//! device when created and stay charged until released *and* unmapped everywhere; address
//! reservations cost nothing. These calls are device-addressed and need no current context.

use cuda_types::{
    CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_LOCATION_TYPE_DEVICE, CU_MEM_LOCATION_TYPE_HOST,
    CU_MEM_LOCATION_TYPE_HOST_NUMA, CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT, CUdeviceptr, CUmemAccessDesc,
    CUmemAllocationProp, CUmemGenericAllocationHandle, CUresult,
};

use super::{guard, need_init, nn};
use crate::state::{Res, State, VMM_GRANULARITY, state};

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
        let h = st.vmm_create(size as u64, dev)?;
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
