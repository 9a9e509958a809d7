use super::*;
use crate::MAX_DEVICES;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

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

/// A forked child (a new epoch) starts with no records of the parent's
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
