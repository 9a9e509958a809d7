//! Linear device memory, managed memory, pinned host memory, and the copy/set stubs.

use std::collections::HashSet;
use std::ffi::{c_uchar, c_uint, c_void};
use std::sync::Mutex;

use cuda_types::{
    CU_MEM_LOCATION_TYPE_DEVICE, CU_MEM_LOCATION_TYPE_HOST, CU_MEM_LOCATION_TYPE_HOST_NUMA,
    CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT, CUdevice, CUdeviceptr, CUmemLocation, CUresult, CUstream,
};

use super::{guard, nn, with_ctx};
use crate::state::{AllocKind, Res, round_up};

const PITCH_ALIGN: u64 = 512;

fn alloc(size: u64, kind: AllocKind) -> Res<u64> {
    with_ctx(|st, ctx, dev| st.alloc(ctx, dev, size, kind))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult {
    crate::tally!("cuMemAlloc_v2");
    guard(|| {
        let out = nn(dptr)?;
        let p = alloc(bytesize as u64, AllocKind::Linear)?;
        unsafe { out.write(p) };
        Ok(())
    })
}

/// The pre-3.2 entry point: 32-bit pointer and size. Its pointers come from a low window.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc(dptr: *mut c_uint, bytesize: c_uint) -> CUresult {
    crate::tally!("cuMemAlloc");
    guard(|| {
        let out = nn(dptr)?;
        let p = with_ctx(|st, ctx, dev| st.alloc_v1(ctx, dev, bytesize as u64))?;
        unsafe { out.write(p as c_uint) };
        Ok(())
    })
}

