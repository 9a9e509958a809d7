//! A point-in-time copy of a region, in the shape of `vgpu status --json` (schema_version 1,
//! documented in the crate README). Fields are read one atomic at a time while processes keep
//! running, so totals are a best-effort snapshot, never a torn value of one field.
//!
//! Built here from `Region`'s public fields rather than added to vgpu-region: the command is the
//! only consumer of this shape, and the region crate stays the protocol, not the presentation.

use std::sync::atomic::Ordering::SeqCst;

use serde::Serialize;
use vgpu_core::MAX_DEVICES;
use vgpu_region::{Region, SlotState};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
pub struct Status {
    pub schema_version: u32,
    pub path: String,
    pub version: Version,
    pub device_num: u64,
    pub proc_num: i32,
    pub alive_processes: usize,
    pub dead_slots: usize,
    pub priority: i32,
    pub utilization_switch: i32,
    pub last_kernel_time: u64,
    pub devices: Vec<Device>,
    pub processes: Vec<Process>,
}

#[derive(Serialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub extension: u32,
}

#[derive(Serialize)]
pub struct Device {
    pub index: usize,
    pub uuid: String,
    /// Bytes; `None` (JSON null) = no cap (the region's 0).
    pub memory_limit: Option<u64>,
    /// Percent; `None` = no limit (the region's 0, or 100 and above).
    pub sm_limit: Option<u64>,
    /// Sum of live slots' `used[dev].total`.
    pub used: u64,
    /// Of which contexts (sum of live slots' `context_size`).
    pub context: u64,
    /// Of which driver overhead: what the driver spends for the processes outside the hooked
    /// allocations, found by reconciling with its per-process count (sum of live slots).
    pub driver_overhead: u64,
    /// Held by dead slots: still counted against the cap until reaped.
    pub dead_used: u64,
    pub cap_denials: u64,
    pub driver_denials: u64,
    /// Host memory spilled past the cap (`CUDA_OVERSUBSCRIBE`), bytes, sum of live slots: not
    /// part of `used`, which is device memory only.
    pub spilled: u64,
    /// The spill limit the container's processes published; `None` = none has spilled yet.
    pub spill_limit: Option<u64>,
    /// Spills refused at the spill limit.
    pub spill_denials: u64,
    /// GPU time the compute limiter charged to the container since the region was created, ns
    /// (the bucket's `consumed_ns`). Measured only while an SM limit applies.
    pub gpu_time_ns: u64,
    /// Time launching threads slept waiting for the limiter, ns, summed over threads.
    pub throttled_ns: u64,
}

#[derive(Serialize)]
pub struct Process {
    pub slot: usize,
    pub pid: i32,
    /// `None` when the library did not know it (HAMi's 0).
    pub hostpid: Option<i32>,
    pub state: &'static str,
    pub generation: u64,
    /// Only devices with a non-zero counter.
    pub usage: Vec<Usage>,
}

#[derive(Serialize)]
pub struct Usage {
    pub device: usize,
    pub total: u64,
    pub context: u64,
    pub module: u64,
    pub data: u64,
    /// Of `total`, the driver overhead (our extension).
    pub driver_overhead: u64,
    /// Host memory spilled past the cap (our extension; not part of `total`).
    pub spilled: u64,
}

/// Which device rows to show: those the region describes (`device_num`), extended to any higher
/// index that carries usage, a denial or limiter time. A region created before CUDA knew its
/// devices has device_num 0 but may already hold limits from the environment: then limits count
/// too. (A general `CUDA_DEVICE_MEMORY_LIMIT` sets all 16 slots, which must not make 16 rows.)
fn device_count(r: &Region, processes: &[Process]) -> usize {
    let s = r.shared();
    let x = r.extension();
    let described = (s.device_num.load(SeqCst) as usize).clamp(0, MAX_DEVICES);
    let busy = |d: usize| {
        (described == 0 && (s.limit[d].load(SeqCst) != 0 || s.sm_limit[d].load(SeqCst) != 0))
            || x.cap_denials[d].load(SeqCst) != 0
            || x.driver_denials[d].load(SeqCst) != 0
            || x.spill_denials[d].load(SeqCst) != 0
            || x.buckets[d].consumed_ns.load(SeqCst) != 0
            || processes.iter().any(|p| p.usage.iter().any(|u| u.device == d))
    };
    let last_busy = (0..MAX_DEVICES).rev().find(|&d| busy(d)).map_or(0, |d| d + 1);
    described.max(last_busy)
}

