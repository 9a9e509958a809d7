//! The memory ledger: who holds how much device memory, and the reservation protocol that keeps
//! the total under the cap.
//!
//! Protocol: a hook *reserves* the bytes before calling the driver, so two threads (or, with the
//! shared region, two processes) racing for the last bytes can both fail but never both pass.
//! A reservation that is not committed (driver failure, early return, panic) rolls itself back
//! on drop. Committed allocations are keyed by what the matching free will name (pointer, VMM
//! handle, array handle, context) so the free releases exactly what was charged.
//!
//! The counters live behind [`Accounting`]: in the library, the container-wide shared region
//! (a process that cannot join one gets a private region of its own); in the tests, plain
//! counters. The ledger keeps the records that say what each free gives back.

mod accounting;
mod records;
mod reservation;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};

pub use accounting::{Accounting, Kind};
use records::Records;
pub use reservation::Reservation;

/// What a free will name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    DevicePtr(u64),
    VmmHandle(u64),
    Array(u64),
    MipmappedArray(u64),
    Context(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub dev: usize,
    pub bytes: u64,
    pub kind: Kind,
    /// The context that owns it (0 = not context-bound); destroying the context frees it.
    pub context: u64,
}

/// The cap (or, for a spill, the spill limit) said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub dev: usize,
    pub requested: u64,
    pub used: u64,
    pub limit: u64,
    /// The spill limit said no (`used` and `limit` are the spill's), not the cap.
    pub spill: bool,
}

/// Live allocations and what they charge: the [`Accounting`] that counts, and the records that
/// say what each free gives back.
pub struct MemoryLedger<A: Accounting> {
    accounting: A,
    records: Records,
    /// The accounting's epoch the records belong to (see [`Accounting::epoch`]).
    epoch: AtomicU64,
}

impl<A: Accounting> MemoryLedger<A> {
    pub fn new(accounting: A) -> Self {
        let epoch = AtomicU64::new(accounting.epoch());
        MemoryLedger { accounting, records: Records::new(), epoch }
    }

    /// Forgets every record (without uncharging: the charges were the parent's) when the
    /// accounting's epoch moved on: one relaxed load and compare on each operation.
    #[inline]
    fn check_epoch(&self) {
        let now = self.accounting.epoch();
        if self.epoch.load(Ordering::Relaxed) != now {
            self.forget_all(now);
        }
    }

    #[cold]
    fn forget_all(&self, now: u64) {
        self.records.forget_all_if(|| self.epoch.swap(now, Ordering::AcqRel) != now);
    }

    pub fn accounting(&self) -> &A {
        &self.accounting
    }

    pub fn limit(&self, dev: usize) -> Option<u64> {
        self.accounting.limit(dev)
    }

    pub fn used(&self, dev: usize) -> u64 {
        self.accounting.used(dev)
    }

    /// Whether any device has a cap, read live.
    #[inline]
    pub fn any_limit(&self) -> bool {
        self.accounting.any_limit()
    }

