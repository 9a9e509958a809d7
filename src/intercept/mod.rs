//! The three doors into libvgpu and the shim every hook runs through.
//!
//! A hooked function is declared once in [`table`]; the `hooks!` macro turns the declaration into
//! (1) the `#[no_mangle]` export, (2) a lazily resolved slot for the real function, and (3) an entry
//! of [`table::HOOKS`], which the `dlsym` ([`dlsym`]) and `cuGetProcAddress` ([`procaddr`]) doors
//! use to swap a real address for our hook. Adding a hook is one line there plus an ordinary Rust
//! handler in `hooks`.

pub mod dlsym;
pub mod procaddr;
pub mod table;

use std::cell::Cell;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::driver::{Code, Lib, Real, RealFn, libs};

/// One hooked export.
pub struct Hook {
    pub name: &'static str,
    pub real: &'static RealFn,
    pub hook: *const c_void,
}
// SAFETY: `hook` is the address of a function, immutable and valid for the program's lifetime.
unsafe impl Sync for Hook {}

/// Runs a handler; if our code panics, logs once and falls back to the driver (fail open).
#[inline]
pub fn guard<R: Code>(
    name: &'static str,
    per_thread: bool,
    call: &dyn Fn() -> R,
    handler: impl FnOnce(Real<'_, R>) -> R,
) -> R {
    let done = Cell::new(None);
    match catch_unwind(AssertUnwindSafe(|| handler(Real::new(call, &done, per_thread)))) {
        Ok(r) => r,
        Err(_) => {
            report_panic(name);
            done.get().unwrap_or_else(call)
        }
    }
}

#[cold]
fn report_panic(name: &str) {
    static ONCE: AtomicBool = AtomicBool::new(false);
    if !ONCE.swap(true, Ordering::Relaxed) {
        tracing::error!("internal error in the {name} hook; passing calls through to the driver");
    }
}

/// Real address → hook, per library, sorted for binary search. Built once the library is loaded.
fn address_map(lib: Lib) -> Option<&'static [(usize, usize)]> {
    static MAPS: [OnceLock<Vec<(usize, usize)>>; 2] = [OnceLock::new(), OnceLock::new()];
    let slot = &MAPS[lib as usize];
    if let Some(m) = slot.get() {
        return Some(m);
    }
    // Only a library that is loaded can have handed out the address being checked.
    libs::loaded_handle(lib)?;
    Some(slot.get_or_init(|| {
        let _timed = crate::startup::OneTime::begin();
        let mut map: Vec<(usize, usize)> = table::HOOKS
            .iter()
            .filter(|h| h.real.lib == lib)
            .filter_map(|h| Some((h.real.addr()?, h.hook as usize)))
            .collect();
        map.sort_unstable();
        map
    }))
}

/// Our hook for a real function address of `lib`, if we hook it.
pub fn hook_for(lib: Lib, real: *mut c_void) -> Option<*mut c_void> {
    let map = address_map(lib)?;
    let i = map.binary_search_by_key(&(real as usize), |e| e.0).ok()?;
    Some(map[i].1 as *mut c_void)
}

/// The hook's name for a hook address (for debug logs and tests).
pub fn hook_name(hook: *mut c_void) -> &'static str {
    table::HOOKS.iter().find(|h| std::ptr::eq(h.hook, hook)).map_or("?", |h| h.name)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use cuda_types::{CUresult, nvmlReturn_t};

    use super::guard;

    /// A real function that counts its calls and answers `code`.
    fn counting<'a, R: Copy + 'a>(calls: &'a Cell<u32>, code: R) -> impl Fn() -> R + 'a {
        move || {
            calls.set(calls.get() + 1);
            code
        }
    }

    #[test]
    fn panic_before_the_real_call_falls_through_to_it_once() {
        let calls = Cell::new(0);
        let real = counting(&calls, CUresult::ERROR_INVALID_VALUE);
        let r =
            guard::<CUresult>("test_before", false, &real, |_real| panic!("handler fails before calling the driver"));
        assert_eq!(r, CUresult::ERROR_INVALID_VALUE, "the driver's own code");
        assert_eq!(calls.get(), 1, "the driver is called exactly once");
    }

    #[test]
    fn panic_after_the_real_call_returns_its_code_without_calling_again() {
        let calls = Cell::new(0);
        let real = counting(&calls, CUresult::ERROR_OUT_OF_MEMORY);
        let r = guard::<CUresult>("test_after", false, &real, |real| {
            let rc = real.call();
            assert_eq!(rc, CUresult::ERROR_OUT_OF_MEMORY);
            panic!("handler fails after the driver answered")
        });
        assert_eq!(r, CUresult::ERROR_OUT_OF_MEMORY, "the recorded code");
        assert_eq!(calls.get(), 1, "never a second driver call");
    }

    #[test]
    fn panic_after_a_successful_real_call_returns_success() {
        let calls = Cell::new(0);
        let real = counting(&calls, nvmlReturn_t::SUCCESS);
        let r = guard::<nvmlReturn_t>("test_after_nvml", false, &real, |real| {
            real.call();
            panic!("post-processing of a successful call fails")
        });
        assert_eq!(r, nvmlReturn_t::SUCCESS);
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn a_normal_handler_result_is_returned() {
        // A handler that refuses without reaching the driver.
        let calls = Cell::new(0);
        let real = counting(&calls, CUresult::SUCCESS);
        let r = guard::<CUresult>("test_refuse", false, &real, |_real| CUresult::ERROR_OUT_OF_MEMORY);
        assert_eq!(r, CUresult::ERROR_OUT_OF_MEMORY);
        assert_eq!(calls.get(), 0, "the handler chose not to call the driver");

        // A handler that calls the driver and answers something else.
        let real = counting(&calls, CUresult::SUCCESS);
        let r = guard::<CUresult>("test_rewrite", false, &real, |real| {
            assert_eq!(real.call(), CUresult::SUCCESS);
            CUresult::ERROR_INVALID_DEVICE
        });
        assert_eq!(r, CUresult::ERROR_INVALID_DEVICE);
        assert_eq!(calls.get(), 1);
    }
}
