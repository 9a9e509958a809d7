//! Initialisation and device queries.

use std::ffi::{c_char, c_int, c_uint};

use cuda_types::{CUdevice, CUresult, CUuuid};

use super::{guard, need_init, nn, set_initialized, write_cstr};
use crate::state::state;

/// What cuDriverGetVersion reports: a CUDA 13.0 driver.
pub const DRIVER_VERSION: c_int = 13000;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    crate::tally!("cuInit");
    guard(|| {
        if flags != 0 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        // Touch the state so a bad configuration is reported at cuInit time. No visible
        // device (FAKEGPU_DEVICES=0, CUDA_VISIBLE_DEVICES empty or invalid) fails as in the
        // driver.
        if state().cfg.visible.is_empty() {
            return Err(CUresult::ERROR_NO_DEVICE);
        }
        set_initialized();
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    crate::tally!("cuDriverGetVersion");
    guard(|| {
        unsafe { nn(version)?.write(DRIVER_VERSION) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult {
    crate::tally!("cuDeviceGet");
    guard(|| {
        let out = nn(device)?;
        need_init()?;
        // A CUdevice is the ordinal itself, as in the driver; every call that takes one
        // maps it to the physical device through State::device.
        state().device(ordinal)?;
        unsafe { out.write(ordinal as CUdevice) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    crate::tally!("cuDeviceGetCount");
    guard(|| {
        let out = nn(count)?;
        need_init()?;
        let n = state().cfg.visible.len();
        unsafe { out.write(n as c_int) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    crate::tally!("cuDeviceGetName");
    guard(|| {
        need_init()?;
        state().device(dev)?;
        let len = usize::try_from(len).map_err(|_| CUresult::ERROR_INVALID_VALUE)?;
        unsafe { write_cstr(name, len, crate::DEVICE_NAME) }
    })
}

fn uuid(out: *mut CUuuid, dev: CUdevice) -> CUresult {
    guard(|| {
        let out = nn(out)?;
        need_init()?;
        let st = state();
        let d = st.device(dev)?;
        unsafe { out.write(CUuuid { bytes: st.devices[d].uuid_bytes }) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetUuid(out: *mut CUuuid, dev: CUdevice) -> CUresult {
    crate::tally!("cuDeviceGetUuid");
    uuid(out, dev)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(out: *mut CUuuid, dev: CUdevice) -> CUresult {
    crate::tally!("cuDeviceGetUuid_v2");
    uuid(out, dev)
}

fn total_mem(dev: CUdevice) -> Result<u64, CUresult> {
    need_init()?;
    let st = state();
    let d = st.device(dev)?;
    Ok(st.devices[d].total)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    crate::tally!("cuDeviceTotalMem_v2");
    guard(|| {
        let out = nn(bytes)?;
        let total = total_mem(dev)?;
        unsafe { out.write(total as usize) };
        Ok(())
    })
}

/// The pre-3.2 entry point has a 32-bit out-parameter; larger sizes are clamped.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem(bytes: *mut c_uint, dev: CUdevice) -> CUresult {
    crate::tally!("cuDeviceTotalMem");
    guard(|| {
        let out = nn(bytes)?;
        let total = total_mem(dev)?;
        unsafe { out.write(total.min(u32::MAX as u64) as c_uint) };
        Ok(())
    })
}

/// Values of an H200-like device for the attributes programs commonly ask about; anything
/// else reads as 0 (not supported / no limit known).
fn attribute(attrib: c_int, dev: usize) -> c_int {
    match attrib {
        1 => 1024,              // max threads per block
        2 | 3 => 1024,          // max block dim x, y
        4 => 64,                // max block dim z
        5 => i32::MAX,          // max grid dim x
        6 | 7 => 65535,         // max grid dim y, z
        8 => 48 * 1024,         // shared memory per block
        9 => 64 * 1024,         // constant memory
        10 => 32,               // warp size
        11 => i32::MAX,         // max pitch
        12 => 65536,            // registers per block
        13 => 1_980_000,        // clock rate (kHz)
        14 => 512,              // texture alignment
        15 => 1,                // gpu overlap
        16 => 132,              // multiprocessor count
        19 => 1,                // can map host memory
        31 => 1,                // concurrent kernels
        32 => 1,                // ECC enabled
        33 => dev as c_int,     // PCI bus id of the physical device, as NVML reports it
        36 => 3_201_000,        // memory clock rate (kHz)
        37 => 6144,             // memory bus width
        38 => 60 * 1024 * 1024, // L2 cache size
        39 => 2048,             // max threads per multiprocessor
        40 => 3,                // async engine count
        41 => 1,                // unified addressing
        75 => 9,                // compute capability major
        76 => 0,                // compute capability minor
        81 => 228 * 1024,       // shared memory per multiprocessor
        82 => 65536,            // registers per multiprocessor
        83 => 1,                // managed memory
        89 => 1,                // concurrent managed access
        95 => 1,                // cooperative launch
        97 => 227 * 1024,       // shared memory per block (opt-in)
        102 => 1,               // virtual memory management
        115 => 1,               // memory pools
        _ => 0,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetAttribute(pi: *mut c_int, attrib: c_int, dev: CUdevice) -> CUresult {
    crate::tally!("cuDeviceGetAttribute");
    guard(|| {
        let out = nn(pi)?;
        need_init()?;
        let d = state().device(dev)?;
        if attrib <= 0 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        unsafe { out.write(attribute(attrib, d)) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetPCIBusId(bus_id: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    crate::tally!("cuDeviceGetPCIBusId");
    guard(|| {
        need_init()?;
        // The physical device's bus, so a program can find the device in NVML by it.
        let d = state().device(dev)?;
        let len = usize::try_from(len).map_err(|_| CUresult::ERROR_INVALID_VALUE)?;
        unsafe { write_cstr(bus_id, len, &crate::pci_bus_id(d)) }
    })
}

/// Every pair of distinct devices can reach each other (one NVLink domain, as on an HGX
/// board); a device is not its own peer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceCanAccessPeer(can: *mut c_int, dev: CUdevice, peer: CUdevice) -> CUresult {
    crate::tally!("cuDeviceCanAccessPeer");
    guard(|| {
        let out = nn(can)?;
        need_init()?;
        let st = state();
        let (d, p) = (st.device(dev)?, st.device(peer)?);
        unsafe { out.write(c_int::from(d != p)) };
        Ok(())
    })
}
