//! `vgpu status`, `vgpu reap` and `vgpu status --scan` against regions built by the protocol.

mod common;

use common::*;
use vgpu_core::ledger::Kind;

#[test]
fn status_shows_caps_usage_and_processes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let r = region(&path, 2 * GIB);
    // The limiter's bucket of device 1 (30 % SM): GPU time charged, time spent throttled.
    r.extension().buckets[1].consume(1_500_000_000);
    r.extension().buckets[1].record_throttle(250_000_000);
    let a = process(&path, 100, 4242);
    a.charge(0, 512 * MIB, Kind::Context);
    assert!(a.try_charge(0, GIB, a.limit(0)));
    let b = process(&path, 200, 0);
    b.charge(1, 200 * MIB, Kind::Data);
    b.record_denial(0);
    b.record_denial(0);

    let v = json(&["status", "--json", "--cache", s(&path)]);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["path"], s(&path));
    assert_eq!(v["version"], serde_json::json!({"major": 1, "minor": 2, "extension": 1}));
    assert_eq!((v["device_num"].as_u64(), v["proc_num"].as_u64()), (Some(2), Some(2)));
    assert_eq!((v["alive_processes"].as_u64(), v["dead_slots"].as_u64()), (Some(2), Some(0)));
    let d0 = &v["devices"][0];
    assert_eq!(d0["uuid"], "GPU-aaaa");
    assert_eq!(d0["memory_limit"], 2 * GIB);
    assert_eq!(d0["used"], GIB + 512 * MIB);
    assert_eq!(d0["context"], 512 * MIB);
    assert_eq!(d0["cap_denials"], 2);
    assert_eq!(d0["sm_limit"], serde_json::Value::Null);
    let d1 = &v["devices"][1];
    assert_eq!((d1["memory_limit"].is_null(), d1["sm_limit"].as_u64()), (true, Some(30)));
    assert_eq!(d1["used"], 200 * MIB);
    assert_eq!((d1["gpu_time_ns"].as_u64(), d1["throttled_ns"].as_u64()), (Some(1_500_000_000), Some(250_000_000)));
    assert_eq!((d0["gpu_time_ns"].as_u64(), d0["throttled_ns"].as_u64()), (Some(0), Some(0)));
    assert_eq!(v["devices"].as_array().unwrap().len(), 2);

    let procs = v["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 2);
    assert_eq!(procs[0]["pid"], 100);
    assert_eq!(procs[0]["hostpid"], 4242);
    assert_eq!(procs[0]["state"], "alive");
    assert_eq!(
        procs[0]["usage"],
        serde_json::json!([{"device": 0, "total": GIB + 512 * MIB, "context": 512 * MIB, "module": 0, "data": GIB, "driver_overhead": 0, "spilled": 0}])
    );
    assert_eq!((procs[1]["slot"].as_u64(), procs[1]["hostpid"].is_null()), (Some(1), true));
    assert_eq!(procs[1]["usage"][0]["device"], 1);

    let text = ok(&["status", "--cache", s(&path)]);
    for needle in [
        "HAMi v1.2",
        "2 alive, 0 dead",
        "MEMORY CAP",
        "GPU-aaaa",
        "2 GiB",
        "1.5 GiB",
        "512 MiB",
        "unlimited",
        "30%",
        "4242",
        "dev 0: 1.5 GiB (contexts 512 MiB)",
        "dev 1: 200 MiB",
        "device 1: 1.5 s of GPU time under the SM limit, 0.25 s throttled",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // Device row 0: cap, used, contexts, driver overhead, SM, denials in that order.
    let row = text.lines().find(|l| l.starts_with("0 ") && l.contains("GPU-aaaa")).unwrap();
    let cells: Vec<&str> = row.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(cells, ["0", "GPU-aaaa", "2 GiB", "1.5 GiB", "512 MiB", "0 B", "unlimited", "2"]);
    assert!(!text.contains("device 0: 0 s of GPU time"), "no limiter line for a device it never ran on:\n{text}");
}

#[test]
fn the_default_path_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.cache");
    let _r = region(&path, GIB);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vgpu"))
        .args(["status", "--json"])
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["path"], s(&path));
}

