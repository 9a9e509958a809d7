//! The node table: where the containers that share a GPU meet. One small file per node (every
//! container mounts it at the same path), one entry per container and GPU, holding when the
//! container last had work on that GPU and its priority. The compute limiter reads its
//! neighbours from it: a container whose work shares the GPU's time with k others is charged
//! 1/(k+1) of its busy time (its kernels waited for theirs), and a low-priority container yields
//! while a high-priority one is active.
//!
//! Entries are claimed under the file's byte lock (once per process and device) and only read
//! and written through atomics afterwards, as the region is (same safety contract as `map`).
//! An entry nobody has touched for [`STALE_NS`] belongs to a container that is gone and is reused.
//! Entries also keep what a context costs on their GPU, so that only the node's first capped
//! process pays NVML's start-up to measure it.

use std::fs::File;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64};

use memmap2::{MmapOptions, MmapRaw};

use crate::lock;
use crate::map::RegionError;

pub const NODE_MAGIC: u64 = u64::from_le_bytes(*b"VGPUNODE");
pub const NODE_VERSION: u32 = 1;
pub const NODE_ENTRIES: usize = 256;
/// An entry untouched this long belongs to a container that is gone.
pub const STALE_NS: u64 = 60_000_000_000;
/// A container that had work on its GPU this recently is active there.
pub const ACTIVE_NS: u64 = 10_000_000;
/// Low-priority containers stay off a GPU this long after a high-priority one's last sign of
/// work. Longer than `ACTIVE_NS`: the high-priority thread may sit in a launch, its queue full
/// behind the low ones' queued kernels, unable to say it is busy; with 10 ms the low ones came
/// back every ~16 ms and the two shared the GPU half and half (tests/limiter.rs).
pub const HIGH_PRIORITY_HOLD_NS: u64 = 100_000_000;

/// Priorities as HAMi's `CUDA_TASK_PRIORITY` spells them.
pub const HIGH_PRIORITY: u32 = 0;

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
    pub pad: AtomicU32,
    /// Device memory one context costs on this GPU, as this container measured it (0 = not).
    pub context_cost: AtomicU64,
    pub reserved: [AtomicU64; 2],
}

#[repr(C)]
pub struct NodeHeader {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub entries: AtomicU32,
    pub reserved: [AtomicU64; 6],
}

const _: () = assert!(size_of::<NodeEntry>() == 64 && size_of::<NodeHeader>() == 64);
pub const NODE_FILE_SIZE: usize = size_of::<NodeHeader>() + NODE_ENTRIES * size_of::<NodeEntry>();

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
unsafe impl Sync for NodeTable {}

impl NodeTable {
    /// Opens the table at `path`, creating it (with `mode`, not through the umask) if needed.
    pub fn open(path: &Path, mode: u32) -> Result<NodeTable, RegionError> {
        let io = |e| RegionError::Io(path.to_path_buf(), e);
        let file = match File::options().read(true).write(true).create_new(true).mode(mode).open(path) {
            Ok(f) => {
                f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io)?;
                f
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                File::options().read(true).write(true).open(path).map_err(io)?
            }
            Err(e) => return Err(io(e)),
        };
        lock::lock(&file, 0).map_err(io)?;
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
            return Err(RegionError::Foreign(path.to_path_buf(), format!("{len} bytes, not a node table")));
        }
        let map = MmapOptions::new().len(NODE_FILE_SIZE).map_raw(&file).map_err(io)?;
        let table = NodeTable { map, file };
        let h = table.header();
        match h.magic.load(Acquire) {
            NODE_MAGIC => {}
            0 if len == 0 => {
                h.version.store(NODE_VERSION, Relaxed);
                h.entries.store(NODE_ENTRIES as u32, Relaxed);
                h.magic.store(NODE_MAGIC, Release);
            }
            other => return Err(RegionError::Corrupt(path.to_path_buf(), format!("node table magic {other:#x}"))),
        }
        let (v, n) = (h.version.load(Relaxed), h.entries.load(Relaxed));
        if v != NODE_VERSION || n as usize != NODE_ENTRIES {
            return Err(RegionError::WrongVersion(path.to_path_buf(), format!("node table v{v} with {n} entries")));
        }
        Ok(table)
    }

    fn header(&self) -> &NodeHeader {
        // SAFETY: the mapping is NODE_FILE_SIZE bytes, page-aligned, and only accessed atomically.
        unsafe { &*(self.map.as_ptr() as *const NodeHeader) }
    }

    fn entries(&self) -> &[NodeEntry] {
        // SAFETY: as `header`; the entries follow the 64-byte header.
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(size_of::<NodeHeader>()) as *const NodeEntry, NODE_ENTRIES)
        }
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
        lock::lock(&self.file, 0)?;
        let claimed = self.find(owner, gpu).or_else(|| {
            let e = self
                .entries()
                .iter()
                .find(|e| e.owner.load(Acquire) == 0 || now.saturating_sub(e.seen.load(Relaxed)) > STALE_NS)?;
            e.busy_until.store(0, Relaxed);
            e.context_cost.store(0, Relaxed);
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
}

impl NodeEntry {
    /// The container has (or just had) work on the GPU at `now`.
    pub fn mark_busy(&self, now: u64) {
        self.busy_until.fetch_max(now, Relaxed);
        self.seen.fetch_max(now, Relaxed);
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
        let t = NodeTable::open(&dir.path().join("node"), 0o600).unwrap();
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
    fn a_second_open_sees_the_same_table_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node");
        let a = NodeTable::open(&path, 0o600).unwrap();
        a.entry(7, 1, 1, 5).unwrap().unwrap().mark_busy(5);
        let b = NodeTable::open(&path, 0o600).unwrap();
        assert_eq!(b.neighbours(8, 1, 5).active, 1);
        let other = dir.path().join("other");
        std::fs::write(&other, b"not a table").unwrap();
        assert!(matches!(NodeTable::open(&other, 0o600), Err(RegionError::Foreign(..))));
    }
}
