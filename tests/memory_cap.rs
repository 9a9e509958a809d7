//! The cap through the linked door: a C program built with `-lcuda` (its calls bind to our
//! exports) against the fake driver, for every allocation family, the views and the frees.

mod common;

use common::{GIB, MIB, Run, field};

/// The fake's context costs 300 MiB (its default), which libvgpu measures through NVML.
const CONTEXT: u64 = 300 * MIB;

fn linked(cap: &str, cmds: &[&str]) -> common::Result {
    Run::new("alloc_linked").env("CUDA_DEVICE_MEMORY_LIMIT", cap).args(cmds).ok()
}

/// The CUresult a command line reports: the first bare integer after its echoed arguments.
fn code(line: &str, args: usize) -> i64 {
    line.split_whitespace().nth(1 + args).and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("no code in {line:?}"))
}

#[test]
fn allocation_stops_at_the_cap_counting_the_context_and_recovers_after_free() {
    let r = linked("2g", &["init", "alloc-until-oom", "64m", "alloc", "1g", "free-last", "meminfo"]);
    let oom = r.line("alloc-until-oom");
    assert_eq!(code(oom, 1), 2, "CUDA_ERROR_OUT_OF_MEMORY: {oom}");
    assert_eq!(field(oom, "bytes"), (2 * GIB - CONTEXT) / (64 * MIB) * 64 * MIB);
    assert_eq!(code(r.line("alloc "), 1), 0, "allocates again after freeing");
    assert_eq!(r.field("meminfo", "total"), 2 * GIB);
    assert_eq!(r.field("meminfo", "free"), 2 * GIB - CONTEXT);
    assert!(r.stderr.contains("refused"), "a denial is logged on stderr: {}", r.stderr);
}

#[test]
fn without_a_cap_everything_is_the_drivers() {
    let plain = Run::new("alloc_linked").without_preload().args(["init", "meminfo", "totalmem", "0"]).ok();
    let hooked = Run::new("alloc_linked").args(["init", "meminfo", "totalmem", "0"]).ok();
    assert_eq!(plain.stdout.replace('x', ""), hooked.stdout.replace('x', ""));
    assert_eq!(hooked.field("totalmem", "bytes"), 16 * GIB, "never 0 when uncapped");
    assert_eq!(hooked.stderr, "", "silent when there is nothing to say");
}

#[test]
fn every_allocation_family_is_charged_and_released() {
    // Each line allocates 256 MiB-ish, checks the view, frees, checks again.
    let families: &[(&[&str], &str, u64)] = &[
        (&["alloc", "256m"], "free-last", 256 * MIB),
        (&["alloc-v1", "256m"], "free-last", 256 * MIB),
        (&["managed", "256m"], "free-last", 256 * MIB),
        (&["async", "256m"], "free-async-last", 256 * MIB),
        (&["async-ptsz", "256m"], "free-async-last", 256 * MIB),
        (&["pool-async", "256m"], "free-async-last", 256 * MIB),
        (&["vmm", "256m", "0"], "release-last", 256 * MIB),
        // Pitch: the driver's pitch (1000 B rows padded to 1024) times the height.
        (&["pitch", "1000", "262144"], "free-last", 1024 * 262144),
        (&["array", "16384", "4096"], "destroy-last", 16384 * 4096 * 4),
        (&["array3d", "256", "256", "1024"], "destroy-last", 256 * 256 * 1024 * 4),
        (&["mipmap", "8192", "8192", "2"], "destroy-last", (8192 * 8192 + 4096 * 4096) * 4),
    ];
    for (alloc, free, bytes) in families {
        let mut cmds = vec!["init", "meminfo"];
        cmds.extend_from_slice(alloc);
        cmds.extend_from_slice(&["meminfo", free, "meminfo"]);
        let r = linked("4g", &cmds);
        let frees: Vec<u64> = r.lines("meminfo").iter().map(|l| field(l, "free")).collect();
        assert_eq!(frees[0] - frees[1], *bytes, "{alloc:?} charged\n{}", r.stdout);
        assert_eq!(frees[2], frees[0], "{alloc:?} released by {free}\n{}", r.stdout);
        assert!(r.stdout.lines().all(|l| !l.contains(" -1 ")), "{}", r.stdout);
    }
}

#[test]
fn every_allocation_family_is_refused_past_the_cap() {
    let past: &[&[&str]] = &[
        &["alloc", "2g"],
        &["alloc-v1", "2g"],
        &["managed", "2g"],
        &["async", "2g"],
        &["async-ptsz", "2g"],
        &["pool-async", "2g"],
        &["vmm", "2g", "0"],
        &["pitch", "65536", "32768"],
        &["array", "32768", "32768"],
        &["array3d", "1024", "1024", "1024"],
        &["mipmap", "32768", "16384", "3"],
    ];
    for cmd in past {
        let mut cmds = vec!["init"];
        cmds.extend_from_slice(cmd);
        cmds.push("meminfo");
        let r = linked("2g", &cmds);
        let line = r.line(cmd[0]);
        assert_eq!(code(line, cmd.len() - 1), 2, "refused with OUT_OF_MEMORY: {line}");
        assert_eq!(r.field("meminfo", "free"), 2 * GIB - CONTEXT, "nothing leaked by {cmd:?}");
        // Without the preload the fake GPU (16 GiB) would have said yes.
        let mut plain = vec!["init"];
        plain.extend_from_slice(cmd);
        let p = Run::new("alloc_linked").without_preload().args(&plain).ok();
        assert_eq!(code(p.line(cmd[0]), cmd.len() - 1), 0, "{}", p.stdout);
    }
}

