//! Real symbols: a slot per driver function we call, resolved on first use through the real
//! `dlsym` (never ours, which would hand back our own hooks).

use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use cuda_types::{CUresult, nvmlReturn_t};

use super::libs::Lib;

/// A return code we can fabricate when the real function is missing.
pub trait Code: Copy {
    const MISSING: Self;
}
impl Code for CUresult {
    const MISSING: Self = CUresult::ERROR_NOT_FOUND;
}
impl Code for nvmlReturn_t {
    const MISSING: Self = nvmlReturn_t::ERROR_FUNCTION_NOT_FOUND;
}

const UNRESOLVED: usize = 0;
const ABSENT: usize = 1;

/// The real driver function behind a name, resolved on first use (ZLUDA's tri-state: unresolved,
/// absent, address) through the saved real `dlsym`, so a function an older driver lacks only
/// affects its own callers.
pub struct RealFn {
    pub(crate) lib: Lib,
    name: &'static CStr,
    addr: AtomicUsize,
}

impl RealFn {
    pub const fn new(lib: Lib, name: &'static CStr) -> Self {
        RealFn { lib, name, addr: AtomicUsize::new(UNRESOLVED) }
    }

    /// The real address, or `None` when the library or the symbol is missing.
    #[inline]
    pub fn addr(&self) -> Option<usize> {
        match self.addr.load(Ordering::Acquire) {
            UNRESOLVED => self.resolve(),
            ABSENT => None,
            a => Some(a),
        }
    }

    /// # Safety
    /// `F` must be the `extern "C"` function-pointer type of this symbol.
    #[inline]
    pub unsafe fn get<F: Copy>(&self) -> Option<F> {
        const { assert!(size_of::<F>() == size_of::<usize>()) };
        let a = self.addr()?;
        // SAFETY: the caller names the symbol's true signature; `a` is a non-null code address.
        Some(unsafe { std::mem::transmute_copy::<usize, F>(&a) })
    }

    #[cold]
    #[inline(never)]
    fn resolve(&self) -> Option<usize> {
        let Some(handle) = super::libs::handle(self.lib) else {
            // Not cached: the library may be loaded later (by the application).
            return None;
        };
        let a = real_dlsym(handle, self.name) as usize;
        let stored = if a == 0 { ABSENT } else { a };
        self.addr.store(stored, Ordering::Release);
        (a != 0).then_some(a)
    }
}

/// A symbol name as a C string, checked at compile time.
pub const fn c_name(with_nul: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(with_nul.as_bytes()) {
        Ok(name) => name,
        Err(_) => panic!("symbol names are NUL-terminated and contain no NUL"),
    }
}

/// The real `dlsym`; read by the naked export, so it is a plain word.
pub(crate) static REAL_DLSYM: AtomicUsize = AtomicUsize::new(0);

pub(crate) type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

/// Finds glibc's `dlsym` (2.34 moved it into libc; older versions in libdl, per architecture).
pub(crate) extern "C" fn init_real_dlsym() -> usize {
    let current = REAL_DLSYM.load(Ordering::Acquire);
    if current != 0 {
        return current;
    }
    let mut found = 0usize;
    for version in [c"GLIBC_2.34", c"GLIBC_2.2.5", c"GLIBC_2.17"] {
        // SAFETY: dlvsym with constant C strings; RTLD_NEXT finds the definition after ours.
        let p = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
        if !p.is_null() {
            found = p as usize;
            break;
        }
    }
    if found == 0 {
        // Without a real dlsym every lookup answers "not found" rather than recursing into us.
        found = not_found as *const () as usize;
    }
    REAL_DLSYM.store(found, Ordering::Release);
    found
}

unsafe extern "C" fn not_found(_: *mut c_void, _: *const c_char) -> *mut c_void {
    std::ptr::null_mut()
}

/// Looks a symbol up with the real `dlsym`.
pub fn real_dlsym(handle: *mut c_void, name: &CStr) -> *mut c_void {
    let f = init_real_dlsym();
    // SAFETY: `f` is glibc's dlsym (or `not_found`), which accepts any handle and C string.
    unsafe { std::mem::transmute::<usize, DlsymFn>(f)(handle, name.as_ptr()) }
}
