//! The simulated GPUs: pure bookkeeping, no FFI. Every entry point in `cuda/` and `nvml.rs`
//! locks the one [`State`] and calls the methods here, which return the driver's error codes
//! so the accounting can be unit-tested without going through C.

mod contexts;
mod events;
mod objects;
mod shared;
mod streams;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod timeline_tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, OnceLock};

use cuda_types::CUresult;

use crate::config::Config;
use crate::timeline::Timeline;

pub use events::{ERROR_INVALID_IMAGE, EVENT_DISABLE_TIMING, kernel_handle, kernel_ns, kernel_us};
pub use objects::{Array, Pool, VmmHandle, array_bytes, mipmap_bytes};
pub use shared::{
    ERROR_PEER_ACCESS_ALREADY_ENABLED, ERROR_PEER_ACCESS_NOT_ENABLED, HANDLE_TYPE_POSIX_FD, IPC_HANDLE_SIZE, IpcHandle,
    SHAREABLE_RECORD_SIZE, ShareableRecord,
};
pub use streams::*;

/// Where each device's `cuMemAlloc` pointers live: 1 TiB of fake address space per device, in
/// the range real unified-addressing pointers use, so the numbers look familiar in logs.
const DEVICE_VA_BASE: u64 = 0x7f00_0000_0000;
const DEVICE_VA_SPAN: u64 = 1 << 40;
/// Pointers of the pre-3.2 entry points must fit 32 bits (their out-parameter is an
/// `unsigned int`), so they come from a low window of their own.
const V1_VA_BASE: u64 = 0x1000_0000;
const V1_VA_END: u64 = 0xffff_0000;
/// Address ranges of cuMemAddressReserve and of host-located pool memory.
const RESERVE_VA_BASE: u64 = 0x6000_0000_0000;
const RESERVE_VA_END: u64 = 0x7000_0000_0000;

pub const PTR_ALIGN: u64 = 512;
pub const VMM_GRANULARITY: u64 = 2 << 20;

/// Tags in the high bits of opaque handles so a handle of one kind is never mistaken for
/// another in logs (the numbers themselves mean nothing).
pub const TAG_CTX: u64 = 0x5c00_0000_0000;
pub const TAG_STREAM: u64 = 0x5500_0000_0000;
pub const TAG_POOL: u64 = 0x5b00_0000_0000;
pub const TAG_ARRAY: u64 = 0x5a00_0000_0000;
pub const TAG_MIPMAP: u64 = 0x5d00_0000_0000;

pub type Res<T> = Result<T, CUresult>;

pub struct Device {
    pub total: u64,
    /// Live allocations plus live contexts' overhead.
    pub used: u64,
    pub uuid: String,
    pub uuid_bytes: [u8; 16],
    next_va: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AllocKind {
    Linear,
    Pitch,
    Managed,
    Async {
        pool: u64,
    },
    /// Another process's allocation opened with cuIpcOpenMemHandle: `exporter` (its pid) and
    /// `remote` (its pointer there) name it; `refs` counts the opens in this context, each
    /// undone by one cuIpcCloseMemHandle.
    Ipc {
        exporter: u32,
        remote: u64,
        refs: u32,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Alloc {
    /// `None`: charged to no device of this process (a host-located pool's memory, or another
    /// process's memory opened through IPC).
    pub dev: Option<usize>,
    pub size: u64,
    /// The context it was made under; destroying that context frees it, as the driver does.
    pub ctx: u64,
    pub kind: AllocKind,
}

#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// Physical index.
    pub dev: usize,
    pub primary: bool,
    /// A primary context exists (keeps its handle) while released, but is then inactive.
    pub active: bool,
}

struct Primary {
    handle: u64,
    refcount: u32,
    flags: u32,
}

pub struct State {
    pub cfg: Config,
    /// Every device by physical index, which is also NVML's numbering.
    pub devices: Vec<Device>,
    pub allocs: BTreeMap<u64, Alloc>,
    pub ctxs: HashMap<u64, Ctx>,
    primaries: Vec<Primary>,
    pub pools: HashMap<u64, Pool>,
    default_pools: Vec<Option<u64>>,
    pub vmm: HashMap<u64, VmmHandle>,
    /// cuMemAddressReserve ranges: start → size.
    reservations: BTreeMap<u64, u64>,
    /// cuMemMap mappings: start → (handle, size).
    mappings: BTreeMap<u64, (u64, u64)>,
    pub arrays: HashMap<u64, Array>,
    /// Peer access enabled with cuCtxEnablePeerAccess: (context, peer context).
    pub peers: HashSet<(u64, u64)>,
    /// Streams, events, graphs and modules.
    pub work: streams::Objects,
    /// The devices' clocks, private or shared with other processes (`FAKEGPU_TIMELINE`).
    pub timeline: Timeline,
    next_id: u64,
    next_v1: u64,
    next_reserve: u64,
}

static STATE: OnceLock<Mutex<State>> = OnceLock::new();

/// The process-wide state, created from the environment on first use. A poisoned lock is
/// taken anyway: the fake's invariants hold between statements, and a test harness is better
/// served by a working driver than by every later call failing.
pub fn state() -> MutexGuard<'static, State> {
    STATE.get_or_init(|| Mutex::new(State::new(Config::from_env()))).lock().unwrap_or_else(|e| e.into_inner())
}

pub fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to).saturating_mul(to)
}

