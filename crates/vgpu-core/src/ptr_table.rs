//! The ledger's lock-free table of device pointers: the allocation hot path (a pooled
//! `cuMemAllocAsync` + `cuMemFreeAsync` pair costs ~1.2 µs on the H200) must not take a mutex
//! twice. Open addressing with a fixed window: a pointer lives in one of `WINDOW` slots after its
//! hash, so a lookup reads at most `WINDOW` keys and a removal leaves no tombstone. A pointer
//! whose window is full is not stored here (`insert` says so) and the caller keeps it elsewhere.
//!
//! Each slot is owned through its key: `EMPTY` → `BUSY` (CAS) gives a writer the slot, which it
//! publishes by storing the pointer (Release); a remover takes the slot back by CAS pointer →
//! `BUSY`, reads the entry it now owns and frees the slot with `EMPTY` (Release). So an entry is
//! only ever read by the one thread that owns it, and readers that do not remove (`for_each`)
//! take ownership the same way. A thread looking for a pointer waits out a `BUSY` slot (a few
//! instructions) rather than skip it: the slot may hold the very pointer it is freeing.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::ledger::{Allocation, Kind};

const EMPTY: u64 = 0;
/// Taken by a thread that is writing or reading the entry. Device pointers are never 1.
const BUSY: u64 = 1;
const WINDOW: usize = 8;
const BITS: u32 = 14;
const SLOTS: usize = 1 << BITS;
const BYTES_MASK: u64 = (1 << 56) - 1;

struct Slot {
    key: AtomicU64,
    /// bytes (56 bits) | device (4 bits) << 56 | context kind << 60 | spilled kind << 61
    meta: AtomicU64,
    context: AtomicU64,
}

pub struct PtrTable {
    slots: Box<[Slot; SLOTS]>,
}

/// Why an entry was not stored.
#[derive(Debug, PartialEq, Eq)]
pub enum NotStored {
    /// Pointers 0 and 1 are not valid device pointers (and are our markers).
    Reserved,
    /// The pointer's window is full; keep it elsewhere.
    Full,
}

fn pack(a: &Allocation) -> Option<u64> {
    let dev = u64::try_from(a.dev).ok().filter(|&d| d < 16)?;
    let kind = match a.kind {
        Kind::Data => 0,
        Kind::Context => 1,
        Kind::Spilled => 2,
    };
    (a.bytes <= BYTES_MASK).then_some(a.bytes | dev << 56 | kind << 60)
}

fn unpack(meta: u64, context: u64) -> Allocation {
    let kind = match meta >> 60 & 3 {
        1 => Kind::Context,
        2 => Kind::Spilled,
        _ => Kind::Data,
    };
    Allocation { dev: (meta >> 56 & 0xf) as usize, bytes: meta & BYTES_MASK, kind, context }
}

