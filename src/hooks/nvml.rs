//! NVML's memory view, so `nvidia-smi` (which `dlopen`s NVML and uses
//! `nvmlDeviceGetMemoryInfo_v2`) shows `used / cap`. The device is matched to its CUDA ordinal by
//! UUID, so a cap set for ordinal `i` shows on the right GPU whatever `CUDA_VISIBLE_DEVICES` says.

use cuda_types::*;
use vgpu_core::view::{MemoryView, virtual_view};

use crate::driver;
use crate::intercept::Real;
use crate::state::{ordinal_of_uuid, state};

/// Our view for a device, given the driver's physical numbers; `None` when it is uncapped.
fn capped_view(device: nvmlDevice_t, total: u64, free: u64) -> Option<MemoryView> {
    let ledger = &state().ledger;
    // Uncapped everywhere: the driver's answer, without a single extra NVML call.
    if (0..vgpu_core::MAX_DEVICES).all(|d| ledger.limit(d).is_none()) {
        return None;
    }
    let uuid = driver::nvml_device_uuid(device).ok()?;
    let dev = ordinal_of_uuid(&uuid)?;
    let cap = ledger.limit(dev)?;
    Some(virtual_view(Some(cap), ledger.used(dev), total, free))
}

pub unsafe fn memory_info(
    real: Real<'_, nvmlReturn_t>,
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    let rc = real.call();
    // SAFETY: written by NVML on success; read only when non-null.
    let Some(m) = (unsafe { memory.as_mut() }).filter(|_| rc.is_success()) else {
        return rc;
    };
    if let Some(v) = capped_view(device, m.total, m.free) {
        *m = nvmlMemory_t { total: v.total, free: v.free, used: v.used };
    }
    rc
}

pub unsafe fn memory_info_v2(
    real: Real<'_, nvmlReturn_t>,
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    let rc = real.call();
    // SAFETY: written by NVML on success; read only when non-null.
    let Some(m) = (unsafe { memory.as_mut() }).filter(|_| rc.is_success()) else {
        return rc;
    };
    if let Some(v) = capped_view(device, m.total, m.free) {
        // The driver's reserved memory is outside any container's slice; a capped view shows
        // total = used + free.
        m.total = v.total;
        m.reserved = 0;
        m.free = v.free;
        m.used = v.used;
    }
    rc
}
