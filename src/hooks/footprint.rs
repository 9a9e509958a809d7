//! Calls after which the driver's footprint grows outside any allocation entry point: module and
//! library loads (code and constant banks on the device) and graph instantiation (graph-exec
//! state, memory reserved for graph memory nodes). The call reaches the driver unchanged; after
//! a success the ledger is reconciled with the driver's count (`crate::reconcile`, rate-limited).

use cuda_types::*;

use crate::driver::Real;

pub fn then_reconcile(real: Real<'_, CUresult>) -> CUresult {
    let rc = real.call();
    if rc.is_success() {
        crate::reconcile::after_growth();
    }
    rc
}
