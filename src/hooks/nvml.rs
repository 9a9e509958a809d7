//! NVML's memory view, so `nvidia-smi` (which `dlopen`s NVML and uses
//! `nvmlDeviceGetMemoryInfo_v2`) shows `used / cap`. The device is found in the region by UUID
//! (or, before any process recorded it, as the CUDA ordinal `CUDA_VISIBLE_DEVICES` makes it), so a
//! cap shows on the right GPU whatever this process's `CUDA_VISIBLE_DEVICES` says.

use cuda_types::*;
use vgpu_core::view::{MemoryView, virtual_view};

use crate::driver;
use crate::intercept::Real;
use crate::state::{resolve_ordinal, state};

use std::sync::atomic::{AtomicUsize, Ordering};

/// NVML handle → region index, learned once per handle (NVML's handles are stable for the
/// process's life). `handle` 0 = free slot; `index` holds index + 1, or `NOT_CUDA` for a
/// device the container does not have.
struct HandleSlot {
    handle: AtomicUsize,
    index: AtomicUsize,
}

const NOT_CUDA: usize = usize::MAX;
const HANDLE_SLOTS: usize = 2 * vgpu_core::MAX_DEVICES;

static HANDLES: [HandleSlot; HANDLE_SLOTS] =
    [const { HandleSlot { handle: AtomicUsize::new(0), index: AtomicUsize::new(0) } }; HANDLE_SLOTS];

/// The region index of an NVML device (`None`: the container does not have it, or we cannot tell).
fn index_of(device: nvmlDevice_t) -> Option<usize> {
    let key = device as usize;
    if key == 0 {
        return None;
    }
    for slot in &HANDLES {
        match slot.handle.load(Ordering::Acquire) {
            0 => break,
            h if h == key => {
                match slot.index.load(Ordering::Acquire) {
                    0 => break, // being filled in by another thread
                    NOT_CUDA => return None,
                    o => return Some(o - 1),
                }
            }
            _ => {}
        }
    }
    let uuid = driver::nvml_device_uuid(device).ok()?;
    let accounting = state().ledger.accounting();
    let resolved = match accounting.region().index_of_uuid(&uuid) {
        Some(i) => Some(i),
        None => resolve_ordinal(&uuid)?.map(|o| accounting.index(o)),
    };
    let value = resolved.map_or(NOT_CUDA, |o| o + 1);
    for slot in &HANDLES {
        match slot.handle.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                slot.index.store(value, Ordering::Release);
                break;
            }
            Err(h) if h == key => break, // another thread cached it
            Err(_) => {}
        }
    }
    resolved
}

/// Our view for a device, given the driver's physical numbers; `None` when it is uncapped.
fn capped_view(device: nvmlDevice_t, total: u64, free: u64) -> Option<MemoryView> {
    let ledger = &state().ledger;
    // Uncapped everywhere: the driver's answer, without a single extra NVML call.
    if !ledger.any_limit() {
        return None;
    }
    let index = index_of(device)?;
    let cap = ledger.accounting().limit_at(index)?;
    Some(virtual_view(Some(cap), ledger.accounting().used_at(index), total, free))
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
