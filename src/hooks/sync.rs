//! Waits for the GPU: the compute limiter closes its measured interval before the wait, so the
//! time the stream then stands idle (the host working on the result) is not charged as GPU time.

use cuda_types::*;

use crate::driver::{self, Real};
use crate::limiter::{after_sync, before_sync};

fn wait(real: Real<'_, CUresult>, drains: Option<(CUstream, bool)>) -> CUresult {
    let closed = before_sync(drains);
    let rc = real.call();
    if closed && rc.is_success() {
        after_sync();
    }
    rc
}

/// `cuStreamSynchronize` and its `_ptsz` twin.
pub fn stream(real: Real<'_, CUresult>, stream: CUstream) -> CUresult {
    let ptsz = real.per_thread_stream();
    wait(real, Some((stream, ptsz)))
}

/// `cuCtxSynchronize`: the current context.
pub fn context(real: Real<'_, CUresult>) -> CUresult {
    wait(real, None)
}

/// `cuCtxSynchronize_v2(ctx)`: a NULL context is the current one; another context's wait
/// drains nothing this thread measures. (Unlimited, the export never gets here.)
pub fn context_v2(real: Real<'_, CUresult>, ctx: CUcontext) -> CUresult {
    let current = ctx.is_null() || driver::current_context_handle().is_ok_and(|c| c == ctx);
    if current { wait(real, None) } else { real.call() }
}
