//! Container-wide accounting over the region: the reservation protocol of DESIGN §3. Devices
//! are named by their region index throughout.
//!
//! A charge adds to this process's own counter (its slot's `used[dev].total`, SeqCst), *then*
//! sums every slot's counter for the device and compares with the live `limit[dev]`; over the
//! cap, it takes its bytes back and fails. In the single total order of SeqCst operations, of two
//! racing charges the later sum sees both additions, so two processes can both fail but never
//! both pass. After a refusal, dead processes' slots are reaped and the charge retried once
//! (a racing refusal, or a crashed neighbour's stale usage, must not fail an allocation that fits).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;

use vgpu_core::ledger::Kind;

use crate::layout::DeviceUsage;
use crate::map::Region;

pub struct RegionAccounting {
    region: Region,
    slot: usize,
}

impl RegionAccounting {
    /// Accounting through `slot`, which this process has claimed.
    pub fn new(region: Region, slot: usize) -> Self {
        RegionAccounting { region, slot }
    }

    pub fn region(&self) -> &Region {
        &self.region
    }

    pub fn slot(&self) -> usize {
        self.slot
    }

    fn own_usage(&self, dev: usize) -> Option<&DeviceUsage> {
        self.region.shared().procs[self.slot].used.get(dev)
    }

    fn overhead_counter(&self, dev: usize) -> Option<&AtomicU64> {
        self.region.extension().driver_overhead.get(self.slot)?.get(dev)
    }

    fn spill_counter(&self, dev: usize) -> Option<&AtomicU64> {
        self.region.extension().spilled.get(self.slot)?.get(dev)
    }

    /// The spill counterpart of `attempt`: add to our own counter, then check the sum.
    fn attempt_spill(&self, dev: usize, bytes: u64, limit: u64) -> bool {
        let Some(own) = self.spill_counter(dev) else { return false };
        own.fetch_add(bytes, SeqCst);
        if self.region.spilled(dev) <= limit {
            return true;
        }
        sub(own, bytes);
        false
    }

    fn attempt(&self, dev: usize, bytes: u64, limit: Option<u64>) -> bool {
        let Some(own) = self.own_usage(dev) else { return limit.is_none() };
        own.total.fetch_add(bytes, SeqCst);
        if limit.is_none_or(|cap| self.region.used(dev) <= cap) {
            own.data_size.fetch_add(bytes, SeqCst);
            return true;
        }
        sub(&own.total, bytes);
        false
    }
}

fn sub(counter: &AtomicU64, bytes: u64) {
    // Saturating: an accounting bug must never show 2^64 bytes in use.
    let _ = counter.fetch_update(SeqCst, SeqCst, |v| Some(v.saturating_sub(bytes)));
}

/// The operations of [`Accounting`](vgpu_core::ledger::Accounting), by region index: this crate numbers devices only by
/// their place in the region. The library's container implements `Accounting` itself, by CUDA
/// ordinal, and maps each ordinal onto an index here.
impl RegionAccounting {
    pub fn limit(&self, index: usize) -> Option<u64> {
        let cap = self.region.shared().limit.get(index)?.load(SeqCst);
        (cap > 0).then_some(cap)
    }

    pub fn any_limit(&self) -> bool {
        // Relaxed: a cap set a moment ago may be missed by one call either way, as with SeqCst.
        self.region.shared().limit.iter().any(|l| l.load(std::sync::atomic::Ordering::Relaxed) > 0)
    }

    pub fn try_charge(&self, index: usize, bytes: u64, limit: Option<u64>) -> bool {
        if self.attempt(index, bytes, limit) {
            return true;
        }
        self.region.reap(Some(self.slot));
        self.attempt(index, bytes, limit)
    }

    pub fn charge(&self, index: usize, bytes: u64, kind: Kind) {
        if kind == Kind::Spilled {
            if let Some(c) = self.spill_counter(index) {
                c.fetch_add(bytes, SeqCst);
            }
            return;
        }
        let Some(own) = self.own_usage(index) else { return };
        own.total.fetch_add(bytes, SeqCst);
        match kind {
            Kind::Context => own.context_size.fetch_add(bytes, SeqCst),
            _ => own.data_size.fetch_add(bytes, SeqCst),
        };
    }

    pub fn uncharge(&self, index: usize, bytes: u64, kind: Kind) {
        if kind == Kind::Spilled {
            if let Some(c) = self.spill_counter(index) {
                sub(c, bytes);
            }
            return;
        }
        let Some(own) = self.own_usage(index) else { return };
        sub(&own.total, bytes);
        match kind {
            Kind::Context => sub(&own.context_size, bytes),
            _ => sub(&own.data_size, bytes),
        }
    }

    /// As `try_charge`, against the spill limit; dead slots' spill is reaped before a refusal.
    pub fn try_charge_spill(&self, index: usize, bytes: u64, limit: u64) -> bool {
        if self.attempt_spill(index, bytes, limit) {
            return true;
        }
        self.region.reap(Some(self.slot));
        self.attempt_spill(index, bytes, limit)
    }

    pub fn spilled(&self, index: usize) -> u64 {
        self.region.spilled(index)
    }

    pub fn record_spill_denial(&self, index: usize) {
        if let Some(c) = self.region.extension().spill_denials.get(index) {
            c.fetch_add(1, SeqCst);
        }
    }

    pub fn used(&self, index: usize) -> u64 {
        self.region.used(index)
    }

    pub fn own(&self, index: usize) -> u64 {
        self.own_usage(index).map_or(0, |u| u.total.load(SeqCst))
    }

    pub fn driver_overhead(&self, index: usize) -> u64 {
        self.overhead_counter(index).map_or(0, |o| o.load(SeqCst))
    }

    /// The overhead is part of the slot's `total` (what HAMi's monitor and every cap check sum)
    /// and kept apart in the extension; `total` moves by the difference.
    pub fn set_driver_overhead(&self, index: usize, bytes: u64) {
        let (Some(own), Some(o)) = (self.own_usage(index), self.overhead_counter(index)) else { return };
        let old = o.swap(bytes, SeqCst);
        if bytes >= old {
            own.total.fetch_add(bytes - old, SeqCst);
        } else {
            sub(&own.total, old - bytes);
        }
    }

    pub fn record_denial(&self, index: usize) {
        if let Some(c) = self.region.extension().cap_denials.get(index) {
            c.fetch_add(1, SeqCst);
        }
    }

    pub fn record_driver_denial(&self, index: usize) {
        if let Some(c) = self.region.extension().driver_denials.get(index) {
            c.fetch_add(1, SeqCst);
        }
    }
}
