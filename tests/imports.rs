//! Memory that is not the process's own is not charged to it: another process's allocation
//! opened through CUDA IPC, VMM memory imported from a shareable handle, peer mappings, and
//! host-located `cuMemCreate` (NCCL's host buffers). The exporter goes on paying for what it
//! exported; the importer pays for its context only and keeps the rest of its cap to itself.
//!
//! Processes meet as they would on a GPU: the exporter prints its handle (IPC: 64 bytes as
//! hex; VMM: its pid and file descriptor, which the importer opens through `/proc`) and holds
//! its memory at a `wait` while the importer runs.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;

use common::{GIB, MIB, Run, field, fresh_region_path};
use vgpu_region::Region;

/// A context costs 128 MiB here (the fake's default 300 MiB would not leave a second process
/// of a 2 GiB container room beside 1.5 GiB).
const CONTEXT: u64 = 128 * MIB;
const EXPORTED: u64 = 1536 * MIB;

/// A process of the container whose region is `region`, with a 2 GiB cap on every device.
fn container(region: &Path) -> Run {
    Run::new("alloc_linked")
        .env("FAKEGPU_CONTEXT_OVERHEAD", "128m")
        .env("CUDA_DEVICE_MEMORY_LIMIT", "2g")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", region)
        .env("LIBVGPU_NODE_FILE", region.with_extension("node"))
}

/// The CUresult of a command's line, `<cmd> [args] <code> [key=value ...]`: the last word
/// before the first `key=value`.
fn code(line: &str) -> u32 {
    let words: Vec<&str> = line.split_whitespace().take_while(|w| !w.contains('=')).collect();
    words.last().and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("no code in {line:?}"))
}

fn word<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(pat.as_str()))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// What the region charges process `pid` on device `dev`.
fn charged(region: &Path, pid: u32, dev: usize) -> u64 {
    let r = Region::open_existing(region).expect("region exists");
    let n = r.shared().proc_num.load(SeqCst) as usize;
    let slot = r.shared().procs[..n].iter().find(|p| p.pid.load(SeqCst) == pid as i32);
    slot.unwrap_or_else(|| panic!("no slot for pid {pid}")).used[dev].total.load(SeqCst)
}

/// What the region charges the whole container on device 0.
fn container_total(region: &Path) -> u64 {
    Region::open_existing(region).expect("region exists").used(0)
}

/// Process A allocates 1.5 GiB, exports it and holds it; returns A and the handle.
fn ipc_exporter(region: &Path) -> (common::Spawned, String) {
    let mut a = container(region).args(["init", "alloc", "1536m", "ipc-export", "wait", "meminfo", "free-all"]).spawn();
    let export = a.until("ipc-export ");
    assert_eq!(code(&export), 0, "{export}");
    let handle = word(&export, "handle").to_string();
    assert_eq!(charged(region, a.pid(), 0), EXPORTED + CONTEXT);
    (a, handle)
}

#[test]
fn an_ipc_import_in_the_same_container_is_not_charged_to_the_importer() {
    let region = fresh_region_path();
    let (mut a, handle) = ipc_exporter(&region);
    let mut b = container(&region)
        .args(["init", "meminfo", "ipc-open", &handle, "meminfo", "wait"])
        .args(["alloc-until-oom", "8m", "ipc-close", "meminfo", "alloc-until-oom", "8m"])
        .spawn();
    // The container's room once B has its context: 2 GiB - 1.5 GiB - two contexts.
    let room = 2 * GIB - EXPORTED - 2 * CONTEXT;
    assert_eq!(field(&b.until("meminfo "), "free"), room);
    let open = b.until("ipc-open ");
    assert_eq!(code(&open), 0, "{open}");
    assert_eq!(field(&b.until("meminfo "), "free"), room, "the 1.5 GiB B opened are A's");
    assert_eq!(charged(&region, b.pid(), 0), CONTEXT, "B pays for its context only");
    assert_eq!(container_total(&region), EXPORTED + 2 * CONTEXT, "the container pays for the memory once");

    b.release();
    let b = b.finish();
    let oom = b.lines("alloc-until-oom ");
    assert_eq!(code(oom[0]), 2, "{}", oom[0]);
    assert_eq!(field(oom[0], "bytes"), room, "B can still take the container's room");
    assert_eq!(code(b.line("ipc-close")), 0);
    assert_eq!(field(b.lines("meminfo ")[2], "free"), room, "closing uncharges nothing");
    assert_eq!(field(oom[1], "bytes"), room, "nor gives anything back");
    assert_eq!(charged(&region, a.pid(), 0), EXPORTED + CONTEXT, "A still pays for what it exported");

    a.release();
    assert_eq!(code(a.finish().line("free-all")), 0);
}

