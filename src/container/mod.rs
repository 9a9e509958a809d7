//! The ledger's counters: the container's shared region, or a private one when the file cannot
//! be used (degrade, never die: one stderr line, then the env limits hold per process).
//!
//! Fork: a child shares its parent's open file description and so its OFD slot lock; it must
//! never write the parent's slot. A `pthread_atfork` child handler bumps a generation; the next
//! accounting call in the child opens its own description and claims its own slot, and the
//! ledger forgets the parent's records (the generation is the ledger's epoch). (Registering
//! an atfork handler changes nothing for the application: no signal, umask or environment.)
//!
//! Exit: an `atexit` handler gives the slot back, so a clean exit leaves no dead slot behind
//! (a crash still does; the next refused charge or `vgpu reap` reclaims it).
//!
//! The file under us: [`watch`] tells us when the region file is truncated, deleted or
//! replaced while we use it. Truncated: the mapping is replaced by private memory first (its
//! pages would raise SIGBUS), then, as for a deleted or replaced file, we re-attach to whatever
//! region the path names now (creating it, with the live limits, if nobody has) and charge this
//! process's own records there: the container's processes meet again in one region and the cap
//! holds, with one line on stderr saying so.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize};

use vgpu_core::MAX_DEVICES;
use vgpu_core::config::{Config, TrustedOwners};
use vgpu_core::ledger::{Accounting, Kind, MemoryLedger};
use vgpu_core::limiter::BucketState;
use vgpu_region::layout::{FILE_SIZE, MAGIC, slot_offset};
use vgpu_region::{InitParams, Limit, LimitChange, Region, RegionAccounting, SlotState};

mod watch;

/// A device's index in the container's region: the same physical GPU in every process of the
/// container. Not a CUDA ordinal, which numbers the devices this process sees (its
/// `CUDA_VISIBLE_DEVICES`) and is what the ledger and the hooks name a device by; only
/// [`Container::index`] turns one into the other.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RegionIndex(usize);

impl RegionIndex {
    /// The position in the region's per-device arrays (out of range for a device left out).
    pub fn get(self) -> usize {
        self.0
    }

    /// Back from [`get`](Self::get), for a cache of indices that keeps plain words.
    pub fn from_stored(index: usize) -> Self {
        RegionIndex(index)
    }
}

impl std::fmt::Display for RegionIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where the process's ledger lives (the state, which owns it): a re-attach charges the new
/// region with what the ledger records, and the watcher thread that re-attaches needs it.
pub type LedgerOf = fn() -> &'static MemoryLedger<Container>;

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// How often a memory query may reap dead slots (see `Container::reap_now_and_then`).
const REAP_EVERY_NS: u64 = 100_000_000;

/// The attachment in use, for the `atexit` handler (the same pointer as `current`).
static EXIT_TARGET: AtomicPtr<Attachment> = AtomicPtr::new(std::ptr::null_mut());

/// Gives this process's slot back on a clean exit: no dead slot, no stale context charge.
/// Threads still running after `exit` began may charge the slot again; it is then a free slot
/// with usage, which the next claimer or reaper zeroes.
/// The slot was given back at exit already (by the `atexit` handler or the library's destructor,
/// whichever ran first): never twice, since a second release could free a slot that another
/// process claimed in between.
static RELEASED: AtomicBool = AtomicBool::new(false);

/// Held while the process moves to another region (a re-attach, or a forked child's first
/// attach). Exit takes it too: a process that exits while its watcher is re-attaching waits for
/// that to finish, so the new region is charged and the one line saying so is written.
static REATTACH: Mutex<()> = Mutex::new(());

extern "C" fn release_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if RELEASED.swap(true, AcqRel) {
            return;
        }
        let _settled = REATTACH.lock().unwrap_or_else(|p| p.into_inner());
        let a = EXIT_TARGET.load(Acquire);
        if a.is_null() {
            return;
        }
        // SAFETY: EXIT_TARGET only ever points at a leaked, never-freed Attachment.
        let a = unsafe { &*a };
        // A forked child that never attached on its own holds its parent's slot: not ours.
        if a.generation == FORK_GENERATION.load(Relaxed) && a.accounting.region().file().is_some() {
            a.accounting.region().release_slot(a.accounting.slot());
        }
    });
}

