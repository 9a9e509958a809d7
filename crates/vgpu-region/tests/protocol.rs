//! The region protocol in one process: separate `open()`s are separate OFD lock owners, so
//! threads each holding their own mapping behave like processes sharing a container.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;

use vgpu_core::ledger::Kind;
use vgpu_region::layout::{FILE_SIZE, MAGIC, SharedRegion};
use vgpu_region::{InitParams, Region, RegionAccounting, RegionError, SlotState};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn params(cap_mib: u64) -> InitParams {
    let mut p = InitParams::default();
    p.limits[0] = Some(cap_mib * MIB);
    p.uuids = vec!["GPU-aaaa".into(), "GPU-bbbb".into()];
    p
}

fn open(path: &std::path::Path, cap_mib: u64) -> Region {
    Region::open_or_create(path, 0o600, &params(cap_mib)).unwrap()
}

#[test]
fn creates_initialises_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let a = open(&path, 512);
    assert_eq!(a.shared().initialized_flag.load(SeqCst), MAGIC);
    assert_eq!(a.shared().limit[0].load(SeqCst), 512 * MIB);
    assert_eq!(a.uuid(1), "GPU-bbbb");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), FILE_SIZE as u64);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    // A second opener does not re-initialise: the limit set first (or by an operator) wins.
    a.shared().limit[0].store(1024 * MIB, SeqCst);
    let b = open(&path, 64);
    assert_eq!(b.shared().limit[0].load(SeqCst), 1024 * MIB);
    assert!(Region::open_existing(&path).is_ok());
}

#[test]
fn permissions_are_configurable_without_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.cache");
    Region::open_or_create(&path, 0o666, &params(1)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o666);
}

#[test]
fn foreign_truncated_corrupt_and_wrong_version_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hami = dir.path().join("hami.cache");
    std::fs::write(&hami, vec![0u8; size_of::<SharedRegion>() + 1]).unwrap();
    assert!(matches!(Region::open_or_create(&hami, 0o600, &params(1)), Err(RegionError::Foreign(..))));

    let short = dir.path().join("short.cache");
    std::fs::write(&short, b"hello").unwrap();
    assert!(matches!(Region::open_or_create(&short, 0o600, &params(1)), Err(RegionError::Foreign(..))));

    let garbage = dir.path().join("garbage.cache");
    std::fs::write(&garbage, vec![0xA5u8; FILE_SIZE]).unwrap();
    let e = Region::open_or_create(&garbage, 0o600, &params(1)).err().unwrap();
    assert!(matches!(e, RegionError::Corrupt(..)), "{e}");

    let path = dir.path().join("r.cache");
    let r = open(&path, 1);
    r.shared().major_version.store(7, SeqCst);
    drop(r);
    let e = Region::open_or_create(&path, 0o600, &params(1)).err().unwrap();
    assert!(matches!(e, RegionError::WrongVersion(..)), "{e}");
    assert!(e.to_string().contains("v7.2"), "{e}");

    let path = dir.path().join("noext.cache");
    let r = open(&path, 1);
    r.extension().magic.store(0, SeqCst);
    drop(r);
    assert!(matches!(Region::open_existing(&path), Err(RegionError::Foreign(..))));

    let path = dir.path().join("procnum.cache");
    let r = open(&path, 1);
    r.shared().proc_num.store(5000, SeqCst);
    drop(r);
    assert!(matches!(Region::open_existing(&path), Err(RegionError::Corrupt(..))));
    assert!(matches!(Region::open_existing(&dir.path().join("none")), Err(RegionError::Missing(..))));
}

#[test]
fn slots_are_exclusive_reaped_when_their_owner_is_gone_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let a = open(&path, 1024);
    let b = open(&path, 1024);
    let sa = a.claim_slot(100, 0).unwrap();
    let sb = b.claim_slot(200, 0).unwrap();
    assert_ne!(sa, sb);
    assert_eq!(a.shared().proc_num.load(SeqCst), 2);
    let acc_b = RegionAccounting::new(b, sb);
    acc_b.charge(0, 300 * MIB, Kind::Context);
    assert_eq!(a.slot_state(sb, Some(sa)), SlotState::Alive);
    drop(acc_b); // "kill -9": the description closes, the kernel drops the lock
    assert_eq!(a.slot_state(sb, Some(sa)), SlotState::Dead);
    let reaped = a.reap(Some(sa));
    assert_eq!(reaped, vec![(sb, 200, 300 * MIB)]);
    assert_eq!(a.slot_state(sb, Some(sa)), SlotState::Free);
    // PID reuse cannot resurrect it: liveness is the lock, and the next claimer reuses the slot.
    let c = open(&path, 1024);
    assert_eq!(c.claim_slot(200, 0).unwrap(), sb);
    assert_eq!(a.shared().proc_num.load(SeqCst), 2, "high-water mark, no compaction");
}

