//! Reconciliation of the ledger with the driver's per-process count.
//!
//! The driver spends memory for a process outside every allocation entry point: module code it
//! loads lazily, graph-exec state and graph memory nodes, what a stream-ordered pool keeps
//! cached after `cuMemFreeAsync`, cuBLAS/cuDNN workspaces and a context's own growth (on an
//! H200, a vLLM-style worker: 184 MiB the ledger never saw). The cap bounds the true footprint,
//! so that memory is found afterwards and charged to the process's slot as *driver overhead*
//! (`vgpu_core::overhead`), apart from its allocations: the container's sum, the view's free and
//! HAMi's monitor all include it.
//!
//! Only on slow paths, never on a launch or an allocation that fits:
//! - a capped `cuMemGetInfo`, at most every `LIBVGPU_RECONCILE_MS` (100 ms) per device, and
//!   at once when something grew the footprint since (below);
//! - after a module or library load and after a graph instantiation (the same interval: a burst
//!   of loads costs one query; the next view query then reconciles);
//! - at a refusal, at most every 10 ms: the overhead may have shrunk (a pool trimmed), and a
//!   refusal the cap did not require must not happen; the allocation is retried once;
//! - a new context marks its device for the next of those (opening NVML there would add ~15 ms
//!   to every process start; its own cost is charged when it is created).
//!
//! The driver's count is NVML's `usedGpuMemory` for this process (the real function, opened
//! once and kept open for the process's life: NVML counts init/shutdown pairs, and re-opening it
//! per query would cost its start-up each time). Where NVML cannot say (absent, or this PID not
//! in its list, as under a PID namespace where NVML shows host PIDs), the overhead is estimated
//! from the driver's own figures for graph memory and the current pool's cache.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use cuda_types::nvmlDevice_t;
use vgpu_core::MAX_DEVICES;
use vgpu_core::devices::format_uuid;
use vgpu_core::ledger::Accounting;
use vgpu_core::overhead::{Estimate, Measure, Throttle, overhead};

use crate::clock::coarse_ns as now_ns;
use crate::driver;
use crate::state::state;

const REFUSAL_INTERVAL_NS: u64 = 10_000_000;

static DUE: [Throttle; MAX_DEVICES] = [const { Throttle::new() }; MAX_DEVICES];
static REFUSAL: [Throttle; MAX_DEVICES] = [const { Throttle::new() }; MAX_DEVICES];
/// The footprint grew (or may have) since the last reconciliation on this device.
static GREW: [AtomicBool; MAX_DEVICES] = [const { AtomicBool::new(false) }; MAX_DEVICES];
/// NVML handle of each CUDA ordinal's device (0 = not looked up yet).
static HANDLES: [AtomicUsize; MAX_DEVICES] = [const { AtomicUsize::new(0) }; MAX_DEVICES];
/// One reconciliation at a time; a thread that finds one running skips its own.
static RUNNING: Mutex<()> = Mutex::new(());

fn interval_ns(dev: usize) -> Option<u64> {
    let st = state();
    st.ledger.limit(dev)?;
    st.config.reconcile_ms.map(|ms| ms.saturating_mul(1_000_000))
}

/// A capped `cuMemGetInfo` on `dev` at `now` (the caller's coarse clock read): one relaxed load
/// and a compare unless a reconciliation is due.
#[inline]
pub fn on_view(dev: usize, now: u64) {
    let (Some(due), Some(grew)) = (DUE.get(dev), GREW.get(dev)) else { return };
    let Some(interval) = state().config.reconcile_ms else { return };
    if grew.load(Ordering::Relaxed) || due.due(now, interval.saturating_mul(1_000_000)) {
        reconcile(dev);
    }
}

/// After a module load or graph instantiation on the current device.
pub fn after_growth() {
    let Some(dev) = driver::current_tracked_device() else { return };
    let Some(interval) = interval_ns(dev) else { return };
    if DUE[dev].due(now_ns(), interval) {
        reconcile(dev);
    } else {
        GREW[dev].store(true, Ordering::Relaxed);
    }
}

/// A context was created on `dev`: reconcile at the next trigger.
pub fn context_created(dev: usize) {
    if let Some(g) = GREW.get(dev) {
        g.store(true, Ordering::Relaxed);
    }
}

/// The cap refused an allocation on `dev`: whether a reconciliation lowered the overhead, so
/// that the allocation is worth retrying.
pub fn at_refusal(dev: usize) -> bool {
    if interval_ns(dev).is_none() || !REFUSAL.get(dev).is_some_and(|t| t.due(now_ns(), REFUSAL_INTERVAL_NS)) {
        return false;
    }
    reconcile(dev).is_some_and(|(old, new)| new < old)
}

/// Measures and charges this process's driver overhead on `dev`; `(old, new)` when it could.
fn reconcile(dev: usize) -> Option<(u64, u64)> {
    let _one = RUNNING.try_lock().ok()?;
    GREW.get(dev)?.store(false, Ordering::Relaxed);
    let st = state();
    let measure = footprint(dev).map(Measure::Footprint).or_else(|| estimate(dev).map(Measure::Estimate))?;
    let new = overhead(measure, st.ledger.charged_by_process(dev));
    let old = st.container().driver_overhead(dev);
    if new != old {
        st.container().set_driver_overhead(dev, new);
        tracing::debug!("device {dev}: driver overhead {} MiB (was {} MiB), from {measure:?}", new >> 20, old >> 20);
    }
    Some((old, new))
}

/// NVML's count for this process on `dev`.
fn footprint(dev: usize) -> Option<u64> {
    static SESSION: OnceLock<Option<driver::NvmlSession>> = OnceLock::new();
    let session = SESSION.get_or_init(|| driver::NvmlSession::open().ok()).as_ref()?;
    let cached = HANDLES.get(dev)?.load(Ordering::Relaxed);
    let handle = if cached != 0 {
        cached as nvmlDevice_t
    } else {
        let uuid = driver::device_uuid(dev).ok()?;
        let h = driver::nvml_device_by_uuid(session, &format_uuid(&uuid)).ok()?;
        HANDLES[dev].store(h as usize, Ordering::Relaxed);
        h
    };
    let pid = std::process::id();
    driver::nvml_process_used(handle, &[pid]).ok().flatten()
}

/// The driver's own figures, where NVML cannot say.
fn estimate(dev: usize) -> Option<Estimate> {
    let graph = driver::graph_mem_reserved(dev).ok();
    let pool = driver::pool_reserved_used(dev).ok();
    if graph.is_none() && pool.is_none() {
        return None;
    }
    let (pool_reserved, pool_used) = pool.unwrap_or((0, 0));
    Some(Estimate { graph_reserved: graph.unwrap_or(0), pool_reserved, pool_used })
}
