//! The region file's layout: HAMi-core v1.2, byte for byte (offsets from
//! shared/hami-region-v1.md, x86-64 natural alignment), so HAMi's device plugin and vGPUmonitor
//! read our numbers unchanged; then our own extension, which the monitor never maps.
//!
//! Every field is an atomic: several processes map the file and write it concurrently. The
//! structs are `repr(C)` with explicit padding and are only ever reached through a validated
//! mapping (see `map`). Field names follow HAMi's so the two can be compared side by side.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

use vgpu_core::MAX_DEVICES;
use vgpu_core::limiter::BucketState;

pub const MAX_PROCS: usize = 1024;
pub const UUID_LEN: usize = 96;
/// `initialized_flag` once the region is complete (HAMi's magic; written last).
pub const MAGIC: i32 = 19_920_718;
pub const MAJOR: u32 = 1;
pub const MINOR: u32 = 2;

/// Per device in a slot: HAMi's `context_size, module_size, data_size, offset, total` + 3 unused.
#[repr(C)]
pub struct DeviceUsage {
    pub context_size: AtomicU64,
    pub module_size: AtomicU64,
    pub data_size: AtomicU64,
    pub offset: AtomicU64,
    /// What the monitor sums per device; our reservation counter.
    pub total: AtomicU64,
    pub unused: [AtomicU64; 3],
}

/// One process's slot (HAMi's `shrreg_proc_slot_t`).
#[repr(C)]
pub struct ProcSlot {
    pub pid: AtomicI32,
    pub hostpid: AtomicI32,
    pub used: [DeviceUsage; MAX_DEVICES],
    pub monitorused: [AtomicU64; MAX_DEVICES],
    /// dec_util, enc_util, sm_util + 3 unused, per device.
    pub device_util: [[AtomicU64; 6]; MAX_DEVICES],
    pub status: AtomicI32,
    _pad: AtomicU32,
    pub seqlock: AtomicU64,
    pub unused: [AtomicU64; 2],
}

/// HAMi's `shared_region_t`.
#[repr(C)]
pub struct SharedRegion {
    pub initialized_flag: AtomicI32,
    pub major_version: AtomicU32,
    pub minor_version: AtomicU32,
    pub sm_init_flag: AtomicI32,
    pub owner_pid: AtomicU64,
    /// glibc `sem_t` of HAMi-core; we never use it (our protocol is lock-free + OFD locks).
    pub sem: [AtomicU64; 4],
    pub device_num: AtomicU64,
    /// NUL-terminated `GPU-…` strings, written once at initialisation.
    pub uuids: [[AtomicU64; UUID_LEN / 8]; MAX_DEVICES],
    /// Bytes per device; 0 = unlimited. The monitor (and `vgpu set`) may write it.
    pub limit: [AtomicU64; MAX_DEVICES],
    /// Percent per device; 0 or 100 = unlimited.
    pub sm_limit: [AtomicU64; MAX_DEVICES],
    pub procs: [ProcSlot; MAX_PROCS],
    /// High-water mark of used slots: readers scan `0..proc_num`.
    pub proc_num: AtomicI32,
    pub utilization_switch: AtomicI32,
    pub recent_kernel: AtomicI32,
    pub priority: AtomicI32,
    pub last_kernel_time: AtomicU64,
    pub sem_postinit: [AtomicU64; 4],
}

/// Where our extension starts: right after the v1 struct (already 8-byte aligned).
pub const EXTENSION_OFFSET: usize = size_of::<SharedRegion>();
/// "LIBVGPU\0" — identifies our extension.
pub const EXTENSION_MAGIC: u64 = u64::from_le_bytes(*b"LIBVGPU\0");
pub const EXTENSION_VERSION: u32 = 1;

