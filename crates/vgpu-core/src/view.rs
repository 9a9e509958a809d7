//! The one memory view every API reports (`cuMemGetInfo`, `cuDeviceTotalMem`, NVML):
//! `total = min(cap, physical)`, `free = min(physical free, total − used)` clamped at zero, and
//! the driver's own numbers, untouched, when there is no cap.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryView {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// `used` is what the ledger says is held against the cap.
pub fn virtual_view(cap: Option<u64>, used: u64, physical_total: u64, physical_free: u64) -> MemoryView {
    match cap {
        None => MemoryView {
            total: physical_total,
            free: physical_free,
            used: physical_total.saturating_sub(physical_free),
        },
        Some(cap) => {
            let total = cap.min(physical_total);
            let used = used.min(total);
            MemoryView { total, free: physical_free.min(total - used), used }
        }
    }
}

/// `cuDeviceTotalMem`: the cap when there is one, never more than the device has, never 0.
pub fn virtual_total(cap: Option<u64>, physical_total: u64) -> u64 {
    cap.map_or(physical_total, |c| c.min(physical_total))
}

#[cfg(test)]
mod tests {
    use super::*;
    const GIB: u64 = 1 << 30;

    #[test]
    fn uncapped_is_the_driver() {
        let v = virtual_view(None, 5 * GIB, 141 * GIB, 100 * GIB);
        assert_eq!(v, MemoryView { total: 141 * GIB, free: 100 * GIB, used: 41 * GIB });
        assert_eq!(virtual_total(None, 141 * GIB), 141 * GIB);
    }

    #[test]
    fn capped_view() {
        let v = virtual_view(Some(4 * GIB), GIB, 141 * GIB, 100 * GIB);
        assert_eq!(v, MemoryView { total: 4 * GIB, free: 3 * GIB, used: GIB });
    }

    #[test]
    fn physical_free_bounds_free() {
        let v = virtual_view(Some(4 * GIB), GIB, 141 * GIB, GIB / 2);
        assert_eq!(v.free, GIB / 2);
    }

    #[test]
    fn over_cap_usage_clamps_free_at_zero_not_2_64() {
        let v = virtual_view(Some(4 * GIB), 6 * GIB, 141 * GIB, 100 * GIB);
        assert_eq!(v, MemoryView { total: 4 * GIB, free: 0, used: 4 * GIB });
    }

    #[test]
    fn cap_above_physical_is_physical() {
        let v = virtual_view(Some(1000 * GIB), GIB, 141 * GIB, 100 * GIB);
        assert_eq!(v.total, 141 * GIB);
        assert_eq!(virtual_total(Some(1000 * GIB), 141 * GIB), 141 * GIB);
    }
}
