//! Per-entry-point call counts, readable from C through `fakegpu_call_count`.
//!
//! Besides letting a test see which variant a caller really reached (`cuMemAllocAsync` or
//! `cuMemAllocAsync_ptsz`, `cuCtxCreate` or `cuCtxCreate_v2`), the distinct string each
//! entry point records keeps the variants' machine code distinct: otherwise the optimiser
//! folds identical wrappers into one symbol alias, and two "different" entry points would
//! share an address, which no real driver does.

use std::collections::HashMap;
use std::ffi::{CStr, c_char};
use std::sync::Mutex;

static COUNTS: Mutex<Option<HashMap<&'static str, u64>>> = Mutex::new(None);

pub fn tally(name: &'static str) {
    let mut counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    *counts.get_or_insert_default().entry(name).or_insert(0) += 1;
}

/// How many times the exported function `name` has been entered in this process (0 for
/// unknown names and NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fakegpu_call_count(name: *const c_char) -> u64 {
    if name.is_null() {
        return 0;
    }
    let name = unsafe { CStr::from_ptr(name) };
    let Ok(name) = name.to_str() else { return 0 };
    let counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    counts.as_ref().and_then(|c| c.get(name).copied()).unwrap_or(0)
}

/// Writes `name=count` pairs for every entry point called so far, sorted by name and
/// space-separated, into `buf` (always NUL-terminated when `len > 0`, truncated if short).
/// Returns the length the full text needs, without the terminator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fakegpu_call_summary(buf: *mut c_char, len: usize) -> usize {
    let mut pairs: Vec<(&'static str, u64)> = {
        let counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
        counts.as_ref().map(|c| c.iter().map(|(k, v)| (*k, *v)).collect()).unwrap_or_default()
    };
    pairs.sort_unstable();
    let text = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
    if !buf.is_null() && len > 0 {
        let n = text.len().min(len - 1);
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr().cast(), buf, n);
            *buf.add(n) = 0;
        }
    }
    text.len()
}
