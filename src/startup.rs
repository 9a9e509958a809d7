//! What this library's one-time work costs a process start: the configuration and the region,
//! the hook table, the context's cost, the node table. A process start on a GPU machine varies by
//! more than the 2 ms budget from one run to the next, so the budget is checked with this sum,
//! taken in-process (`bench/gpu/startup_split.sh`); it is logged once, at debug level, when the
//! process's first `cuMemAlloc` succeeds.

use std::cell::Cell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};

use crate::clock::now_ns;

static SPENT_NS: AtomicU64 = AtomicU64::new(0);
static REPORTED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Times a piece of one-time work until dropped. Nested pieces count once, in the outermost.
pub struct OneTime {
    start: Cell<u64>,
}

impl OneTime {
    pub fn begin() -> Self {
        DEPTH.with(|d| d.set(d.get() + 1));
        OneTime { start: Cell::new(now_ns()) }
    }

    /// Runs `f`, whose time is not ours (the driver creating a context).
    pub fn exclude<R>(&self, f: impl FnOnce() -> R) -> R {
        let t = now_ns();
        let r = f();
        self.start.set(self.start.get() + now_ns().saturating_sub(t));
        r
    }
}

impl Drop for OneTime {
    fn drop(&mut self) {
        let outermost = DEPTH.with(|d| {
            d.set(d.get().saturating_sub(1));
            d.get() == 0
        });
        if outermost {
            SPENT_NS.fetch_add(now_ns().saturating_sub(self.start.get()), Relaxed);
        }
    }
}

/// Called when a device allocation succeeded: the first one reports the sum.
#[inline]
pub fn allocated() {
    if !REPORTED.load(Relaxed) {
        report();
    }
}

#[cold]
fn report() {
    if !REPORTED.swap(true, Relaxed) {
        tracing::debug!(
            "start-up: {} µs of one-time work in libvgpu before the first allocation",
            SPENT_NS.load(Relaxed) / 1000
        );
    }
}
