//! What the ledger charges to: the kinds of memory it counts and the store that counts them.

use crate::MAX_DEVICES;

/// What a charge is for (HAMi's region keeps context and data sizes apart; both count against
/// the cap). `Spilled` is host memory handed out past the cap (`CUDA_OVERSUBSCRIBE`): it is
/// charged to the spill counter, never to the device's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Data,
    Context,
    Spilled,
}

/// Where usage is counted and limits are read. `dev` is always a CUDA ordinal of this process,
/// as the ledger and the hooks name devices: the library's container implements this trait and
/// maps each ordinal onto its index in the shared region (where the region's own operations,
/// by index, live).
pub trait Accounting: Send + Sync {
    /// The cap for `dev`, read live (`None` = uncapped).
    fn limit(&self, dev: usize) -> Option<u64>;
    /// Adds `bytes` of data to `dev` if the total then stays within `limit`; all or nothing.
    fn try_charge(&self, dev: usize, bytes: u64, limit: Option<u64>) -> bool;
    /// Adds `bytes` unconditionally (memory the driver already handed out, e.g. a context).
    fn charge(&self, dev: usize, bytes: u64, kind: Kind);
    fn uncharge(&self, dev: usize, bytes: u64, kind: Kind);
    /// Bytes in use on `dev` by everyone this store accounts for.
    fn used(&self, dev: usize) -> u64;
    /// The cap refused an allocation (counted for operators; nothing to do per process).
    fn record_denial(&self, _dev: usize) {}
    /// The driver itself was out of memory while the cap had room (counted for operators).
    fn record_driver_denial(&self, _dev: usize) {}
    /// Whether any device has a cap (the hot paths' "uncapped: pass through" test).
    fn any_limit(&self) -> bool {
        (0..MAX_DEVICES).any(|d| self.limit(d).is_some())
    }
    /// What this process alone holds on `dev`, driver overhead included.
    fn own(&self, dev: usize) -> u64 {
        self.used(dev)
    }
    /// Of [`own`](Self::own), the driver overhead (see `overhead`).
    fn driver_overhead(&self, _dev: usize) -> u64 {
        0
    }
    /// Sets this process's driver overhead on `dev`, charging or releasing the difference
    /// unconditionally: the driver has spent (or given back) that memory already.
    fn set_driver_overhead(&self, _dev: usize, _bytes: u64) {}
    /// Adds `bytes` to the spill counter of `dev` if the container's spill then stays within
    /// `limit`; all or nothing, racing processes as for [`try_charge`](Self::try_charge).
    /// `charge`/`uncharge` with [`Kind::Spilled`] move the same counter unconditionally.
    fn try_charge_spill(&self, _dev: usize, _bytes: u64, _limit: u64) -> bool {
        false
    }
    /// Bytes the container has spilled past the cap on `dev`.
    fn spilled(&self, _dev: usize) -> u64 {
        0
    }
    /// The spill limit refused an allocation (counted for operators).
    fn record_spill_denial(&self, _dev: usize) {}
    /// Changes when this process is no longer the one the records were made in (a forked
    /// child): the ledger then forgets every record, since the parent's memory is not the
    /// child's to free or to count.
    fn epoch(&self) -> u64 {
        0
    }
}
