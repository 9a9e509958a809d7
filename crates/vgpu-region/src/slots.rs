//! Process slots. A slot is owned by whoever holds the OFD lock on its first byte: the kernel
//! releases the lock when the owner dies (kill -9 included), so liveness needs no PIDs and PID
//! reuse cannot resurrect a slot. Slots never move (HAMi-core compacts them, corrupting live
//! processes' accounting); a dead slot is zeroed by whoever takes its lock next and reused.
//! `proc_num` only grows: it is the high-water mark readers scan up to.

use std::io;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use crate::layout::{MAX_PROCS, ProcSlot, slot_offset};
use crate::lock;
use crate::map::Region;

/// Running, per HAMi's `status` field.
const RUNNING: i32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Free,
    Alive,
    /// Its owner died without releasing it; its usage is stale until it is reaped.
    Dead,
}

impl Region {
    /// How many slots readers scan: `0..proc_num`, bounded by the table's size.
    pub fn slots_in_use(&self) -> usize {
        self.shared().proc_num.load(SeqCst).clamp(0, MAX_PROCS as i32) as usize
    }

    /// What the cap on `dev` is enforced against: every slot's `total`, dead ones included until
    /// reaped. 0 for a device past the region's.
    pub fn used(&self, dev: usize) -> u64 {
        let procs = &self.shared().procs[..self.slots_in_use()];
        procs.iter().map(|p| p.used.get(dev).map_or(0, |u| u.total.load(SeqCst))).fold(0, u64::saturating_add)
    }

    /// Host memory the container has spilled past the cap on `dev`: every slot's, as for
    /// [`used`](Self::used) (spilled bytes are kept apart from `total`).
    pub fn spilled(&self, dev: usize) -> u64 {
        let spilled = &self.extension().spilled[..self.slots_in_use()];
        spilled.iter().map(|s| s.get(dev).map_or(0, |c| c.load(SeqCst))).fold(0, u64::saturating_add)
    }

    /// Claims a slot for this process (`pid` as the container sees it, `hostpid` 0 if unknown).
    /// A private region has no other processes: its slot 0 is simply taken.
    pub fn claim_slot(&self, pid: i32, hostpid: i32) -> io::Result<usize> {
        let Some(file) = self.file() else {
            self.take(0, pid, hostpid);
            return Ok(0);
        };
        for i in 0..MAX_PROCS {
            if !lock::try_lock(file, slot_offset(i))? {
                continue;
            }
            // We hold the lock: the slot is ours. A non-zero pid means its owner died.
            self.take(i, pid, hostpid);
            return Ok(i);
        }
        Err(io::Error::new(io::ErrorKind::OutOfMemory, "all 1024 process slots of the region are in use"))
    }

    fn take(&self, i: usize, pid: i32, hostpid: i32) {
        let slot = &self.shared().procs[i];
        zero(slot);
        self.zero_overhead(i);
        self.extension().slot_generation[i].fetch_add(1, SeqCst);
        slot.hostpid.store(hostpid, Relaxed);
        slot.status.store(RUNNING, Relaxed);
        slot.pid.store(pid, SeqCst);
        self.shared().proc_num.fetch_max(i as i32 + 1, SeqCst);
    }

    /// Gives a slot back (clean exit); its usage must already be zero or is dropped here.
    pub fn release_slot(&self, i: usize) {
        let slot = &self.shared().procs[i];
        zero(slot);
        self.zero_overhead(i);
        slot.status.store(0, Relaxed);
        slot.pid.store(0, SeqCst);
        if let Some(file) = self.file() {
            let _ = lock::unlock(file, slot_offset(i));
        }
    }

    /// Whether slot `i` is free, owned by a live process, or stale. `own` is the caller's own
    /// slot, which its own lock would wrongly report as dead.
    pub fn slot_state(&self, i: usize, own: Option<usize>) -> SlotState {
        let slot = &self.shared().procs[i];
        if slot.pid.load(SeqCst) == 0 && !has_usage(slot) {
            return SlotState::Free;
        }
        if own == Some(i) {
            return SlotState::Alive;
        }
        let Some(file) = self.file() else { return SlotState::Alive };
        match lock::try_lock(file, slot_offset(i)) {
            Ok(true) => {
                let _ = lock::unlock(file, slot_offset(i));
                SlotState::Dead
            }
            _ => SlotState::Alive,
        }
    }

    /// Zeroes every dead slot (taking its lock while doing so); returns the slots reaped with the
    /// pid and bytes per device they held.
    pub fn reap(&self, own: Option<usize>) -> Vec<(usize, i32, u64)> {
        let Some(file) = self.file() else { return Vec::new() };
        let n = self.slots_in_use();
        let mut reaped = Vec::new();
        for i in (0..n).filter(|&i| own != Some(i)) {
            let slot = &self.shared().procs[i];
            if slot.pid.load(SeqCst) == 0 && !has_usage(slot) {
                continue;
            }
            if let Ok(true) = lock::try_lock(file, slot_offset(i)) {
                let bytes = slot.used.iter().map(|u| u.total.load(SeqCst)).fold(0, u64::saturating_add);
                reaped.push((i, slot.pid.load(SeqCst), bytes));
                zero(slot);
                self.zero_overhead(i);
                slot.status.store(0, Relaxed);
                slot.pid.store(0, SeqCst);
                // A copy (operator tools) writes the zeroed slot to the file, still under its lock.
                let at = slot_offset(i) as usize;
                let _ = self.write_back(at..at + size_of::<ProcSlot>());
                let _ = lock::unlock(file, slot_offset(i));
            }
        }
        reaped
    }
}

impl Region {
    /// The slot's driver-overhead breakdown (part of its `total`, which `zero` clears) and its
    /// spilled bytes (kept apart from `total`).
    fn zero_overhead(&self, i: usize) {
        let x = self.extension();
        for o in x.driver_overhead[i].iter().chain(&x.spilled[i]) {
            o.store(0, SeqCst);
        }
    }
}

fn has_usage(slot: &ProcSlot) -> bool {
    slot.used.iter().any(|u| u.total.load(SeqCst) != 0)
}

fn zero(slot: &ProcSlot) {
    for u in &slot.used {
        for f in [&u.context_size, &u.module_size, &u.data_size, &u.offset, &u.total] {
            f.store(0, SeqCst);
        }
    }
    for m in &slot.monitorused {
        m.store(0, Relaxed);
    }
    for d in slot.device_util.iter().flatten() {
        d.store(0, Relaxed);
    }
}