/// What happened to the region file under us (see `Container::file_change`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChange {
    /// Shorter than a region: its pages are gone from under the mapping.
    Truncated,
    /// Unlinked: the next process would create a new region at the path.
    Deleted,
    /// The path names another file now.
    Replaced,
    /// Same file, re-initialised by someone (HAMi's `shrreg-tool --create_new`), or our slot
    /// was taken from us.
    Reset,
}

impl FileChange {
    fn describe(self) -> &'static str {
        match self {
            FileChange::Truncated => "was truncated",
            FileChange::Deleted => "was deleted",
            FileChange::Replaced => "was replaced by another file",
            FileChange::Reset => "was re-initialised",
        }
    }
}

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Relaxed);
}

struct Attachment {
    accounting: RegionAccounting,
    generation: u64,
}

pub struct Container {
    /// Leaked on replacement (after a fork): a mapping is 2 MiB of address space, once per fork.
    current: AtomicPtr<Attachment>,
    init: InitParams,
    path: String,
    mode: u32,
    trust: TrustedOwners,
    /// The UUIDs last placed (`place_devices`), to place them again in a new region.
    uuids: Mutex<Vec<String>>,
    ledger: LedgerOf,
    /// The region's index of each CUDA ordinal of this process (see `Region::place_uuids`);
    /// the ordinal itself until CUDA names the devices, `MAX_DEVICES` for one left out.
    index: [AtomicUsize; MAX_DEVICES],
}