impl State {
    pub fn new(cfg: Config) -> State {
        let devices = (0..cfg.devices)
            .map(|i| Device {
                total: cfg.memory[i],
                used: 0,
                uuid: cfg.uuids[i].clone(),
                uuid_bytes: crate::config::uuid_bytes(&cfg.uuids[i]).unwrap_or_default(),
                next_va: DEVICE_VA_BASE + ((i as u64) << 40),
            })
            .collect();
        let mut st = State {
            devices,
            allocs: BTreeMap::new(),
            ctxs: HashMap::new(),
            primaries: Vec::new(),
            pools: HashMap::new(),
            default_pools: vec![None; cfg.devices],
            vmm: HashMap::new(),
            reservations: BTreeMap::new(),
            mappings: BTreeMap::new(),
            arrays: HashMap::new(),
            peers: HashSet::new(),
            work: streams::Objects::default(),
            timeline: timeline(&cfg),
            next_id: 0,
            next_v1: V1_VA_BASE,
            next_reserve: RESERVE_VA_BASE,
            cfg,
        };
        // Primary context handles exist from the start and never change, like the driver's.
        for dev in 0..st.devices.len() {
            let handle = st.new_handle(TAG_CTX);
            st.ctxs.insert(handle, Ctx { dev, primary: true, active: false });
            st.primaries.push(Primary { handle, refcount: 0, flags: 0 });
        }
        st
    }

    pub fn new_handle(&mut self, tag: u64) -> u64 {
        self.next_id += 1;
        tag | (self.next_id << 8)
    }

    /// The physical device behind a CUDA ordinal. `devices` and everything charged to them
    /// are indexed physically, as NVML sees them; only the CUDA entry points speak ordinals,
    /// which `CUDA_VISIBLE_DEVICES` may thin out and reorder.
    pub fn device(&self, ordinal: i32) -> Res<usize> {
        usize::try_from(ordinal)
            .ok()
            .and_then(|o| self.cfg.visible.get(o).copied())
            .ok_or(CUresult::ERROR_INVALID_DEVICE)
    }

    /// The CUDA ordinal of a physical device (contexts only ever exist on visible ones).
    pub fn ordinal(&self, dev: usize) -> Res<i32> {
        let pos = self.cfg.visible.iter().position(|&d| d == dev);
        pos.map(|o| o as i32).ok_or(CUresult::ERROR_INVALID_DEVICE)
    }

    pub fn charge(&mut self, dev: usize, size: u64) -> Res<()> {
        let d = &mut self.devices[dev];
        if size > d.total.saturating_sub(d.used) {
            return Err(CUresult::ERROR_OUT_OF_MEMORY);
        }
        d.used += size;
        Ok(())
    }

    pub fn uncharge(&mut self, dev: usize, size: u64) {
        let d = &mut self.devices[dev];
        d.used = d.used.saturating_sub(size);
    }

    /// (free, total) of a device.
    pub fn mem_info(&self, dev: usize) -> (u64, u64) {
        let d = &self.devices[dev];
        (d.total.saturating_sub(d.used), d.total)
    }

    // ---- linear allocations ----

    /// Takes `size` bytes of fake address space from [base, end): a bump pointer first, so
    /// addresses are not reused while the window lasts (a stale pointer then never aliases a
    /// new allocation), then the first gap between live allocations once it wraps.
    fn take_va(&self, base: u64, end: u64, next: u64, size: u64) -> Option<(u64, u64)> {
        let span = round_up(size.max(1), PTR_ALIGN);
        if next.checked_add(span).is_some_and(|e| e <= end) {
            return Some((next, next + span));
        }
        let mut cursor = base;
        for (&start, a) in self.allocs.range(base..end) {
            if start >= cursor + span {
                break;
            }
            cursor = cursor.max(round_up(start + a.size.max(1), PTR_ALIGN));
        }
        (cursor + span <= end).then_some((cursor, next))
    }

    pub fn alloc(&mut self, ctx: u64, dev: usize, size: u64, kind: AllocKind) -> Res<u64> {
        if size == 0 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let base = DEVICE_VA_BASE + ((dev as u64) << 40);
        let (ptr, next) = self
            .take_va(base, base + DEVICE_VA_SPAN, self.devices[dev].next_va, size)
            .ok_or(CUresult::ERROR_OUT_OF_MEMORY)?;
        self.charge(dev, size)?;
        self.devices[dev].next_va = next;
        self.allocs.insert(ptr, Alloc { dev: Some(dev), size, ctx, kind });
        Ok(ptr)
    }

