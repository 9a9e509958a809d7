use super::*;
use crate::config::Config;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn state(mem: &str, overhead: &str) -> State {
    State::new(Config::from_values(Some("2"), Some(mem), Some(overhead), None, None, None))
}

#[test]
fn allocations_and_contexts_share_the_device() {
    let mut st = state("1g", "100m");
    let ctx = st.primary_retain(0).unwrap();
    assert_eq!(st.mem_info(0), (GIB - 100 * MIB, GIB));
    assert_eq!(st.primary_retain(0).unwrap(), ctx, "retain is refcounted, same handle");
    assert_eq!(st.devices[0].used, 100 * MIB);

    let p = st.alloc(ctx, 0, 512 * MIB, AllocKind::Linear).unwrap();
    assert_eq!(p % PTR_ALIGN, 0);
    assert_eq!(st.alloc(ctx, 0, 512 * MIB, AllocKind::Linear), Err(CUresult::ERROR_OUT_OF_MEMORY));
    let q = st.alloc(ctx, 0, 1000, AllocKind::Linear).unwrap();
    assert!(q >= p + 512 * MIB);
    assert_eq!(st.devices[1].used, 0);
    st.free(p).unwrap();
    assert_eq!(st.free(p).map(|_| ()), Err(CUresult::ERROR_INVALID_VALUE));
    let r = st.alloc(ctx, 0, 1000, AllocKind::Linear).unwrap();
    assert!(r > q, "addresses are not reused");
    assert!(st.valid_range(r + 10, 990) && !st.valid_range(r + 10, 991));

    // Last release frees the overhead and everything made under the context.
    st.primary_release(0).unwrap();
    assert_eq!(st.devices[0].used, 100 * MIB + 2000);
    st.primary_release(0).unwrap();
    assert_eq!(st.devices[0].used, 0);
    assert!(st.allocs.is_empty());
    assert_eq!(st.primary_release(0), Err(CUresult::ERROR_INVALID_CONTEXT));
    assert_eq!(st.ctx_device(ctx), Err(CUresult::ERROR_INVALID_CONTEXT));
}

#[test]
fn created_contexts_charge_and_destroy() {
    let mut st = state("700m", "300m");
    let a = st.ctx_create(1).unwrap();
    let b = st.ctx_create(1).unwrap();
    assert_eq!(st.ctx_create(1), Err(CUresult::ERROR_OUT_OF_MEMORY));
    st.alloc(b, 1, 10, AllocKind::Managed).unwrap();
    st.ctx_destroy(b).unwrap();
    assert_eq!(st.devices[1].used, 300 * MIB);
    assert_eq!(st.ctx_destroy(b), Err(CUresult::ERROR_INVALID_CONTEXT));
    let primary = st.primary_handle(1);
    assert_eq!(st.ctx_destroy(primary), Err(CUresult::ERROR_INVALID_CONTEXT));
    assert_eq!(st.ctx_device(a), Ok(1));
}

#[test]
fn v1_pointers_fit_32_bits_and_wrap() {
    let mut st = state("64g", "0");
    let ctx = st.primary_retain(0).unwrap();
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(st.alloc_v1(ctx, 0, GIB).unwrap());
    }
    assert!(live.iter().all(|&p| p + GIB <= u32::MAX as u64));
    // The window holds under 4 GiB: a fourth fails until one is freed, then reuses its gap.
    assert_eq!(st.alloc_v1(ctx, 0, GIB), Err(CUresult::ERROR_OUT_OF_MEMORY));
    st.free(live[1]).unwrap();
    assert_eq!(st.alloc_v1(ctx, 0, GIB), Ok(live[1]));
}

#[test]
fn pools_vmm_and_arrays() {
    let mut st = state("1g", "0");
    let ctx = st.primary_retain(0).unwrap();
    let pool = st.default_pool(0);
    assert_eq!(st.default_pool(0), pool);
    let p = st.pool_alloc(ctx, pool, 64 * MIB).unwrap();
    assert_eq!(st.pool_get_attr(pool, 7).unwrap(), (64 * MIB, false));
    st.free(p).unwrap();
    assert_eq!(st.pools[&pool].used, 0);
    assert_eq!(st.devices[0].used, 0);

    assert_eq!(st.vmm_create(MIB, Some(0)), Err(CUresult::ERROR_INVALID_VALUE));
    let h = st.vmm_create(4 * MIB, Some(0)).unwrap();
    let host = st.vmm_create(4 * MIB, None).unwrap();
    assert_eq!(st.devices[0].used, 4 * MIB);
    let va = st.address_reserve(8 * MIB, 0).unwrap();
    st.map(va, 4 * MIB, 0, h).unwrap();
    st.map(va + 4 * MIB, 4 * MIB, 0, host).unwrap();
    assert_eq!(st.map(va, 2 * MIB, 0, h), Err(CUresult::ERROR_INVALID_VALUE), "overlap");
    assert!(st.fully_mapped(va, 8 * MIB));
    st.vmm_release(h).unwrap();
    assert_eq!(st.devices[0].used, 4 * MIB, "released but still mapped");
    st.unmap(va, 8 * MIB).unwrap();
    assert_eq!(st.devices[0].used, 0);
    st.address_free(va, 8 * MIB).unwrap();

    // 1000 x 1 float = 4000 bytes -> 4096; 3 levels of 64x64 RGBA8: 16384 + 4096 + 1024.
    assert_eq!(array_bytes(1000, 0, 0, 1, cuda_types::array_format::FLOAT), 4096);
    assert_eq!(mipmap_bytes(64, 64, 0, 4, cuda_types::array_format::UNSIGNED_INT8, 3), 21504);
    let a = st.array_create(ctx, 0, 4096, false).unwrap();
    assert_eq!(st.array_destroy(a, true), Err(CUresult::ERROR_INVALID_HANDLE));
    st.array_destroy(a, false).unwrap();
    assert_eq!(st.devices[0].used, 0);
}

#[test]
fn visible_devices_map_ordinals_to_physical_devices() {
    let cfg = Config::from_values(Some("3"), Some("1g"), Some("100m"), None, None, Some("2,0"));
    let mut st = State::new(cfg);
    assert_eq!(st.devices.len(), 3, "every physical device is still modelled");
    assert_eq!(st.device(0), Ok(2));
    assert_eq!(st.device(1), Ok(0));
    assert_eq!(st.device(2), Err(CUresult::ERROR_INVALID_DEVICE));
    assert_eq!(st.device(-1), Err(CUresult::ERROR_INVALID_DEVICE));
    assert_eq!(st.ordinal(2), Ok(0));
    assert_eq!(st.ordinal(1), Err(CUresult::ERROR_INVALID_DEVICE));

    let dev = st.device(0).unwrap();
    let ctx = st.primary_retain(dev).unwrap();
    st.alloc(ctx, dev, 200 * MIB, AllocKind::Linear).unwrap();
    assert_eq!(st.devices[2].used, 300 * MIB, "charged to physical device 2");
    assert_eq!(st.devices[0].used, 0);
    assert_eq!(st.ordinal(st.ctx_device(ctx).unwrap()), Ok(0));
}