/// B in a container of its own opens A's memory on its device 0 and, as a peer, on device 1:
/// neither device of B's container is charged, and B keeps its whole cap.
#[test]
fn an_ipc_import_from_another_container_leaves_the_importers_cap_whole() {
    let (region_a, region_b) = (fresh_region_path(), fresh_region_path());
    let (mut a, handle) = ipc_exporter(&region_a);
    let mut b = container(&region_b)
        .args(["init", "ipc-open", &handle, "meminfo", "alloc-until-oom", "8m"])
        .args(["device", "1", "ipc-open", &handle, "meminfo", "alloc-until-oom", "8m", "wait"])
        .args(["ipc-close", "ipc-close", "meminfo", "device", "0", "meminfo"])
        .spawn();
    b.until("wait");
    assert_eq!((charged(&region_b, b.pid(), 0), charged(&region_b, b.pid(), 1)), (CONTEXT, CONTEXT));
    assert_eq!(container_total(&region_a), EXPORTED + CONTEXT, "A's container is not charged again either");
    b.release();
    let b = b.finish();
    let own = 2 * GIB - CONTEXT;
    for open in b.lines("ipc-open") {
        assert_eq!(code(open), 0, "{open}");
    }
    let opened: Vec<&str> = b.lines("ipc-open").iter().map(|l| word(l, "ptr")).collect();
    assert_ne!(opened[0], opened[1], "each context maps the memory at its own address");
    for oom in b.lines("alloc-until-oom ") {
        assert_eq!(field(oom, "bytes"), own, "{}", b.stdout);
    }
    for close in b.lines("ipc-close") {
        assert_eq!(code(close), 0, "{close}");
    }
    for info in b.lines("meminfo ") {
        assert_eq!(field(info, "free"), own, "{}", b.stdout);
    }
    a.release();
    a.finish();
}

/// `cuMemExportToShareableHandle` (a POSIX descriptor) in A, `cuMemImportFromShareableHandle` and
/// `cuMemMap` in B, same container: the container pays for the memory once, in A.
#[test]
fn vmm_memory_imported_from_a_shareable_handle_is_not_charged_to_the_importer() {
    let region = fresh_region_path();
    let mut a = container(&region)
        .args(["init", "vmm-fd", "1536m", "0", "vmm-map", "1536m", "vmm-export", "wait", "free-all"])
        .spawn();
    let export = a.until("vmm-export ");
    assert_eq!(code(&export), 0, "{export}");
    assert_eq!(charged(&region, a.pid(), 0), EXPORTED + CONTEXT);
    let (pid, fd) = (word(&export, "pid").to_string(), word(&export, "fd").to_string());

    let mut b = container(&region)
        .args(["init", "vmm-import", &pid, &fd, "vmm-map", "1536m", "meminfo", "wait"])
        .args(["alloc-until-oom", "8m", "vmm-unmap", "release-last", "meminfo", "alloc-until-oom", "8m"])
        .spawn();
    let room = 2 * GIB - EXPORTED - 2 * CONTEXT;
    let import = b.until("vmm-import ");
    assert_eq!(code(&import), 0, "{import}");
    let map = b.until("vmm-map ");
    assert_eq!(code(&map), 0, "{map}");
    assert_eq!(field(&b.until("meminfo "), "free"), room);
    assert_eq!(charged(&region, b.pid(), 0), CONTEXT, "B pays for its context only");
    assert_eq!(container_total(&region), EXPORTED + 2 * CONTEXT);

    b.release();
    let b = b.finish();
    assert_eq!(code(b.line("vmm-unmap")), 0);
    assert_eq!(code(b.line("release-last")), 0);
    assert_eq!(field(b.lines("meminfo ")[1], "free"), room, "releasing the import gives nothing back");
    for oom in b.lines("alloc-until-oom ") {
        assert_eq!(field(oom, "bytes"), room, "{}", b.stdout);
    }
    assert_eq!(charged(&region, a.pid(), 0), EXPORTED + CONTEXT, "A still pays for its memory");
    a.release();
    assert_eq!(code(a.finish().line("free-all")), 0);
}

