//! Every launch path goes through the compute limiter's gate (`crate::limiter`) before the
//! driver launches. The `_ptsz` variants pass `ptsz = true`: their NULL stream is the calling
//! thread's default stream, which the limiter's events must also use.

use std::ffi::{c_uint, c_void};

use cuda_types::*;

use crate::intercept::Real;
use crate::limiter::before_launch;

fn gate(real: Real<'_, CUresult>, stream: CUstream, ptsz: bool) -> CUresult {
    before_launch(stream, ptsz);
    real.call()
}

#[allow(clippy::too_many_arguments)]
pub unsafe fn launch_kernel(
    real: Real<'_, CUresult>,
    _f: CUfunction,
    _gx: c_uint,
    _gy: c_uint,
    _gz: c_uint,
    _bx: c_uint,
    _by: c_uint,
    _bz: c_uint,
    _shared: c_uint,
    stream: CUstream,
    _params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    gate(real, stream, false)
}

#[allow(clippy::too_many_arguments)]
pub unsafe fn launch_kernel_ptsz(
    real: Real<'_, CUresult>,
    _f: CUfunction,
    _gx: c_uint,
    _gy: c_uint,
    _gz: c_uint,
    _bx: c_uint,
    _by: c_uint,
    _bz: c_uint,
    _shared: c_uint,
    stream: CUstream,
    _params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    gate(real, stream, true)
}

#[allow(clippy::too_many_arguments)]
pub unsafe fn launch_cooperative(
    real: Real<'_, CUresult>,
    _f: CUfunction,
    _gx: c_uint,
    _gy: c_uint,
    _gz: c_uint,
    _bx: c_uint,
    _by: c_uint,
    _bz: c_uint,
    _shared: c_uint,
    stream: CUstream,
    _params: *mut *mut c_void,
) -> CUresult {
    gate(real, stream, false)
}

#[allow(clippy::too_many_arguments)]
pub unsafe fn launch_cooperative_ptsz(
    real: Real<'_, CUresult>,
    _f: CUfunction,
    _gx: c_uint,
    _gy: c_uint,
    _gz: c_uint,
    _bx: c_uint,
    _by: c_uint,
    _bz: c_uint,
    _shared: c_uint,
    stream: CUstream,
    _params: *mut *mut c_void,
) -> CUresult {
    gate(real, stream, true)
}

fn config_stream(config: *const CUlaunchConfig) -> CUstream {
    // SAFETY: read only when non-null; the driver reads the same field.
    unsafe { config.as_ref() }.map_or(std::ptr::null_mut(), |c| c.hStream)
}

pub unsafe fn launch_kernel_ex(
    real: Real<'_, CUresult>,
    config: *const CUlaunchConfig,
    _f: CUfunction,
    _params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    gate(real, config_stream(config), false)
}

pub unsafe fn launch_kernel_ex_ptsz(
    real: Real<'_, CUresult>,
    config: *const CUlaunchConfig,
    _f: CUfunction,
    _params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    gate(real, config_stream(config), true)
}

pub unsafe fn graph_launch(real: Real<'_, CUresult>, _exec: CUgraphExec, stream: CUstream) -> CUresult {
    gate(real, stream, false)
}

pub unsafe fn graph_launch_ptsz(real: Real<'_, CUresult>, _exec: CUgraphExec, stream: CUstream) -> CUresult {
    gate(real, stream, true)
}