    /// Takes `bytes` on `dev` out of the cap, or says why not.
    pub fn reserve(&self, dev: usize, bytes: u64) -> Result<Reservation<'_, A>, Denied> {
        self.reserve_or_reconsider(dev, bytes, || false)
    }

    /// As [`reserve`](Self::reserve); when the cap says no, `reconsider` may correct the
    /// counters (a reconciliation that finds the driver overhead smaller than charged) and say
    /// whether to try once more. Only then is the refusal final and counted.
    pub fn reserve_or_reconsider(
        &self,
        dev: usize,
        bytes: u64,
        reconsider: impl FnOnce() -> bool,
    ) -> Result<Reservation<'_, A>, Denied> {
        self.reserve_or_spill(dev, bytes, reconsider, |_| None)
    }

    /// As [`reserve_or_reconsider`](Self::reserve_or_reconsider); when the cap's refusal is
    /// final, `spill_limit` (given the cap) may name a spill limit, and the bytes are then
    /// reserved against it ([`reserve_spill`](Self::reserve_spill)): the reservation says
    /// [`spilled`](Reservation::spilled), and the cap's refusal is not counted as one. Both
    /// closures run only on a refusal: the path of an allocation that fits is `reserve`'s.
    pub fn reserve_or_spill(
        &self,
        dev: usize,
        bytes: u64,
        reconsider: impl FnOnce() -> bool,
        spill_limit: impl FnOnce(Option<u64>) -> Option<u64>,
    ) -> Result<Reservation<'_, A>, Denied> {
        self.reserve_or_spill_keeping(dev, bytes, false, reconsider, spill_limit)
    }

    /// As [`reserve_or_spill`](Self::reserve_or_spill); with `oversubscribing`, the spill limit
    /// is asked first and, where the container may spill, data is kept [`spill_headroom`] below
    /// the cap: the driver takes memory outside the allocation calls (library workspaces, module
    /// code: 80 MiB during a transformers `generate()` on the H200), and once the cap is full of
    /// data that growth would take the device past it. Allocations beyond go to host memory.
    pub fn reserve_or_spill_keeping(
        &self,
        dev: usize,
        bytes: u64,
        oversubscribing: bool,
        reconsider: impl FnOnce() -> bool,
        spill_limit: impl FnOnce(Option<u64>) -> Option<u64>,
    ) -> Result<Reservation<'_, A>, Denied> {
        self.check_epoch();
        let limit = self.accounting.limit(dev);
        let mut spill_limit = Some(spill_limit);
        let asked = if oversubscribing { spill_limit.take().map(|f| f(limit)) } else { None };
        let keep = |l: Option<u64>| match asked {
            Some(Some(_)) => l.map(|c| c.saturating_sub(spill_headroom(c))),
            _ => l,
        };
        if self.accounting.try_charge(dev, bytes, keep(limit))
            || (reconsider() && self.accounting.try_charge(dev, bytes, keep(self.accounting.limit(dev))))
        {
            return Ok(Reservation::new(self, dev, bytes, Kind::Data));
        }
        let spill = match (asked, spill_limit) {
            (Some(asked), _) => asked,
            (None, Some(f)) => f(limit),
            (None, None) => None,
        };
        if let Some(spill) = spill {
            return self.reserve_spill(dev, bytes, spill);
        }
        self.accounting.record_denial(dev);
        Err(Denied { dev, requested: bytes, used: self.accounting.used(dev), limit: limit.unwrap_or(0), spill: false })
    }

    /// Takes `bytes` on `dev` out of the spill limit (host memory past the cap), or says why
    /// not (`used` and `limit` then name the spill, not the cap). Committed, the allocation is
    /// recorded as [`Kind::Spilled`], so its free gives the bytes back to the spill counter.
    pub fn reserve_spill(&self, dev: usize, bytes: u64, limit: u64) -> Result<Reservation<'_, A>, Denied> {
        if self.accounting.try_charge_spill(dev, bytes, limit) {
            Ok(Reservation::new(self, dev, bytes, Kind::Spilled))
        } else {
            self.accounting.record_spill_denial(dev);
            Err(Denied { dev, requested: bytes, used: self.accounting.spilled(dev), limit, spill: true })
        }
    }

    /// Bytes the container has spilled past the cap on `dev`.
    pub fn spilled(&self, dev: usize) -> u64 {
        self.accounting.spilled(dev)
    }

    /// Records memory that exists already and cannot be refused (a context's own cost).
    pub fn record(&self, key: Key, alloc: Allocation) {
        self.check_epoch();
        self.accounting.charge(alloc.dev, alloc.bytes, alloc.kind);
        self.insert(key, alloc);
    }

    /// Releases what `key` holds; `None` if we never charged it (a free of foreign memory).
    pub fn release(&self, key: Key) -> Option<Allocation> {
        let alloc = self.take(key)?;
        self.uncharge(&alloc);
        Some(alloc)
    }

    /// Takes `key`'s record out, still charged: a free takes it before the driver call, since
    /// once the driver has freed, another thread may be handed the same pointer and record it.
    /// Then [`uncharge`](Self::uncharge) it, or [`restore`](Self::restore) it if the free failed.
    pub fn take(&self, key: Key) -> Option<Allocation> {
        self.check_epoch();
        self.records.take(key)
    }

    /// Gives a taken record's bytes back to the cap.
    pub fn uncharge(&self, alloc: &Allocation) {
        self.accounting.uncharge(alloc.dev, alloc.bytes, alloc.kind);
    }

    /// Puts a taken record back (the driver did not free it).
    pub fn restore(&self, key: Key, alloc: Allocation) {
        self.insert(key, alloc);
    }

    /// Releases everything a destroyed context owned; returns the bytes released.
    pub fn release_context(&self, context: u64) -> u64 {
        self.check_epoch();
        let freed = self.records.take_context(context);
        freed
            .iter()
            .map(|a| {
                self.accounting.uncharge(a.dev, a.bytes, a.kind);
                a.bytes
            })
            .sum()
    }

    /// What the ledger charges this process on `dev` for what passed through our hooks
    /// (allocations and contexts, in flight included), driver overhead excluded.
    pub fn charged_by_process(&self, dev: usize) -> u64 {
        self.accounting.own(dev).saturating_sub(self.accounting.driver_overhead(dev))
    }

    fn insert(&self, key: Key, alloc: Allocation) {
        // The driver handed out a key we still hold: the old memory was freed behind our back
        // (e.g. with its context), so drop the stale charge instead of leaking it forever.
        if let Some(stale) = self.records.insert(key, alloc) {
            self.uncharge(&stale);
        }
    }

    /// Bytes this process holds on `dev` of `kind`, by our own records (to charge them again in
    /// a new region).
    pub fn held_by_process_of(&self, dev: usize, kind: Kind) -> u64 {
        self.check_epoch();
        self.records.bytes_of(dev, kind)
    }
}

/// Room kept free under a cap while the container spills: a sixteenth of the cap, at least
/// 64 MiB and at most 256 MiB (4 GiB cap: 256 MiB).
pub fn spill_headroom(cap: u64) -> u64 {
    (cap / 16).clamp(64 << 20, 256 << 20).min(cap)
}
