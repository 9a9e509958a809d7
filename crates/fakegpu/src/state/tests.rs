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

    assert_eq!(st.vmm_create(MIB, Some(0), 0), Err(CUresult::ERROR_INVALID_VALUE));
    let h = st.vmm_create(4 * MIB, Some(0), 0).unwrap();
    let host = st.vmm_create(4 * MIB, None, 0).unwrap();
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

#[test]
fn ipc_handles_map_the_exporters_memory_uncharged() {
    let mut exporter = state("4g", "100m");
    let ctx = exporter.primary_retain(1).unwrap();
    let p = exporter.alloc(ctx, 1, GIB, AllocKind::Linear).unwrap();
    let h = exporter.ipc_export(p + 4096, 1111).unwrap();
    assert_eq!((h.pid, h.ptr, h.size), (1111, p, GIB), "an interior pointer names its allocation");
    assert_eq!(h.uuid, exporter.devices[1].uuid_bytes);
    assert_eq!(IpcHandle::decode(&h.encode()), Some(h));
    assert_eq!(IpcHandle::decode(&[0; IPC_HANDLE_SIZE]), None);
    let managed = exporter.alloc(ctx, 1, MIB, AllocKind::Managed).unwrap();
    assert_eq!(exporter.ipc_export(managed, 1111), Err(CUresult::ERROR_INVALID_VALUE));
    assert_eq!(exporter.ipc_export(0xdead, 1111), Err(CUresult::ERROR_INVALID_VALUE));

    let mut importer = state("4g", "100m");
    let ictx = importer.primary_retain(0).unwrap();
    let before = importer.mem_info(0);
    assert_eq!(importer.ipc_open(ictx, &h, 1111), Err(CUresult::ERROR_INVALID_CONTEXT), "own handle");
    let q = importer.ipc_open(ictx, &h, 2222).unwrap();
    assert_eq!(importer.ipc_open(ictx, &h, 2222), Ok(q), "opened again: same pointer, one more reference");
    assert_eq!((importer.mem_info(0), importer.mem_info(1).0), (before, 4 * GIB), "no device is charged");
    assert!(importer.valid_range(q, GIB));
    assert_eq!(importer.ipc_export(q, 2222), Err(CUresult::ERROR_INVALID_VALUE), "not ours to export");
    assert_eq!(importer.free_own(q).map(|_| ()), Err(CUresult::ERROR_INVALID_VALUE), "cuMemFree refuses it");
    importer.ipc_close(q).unwrap();
    assert!(importer.valid_range(q, GIB), "one reference left");
    importer.ipc_close(q).unwrap();
    assert!(!importer.valid_range(q, 1));
    assert_eq!(importer.ipc_close(q), Err(CUresult::ERROR_INVALID_VALUE));
    assert_eq!(importer.mem_info(0), before);

    let unknown = IpcHandle { uuid: [7; 16], ..h };
    assert_eq!(importer.ipc_open(ictx, &unknown, 2222), Err(CUresult::ERROR_INVALID_VALUE));
    // A context going away unmaps what was opened in it.
    let c2 = importer.ctx_create(0).unwrap();
    let r = importer.ipc_open(c2, &h, 2222).unwrap();
    importer.ctx_destroy(c2).unwrap();
    assert!(!importer.valid_range(r, 1));
}