impl Container {
    pub fn new(config: &Config, ledger: LedgerOf) -> Self {
        let init = InitParams {
            limits: config.memory_limit,
            sm_limits: config.sm_limit,
            uuids: Vec::new(),
            priority: config.priority,
        };
        let attachment = attach(&config.shared_cache, config.region_mode, &init, &config.trusted, ledger);
        // SAFETY: registering plain functions with no captured state; neither touches signals,
        // the umask or the environment.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
            libc::atexit(release_at_exit);
        }
        let current = Box::into_raw(Box::new(attachment));
        EXIT_TARGET.store(current, Release);
        Container {
            current: AtomicPtr::new(current),
            init,
            path: config.shared_cache.clone(),
            mode: config.region_mode,
            trust: config.trusted.clone(),
            uuids: Mutex::new(Vec::new()),
            ledger,
            index: std::array::from_fn(AtomicUsize::new),
        }
    }

    /// The region's index for CUDA ordinal `dev`: the same physical GPU in every process of the
    /// container, whatever each one's `CUDA_VISIBLE_DEVICES`. Out of range stays out of range.
    pub fn index(&self, dev: usize) -> RegionIndex {
        RegionIndex(self.index.get(dev).map_or(dev, |i| i.load(Relaxed)))
    }

    /// The region index of a GPU by UUID, if a process of the container placed it.
    pub fn index_of_uuid(&self, uuid: &str) -> Option<RegionIndex> {
        self.region().index_of_uuid(uuid).map(RegionIndex)
    }

    /// The cap at a region index (NVML names devices by UUID, not by this process's ordinals).
    pub fn limit_at(&self, index: RegionIndex) -> Option<u64> {
        self.get().limit(index.0)
    }

    /// Publishes this process's spill limit for CUDA ordinal `dev` where `vgpu status` and the
    /// metrics read it (each process enforces its own; see the extension's `spill_limit`).
    pub fn publish_spill_limit(&self, dev: usize, bytes: u64) {
        if let Some(l) = self.region().extension().spill_limit.get(self.index(dev).0) {
            l.store(bytes, SeqCst);
        }
    }

    /// The SM limit (percent; 0 or 100 and above: none) at a region index, read live.
    pub fn sm_limit_at(&self, index: RegionIndex) -> u64 {
        self.region().shared().sm_limit.get(index.0).map_or(0, |l| l.load(Relaxed))
    }

    /// The compute budget of CUDA ordinal `dev`, shared by the container's processes.
    pub fn bucket(&self, dev: usize) -> Option<&BucketState> {
        self.region().extension().buckets.get(self.index(dev).0)
    }

    /// The container's usage at a region index.
    pub fn used_at(&self, index: RegionIndex) -> u64 {
        self.reap_now_and_then();
        self.get().used(index.0)
    }

    /// Usage shown to the application (memory views, NVML) must not include the memory of
    /// processes that died without giving their slot back (the driver freed it with them): reap
    /// dead slots before answering, at most every [`REAP_EVERY_NS`] (one `fcntl` per slot in
    /// use, so a query costs nothing more most of the time).
    fn reap_now_and_then(&self) {
        static LAST: AtomicU64 = AtomicU64::new(0);
        let now = crate::clock::now_ns();
        let last = LAST.load(Relaxed);
        if now.saturating_sub(last) < REAP_EVERY_NS || LAST.compare_exchange(last, now, Relaxed, Relaxed).is_err() {
            return;
        }
        let acc = self.get();
        acc.region().reap(Some(acc.slot()));
    }

    /// Places this process's devices (UUIDs by ordinal) in the region; returns the indices.
    pub fn place_devices(&self, uuids: &[String]) -> Vec<Option<RegionIndex>> {
        *self.uuids.lock().unwrap_or_else(|p| p.into_inner()) = uuids.to_vec();
        let placed = self.region().place_uuids(uuids);
        self.remember_places(&placed);
        placed.into_iter().map(|i| i.map(RegionIndex)).collect()
    }

    /// Keeps the region's index of each ordinal, as `Region::place_uuids` returned them.
    fn remember_places(&self, placed: &[Option<usize>]) {
        for (slot, index) in self.index.iter().zip(placed) {
            slot.store(index.unwrap_or(MAX_DEVICES), Relaxed);
        }
    }

    fn get(&self) -> &RegionAccounting {
        // SAFETY: `current` always points at a leaked, never-freed Attachment.
        let a = unsafe { &*self.current.load(Acquire) };
        if a.generation == FORK_GENERATION.load(Relaxed) {
            return &a.accounting;
        }
        self.after_fork()
    }

    #[cold]
    fn after_fork(&self) -> &RegionAccounting {
        let _guard = REATTACH.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: as in `get`.
        let a = unsafe { &*self.current.load(Acquire) };
        if a.generation != FORK_GENERATION.load(Relaxed) {
            let fresh = Box::into_raw(Box::new(attach(&self.path, self.mode, &self.init, &self.trust, self.ledger)));
            self.current.store(fresh, Release);
            EXIT_TARGET.store(fresh, Release);
        }
        // SAFETY: as in `get`.
        unsafe { &(*self.current.load(Acquire)).accounting }
    }

    pub fn region(&self) -> &Region {
        self.get().region()
    }

    /// The container's live processes with memory charged on region index `index`: (PID as the
    /// container sees it, bytes). For NVML's process lists where the driver's is useless.
    pub fn processes_on(&self, index: RegionIndex) -> Vec<(u32, u64)> {
        let acc = self.get();
        let region = acc.region();
        let s = region.shared();
        (0..region.slots_in_use())
            .filter_map(|i| {
                let slot = &s.procs[i];
                let used = slot.used.get(index.0)?.total.load(SeqCst);
                let pid = u32::try_from(slot.pid.load(SeqCst)).ok().filter(|&p| p != 0)?;
                let alive = region.slot_state(i, Some(acc.slot())) == SlotState::Alive;
                (used > 0 && alive).then_some((pid, used))
            })
            .collect()
    }

    /// At exit (the library's destructor): gives this process's slot back, once, as the
    /// `atexit` handler would (whichever runs first).
    pub fn release_at_exit(&self) {
        release_at_exit();
    }

    /// The region file's path when this process shares one (for [`watch`]).
    pub fn watched_path(&self) -> Option<&str> {
        self.get().region().file().map(|_| self.path.as_str())
    }

    /// Whether the region file changed under us. Reads the file only through `fstat`, `stat`
    /// and `pread`, never through the mapping (a truncated file's pages raise SIGBUS).
    pub fn file_change(&self) -> Option<FileChange> {
        let acc = self.get();
        let region = acc.region();
        let meta = region.file()?.metadata().ok()?;
        if meta.len() < FILE_SIZE as u64 {
            return Some(FileChange::Truncated);
        }
        if meta.nlink() == 0 {
            return Some(FileChange::Deleted);
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() != meta.dev() || m.ino() != meta.ino() => return Some(FileChange::Replaced),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(FileChange::Deleted),
            _ => {}
        }
        let flag = region.pread::<4>(0).map(i32::from_le_bytes);
        let pid = region.pread::<4>(slot_offset(acc.slot())).map(i32::from_le_bytes);
        match (flag, pid) {
            (Some(f), Some(p)) if f != MAGIC || p != std::process::id() as i32 => Some(FileChange::Reset),
            _ => None,
        }
    }

    /// Leaves a region file that changed under us for the one its path names now (see the
    /// module's comment), charging there what the process's ledger says it holds.
    pub fn reattach(&self, change: FileChange) {
        let _guard = REATTACH.lock().unwrap_or_else(|p| p.into_inner());
        if self.file_change() != Some(change) {
            return; // another thread did it, or it resolved itself
        }
        // SAFETY: as in `get`.
        let old = unsafe { &*self.current.load(Acquire) };
        if change == FileChange::Truncated
            && let Err(e) = old.accounting.region().shield()
        {
            tracing::error!("region file {}: cannot replace the truncated mapping: {e}", self.path);
        }
        // A new region starts with the limits in force: the live ones while the old pages are
        // readable, else this process's environment.
        let mut init = self.init.clone();
        if change != FileChange::Truncated {
            let s = old.accounting.region().shared();
            for (i, limit) in init.limits.iter_mut().enumerate() {
                *limit = Some(s.limit[i].load(SeqCst)).filter(|&l| l > 0);
            }
        }
        // The old slot is given back first, its lock too: after a truncation the new region may
        // be the same file, where our old lock would keep the slot from being claimed again.
        // What we hold is charged again below, from the ledger's records.
        old.accounting.region().release_slot(old.accounting.slot());
        let fresh = attach(&self.path, self.mode, &init, &self.trust, self.ledger);
        let uuids = self.uuids.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !uuids.is_empty() {
            self.remember_places(&fresh.accounting.region().place_uuids(&uuids));
        }
        let ledger = (self.ledger)();
        let mut moved = 0u64;
        let mut over = Vec::new();
        for dev in 0..MAX_DEVICES {
            let index = self.index(dev);
            for kind in [Kind::Data, Kind::Context] {
                let bytes = ledger.held_by_process_of(dev, kind);
                if bytes > 0 {
                    fresh.accounting.charge(index.0, bytes, kind);
                    moved += bytes;
                }
            }
            if let Some(cap) = fresh.accounting.limit(index.0) {
                let used = fresh.accounting.used(index.0);
                if used > cap && !over.iter().any(|&(i, _, _)| i == index) {
                    over.push((index, used, cap));
                }
            }
        }
        let fresh = Box::into_raw(Box::new(fresh));
        self.current.store(fresh, Release);
        EXIT_TARGET.store(fresh, Release);
        // SAFETY: as in `get`.
        let now = unsafe { &*fresh };
        let joined = if now.accounting.region().file().is_some() {
            format!("re-joined the region at that path (slot {})", now.accounting.slot())
        } else {
            "enforcing this process's limits alone".to_string()
        };
        tracing::error!(
            "region file {} {} while this process used it: {joined} and charged this process's {} MiB there",
            self.path,
            change.describe(),
            moved >> 20
        );
        for (index, used, cap) in over {
            tracing::error!(
                "region file {}: device {index} is over its cap after the split ({} MiB in use, cap {} MiB); \
                 new allocations fail until usage drops",
                self.path,
                used >> 20,
                cap >> 20
            );
        }
    }
}

