//! The CUDA driver entry points. Each `extern "C"` function validates its pointers, then
//! runs its body inside [`guard`], so a bug in the fake becomes `CUDA_ERROR_UNKNOWN` rather
//! than unwinding into C (which Rust turns into an abort).

pub mod array;
pub mod context;
pub mod device;
pub mod graph;
pub mod ipc;
pub mod launch;
pub mod memory;
pub mod misc;
pub mod pool;
pub mod procaddr;
pub mod stream;
pub mod vmm;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod timeline_tests;

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cuda_types::{CUresult, CUstream};

use crate::state::{Res, State, StreamKey, Submitted, Work, state};
use crate::timeline::{now_ns, sleep_until};

static INITIALIZED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's context stack; the top is the current context. Handles are plain
    /// numbers: validity is checked against the shared state on every use, so a context
    /// destroyed by another thread is noticed.
    static CTX_STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

pub fn set_initialized() {
    INITIALIZED.store(true, Ordering::Release);
}

/// Like the driver, almost everything fails with `CUDA_ERROR_NOT_INITIALIZED` before cuInit.
pub fn need_init() -> Res<()> {
    if INITIALIZED.load(Ordering::Acquire) { Ok(()) } else { Err(CUresult::ERROR_NOT_INITIALIZED) }
}

pub fn guard(f: impl FnOnce() -> Res<()>) -> CUresult {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CUresult::SUCCESS,
        Ok(Err(e)) => e,
        Err(_) => CUresult::ERROR_UNKNOWN,
    }
}

/// Rejects a NULL out-pointer before any side effect happens.
pub fn nn<T>(p: *mut T) -> Res<*mut T> {
    if p.is_null() { Err(CUresult::ERROR_INVALID_VALUE) } else { Ok(p) }
}

/// A number for the calling thread (never reused), naming its per-thread default streams and
/// the owner of a thread-local capture.
pub fn thread_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    ID.with(|id| *id)
}

/// Runs `f` on the stream a handle names; `ptsz`: the caller is a `_ptsz` entry point, for
/// which handle 0 means the per-thread default stream instead of the legacy one.
pub fn with_stream<T>(stream: CUstream, ptsz: bool, f: impl FnOnce(&mut State, StreamKey) -> Res<T>) -> Res<T> {
    with_ctx(|st, ctx, dev| {
        let key = st.stream_key(stream as u64, ctx, dev, thread_id(), ptsz)?;
        f(st, key)
    })
}

/// Queues work on a stream and returns at once, unless the stream's queue is full: then it
/// sleeps (without the state lock) until the oldest pending launch completes, like a launch
/// blocking on a full command queue.
pub fn enqueue(stream: CUstream, ptsz: bool, work: impl Fn(&State) -> Res<Work>) -> Res<()> {
    loop {
        let done = with_stream(stream, ptsz, |st, key| {
            let w = work(st)?;
            st.submit(key, now_ns(), w)
        })?;
        match done {
            Submitted::Full(t) => sleep_until(t),
            Submitted::Queued(_) | Submitted::Captured => return Ok(()),
        }
    }
}

pub fn current_ctx() -> Option<u64> {
    CTX_STACK.with(|s| s.borrow().last().copied())
}

pub fn with_stack<T>(f: impl FnOnce(&mut Vec<u64>) -> T) -> T {
    CTX_STACK.with(|s| f(&mut s.borrow_mut()))
}

/// `FAKEGPU_HIDDEN_GROWTH` (a size, default 0): device memory the driver takes for itself, behind
/// an interposer's back, on every module or library load and graph instantiation (as a real
/// driver does for module code, graph-exec state and graph memory). It is held by the current
/// context (released with it), shows in NVML's used and process figures, and passes through no
/// allocation entry point.
pub fn grow_behind_the_ledger() {
    static BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let bytes = *BYTES.get_or_init(|| {
        let v = std::env::var("FAKEGPU_HIDDEN_GROWTH").unwrap_or_default();
        crate::config::parse_size(&v).unwrap_or(0)
    });
    if bytes > 0 {
        let _ = with_ctx(|st, ctx, dev| st.alloc(ctx, dev, bytes, crate::state::AllocKind::Linear));
    }
}

/// Runs `f` on the state with the current context and its device; memory calls need one.
pub fn with_ctx<T>(f: impl FnOnce(&mut State, u64, usize) -> Res<T>) -> Res<T> {
    need_init()?;
    let ctx = current_ctx().ok_or(CUresult::ERROR_INVALID_CONTEXT)?;
    let mut st = state();
    let dev = st.ctx_device(ctx)?;
    f(&mut st, ctx, dev)
}

/// Copies `text` into a caller buffer of `len` bytes, truncating and always terminating.
///
/// # Safety
/// `buf` must be valid for `len` bytes.
pub unsafe fn write_cstr(buf: *mut std::ffi::c_char, len: usize, text: &str) -> Res<()> {
    if buf.is_null() || len == 0 {
        return Err(CUresult::ERROR_INVALID_VALUE);
    }
    let n = text.len().min(len - 1);
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr().cast(), buf, n);
        *buf.add(n) = 0;
    }
    Ok(())
}
