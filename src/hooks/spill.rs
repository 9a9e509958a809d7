//! Host-memory oversubscription (`CUDA_OVERSUBSCRIBE=true`): an allocation that the cap refuses
//! is made in host memory the device can use, instead of failing.
//!
//! Mechanism: managed memory (`cuMemAllocManaged`, attached globally) advised to live on the
//! host (`CU_MEM_ADVISE_SET_PREFERRED_LOCATION` = host) and to stay mapped for the device
//! (`CU_MEM_ADVISE_SET_ACCESSED_BY` = the device). Why this and not host-located VMM memory or
//! pinned zero-copy memory:
//! - a managed pointer is a device pointer to every API: kernels, `cuMemcpy*` with explicit
//!   directions (HtoD/DtoH/DtoD), `cuMemset*`, `cuMemFree`, pointer attributes. PyTorch's
//!   caching allocator, CuPy and stream-ordered code take it unchanged; a pinned host pointer
//!   handed out as a device pointer is undefined behaviour in copies with an explicit kind;
//! - the free is the same `cuMemFree` the application already calls;
//! - the pages are pageable host memory: GiBs spilled do not pin host RAM away from the node;
//! - with the host as preferred location a device access maps the page remotely (over PCIe or
//!   C2C) rather than migrating it, so the device-side footprint stays under the cap (the H200
//!   acceptance script reads it from outside with `nvidia-smi`).
//!
//! If the advice cannot be given, the memory could migrate onto the device past the cap: the
//! allocation is then undone and refused. Spilled bytes are charged to the spill counter
//! (ledger `Kind::Spilled`) under the spill limit, never to the device's.

use std::sync::atomic::{AtomicBool, Ordering};

use cuda_types::*;
use vgpu_core::ledger::{Denied, Key, Reservation};

use crate::driver;
use crate::state::state;

/// `CU_MEM_ATTACH_GLOBAL`.
const ATTACH_GLOBAL: u32 = 1;
/// `CUmem_advise` values.
const ADVISE_SET_PREFERRED_LOCATION: u32 = 3;
const ADVISE_SET_ACCESSED_BY: u32 = 5;
/// `CU_DEVICE_CPU` of the pre-12.2 `cuMemAdvise`.
const DEVICE_CPU: CUdevice = -1;

type Res = Reservation<'static, crate::container::Container>;

/// Whether this process has said that it spills (one line per process, not per allocation).
static SAID: AtomicBool = AtomicBool::new(false);

/// Makes a cap-refused allocation on CUDA ordinal `dev` in host memory, with `r` reserved
/// against the spill limit: success with `*dptr` written and `r` committed, or out of memory
/// (`r` rolled back).
///
/// # Safety
/// `dptr` is the caller's non-null out-pointer.
pub unsafe fn alloc(dptr: *mut CUdeviceptr, r: Res, dev: usize, ctx: u64) -> CUresult {
    let st = state();
    let bytes = r.bytes();
    let cap = st.ledger.limit(dev);
    if let Some(limit) = st.config.spill_limit(cap) {
        st.container().publish_spill_limit(dev, limit);
        if !SAID.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "device {dev}: the {} MiB memory cap is full; this process now spills allocations to host memory \
                 (CUDA_OVERSUBSCRIBE, up to {} MiB per container): they work but run at host-link speed",
                cap.unwrap_or(0) >> 20,
                limit >> 20
            );
        }
    }
    let Ok(size) = usize::try_from(bytes) else { return CUresult::ERROR_OUT_OF_MEMORY };
    let mut ptr: CUdeviceptr = 0;
    let rc = driver::mem_alloc_managed(&mut ptr, size, ATTACH_GLOBAL);
    if !rc.is_success() {
        tracing::warn!("device {dev}: spilling {} MiB to host memory failed (cuMemAllocManaged: {rc:?})", bytes >> 20);
        return CUresult::ERROR_OUT_OF_MEMORY;
    }
    if let Err(rc) = keep_on_host(ptr, size, dev) {
        tracing::warn!(
            "device {dev}: spilled memory could not be kept on the host (cuMemAdvise: {rc:?}); refusing the allocation"
        );
        driver::mem_free(ptr);
        return CUresult::ERROR_OUT_OF_MEMORY;
    }
    r.commit(Key::DevicePtr(ptr), ctx);
    // SAFETY: the caller's non-null out-pointer.
    unsafe { dptr.write(ptr) };
    crate::startup::allocated();
    CUresult::SUCCESS
}

/// Host as the preferred location, mapped for `dev`: device accesses then go over the link to
/// host memory instead of migrating pages onto the device. `cuMemAdvise_v2` (CUDA ≥ 12.2,
/// locations), else the older `cuMemAdvise` (device ordinals, `CU_DEVICE_CPU` for the host).
fn keep_on_host(ptr: CUdeviceptr, size: usize, dev: usize) -> Result<(), CUresult> {
    let host = CUmemLocation { type_: CU_MEM_LOCATION_TYPE_HOST, id: 0 };
    let device = CUmemLocation { type_: CU_MEM_LOCATION_TYPE_DEVICE, id: dev as i32 };
    let check = |rc: CUresult| if rc.is_success() { Ok(()) } else { Err(rc) };
    // SAFETY: advice on the managed range the driver just returned, with valid arguments.
    match unsafe { driver::mem_advise_v2(ptr, size, ADVISE_SET_PREFERRED_LOCATION, host) } {
        rc if rc == <CUresult as driver::Code>::MISSING => {
            // SAFETY: the managed range just allocated, on a device the caller named.
            check(unsafe { driver::mem_advise(ptr, size, ADVISE_SET_PREFERRED_LOCATION, DEVICE_CPU) })?;
            // SAFETY: as above.
            check(unsafe { driver::mem_advise(ptr, size, ADVISE_SET_ACCESSED_BY, dev as CUdevice) })
        }
        rc => {
            check(rc)?;
            // SAFETY: the managed range just allocated, on a device the caller named.
            check(unsafe { driver::mem_advise_v2(ptr, size, ADVISE_SET_ACCESSED_BY, device) })
        }
    }
}

/// A stream-ordered free of spilled memory: managed memory is not pool memory, so the free
/// waits for `stream`'s work and then frees it as `cuMemFree` would. A capturing stream is
/// never synchronised: the driver gets the call as made.
pub fn free_async(real: driver::Real<'_, CUresult>, ptr: CUdeviceptr, stream: CUstream) -> CUresult {
    if driver::stream_capturing(stream) {
        return real.call();
    }
    let rc = driver::stream_synchronize(stream);
    if !rc.is_success() {
        return rc;
    }
    match driver::mem_free(ptr) {
        rc if rc == <CUresult as driver::Code>::MISSING => real.call(),
        rc => rc,
    }
}

/// What the refusal line says for a spill past its limit.
pub fn describe(d: &Denied) -> String {
    format!(
        "device {}: allocation of {} MiB refused: the memory cap is full and {} MiB of the {} MiB spill limit \
         (LIBVGPU_SPILL_LIMIT) are in use",
        d.dev,
        d.requested.div_ceil(1 << 20),
        d.used >> 20,
        d.limit >> 20
    )
}