#[test]
fn a_dead_processes_usage_is_reclaimed_by_the_next_refused_charge() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let live = open(&path, 1024);
    let slot = live.claim_slot(2, 0).unwrap();
    let live = RegionAccounting::new(live, slot);
    let dead = open(&path, 1024);
    let slot = dead.claim_slot(1, 0).unwrap();
    let dead = RegionAccounting::new(dead, slot);
    assert!(dead.try_charge(0, 900 * MIB, dead.limit(0)));
    drop(dead);
    assert_eq!(live.used(0), 900 * MIB, "stale until reaped");
    assert!(live.try_charge(0, 500 * MIB, live.limit(0)), "refusal reaps the dead slot and retries");
    assert_eq!(live.used(0), 500 * MIB);
    // A newcomer takes over a dead slot directly, zeroing what it held.
    let again = open(&path, 1024);
    assert_eq!(again.claim_slot(3, 0).unwrap(), 1);
}

#[test]
fn live_limit_changes_apply_to_the_next_charge() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let r = open(&path, 100);
    let slot = r.claim_slot(1, 0).unwrap();
    let acc = RegionAccounting::new(r, slot);
    assert!(acc.try_charge(0, 80 * MIB, acc.limit(0)));
    let operator = Region::open_existing(&path).unwrap();
    operator.shared().limit[0].store(50 * MIB, SeqCst);
    assert!(!acc.try_charge(0, MIB, acc.limit(0)), "lowered below usage: new charges fail");
    assert_eq!(acc.used(0), 80 * MIB, "existing memory stays");
    operator.shared().limit[0].store(0, SeqCst);
    assert_eq!(acc.limit(0), None, "0 = unlimited");
    assert!(acc.try_charge(0, 4096 * MIB, None));
    assert_eq!(operator.extension().cap_denials[0].load(SeqCst), 0, "denials are counted by the ledger");
}

