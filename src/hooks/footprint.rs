//! Calls after which the driver's footprint grows outside any allocation entry point: module and
//! library loads (code and constant banks on the device) and graph instantiation (graph-exec
//! state, memory reserved for graph memory nodes). The call reaches the driver unchanged; after
//! a success the ledger is reconciled with the driver's count (`crate::reconcile`, rate-limited).

use std::ffi::{c_char, c_uint, c_void};

use cuda_types::*;

use crate::intercept::Real;

fn then_reconcile(real: Real<'_, CUresult>) -> CUresult {
    let rc = real.call();
    if rc.is_success() {
        crate::reconcile::after_growth();
    }
    rc
}

pub unsafe fn module_load(real: Real<'_, CUresult>, _module: *mut *mut c_void, _fname: *const c_char) -> CUresult {
    then_reconcile(real)
}

pub unsafe fn module_load_data(real: Real<'_, CUresult>, _module: *mut *mut c_void, _image: *const c_void) -> CUresult {
    then_reconcile(real)
}

pub unsafe fn module_load_data_ex(
    real: Real<'_, CUresult>,
    _module: *mut *mut c_void,
    _image: *const c_void,
    _count: c_uint,
    _options: *mut c_uint,
    _values: *mut *mut c_void,
) -> CUresult {
    then_reconcile(real)
}

#[allow(clippy::too_many_arguments)]
pub unsafe fn library_load(
    real: Real<'_, CUresult>,
    _library: *mut *mut c_void,
    _code: *const c_void,
    _jit_options: *mut c_uint,
    _jit_values: *mut *mut c_void,
    _jit_count: c_uint,
    _lib_options: *mut c_uint,
    _lib_values: *mut *mut c_void,
    _lib_count: c_uint,
) -> CUresult {
    then_reconcile(real)
}

pub unsafe fn graph_instantiate_with_flags(
    real: Real<'_, CUresult>,
    _exec: *mut CUgraphExec,
    _graph: *mut c_void,
    _flags: u64,
) -> CUresult {
    then_reconcile(real)
}

pub unsafe fn graph_instantiate(
    real: Real<'_, CUresult>,
    _exec: *mut CUgraphExec,
    _graph: *mut c_void,
    _error_node: *mut *mut c_void,
    _log: *mut c_char,
    _log_size: usize,
) -> CUresult {
    then_reconcile(real)
}

pub unsafe fn graph_instantiate_with_params(
    real: Real<'_, CUresult>,
    _exec: *mut CUgraphExec,
    _graph: *mut c_void,
    _params: *mut c_void,
) -> CUresult {
    then_reconcile(real)
}
