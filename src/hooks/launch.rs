//! Every launch path goes through the compute limiter's gate (`crate::limiter`) before the
//! driver launches. A `_ptsz` twin's NULL stream is the calling thread's default stream, which
//! the limiter's events must also use.

use cuda_types::*;

use crate::driver::Real;
use crate::limiter::{after_launch, before_launch};

/// A launch on `stream`.
pub fn gate(real: Real<'_, CUresult>, stream: CUstream) -> CUresult {
    let ptsz = real.per_thread_stream();
    let timed = before_launch(stream, ptsz);
    let rc = real.call();
    if timed {
        after_launch(stream, ptsz, rc);
    }
    rc
}

/// `cuLaunchKernelEx`: the stream is a field of the launch configuration.
///
/// # Safety
/// `config` is null or points at a valid `CUlaunchConfig` (the driver's contract).
pub unsafe fn gate_config(real: Real<'_, CUresult>, config: *const CUlaunchConfig) -> CUresult {
    // SAFETY: read only when non-null; the driver reads the same field.
    let stream = unsafe { config.as_ref() }.map_or(std::ptr::null_mut(), |c| c.hStream);
    gate(real, stream)
}