/// Rows padded to 512 bytes; the charge is pitch × height.
fn pitched(width: u64, height: u64, elem: u32, v1: bool) -> Res<(u64, u64)> {
    if width == 0 || height == 0 || !matches!(elem, 4 | 8 | 16) {
        return Err(CUresult::ERROR_INVALID_VALUE);
    }
    let pitch = round_up(width, PITCH_ALIGN);
    let size = pitch.checked_mul(height).ok_or(CUresult::ERROR_OUT_OF_MEMORY)?;
    let p = with_ctx(
        |st, ctx, dev| {
            if v1 { st.alloc_v1(ctx, dev, size) } else { st.alloc(ctx, dev, size, AllocKind::Pitch) }
        },
    )?;
    Ok((p, pitch))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CUdeviceptr,
    ppitch: *mut usize,
    width: usize,
    height: usize,
    elem: c_uint,
) -> CUresult {
    crate::tally!("cuMemAllocPitch_v2");
    guard(|| {
        let (out, pout) = (nn(dptr)?, nn(ppitch)?);
        let (p, pitch) = pitched(width as u64, height as u64, elem, false)?;
        unsafe {
            out.write(p);
            pout.write(pitch as usize);
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocPitch(
    dptr: *mut c_uint,
    ppitch: *mut c_uint,
    width: c_uint,
    height: c_uint,
    elem: c_uint,
) -> CUresult {
    crate::tally!("cuMemAllocPitch");
    guard(|| {
        let (out, pout) = (nn(dptr)?, nn(ppitch)?);
        let (p, pitch) = pitched(width as u64, height as u64, elem, true)?;
        unsafe {
            out.write(p as c_uint);
            pout.write(pitch as c_uint);
        }
        Ok(())
    })
}

/// Managed memory is charged in full to the current device, the worst case a limiter has to
/// assume, until advised or prefetched to the host (`State::place_managed`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocManaged(dptr: *mut CUdeviceptr, bytesize: usize, flags: c_uint) -> CUresult {
    crate::tally!("cuMemAllocManaged");
    guard(|| {
        let out = nn(dptr)?;
        // CU_MEM_ATTACH_GLOBAL (1) or CU_MEM_ATTACH_HOST (2), exactly one.
        if flags != 1 && flags != 2 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let p = alloc(bytesize as u64, AllocKind::Managed)?;
        unsafe { out.write(p) };
        Ok(())
    })
}

/// `CUmem_advise`: 1/2 read-mostly, 3/4 preferred location, 5/6 accessed-by (set/unset).
const ADVISE_SET_PREFERRED_LOCATION: u32 = 3;
const ADVISE_UNSET_ACCESSED_BY: u32 = 6;

/// Where a location names: `Some(physical device)` or `None` for the host.
fn location(st: &crate::state::State, loc: CUmemLocation) -> Res<Option<usize>> {
    match loc.type_ {
        CU_MEM_LOCATION_TYPE_DEVICE => st.device(loc.id).map(Some).map_err(|_| CUresult::ERROR_INVALID_DEVICE),
        CU_MEM_LOCATION_TYPE_HOST | CU_MEM_LOCATION_TYPE_HOST_NUMA | CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT => Ok(None),
        _ => Err(CUresult::ERROR_INVALID_VALUE),
    }
}

/// The pre-12.2 form names the host as device -1 (`CU_DEVICE_CPU`).
fn legacy_location(device: CUdevice) -> CUmemLocation {
    if device == -1 {
        CUmemLocation { type_: CU_MEM_LOCATION_TYPE_HOST, id: 0 }
    } else {
        CUmemLocation { type_: CU_MEM_LOCATION_TYPE_DEVICE, id: device }
    }
}

/// Advice on managed memory only (anything else is `CUDA_ERROR_INVALID_VALUE`, as the driver
/// answers for device memory). A preferred location moves the whole allocation there (see
/// `State::place_managed`); the other advice is accepted and changes nothing here.
fn advise(ptr: u64, count: usize, advice: u32, loc: CUmemLocation) -> Res<()> {
    if !(1..=ADVISE_UNSET_ACCESSED_BY).contains(&advice) {
        return Err(CUresult::ERROR_INVALID_VALUE);
    }
    with_ctx(|st, _, _| {
        let target = location(st, loc)?;
        if advice == ADVISE_SET_PREFERRED_LOCATION {
            st.place_managed(ptr, count as u64, target, false)
        } else {
            // Validates the range all the same.
            let here = st.allocs.range(..=ptr).next_back().map(|(_, a)| a.dev);
            st.place_managed(ptr, count as u64, here.flatten(), false).map(|_| ())
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAdvise(ptr: CUdeviceptr, count: usize, advice: c_uint, device: CUdevice) -> CUresult {
    crate::tally!("cuMemAdvise");
    guard(|| advise(ptr, count, advice, legacy_location(device)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAdvise_v2(
    ptr: CUdeviceptr,
    count: usize,
    advice: c_uint,
    loc: CUmemLocation,
) -> CUresult {
    crate::tally!("cuMemAdvise_v2");
    guard(|| advise(ptr, count, advice, loc))
}

/// Migrates managed memory at once (the fake's copies take no time): to a device without room
/// it fails with `CUDA_ERROR_OUT_OF_MEMORY` (a real driver would evict other managed pages).
fn prefetch(ptr: u64, count: usize, loc: CUmemLocation, stream: CUstream) -> Res<()> {
    with_ctx(|st, _, _| {
        if !st.stream_valid(stream as u64) {
            return Err(CUresult::ERROR_INVALID_HANDLE);
        }
        let target = location(st, loc)?;
        st.place_managed(ptr, count as u64, target, true)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPrefetchAsync(
    ptr: CUdeviceptr,
    count: usize,
    device: CUdevice,
    stream: CUstream,
) -> CUresult {
    crate::tally!("cuMemPrefetchAsync");
    guard(|| prefetch(ptr, count, legacy_location(device), stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPrefetchAsync_v2(
    ptr: CUdeviceptr,
    count: usize,
    loc: CUmemLocation,
    _flags: c_uint,
    stream: CUstream,
) -> CUresult {
    crate::tally!("cuMemPrefetchAsync_v2");
    guard(|| prefetch(ptr, count, loc, stream))
}

/// Freeing 0 succeeds and does nothing, as `free(NULL)` does.
fn free(ptr: u64) -> Res<()> {
    with_ctx(|st, _, _| if ptr == 0 { Ok(()) } else { st.free_own(ptr).map(|_| ()) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    crate::tally!("cuMemFree_v2");
    guard(|| free(dptr))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree(dptr: c_uint) -> CUresult {
    crate::tally!("cuMemFree");
    guard(|| free(dptr as u64))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    crate::tally!("cuMemGetInfo_v2");
    guard(|| {
        let (fo, to) = (nn(free)?, nn(total)?);
        let (f, t) = with_ctx(|st, _, dev| Ok(st.mem_info(dev)))?;
        unsafe {
            fo.write(f as usize);
            to.write(t as usize);
        }
        Ok(())
    })
}

/// 32-bit out-parameters: clamped.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo(free: *mut c_uint, total: *mut c_uint) -> CUresult {
    crate::tally!("cuMemGetInfo");
    guard(|| {
        let (fo, to) = (nn(free)?, nn(total)?);
        let (f, t) = with_ctx(|st, _, dev| Ok(st.mem_info(dev)))?;
        let clamp = |v: u64| v.min(u32::MAX as u64) as c_uint;
        unsafe {
            fo.write(clamp(f));
            to.write(clamp(t));
        }
        Ok(())
    })
}

/// Pinned host memory is ordinary malloc memory here and costs the device nothing; the set
/// remembers what we handed out so cuMemFreeHost can refuse anything else.
static HOST: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

fn alloc_host(pp: *mut *mut c_void, size: usize) -> Res<()> {
    let out = nn(pp)?;
    with_ctx(|_, _, _| Ok(()))?;
    if size == 0 {
        return Err(CUresult::ERROR_INVALID_VALUE);
    }
    let p = unsafe { libc::malloc(size) };
    if p.is_null() {
        return Err(CUresult::ERROR_OUT_OF_MEMORY);
    }
    HOST.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_default().insert(p as usize);
    unsafe { out.write(p) };
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocHost_v2(pp: *mut *mut c_void, bytesize: usize) -> CUresult {
    crate::tally!("cuMemAllocHost_v2");
    guard(|| alloc_host(pp, bytesize))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocHost(pp: *mut *mut c_void, bytesize: c_uint) -> CUresult {
    crate::tally!("cuMemAllocHost");
    guard(|| alloc_host(pp, bytesize as usize))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    crate::tally!("cuMemFreeHost");
    guard(|| {
        with_ctx(|_, _, _| Ok(()))?;
        let mut host = HOST.lock().unwrap_or_else(|e| e.into_inner());
        if !host.get_or_insert_default().remove(&(p as usize)) {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        unsafe { libc::free(p) };
        Ok(())
    })
}

/// Copies and sets move no data (there is none); they only check the device range.
fn touch(dptr: u64, len: u64, host_null: bool) -> Res<()> {
    if host_null && len > 0 {
        return Err(CUresult::ERROR_INVALID_VALUE);
    }
    with_ctx(|st, _, _| if st.valid_range(dptr, len) { Ok(()) } else { Err(CUresult::ERROR_INVALID_VALUE) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, n: usize) -> CUresult {
    crate::tally!("cuMemcpyHtoD_v2");
    guard(|| touch(dst, n as u64, src.is_null()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyHtoD(dst: c_uint, src: *const c_void, n: c_uint) -> CUresult {
    crate::tally!("cuMemcpyHtoD");
    guard(|| touch(dst as u64, n as u64, src.is_null()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) -> CUresult {
    crate::tally!("cuMemcpyDtoH_v2");
    guard(|| touch(src, n as u64, dst.is_null()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoH(dst: *mut c_void, src: c_uint, n: c_uint) -> CUresult {
    crate::tally!("cuMemcpyDtoH");
    guard(|| touch(src as u64, n as u64, dst.is_null()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, _value: c_uchar, n: usize) -> CUresult {
    crate::tally!("cuMemsetD8_v2");
    guard(|| touch(dst, n as u64, false))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD8(dst: c_uint, _value: c_uchar, n: c_uint) -> CUresult {
    crate::tally!("cuMemsetD8");
    guard(|| touch(dst as u64, n as u64, false))
}

/// Extra export: the device memory in use on the device behind CUDA ordinal `ordinal`, by every
/// allocation and context of this process — what NVML reports from outside, with no
/// interposer's view in between. Needs no cuInit.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fakegpu_device_used(ordinal: std::ffi::c_int, used: *mut u64) -> CUresult {
    guard(|| {
        let out = nn(used)?;
        let st = crate::state::state();
        let dev = st.device(ordinal)?;
        // SAFETY: non-null, per the check above.
        unsafe { out.write(st.devices[dev].used) };
        Ok(())
    })
}
