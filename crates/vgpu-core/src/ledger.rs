//! The memory ledger: who holds how much device memory, and the reservation protocol that keeps
//! the total under the cap.
//!
//! Protocol: a hook *reserves* the bytes before calling the driver, so two threads (or, with the
//! shared region, two processes) racing for the last bytes can both fail but never both pass.
//! A reservation that is not committed (driver failure, early return, panic) rolls itself back
//! on drop. Committed allocations are keyed by what the matching free will name (pointer, VMM
//! handle, array handle, context) so the free releases exactly what was charged.
//!
//! The counters live behind [`Accounting`] so the per-process store used here and the
//! container-wide shared region are interchangeable.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::MAX_DEVICES;
use crate::ptr_table::PtrTable;

/// What a charge is for (HAMi's region keeps context and data sizes apart; both count against
/// the cap). `Spilled` is host memory handed out past the cap (`CUDA_OVERSUBSCRIBE`): it is
/// charged to the spill counter, never to the device's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Data,
    Context,
    Spilled,
}

/// Where usage is counted and limits are read.
pub trait Accounting: Send + Sync {
    /// The cap for `dev`, read live (`None` = uncapped).
    fn limit(&self, dev: usize) -> Option<u64>;
    /// Adds `bytes` of data to `dev` if the total then stays within `limit`; all or nothing.
    fn try_charge(&self, dev: usize, bytes: u64, limit: Option<u64>) -> bool;
    /// Adds `bytes` unconditionally (memory the driver already handed out, e.g. a context).
    fn charge(&self, dev: usize, bytes: u64, kind: Kind);
    fn uncharge(&self, dev: usize, bytes: u64, kind: Kind);
    /// Bytes in use on `dev` by everyone this store accounts for.
    fn used(&self, dev: usize) -> u64;
    /// The cap refused an allocation (counted for operators; nothing to do per process).
    fn record_denial(&self, _dev: usize) {}
    /// The driver itself was out of memory while the cap had room (counted for operators).
    fn record_driver_denial(&self, _dev: usize) {}
    /// Whether any device has a cap (the hot paths' "uncapped: pass through" test).
    fn any_limit(&self) -> bool {
        (0..MAX_DEVICES).any(|d| self.limit(d).is_some())
    }
    /// What this process alone holds on `dev`, driver overhead included.
    fn own(&self, dev: usize) -> u64 {
        self.used(dev)
    }
    /// Of [`own`](Self::own), the driver overhead (see `overhead`).
    fn driver_overhead(&self, _dev: usize) -> u64 {
        0
    }
    /// Sets this process's driver overhead on `dev`, charging or releasing the difference
    /// unconditionally: the driver has spent (or given back) that memory already.
    fn set_driver_overhead(&self, _dev: usize, _bytes: u64) {}
    /// Adds `bytes` to the spill counter of `dev` if the container's spill then stays within
    /// `limit`; all or nothing, racing processes as for [`try_charge`](Self::try_charge).
    /// `charge`/`uncharge` with [`Kind::Spilled`] move the same counter unconditionally.
    fn try_charge_spill(&self, _dev: usize, _bytes: u64, _limit: u64) -> bool {
        false
    }
    /// Bytes the container has spilled past the cap on `dev`.
    fn spilled(&self, _dev: usize) -> u64 {
        0
    }
    /// The spill limit refused an allocation (counted for operators).
    fn record_spill_denial(&self, _dev: usize) {}
    /// Changes when this process is no longer the one the records were made in (a forked
    /// child): the ledger then forgets every record, since the parent's memory is not the
    /// child's to free or to count.
    fn epoch(&self) -> u64 {
        0
    }
}