#[test]
fn vmm_is_charged_to_the_device_it_is_created_on_and_host_memory_is_free() {
    let r = Run::new("alloc_linked")
        .env("CUDA_DEVICE_MEMORY_LIMIT_1", "1g")
        .args([
            "init", "vmm", "2g", "0", "vmm", "512m", "1", "vmm", "768m", "1", "vmm-host", "8g", "device", "1",
            "meminfo",
        ])
        .ok();
    let vmm = r.lines("vmm ");
    assert_eq!(code(vmm[0], 2), 0, "device 0 is uncapped");
    assert_eq!(code(vmm[1], 2), 0);
    assert_eq!(code(vmm[2], 2), 2, "device 1's cap holds even when device 0 is current");
    assert_eq!(code(r.line("vmm-host"), 1), 0, "host-located VMM memory is not device memory");
    // Device 1: 512 MiB of VMM + its own context, measured when `device 1` created it.
    assert_eq!(r.field("meminfo", "free"), GIB - 512 * MIB - CONTEXT);
}

#[test]
fn contexts_are_charged_when_created_and_released_when_destroyed() {
    let r = linked(
        "4g",
        &["init", "meminfo", "ctx-create", "0", "meminfo", "alloc", "1g", "meminfo", "ctx-destroy", "init", "meminfo"],
    );
    let frees: Vec<u64> = r.lines("meminfo").iter().map(|l| field(l, "free")).collect();
    assert_eq!(frees[0], 4 * GIB - CONTEXT);
    assert_eq!(frees[1], 4 * GIB - 2 * CONTEXT, "a second context costs its own memory");
    assert_eq!(frees[2], 4 * GIB - 2 * CONTEXT - GIB);
    // Destroying the context frees its allocations with it, in the driver and in the ledger.
    assert_eq!(frees[3], 4 * GIB - CONTEXT, "{}", r.stdout);
}

#[test]
fn primary_context_release_returns_its_memory() {
    let r = linked("4g", &["init", "alloc", "1g", "primary-release", "0", "init", "meminfo"]);
    assert_eq!(r.field("meminfo", "free"), 4 * GIB - CONTEXT, "{}", r.stdout);
}

#[test]
fn fixed_context_overhead_overrides_the_measurement() {
    let r = Run::new("alloc_linked")
        .env("CUDA_DEVICE_MEMORY_LIMIT", "4g")
        .env("LIBVGPU_CONTEXT_OVERHEAD", "100m")
        // The fixed charge itself; reconciliation would add the driver's other 200 MiB as
        // driver overhead (tests/footprint.rs).
        .env("LIBVGPU_RECONCILE_MS", "off")
        .args(["init", "meminfo"])
        .ok();
    assert_eq!(r.field("meminfo", "free"), 4 * GIB - 100 * MIB);
}

#[test]
fn frees_reach_the_driver_and_return_its_code() {
    for cap in ["", "1g"] {
        let r = linked(cap, &["init", "free-bogus", "calls", "cuMemFree_v2"]);
        let plain = Run::new("alloc_linked").without_preload().args(["init", "free-bogus"]).ok();
        assert_eq!(r.line("free-bogus"), plain.line("free-bogus"), "untracked free: the driver's answer");
        assert_eq!(r.field("calls", "n"), 1, "the free reached the driver");
    }
}

#[test]
fn driver_errors_pass_through_the_views() {
    let r = linked("1g", &["meminfo-null", "init", "meminfo-null", "totalmem", "7"]);
    let plain =
        Run::new("alloc_linked").without_preload().args(["meminfo-null", "init", "meminfo-null", "totalmem", "7"]).ok();
    assert_eq!(r.stdout, plain.stdout);
    assert_ne!(code(r.lines("meminfo-null")[1], 0), 0, "NULL out-pointers are the driver's error");
}

#[test]
fn a_cap_above_the_device_shows_the_device() {
    let r = linked("64g", &["init", "meminfo", "totalmem", "0"]);
    assert_eq!(r.field("meminfo", "total"), 16 * GIB);
    assert_eq!(r.field("totalmem", "bytes"), 16 * GIB);
}

#[test]
fn per_device_caps_land_on_their_ordinal() {
    let r = Run::new("alloc_linked")
        .env("CUDA_DEVICE_MEMORY_LIMIT", "8g")
        .env("CUDA_DEVICE_MEMORY_LIMIT_1", "3g")
        .args(["init", "totalmem", "0", "totalmem", "1"])
        .ok();
    let totals: Vec<u64> = r.lines("totalmem").iter().map(|l| field(l, "bytes")).collect();
    assert_eq!(totals, vec![8 * GIB, 3 * GIB]);
}

#[test]
fn malformed_limits_are_reported_and_not_applied() {
    let r = linked("2 gigs", &["init", "meminfo"]);
    assert_eq!(r.field("meminfo", "total"), 16 * GIB, "not applied");
    let err: Vec<&str> = r.stderr.lines().filter(|l| l.contains("CUDA_DEVICE_MEMORY_LIMIT")).collect();
    assert_eq!(err.len(), 1, "{}", r.stderr);
    assert!(
        err[0].contains("\"2 gigs\"") && err[0].contains("accepted") && err[0].contains("NOT applied"),
        "{}",
        err[0]
    );
    assert!(!r.stdout.contains("libvgpu"), "nothing of ours on stdout");
}
