use super::*;

const MS: u64 = 1_000_000;

#[test]
fn the_node_knows_the_smallest_context_cost_per_gpu() {
    let (_d, t) = table();
    assert_eq!(t.context_cost(5), None);
    t.entry(1, 5, 1, 0).unwrap().unwrap().context_cost.store(3 << 30, Relaxed);
    t.entry(2, 5, 1, 0).unwrap().unwrap().context_cost.store(520 << 20, Relaxed);
    t.entry(3, 6, 1, 0).unwrap().unwrap().context_cost.store(100 << 20, Relaxed);
    assert_eq!(t.context_cost(5), Some(520 << 20));
    assert_eq!(t.context_cost(6), Some(100 << 20));
}

fn table() -> (tempfile::TempDir, NodeTable) {
    let dir = tempfile::tempdir().unwrap();
    let t = NodeTable::open(&dir.path().join("node"), 0o600, None).unwrap();
    (dir, t)
}

#[test]
fn containers_see_active_neighbours_on_their_gpu_only() {
    let (_d, t) = table();
    let (gpu0, gpu1) = (key("GPU-0"), key("GPU-1"));
    let now = 100_000 * MS;
    let a = t.entry(1, gpu0, 1, now).unwrap().unwrap();
    let b = t.entry(2, gpu0, 1, now).unwrap().unwrap();
    let c = t.entry(3, gpu1, HIGH_PRIORITY, now).unwrap().unwrap();
    assert!(std::ptr::eq(a, t.entry(1, gpu0, 1, now).unwrap().unwrap()), "one entry per container and GPU");
    assert_eq!(t.neighbours(1, gpu0, now), Neighbours::default());
    b.mark_busy(now);
    c.mark_busy(now);
    assert_eq!(t.neighbours(1, gpu0, now), Neighbours { active: 1, high_priority_active: false });
    assert_eq!(t.neighbours(2, gpu0, now), Neighbours::default(), "a container is not its own neighbour");
    assert_eq!(t.neighbours(1, gpu1, now), Neighbours { active: 1, high_priority_active: true });
    assert_eq!(t.neighbours(1, gpu0, now + ACTIVE_NS + 1), Neighbours::default(), "idle again");
    // A high-priority container holds the GPU a while longer than it counts as active.
    let later = now + ACTIVE_NS + 1;
    assert_eq!(t.neighbours(1, gpu1, later), Neighbours { active: 0, high_priority_active: true });
    let gone = now + HIGH_PRIORITY_HOLD_NS + 1;
    assert_eq!(t.neighbours(1, gpu1, gone), Neighbours::default());
    assert!(t.has_high_priority(now));
    a.mark_busy(now);
}

#[test]
fn entries_of_gone_containers_are_reused_and_a_full_table_says_so() {
    let (_d, t) = table();
    let gpu = key("GPU-0");
    for owner in 1..=NODE_ENTRIES as u64 {
        assert!(t.entry(owner, gpu, 1, 0).unwrap().is_some());
    }
    assert!(t.entry(9999, gpu, 1, STALE_NS).unwrap().is_none(), "full of live containers");
    let reused = t.entry(9999, gpu, 1, STALE_NS + 1).unwrap().unwrap();
    assert_eq!(reused.owner.load(Relaxed), 9999);
}

#[test]
fn the_token_moves_by_compare_and_swap_and_a_lapsed_lease_frees_it() {
    let (_d, t) = table();
    let tok = t.token(key("GPU-0")).unwrap();
    assert!(std::ptr::eq(tok, t.token(key("GPU-0")).unwrap()), "one token per GPU");
    assert!(!std::ptr::eq(tok, t.token(key("GPU-1")).unwrap()));
    let now = 5_000 * MS;
    let free = tok.holder();
    assert_eq!(free.entry, None);
    assert!(free.expired(now));
    assert!(tok.pass(free, Some(3), now));
    assert!(!tok.pass(free, Some(4), now), "a stale view cannot move it");
    let h = tok.holder();
    assert_eq!((h.entry, h.generation), (Some(3), free.generation + 1));
    assert_eq!(tok.slice_start.load(Relaxed), now);
    assert!(!h.expired(now + GRANT_NS - MS));
    assert!(h.expired(now + GRANT_NS + 2 * MS), "a grantee that does not renew loses it");
    assert!(tok.renew(3, now + MS));
    assert!(!tok.holder().expired(now + LEASE_NS), "renewed for a lease");
    assert!(tok.holder().expired(now + LEASE_NS + 2 * MS), "a holder that stops renewing loses it");
    assert!(tok.renew(3, now + 40 * MS));
    assert!(!tok.holder().expired(now + LEASE_NS + 2 * MS), "renewed");
    assert!(!tok.renew(4, now), "only the holder renews");
    assert!(tok.shorten_lease(3, now + 41 * MS));
    assert!(tok.holder().expired(now + 43 * MS), "a shortened lease runs out early");
    assert!(tok.renew(3, now + 42 * MS), "and the holder can still renew it");
    assert!(!tok.shorten_lease(4, now), "only the holder's");
    let h = tok.holder();
    assert!(tok.pass(h, None, now + 41 * MS));
    assert_eq!(tok.holder().entry, None);
    assert_eq!(tok.handoffs.load(Relaxed), 2);
    for i in 0..NODE_GPUS as u64 - 2 {
        assert!(t.token(1000 + i).is_some());
    }
    assert!(t.token(99_999).is_none(), "all tokens in use");
}