/// Host-located physical memory (location HOST or HOST_NUMA, as NCCL creates it) is not device
/// memory: 4 GiB of each under a 2 GiB cap, while device-located memory past the cap is refused.
#[test]
fn host_located_cumemcreate_is_not_charged_and_device_located_is() {
    let region = fresh_region_path();
    let mut p = container(&region)
        .args(["init", "vmm-host", "4g", "vmm-host-numa", "4g", "0", "meminfo", "vmm", "2g", "0"])
        .args(["vmm", "1g", "0", "meminfo", "wait", "release-last", "meminfo", "free-all"])
        .spawn();
    let own = 2 * GIB - CONTEXT;
    assert_eq!(code(&p.until("vmm-host ")), 0);
    assert_eq!(code(&p.until("vmm-host-numa ")), 0);
    assert_eq!(field(&p.until("meminfo "), "free"), own, "8 GiB of host memory cost the cap nothing");
    let refused = p.until("vmm 2147483648 ");
    assert_eq!(code(&refused), 2, "device memory past the cap: {refused}");
    let granted = p.until("vmm 1073741824 ");
    assert_eq!(code(&granted), 0, "{granted}");
    assert_eq!(field(&p.until("meminfo "), "free"), own - GIB);
    p.until("wait");
    assert_eq!(charged(&region, p.pid(), 0), CONTEXT + GIB);
    p.release();
    let r = p.finish();
    assert_eq!(code(r.line("release-last")), 0);
    assert_eq!(field(r.lines("meminfo ")[2], "free"), own);
    assert_eq!(code(r.line("free-all")), 0, "the host handles are released");
}

/// Device 0's memory mapped for device 1 (`cuMemSetAccess`) and peer access from device 1's
/// context to device 0's (`cuCtxEnablePeerAccess`) cost device 1 nothing.
#[test]
fn peer_mappings_are_not_charged_to_the_peer() {
    let region = fresh_region_path();
    let r = container(&region)
        .args(["init", "vmm", "1g", "0", "vmm-map", "1g", "device", "1", "meminfo", "vmm-access", "1"])
        .args(["peer-enable", "0", "meminfo", "alloc-until-oom", "8m", "device", "0", "meminfo", "free-all"])
        .ok();
    let own = 2 * GIB - CONTEXT;
    assert_eq!(code(r.line("vmm-map")), 0);
    assert_eq!(code(r.line("vmm-access")), 0);
    let peer = r.line("peer-enable");
    assert_eq!((code(peer), word(peer, "can")), (0, "1"), "{peer}");
    let infos = r.lines("meminfo ");
    assert_eq!(field(infos[0], "free"), own, "device 1 before the peer mapping");
    assert_eq!(field(infos[1], "free"), own, "device 1 after it");
    assert_eq!(field(r.line("alloc-until-oom"), "bytes"), own, "device 1 keeps its whole cap");
    assert_eq!(field(infos[2], "free"), own - GIB, "the memory is device 0's");
    assert_eq!(code(r.line("free-all")), 0);
}
