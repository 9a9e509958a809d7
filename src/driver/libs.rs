//! Handles of the real driver libraries, opened lazily on the first CUDA/NVML call — never at
//! load, and never as `DT_NEEDED`: the library is mapped into every process of a container
//! (`sh`, `ls`, `pip`) and must not drag the driver into them.

use std::ffi::c_void;
use std::sync::OnceLock;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lib {
    Cuda = 0,
    Nvml = 1,
}

impl Lib {
    fn soname(self) -> &'static str {
        match self {
            Lib::Cuda => "libcuda.so.1",
            Lib::Nvml => "libnvidia-ml.so.1",
        }
    }
}

#[derive(Clone, Copy)]
struct Handle(*mut c_void);
// SAFETY: a dlopen handle is a process-wide token, valid until dlclose, which we never call.
unsafe impl Send for Handle {}
// SAFETY: as for Send: the handle is only ever passed to dlsym, which is thread-safe.
unsafe impl Sync for Handle {}

static HANDLES: [OnceLock<Handle>; 2] = [OnceLock::new(), OnceLock::new()];

/// The library, opening it if the application has not (one failure line per attempt is enough:
/// a process that calls a CUDA hook without a driver cannot do anything useful anyway).
pub fn handle(lib: Lib) -> Option<*mut c_void> {
    if let Some(h) = HANDLES[lib as usize].get() {
        return Some(h.0);
    }
    match open(lib, libc::RTLD_NOW | libc::RTLD_GLOBAL) {
        Some(h) => Some(HANDLES[lib as usize].get_or_init(|| Handle(h)).0),
        None => {
            tracing::error!("cannot load {}; calls pass through unchanged", lib.soname());
            None
        }
    }
}

/// The library only if it is already loaded (no side effects otherwise).
pub fn loaded_handle(lib: Lib) -> Option<*mut c_void> {
    if let Some(h) = HANDLES[lib as usize].get() {
        return Some(h.0);
    }
    let h = open(lib, libc::RTLD_NOW | libc::RTLD_NOLOAD)?;
    Some(HANDLES[lib as usize].get_or_init(|| Handle(h)).0)
}

fn open(lib: Lib, flags: i32) -> Option<*mut c_void> {
    // SAFETY: opening the driver runs its initialisers, which is what the application asked for
    // by calling into it; the handle is kept for the life of the process.
    let library = unsafe { libloading::os::unix::Library::open(Some(lib.soname()), flags) }.ok()?;
    Some(library.into_raw())
}
