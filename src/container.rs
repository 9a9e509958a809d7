//! The ledger's counters: the container's shared region, or a private one when the file cannot
//! be used (degrade, never die: one stderr line, then the env limits hold per process).
//!
//! Fork: a child shares its parent's open file description and so its OFD slot lock; it must
//! never write the parent's slot. A `pthread_atfork` child handler bumps a generation; the next
//! accounting call in the child opens its own description and claims its own slot. (Registering
//! an atfork handler changes nothing for the application: no signal, umask or environment.)

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize};

use vgpu_core::MAX_DEVICES;
use vgpu_core::config::Config;
use vgpu_core::ledger::{Accounting, Kind};
use vgpu_region::layout::MAX_PROCS;
use vgpu_region::{InitParams, Limit, LimitChange, Region, RegionAccounting, SlotState};

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Relaxed);
}

struct Attachment {
    accounting: RegionAccounting,
    generation: u64,
}

pub struct ContainerAccounting {
    /// Leaked on replacement (after a fork): a mapping is 2 MiB of address space, once per fork.
    current: AtomicPtr<Attachment>,
    reattach: Mutex<()>,
    init: InitParams,
    path: String,
    mode: u32,
    /// The region's index of each CUDA ordinal of this process (see `Region::place_uuids`);
    /// the ordinal itself until CUDA names the devices, `MAX_DEVICES` for one left out.
    index: [AtomicUsize; MAX_DEVICES],
}

impl ContainerAccounting {
    pub fn new(config: &Config) -> Self {
        let init = InitParams {
            limits: config.memory_limit,
            sm_limits: config.sm_limit,
            uuids: Vec::new(),
            priority: config.priority,
        };
        let attachment = attach(&config.shared_cache, config.region_mode, &init);
        // SAFETY: registering a plain function with no captured state.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        ContainerAccounting {
            current: AtomicPtr::new(Box::into_raw(Box::new(attachment))),
            reattach: Mutex::new(()),
            init,
            path: config.shared_cache.clone(),
            mode: config.region_mode,
            index: std::array::from_fn(AtomicUsize::new),
        }
    }

    /// The region's index for CUDA ordinal `dev`: the same physical GPU in every process of the
    /// container, whatever each one's `CUDA_VISIBLE_DEVICES`. Out of range stays out of range.
    pub fn index(&self, dev: usize) -> usize {
        self.index.get(dev).map_or(dev, |i| i.load(Relaxed))
    }

    /// The cap at a region index (NVML names devices by UUID, not by this process's ordinals).
    pub fn limit_at(&self, index: usize) -> Option<u64> {
        self.get().limit(index)
    }

    /// Publishes this process's spill limit for CUDA ordinal `dev` where `vgpu status` and the
    /// metrics read it (each process enforces its own; see the extension's `spill_limit`).
    pub fn publish_spill_limit(&self, dev: usize, bytes: u64) {
        if let Some(l) = self.region().extension().spill_limit.get(self.index(dev)) {
            l.store(bytes, SeqCst);
        }
    }

    /// The container's usage at a region index.
    pub fn used_at(&self, index: usize) -> u64 {
        self.get().used(index)
    }

    /// Places this process's devices (UUIDs by ordinal) in the region; returns the indices.
    pub fn place_devices(&self, uuids: &[String]) -> Vec<Option<usize>> {
        let placed = self.region().place_uuids(uuids);
        for (slot, index) in self.index.iter().zip(&placed) {
            slot.store(index.unwrap_or(MAX_DEVICES), Relaxed);
        }
        placed
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
        let _guard = self.reattach.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: as in `get`.
        let a = unsafe { &*self.current.load(Acquire) };
        if a.generation != FORK_GENERATION.load(Relaxed) {
            let fresh = Box::into_raw(Box::new(attach(&self.path, self.mode, &self.init)));
            self.current.store(fresh, Release);
        }
        // SAFETY: as in `get`.
        unsafe { &(*self.current.load(Acquire)).accounting }
    }

    pub fn region(&self) -> &Region {
        self.get().region()
    }

    /// The container's live processes with memory charged on region index `index`: (PID as the
    /// container sees it, bytes). For NVML's process lists where the driver's is useless.
    pub fn processes_on(&self, index: usize) -> Vec<(u32, u64)> {
        let acc = self.get();
        let region = acc.region();
        let s = region.shared();
        let n = s.proc_num.load(SeqCst).clamp(0, MAX_PROCS as i32) as usize;
        (0..n)
            .filter_map(|i| {
                let slot = &s.procs[i];
                let used = slot.used.get(index)?.total.load(SeqCst);
                let pid = u32::try_from(slot.pid.load(SeqCst)).ok().filter(|&p| p != 0)?;
                let alive = region.slot_state(i, Some(acc.slot())) == SlotState::Alive;
                (used > 0 && alive).then_some((pid, used))
            })
            .collect()
    }

    /// At exit: gives this process's slot back, so a clean exit leaves no dead slot for
    /// `vgpu status` and the next process can tell that nobody holds the region. Never
    /// re-attaches: a forked child that never used the region has its parent's slot, not its own.
    pub fn release_at_exit(&self) {
        // SAFETY: as in `get`.
        let a = unsafe { &*self.current.load(Acquire) };
        if a.generation == FORK_GENERATION.load(Relaxed) && a.accounting.region().file().is_some() {
            a.accounting.region().release_slot(a.accounting.slot());
        }
    }
}

