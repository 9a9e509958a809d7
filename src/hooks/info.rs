//! The virtual memory view for CUDA: `cuMemGetInfo_v2` and `cuDeviceTotalMem_v2` report the cap
//! (never more than the device has) and free memory within it; uncapped devices get the driver's
//! numbers untouched. The driver is called first, so its errors (no context, NULL pointers)
//! reach the caller unchanged.

use cuda_types::*;
use vgpu_core::view::{virtual_total, virtual_view};

use crate::driver;
use crate::intercept::Real;
use crate::state::state;

pub unsafe fn mem_get_info(real: Real<'_, CUresult>, free: *mut usize, total: *mut usize) -> CUresult {
    let rc = real.call();
    if !rc.is_success() || free.is_null() || total.is_null() {
        return rc;
    }
    let Ok((_, dev)) = driver::current_context() else {
        return rc;
    };
    let ledger = &state().ledger;
    let Some(cap) = ledger.limit(dev) else {
        return rc;
    };
    // SAFETY: the driver just wrote both non-null out-pointers.
    unsafe {
        let v = virtual_view(Some(cap), ledger.used(dev), *total as u64, *free as u64);
        *free = v.free as usize;
        *total = v.total as usize;
    }
    rc
}

pub unsafe fn device_total_mem(real: Real<'_, CUresult>, bytes: *mut usize, dev: CUdevice) -> CUresult {
    let rc = real.call();
    if !rc.is_success() || bytes.is_null() {
        return rc;
    }
    let Ok(dev) = usize::try_from(dev) else {
        return rc;
    };
    // SAFETY: the driver just wrote the non-null out-pointer.
    unsafe { *bytes = virtual_total(state().ledger.limit(dev), *bytes as u64) as usize };
    rc
}
