//! Stream-ordered allocation and memory pools. Memory is not ordered on the streams'
//! simulated timeline (only kernels are): an async allocation is charged when requested and
//! an async free releases at once, which is the upper bound on what a real pool holds back
//! from other processes at a sync point.
//!
//! The `_ptsz` (per-thread default stream) entry points are separate functions with their
//! own addresses, so a test can tell which one cuGetProcAddress handed out and which one a
//! hook intercepted.

use std::ffi::c_void;

use cuda_types::{
    CU_MEM_LOCATION_TYPE_DEVICE, CU_MEM_LOCATION_TYPE_HOST, CU_MEM_LOCATION_TYPE_HOST_NUMA,
    CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT, CUdevice, CUdeviceptr, CUmemPoolProps, CUmemoryPool, CUresult, CUstream,
};

use super::{guard, need_init, nn, with_ctx};
use crate::state::{Res, State, state};

fn check_stream(st: &State, stream: CUstream) -> Res<()> {
    if st.stream_valid(stream as u64) { Ok(()) } else { Err(CUresult::ERROR_INVALID_HANDLE) }
}

fn alloc_async(dptr: *mut CUdeviceptr, size: usize, pool: Option<CUmemoryPool>, stream: CUstream) -> Res<()> {
    let out = nn(dptr)?;
    let p = with_ctx(|st, ctx, dev| {
        check_stream(st, stream)?;
        let pool = match pool {
            Some(p) => p as u64,
            None => st.default_pool(dev),
        };
        st.pool_alloc(ctx, pool, size as u64)
    })?;
    unsafe { out.write(p) };
    Ok(())
}

fn free_async(dptr: CUdeviceptr, stream: CUstream) -> Res<()> {
    with_ctx(|st, _, _| {
        check_stream(st, stream)?;
        st.free_own(dptr).map(|_| ())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync(dptr: *mut CUdeviceptr, size: usize, stream: CUstream) -> CUresult {
    crate::tally!("cuMemAllocAsync");
    guard(|| alloc_async(dptr, size, None, stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync_ptsz(dptr: *mut CUdeviceptr, size: usize, stream: CUstream) -> CUresult {
    crate::tally!("cuMemAllocAsync_ptsz");
    guard(|| alloc_async(dptr, size, None, stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    crate::tally!("cuMemAllocFromPoolAsync");
    guard(|| alloc_async(dptr, size, Some(pool), stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync_ptsz(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    crate::tally!("cuMemAllocFromPoolAsync_ptsz");
    guard(|| alloc_async(dptr, size, Some(pool), stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    crate::tally!("cuMemFreeAsync");
    guard(|| free_async(dptr, stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync_ptsz(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    crate::tally!("cuMemFreeAsync_ptsz");
    guard(|| free_async(dptr, stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolCreate(pool: *mut CUmemoryPool, props: *const CUmemPoolProps) -> CUresult {
    crate::tally!("cuMemPoolCreate");
    guard(|| {
        let out = nn(pool)?;
        if props.is_null() {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        need_init()?;
        let loc = unsafe { (*props).location };
        let mut st = state();
        let dev = match loc.type_ {
            CU_MEM_LOCATION_TYPE_DEVICE => Some(st.device(loc.id).map_err(|_| CUresult::ERROR_INVALID_VALUE)?),
            CU_MEM_LOCATION_TYPE_HOST | CU_MEM_LOCATION_TYPE_HOST_NUMA | CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT => None,
            _ => return Err(CUresult::ERROR_INVALID_VALUE),
        };
        let h = st.pool_create(dev);
        unsafe { out.write(h as usize as CUmemoryPool) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolDestroy(pool: CUmemoryPool) -> CUresult {
    crate::tally!("cuMemPoolDestroy");
    guard(|| {
        need_init()?;
        state().pool_destroy(pool as u64)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetDefaultMemPool(pool: *mut CUmemoryPool, dev: CUdevice) -> CUresult {
    crate::tally!("cuDeviceGetDefaultMemPool");
    guard(|| {
        let out = nn(pool)?;
        need_init()?;
        let mut st = state();
        let d = st.device(dev)?;
        let h = st.default_pool(d);
        unsafe { out.write(h as usize as CUmemoryPool) };
        Ok(())
    })
}

/// Nothing to trim: freed pool memory was already given back.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolTrimTo(pool: CUmemoryPool, _min_bytes_to_keep: usize) -> CUresult {
    crate::tally!("cuMemPoolTrimTo");
    guard(|| {
        need_init()?;
        state().pools.get(&(pool as u64)).map(|_| ()).ok_or(CUresult::ERROR_INVALID_VALUE)
    })
}

/// Attributes 1–3 are `int`, the rest `cuuint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolSetAttribute(pool: CUmemoryPool, attr: u32, value: *mut c_void) -> CUresult {
    crate::tally!("cuMemPoolSetAttribute");
    guard(|| {
        let value = nn(value)?;
        need_init()?;
        let v = if (1..=3).contains(&attr) {
            unsafe { *(value as *const i32) as u64 }
        } else {
            unsafe { *(value as *const u64) }
        };
        state().pool_set_attr(pool as u64, attr, v)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolGetAttribute(pool: CUmemoryPool, attr: u32, value: *mut c_void) -> CUresult {
    crate::tally!("cuMemPoolGetAttribute");
    guard(|| {
        let value = nn(value)?;
        need_init()?;
        let (v, is_int) = state().pool_get_attr(pool as u64, attr)?;
        unsafe {
            if is_int {
                (value as *mut i32).write(v as i32);
            } else {
                (value as *mut u64).write(v);
            }
        }
        Ok(())
    })
}
