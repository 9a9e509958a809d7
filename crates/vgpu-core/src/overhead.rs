//! Driver overhead: device memory the driver spends for a process outside the allocation entry
//! points we hook (module code loaded lazily, graph-exec state and graph memory nodes, what a
//! stream-ordered pool keeps cached after `cuMemFreeAsync`, library workspaces, a context's
//! growth). The ledger cannot see it being taken, so it is found afterwards, on slow paths, by
//! reconciling the ledger with the driver's own per-process count, and charged to the process's
//! slot apart from its allocations: the cap then bounds the true footprint and the view's free
//! is the cap minus that footprint.
//!
//! Policy only (no FFI): what the overhead is from what was measured, and when to measure.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a reconciliation could learn about one process on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// The driver's per-process count (NVML's `usedGpuMemory` for this process): the true
    /// footprint, everything included.
    Footprint(u64),
    /// No per-process count (NVML absent, or the process not found in its list, e.g. under a PID
    /// namespace): the overhead estimated from what the driver says of the operations that cause
    /// it, each a figure the ledger does not hold.
    Estimate(Estimate),
}

/// The driver's own figures for memory that passes through no hooked allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Estimate {
    /// Memory reserved for graph memory nodes on the device (`CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT`).
    pub graph_reserved: u64,
    /// The device's current pool: bytes it holds from the device (`RESERVED_MEM_CURRENT`) …
    pub pool_reserved: u64,
    /// … and bytes handed out of it (`USED_MEM_CURRENT`), which the ledger already charges.
    pub pool_used: u64,
}

/// The process's driver overhead on a device, from `charged` (what the ledger holds for the
/// process there, overhead excluded) and what was measured. Never negative: where the driver
/// counts less than we charged (managed memory not yet resident, a context measured high), the
/// ledger's conservative figure stands.
///
/// Imported and peer memory (`cuIpcOpenMemHandle`, `cuMemImportFromShareableHandle` + `cuMemMap`,
/// peer access) is charged to its exporter and never to us, and the driver's per-process count
/// attributes it the same way (to the process that allocated the physical memory), so it is in
/// neither `footprint` nor `charged` here and cannot be counted twice.
pub fn overhead(measure: Measure, charged: u64) -> u64 {
    match measure {
        Measure::Footprint(f) => f.saturating_sub(charged),
        Measure::Estimate(e) => e.graph_reserved.saturating_add(e.pool_reserved.saturating_sub(e.pool_used)),
    }
}

/// At most one reconciliation per `interval` (per device): the driver's count is an NVML call
/// (~tens of µs, more under load) and hot paths must not pay it. `due` is one relaxed load and a
/// compare on the common path; the thread that wins the compare-exchange measures.
pub struct Throttle {
    /// Monotonic ns before which nothing is due (0: due now).
    next: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Self {
        Throttle { next: AtomicU64::new(0) }
    }

    /// Whether the caller should reconcile now; if so, the next one is due `interval` later.
    #[inline]
    pub fn due(&self, now: u64, interval: u64) -> bool {
        let next = self.next.load(Ordering::Relaxed);
        if now < next {
            return false;
        }
        self.next.compare_exchange(next, now.saturating_add(interval), Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn footprint_above_the_ledger_is_overhead() {
        // As measured on an H200: NVML 18 792 MiB against 18 608 MiB in the ledger.
        assert_eq!(overhead(Measure::Footprint(18_792 * MIB), 18_608 * MIB), 184 * MIB);
        // Below: the ledger's figure stands; no negative overhead.
        assert_eq!(overhead(Measure::Footprint(500 * MIB), 520 * MIB), 0);
    }

    #[test]
    fn estimate_counts_graph_memory_and_pool_cache() {
        let e = Estimate { graph_reserved: 64 * MIB, pool_reserved: 300 * MIB, pool_used: 100 * MIB };
        assert_eq!(overhead(Measure::Estimate(e), 12345), 264 * MIB);
        let odd = Estimate { graph_reserved: 0, pool_reserved: 1, pool_used: 5 };
        assert_eq!(overhead(Measure::Estimate(odd), 0), 0);
    }

    #[test]
    fn throttle_lets_one_through_per_interval() {
        let t = Throttle::new();
        assert!(t.due(1_000, 100));
        assert!(!t.due(1_050, 100));
        assert!(t.due(1_100, 100));
        assert!(!t.due(1_101, 100));
        let z = Throttle::new();
        assert!(z.due(7, 0) && z.due(7, 0), "interval 0: every call");
    }
}
