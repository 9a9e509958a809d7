//! The ledger's records of live allocations, by the key their free will name: device pointers
//! (the hot path) in a lock-free [`PtrTable`], made on the first one; handles, contexts and the
//! pointers the table has no room for in a map under a mutex. Records only: charging and
//! uncharging is the ledger's.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use super::{Allocation, Key, Kind};
use crate::ptr_table::PtrTable;

/// A folded-multiply hasher for the ledger's keys (pointers and handles): each word is xored
/// into the state, which is multiplied 64×64→128 by an odd constant and its two halves xored
/// together. SipHash's DoS resistance buys nothing for driver-issued addresses and costs ~100
/// instructions per lookup; the fold brings high product bits down, so aligned pointers (low
/// bits zero) still spread over the table's buckets.
#[derive(Default, Clone, Copy)]
struct FoldedMultiplyHasher {
    hash: u64,
}

/// Odd, with its bits spread evenly: every input bit moves many output bits.
const MULTIPLIER: u64 = 0xf135_7aea_2e62_a9c5;

impl FoldedMultiplyHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        let p = u128::from(self.hash ^ word) * u128::from(MULTIPLIER);
        self.hash = (p as u64) ^ ((p >> 64) as u64);
    }
}

impl Hasher for FoldedMultiplyHasher {
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

type KeyMap = HashMap<Key, Allocation, BuildHasherDefault<FoldedMultiplyHasher>>;

pub(super) struct Records {
    pointers: OnceLock<PtrTable>,
    map: Mutex<KeyMap>,
    /// Device pointers kept in `map` (their table window was full): while 0, a pointer's free
    /// never takes the mutex.
    pointers_in_map: AtomicUsize,
}

impl Records {
    pub(super) fn new() -> Self {
        Records { pointers: OnceLock::new(), map: Mutex::new(KeyMap::default()), pointers_in_map: AtomicUsize::new(0) }
    }

    /// Records `alloc` under `key`; returns the record it replaces, if any.
    pub(super) fn insert(&self, key: Key, alloc: Allocation) -> Option<Allocation> {
        let Key::DevicePtr(p) = key else { return self.lock().insert(key, alloc) };
        match self.pointers.get_or_init(PtrTable::new).insert(p, alloc) {
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
        }
    }

    /// Takes `key`'s record out.
    pub(super) fn take(&self, key: Key) -> Option<Allocation> {
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

    /// Takes out every record of what `context` owns.
    pub(super) fn take_context(&self, context: u64) -> Vec<Allocation> {
        let mut taken = self.pointers.get().map(|t| t.remove_where(|a| a.context == context)).unwrap_or_default();
        let mut map = self.lock();
        let keys: Vec<Key> = map.iter().filter(|(_, a)| a.context == context).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some(a) = map.remove(&k) {
                if matches!(k, Key::DevicePtr(_)) {
                    self.pointers_in_map.fetch_sub(1, Ordering::AcqRel);
                }
                taken.push(a);
            }
        }
        taken
    }

    /// Bytes recorded on `dev` of `kind`.
    pub(super) fn bytes_of(&self, dev: usize, kind: Kind) -> u64 {
        let mut held = 0;
        if let Some(t) = self.pointers.get() {
            t.for_each(|a| held += if a.dev == dev && a.kind == kind { a.bytes } else { 0 });
        }
        held + self.lock().values().filter(|a| a.dev == dev && a.kind == kind).map(|a| a.bytes).sum::<u64>()
    }

    /// Forgets every record if `forget`, asked while the map is locked, says so: of callers
    /// racing to forget, one at a time asks.
    pub(super) fn forget_all_if(&self, forget: impl FnOnce() -> bool) {
        let mut map = self.lock();
        if !forget() {
            return;
        }
        if let Some(t) = self.pointers.get() {
            t.remove_where(|_| true);
        }
        map.clear();
        self.pointers_in_map.store(0, Ordering::Release);
    }

    fn take_from_map(&self, key: Key) -> Option<Allocation> {
        let a = self.lock().remove(&key)?;
        self.pointers_in_map.fetch_sub(1, Ordering::AcqRel);
        Some(a)
    }

    fn lock(&self) -> MutexGuard<'_, KeyMap> {
        // A panic elsewhere while holding the map leaves it consistent (single inserts/removes).
        self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