/// Many "processes" (threads with their own open) race to charge and free under one cap:
/// the committed total never exceeds it and ends at zero.
#[test]
fn racing_charges_never_exceed_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let path = Arc::new(dir.path().join("r.cache"));
    let cap = 256 * MIB;
    open(&path, 256);
    let committed = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..12)
        .map(|t| {
            let (path, committed) = (Arc::clone(&path), Arc::clone(&committed));
            std::thread::spawn(move || {
                let r = open(&path, 256);
                let slot = r.claim_slot(1000 + t, 0).unwrap();
                let acc = RegionAccounting::new(r, slot);
                let mut held = Vec::new();
                for i in 0..3000u64 {
                    let bytes = (1 + (i * 7 + t as u64) % 13) * 4 * MIB;
                    if acc.try_charge(0, bytes, acc.limit(0)) {
                        let now = committed.fetch_add(bytes, SeqCst) + bytes;
                        assert!(now <= cap, "committed {now} over the cap");
                        held.push(bytes);
                    }
                    if held.len() > 3 || (i % 5 == 0 && !held.is_empty()) {
                        let b = held.remove(0);
                        committed.fetch_sub(b, SeqCst);
                        acc.uncharge(0, b, Kind::Data);
                    }
                }
                for b in held {
                    committed.fetch_sub(b, SeqCst);
                    acc.uncharge(0, b, Kind::Data);
                }
                acc.region().release_slot(acc.slot());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let r = Region::open_existing(&path).unwrap();
    assert_eq!(r.used(0), 0);
}

/// Slot claim and release under churn: no two live owners ever share a slot.
#[test]
fn slot_claims_under_churn_are_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let path = Arc::new(dir.path().join("r.cache"));
    open(&path, 1);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let path = Arc::clone(&path);
            std::thread::spawn(move || {
                for round in 0..200u64 {
                    let r = open(&path, 1);
                    let slot = r.claim_slot(1, 0).unwrap();
                    let token = (t as u64) << 32 | round;
                    let mark = &r.shared().procs[slot].unused[0];
                    mark.store(token, SeqCst);
                    std::thread::yield_now();
                    assert_eq!(mark.load(SeqCst), token, "slot {slot} shared by two owners");
                    if round % 3 == 0 {
                        r.release_slot(slot);
                    } // otherwise drop without release: a crash, reaped by a later claimer
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let r = Region::open_existing(&path).unwrap();
    assert!(r.shared().proc_num.load(SeqCst) <= 16, "dead slots are reused, not leaked");
}

/// Devices are placed by UUID: a process that sees the container's GPUs in another order, or
/// only one of them, finds each where the first process recorded it; a new GPU takes its own
/// ordinal's index when free, else the first free one.
#[test]
fn devices_are_placed_by_uuid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let r = Region::open_or_create(&path, 0o600, &InitParams::default()).unwrap();
    let s = |v: &[&str]| v.iter().map(|u| u.to_string()).collect::<Vec<_>>();
    assert_eq!(r.place_uuids(&s(&["GPU-c", "GPU-a"])), [Some(0), Some(1)]);
    assert_eq!(r.shared().device_num.load(SeqCst), 2);
    let other = Region::open_or_create(&path, 0o600, &InitParams::default()).unwrap();
    assert_eq!(other.place_uuids(&s(&["GPU-A", "gpu-c"])), [Some(1), Some(0)], "case-insensitive");
    assert_eq!(other.place_uuids(&s(&["GPU-a"])), [Some(1)]);
    assert_eq!(other.place_uuids(&s(&["GPU-d", "GPU-c", "GPU-b"])), [Some(2), Some(0), Some(3)]);
    assert_eq!(other.place_uuids(&s(&["", "GPU-a"])), [Some(0), Some(1)], "unnamed: its ordinal");
    assert_eq!(r.index_of_uuid("gpu-b"), Some(3));
    assert_eq!(r.index_of_uuid("GPU-e"), None);
    assert_eq!(r.shared().device_num.load(SeqCst), 4);
    let many: Vec<String> = (0..20).map(|i| format!("GPU-n{i}")).collect();
    let placed = r.place_uuids(&many);
    assert_eq!(placed.iter().filter(|p| p.is_some()).count(), 12, "16 indices, 4 taken");
    // The first four find their ordinals taken and fill 4.., in order; the last eight find none.
    assert_eq!(placed[..12].iter().map(|p| p.unwrap()).collect::<Vec<_>>(), (4..16).collect::<Vec<_>>());
}

/// Spilled bytes (`CUDA_OVERSUBSCRIBE`) are counted per slot in the extension, summed for the
/// container against the spill limit, never part of the device usage, and a dead process's
/// spill is reaped like its usage.
#[test]
fn spill_is_container_wide_bounded_and_reaped_with_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let a = open(&path, 1024);
    let slot = a.claim_slot(1, 0).unwrap();
    let a = RegionAccounting::new(a, slot);
    let b = open(&path, 1024);
    let slot = b.claim_slot(2, 0).unwrap();
    let b = RegionAccounting::new(b, slot);
    assert!(a.try_charge_spill(0, 600 * MIB, GIB));
    assert!(!b.try_charge_spill(0, 600 * MIB, GIB), "the limit is the container's");
    assert!(b.try_charge_spill(0, 424 * MIB, GIB));
    assert_eq!((a.spilled(0), b.spilled(0), a.used(0)), (GIB, GIB, 0));
    b.uncharge(0, 100 * MIB, Kind::Spilled);
    assert_eq!(a.spilled(0), 924 * MIB);
    drop(b);
    assert!(a.try_charge_spill(0, 400 * MIB, GIB), "a refusal reaps the dead slot's spill and retries");
    assert_eq!(a.spilled(0), 1000 * MIB);
}

/// A region file of the release before `spilled` was appended is grown in place and keeps its
/// contents; the new tail reads as nothing spilled.
#[test]
fn a_region_of_the_previous_release_is_grown_in_place() {
    use vgpu_region::layout::{EXTENSION_OFFSET, PREVIOUS_FILE_SIZES};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let older = PREVIOUS_FILE_SIZES[1];
    {
        let r = open(&path, 777);
        r.extension().size.store((older - EXTENSION_OFFSET) as u32, SeqCst);
    }
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(older as u64).unwrap();
    let r = open(&path, 1024);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), FILE_SIZE as u64);
    assert_eq!(r.shared().limit[0].load(SeqCst), 777 * MIB, "contents kept");
    assert_eq!(r.extension().size.load(SeqCst) as usize, FILE_SIZE - EXTENSION_OFFSET);
    assert!(r.extension().spilled.iter().flatten().all(|c| c.load(SeqCst) == 0));
}

/// A planted symbolic link (or FIFO) at the region's path, in a directory other users can
/// write, is refused and its target left untouched; nothing is created through a dangling link either.
#[test]
fn a_link_at_the_region_path_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"").unwrap();
    let zero_headed = dir.path().join("zero-headed");
    std::fs::write(&zero_headed, vec![0u8; 3 << 20]).unwrap();
    for target in [&victim, &zero_headed] {
        let link = dir.path().join("p.cache");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).unwrap();
        let e = Region::open_or_create(&link, 0o600, &params(1)).err().unwrap();
        assert!(matches!(e, RegionError::Refused(_)), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(matches!(Region::open_existing(&link), Err(RegionError::Refused(_))));
        assert!(matches!(Region::open_copy(&link), Err(RegionError::Refused(_))));
    }
    assert_eq!(std::fs::metadata(&victim).unwrap().len(), 0);
    assert!(std::fs::read(&zero_headed).unwrap().iter().all(|&b| b == 0));
}

