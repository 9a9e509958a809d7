//! Kernel launches, modules and libraries.
//!
//! A launch is asynchronous, as on a GPU: it reserves the kernel's duration on the device
//! timeline (after the stream's earlier work and everything already queued on the device, by
//! any process sharing the timeline) and returns at once. The duration is encoded in the
//! function handle (see `state::events`): `cuModuleGetFunction(.., "sleep_us_500")` → 500 µs.
//! Each launch flavour is its own exported function so a test can tell which one a hook
//! reached.

use std::ffi::{CStr, c_char, c_uint, c_void};

use cuda_types::{CUfunction, CUresult, CUstream};

use super::{enqueue, guard, need_init, nn};
use crate::state::{ERROR_INVALID_IMAGE, Res, Work, kernel_ns, state};

// `CUlaunchConfig` comes from cuda-types (shared with libvgpu); its attributes change nothing here.
pub use cuda_types::CUlaunchConfig;

pub type CUmodule = *mut c_void;
pub type CUlibrary = *mut c_void;
pub type CUkernel = *mut c_void;

/// The kernel's duration, after the checks the driver makes on every launch. A non-NULL
/// handle the fake did not make is accepted as a 0 µs kernel, as launches were before the
/// timeline existed: launch-overhead benchmarks pass any pointer and measure the host path.
fn kernel(f: CUfunction, grid: [c_uint; 3], block: [c_uint; 3]) -> Res<Work> {
    if f.is_null() {
        return Err(CUresult::ERROR_INVALID_HANDLE);
    }
    let ns = kernel_ns(f as u64).unwrap_or(0);
    if grid.contains(&0) || block.contains(&0) {
        return Err(CUresult::ERROR_INVALID_VALUE);
    }
    Ok(Work { ns, kernels: 1 })
}

fn launch(f: CUfunction, grid: [c_uint; 3], block: [c_uint; 3], stream: CUstream, ptsz: bool) -> CUresult {
    guard(|| {
        let work = kernel(f, grid, block)?;
        enqueue(stream, ptsz, |_| Ok(work))
    })
}

macro_rules! launch_kernel {
    ($name:ident, $ptsz:expr) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            f: CUfunction,
            grid_x: c_uint,
            grid_y: c_uint,
            grid_z: c_uint,
            block_x: c_uint,
            block_y: c_uint,
            block_z: c_uint,
            _shared_mem: c_uint,
            stream: CUstream,
            _params: *mut *mut c_void,
            _extra: *mut *mut c_void,
        ) -> CUresult {
            crate::tally!(stringify!($name));
            launch(f, [grid_x, grid_y, grid_z], [block_x, block_y, block_z], stream, $ptsz)
        }
    };
}
launch_kernel!(cuLaunchKernel, false);
launch_kernel!(cuLaunchKernel_ptsz, true);

macro_rules! launch_cooperative {
    ($name:ident, $ptsz:expr) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            f: CUfunction,
            grid_x: c_uint,
            grid_y: c_uint,
            grid_z: c_uint,
            block_x: c_uint,
            block_y: c_uint,
            block_z: c_uint,
            _shared_mem: c_uint,
            stream: CUstream,
            _params: *mut *mut c_void,
        ) -> CUresult {
            crate::tally!(stringify!($name));
            launch(f, [grid_x, grid_y, grid_z], [block_x, block_y, block_z], stream, $ptsz)
        }
    };
}
launch_cooperative!(cuLaunchCooperativeKernel, false);
launch_cooperative!(cuLaunchCooperativeKernel_ptsz, true);

