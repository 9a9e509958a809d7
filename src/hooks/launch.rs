//! Every launch path goes through the compute limiter's gate (`crate::limiter`) before the
//! driver launches. The `_ptsz` variants pass `ptsz = true`: their NULL stream is the calling
//! thread's default stream, which the limiter's events must also use.

use std::ffi::{c_uint, c_void};

use cuda_types::*;

use crate::intercept::Real;
use crate::limiter::{after_launch, before_launch};

fn gate(real: Real<'_, CUresult>, stream: CUstream, ptsz: bool) -> CUresult {
    let timed = before_launch(stream, ptsz);
    let rc = real.call();
    if timed {
        after_launch(stream, ptsz, rc);
    }
    rc
}

/// A handler and its `_ptsz` twin for a launch function whose stream is the argument `$stream`.
macro_rules! launch_pair {
    ($plain:ident, $ptsz:ident, $stream:ident ($($arg:ident : $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $plain(real: Real<'_, CUresult>, $($arg: $ty),*) -> CUresult {
            gate(real, $stream, false)
        }
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $ptsz(real: Real<'_, CUresult>, $($arg: $ty),*) -> CUresult {
            gate(real, $stream, true)
        }
    };
}

launch_pair!(launch_kernel, launch_kernel_ptsz, stream (
    _f: CUfunction, _gx: c_uint, _gy: c_uint, _gz: c_uint, _bx: c_uint, _by: c_uint, _bz: c_uint,
    _shared: c_uint, stream: CUstream, _params: *mut *mut c_void, _extra: *mut *mut c_void
));
launch_pair!(launch_cooperative, launch_cooperative_ptsz, stream (
    _f: CUfunction, _gx: c_uint, _gy: c_uint, _gz: c_uint, _bx: c_uint, _by: c_uint, _bz: c_uint,
    _shared: c_uint, stream: CUstream, _params: *mut *mut c_void
));
launch_pair!(graph_launch, graph_launch_ptsz, stream (_exec: CUgraphExec, stream: CUstream));

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