/// A creator killed inside initialisation (the file sized, some fields
/// written, the magic not yet) leaves a region the next process re-initialises.
#[test]
fn a_region_whose_creator_died_mid_initialisation_is_reinitialised() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let f = std::fs::File::options().create_new(true).read(true).write(true).open(&path).unwrap();
    f.set_len(FILE_SIZE as u64).unwrap();
    f.write_all_at(&1u32.to_le_bytes(), 4).unwrap(); // major_version: the creator got this far
    f.write_all_at(&7u64.to_le_bytes(), 1600).unwrap(); // a first limit
    drop(f);
    let r = Region::open_or_create(&path, 0o600, &params(512)).expect("re-initialised");
    assert_eq!(r.shared().initialized_flag.load(SeqCst), MAGIC);
    assert_eq!(r.shared().limit[0].load(SeqCst), 512 * MIB);
    assert!(Region::open_existing(&path).is_ok());
}

/// A process stopped (`SIGSTOP`, `docker pause`) while holding the initialisation lock does not hang
/// the next ones: they give up after a bounded wait.
#[test]
fn a_held_initialisation_lock_is_waited_for_a_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    open(&path, 1);
    let holder = std::fs::File::options().read(true).write(true).open(&path).unwrap();
    assert!(vgpu_region::lock::try_lock(&holder, 0).unwrap());
    let t = std::time::Instant::now();
    let e = Region::open_or_create(&path, 0o600, &params(1)).err().unwrap();
    assert!(matches!(e, RegionError::Busy(_)), "{e}");
    assert!(t.elapsed() < std::time::Duration::from_secs(3), "{:?}", t.elapsed());
    // place_uuids goes on without the lock.
    let r = Region::open_existing(&path).unwrap();
    assert_eq!(r.place_uuids(&["GPU-x".to_string()]), [Some(2)]);
    drop(holder);
    assert!(Region::open_or_create(&path, 0o600, &params(1)).is_ok());
}

/// A copy read with pread (the operator's view of a tenant's file) is unaffected by the file
/// being truncated, and writes through `set_limit` and `reap` reach the file.
#[test]
fn a_copy_survives_truncation_and_writes_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let live = open(&path, 100);
    let copy = Region::open_copy(&path).unwrap();
    assert_eq!(copy.set_limit(0, 200 * MIB).unwrap(), 100 * MIB);
    assert_eq!(live.shared().limit[0].load(SeqCst), 200 * MIB, "written through");
    assert_eq!(copy.set_sm_limit(1, 30).unwrap(), 0);
    assert_eq!(live.shared().sm_limit[1].load(SeqCst), 30);
    // A dead slot reaped through a copy is zeroed in the file.
    let dead = open(&path, 100);
    let slot = dead.claim_slot(9, 0).unwrap();
    dead.shared().procs[slot].used[0].total.store(5 * MIB, SeqCst);
    drop(dead);
    let copy = Region::open_copy(&path).unwrap();
    assert_eq!(copy.reap(None), vec![(slot, 9, 5 * MIB)]);
    assert_eq!(live.shared().procs[slot].used[0].total.load(SeqCst), 0);
    assert_eq!(live.shared().procs[slot].pid.load(SeqCst), 0);
    drop(live);
    std::fs::File::options().write(true).open(&path).unwrap().set_len(0).unwrap();
    let n: u64 = copy.shared().procs.iter().map(|p| p.used[0].total.load(SeqCst)).sum();
    assert_eq!(n, 0, "every page of the copy is still readable");
    assert!(matches!(Region::open_copy(&path), Err(RegionError::Foreign(..))));
}