fn attach(path: &str, mode: u32, init: &InitParams, trust: &TrustedOwners, ledger: LedgerOf) -> Attachment {
    let generation = FORK_GENERATION.load(Relaxed);
    let pid = std::process::id() as i32;
    let shared = Region::open_or_create_trusting(Path::new(path), mode, init, trust)
        .map_err(|e| e.to_string())
        .and_then(|r| match r.claim_slot_with_limits(pid, 0, init) {
            Ok((slot, replaced)) => {
                if !replaced.is_empty() {
                    tracing::info!(
                        "region file {path}: no running process held it; this process's environment replaces its limits ({})",
                        describe_changes(&replaced)
                    );
                }
                watch::ensure(ledger);
                Ok(RegionAccounting::new(r, slot))
            }
            Err(e) => Err(format!("region file {path}: {e}")),
        });
    let accounting = shared.unwrap_or_else(|why| {
        tracing::error!("{why}; enforcing the limits of this process's environment for this process only");
        private(init)
    });
    Attachment { accounting, generation }
}

/// `memory cap 4096 MiB -> none on every device`, `SM limit none -> 30% on device 1`, …
fn describe_changes(changes: &[LimitChange]) -> String {
    let show = |limit, v: u64| match (limit, v) {
        (_, 0) => "none".to_string(),
        (Limit::Memory, b) => format!("{} MiB", b >> 20),
        (Limit::Sm, p) => format!("{p}%"),
    };
    let mut groups: Vec<((Limit, u64, u64), Vec<usize>)> = Vec::new();
    for c in changes {
        let key = (c.limit, c.old, c.new);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, devices)) => devices.push(c.device),
            None => groups.push((key, vec![c.device])),
        }
    }
    let text: Vec<String> = groups
        .iter()
        .map(|((limit, old, new), devices)| {
            let what = if *limit == Limit::Memory { "memory cap" } else { "SM limit" };
            let on = match devices.len() {
                MAX_DEVICES => "every device".to_string(),
                1 => format!("device {}", devices[0]),
                _ => format!("devices {}", devices.iter().map(usize::to_string).collect::<Vec<_>>().join(",")),
            };
            format!("{what} {} -> {} on {on}", show(*limit, *old), show(*limit, *new))
        })
        .collect();
    text.join("; ")
}

