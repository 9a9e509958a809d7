//! CUDA IPC: cuIpcGetMemHandle in one process, cuIpcOpenMemHandle in another (state/shared.rs
//! has the handle's contents). The importer's mapping is charged to none of its devices.

use std::ffi::c_uint;

use cuda_types::{CUdeviceptr, CUresult};

use super::{guard, nn, with_ctx};
use crate::state::{IPC_HANDLE_SIZE, IpcHandle, Res};

/// `CUipcMemHandle`, passed by value to cuIpcOpenMemHandle.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUipcMemHandle {
    pub reserved: [u8; IPC_HANDLE_SIZE],
}

/// `CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS`, the only flag cuIpcOpenMemHandle knows.
const LAZY_ENABLE_PEER_ACCESS: c_uint = 1;

fn own_pid() -> u32 {
    std::process::id()
}

/// Whether process `pid` still exists: once the exporter is gone, so is its memory. (The fake
/// cannot see whether a live exporter has freed the allocation meanwhile.)
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks for existence and permission.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    // EPERM: it exists, it just is not ours to signal.
    found || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuIpcGetMemHandle(handle: *mut CUipcMemHandle, dptr: CUdeviceptr) -> CUresult {
    crate::tally!("cuIpcGetMemHandle");
    guard(|| {
        let out = nn(handle)?;
        let h = with_ctx(|st, _, _| st.ipc_export(dptr, own_pid()))?;
        unsafe { out.write(CUipcMemHandle { reserved: h.encode() }) };
        Ok(())
    })
}

fn open(pdptr: *mut CUdeviceptr, handle: CUipcMemHandle, flags: c_uint) -> Res<()> {
    let out = nn(pdptr)?;
    if flags & !LAZY_ENABLE_PEER_ACCESS != 0 {
        return Err(CUresult::ERROR_INVALID_VALUE);
    }
    let h = IpcHandle::decode(&handle.reserved).ok_or(CUresult::ERROR_INVALID_VALUE)?;
    if h.pid != own_pid() && !alive(h.pid) {
        return Err(CUresult::ERROR_INVALID_VALUE);
    }
    let p = with_ctx(|st, ctx, _| st.ipc_open(ctx, &h, own_pid()))?;
    unsafe { out.write(p) };
    Ok(())
}

/// The pre-11.0 name; same signature and, in the fake, the same behaviour.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuIpcOpenMemHandle(
    pdptr: *mut CUdeviceptr,
    handle: CUipcMemHandle,
    flags: c_uint,
) -> CUresult {
    crate::tally!("cuIpcOpenMemHandle");
    guard(|| open(pdptr, handle, flags))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuIpcOpenMemHandle_v2(
    pdptr: *mut CUdeviceptr,
    handle: CUipcMemHandle,
    flags: c_uint,
) -> CUresult {
    crate::tally!("cuIpcOpenMemHandle_v2");
    guard(|| open(pdptr, handle, flags))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuIpcCloseMemHandle(dptr: CUdeviceptr) -> CUresult {
    crate::tally!("cuIpcCloseMemHandle");
    guard(|| with_ctx(|st, _, _| st.ipc_close(dptr)))
}
