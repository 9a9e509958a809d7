//! The node table: where the containers that share a GPU meet. One small file per node (every
//! container mounts it at the same path), holding
//! - one entry per container and GPU: when the container last had work there, its priority,
//!   its limit and whether it bursts, and what it asks of the GPU now (its [`Claim`] and when it
//!   last asked), with the wall time it has held the GPU (its virtual time's numerator);
//! - one [`GpuToken`] per GPU: which container may have work in flight now, until when its
//!   lease runs, and since when it holds it (`vgpu_core::sched` has the policy).
//!
//! Entries are claimed under the file's byte lock (once per process and device; the wait for
//! it is bounded, so a stopped container holding it cannot stall the others) and only read and
//! written through atomics afterwards, as the region is (same safety contract as `map`). An entry
//! nobody has touched for [`STALE_NS`] belongs to a container that is gone and is reused. The
//! token is one atomic word (holder, generation, lease), moved by compare-and-swap only; a holder
//! that stops renewing its lease (killed, `docker pause`d) loses the token when it runs out.
//! Entries also keep what a context costs on their GPU, so that only the node's first capped
//! process pays NVML's start-up to measure it.
//!
//! Version 2 (the token) is a different file from version 1: the default path names the version.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};
use vgpu_core::config::TrustedOwners;
use vgpu_core::sched::{Claim, Contender};

use crate::lock;
use crate::map::RegionError;
use crate::open::open_shared;
pub use crate::token::{GRANT_NS, GpuToken, Holder, LEASE_NS};

pub const NODE_MAGIC: u64 = u64::from_le_bytes(*b"VGPUNODE");
pub const NODE_VERSION: u32 = 2;
pub const NODE_ENTRIES: usize = 256;
/// GPUs a node table coordinates (a token each).
pub const NODE_GPUS: usize = 32;
/// An entry untouched this long belongs to a container that is gone.
pub const STALE_NS: u64 = 60_000_000_000;
/// A container that had work on its GPU this recently is active there.
pub const ACTIVE_NS: u64 = 10_000_000;
/// Low-priority containers stay off a GPU this long after a high-priority one's last sign of
/// work. Longer than `ACTIVE_NS`: the high-priority thread may sit in a launch, its queue full
/// behind the low ones' queued kernels, unable to say it is busy; a 10 ms hold lets the low ones
/// back every ~16 ms, and the two then share the GPU half and half (tests/limiter.rs).
pub const HIGH_PRIORITY_HOLD_NS: u64 = 100_000_000;
/// A claim not repeated for this long is withdrawn (its container stopped asking, or died).
pub const CLAIM_FRESH_NS: u64 = 20_000_000;
/// How long the file's byte lock is waited for before the table is given up on.
pub const LOCK_WAIT: Duration = Duration::from_millis(100);

/// Priorities as HAMi's `CUDA_TASK_PRIORITY` spells them.
pub const HIGH_PRIORITY: u32 = 0;
/// `NodeEntry::flags`: the container bursts beyond its limit into idle time.
pub const FLAG_BURST: u32 = 1;

#[repr(C)]
pub struct NodeEntry {
    /// The container's key (non-zero); 0 = free.
    pub owner: AtomicU64,
    /// The GPU's key (a hash of its UUID).
    pub gpu: AtomicU64,
    /// CLOCK_MONOTONIC ns up to which the container had work on the GPU.
    pub busy_until: AtomicU64,
    /// CLOCK_MONOTONIC ns of the last time a process of the container touched the entry.
    pub seen: AtomicU64,
    pub priority: AtomicU32,
    /// [`FLAG_BURST`].
    pub flags: AtomicU32,
    /// Device memory one context costs on this GPU, as this container measured it (0 = not).
    pub context_cost: AtomicU64,
    /// The container's limit on this GPU, ppm (0 = unlimited).
    pub share_ppm: AtomicU32,
    /// What it asks of the GPU ([`Claim::to_wire`]; 0 = nothing).
    pub claim: AtomicU32,
    /// CLOCK_MONOTONIC ns of the last time it repeated its claim.
    pub claimed_at: AtomicU64,
    /// Wall time it has held the GPU's token, ns.
    pub held_ns: AtomicU64,
    pub reserved: [AtomicU64; 7],
}

#[repr(C)]
pub struct NodeHeader {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub entries: AtomicU32,
    pub gpus: AtomicU32,
    pub pad: AtomicU32,
    pub reserved: [AtomicU64; 5],
}

const _: () = assert!(size_of::<NodeEntry>() == 128 && size_of::<NodeHeader>() == 64 && size_of::<GpuToken>() == 64);
const TOKENS_OFFSET: usize = size_of::<NodeHeader>();
const ENTRIES_OFFSET: usize = TOKENS_OFFSET + NODE_GPUS * size_of::<GpuToken>();
pub const NODE_FILE_SIZE: usize = ENTRIES_OFFSET + NODE_ENTRIES * size_of::<NodeEntry>();

/// What a container sees of the others on its GPU.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Neighbours {
    /// Other containers with work on the GPU now.
    pub active: u32,
    /// Whether one of them has high priority.
    pub high_priority_active: bool,
}