fn private(init: &InitParams) -> RegionAccounting {
    let region = Region::private(init).unwrap_or_else(|e| {
        // Without even 2 MiB of anonymous memory nothing works; try once more rather than abort.
        tracing::error!("cannot map private accounting memory: {e}");
        Region::private(init).expect("anonymous mapping")
    });
    // A private region has one process: slot 0 (claiming also sets proc_num, which sums read).
    let slot = region.claim_slot(std::process::id() as i32, 0).unwrap_or(0);
    RegionAccounting::new(region, slot)
}

impl Accounting for Container {
    fn limit(&self, dev: usize) -> Option<u64> {
        self.get().limit(self.index(dev).0)
    }
    fn any_limit(&self) -> bool {
        self.get().any_limit()
    }
    fn try_charge(&self, dev: usize, bytes: u64, limit: Option<u64>) -> bool {
        self.get().try_charge(self.index(dev).0, bytes, limit)
    }
    fn charge(&self, dev: usize, bytes: u64, kind: Kind) {
        self.get().charge(self.index(dev).0, bytes, kind)
    }
    fn uncharge(&self, dev: usize, bytes: u64, kind: Kind) {
        self.get().uncharge(self.index(dev).0, bytes, kind)
    }
    fn used(&self, dev: usize) -> u64 {
        self.reap_now_and_then();
        self.get().used(self.index(dev).0)
    }
    fn record_denial(&self, dev: usize) {
        self.get().record_denial(self.index(dev).0)
    }
    fn own(&self, dev: usize) -> u64 {
        self.get().own(self.index(dev).0)
    }
    fn driver_overhead(&self, dev: usize) -> u64 {
        self.get().driver_overhead(self.index(dev).0)
    }
    fn set_driver_overhead(&self, dev: usize, bytes: u64) {
        self.get().set_driver_overhead(self.index(dev).0, bytes)
    }
    fn record_driver_denial(&self, dev: usize) {
        self.get().record_driver_denial(self.index(dev).0)
    }
    fn try_charge_spill(&self, dev: usize, bytes: u64, limit: u64) -> bool {
        self.get().try_charge_spill(self.index(dev).0, bytes, limit)
    }
    fn spilled(&self, dev: usize) -> u64 {
        self.get().spilled(self.index(dev).0)
    }
    fn record_spill_denial(&self, dev: usize) {
        self.get().record_spill_denial(self.index(dev).0)
    }
    fn epoch(&self) -> u64 {
        FORK_GENERATION.load(Relaxed)
    }
}
