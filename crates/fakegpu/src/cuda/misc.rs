//! Error strings and the export-table door.

use std::ffi::{CStr, c_char, c_void};

use cuda_types::{CUresult, CUuuid};

use super::{guard, nn};

/// Names and our own one-line descriptions of the codes the fake can return.
const ERRORS: &[(u32, &CStr, &CStr)] = &[
    (0, c"CUDA_SUCCESS", c"no error"),
    (1, c"CUDA_ERROR_INVALID_VALUE", c"an argument is out of range or NULL"),
    (2, c"CUDA_ERROR_OUT_OF_MEMORY", c"not enough device memory for the request"),
    (3, c"CUDA_ERROR_NOT_INITIALIZED", c"cuInit has not been called"),
    (4, c"CUDA_ERROR_DEINITIALIZED", c"the driver is shutting down"),
    (100, c"CUDA_ERROR_NO_DEVICE", c"no CUDA device is present"),
    (101, c"CUDA_ERROR_INVALID_DEVICE", c"the device ordinal is not a valid device"),
    (200, c"CUDA_ERROR_INVALID_IMAGE", c"the module image is invalid"),
    (201, c"CUDA_ERROR_INVALID_CONTEXT", c"no usable context is current"),
    (400, c"CUDA_ERROR_INVALID_HANDLE", c"the handle is not a live object"),
    (401, c"CUDA_ERROR_ILLEGAL_STATE", c"the object is in a state that does not allow the operation"),
    (500, c"CUDA_ERROR_NOT_FOUND", c"the named symbol or object was not found"),
    (600, c"CUDA_ERROR_NOT_READY", c"the operation has not completed"),
    (704, c"CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED", c"peer access is already enabled for this context pair"),
    (705, c"CUDA_ERROR_PEER_ACCESS_NOT_ENABLED", c"peer access was never enabled for this context pair"),
    (801, c"CUDA_ERROR_NOT_SUPPORTED", c"the operation is not supported"),
    (900, c"CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED", c"the operation is not permitted while a stream is capturing"),
    (901, c"CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", c"the capture was invalidated by an earlier error"),
    (906, c"CUDA_ERROR_STREAM_CAPTURE_IMPLICIT", c"the legacy stream would depend on a capturing stream"),
    (908, c"CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD", c"the capture was begun in another thread"),
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
    crate::tally!("cuGetErrorName");
    error_text(error, out, true)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorString(error: CUresult, out: *mut *const c_char) -> CUresult {
    crate::tally!("cuGetErrorString");
    error_text(error, out, false)
}

/// The driver's private tables (used by cudart) are undocumented; the fake offers none, so
/// every table id is unknown. Requests are logged to `FAKEGPU_LOG` as
/// `exporttable <32 hex digits> -> NULL`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetExportTable(table: *mut *const c_void, id: *const CUuuid) -> CUresult {
    crate::tally!("cuGetExportTable");
    guard(|| {
        let out = nn(table)?;
        if id.is_null() {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let hex: String = unsafe { (*id).bytes }.iter().map(|b| format!("{b:02x}")).collect();
        super::procaddr::log_line(&format!("exporttable {hex} -> NULL"));
        unsafe { out.write(std::ptr::null()) };
        Err(CUresult::ERROR_INVALID_VALUE)
    })
}
