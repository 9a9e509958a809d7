//! Streams, events and synchronisation, following the simulated timeline (see
//! `state::streams`). Waiting calls compute their deadline under the state lock and sleep
//! after releasing it, so other threads keep launching while one waits, as with a real driver.
//!
//! The `_ptsz` entry points are separate functions (their own addresses and call counts):
//! for them stream handle 0 is the calling thread's default stream.

use std::ffi::{c_int, c_uint};

use cuda_types::{CUresult, CUstream};

use super::{guard, need_init, nn, thread_id, with_ctx, with_stream};
use crate::state::state;
use crate::timeline::{now_ns, sleep_until};

/// `CUevent`.
pub type CUevent = *mut std::ffi::c_void;

fn create(stream: *mut CUstream, flags: c_uint) -> CUresult {
    guard(|| {
        let out = nn(stream)?;
        let h = with_ctx(|st, ctx, dev| Ok(st.stream_create(ctx, dev, flags)))?;
        unsafe { out.write(h as usize as CUstream) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreate(stream: *mut CUstream, flags: c_uint) -> CUresult {
    crate::tally!("cuStreamCreate");
    create(stream, flags)
}

/// Priorities change nothing in a FIFO timeline.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    stream: *mut CUstream,
    flags: c_uint,
    _priority: c_int,
) -> CUresult {
    crate::tally!("cuStreamCreateWithPriority");
    create(stream, flags)
}

fn destroy(stream: CUstream) -> CUresult {
    guard(|| with_ctx(|st, _, _| st.stream_destroy(stream as u64)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: CUstream) -> CUresult {
    crate::tally!("cuStreamDestroy_v2");
    destroy(stream)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy(stream: CUstream) -> CUresult {
    crate::tally!("cuStreamDestroy");
    destroy(stream)
}

fn synchronize(stream: CUstream, ptsz: bool) -> CUresult {
    guard(|| {
        let t = with_stream(stream, ptsz, |st, key| st.stream_sync_target(key))?;
        sleep_until(t);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamSynchronize(stream: CUstream) -> CUresult {
    crate::tally!("cuStreamSynchronize");
    synchronize(stream, false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamSynchronize_ptsz(stream: CUstream) -> CUresult {
    crate::tally!("cuStreamSynchronize_ptsz");
    synchronize(stream, true)
}

fn query(stream: CUstream, ptsz: bool) -> CUresult {
    guard(|| with_stream(stream, ptsz, |st, key| st.stream_query(key, now_ns())))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamQuery(stream: CUstream) -> CUresult {
    crate::tally!("cuStreamQuery");
    query(stream, false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamQuery_ptsz(stream: CUstream) -> CUresult {
    crate::tally!("cuStreamQuery_ptsz");
    query(stream, true)
}

fn wait_event(stream: CUstream, event: CUevent, ptsz: bool) -> CUresult {
    guard(|| with_stream(stream, ptsz, |st, key| st.stream_wait_event(key, event as u64)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamWaitEvent(stream: CUstream, event: CUevent, _flags: c_uint) -> CUresult {
    crate::tally!("cuStreamWaitEvent");
    wait_event(stream, event, false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamWaitEvent_ptsz(stream: CUstream, event: CUevent, _flags: c_uint) -> CUresult {
    crate::tally!("cuStreamWaitEvent_ptsz");
    wait_event(stream, event, true)
}

/// Waits for every stream of the current context (see `State::ctx_sync_target` for capture).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    crate::tally!("cuCtxSynchronize");
    guard(|| {
        let t = with_ctx(|st, ctx, _| st.ctx_sync_target(ctx, thread_id()))?;
        sleep_until(t);
        Ok(())
    })
}

// ---- events ----

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventCreate(event: *mut CUevent, flags: c_uint) -> CUresult {
    crate::tally!("cuEventCreate");
    guard(|| {
        let out = nn(event)?;
        let h = with_ctx(|st, ctx, _| Ok(st.event_create(ctx, flags)))?;
        unsafe { out.write(h as usize as CUevent) };
        Ok(())
    })
}

fn event_destroy(event: CUevent) -> CUresult {
    guard(|| {
        need_init()?;
        state().event_destroy(event as u64)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventDestroy_v2(event: CUevent) -> CUresult {
    crate::tally!("cuEventDestroy_v2");
    event_destroy(event)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventDestroy(event: CUevent) -> CUresult {
    crate::tally!("cuEventDestroy");
    event_destroy(event)
}

fn record(event: CUevent, stream: CUstream, ptsz: bool) -> CUresult {
    guard(|| with_stream(stream, ptsz, |st, key| st.event_record(event as u64, key, now_ns())))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventRecord(event: CUevent, stream: CUstream) -> CUresult {
    crate::tally!("cuEventRecord");
    record(event, stream, false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventRecord_ptsz(event: CUevent, stream: CUstream) -> CUresult {
    crate::tally!("cuEventRecord_ptsz");
    record(event, stream, true)
}

/// The flags (`CU_EVENT_RECORD_EXTERNAL`) only matter inside graphs, which keep no nodes here.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventRecordWithFlags(event: CUevent, stream: CUstream, _flags: c_uint) -> CUresult {
    crate::tally!("cuEventRecordWithFlags");
    record(event, stream, false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventRecordWithFlags_ptsz(event: CUevent, stream: CUstream, _flags: c_uint) -> CUresult {
    crate::tally!("cuEventRecordWithFlags_ptsz");
    record(event, stream, true)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventQuery(event: CUevent) -> CUresult {
    crate::tally!("cuEventQuery");
    guard(|| {
        need_init()?;
        state().event_query(event as u64, now_ns())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventSynchronize(event: CUevent) -> CUresult {
    crate::tally!("cuEventSynchronize");
    guard(|| {
        need_init()?;
        let t = state().event_target(event as u64)?;
        sleep_until(t);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, start: CUevent, end: CUevent) -> CUresult {
    crate::tally!("cuEventElapsedTime");
    guard(|| {
        let out = nn(ms)?;
        need_init()?;
        let v = state().event_elapsed(start as u64, end as u64, now_ns())?;
        unsafe { out.write(v) };
        Ok(())
    })
}

/// fakegpu's own: the GPU time (ns) and kernel count queued so far on device `ordinal` by
/// every process sharing its timeline, so a test can check what the device as a whole did.
/// Either out-pointer may be NULL. Needs no cuInit.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fakegpu_device_busy(ordinal: c_int, busy_ns: *mut u64, kernels: *mut u64) -> CUresult {
    guard(|| {
        let st = state();
        let (ns, n) = st.timeline.slot(st.device(ordinal)?).totals();
        // SAFETY: each pointer is NULL or valid, per the contract above.
        unsafe {
            if !busy_ns.is_null() {
                busy_ns.write(ns);
            }
            if !kernels.is_null() {
                kernels.write(n);
            }
        }
        Ok(())
    })
}