    /// An allocation whose address fits 32 bits, for the pre-3.2 entry points.
    pub fn alloc_v1(&mut self, ctx: u64, dev: usize, size: u64) -> Res<u64> {
        if size == 0 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let (ptr, next) =
            self.take_va(V1_VA_BASE, V1_VA_END, self.next_v1, size).ok_or(CUresult::ERROR_OUT_OF_MEMORY)?;
        self.charge(dev, size)?;
        self.next_v1 = next;
        self.allocs.insert(ptr, Alloc { dev: Some(dev), size, ctx, kind: AllocKind::Linear });
        Ok(ptr)
    }

    /// Memory charged to no device (a host-located pool), from the reservation window.
    pub fn alloc_uncharged(&mut self, ctx: u64, size: u64, kind: AllocKind) -> Res<u64> {
        if size == 0 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let ptr = self.reserve_va(size, PTR_ALIGN)?;
        self.allocs.insert(ptr, Alloc { dev: None, size, ctx, kind });
        Ok(ptr)
    }

    pub fn free(&mut self, ptr: u64) -> Res<Alloc> {
        let a = self.allocs.remove(&ptr).ok_or(CUresult::ERROR_INVALID_VALUE)?;
        if let Some(dev) = a.dev {
            self.uncharge(dev, a.size);
        }
        if let AllocKind::Async { pool } = a.kind
            && let Some(p) = self.pools.get_mut(&pool)
        {
            p.used = p.used.saturating_sub(a.size);
        }
        Ok(a)
    }

    /// cuMemFree: only memory this process allocated; an IPC mapping is undone with
    /// cuIpcCloseMemHandle, and cuMemFree refuses it as the driver does.
    pub fn free_own(&mut self, ptr: u64) -> Res<Alloc> {
        match self.allocs.get(&ptr) {
            Some(a) if !matches!(a.kind, AllocKind::Ipc { .. }) => self.free(ptr),
            _ => Err(CUresult::ERROR_INVALID_VALUE),
        }
    }

    /// Moves managed memory to `target` (a physical device, or `None` for host memory), as
    /// `cuMemAdvise(SET_PREFERRED_LOCATION)` and `cuMemPrefetchAsync` do. The model: a managed
    /// allocation is resident where it was last placed as a whole, charged to that device (at
    /// allocation: its context's, the worst case) or to none while on the host. A range that
    /// covers only part of an allocation changes nothing (the fake does not track pages).
    /// `strict`: a device without room is an error (prefetch); otherwise the memory stays
    /// where it is (advice only guides the driver).
    pub fn place_managed(&mut self, ptr: u64, len: u64, target: Option<usize>, strict: bool) -> Res<()> {
        let Some((&start, a)) = self.allocs.range(..=ptr).next_back() else {
            return Err(CUresult::ERROR_INVALID_VALUE);
        };
        let (a, end) = (*a, ptr.saturating_add(len));
        if a.kind != AllocKind::Managed || len == 0 || end > start + a.size {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        if ptr != start || end != start + a.size || a.dev == target {
            return Ok(());
        }
        if let Some(dev) = target {
            match self.charge(dev, a.size) {
                Ok(()) => {}
                Err(e) if strict => return Err(e),
                Err(_) => return Ok(()),
            }
        }
        if let Some(old) = a.dev {
            self.uncharge(old, a.size);
        }
        if let Some(entry) = self.allocs.get_mut(&start) {
            entry.dev = target;
        }
        Ok(())
    }

    /// Whether [ptr, ptr+len) lies inside one live allocation or in mapped VMM memory; the copy
    /// and set entry points accept nothing else.
    pub fn valid_range(&self, ptr: u64, len: u64) -> bool {
        let end = ptr.saturating_add(len);
        let inside = |start: u64, size: u64| ptr >= start && end <= start + size.max(1);
        if let Some((&s, a)) = self.allocs.range(..=ptr).next_back()
            && inside(s, a.size)
        {
            return true;
        }
        self.fully_mapped(ptr, len.max(1))
    }
}

/// The shared timeline `FAKEGPU_TIMELINE` names, or a private one (also when the file cannot
/// be used: a note on stderr says why, and the tests that needed sharing will show it).
fn timeline(cfg: &Config) -> Timeline {
    let Some(path) = &cfg.timeline else { return Timeline::private(cfg.devices) };
    let uuids: Vec<[u8; 16]> = cfg.uuids.iter().map(|u| crate::config::uuid_bytes(u).unwrap_or_default()).collect();
    Timeline::shared(path, &uuids).unwrap_or_else(|e| {
        eprintln!("fakegpu: FAKEGPU_TIMELINE unusable ({e}), using a private timeline");
        Timeline::private(cfg.devices)
    })
}
