//! Streams, kernel launches, error strings and the export-table door.

use std::ffi::{CStr, c_char, c_uint, c_void};

use cuda_types::{CUfunction, CUresult, CUstream, CUuuid};

use super::{guard, nn, with_ctx};
use crate::state::{Res, State};

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreate(stream: *mut CUstream, _flags: c_uint) -> CUresult {
    crate::tally("cuStreamCreate");
    guard(|| {
        let out = nn(stream)?;
        let h = with_ctx(|st, _, _| Ok(st.stream_create()))?;
        unsafe { out.write(h as usize as CUstream) };
        Ok(())
    })
}

fn stream_destroy(stream: CUstream) -> CUresult {
    guard(|| with_ctx(|st, _, _| st.stream_destroy(stream as u64)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: CUstream) -> CUresult {
    crate::tally("cuStreamDestroy_v2");
    stream_destroy(stream)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy(stream: CUstream) -> CUresult {
    crate::tally("cuStreamDestroy");
    stream_destroy(stream)
}

fn valid_stream(st: &State, stream: CUstream) -> Res<()> {
    if st.stream_valid(stream as u64) {
        Ok(())
    } else {
        Err(CUresult::ERROR_INVALID_HANDLE)
    }
}

/// Work completes the moment it is queued, so there is never anything to wait for.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamSynchronize(stream: CUstream) -> CUresult {
    crate::tally("cuStreamSynchronize");
    guard(|| with_ctx(|st, _, _| valid_stream(st, stream)))
}

fn launch(f: CUfunction, stream: CUstream) -> Res<()> {
    if f.is_null() {
        return Err(CUresult::ERROR_INVALID_HANDLE);
    }
    with_ctx(|st, _, _| valid_stream(st, stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernel(
    f: CUfunction,
    _grid_x: c_uint,
    _grid_y: c_uint,
    _grid_z: c_uint,
    _block_x: c_uint,
    _block_y: c_uint,
    _block_z: c_uint,
    _shared_mem: c_uint,
    stream: CUstream,
    _params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    crate::tally("cuLaunchKernel");
    guard(|| launch(f, stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernel_ptsz(
    f: CUfunction,
    _grid_x: c_uint,
    _grid_y: c_uint,
    _grid_z: c_uint,
    _block_x: c_uint,
    _block_y: c_uint,
    _block_z: c_uint,
    _shared_mem: c_uint,
    stream: CUstream,
    _params: *mut *mut c_void,
    _extra: *mut *mut c_void,
) -> CUresult {
    crate::tally("cuLaunchKernel_ptsz");
    guard(|| launch(f, stream))
}

/// Names and our own one-line descriptions of the codes the fake can return.
const ERRORS: &[(u32, &CStr, &CStr)] = &[
    (0, c"CUDA_SUCCESS", c"no error"),
    (
        1,
        c"CUDA_ERROR_INVALID_VALUE",
        c"an argument is out of range or NULL",
    ),
    (
        2,
        c"CUDA_ERROR_OUT_OF_MEMORY",
        c"not enough device memory for the request",
    ),
    (
        3,
        c"CUDA_ERROR_NOT_INITIALIZED",
        c"cuInit has not been called",
    ),
    (
        4,
        c"CUDA_ERROR_DEINITIALIZED",
        c"the driver is shutting down",
    ),
    (100, c"CUDA_ERROR_NO_DEVICE", c"no CUDA device is present"),
    (
        101,
        c"CUDA_ERROR_INVALID_DEVICE",
        c"the device ordinal is not a valid device",
    ),
    (
        201,
        c"CUDA_ERROR_INVALID_CONTEXT",
        c"no usable context is current",
    ),
    (
        400,
        c"CUDA_ERROR_INVALID_HANDLE",
        c"the handle is not a live object",
    ),
    (
        500,
        c"CUDA_ERROR_NOT_FOUND",
        c"the named symbol or object was not found",
    ),
    (
        600,
        c"CUDA_ERROR_NOT_READY",
        c"the operation has not completed",
    ),
    (
        801,
        c"CUDA_ERROR_NOT_SUPPORTED",
        c"the operation is not supported",
    ),
    (999, c"CUDA_ERROR_UNKNOWN", c"an unexpected internal error"),
];

fn error_text(error: CUresult, out: *mut *const c_char, name: bool) -> CUresult {
    guard(|| {
        let out = nn(out)?;
        match ERRORS.iter().find(|e| e.0 == error.0) {
            Some(e) => {
                unsafe { out.write(if name { e.1.as_ptr() } else { e.2.as_ptr() }) };
                Ok(())
            }
            None => {
                unsafe { out.write(std::ptr::null()) };
                Err(CUresult::ERROR_INVALID_VALUE)
            }
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorName(error: CUresult, out: *mut *const c_char) -> CUresult {
    crate::tally("cuGetErrorName");
    error_text(error, out, true)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorString(error: CUresult, out: *mut *const c_char) -> CUresult {
    crate::tally("cuGetErrorString");
    error_text(error, out, false)
}

/// The driver's private tables (used by cudart) are undocumented; the fake offers none, so
/// every table id is unknown. Requests are logged to `FAKEGPU_LOG` as
/// `exporttable <32 hex digits> -> NULL`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetExportTable(
    table: *mut *const c_void,
    id: *const CUuuid,
) -> CUresult {
    crate::tally("cuGetExportTable");
    guard(|| {
        let out = nn(table)?;
        if id.is_null() {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let hex: String = unsafe { (*id).bytes }
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        super::procaddr::log_line(&format!("exporttable {hex} -> NULL"));
        unsafe { out.write(std::ptr::null()) };
        Err(CUresult::ERROR_INVALID_VALUE)
    })
}
