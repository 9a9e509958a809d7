//! The `cuGetProcAddress` door. The real function answers first, with the caller's version and
//! flags; its return code and `symbolStatus` are kept verbatim. If the pointer it returns is the
//! real address of a function we hook, we hand out the hook instead. Because the driver picks the
//! ABI (`cuMemAlloc`@3020 → `cuMemAlloc_v2`, flags 2 → `_ptsz`) and each of its answers is one of
//! its exported functions (pointer identity, checked on driver 580 — see bench/), the swap gives
//! the caller exactly the ABI it asked for with no version table of our own.

use std::ffi::{CStr, c_char, c_int, c_void};

use cuda_types::*;

use crate::driver::{Lib, Real};
use crate::intercept::{hook_for, hook_name};
use crate::state::state;

unsafe fn swap(pfn: *mut *mut c_void, symbol: *const c_char, version: c_int, flags: u64) {
    // SAFETY: the driver wrote `*pfn` on success; `pfn` is non-null (checked by the caller).
    let found = unsafe { *pfn };
    if found.is_null() {
        return;
    }
    if let Some(hook) = hook_for(Lib::Cuda, found) {
        // SAFETY: same out-pointer.
        unsafe { *pfn = hook };
        // Arguments are evaluated only when debug logging is on.
        tracing::debug!(
            "cuGetProcAddress {}@{version} flags={flags} -> {}",
            // SAFETY: the driver just read `symbol` as a C string.
            unsafe { CStr::from_ptr(symbol) }.to_string_lossy(),
            hook_name(hook)
        );
    }
}

/// `cuGetProcAddress` and `_v2` (whose `symbolStatus` the driver writes, untouched).
///
/// # Safety
/// `symbol` a C string and `pfn` null or valid for writes (the driver's contract).
pub unsafe fn get_proc_address(
    real: Real<'_, CUresult>,
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CUresult {
    // The first thing the runtime does: the configuration (and the logger) start here.
    state();
    let rc = real.call();
    if rc.is_success() && !pfn.is_null() {
        // SAFETY: the driver succeeded, so `pfn` points at the function pointer it wrote.
        unsafe { swap(pfn, symbol, version, flags) };
    }
    rc
}