#[test]
fn shareable_handles_import_uncharged() {
    let mut exporter = state("4g", "0");
    let plain = exporter.vmm_create(2 * MIB, Some(0), 0).unwrap();
    assert_eq!(exporter.vmm_export(plain, HANDLE_TYPE_POSIX_FD), Err(CUresult::ERROR_INVALID_VALUE), "not requested");
    let h = exporter.vmm_create(GIB, Some(1), HANDLE_TYPE_POSIX_FD).unwrap();
    assert_eq!(exporter.vmm_export(h, 2), Err(CUresult::ERROR_NOT_SUPPORTED), "no Win32 handles on Linux");
    let rec = exporter.vmm_export(h, HANDLE_TYPE_POSIX_FD).unwrap();
    assert_eq!(ShareableRecord::decode(&rec.encode()), Some(rec));
    assert_eq!(ShareableRecord::decode(&rec.encode()[..10]), None);
    let host = exporter.vmm_create(4 * MIB, None, HANDLE_TYPE_POSIX_FD).unwrap();
    let host_rec = exporter.vmm_export(host, HANDLE_TYPE_POSIX_FD).unwrap();
    assert_eq!(host_rec.uuid, None);

    let mut importer = state("4g", "0");
    let i = importer.vmm_import(&rec).unwrap();
    importer.vmm_import(&host_rec).unwrap();
    assert_eq!(importer.vmm[&i].dev, Some(1), "the memory lives on the exporter's device");
    assert_eq!((importer.devices[0].used, importer.devices[1].used), (0, 0));
    let va = importer.address_reserve(GIB, 0).unwrap();
    importer.map(va, GIB, 0, i).unwrap();
    importer.vmm_release(i).unwrap();
    importer.unmap(va, GIB).unwrap();
    assert_eq!(importer.devices[1].used, 0, "dropping an imported handle uncharges nothing");
    assert!(!importer.vmm.contains_key(&i));
}

#[test]
fn peer_access_is_enabled_once_per_pair() {
    let mut st = state("4g", "0");
    let (a, b) = (st.primary_retain(0).unwrap(), st.primary_retain(1).unwrap());
    let same = st.ctx_create(0).unwrap();
    assert_eq!(st.peer_enable(a, same), Err(CUresult::ERROR_INVALID_DEVICE));
    st.peer_enable(a, b).unwrap();
    assert_eq!(st.peer_enable(a, b), Err(ERROR_PEER_ACCESS_ALREADY_ENABLED));
    st.peer_enable(b, a).unwrap();
    st.peer_disable(a, b).unwrap();
    assert_eq!(st.peer_disable(a, b), Err(ERROR_PEER_ACCESS_NOT_ENABLED));
    st.primary_release(0).unwrap();
    assert!(st.peers.is_empty(), "a context going away takes its peer access");
    assert_eq!((st.devices[0].used, st.devices[1].used), (0, 0));
}

/// Managed memory lives where it was last placed as a whole: on its device at allocation, on
/// the host (charged to no device) once advised or prefetched there, and back on a device only
/// by a prefetch that has room.
#[test]
fn managed_memory_moves_between_device_and_host() {
    let mut st = state("1g", "100m");
    let ctx = st.primary_retain(0).unwrap();
    let p = st.alloc(ctx, 0, 512 * MIB, AllocKind::Managed).unwrap();
    assert_eq!(st.devices[0].used, 612 * MIB);
    st.place_managed(p, 256 * MIB, None, false).unwrap();
    assert_eq!(st.devices[0].used, 612 * MIB, "part of an allocation: no change");
    st.place_managed(p, 512 * MIB, None, false).unwrap();
    assert_eq!(st.devices[0].used, 100 * MIB, "on the host");
    let q = st.alloc(ctx, 0, 800 * MIB, AllocKind::Linear).unwrap();
    st.place_managed(p, 512 * MIB, Some(0), false).unwrap();
    assert_eq!(st.devices[0].used, 900 * MIB, "advice without room leaves it on the host");
    assert_eq!(st.place_managed(p, 512 * MIB, Some(0), true), Err(CUresult::ERROR_OUT_OF_MEMORY));
    st.free(q).unwrap();
    st.place_managed(p, 512 * MIB, Some(0), true).unwrap();
    assert_eq!(st.devices[0].used, 612 * MIB, "prefetched back");
    let linear = st.alloc(ctx, 0, MIB, AllocKind::Linear).unwrap();
    assert_eq!(st.place_managed(linear, MIB, None, false), Err(CUresult::ERROR_INVALID_VALUE));
    st.place_managed(p, 512 * MIB, None, true).unwrap();
    st.free(p).unwrap();
    assert_eq!(st.devices[0].used, 101 * MIB, "a freed host-resident allocation uncharges nothing");
}