pub fn take(r: &Region, path: &str) -> Status {
    let s = r.shared();
    let x = r.extension();
    let n = r.slots_in_use();
    let processes: Vec<Process> = (0..n).filter_map(|i| process(r, i)).collect();
    let devices = (0..device_count(r, &processes)).map(|d| device(r, d, &processes)).collect();
    let count = |state: &str| processes.iter().filter(|p| p.state == state).count();
    Status {
        schema_version: SCHEMA_VERSION,
        path: path.to_string(),
        version: Version {
            major: s.major_version.load(SeqCst),
            minor: s.minor_version.load(SeqCst),
            extension: x.version.load(SeqCst),
        },
        device_num: s.device_num.load(SeqCst),
        proc_num: n as i32,
        alive_processes: count("alive"),
        dead_slots: count("dead"),
        priority: s.priority.load(SeqCst),
        utilization_switch: s.utilization_switch.load(SeqCst),
        last_kernel_time: s.last_kernel_time.load(SeqCst),
        devices,
        processes,
    }
}

/// Slot `i`, or `None` when it is free.
fn process(r: &Region, i: usize) -> Option<Process> {
    let s = r.shared();
    let x = r.extension();
    // None: the command owns no slot, so a lock it can take means the owner is gone.
    let state = match r.slot_state(i, None) {
        SlotState::Free => return None,
        SlotState::Alive => "alive",
        SlotState::Dead => "dead",
    };
    let slot = &s.procs[i];
    let usage = (0..MAX_DEVICES)
        .map(|d| {
            let u = &slot.used[d];
            Usage {
                device: d,
                total: u.total.load(SeqCst),
                context: u.context_size.load(SeqCst),
                module: u.module_size.load(SeqCst),
                data: u.data_size.load(SeqCst),
                driver_overhead: x.driver_overhead[i][d].load(SeqCst),
                spilled: x.spilled[i][d].load(SeqCst),
            }
        })
        .filter(|u| u.total | u.context | u.module | u.data | u.driver_overhead | u.spilled != 0)
        .collect();
    let hostpid = slot.hostpid.load(SeqCst);
    Some(Process {
        slot: i,
        pid: slot.pid.load(SeqCst),
        hostpid: (hostpid != 0).then_some(hostpid),
        state,
        generation: x.slot_generation[i].load(SeqCst),
        usage,
    })
}

/// Device `d`: its limits and counters from the region, its usage summed over `processes`.
fn device(r: &Region, d: usize, processes: &[Process]) -> Device {
    let s = r.shared();
    let x = r.extension();
    let sum = |state: &str, f: fn(&Usage) -> u64| -> u64 {
        let on_dev = processes.iter().filter(|p| p.state == state).flat_map(|p| &p.usage);
        on_dev.filter(|u| u.device == d).map(f).fold(0, u64::saturating_add)
    };
    let limit = s.limit[d].load(SeqCst);
    let sm = s.sm_limit[d].load(SeqCst);
    Device {
        index: d,
        uuid: r.uuid(d),
        memory_limit: (limit != 0).then_some(limit),
        sm_limit: vgpu_core::limiter::sm_limit_applies(sm).then_some(sm),
        used: sum("alive", |u| u.total),
        context: sum("alive", |u| u.context),
        driver_overhead: sum("alive", |u| u.driver_overhead),
        dead_used: sum("dead", |u| u.total),
        cap_denials: x.cap_denials[d].load(SeqCst),
        driver_denials: x.driver_denials[d].load(SeqCst),
        spilled: sum("alive", |u| u.spilled),
        spill_limit: Some(x.spill_limit[d].load(SeqCst)).filter(|&l| l != 0),
        spill_denials: x.spill_denials[d].load(SeqCst),
        gpu_time_ns: x.buckets[d].consumed_ns.load(SeqCst),
        throttled_ns: x.buckets[d].throttled_ns.load(SeqCst),
    }
}

/// `vgpu status --scan DIR --json`: one `Status` per region found, and what was passed over.
#[derive(Serialize)]
pub struct Scan {
    pub schema_version: u32,
    pub dir: String,
    pub regions: Vec<Status>,
    pub skipped: Vec<Skipped>,
}

#[derive(Serialize)]
pub struct Skipped {
    pub path: String,
    /// A short class for the one-line summary: `not a region file`, `directory`, `unreadable`,
    /// `not a regular file`, `HAMi-core region`, `corrupt region`, `other version`.
    pub kind: &'static str,
    pub reason: String,
}