fn attach(path: &str, mode: u32, init: &InitParams) -> Attachment {
    let generation = FORK_GENERATION.load(Relaxed);
    let pid = std::process::id() as i32;
    let shared = Region::open_or_create(Path::new(path), mode, init).map_err(|e| e.to_string()).and_then(|r| {
        match r.claim_slot_with_limits(pid, 0, init) {
            Ok((slot, replaced)) => {
                if !replaced.is_empty() {
                    tracing::info!(
                        "region file {path}: no running process held it; this process's environment replaces its limits ({})",
                        describe_changes(&replaced)
                    );
                }
                Ok(RegionAccounting::new(r, slot))
            }
            Err(e) => Err(format!("region file {path}: {e}")),
        }
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

impl Accounting for ContainerAccounting {
    fn limit(&self, dev: usize) -> Option<u64> {
        self.get().limit(self.index(dev))
    }
    fn any_limit(&self) -> bool {
        self.get().any_limit()
    }
    fn try_charge(&self, dev: usize, bytes: u64, limit: Option<u64>) -> bool {
        self.get().try_charge(self.index(dev), bytes, limit)
    }
    fn charge(&self, dev: usize, bytes: u64, kind: Kind) {
        self.get().charge(self.index(dev), bytes, kind)
    }
    fn uncharge(&self, dev: usize, bytes: u64, kind: Kind) {
        self.get().uncharge(self.index(dev), bytes, kind)
    }
    fn used(&self, dev: usize) -> u64 {
        self.get().used(self.index(dev))
    }
    fn record_denial(&self, dev: usize) {
        self.get().record_denial(self.index(dev))
    }
    fn own(&self, dev: usize) -> u64 {
        self.get().own(self.index(dev))
    }
    fn driver_overhead(&self, dev: usize) -> u64 {
        self.get().driver_overhead(self.index(dev))
    }
    fn set_driver_overhead(&self, dev: usize, bytes: u64) {
        self.get().set_driver_overhead(self.index(dev), bytes)
    }
    fn record_driver_denial(&self, dev: usize) {
        self.get().record_driver_denial(self.index(dev))
    }
    fn try_charge_spill(&self, dev: usize, bytes: u64, limit: u64) -> bool {
        self.get().try_charge_spill(self.index(dev), bytes, limit)
    }
    fn spilled(&self, dev: usize) -> u64 {
        self.get().spilled(self.index(dev))
    }
    fn record_spill_denial(&self, dev: usize) {
        self.get().record_spill_denial(self.index(dev))
    }
}
