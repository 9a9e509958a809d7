//! CUDA arrays and mipmapped arrays: opaque handles charged by the size rule in
//! `state::objects::array_bytes`, which cuArrayGetMemoryRequirements reports back exactly.

use std::ffi::c_uint;

use cuda_types::{
    CUDA_ARRAY_DESCRIPTOR, CUDA_ARRAY_DESCRIPTOR_v1, CUDA_ARRAY_MEMORY_REQUIREMENTS, CUDA_ARRAY3D_DESCRIPTOR,
    CUDA_ARRAY3D_DESCRIPTOR_v1, CUarray, CUdevice, CUmipmappedArray, CUresult,
};

use super::{guard, need_init, nn, with_ctx};
use crate::state::{PTR_ALIGN, Res, state};
use crate::state::{array_bytes, mipmap_bytes};

/// Extents in a common shape: (width, height, depth, format, channels).
type Shape = (u64, u64, u64, u32, u32);

fn check(shape: Shape) -> Res<()> {
    let (w, h, d, _, ch) = shape;
    // A 3D array needs a height; channels are 1, 2 or 4.
    if w == 0 || (d > 0 && h == 0) || !matches!(ch, 1 | 2 | 4) {
        return Err(CUresult::ERROR_INVALID_VALUE);
    }
    Ok(())
}

fn create(out: *mut CUarray, shape: Option<Shape>) -> Res<()> {
    let out = nn(out)?;
    let shape = shape.ok_or(CUresult::ERROR_INVALID_VALUE)?;
    check(shape)?;
    let (w, h, d, fmt, ch) = shape;
    let size = array_bytes(w, h, d, ch as u64, fmt);
    let handle = with_ctx(|st, ctx, dev| st.array_create(ctx, dev, size, false))?;
    unsafe { out.write(handle as usize as CUarray) };
    Ok(())
}

fn shape2(d: *const CUDA_ARRAY_DESCRIPTOR) -> Option<Shape> {
    let d = unsafe { d.as_ref()? };
    Some((d.Width as u64, d.Height as u64, 0, d.Format, d.NumChannels))
}

fn shape2_v1(d: *const CUDA_ARRAY_DESCRIPTOR_v1) -> Option<Shape> {
    let d = unsafe { d.as_ref()? };
    Some((d.Width as u64, d.Height as u64, 0, d.Format, d.NumChannels))
}

fn shape3(d: *const CUDA_ARRAY3D_DESCRIPTOR) -> Option<Shape> {
    let d = unsafe { d.as_ref()? };
    Some((d.Width as u64, d.Height as u64, d.Depth as u64, d.Format, d.NumChannels))
}

fn shape3_v1(d: *const CUDA_ARRAY3D_DESCRIPTOR_v1) -> Option<Shape> {
    let d = unsafe { d.as_ref()? };
    Some((d.Width as u64, d.Height as u64, d.Depth as u64, d.Format, d.NumChannels))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArrayCreate_v2(arr: *mut CUarray, desc: *const CUDA_ARRAY_DESCRIPTOR) -> CUresult {
    crate::tally!("cuArrayCreate_v2");
    guard(|| create(arr, shape2(desc)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArrayCreate(arr: *mut CUarray, desc: *const CUDA_ARRAY_DESCRIPTOR_v1) -> CUresult {
    crate::tally!("cuArrayCreate");
    guard(|| create(arr, shape2_v1(desc)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArray3DCreate_v2(arr: *mut CUarray, desc: *const CUDA_ARRAY3D_DESCRIPTOR) -> CUresult {
    crate::tally!("cuArray3DCreate_v2");
    guard(|| create(arr, shape3(desc)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArray3DCreate(arr: *mut CUarray, desc: *const CUDA_ARRAY3D_DESCRIPTOR_v1) -> CUresult {
    crate::tally!("cuArray3DCreate");
    guard(|| create(arr, shape3_v1(desc)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArrayDestroy(arr: CUarray) -> CUresult {
    crate::tally!("cuArrayDestroy");
    guard(|| with_ctx(|st, _, _| st.array_destroy(arr as u64, false)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMipmappedArrayCreate(
    out: *mut CUmipmappedArray,
    desc: *const CUDA_ARRAY3D_DESCRIPTOR,
    levels: c_uint,
) -> CUresult {
    crate::tally!("cuMipmappedArrayCreate");
    guard(|| {
        let out = nn(out)?;
        let shape = shape3(desc).ok_or(CUresult::ERROR_INVALID_VALUE)?;
        check(shape)?;
        if levels == 0 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let (w, h, d, fmt, ch) = shape;
        let size = mipmap_bytes(w, h, d, ch as u64, fmt, levels);
        let handle = with_ctx(|st, ctx, dev| st.array_create(ctx, dev, size, true))?;
        unsafe { out.write(handle as usize as CUmipmappedArray) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMipmappedArrayDestroy(mm: CUmipmappedArray) -> CUresult {
    crate::tally!("cuMipmappedArrayDestroy");
    guard(|| with_ctx(|st, _, _| st.array_destroy(mm as u64, true)))
}

fn requirements(out: *mut CUDA_ARRAY_MEMORY_REQUIREMENTS, h: u64, mipmapped: bool, dev: CUdevice) -> Res<()> {
    let out = nn(out)?;
    need_init()?;
    let st = state();
    let d = st.device(dev)?;
    let a = st.arrays.get(&h).filter(|a| a.mipmapped == mipmapped).ok_or(CUresult::ERROR_INVALID_HANDLE)?;
    if a.dev != d {
        return Err(CUresult::ERROR_INVALID_DEVICE);
    }
    let req = CUDA_ARRAY_MEMORY_REQUIREMENTS { size: a.size as usize, alignment: PTR_ALIGN as usize, reserved: [0; 4] };
    unsafe { out.write(req) };
    Ok(())
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArrayGetMemoryRequirements(
    out: *mut CUDA_ARRAY_MEMORY_REQUIREMENTS,
    arr: CUarray,
    dev: CUdevice,
) -> CUresult {
    crate::tally!("cuArrayGetMemoryRequirements");
    guard(|| requirements(out, arr as u64, false, dev))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMipmappedArrayGetMemoryRequirements(
    out: *mut CUDA_ARRAY_MEMORY_REQUIREMENTS,
    mm: CUmipmappedArray,
    dev: CUdevice,
) -> CUresult {
    crate::tally!("cuMipmappedArrayGetMemoryRequirements");
    guard(|| requirements(out, mm as u64, true, dev))
}