#[test]
fn a_dead_slot_shows_as_dead_and_reap_reclaims_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let _r = region(&path, 4 * GIB);
    let live = process(&path, 100, 0);
    live.charge(0, 100 * MIB, Kind::Data);
    let dead = process(&path, 200, 0);
    dead.charge(0, 300 * MIB, Kind::Context);
    drop(dead); // the description closes: the kernel drops the slot's lock, as on kill -9

    // A child that another test of this binary forks at that moment shares the description
    // until its exec, and with it the lock: look again for a moment.
    let mut v = json(&["status", "--json", "--cache", s(&path)]);
    for _ in 0..100 {
        if v["processes"][1]["state"] == "dead" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        v = json(&["status", "--json", "--cache", s(&path)]);
    }
    assert_eq!(v["processes"][1]["state"], "dead");
    assert_eq!(v["processes"][0]["state"], "alive");
    assert_eq!(v["dead_slots"], 1);
    assert_eq!(v["devices"][0]["used"], 100 * MIB, "used counts live slots only");
    assert_eq!(v["devices"][0]["dead_used"], 300 * MIB);
    let text = ok(&["status", "--cache", s(&path)]);
    assert!(text.contains("1 alive, 1 dead"), "{text}");
    assert!(text.contains("300 MiB held by dead processes"), "{text}");

    let out = ok(&["reap", "--cache", s(&path)]);
    assert!(out.contains("reclaimed slot 1 (pid 200): 300 MiB"), "{out}");
    assert_eq!(live.used(0), 100 * MIB, "the live process's accounting sees the reclaim");
    let v = json(&["status", "--json", "--cache", s(&path)]);
    assert_eq!((v["dead_slots"].as_u64(), v["processes"].as_array().unwrap().len()), (Some(0), 1));
    assert_eq!(v["proc_num"], 2, "proc_num is a high-water mark");
    assert_eq!(ok(&["reap", "--cache", s(&path)]), "no dead slots to reclaim\n");
}

#[test]
fn scan_lists_every_region_and_skips_the_rest_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.cache");
    let _ra = region(&a, GIB);
    let _pa = process(&a, 7, 0);
    // HAMi keeps one directory per container: regions one level down are found too.
    std::fs::create_dir(dir.path().join("pod-b")).unwrap();
    let b = dir.path().join("pod-b").join("cudevshr.cache");
    let _rb = region(&b, 3 * GIB);
    std::fs::write(dir.path().join("junk.txt"), b"not a region").unwrap();
    // A shared library larger than a region (HAMi mounts libvgpu.so beside the regions).
    let mut elf = b"\x7fELF".to_vec();
    elf.resize(3 << 20, 1);
    std::fs::write(dir.path().join("libvgpu.so"), elf).unwrap();
    std::fs::create_dir_all(dir.path().join("pod-b/deeper")).unwrap();

    let v = json(&["status", "--scan", s(dir.path()), "--json"]);
    assert_eq!(v["schema_version"], 1);
    let regions = v["regions"].as_array().unwrap();
    let paths: Vec<&str> = regions.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths, [s(&a), s(&b)]);
    assert_eq!(regions[0]["processes"][0]["pid"], 7);
    assert_eq!(regions[1]["devices"][0]["memory_limit"], 3 * GIB);
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    for name in ["junk.txt", "libvgpu.so"] {
        let k = skipped.iter().find(|k| k["path"].as_str().unwrap().ends_with(name)).unwrap();
        assert_eq!(k["kind"], "not a region file", "{k}");
        assert!(k["reason"].as_str().unwrap().starts_with("not a region file"), "{k}");
    }
    assert!(skipped.iter().any(|k| k["reason"].as_str().unwrap().starts_with("directory")));

    let text = ok(&["status", "--scan", s(dir.path())]);
    assert!(text.contains("2 region(s), 3 skipped"), "{text}");
    assert!(text.contains(&format!("region {}", s(&b))), "{text}");
    assert!(text.contains("skipped 3: 2 not a region file, 1 directory (--json lists each file and why)"), "{text}");
    assert!(!text.contains("corrupt"), "{text}");
}

#[test]
fn scan_of_a_missing_directory_is_a_runtime_error() {
    let o = vgpu(&["status", "--scan", "/nonexistent/vgpu-scan"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("vgpu: cannot read directory /nonexistent/vgpu-scan"), "{}", stderr(&o));
}

#[test]
fn an_untouched_region_has_no_processes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let _r = region(&path, GIB);
    let text = ok(&["status", "--cache", s(&path)]);
    assert!(text.contains("no processes"), "{text}");
    let v = json(&["status", "--json", "--cache", s(&path)]);
    assert_eq!(v["processes"], serde_json::json!([]));
}