pub struct NodeTable {
    map: MmapRaw,
    file: File,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for NodeTable {}
// SAFETY: as above: every access is an atomic load, store or read-modify-write.
unsafe impl Sync for NodeTable {}

impl NodeTable {
    /// Opens the table at `path`, creating it (with `mode`, not through the umask) if needed.
    /// Never follows a symbolic link nor opens anything but a regular file, and joins a file of
    /// another owner only as `trust` allows (`None`: operator tools, which only read).
    pub fn open(path: &Path, mode: u32, trust: Option<&TrustedOwners>) -> Result<NodeTable, RegionError> {
        let io = |e| RegionError::Io(path.to_path_buf(), e);
        let (file, _created) = open_shared(path, true, mode, trust)?;
        if !lock::lock_within(&file, 0, LOCK_WAIT).map_err(io)? {
            return Err(RegionError::Io(
                path.to_path_buf(),
                io::Error::new(io::ErrorKind::TimedOut, "its lock is held by a process that does not let go"),
            ));
        }
        let result = Self::init_locked(file, path);
        if let Ok(t) = &result {
            let _ = lock::unlock(&t.file, 0);
        }
        result
    }

    fn init_locked(file: File, path: &Path) -> Result<NodeTable, RegionError> {
        let io = |e| RegionError::Io(path.to_path_buf(), e);
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            file.set_len(NODE_FILE_SIZE as u64).map_err(io)?;
        } else if len != NODE_FILE_SIZE as u64 {
            return Err(RegionError::Foreign(
                path.to_path_buf(),
                format!("{len} bytes, not a v{NODE_VERSION} node table"),
            ));
        }
        let map = MmapOptions::new().len(NODE_FILE_SIZE).map_raw(&file).map_err(io)?;
        let table = NodeTable { map, file };
        let h = table.header();
        match h.magic.load(Acquire) {
            NODE_MAGIC => {}
            0 if len == 0 => {
                h.version.store(NODE_VERSION, Relaxed);
                h.entries.store(NODE_ENTRIES as u32, Relaxed);
                h.gpus.store(NODE_GPUS as u32, Relaxed);
                h.magic.store(NODE_MAGIC, Release);
            }
            other => return Err(RegionError::Corrupt(path.to_path_buf(), format!("node table magic {other:#x}"))),
        }
        let (v, n, g) = (h.version.load(Relaxed), h.entries.load(Relaxed), h.gpus.load(Relaxed));
        if v != NODE_VERSION || n as usize != NODE_ENTRIES || g as usize != NODE_GPUS {
            return Err(RegionError::WrongVersion(
                path.to_path_buf(),
                format!("node table v{v} with {n} entries and {g} GPUs"),
            ));
        }
        Ok(table)
    }

    fn header(&self) -> &NodeHeader {
        // SAFETY: the mapping is NODE_FILE_SIZE bytes, page-aligned, and only accessed atomically.
        unsafe { &*(self.map.as_ptr() as *const NodeHeader) }
    }

    fn tokens(&self) -> &[GpuToken] {
        // SAFETY: as `header`; the tokens follow the 64-byte header.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(TOKENS_OFFSET) as *const GpuToken, NODE_GPUS) }
    }

    fn entries(&self) -> &[NodeEntry] {
        // SAFETY: as `header`; the entries follow the tokens, within NODE_FILE_SIZE.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(ENTRIES_OFFSET) as *const NodeEntry, NODE_ENTRIES) }
    }

    /// The entry of container `owner` on GPU `gpu`, claimed if it has none (a free or stale
    /// entry); `None` when the table is full of live containers.
    pub fn entry(&self, owner: u64, gpu: u64, priority: u32, now: u64) -> io::Result<Option<&NodeEntry>> {
        let owner = owner.max(1);
        if let Some(e) = self.find(owner, gpu) {
            e.priority.store(priority, Relaxed);
            e.seen.fetch_max(now, Relaxed);
            return Ok(Some(e));
        }
        // Claiming is rare and must not give one container two entries: under the lock.
        if !lock::lock_within(&self.file, 0, LOCK_WAIT)? {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the node table's lock is held by a stopped process"));
        }
        let claimed = self.find(owner, gpu).or_else(|| {
            let e = self
                .entries()
                .iter()
                .find(|e| e.owner.load(Acquire) == 0 || now.saturating_sub(e.seen.load(Relaxed)) > STALE_NS)?;
            for field in [&e.busy_until, &e.context_cost, &e.claimed_at, &e.held_ns] {
                field.store(0, Relaxed);
            }
            for field in [&e.flags, &e.share_ppm, &e.claim] {
                field.store(0, Relaxed);
            }
            e.gpu.store(gpu, Relaxed);
            e.priority.store(priority, Relaxed);
            e.seen.store(now, Relaxed);
            e.owner.store(owner, Release);
            Some(e)
        });
        let _ = lock::unlock(&self.file, 0);
        Ok(claimed)
    }

