//! Per-entry-point call counts, readable from C through `fakegpu_call_count`.
//!
//! Besides letting a test see which variant a caller really reached (`cuMemAllocAsync` or
//! `cuMemAllocAsync_ptsz`, `cuCtxCreate` or `cuCtxCreate_v2`), the distinct counter each
//! entry point records into keeps the variants' machine code distinct: otherwise the optimiser
//! folds identical wrappers into one symbol alias, and two "different" entry points would
//! share an address, which no real driver does.
//!
//! Each call site owns a static [`Counter`] (`tally!("name")`): a call is one relaxed
//! `fetch_add` plus one load, so the fake driver's entry points stay cheap and instruction
//! budgets measure the interposer, not this bookkeeping. A counter links itself into a global
//! lock-free list on its first use; readers walk the list.

use std::ffi::{CStr, c_char};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

pub struct Counter {
    name: &'static str,
    count: AtomicU64,
    linked: AtomicBool,
    next: AtomicPtr<Counter>,
}

static HEAD: AtomicPtr<Counter> = AtomicPtr::new(ptr::null_mut());

impl Counter {
    pub const fn new(name: &'static str) -> Self {
        Counter {
            name,
            count: AtomicU64::new(0),
            linked: AtomicBool::new(false),
            next: AtomicPtr::new(ptr::null_mut()),
        }
    }

    #[inline]
    pub fn hit(&'static self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if !self.linked.load(Ordering::Acquire) {
            self.link();
        }
    }

    #[cold]
    fn link(&'static self) {
        if self.linked.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self as *const Counter as *mut Counter;
        let mut head = HEAD.load(Ordering::Acquire);
        loop {
            self.next.store(head, Ordering::Relaxed);
            match HEAD.compare_exchange_weak(head, me, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }
}

/// Counts one entry into the calling entry point, named by a string literal.
#[macro_export]
macro_rules! tally {
    ($name:expr) => {{
        static COUNTER: $crate::tally::Counter = $crate::tally::Counter::new($name);
        COUNTER.hit();
    }};
}

/// Every (name, count) recorded so far, names merged (sorted by name).
fn counts() -> Vec<(&'static str, u64)> {
    let mut out: Vec<(&'static str, u64)> = Vec::new();
    let mut p = HEAD.load(Ordering::Acquire);
    // SAFETY: the list holds only `'static` counters, linked once and never unlinked.
    while let Some(c) = unsafe { p.as_ref() } {
        let n = c.count.load(Ordering::Relaxed);
        match out.iter_mut().find(|(k, _)| *k == c.name) {
            Some((_, v)) => *v += n,
            None => out.push((c.name, n)),
        }
        p = c.next.load(Ordering::Acquire);
    }
    out.retain(|(_, v)| *v > 0);
    out.sort_unstable();
    out
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
    counts().iter().find(|(k, _)| *k == name).map_or(0, |(_, v)| *v)
}

/// Writes `name=count` pairs for every entry point called so far, sorted by name and
/// space-separated, into `buf` (always NUL-terminated when `len > 0`, truncated if short).
/// Returns the length the full text needs, without the terminator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fakegpu_call_summary(buf: *mut c_char, len: usize) -> usize {
    let pairs = counts();
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
