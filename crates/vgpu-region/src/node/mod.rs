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
mod tests;