    fn find(&self, owner: u64, gpu: u64) -> Option<&NodeEntry> {
        self.entries().iter().find(|e| e.owner.load(Acquire) == owner && e.gpu.load(Relaxed) == gpu)
    }

    /// The index of `entry` in this table (it must be one of its entries).
    pub fn index_of(&self, entry: &NodeEntry) -> Option<usize> {
        let base = self.entries().as_ptr() as usize;
        let at = entry as *const NodeEntry as usize;
        let i = at.checked_sub(base)? / size_of::<NodeEntry>();
        (i < NODE_ENTRIES).then_some(i)
    }

    /// The token of GPU `gpu`, taken into use if it has none; `None` when all are in use.
    pub fn token(&self, gpu: u64) -> Option<&GpuToken> {
        let gpu = gpu.max(1);
        for t in self.tokens() {
            match t.gpu.compare_exchange(0, gpu, AcqRel, Acquire) {
                Ok(_) => return Some(t),
                Err(g) if g == gpu => return Some(t),
                Err(_) => {}
            }
        }
        None
    }

    /// The containers on `gpu` that claim it now, as the policy sees them, with their indices.
    pub fn contenders(&self, gpu: u64, now: u64) -> impl Iterator<Item = (usize, Contender)> + '_ {
        self.entries().iter().enumerate().filter_map(move |(i, e)| {
            if e.owner.load(Acquire) == 0 || e.gpu.load(Relaxed) != gpu {
                return None;
            }
            if now.saturating_sub(e.claimed_at.load(Relaxed)) > CLAIM_FRESH_NS {
                return None;
            }
            let claim = Claim::from_wire(e.claim.load(Relaxed))?;
            Some((
                i,
                Contender {
                    high_priority: e.priority.load(Relaxed) == HIGH_PRIORITY,
                    claim,
                    held_ns: e.held_ns.load(Relaxed),
                    share_ppm: e.share_ppm.load(Relaxed) as u64,
                },
            ))
        })
    }

    /// The containers other than `owner` that have work on GPU `gpu` now.
    pub fn neighbours(&self, owner: u64, gpu: u64, now: u64) -> Neighbours {
        let mut n = Neighbours::default();
        for e in self.entries() {
            let who = e.owner.load(Acquire);
            if who == 0 || who == owner.max(1) || e.gpu.load(Relaxed) != gpu {
                continue;
            }
            let busy_until = e.busy_until.load(Relaxed);
            if busy_until.saturating_add(ACTIVE_NS) >= now {
                n.active += 1;
            }
            if e.priority.load(Relaxed) == HIGH_PRIORITY && busy_until.saturating_add(HIGH_PRIORITY_HOLD_NS) >= now {
                n.high_priority_active = true;
            }
        }
        n
    }

    /// What a context costs on GPU `gpu`, as measured by the containers on it: the smallest
    /// figure, since a measurement (the device's growth while creating it) can only be inflated
    /// by other processes allocating at the same moment.
    pub fn context_cost(&self, gpu: u64) -> Option<u64> {
        self.entries()
            .iter()
            .filter(|e| e.owner.load(Acquire) != 0 && e.gpu.load(Relaxed) == gpu)
            .map(|e| e.context_cost.load(Relaxed))
            .filter(|&c| c > 0)
            .min()
    }

    /// Whether any container with high priority has an entry that is not stale (on any GPU).
    pub fn has_high_priority(&self, now: u64) -> bool {
        self.entries().iter().any(|e| {
            e.owner.load(Acquire) != 0
                && e.priority.load(Relaxed) == HIGH_PRIORITY
                && now.saturating_sub(e.seen.load(Relaxed)) <= STALE_NS
        })
    }

    /// Whether a container other than `owner` with a limit (or bursting) had work on some GPU
    /// within the last second: then unlimited containers take part in the token too, or their
    /// work would overlap the limited ones' and be charged to them.
    pub fn has_limited(&self, owner: u64, now: u64) -> bool {
        self.entries().iter().any(|e| {
            let who = e.owner.load(Acquire);
            who != 0
                && who != owner.max(1)
                && e.share_ppm.load(Relaxed) != 0
                && e.busy_until.load(Relaxed).saturating_add(1_000_000_000) >= now
        })
    }
}

impl NodeEntry {
    /// The container has (or just had) work on the GPU at `now`.
    pub fn mark_busy(&self, now: u64) {
        self.busy_until.fetch_max(now, Relaxed);
        self.seen.fetch_max(now, Relaxed);
    }

    /// Says what the container asks of the GPU now (`None`: nothing).
    pub fn set_claim(&self, claim: Option<Claim>, now: u64) {
        self.claim.store(claim.map_or(0, Claim::to_wire), Relaxed);
        self.claimed_at.store(now, Relaxed);
    }

    pub fn claim(&self) -> Option<Claim> {
        Claim::from_wire(self.claim.load(Relaxed))
    }
}

/// A key for a string (a GPU's UUID, a region's path): FNV-1a, never 0.
pub fn key(text: &str) -> u64 {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    h.max(1)
}

#[cfg(test)]
mod tests {
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
}
