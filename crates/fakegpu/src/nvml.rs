//! NVML, served from the same state as the CUDA side, so a process's allocations show up in
//! nvmlDeviceGetMemoryInfo and in its own entry of the running-process list. Only this
//! process is simulated: another process's fake driver has its own devices.

use std::ffi::{CStr, c_char, c_uint, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, Ordering};

use cuda_types::{
    NVML_MEMORY_V2, nvmlDevice_t, nvmlMemory_t, nvmlMemory_v2_t, nvmlProcessInfo_t, nvmlProcessInfo_v1_t, nvmlReturn_t,
};

use crate::config::MAX_DEVICES;
use crate::state::state;

type R<T> = Result<T, nvmlReturn_t>;

static INIT_COUNT: AtomicU32 = AtomicU32::new(0);

/// What a handle points at. The structs are static, so handles stay valid across
/// shutdown/init cycles as NVML's do.
#[derive(Clone, Copy)]
pub struct NvmlDevice {
    index: u32,
}

static HANDLES: [NvmlDevice; MAX_DEVICES] = {
    let mut a = [NvmlDevice { index: 0 }; MAX_DEVICES];
    let mut i = 0;
    while i < MAX_DEVICES {
        a[i].index = i as u32;
        i += 1;
    }
    a
};

fn guard(f: impl FnOnce() -> R<()>) -> nvmlReturn_t {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => nvmlReturn_t::SUCCESS,
        Ok(Err(e)) => e,
        Err(_) => nvmlReturn_t::ERROR_UNKNOWN,
    }
}

fn need_init() -> R<()> {
    if INIT_COUNT.load(Ordering::Acquire) > 0 { Ok(()) } else { Err(nvmlReturn_t::ERROR_UNINITIALIZED) }
}

fn nn<T>(p: *mut T) -> R<*mut T> {
    if p.is_null() { Err(nvmlReturn_t::ERROR_INVALID_ARGUMENT) } else { Ok(p) }
}

fn handle(index: usize) -> nvmlDevice_t {
    &HANDLES[index] as *const NvmlDevice as *mut c_void
}

/// The device index behind a handle; anything that is not one of ours is an invalid argument.
fn index(dev: nvmlDevice_t) -> R<usize> {
    need_init()?;
    let count = state().devices.len();
    HANDLES[..count]
        .iter()
        .position(|h| std::ptr::eq(h, dev as *const NvmlDevice))
        .map(|i| HANDLES[i].index as usize)
        .ok_or(nvmlReturn_t::ERROR_INVALID_ARGUMENT)
}