/// The slot's key once no thread holds it `BUSY` (held for a few instructions; a thread that is
/// descheduled meanwhile is waited for with `yield_now`).
fn settled(slot: &Slot) -> u64 {
    let mut spins = 0u32;
    loop {
        let key = slot.key.load(Relaxed);
        if key != BUSY {
            return key;
        }
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Takes the slot if it holds `ptr` (`BUSY` by then); a slot another thread holds for a moment
/// is waited for, not skipped.
fn own_if(slot: &Slot, ptr: u64) -> bool {
    loop {
        if settled(slot) != ptr {
            return false;
        }
        if slot.key.compare_exchange(ptr, BUSY, Acquire, Relaxed).is_ok() {
            return true;
        }
    }
}

fn home(ptr: u64) -> usize {
    // Multiply-shift: the high bits of the product mix every bit of an aligned pointer.
    (ptr.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - BITS)) as usize
}

impl Default for PtrTable {
    fn default() -> Self {
        Self::new()
    }
}

impl PtrTable {
    /// 16 Ki slots of 24 bytes (384 KiB), allocated once.
    pub fn new() -> Self {
        let slots: Box<[Slot]> = (0..SLOTS)
            .map(|_| Slot { key: AtomicU64::new(EMPTY), meta: AtomicU64::new(0), context: AtomicU64::new(0) })
            .collect();
        PtrTable { slots: slots.try_into().unwrap_or_else(|_| unreachable!("SLOTS slots were made")) }
    }

    fn window(&self, ptr: u64) -> impl Iterator<Item = &Slot> {
        let h = home(ptr);
        (0..WINDOW).map(move |i| &self.slots[(h + i) & (SLOTS - 1)])
    }

    /// Stores `ptr`; returns the entry it replaces (memory freed behind our back whose pointer
    /// the driver handed out again). The window is read up to its first empty slot, which the
    /// pointer then takes: a stale entry beyond it is not seen (it stays charged until that
    /// pointer is freed twice). Frees take their entry before the driver call, so none is.
    pub fn insert(&self, ptr: u64, alloc: Allocation) -> Result<Option<Allocation>, NotStored> {
        if ptr <= BUSY {
            return Err(NotStored::Reserved);
        }
        let meta = pack(&alloc).ok_or(NotStored::Full)?;
        for slot in self.window(ptr) {
            let key = slot.key.load(Relaxed);
            if key == EMPTY {
                if slot.key.compare_exchange(EMPTY, BUSY, Acquire, Relaxed).is_ok() {
                    Self::publish(slot, ptr, meta, alloc.context);
                    return Ok(None);
                }
            } else if (key == ptr || key == BUSY) && own_if(slot, ptr) {
                let stale = unpack(slot.meta.load(Relaxed), slot.context.load(Relaxed));
                Self::publish(slot, ptr, meta, alloc.context);
                return Ok(Some(stale));
            }
        }
        Err(NotStored::Full)
    }

    fn publish(slot: &Slot, ptr: u64, meta: u64, context: u64) {
        slot.meta.store(meta, Relaxed);
        slot.context.store(context, Relaxed);
        slot.key.store(ptr, Release);
    }

    /// Takes `ptr`'s entry out, if it is here: reads it while owning its slot, then frees the slot.
    pub fn remove(&self, ptr: u64) -> Option<Allocation> {
        if ptr <= BUSY {
            return None;
        }
        let slot = self.window(ptr).find(|s| own_if(s, ptr))?;
        let alloc = unpack(slot.meta.load(Relaxed), slot.context.load(Relaxed));
        slot.key.store(EMPTY, Release);
        Some(alloc)
    }

    /// Takes out every entry `take` says yes to (a whole table walk: for destroyed contexts).
    pub fn remove_where(&self, mut take: impl FnMut(&Allocation) -> bool) -> Vec<Allocation> {
        let mut taken = Vec::new();
        for slot in self.slots.iter() {
            let key = settled(slot);
            if key == EMPTY || !own_if(slot, key) {
                continue; // empty, or removed while we looked
            }
            let alloc = unpack(slot.meta.load(Relaxed), slot.context.load(Relaxed));
            if take(&alloc) {
                taken.push(alloc);
                slot.key.store(EMPTY, Release);
            } else {
                slot.key.store(key, Release);
            }
        }
        taken
    }

    /// Calls `f` with every entry (a snapshot per entry; for operators' sums).
    pub fn for_each(&self, mut f: impl FnMut(&Allocation)) {
        let _ = self.remove_where(|a| {
            f(a);
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn data(dev: usize, bytes: u64, context: u64) -> Allocation {
        Allocation { dev, bytes, kind: Kind::Data, context }
    }

    #[test]
    fn stores_finds_and_removes() {
        let t = PtrTable::new();
        assert_eq!(t.insert(0x7f00_0000_0000, data(3, 1 << 20, 9)), Ok(None));
        let ctx = Allocation { dev: 15, bytes: BYTES_MASK, kind: Kind::Context, context: u64::MAX };
        assert_eq!(t.insert(0x7f00_0020_0000, ctx), Ok(None));
        assert_eq!(t.remove(0x7f00_0020_0000), Some(ctx));
        assert_eq!(t.remove(0x7f00_0020_0000), None);
        let spilled = Allocation { dev: 15, bytes: BYTES_MASK, kind: Kind::Spilled, context: 7 };
        assert_eq!(t.insert(0x7f00_0040_0000, spilled), Ok(None));
        assert_eq!(t.remove(0x7f00_0040_0000), Some(spilled));
        assert_eq!(t.insert(0x7f00_0000_0000, data(1, 5, 0)), Ok(Some(data(3, 1 << 20, 9))), "stale entry");
        assert_eq!(t.remove(0x7f00_0000_0000), Some(data(1, 5, 0)));
        assert_eq!(t.insert(0, data(0, 1, 0)), Err(NotStored::Reserved));
        assert_eq!(t.insert(1, data(0, 1, 0)), Err(NotStored::Reserved));
        assert_eq!(t.insert(8, data(16, 1, 0)), Err(NotStored::Full), "device out of range");
        assert_eq!(t.insert(8, data(0, 1 << 56, 0)), Err(NotStored::Full), "size out of range");
    }

    #[test]
    fn a_full_window_refuses_and_removal_reopens_it() {
        let t = PtrTable::new();
        // Pointers sharing one home slot: same product high bits.
        let home0 = home(0x1000);
        let same: Vec<u64> = (2..u64::MAX).filter(|&p| home(p) == home0).take(WINDOW + 1).collect();
        for &p in &same[..WINDOW] {
            assert_eq!(t.insert(p, data(0, p, 0)), Ok(None));
        }
        assert_eq!(t.insert(same[WINDOW], data(0, 1, 0)), Err(NotStored::Full));
        assert_eq!(t.remove(same[3]), Some(data(0, same[3], 0)));
        assert_eq!(t.insert(same[WINDOW], data(0, 1, 0)), Ok(None));
        for &p in same.iter().filter(|&&p| p != same[3]) {
            assert!(t.remove(p).is_some(), "{p:#x} still found");
        }
    }

    #[test]
    fn remove_where_takes_one_contexts_entries() {
        let t = PtrTable::new();
        for i in 0..1000u64 {
            t.insert(0x7000_0000_0000 + i * 0x20_0000, data(0, 1, i % 3)).unwrap();
        }
        let taken = t.remove_where(|a| a.context == 1);
        assert_eq!(taken.len(), 333);
        let mut left = 0;
        t.for_each(|a| {
            assert_ne!(a.context, 1);
            left += 1;
        });
        assert_eq!(left, 667);
    }

    /// Threads insert and remove their own pointers, all hashing into a few windows, while
    /// another walks the table: every entry comes back exactly as stored, none is lost or seen
    /// twice, and the table ends empty.
    #[test]
    fn concurrent_inserts_removals_and_walks_agree() {
        let t = Arc::new(PtrTable::new());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let walks = Arc::new(AtomicU64::new(0));
        let walker = {
            let (t, stop, walks) = (t.clone(), stop.clone(), walks.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    t.for_each(|a| assert_eq!(a.bytes, a.context, "a torn entry"));
                    walks.fetch_add(1, Relaxed);
                }
            })
        };
        while walks.load(Relaxed) == 0 {
            std::thread::yield_now();
        }
        let workers: Vec<_> = (0..4u64)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut overflow = 0;
                    for round in 0..100_000u64 {
                        // 16 pointers per thread, 64 in all, over few windows: contention and full windows.
                        let p = 0x10_0000 * (w * 16 + round % 16 + 2);
                        let a = data(w as usize, round, round);
                        match t.insert(p, a) {
                            Ok(None) => assert_eq!(t.remove(p), Some(a), "thread {w} round {round}"),
                            Ok(Some(stale)) => panic!("pointer {p:#x} was still stored: {stale:?}"),
                            Err(NotStored::Full) => overflow += 1,
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                    overflow
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Relaxed);
        walker.join().unwrap();
        assert!(walks.load(Relaxed) > 1, "the walker overlapped the workers");
        let mut left = 0;
        t.for_each(|_| left += 1);
        assert_eq!(left, 0);
    }
}
