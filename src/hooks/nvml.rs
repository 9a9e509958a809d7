//! NVML's memory view, so `nvidia-smi` (which `dlopen`s NVML and uses
//! `nvmlDeviceGetMemoryInfo_v2`) shows `used / cap`. The device is found in the region by UUID
//! (or, before any process recorded it, as the CUDA ordinal `CUDA_VISIBLE_DEVICES` makes it), so a
//! cap shows on the right GPU whatever this process's `CUDA_VISIBLE_DEVICES` says.

use cuda_types::*;
use vgpu_core::view::{MemoryView, virtual_view};

use std::ffi::c_uint;

use crate::container::RegionIndex;
use crate::driver;
use crate::driver::Real;
use crate::driver::nvml::ProcessList;
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
fn index_of(device: nvmlDevice_t) -> Option<RegionIndex> {
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
                    o => return Some(RegionIndex::from_stored(o - 1)),
                }
            }
            _ => {}
        }
    }
    let uuid = driver::nvml_device_uuid(device).ok()?;
    let accounting = state().container();
    let resolved = match accounting.index_of_uuid(&uuid) {
        Some(i) => Some(i),
        None => resolve_ordinal(&uuid)?.map(|o| accounting.index(o)),
    };
    let value = resolved.map_or(NOT_CUDA, |i| i.get() + 1);
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
    let st = state();
    // Uncapped everywhere: the driver's answer, without a single extra NVML call.
    if !st.ledger.any_limit() {
        return None;
    }
    let index = index_of(device)?;
    let cap = st.container().limit_at(index)?;
    Some(virtual_view(Some(cap), st.container().used_at(index), total, free))
}

/// # Safety
/// `memory` null or valid for writes (NVML's contract).
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

/// # Safety
/// As [`memory_info`].
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

/// One entry of a running-process list: `nvmlProcessInfo_v1_t` (the unversioned functions) or
/// the v2 layout with MIG instance ids (`_v2`, `_v3`).
pub trait ProcessEntry: Copy {
    fn pid(&self) -> u32;
    fn new(pid: u32, used: u64) -> Self;
}

impl ProcessEntry for nvmlProcessInfo_v1_t {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn new(pid: u32, used: u64) -> Self {
        nvmlProcessInfo_v1_t { pid, usedGpuMemory: used }
    }
}

impl ProcessEntry for nvmlProcessInfo_t {
    fn pid(&self) -> u32 {
        self.pid
    }
    /// Not a MIG instance: both ids read as invalid (0xFFFFFFFF), as the driver reports them.
    fn new(pid: u32, used: u64) -> Self {
        nvmlProcessInfo_t { pid, usedGpuMemory: used, gpuInstanceId: u32::MAX, computeInstanceId: u32::MAX }
    }
}

/// `nvmlDeviceGet{Compute,Graphics}RunningProcesses[_v2|_v3]`. Inside a container, drivers
/// 560/570 listed no process, or host PIDs (HAMi#1339–1341, HAMi-core#112), so `nvidia-smi`
/// showed none. The driver's answer is kept whenever it names a process this container can see
/// (driver 580 translates PIDs into the caller's namespace); otherwise the compute list is the
/// region's: the container's live processes, by the PIDs they have in the container, each with
/// the memory charged to it (on a GPU the container limits; elsewhere libvgpu shows the driver's
/// answer, as everywhere); graphics processes are none of the region's business. The caller's buffer protocol is NVML's: `*count` is the capacity in
/// and the entries written (or needed, with `NVML_ERROR_INSUFFICIENT_SIZE`) out.
///
/// # Safety
/// `count` and `infos` as NVML's contract: `count` null or valid, `infos` valid for `*count`
/// entries of `T` (or null when `*count` is 0).
pub unsafe fn running_processes<T: ProcessEntry>(
    real: Real<'_, nvmlReturn_t>,
    kind: ProcessList,
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut T,
) -> nvmlReturn_t {
    // SAFETY: read before the driver overwrites it; null is the driver's error to report.
    let Some(capacity) = (unsafe { count.as_ref() }).copied() else { return real.call() };
    let rc = real.call();
    if rc != nvmlReturn_t::SUCCESS && rc != nvmlReturn_t::ERROR_INSUFFICIENT_SIZE {
        return rc;
    }
    // SAFETY: the driver wrote the count (entries written, or needed).
    let listed = unsafe { *count };
    let driver_pids: Vec<u32> = if rc == nvmlReturn_t::SUCCESS {
        match (listed, infos.is_null()) {
            (0, _) | (_, true) => Vec::new(),
            // SAFETY: the driver wrote `listed` entries into the caller's buffer.
            (n, false) => unsafe { std::slice::from_raw_parts(infos, n as usize) }.iter().map(T::pid).collect(),
        }
    } else {
        // Only the number came back (a size query): ask again into our own buffer for the PIDs.
        driver::nvml_running_pids(kind, device, listed)
    };
    let Some(index) = index_of(device) else { return rc };
    // A GPU the container does not limit shows the driver's answer, as every other view does.
    let accounting = state().container();
    let sm = accounting.sm_limit_at(index);
    if accounting.limit_at(index).is_none() && !vgpu_core::limiter::sm_limit_applies(sm) {
        return rc;
    }
    let ours = accounting.processes_on(index);
    let seen = |pid: u32| ours.iter().any(|&(p, _)| p == pid) || visible(pid);
    if driver_pids.iter().any(|&p| seen(p)) || (driver_pids.is_empty() && kind == ProcessList::Graphics) {
        return rc;
    }
    let entries: Vec<(u32, u64)> = if kind == ProcessList::Compute { ours } else { Vec::new() };
    if entries.is_empty() && driver_pids.is_empty() {
        return rc;
    }
    // SAFETY: `count` is valid (read above).
    unsafe { *count = entries.len() as c_uint };
    if (capacity as usize) < entries.len() {
        return nvmlReturn_t::ERROR_INSUFFICIENT_SIZE;
    }
    if entries.is_empty() {
        return nvmlReturn_t::SUCCESS;
    }
    if infos.is_null() {
        return nvmlReturn_t::ERROR_INVALID_ARGUMENT;
    }
    for (i, &(pid, used)) in entries.iter().enumerate() {
        // SAFETY: `i < entries.len() <= capacity`, the caller's buffer size in entries.
        unsafe { infos.add(i).write(T::new(pid, used)) };
    }
    nvmlReturn_t::SUCCESS
}

/// Whether this process's PID namespace has a process `pid` (a host PID that a driver gave
/// does not exist here, or names another process, which the region check above covers).
fn visible(pid: u32) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}
