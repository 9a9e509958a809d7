//! Thin calls into the real NVML for our own queries, returning `Result`.

use std::ffi::{c_char, c_uint};

use cuda_types::*;

use super::raw;

fn check_nvml(rc: nvmlReturn_t) -> Result<(), nvmlReturn_t> {
    if rc.is_success() { Ok(()) } else { Err(rc) }
}

/// One reference to NVML for our own queries, given back on drop: NVML counts init/shutdown
/// pairs, so the application's own `nvmlShutdown` still shuts it down.
pub struct NvmlSession(());

impl NvmlSession {
    pub fn open() -> Result<Self, nvmlReturn_t> {
        // SAFETY: nvmlInit_v2 takes no arguments.
        check_nvml(unsafe { raw::nvmlInit_v2() })?;
        Ok(NvmlSession(()))
    }
}

impl Drop for NvmlSession {
    fn drop(&mut self) {
        // SAFETY: balances the nvmlInit_v2 of `open`.
        unsafe { raw::nvmlShutdown() };
    }
}

pub fn nvml_device_uuid(device: nvmlDevice_t) -> Result<String, nvmlReturn_t> {
    let mut buf = [0 as c_char; NVML_DEVICE_UUID_V2_BUFFER_SIZE as usize];
    // SAFETY: the buffer is as long as we say.
    check_nvml(unsafe { raw::nvmlDeviceGetUUID(device, buf.as_mut_ptr(), buf.len() as c_uint) })?;
    // SAFETY: NVML NUL-terminates within the buffer on success.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(s.to_string_lossy().into_owned())
}

/// UUIDs of every device NVML sees, by NVML index.
pub fn nvml_uuids(_session: &NvmlSession) -> Result<Vec<String>, nvmlReturn_t> {
    let mut n: c_uint = 0;
    // SAFETY: valid out-pointer.
    check_nvml(unsafe { raw::nvmlDeviceGetCount_v2(&mut n) })?;
    (0..n)
        .map(|i| {
            let mut device: nvmlDevice_t = std::ptr::null_mut();
            // SAFETY: valid out-pointer.
            check_nvml(unsafe { raw::nvmlDeviceGetHandleByIndex_v2(i, &mut device) })?;
            nvml_device_uuid(device)
        })
        .collect()
}

pub fn nvml_device_by_uuid(_session: &NvmlSession, uuid: &str) -> Result<nvmlDevice_t, nvmlReturn_t> {
    let c = std::ffi::CString::new(uuid).map_err(|_| nvmlReturn_t::ERROR_INVALID_ARGUMENT)?;
    let mut device: nvmlDevice_t = std::ptr::null_mut();
    // SAFETY: valid C string and out-pointer.
    check_nvml(unsafe { raw::nvmlDeviceGetHandleByUUID(c.as_ptr(), &mut device) })?;
    Ok(device)
}

/// Device-wide used bytes as NVML reports them (through the real function, not our view).
pub fn nvml_used(device: nvmlDevice_t) -> Result<u64, nvmlReturn_t> {
    let mut m = nvmlMemory_t::default();
    // SAFETY: the driver's nvmlDeviceGetMemoryInfo with a valid out-pointer.
    check_nvml(unsafe { raw::nvmlDeviceGetMemoryInfo(device, &mut m) })?;
    Ok(m.used)
}

/// Which of NVML's running-process lists.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProcessList {
    Compute,
    Graphics,
}

/// The PIDs NVML lists on `device` (through the driver's `_v3` function and our own buffer,
/// with room for `expected` entries and a few more for processes that started since); empty
/// when NVML cannot say.
pub fn nvml_running_pids(list: ProcessList, device: nvmlDevice_t, expected: c_uint) -> Vec<u32> {
    let mut rows = vec![nvmlProcessInfo_t::default(); expected.saturating_add(8) as usize];
    match list_into(list, device, &mut rows) {
        Ok(n) => rows[..n].iter().map(|r| r.pid).collect(),
        Err(_) => Vec::new(),
    }
}

/// One call of the driver's `_v3` list into `rows` (as many entries as it holds): the number of
/// entries written, or NVML's error (`ERROR_INSUFFICIENT_SIZE` with the number needed).
fn list_into(
    list: ProcessList,
    device: nvmlDevice_t,
    rows: &mut [nvmlProcessInfo_t],
) -> Result<usize, (nvmlReturn_t, usize)> {
    let mut n = rows.len() as c_uint;
    // SAFETY: `rows` holds `n` entries; NVML writes at most that many and sets `n`.
    let rc = unsafe {
        match list {
            ProcessList::Compute => raw::nvmlDeviceGetComputeRunningProcesses_v3(device, &mut n, rows.as_mut_ptr()),
            ProcessList::Graphics => raw::nvmlDeviceGetGraphicsRunningProcesses_v3(device, &mut n, rows.as_mut_ptr()),
        }
    };
    if rc == nvmlReturn_t::SUCCESS { Ok((n as usize).min(rows.len())) } else { Err((rc, n as usize)) }
}

/// NVML's "value not available" for a process's `usedGpuMemory` (e.g. without the rights to see
/// other processes' details).
const NVML_VALUE_NOT_AVAILABLE: u64 = u64::MAX;

/// The memory NVML counts for the processes `pids` on `device` (their rows summed; MIG may list
/// one row per instance), through the real function, never our own view. `Ok(None)`: listed no
/// such process, or could not say how much.
pub fn nvml_process_used(device: nvmlDevice_t, pids: &[u32]) -> Result<Option<u64>, nvmlReturn_t> {
    let mut rows = vec![nvmlProcessInfo_t::default(); 64];
    for _ in 0..3 {
        let n = match list_into(ProcessList::Compute, device, &mut rows) {
            Ok(n) => n,
            Err((nvmlReturn_t::ERROR_INSUFFICIENT_SIZE, needed)) => {
                rows.resize(needed + 16, nvmlProcessInfo_t::default());
                continue;
            }
            Err((rc, _)) => return Err(rc),
        };
        let mine = rows[..n].iter().filter(|r| pids.contains(&r.pid));
        let mut total: Option<u64> = None;
        for r in mine {
            if r.usedGpuMemory == NVML_VALUE_NOT_AVAILABLE {
                return Ok(None);
            }
            total = Some(total.unwrap_or(0).saturating_add(r.usedGpuMemory));
        }
        return Ok(total);
    }
    Err(nvmlReturn_t::ERROR_INSUFFICIENT_SIZE)
}
