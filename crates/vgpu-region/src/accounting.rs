//! Container-wide accounting over the region: the reservation protocol of DESIGN §3.
//!
//! A charge adds to this process's own counter (its slot's `used[dev].total`, SeqCst), *then*
//! sums every slot's counter for the device and compares with the live `limit[dev]`; over the
//! cap, it takes its bytes back and fails. In the single total order of SeqCst operations, of two
//! racing charges the later sum sees both additions, so two processes can both fail but never
//! both pass. After a refusal, dead processes' slots are reaped and the charge retried once
//! (a racing refusal, or a crashed neighbour's stale usage, must not fail an allocation that fits).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;

use vgpu_core::ledger::{Accounting, Kind};

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

impl Accounting for RegionAccounting {
    fn limit(&self, dev: usize) -> Option<u64> {
        let cap = self.region.shared().limit.get(dev)?.load(SeqCst);
        (cap > 0).then_some(cap)
    }

    fn any_limit(&self) -> bool {
        // Relaxed: a cap set a moment ago may be missed by one call either way, as with SeqCst.
        self.region.shared().limit.iter().any(|l| l.load(std::sync::atomic::Ordering::Relaxed) > 0)
    }

    fn try_charge(&self, dev: usize, bytes: u64, limit: Option<u64>) -> bool {
        if self.attempt(dev, bytes, limit) {
            return true;
        }
        self.region.reap(Some(self.slot));
        self.attempt(dev, bytes, limit)
    }

    fn charge(&self, dev: usize, bytes: u64, kind: Kind) {
        if kind == Kind::Spilled {
            if let Some(c) = self.spill_counter(dev) {
                c.fetch_add(bytes, SeqCst);
            }
            return;
        }
        let Some(own) = self.own_usage(dev) else { return };
        own.total.fetch_add(bytes, SeqCst);
        match kind {
            Kind::Context => own.context_size.fetch_add(bytes, SeqCst),
            _ => own.data_size.fetch_add(bytes, SeqCst),
        };
    }

    fn uncharge(&self, dev: usize, bytes: u64, kind: Kind) {
        if kind == Kind::Spilled {
            if let Some(c) = self.spill_counter(dev) {
                sub(c, bytes);
            }
            return;
        }
        let Some(own) = self.own_usage(dev) else { return };
        sub(&own.total, bytes);
        match kind {
            Kind::Context => sub(&own.context_size, bytes),
            _ => sub(&own.data_size, bytes),
        }
    }

    /// As `try_charge`, against the spill limit; dead slots' spill is reaped before a refusal.
    fn try_charge_spill(&self, dev: usize, bytes: u64, limit: u64) -> bool {
        if self.attempt_spill(dev, bytes, limit) {
            return true;
        }
        self.region.reap(Some(self.slot));
        self.attempt_spill(dev, bytes, limit)
    }

    fn spilled(&self, dev: usize) -> u64 {
        self.region.spilled(dev)
    }

    fn record_spill_denial(&self, dev: usize) {
        if let Some(c) = self.region.extension().spill_denials.get(dev) {
            c.fetch_add(1, SeqCst);
        }
    }

    fn used(&self, dev: usize) -> u64 {
        self.region.used(dev)
    }

    fn own(&self, dev: usize) -> u64 {
        self.own_usage(dev).map_or(0, |u| u.total.load(SeqCst))
    }

    fn driver_overhead(&self, dev: usize) -> u64 {
        self.overhead_counter(dev).map_or(0, |o| o.load(SeqCst))
    }

    /// The overhead is part of the slot's `total` (what HAMi's monitor and every cap check sum)
    /// and kept apart in the extension; `total` moves by the difference.
    fn set_driver_overhead(&self, dev: usize, bytes: u64) {
        let (Some(own), Some(o)) = (self.own_usage(dev), self.overhead_counter(dev)) else { return };
        let old = o.swap(bytes, SeqCst);
        if bytes >= old {
            own.total.fetch_add(bytes - old, SeqCst);
        } else {
            sub(&own.total, old - bytes);
        }
    }

    fn record_denial(&self, dev: usize) {
        if let Some(c) = self.region.extension().cap_denials.get(dev) {
            c.fetch_add(1, SeqCst);
        }
    }

    fn record_driver_denial(&self, dev: usize) {
        if let Some(c) = self.region.extension().driver_denials.get(dev) {
            c.fetch_add(1, SeqCst);
        }
    }
}
