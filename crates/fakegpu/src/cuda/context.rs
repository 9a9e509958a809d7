//! Primary and created contexts and the per-thread context stack.

use std::ffi::{c_int, c_uint, c_void};

use cuda_types::{CUcontext, CUdevice, CUresult};

use super::{current_ctx, guard, need_init, nn, with_ctx, with_stack};
use crate::state::{Res, state};

fn handle(ctx: CUcontext) -> u64 {
    ctx as u64
}

fn ptr(handle: u64) -> CUcontext {
    handle as usize as CUcontext
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    crate::tally!("cuDevicePrimaryCtxRetain");
    guard(|| {
        let out = nn(pctx)?;
        need_init()?;
        let mut st = state();
        let d = st.device(dev)?;
        let h = st.primary_retain(d)?;
        unsafe { out.write(ptr(h)) };
        Ok(())
    })
}

fn primary_release(dev: CUdevice) -> CUresult {
    guard(|| {
        need_init()?;
        let mut st = state();
        let d = st.device(dev)?;
        st.primary_release(d)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    crate::tally!("cuDevicePrimaryCtxRelease_v2");
    primary_release(dev)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult {
    crate::tally!("cuDevicePrimaryCtxRelease");
    primary_release(dev)
}

fn primary_reset(dev: CUdevice) -> CUresult {
    guard(|| {
        need_init()?;
        let mut st = state();
        let d = st.device(dev)?;
        st.primary_reset(d);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    crate::tally!("cuDevicePrimaryCtxReset_v2");
    primary_reset(dev)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset(dev: CUdevice) -> CUresult {
    crate::tally!("cuDevicePrimaryCtxReset");
    primary_reset(dev)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxGetState(dev: CUdevice, flags: *mut c_uint, active: *mut c_int) -> CUresult {
    crate::tally!("cuDevicePrimaryCtxGetState");
    guard(|| {
        let (flags, active) = (nn(flags)?, nn(active)?);
        need_init()?;
        let st = state();
        let d = st.device(dev)?;
        let (f, a) = st.primary_state(d);
        unsafe {
            flags.write(f);
            active.write(a as c_int);
        }
        Ok(())
    })
}

/// Every cuCtxCreate flavour: charge the overhead, push the new context on this thread.
fn create(pctx: *mut CUcontext, dev: CUdevice) -> Res<()> {
    let out = nn(pctx)?;
    need_init()?;
    let h = {
        let mut st = state();
        let d = st.device(dev)?;
        st.ctx_create(d)?
    };
    with_stack(|s| s.push(h));
    unsafe { out.write(ptr(h)) };
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v2(pctx: *mut CUcontext, _flags: c_uint, dev: CUdevice) -> CUresult {
    crate::tally!("cuCtxCreate_v2");
    guard(|| create(pctx, dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate(pctx: *mut CUcontext, _flags: c_uint, dev: CUdevice) -> CUresult {
    crate::tally!("cuCtxCreate");
    guard(|| create(pctx, dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v3(
    pctx: *mut CUcontext,
    params: *mut c_void,
    num_params: c_int,
    _flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    crate::tally!("cuCtxCreate_v3");
    guard(|| {
        if num_params < 0 || (num_params > 0 && params.is_null()) {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        create(pctx, dev)
    })
}

/// The creation parameters (execution affinity, CIG) change nothing the fake models.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v4(
    pctx: *mut CUcontext,
    _params: *mut c_void,
    _flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    crate::tally!("cuCtxCreate_v4");
    guard(|| create(pctx, dev))
}

fn destroy(ctx: CUcontext) -> CUresult {
    guard(|| {
        need_init()?;
        let h = handle(ctx);
        state().ctx_destroy(h)?;
        with_stack(|s| s.retain(|&c| c != h));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: CUcontext) -> CUresult {
    crate::tally!("cuCtxDestroy_v2");
    destroy(ctx)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy(ctx: CUcontext) -> CUresult {
    crate::tally!("cuCtxDestroy");
    destroy(ctx)
}

/// A context handle this process knows (active or not: a released primary context may be
/// made current; calls on it then fail with `CUDA_ERROR_INVALID_CONTEXT`).
fn known(h: u64) -> Res<()> {
    if state().ctxs.contains_key(&h) { Ok(()) } else { Err(CUresult::ERROR_INVALID_CONTEXT) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: CUcontext) -> CUresult {
    crate::tally!("cuCtxSetCurrent");
    guard(|| {
        need_init()?;
        let h = handle(ctx);
        if h == 0 {
            with_stack(|s| s.pop());
            return Ok(());
        }
        known(h)?;
        with_stack(|s| match s.last_mut() {
            Some(top) => *top = h,
            None => s.push(h),
        });
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut CUcontext) -> CUresult {
    crate::tally!("cuCtxGetCurrent");
    guard(|| {
        let out = nn(pctx)?;
        need_init()?;
        unsafe { out.write(ptr(current_ctx().unwrap_or(0))) };
        Ok(())
    })
}

fn push(ctx: CUcontext) -> CUresult {
    guard(|| {
        need_init()?;
        let h = handle(ctx);
        if h == 0 {
            return Err(CUresult::ERROR_INVALID_CONTEXT);
        }
        known(h)?;
        with_stack(|s| s.push(h));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPushCurrent_v2(ctx: CUcontext) -> CUresult {
    crate::tally!("cuCtxPushCurrent_v2");
    push(ctx)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPushCurrent(ctx: CUcontext) -> CUresult {
    crate::tally!("cuCtxPushCurrent");
    push(ctx)
}

/// The out-pointer is optional, as in the driver.
fn pop(pctx: *mut CUcontext) -> CUresult {
    guard(|| {
        need_init()?;
        let h = with_stack(|s| s.pop()).ok_or(CUresult::ERROR_INVALID_CONTEXT)?;
        if !pctx.is_null() {
            unsafe { pctx.write(ptr(h)) };
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(pctx: *mut CUcontext) -> CUresult {
    crate::tally!("cuCtxPopCurrent_v2");
    pop(pctx)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPopCurrent(pctx: *mut CUcontext) -> CUresult {
    crate::tally!("cuCtxPopCurrent");
    pop(pctx)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetDevice(device: *mut CUdevice) -> CUresult {
    crate::tally!("cuCtxGetDevice");
    guard(|| {
        let out = nn(device)?;
        let dev = with_ctx(|st, _, dev| st.ordinal(dev))?;
        unsafe { out.write(dev as CUdevice) };
        Ok(())
    })
}

/// Peer access from the current context to `peer`'s device: bookkeeping only, since the
/// fake's memory is never touched; enabling it costs no device memory.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxEnablePeerAccess(peer: CUcontext, flags: c_uint) -> CUresult {
    crate::tally!("cuCtxEnablePeerAccess");
    guard(|| {
        if flags != 0 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        with_ctx(|st, ctx, _| st.peer_enable(ctx, handle(peer)))
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDisablePeerAccess(peer: CUcontext) -> CUresult {
    crate::tally!("cuCtxDisablePeerAccess");
    guard(|| with_ctx(|st, ctx, _| st.peer_disable(ctx, handle(peer))))
}
