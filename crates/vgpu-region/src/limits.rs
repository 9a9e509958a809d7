//! Whose limits a region holds. A region outlives its processes (`/tmp/cudevshr.cache` stays
//! after the last one exits), but its limits must not simply outlive them too: a later process
//! that asks for another cap, or for none, would be held to the first one's, silently. The rule:
//!
//! - while a live process holds the region, its limits are the container's: a newcomer whose
//!   environment differs is told (by the library) and the region's limits apply;
//! - when no live process holds it, the newcomer's environment defines the limits, "no limit"
//!   included, and the caller is told what changed (one info line in the library);
//! - a limit an operator set with `vgpu set` is kept until cleared (`vgpu set --memory env`,
//!   `--sm env`), since an operator's decision is not any one process's environment.
//!
//! The check and the claim of the newcomer's slot happen under the initialisation lock, so two
//! processes starting at once cannot both believe they are alone.

use std::io;
use std::sync::atomic::Ordering::SeqCst;

use vgpu_core::MAX_DEVICES;

use crate::lock;
use crate::map::{INIT_LOCK, InitParams, Region};
use crate::slots::SlotState;

/// Which limit of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Bytes; 0 = no cap.
    Memory,
    /// Percent; 0 = no limit.
    Sm,
}

/// A limit a newcomer's environment replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitChange {
    pub device: usize,
    pub limit: Limit,
    pub old: u64,
    pub new: u64,
}

fn bit(device: usize, limit: Limit) -> u64 {
    1 << (device + if limit == Limit::Sm { MAX_DEVICES } else { 0 })
}

impl Region {
    /// Claims a slot for a process whose environment asks for `init`'s limits; when no live
    /// process holds the region, those limits replace the region's first (except an operator's).
    /// Returns the slot and what was replaced.
    pub fn claim_slot_with_limits(
        &self,
        pid: i32,
        hostpid: i32,
        init: &InitParams,
    ) -> io::Result<(usize, Vec<LimitChange>)> {
        let Some(file) = self.file() else { return Ok((self.claim_slot(pid, hostpid)?, Vec::new())) };
        lock::lock(file, INIT_LOCK)?;
        let changes = if self.any_live_slot() { Vec::new() } else { self.adopt_limits(init) };
        let claimed = self.claim_slot(pid, hostpid);
        let _ = lock::unlock(file, INIT_LOCK);
        Ok((claimed?, changes))
    }

    /// Whether any process holding a slot is alive.
    pub fn any_live_slot(&self) -> bool {
        (0..self.slots_in_use()).any(|i| self.slot_state(i, None) == SlotState::Alive)
    }

    /// Writes the environment's limits over those nobody holds any more; returns the changes.
    fn adopt_limits(&self, init: &InitParams) -> Vec<LimitChange> {
        let s = self.shared();
        let mut changes = Vec::new();
        for device in 0..MAX_DEVICES {
            let wanted = [
                (Limit::Memory, &s.limit[device], init.limits[device].unwrap_or(0)),
                (Limit::Sm, &s.sm_limit[device], init.sm_limits[device].map_or(0, u64::from)),
            ];
            for (limit, field, new) in wanted {
                if self.operator_set(device, limit) {
                    continue;
                }
                let old = field.swap(new, SeqCst);
                if old != new {
                    changes.push(LimitChange { device, limit, old, new });
                }
            }
        }
        s.priority.store(init.priority, SeqCst);
        changes
    }

    /// Whether an operator set this limit (`vgpu set`): then it outlives the processes.
    pub fn operator_set(&self, device: usize, limit: Limit) -> bool {
        device < MAX_DEVICES && self.extension().operator_set.load(SeqCst) & bit(device, limit) != 0
    }

    /// Marks a limit as an operator's (`set` true) or hands it back to the processes'
    /// environment (`set` false: the next process that finds the region unheld replaces it).
    pub fn set_operator_mark(&self, device: usize, limit: Limit, set: bool) -> std::io::Result<()> {
        if device >= MAX_DEVICES {
            return Ok(());
        }
        let marks = &self.extension().operator_set;
        if set {
            marks.fetch_or(bit(device, limit), SeqCst);
        } else {
            marks.fetch_and(!bit(device, limit), SeqCst);
        }
        // An operator tool works on a copy of the file: the word goes back with `pwrite`.
        let at = crate::layout::EXTENSION_OFFSET + std::mem::offset_of!(crate::layout::Extension, operator_set);
        self.write_back(at..at + 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(cap: Option<u64>) -> InitParams {
        InitParams { limits: [cap; MAX_DEVICES], ..Default::default() }
    }

    #[test]
    fn an_unheld_region_takes_the_newcomers_limits_and_an_operators_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.cache");
        let first = Region::open_or_create(&path, 0o600, &init(Some(4 << 30))).unwrap();
        let (slot, changes) = first.claim_slot_with_limits(1, 0, &init(Some(4 << 30))).unwrap();
        assert!(changes.is_empty(), "the creator's own limits: {changes:?}");

        // While the first holds the region, a newcomer asking for 2g changes nothing.
        let second = Region::open_or_create(&path, 0o600, &init(Some(2 << 30))).unwrap();
        let (other, changes) = second.claim_slot_with_limits(2, 0, &init(Some(2 << 30))).unwrap();
        assert!(changes.is_empty());
        assert_eq!(second.shared().limit[0].load(SeqCst), 4 << 30);
        second.release_slot(other);
        drop(second);
        first.release_slot(slot);
        drop(first);

        // Nobody holds it: a newcomer with no cap is uncapped, and is told what changed.
        let third = Region::open_or_create(&path, 0o600, &init(None)).unwrap();
        let (slot, changes) = third.claim_slot_with_limits(3, 0, &init(None)).unwrap();
        assert_eq!(changes.len(), MAX_DEVICES);
        assert_eq!(changes[0], LimitChange { device: 0, limit: Limit::Memory, old: 4 << 30, new: 0 });
        assert_eq!(third.shared().limit[0].load(SeqCst), 0);

        // An operator's cap outlives the processes, until handed back.
        third.shared().limit[1].store(6 << 30, SeqCst);
        third.set_operator_mark(1, Limit::Memory, true).unwrap();
        third.release_slot(slot);
        drop(third);
        let fourth = Region::open_or_create(&path, 0o600, &init(Some(1 << 30))).unwrap();
        let (slot, _) = fourth.claim_slot_with_limits(4, 0, &init(Some(1 << 30))).unwrap();
        assert_eq!(fourth.shared().limit[0].load(SeqCst), 1 << 30);
        assert_eq!(fourth.shared().limit[1].load(SeqCst), 6 << 30, "the operator's cap stays");
        fourth.set_operator_mark(1, Limit::Memory, false).unwrap();
        fourth.release_slot(slot);
        drop(fourth);
        let fifth = Region::open_or_create(&path, 0o600, &init(None)).unwrap();
        fifth.claim_slot_with_limits(5, 0, &init(None)).unwrap();
        assert_eq!(fifth.shared().limit[1].load(SeqCst), 0, "handed back to the environment");
    }
}