fn launch_ex(config: *const CUlaunchConfig, f: CUfunction, ptsz: bool) -> CUresult {
    if config.is_null() {
        return CUresult::ERROR_INVALID_VALUE;
    }
    // SAFETY: non-NULL, and the caller promises a valid CUlaunchConfig.
    let c = unsafe { &*config };
    let grid = [c.gridDimX, c.gridDimY, c.gridDimZ];
    launch(f, grid, [c.blockDimX, c.blockDimY, c.blockDimZ], c.hStream, ptsz)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernelEx(
    config: *const CUlaunchConfig,
    f: CUfunction,
    _params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    crate::tally!("cuLaunchKernelEx");
    launch_ex(config, f, false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernelEx_ptsz(
    config: *const CUlaunchConfig,
    f: CUfunction,
    _params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    crate::tally!("cuLaunchKernelEx_ptsz");
    launch_ex(config, f, true)
}

// ---- modules and libraries: the image is never read, any non-NULL one loads ----

fn load(out: *mut *mut c_void, image: *const c_void, library: bool) -> CUresult {
    guard(|| {
        let out = nn(out)?;
        need_init()?;
        if image.is_null() {
            return Err(if library { CUresult::ERROR_INVALID_VALUE } else { ERROR_INVALID_IMAGE });
        }
        let h = state().module_load(library);
        unsafe { out.write(h as usize as *mut c_void) };
        super::grow_behind_the_ledger();
        Ok(())
    })
}

fn unload(h: *mut c_void, library: bool) -> CUresult {
    guard(|| {
        need_init()?;
        state().module_unload(h as u64, library)
    })
}

fn get(out: *mut *mut c_void, module: *mut c_void, name: *const c_char) -> CUresult {
    guard(|| {
        let out = nn(out)?;
        need_init()?;
        if name.is_null() {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        let f = state().get_function(module as u64, &name)?;
        unsafe { out.write(f as usize as *mut c_void) };
        Ok(())
    })
}

/// The file is not opened (there is nothing in it the fake could use).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoad(module: *mut CUmodule, fname: *const c_char) -> CUresult {
    crate::tally!("cuModuleLoad");
    load(module, fname.cast(), false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut CUmodule, image: *const c_void) -> CUresult {
    crate::tally!("cuModuleLoadData");
    load(module, image, false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    module: *mut CUmodule,
    image: *const c_void,
    _num_options: c_uint,
    _options: *mut c_uint,
    _values: *mut *mut c_void,
) -> CUresult {
    crate::tally!("cuModuleLoadDataEx");
    load(module, image, false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleUnload(module: CUmodule) -> CUresult {
    crate::tally!("cuModuleUnload");
    unload(module, false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleGetFunction(f: *mut CUfunction, module: CUmodule, name: *const c_char) -> CUresult {
    crate::tally!("cuModuleGetFunction");
    get(f, module, name)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryLoadData(
    library: *mut CUlibrary,
    code: *const c_void,
    _jit_options: *mut c_uint,
    _jit_values: *mut *mut c_void,
    _num_jit: c_uint,
    _lib_options: *mut c_uint,
    _lib_values: *mut *mut c_void,
    _num_lib: c_uint,
) -> CUresult {
    crate::tally!("cuLibraryLoadData");
    load(library, code, true)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryLoadFromFile(
    library: *mut CUlibrary,
    fname: *const c_char,
    _jit_options: *mut c_uint,
    _jit_values: *mut *mut c_void,
    _num_jit: c_uint,
    _lib_options: *mut c_uint,
    _lib_values: *mut *mut c_void,
    _num_lib: c_uint,
) -> CUresult {
    crate::tally!("cuLibraryLoadFromFile");
    load(library, fname.cast(), true)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryUnload(library: CUlibrary) -> CUresult {
    crate::tally!("cuLibraryUnload");
    unload(library, true)
}

/// A `CUkernel` is accepted wherever a `CUfunction` is, as in the driver: here they are the
/// same encoded handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLibraryGetKernel(
    kernel: *mut CUkernel,
    library: CUlibrary,
    name: *const c_char,
) -> CUresult {
    crate::tally!("cuLibraryGetKernel");
    get(kernel, library, name)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuKernelGetFunction(f: *mut CUfunction, kernel: CUkernel) -> CUresult {
    crate::tally!("cuKernelGetFunction");
    guard(|| {
        let out = nn(f)?;
        need_init()?;
        kernel_ns(kernel as u64).ok_or(CUresult::ERROR_INVALID_HANDLE)?;
        unsafe { out.write(kernel) };
        Ok(())
    })
}