/// Our state after the v1 struct. Versioned; fields are only ever appended.
#[repr(C)]
pub struct Extension {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    /// `size_of::<Extension>()` of the writer, so a reader can refuse a shorter file.
    pub size: AtomicU32,
    /// Allocation refusals because of the cap, per device (for `vgpu status` and metrics).
    pub cap_denials: [AtomicU64; MAX_DEVICES],
    /// Allocation failures the driver itself returned while within the cap, per device.
    pub driver_denials: [AtomicU64; MAX_DEVICES],
    /// Per-slot generation, bumped whenever a slot is (re)claimed, so a reader can tell a
    /// reused slot from its previous owner.
    pub slot_generation: [AtomicU64; MAX_PROCS],
    /// The compute limiter's GPU-time bucket, per device (see vgpu_core::limiter).
    pub buckets: [BucketState; MAX_DEVICES],
    /// Device memory one context costs, bytes per device, as first measured in this container
    /// (0 = not yet). Later processes charge it without measuring: the measurement needs NVML,
    /// whose initialisation costs a process start ~15 ms on an H200.
    pub context_cost: [AtomicU64; MAX_DEVICES],
    /// Contexts being created right now, per device: a creation that overlaps others sees
    /// their memory in its NVML measurement too.
    pub contexts_creating: [AtomicU64; MAX_DEVICES],
    /// Limits an operator set with `vgpu set`, which outlive the processes (bit `i`: device
    /// `i`'s memory cap, bit `16 + i`: its SM limit). Others are the environment's: a process
    /// that finds no live process in the region replaces them with its own (see `limits`).
    pub operator_set: AtomicU64,
    /// Host memory a container may spill to past its cap (`CUDA_OVERSUBSCRIBE`), bytes per
    /// device, as the last process that enabled spilling published it (0 = none published).
    /// Each process enforces its own environment's limit against the container's sum; this copy
    /// is for `vgpu status` and the metrics.
    pub spill_limit: [AtomicU64; MAX_DEVICES],
    /// Spills refused because the spill limit was reached, per device.
    pub spill_denials: [AtomicU64; MAX_DEVICES],
    /// Reserved; zero.
    pub reserved: [AtomicU64; 319],
    /// Per slot and device: the part of the slot's `used[dev].total` that is driver overhead,
    /// the memory the driver spends for the process outside our hooks (lazily loaded modules,
    /// graph memory, pool caches, library workspaces), found by reconciling the ledger with the
    /// driver's per-process count. Already included in `total`, so HAMi's monitor and the cap
    /// see it; kept here (not in the v1 slot) so the v1.2 bytes stay HAMi's. Zeroed with the slot.
    pub driver_overhead: [[AtomicU64; MAX_DEVICES]; MAX_PROCS],
    /// Per slot and device: bytes this process spilled to host memory past the cap
    /// (`CUDA_OVERSUBSCRIBE`). Never part of `used[dev].total`: the cap and HAMi's monitor count
    /// device memory only. The container's spill is the sum over live slots; zeroed with the
    /// slot, so a killed process's spill is reaped with its usage.
    pub spilled: [[AtomicU64; MAX_DEVICES]; MAX_PROCS],
}

/// Bytes the file must have: HAMi's `sizeof + 1` plus our extension.
pub const FILE_SIZE: usize = EXTENSION_OFFSET + size_of::<Extension>();
/// Size of one per-slot, per-device table of the extension (`driver_overhead`, `spilled`).
const SLOT_TABLE: usize = size_of::<[[AtomicU64; MAX_DEVICES]; MAX_PROCS]>();
/// File sizes of earlier releases, whose extension ended before a table was appended: such a
/// file is grown in place to [`FILE_SIZE`] (the new tail reads as zeros, which is right).
/// Before `driver_overhead`, and before `spilled`.
pub const PREVIOUS_FILE_SIZES: [usize; 2] = [FILE_SIZE - 2 * SLOT_TABLE, FILE_SIZE - SLOT_TABLE];

/// HAMi sizes the file to `sizeof(region) + 1`; the monitor recognises the older v0 layout by
/// this file size, so we must never produce it.
pub const HAMI_V0_FILE_SIZE: u64 = 1_197_897;

