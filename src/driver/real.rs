//! The driver call a hook was made for, as its handler sees it.

use std::cell::Cell;

/// The real call with the caller's own arguments. Remembers that it ran, so a panic after the
/// driver call returns the driver's answer instead of calling it twice (see `intercept::guard`).
pub struct Real<'a, R> {
    call: &'a dyn Fn() -> R,
    done: &'a Cell<Option<R>>,
    per_thread: bool,
}

impl<'a, R: Copy> Real<'a, R> {
    pub fn new(call: &'a dyn Fn() -> R, done: &'a Cell<Option<R>>, per_thread: bool) -> Self {
        Real { call, done, per_thread }
    }

    #[inline]
    pub fn call(&self) -> R {
        let r = (self.call)();
        self.done.set(Some(r));
        r
    }

    /// Whether the export called is a `_ptsz`/`_ptds` twin: its NULL stream is the calling
    /// thread's default stream, not the legacy one.
    #[inline]
    pub fn per_thread_stream(&self) -> bool {
        self.per_thread
    }
}