fn init() -> nvmlReturn_t {
    guard(|| {
        drop(state());
        INIT_COUNT.fetch_add(1, Ordering::AcqRel);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    crate::tally!("nvmlInit_v2");
    init()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit() -> nvmlReturn_t {
    crate::tally!("nvmlInit");
    init()
}

/// The flags (no GPUs / no attach) change nothing here.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> nvmlReturn_t {
    crate::tally!("nvmlInitWithFlags");
    init()
}

/// Reference-counted like NVML: only the last shutdown uninitialises.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    crate::tally!("nvmlShutdown");
    guard(|| {
        INIT_COUNT
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .map(|_| ())
            .map_err(|_| nvmlReturn_t::ERROR_UNINITIALIZED)
    })
}

fn count(out: *mut c_uint) -> nvmlReturn_t {
    guard(|| {
        let out = nn(out)?;
        need_init()?;
        let n = state().devices.len();
        unsafe { out.write(n as c_uint) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(out: *mut c_uint) -> nvmlReturn_t {
    crate::tally!("nvmlDeviceGetCount_v2");
    count(out)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount(out: *mut c_uint) -> nvmlReturn_t {
    crate::tally!("nvmlDeviceGetCount");
    count(out)
}

fn by_index(i: c_uint, out: *mut nvmlDevice_t) -> nvmlReturn_t {
    guard(|| {
        let out = nn(out)?;
        need_init()?;
        if i as usize >= state().devices.len() {
            return Err(nvmlReturn_t::ERROR_INVALID_ARGUMENT);
        }
        unsafe { out.write(handle(i as usize)) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(i: c_uint, out: *mut nvmlDevice_t) -> nvmlReturn_t {
    crate::tally!("nvmlDeviceGetHandleByIndex_v2");
    by_index(i, out)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(i: c_uint, out: *mut nvmlDevice_t) -> nvmlReturn_t {
    crate::tally!("nvmlDeviceGetHandleByIndex");
    by_index(i, out)
}

/// Looks a device up by a string key; NOT_FOUND when none matches.
fn by_key(key: *const c_char, out: *mut nvmlDevice_t, matches: impl Fn(&str, usize, &str) -> bool) -> nvmlReturn_t {
    guard(|| {
        let out = nn(out)?;
        if key.is_null() {
            return Err(nvmlReturn_t::ERROR_INVALID_ARGUMENT);
        }
        need_init()?;
        let key = unsafe { CStr::from_ptr(key) }.to_string_lossy();
        let st = state();
        let found = st.devices.iter().enumerate().position(|(i, d)| matches(&key, i, &d.uuid));
        let i = found.ok_or(nvmlReturn_t::ERROR_NOT_FOUND)?;
        unsafe { out.write(handle(i)) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, out: *mut nvmlDevice_t) -> nvmlReturn_t {
    crate::tally!("nvmlDeviceGetHandleByUUID");
    by_key(uuid, out, |key, _, uuid| key.trim().eq_ignore_ascii_case(uuid))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(bus: *const c_char, out: *mut nvmlDevice_t) -> nvmlReturn_t {
    crate::tally!("nvmlDeviceGetHandleByPciBusId_v2");
    by_key(bus, out, |key, i, _| {
        crate::parse_pci_bus_id(key).is_some_and(|p| Some(p) == crate::parse_pci_bus_id(&crate::pci_bus_id(i)))
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(dev: nvmlDevice_t, out: *mut c_uint) -> nvmlReturn_t {
    crate::tally!("nvmlDeviceGetIndex");
    guard(|| {
        let out = nn(out)?;
        let i = index(dev)?;
        unsafe { out.write(i as c_uint) };
        Ok(())
    })
}

/// NVML refuses (rather than truncates) a buffer too small for the string.
fn write_string(buf: *mut c_char, len: c_uint, text: &str) -> R<()> {
    let buf = nn(buf)?;
    if (len as usize) < text.len() + 1 {
        return Err(nvmlReturn_t::ERROR_INSUFFICIENT_SIZE);
    }
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr().cast(), buf, text.len());
        *buf.add(text.len()) = 0;
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(dev: nvmlDevice_t, buf: *mut c_char, len: c_uint) -> nvmlReturn_t {
    crate::tally!("nvmlDeviceGetUUID");
    guard(|| {
        let i = index(dev)?;
        let uuid = state().devices[i].uuid.clone();
        write_string(buf, len, &uuid)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(dev: nvmlDevice_t, buf: *mut c_char, len: c_uint) -> nvmlReturn_t {
    crate::tally!("nvmlDeviceGetName");
    guard(|| {
        index(dev)?;
        write_string(buf, len, crate::DEVICE_NAME)
    })
}

/// (total, used) of a device; used includes context overhead, as NVML's does.
fn memory(dev: nvmlDevice_t) -> R<(u64, u64)> {
    let i = index(dev)?;
    let st = state();
    Ok((st.devices[i].total, st.devices[i].used))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(dev: nvmlDevice_t, out: *mut nvmlMemory_t) -> nvmlReturn_t {
    crate::tally!("nvmlDeviceGetMemoryInfo");
    guard(|| {
        let out = nn(out)?;
        let (total, used) = memory(dev)?;
        unsafe { out.write(nvmlMemory_t { total, used, free: total.saturating_sub(used) }) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(dev: nvmlDevice_t, out: *mut nvmlMemory_v2_t) -> nvmlReturn_t {
    crate::tally!("nvmlDeviceGetMemoryInfo_v2");
    guard(|| {
        let out = nn(out)?;
        if unsafe { (*out).version } != NVML_MEMORY_V2 {
            return Err(nvmlReturn_t::ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let (total, used) = memory(dev)?;
        let free = total.saturating_sub(used);
        unsafe { out.write(nvmlMemory_v2_t { version: NVML_MEMORY_V2, total, reserved: 0, free, used }) };
        Ok(())
    })
}

/// The process list: this process, if it uses memory on the device. `*count` is the
/// capacity in and the number of entries (or the number needed) out.
fn processes<T>(dev: nvmlDevice_t, count: *mut c_uint, infos: *mut T, make: impl Fn(u32, u64) -> T) -> nvmlReturn_t {
    guard(|| {
        let count = nn(count)?;
        let (_, used) = memory(dev)?;
        // `FAKEGPU_NVML_PROCESSES=none` lists no process, `self` lists this one (its usage is the
        // device's: the simulated memory is per process); unset keeps the default.
        let listed = match std::env::var("FAKEGPU_NVML_PROCESSES").as_deref() {
            Ok("none") => false,
            Ok("self") => true,
            _ => true,
        };
        let needed: u32 = u32::from(listed && used > 0);
        let capacity = unsafe { *count };
        unsafe { count.write(needed) };
        if needed == 0 {
            return Ok(());
        }
        if capacity < needed {
            return Err(nvmlReturn_t::ERROR_INSUFFICIENT_SIZE);
        }
        let infos = nn(infos)?;
        let pid = std::process::id();
        unsafe { infos.write(make(pid, used)) };
        Ok(())
    })
}

/// Not a MIG device: instance ids read as "invalid".
fn info_v3(pid: u32, used: u64) -> nvmlProcessInfo_t {
    nvmlProcessInfo_t { pid, usedGpuMemory: used, gpuInstanceId: u32::MAX, computeInstanceId: u32::MAX }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    dev: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    crate::tally!("nvmlDeviceGetComputeRunningProcesses_v3");
    processes(dev, count, infos, info_v3)
}

/// Same layout as v3.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v2(
    dev: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    crate::tally!("nvmlDeviceGetComputeRunningProcesses_v2");
    processes(dev, count, infos, info_v3)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses(
    dev: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_v1_t,
) -> nvmlReturn_t {
    crate::tally!("nvmlDeviceGetComputeRunningProcesses");
    processes(dev, count, infos, |pid, used| nvmlProcessInfo_v1_t { pid, usedGpuMemory: used })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    crate::tally!("nvmlErrorString");
    let text: &CStr = match result.0 {
        0 => c"Success",
        1 => c"Uninitialized",
        2 => c"Invalid Argument",
        3 => c"Not Supported",
        6 => c"Not Found",
        7 => c"Insufficient Size",
        13 => c"Function Not Found",
        25 => c"Argument Version Mismatch",
        _ => c"Unknown Error",
    };
    text.as_ptr()
}