const _: () = {
    assert!(size_of::<DeviceUsage>() == 64);
    assert!(size_of::<ProcSlot>() == 1960);
    assert!(offset_of!(ProcSlot, used) == 8);
    assert!(offset_of!(ProcSlot, monitorused) == 1032);
    assert!(offset_of!(ProcSlot, device_util) == 1160);
    assert!(offset_of!(ProcSlot, status) == 1928);
    assert!(offset_of!(ProcSlot, seqlock) == 1936);
    assert!(offset_of!(ProcSlot, unused) == 1944);
    assert!(offset_of!(SharedRegion, major_version) == 4);
    assert!(offset_of!(SharedRegion, minor_version) == 8);
    assert!(offset_of!(SharedRegion, sm_init_flag) == 12);
    assert!(offset_of!(SharedRegion, owner_pid) == 16);
    assert!(offset_of!(SharedRegion, sem) == 24);
    assert!(offset_of!(SharedRegion, device_num) == 56);
    assert!(offset_of!(SharedRegion, uuids) == 64);
    assert!(offset_of!(SharedRegion, limit) == 1600);
    assert!(offset_of!(SharedRegion, sm_limit) == 1728);
    assert!(offset_of!(SharedRegion, procs) == 1856);
    assert!(offset_of!(SharedRegion, proc_num) == 2_008_896);
    assert!(offset_of!(SharedRegion, utilization_switch) == 2_008_900);
    assert!(offset_of!(SharedRegion, recent_kernel) == 2_008_904);
    assert!(offset_of!(SharedRegion, priority) == 2_008_908);
    assert!(offset_of!(SharedRegion, last_kernel_time) == 2_008_912);
    assert!(offset_of!(SharedRegion, sem_postinit) == 2_008_920);
    assert!(size_of::<SharedRegion>() == 2_008_952);
    assert!(EXTENSION_OFFSET.is_multiple_of(8));
    // bench/gpu/sm_share.py reads device 0's bucket at this offset.
    assert!(EXTENSION_OFFSET + offset_of!(Extension, buckets) == 2_017_416);
    assert!(FILE_SIZE as u64 != HAMI_V0_FILE_SIZE);
    assert!(size_of::<Extension>() == 16 + 16 * 8 * 2 + MAX_PROCS * 8 + 512 * 8 + 2 * MAX_PROCS * MAX_DEVICES * 8);
    // Fields are only appended: those of earlier releases keep their offsets.
    assert!(offset_of!(Extension, operator_set) == 16 + 16 * 8 * 2 + MAX_PROCS * 8 + 512 * 8 - 352 * 8);
    assert!(offset_of!(Extension, driver_overhead) == 16 + 16 * 8 * 2 + MAX_PROCS * 8 + 512 * 8);
};

/// Byte offset of slot `i` in the file (its first byte is the slot's liveness lock).
pub const fn slot_offset(i: usize) -> u64 {
    (offset_of!(SharedRegion, procs) + i * size_of::<ProcSlot>()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden offsets, written out once more from the HAMi-core v1.2 table, so a change to the
    /// structs above fails here even if someone "fixes" the const assertions with it.
    #[test]
    fn golden_offsets_match_hami_v1_2() {
        let golden: &[(&str, usize, usize)] = &[
            ("initialized_flag", offset_of!(SharedRegion, initialized_flag), 0),
            ("device_num", offset_of!(SharedRegion, device_num), 56),
            ("uuids", offset_of!(SharedRegion, uuids), 64),
            ("limit", offset_of!(SharedRegion, limit), 1600),
            ("sm_limit", offset_of!(SharedRegion, sm_limit), 1728),
            ("procs", offset_of!(SharedRegion, procs), 1856),
            ("proc_num", offset_of!(SharedRegion, proc_num), 2_008_896),
            ("last_kernel_time", offset_of!(SharedRegion, last_kernel_time), 2_008_912),
            ("slot.used[0].total", offset_of!(ProcSlot, used) + offset_of!(DeviceUsage, total), 8 + 32),
            ("slot.status", offset_of!(ProcSlot, status), 1928),
            ("sizeof(region)", size_of::<SharedRegion>(), 2_008_952),
            ("sizeof(slot)", size_of::<ProcSlot>(), 1960),
        ];
        for (name, got, want) in golden {
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(slot_offset(1), 1856 + 1960);
        assert_eq!(EXTENSION_OFFSET, 2_008_952);
    }
}
