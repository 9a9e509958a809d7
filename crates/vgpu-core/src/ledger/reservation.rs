//! An allocation in flight: bytes taken out of the cap before the driver call, committed to a
//! record once the driver has allocated, rolled back on drop otherwise.

use super::{Accounting, Allocation, Denied, Key, Kind, MemoryLedger};

/// Bytes taken out of the cap for an allocation in flight.
#[must_use]
pub struct Reservation<'a, A: Accounting> {
    ledger: &'a MemoryLedger<A>,
    dev: usize,
    bytes: u64,
    /// `Data` out of the cap, or `Spilled` out of the spill limit.
    kind: Kind,
    settled: bool,
}

impl<'a, A: Accounting> Reservation<'a, A> {
    /// `bytes` on `dev`, charged already as `kind` (`Data` or `Spilled`).
    pub(super) fn new(ledger: &'a MemoryLedger<A>, dev: usize, bytes: u64, kind: Kind) -> Self {
        Reservation { ledger, dev, bytes, kind, settled: false }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether this reserves host memory past the cap rather than room under it.
    pub fn spilled(&self) -> bool {
        self.kind == Kind::Spilled
    }

    /// The driver's answer to the allocation this reserved: counts an out-of-memory refusal
    /// (the reservation itself is rolled back when dropped).
    pub fn driver_answered(&self, out_of_memory: bool) {
        if out_of_memory {
            self.ledger.accounting.record_driver_denial(self.dev);
        }
    }

    /// Changes the reserved amount to what the driver really allocated (pitch, array layout).
    /// Growing is checked against the cap like a new reservation.
    pub fn resize(&mut self, bytes: u64) -> Result<(), Denied> {
        debug_assert_eq!(self.kind, Kind::Data, "only device reservations are resized");
        let acc = &self.ledger.accounting;
        if bytes > self.bytes {
            let extra = bytes - self.bytes;
            let limit = acc.limit(self.dev);
            if !acc.try_charge(self.dev, extra, limit) {
                acc.record_denial(self.dev);
                return Err(Denied {
                    dev: self.dev,
                    requested: bytes,
                    used: acc.used(self.dev),
                    limit: limit.unwrap_or(0),
                    spill: false,
                });
            }
        } else {
            acc.uncharge(self.dev, self.bytes - bytes, Kind::Data);
        }
        self.bytes = bytes;
        Ok(())
    }

    /// The driver allocated: keep the charge until `key` is freed.
    pub fn commit(self, key: Key, context: u64) {
        let kind = self.kind;
        self.commit_as(key, context, kind)
    }

    /// As `commit`, for memory of another kind (a context's own cost).
    pub fn commit_as(mut self, key: Key, context: u64, kind: Kind) {
        if kind != self.kind {
            let acc = &self.ledger.accounting;
            acc.uncharge(self.dev, self.bytes, self.kind);
            acc.charge(self.dev, self.bytes, kind);
        }
        self.settled = true;
        self.ledger.insert(key, Allocation { dev: self.dev, bytes: self.bytes, kind, context });
    }
}

impl<A: Accounting> Drop for Reservation<'_, A> {
    fn drop(&mut self) {
        if !self.settled {
            self.ledger.accounting.uncharge(self.dev, self.bytes, self.kind);
        }
    }
}