/// A tiny multiply-fold hasher for the ledger's keys (pointers and handles): SipHash's DoS
/// resistance buys nothing for driver-issued addresses and costs ~100 instructions per lookup.
/// The 64×64→128 multiply folds high bits into low ones, so aligned pointers (low bits zero)
/// still spread over the table's buckets.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const FX_K: u64 = 0xf135_7aea_2e62_a9c5;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        let p = u128::from(self.hash ^ word) * u128::from(FX_K);
        self.hash = (p as u64) ^ ((p >> 64) as u64);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn write_isize(&mut self, i: isize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

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

/// Live allocations: device pointers (the hot path) in a lock-free table, made on the first
/// one; handles, contexts and the pointers the table has no room for in a map under a mutex.
pub struct MemoryLedger<A: Accounting> {
    accounting: A,
    pointers: OnceLock<PtrTable>,
    live: Mutex<FastMap<Key, Allocation>>,
    /// Device pointers kept in `live` (their table window was full): while 0, a pointer's free
    /// never takes the mutex.
    pointers_in_map: AtomicUsize,
    /// The accounting's epoch the records belong to (see [`Accounting::epoch`]).
    epoch: AtomicU64,
}

impl<A: Accounting> MemoryLedger<A> {
    pub fn new(accounting: A) -> Self {
        let epoch = AtomicU64::new(accounting.epoch());
        MemoryLedger {
            accounting,
            pointers: OnceLock::new(),
            live: Mutex::new(FastMap::default()),
            pointers_in_map: AtomicUsize::new(0),
            epoch,
        }
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
        let mut live = self.lock();
        if self.epoch.swap(now, Ordering::AcqRel) == now {
            return;
        }
        if let Some(t) = self.pointers.get() {
            t.remove_where(|_| true);
        }
        live.clear();
        self.pointers_in_map.store(0, Ordering::Release);
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
            return Ok(Reservation { ledger: self, dev, bytes, kind: Kind::Data, settled: false });
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
            Ok(Reservation { ledger: self, dev, bytes, kind: Kind::Spilled, settled: false })
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
        if let Key::DevicePtr(p) = key {
            if let Some(a) = self.pointers.get().and_then(|t| t.remove(p)) {
                return Some(a);
            }
            if self.pointers_in_map.load(Ordering::Acquire) == 0 {
                return None;
            }
            return self.take_from_map(key);
        }
        self.lock().remove(&key)
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
        let mut freed = self.pointers.get().map(|t| t.remove_where(|a| a.context == context)).unwrap_or_default();
        {
            let mut live = self.lock();
            let keys: Vec<Key> = live.iter().filter(|(_, a)| a.context == context).map(|(k, _)| *k).collect();
            for k in keys {
                if let Some(a) = live.remove(&k) {
                    if matches!(k, Key::DevicePtr(_)) {
                        self.pointers_in_map.fetch_sub(1, Ordering::AcqRel);
                    }
                    freed.push(a);
                }
            }
        }
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
        let stale = match key {
            Key::DevicePtr(p) => match self.pointers.get_or_init(PtrTable::new).insert(p, alloc) {
                Ok(stale) => {
                    let in_map =
                        (self.pointers_in_map.load(Ordering::Acquire) > 0).then(|| self.take_from_map(key)).flatten();
                    stale.or(in_map)
                }
                Err(_) => {
                    let stale = self.lock().insert(key, alloc);
                    if stale.is_none() {
                        self.pointers_in_map.fetch_add(1, Ordering::AcqRel);
                    }
                    stale
                }
            },
            _ => self.lock().insert(key, alloc),
        };
        if let Some(stale) = stale {
            self.uncharge(&stale);
        }
    }

    fn take_from_map(&self, key: Key) -> Option<Allocation> {
        let a = self.lock().remove(&key)?;
        self.pointers_in_map.fetch_sub(1, Ordering::AcqRel);
        Some(a)
    }

    /// Bytes this process holds on `dev` of `kind`, by our own records (to charge them again in
    /// a new region).
    pub fn held_by_process_of(&self, dev: usize, kind: Kind) -> u64 {
        self.check_epoch();
        let mut held = 0;
        if let Some(t) = self.pointers.get() {
            t.for_each(|a| held += if a.dev == dev && a.kind == kind { a.bytes } else { 0 });
        }
        held + self.lock().values().filter(|a| a.dev == dev && a.kind == kind).map(|a| a.bytes).sum::<u64>()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FastMap<Key, Allocation>> {
        // A panic elsewhere while holding the map leaves it consistent (single inserts/removes).
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Bytes taken out of the cap for an allocation in flight.
#[must_use]
pub struct Reservation<'a, A: Accounting> {
    ledger: &'a MemoryLedger<A>,
    dev: usize,
    bytes: u64,
    /// `Data` out of the cap, or `Spilled` out of the spill limit.
    kind: Kind,
    settled: bool,
}

impl<A: Accounting> Reservation<'_, A> {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether this reserves host memory past the cap rather than room under it.
    pub fn spilled(&self) -> bool {
        self.kind == Kind::Spilled
    }

    /// The driver's answer to the allocation this reserved: counts an out-of-memory refusal
    /// (the reservation itself is rolled back when dropped).
    pub fn driver_answered(&self, out_of_memory: bool) {
        if out_of_memory {
            self.ledger.accounting.record_driver_denial(self.dev);
        }
    }

    /// Changes the reserved amount to what the driver really allocated (pitch, array layout).
    /// Growing is checked against the cap like a new reservation.
    pub fn resize(&mut self, bytes: u64) -> Result<(), Denied> {
        debug_assert_eq!(self.kind, Kind::Data, "only device reservations are resized");
        let acc = &self.ledger.accounting;
        if bytes > self.bytes {
            let extra = bytes - self.bytes;
            let limit = acc.limit(self.dev);
            if !acc.try_charge(self.dev, extra, limit) {
                acc.record_denial(self.dev);
                return Err(Denied {
                    dev: self.dev,
                    requested: bytes,
                    used: acc.used(self.dev),
                    limit: limit.unwrap_or(0),
                    spill: false,
                });
            }
        } else {
            acc.uncharge(self.dev, self.bytes - bytes, Kind::Data);
        }
        self.bytes = bytes;
        Ok(())
    }

    /// The driver allocated: keep the charge until `key` is freed.
    pub fn commit(self, key: Key, context: u64) {
        let kind = self.kind;
        self.commit_as(key, context, kind)
    }

    /// As `commit`, for memory of another kind (a context's own cost).
    pub fn commit_as(mut self, key: Key, context: u64, kind: Kind) {
        if kind != self.kind {
            let acc = &self.ledger.accounting;
            acc.uncharge(self.dev, self.bytes, self.kind);
            acc.charge(self.dev, self.bytes, kind);
        }
        self.settled = true;
        self.ledger.insert(key, Allocation { dev: self.dev, bytes: self.bytes, kind, context });
    }
}

impl<A: Accounting> Drop for Reservation<'_, A> {
    fn drop(&mut self) {
        if !self.settled {
            self.ledger.accounting.uncharge(self.dev, self.bytes, self.kind);
        }
    }
}

/// Room kept free under a cap while the container spills: a sixteenth of the cap, at least
/// 64 MiB and at most 256 MiB (4 GiB cap: 256 MiB).
pub fn spill_headroom(cap: u64) -> u64 {
    (cap / 16).clamp(64 << 20, 256 << 20).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MIB: u64 = 1 << 20;

    /// Counts data and context bytes apart, as the region does.
    #[derive(Default)]
    struct ByKind {
        data: AtomicU64,
        context: AtomicU64,
    }

    impl Accounting for ByKind {
        fn limit(&self, _dev: usize) -> Option<u64> {
            None
        }
        fn try_charge(&self, dev: usize, bytes: u64, _limit: Option<u64>) -> bool {
            self.charge(dev, bytes, Kind::Data);
            true
        }
        fn charge(&self, _dev: usize, bytes: u64, kind: Kind) {
            let c = if kind == Kind::Context { &self.context } else { &self.data };
            c.fetch_add(bytes, Ordering::SeqCst);
        }
        fn uncharge(&self, _dev: usize, bytes: u64, kind: Kind) {
            let c = if kind == Kind::Context { &self.context } else { &self.data };
            c.fetch_sub(bytes, Ordering::SeqCst);
        }
        fn used(&self, _dev: usize) -> u64 {
            self.data.load(Ordering::SeqCst) + self.context.load(Ordering::SeqCst)
        }
    }

    /// A context's cost is released as context memory, not taken out of the data count.
    #[test]
    fn a_context_is_released_as_a_context() {
        let l = MemoryLedger::new(ByKind::default());
        l.reserve(0, 300 * MIB).unwrap().commit_as(Key::Context(7), 0, Kind::Context);
        l.reserve(0, 64 * MIB).unwrap().commit(Key::DevicePtr(0x1000), 7);
        let counts = |l: &MemoryLedger<ByKind>| {
            (l.accounting().data.load(Ordering::SeqCst), l.accounting().context.load(Ordering::SeqCst))
        };
        assert_eq!(counts(&l), (64 * MIB, 300 * MIB));
        assert_eq!(l.release(Key::Context(7)).map(|a| a.kind), Some(Kind::Context));
        assert_eq!(counts(&l), (64 * MIB, 0));
        assert_eq!(l.release_context(7), 64 * MIB);
        assert_eq!(counts(&l), (0, 0));
    }

    /// Per-process counters with a cap on device 0 only, all-or-nothing as the region's are.
    struct Counters {
        cap: u64,
        used: [AtomicU64; MAX_DEVICES],
        spilled: [AtomicU64; MAX_DEVICES],
    }

    impl Counters {
        fn new(cap: u64) -> Self {
            Counters { cap, used: Default::default(), spilled: Default::default() }
        }

        fn counter(&self, dev: usize, kind: Kind) -> Option<&AtomicU64> {
            if kind == Kind::Spilled { self.spilled.get(dev) } else { self.used.get(dev) }
        }
    }

    /// Adds `bytes` to `counter` if the sum stays within `limit`; all or nothing, never wrapping.
    fn add_within(counter: &AtomicU64, bytes: u64, limit: Option<u64>) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                let next = used.checked_add(bytes)?;
                limit.is_none_or(|cap| next <= cap).then_some(next)
            })
            .is_ok()
    }

    impl Accounting for Counters {
        fn limit(&self, dev: usize) -> Option<u64> {
            (dev == 0).then_some(self.cap)
        }
        fn try_charge(&self, dev: usize, bytes: u64, limit: Option<u64>) -> bool {
            self.used.get(dev).map_or(limit.is_none(), |c| add_within(c, bytes, limit))
        }
        fn try_charge_spill(&self, dev: usize, bytes: u64, limit: u64) -> bool {
            self.spilled.get(dev).is_some_and(|c| add_within(c, bytes, Some(limit)))
        }
        fn spilled(&self, dev: usize) -> u64 {
            self.spilled.get(dev).map_or(0, |c| c.load(Ordering::SeqCst))
        }
        fn charge(&self, dev: usize, bytes: u64, kind: Kind) {
            if let Some(c) = self.counter(dev, kind) {
                c.fetch_add(bytes, Ordering::SeqCst);
            }
        }
        fn uncharge(&self, dev: usize, bytes: u64, kind: Kind) {
            if let Some(c) = self.counter(dev, kind) {
                c.fetch_sub(bytes, Ordering::SeqCst);
            }
        }
        fn used(&self, dev: usize) -> u64 {
            self.used.get(dev).map_or(0, |c| c.load(Ordering::SeqCst))
        }
    }

    fn ledger(cap: u64) -> MemoryLedger<Counters> {
        MemoryLedger::new(Counters::new(cap))
    }

    #[test]
    fn reserve_commit_release() {
        let l = ledger(100 * MIB);
        l.reserve(0, 60 * MIB).unwrap().commit(Key::DevicePtr(1), 0);
        assert_eq!(l.used(0), 60 * MIB);
        let denied = l.reserve(0, 41 * MIB).err().unwrap();
        assert_eq!(denied, Denied { dev: 0, requested: 41 * MIB, used: 60 * MIB, limit: 100 * MIB, spill: false });
        l.reserve(0, 40 * MIB).unwrap().commit(Key::DevicePtr(2), 0);
        assert_eq!(l.used(0), 100 * MIB);
        assert_eq!(l.release(Key::DevicePtr(1)).unwrap().bytes, 60 * MIB);
        assert_eq!(l.release(Key::DevicePtr(1)), None);
        assert_eq!(l.used(0), 40 * MIB);
    }

    /// A refusal may be reconsidered once (a reconciliation lowered the driver overhead).
    #[test]
    fn a_refusal_is_reconsidered_once() {
        let l = ledger(100 * MIB);
        l.reserve(0, 90 * MIB).unwrap().commit(Key::DevicePtr(1), 0);
        let mut asked = 0;
        assert!(
            l.reserve_or_reconsider(0, 20 * MIB, || {
                asked += 1;
                false
            })
            .is_err()
        );
        assert_eq!(asked, 1);
        let r = l.reserve_or_reconsider(0, 20 * MIB, || {
            l.release(Key::DevicePtr(1));
            true
        });
        assert_eq!(r.as_ref().map(|r| r.bytes()).ok(), Some(20 * MIB));
        assert_eq!(l.charged_by_process(0), 20 * MIB);
        drop(r);
        assert_eq!(l.charged_by_process(0), 0);
    }

    /// A spill is charged to the spill counter, bounded by the spill limit, and its free gives
    /// it back there; the device's count never moves.
    #[test]
    fn a_spill_is_charged_apart_and_returned_by_its_free() {
        let l = ledger(100 * MIB);
        l.reserve(0, 100 * MIB).unwrap().commit(Key::DevicePtr(1), 0);
        assert!(l.reserve(0, 64 * MIB).is_err());
        let r = l.reserve_spill(0, 64 * MIB, 128 * MIB).unwrap();
        assert!(r.spilled());
        r.commit(Key::DevicePtr(2), 5);
        l.reserve_spill(0, 64 * MIB, 128 * MIB).unwrap().commit(Key::DevicePtr(3), 5);
        assert_eq!((l.used(0), l.spilled(0)), (100 * MIB, 128 * MIB));
        let past = l.reserve_spill(0, MIB, 128 * MIB).err().unwrap();
        assert_eq!(past, Denied { dev: 0, requested: MIB, used: 128 * MIB, limit: 128 * MIB, spill: true });
        assert_eq!(l.held_by_process_of(0, Kind::Data), 100 * MIB, "spilled bytes are not device bytes");
        assert_eq!(l.release(Key::DevicePtr(2)).map(|a| a.kind), Some(Kind::Spilled));
        assert_eq!((l.used(0), l.spilled(0)), (100 * MIB, 64 * MIB));
        {
            let _rolled_back = l.reserve_spill(0, 64 * MIB, 128 * MIB).unwrap();
            assert_eq!(l.spilled(0), 128 * MIB);
        }
        assert_eq!(l.spilled(0), 64 * MIB, "an uncommitted spill rolls back");
        assert_eq!(l.release_context(5), 64 * MIB);
        assert_eq!((l.used(0), l.spilled(0)), (100 * MIB, 0));
    }

    /// With a spill limit, a cap refusal becomes a spill (not counted as a cap denial); without
    /// one, or past it, the refusal is final. The spill limit is only asked on a refusal.
    #[test]
    fn while_oversubscribing_data_keeps_headroom_under_the_cap() {
        assert_eq!(spill_headroom(4 << 30), 256 * MIB);
        assert_eq!(spill_headroom(1 << 30), 64 * MIB);
        assert_eq!(spill_headroom(32 * MIB), 32 * MIB, "never more than the cap");
        const GIB: u64 = 1 << 30;
        let l = ledger(GIB);
        let r = l.reserve_or_spill_keeping(0, 900 * MIB, true, || false, |_| Some(GIB)).unwrap();
        assert!(!r.spilled(), "900 MiB fits under 1 GiB less 64 MiB");
        r.commit(Key::DevicePtr(1), 0);
        let r = l.reserve_or_spill_keeping(0, 64 * MIB, true, || false, |_| Some(GIB)).unwrap();
        assert!(r.spilled(), "the last 124 MiB under the cap are kept for the driver");
        r.commit(Key::DevicePtr(2), 0);
        let r = l.reserve_or_spill_keeping(0, 64 * MIB, true, || false, |_| None).unwrap();
        assert!(!r.spilled(), "where the container may not spill, the whole cap is data's");
    }

    #[test]
    fn reserve_or_spill_spills_only_what_the_cap_refuses() {
        let l = ledger(100 * MIB);
        let mut asked = 0;
        let r = l.reserve_or_spill(
            0,
            60 * MIB,
            || false,
            |_| {
                asked += 1;
                Some(MIB)
            },
        );
        assert!(!r.as_ref().unwrap().spilled());
        assert_eq!(asked, 0, "fits under the cap: the spill limit is not read");
        r.unwrap().commit(Key::DevicePtr(1), 0);
        let r = l.reserve_or_spill(
            0,
            60 * MIB,
            || false,
            |cap| {
                assert_eq!(cap, Some(100 * MIB));
                Some(64 * MIB)
            },
        );
        assert!(r.as_ref().unwrap().spilled());
        r.unwrap().commit(Key::DevicePtr(2), 0);
        assert_eq!((l.used(0), l.spilled(0)), (60 * MIB, 60 * MIB));
        let past = l.reserve_or_spill(0, 60 * MIB, || false, |_| Some(64 * MIB)).err().unwrap();
        assert!(past.spill && past.limit == 64 * MIB);
        let capped = l.reserve_or_spill(0, 60 * MIB, || false, |_| None).err().unwrap();
        assert!(!capped.spill && capped.limit == 100 * MIB);
    }

    #[test]
    fn dropped_reservation_rolls_back() {
        let l = ledger(100 * MIB);
        {
            let _r = l.reserve(0, 70 * MIB).unwrap();
            assert_eq!(l.used(0), 70 * MIB);
        }
        assert_eq!(l.used(0), 0);
    }

    #[test]
    fn resize_checks_growth_against_the_cap() {
        let l = ledger(100 * MIB);
        let mut r = l.reserve(0, 50 * MIB).unwrap();
        r.resize(90 * MIB).unwrap();
        assert_eq!(l.used(0), 90 * MIB);
        assert!(r.resize(101 * MIB).is_err());
        assert_eq!(l.used(0), 90 * MIB);
        r.resize(10 * MIB).unwrap();
        r.commit(Key::Array(7), 0);
        assert_eq!(l.used(0), 10 * MIB);
    }

    #[test]
    fn uncapped_devices_and_out_of_range_devices() {
        let l = ledger(MIB);
        l.reserve(1, u64::MAX / 2).unwrap().commit(Key::DevicePtr(1), 0);
        assert!(l.reserve(1, u64::MAX).is_err(), "overflow is refused, not wrapped");
        assert!(l.reserve(MAX_DEVICES + 3, 5).is_ok());
    }

    #[test]
    fn reused_key_drops_the_stale_charge() {
        let l = ledger(100 * MIB);
        l.reserve(0, 30 * MIB).unwrap().commit(Key::DevicePtr(9), 0);
        l.reserve(0, 20 * MIB).unwrap().commit(Key::DevicePtr(9), 0);
        assert_eq!(l.used(0), 20 * MIB);
    }

    #[test]
    fn context_destruction_releases_its_allocations() {
        let l = ledger(100 * MIB);
        l.record(Key::Context(5), Allocation { dev: 0, bytes: 10 * MIB, kind: Kind::Context, context: 0 });
        l.reserve(0, 20 * MIB).unwrap().commit(Key::DevicePtr(1), 5);
        l.reserve(0, 30 * MIB).unwrap().commit(Key::DevicePtr(2), 6);
        assert_eq!(l.release_context(5), 20 * MIB);
        assert_eq!(l.release(Key::Context(5)).unwrap().bytes, 10 * MIB);
        assert_eq!(l.used(0), 30 * MIB);
        assert_eq!(l.held_by_process_of(0, Kind::Data), 30 * MIB);
    }

    /// Issue 15, defect 13: a forked child (a new epoch) starts with no records of the parent's
    /// memory: freeing its copy of a parent's pointer takes nothing off the child's count.
    #[test]
    fn a_new_epoch_forgets_the_parents_records() {
        struct Epoch(Counters, AtomicU64);
        impl Accounting for Epoch {
            fn limit(&self, dev: usize) -> Option<u64> {
                self.0.limit(dev)
            }
            fn try_charge(&self, dev: usize, bytes: u64, limit: Option<u64>) -> bool {
                self.0.try_charge(dev, bytes, limit)
            }
            fn charge(&self, dev: usize, bytes: u64, kind: Kind) {
                self.0.charge(dev, bytes, kind)
            }
            fn uncharge(&self, dev: usize, bytes: u64, kind: Kind) {
                self.0.uncharge(dev, bytes, kind)
            }
            fn used(&self, dev: usize) -> u64 {
                self.0.used(dev)
            }
            fn epoch(&self) -> u64 {
                self.1.load(Ordering::Relaxed)
            }
        }
        let l = MemoryLedger::new(Epoch(Counters::new(1024 * MIB), AtomicU64::new(0)));
        l.reserve(0, 600 * MIB).unwrap().commit(Key::DevicePtr(1), 0);
        l.record(Key::Context(9), Allocation { dev: 0, bytes: 10 * MIB, kind: Kind::Context, context: 0 });
        l.accounting().1.store(1, Ordering::Relaxed); // fork
        l.reserve(0, 100 * MIB).unwrap().commit(Key::DevicePtr(2), 0);
        assert_eq!(l.release(Key::DevicePtr(1)), None, "the parent's pointer is not the child's");
        assert_eq!(l.release(Key::Context(9)), None);
        assert_eq!(l.held_by_process_of(0, Kind::Data), 100 * MIB);
        assert_eq!(l.release(Key::DevicePtr(2)).map(|a| a.bytes), Some(100 * MIB));
    }

    #[test]
    fn racing_threads_never_exceed_the_cap() {
        let l = Arc::new(ledger(64 * MIB));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let key = Key::DevicePtr(t << 32 | i);
                        if let Ok(r) = l.reserve(0, 3 * MIB) {
                            assert!(l.used(0) <= 64 * MIB);
                            r.commit(key, 0);
                            l.release(key).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(l.used(0), 0);
    }
}