#[test]
fn a_waiter_wakes_when_the_token_moves_and_not_later_than_its_timeout() {
    let (_d, t) = table();
    let tok: &'static GpuToken = unsafe_leak(t).token(7).unwrap();
    let seen = tok.changes();
    let waiter = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        tok.wait_for_change(seen, Duration::from_secs(5));
        start.elapsed()
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(tok.pass(tok.holder(), Some(1), 1_000 * MS));
    let waited = waiter.join().unwrap();
    assert!(waited < Duration::from_secs(2), "woken by the pass, not the timeout: {waited:?}");
    let start = std::time::Instant::now();
    tok.wait_for_change(tok.changes(), Duration::from_millis(20));
    assert!(start.elapsed() >= Duration::from_millis(15), "slept until the timeout");
    tok.wait_for_change(tok.changes().wrapping_sub(1), Duration::from_secs(5));
}

/// The table for the rest of the test process (a waiter thread borrows it).
fn unsafe_leak(t: NodeTable) -> &'static NodeTable {
    Box::leak(Box::new(t))
}

#[test]
fn contenders_are_fresh_claims_on_the_gpu() {
    let (_d, t) = table();
    let (g0, g1) = (key("GPU-0"), key("GPU-1"));
    let now = 10_000 * MS;
    let a = t.entry(1, g0, 1, now).unwrap().unwrap();
    let b = t.entry(2, g0, HIGH_PRIORITY, now).unwrap().unwrap();
    let c = t.entry(3, g1, 1, now).unwrap().unwrap();
    a.share_ppm.store(300_000, Relaxed);
    a.held_ns.store(7, Relaxed);
    a.set_claim(Some(Claim::Guaranteed), now);
    b.set_claim(Some(Claim::Unlimited), now - CLAIM_FRESH_NS - 1);
    c.set_claim(Some(Claim::Burst), now);
    let got: Vec<_> = t.contenders(g0, now).collect();
    assert_eq!(
        got,
        vec![(
            t.index_of(a).unwrap(),
            Contender { high_priority: false, claim: Claim::Guaranteed, held_ns: 7, share_ppm: 300_000 }
        )],
        "b's claim is stale, c is on another GPU"
    );
    assert_eq!(t.entries().get(t.index_of(b).unwrap()).map(|e| e as *const _), Some(b as *const _));
    a.set_claim(None, now);
    assert_eq!(t.contenders(g0, now).count(), 0, "withdrawn");
    assert!(!t.has_limited(2, now), "a has not been busy");
    a.mark_busy(now);
    assert!(t.has_limited(2, now) && !t.has_limited(1, now), "a container is not its own neighbour");
}

#[test]
fn links_other_files_and_a_held_lock_are_refused_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    assert!(NodeTable::open(&link, 0o600, None).is_err(), "a symbolic link is never followed");
    assert_eq!(std::fs::metadata(&victim).unwrap().len(), 0, "the link's target is untouched");
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(NodeTable::open(&fifo, 0o600, None).is_err(), "not a regular file");
    // A stopped process holding the lock: the open gives up after LOCK_WAIT.
    let path = dir.path().join("node");
    NodeTable::open(&path, 0o600, None).unwrap();
    let holder = File::options().read(true).write(true).open(&path).unwrap();
    assert!(lock::try_lock(&holder, 0).unwrap());
    let start = std::time::Instant::now();
    assert!(NodeTable::open(&path, 0o600, None).is_err());
    assert!(start.elapsed() < LOCK_WAIT * 5, "bounded: {:?}", start.elapsed());
}

#[test]
fn a_version_1_table_is_not_joined() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1");
    std::fs::write(&path, vec![0u8; 64 + 256 * 64]).unwrap();
    assert!(matches!(NodeTable::open(&path, 0o600, None), Err(RegionError::Foreign(..))));
}

#[test]
fn a_second_open_sees_the_same_table_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    let a = NodeTable::open(&path, 0o600, None).unwrap();
    a.entry(7, 1, 1, 5).unwrap().unwrap().mark_busy(5);
    let b = NodeTable::open(&path, 0o600, None).unwrap();
    assert_eq!(b.neighbours(8, 1, 5).active, 1);
    let other = dir.path().join("other");
    std::fs::write(&other, b"not a table").unwrap();
    assert!(matches!(NodeTable::open(&other, 0o600, None), Err(RegionError::Foreign(..))));
}
