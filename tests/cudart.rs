//! The real CUDA runtime (`libcudart.so` from the `nvidia-cuda-runtime` wheel, installed by
//! `.ci/run`) against the fake driver under the preload. cudart resolves every driver entry point
//! through `cuGetProcAddress_v2` (versions, and flags 2 for per-thread streams); it then stops at
//! the driver's private export tables, which the fake does not emulate — so this test covers the
//! resolution phase: every answer that is a function we hook must reach cudart as our hook.

mod common;

use std::collections::BTreeSet;

use common::Run;

const HOOKED: &str = include_str!("exports.allowlist");

/// The library under test; the test is built as ignored without one (see build.rs), so a run
/// without it reports "ignored", never "ok".
fn cudart() -> String {
    std::env::var("LIBVGPU_TEST_CUDART").unwrap_or_default()
}

/// `.ci/run` sets LIBVGPU_REQUIRE_CUDART: there a missing runtime fails instead of skipping.
#[test]
fn the_runtime_is_there_when_required() {
    if std::env::var_os("LIBVGPU_REQUIRE_CUDART").is_some() {
        assert!(!cudart().is_empty(), "LIBVGPU_REQUIRE_CUDART is set but LIBVGPU_TEST_CUDART is not (see .ci/run)");
        let built_with_cudart = cfg!(libvgpu_test_cudart);
        assert!(built_with_cudart, "LIBVGPU_TEST_CUDART was not set when the tests were built");
    }
}

#[test]
#[cfg_attr(
    not(libvgpu_test_cudart),
    ignore = "needs LIBVGPU_TEST_CUDART=<libcudart.so> at build time (pip install nvidia-cuda-runtime; .ci/run does)"
)]
fn real_cudart_receives_our_hooks_for_every_hooked_entry_point() {
    let lib = cudart();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("fakegpu.log");
    let r = Run::new("cudart_real")
        .env("LIBCUDA_LOG_LEVEL", "4")
        .env("CUDA_DEVICE_MEMORY_LIMIT", "2g")
        .env("FAKEGPU_LOG", &log)
        .args([&lib])
        .output();
    let driver_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(r.status.success(), "cudart must not crash: {:?}\n{}\n{}", r.status, r.stdout, r.stderr);
    assert!(r.stdout.starts_with("cudaDriverGetVersion 0"), "{}", r.stdout);

    // What the driver answered with a function we hook …
    let answered: Vec<&str> = driver_log
        .lines()
        .filter_map(|l| l.strip_prefix("procaddr "))
        .filter_map(|l| l.rsplit_once(" -> ").map(|(_, name)| name))
        .filter(|name| HOOKED.lines().any(|h| h == *name))
        .collect();
    // … and what we swapped, as our debug log says: `cuGetProcAddress BASE@VER flags=F -> HOOK`.
    let swaps: Vec<(&str, &str, &str)> = r
        .stderr
        .lines()
        .filter_map(|l| l.split_once("DEBUG: cuGetProcAddress ").map(|(_, rest)| rest))
        .filter_map(|rest| {
            let (req, hook) = rest.split_once(" -> ")?;
            let (base, flags) = req.split_once(' ')?;
            Some((base.split('@').next()?, flags, hook))
        })
        .collect();
    assert!(answered.len() > 20, "cudart resolved through the driver:\n{driver_log}");
    assert_eq!(swaps.len(), answered.len(), "every hooked answer was swapped:\n{}", r.stderr);

    let got: BTreeSet<(&str, &str)> = swaps.iter().map(|&(base, _, hook)| (base, hook)).collect();
    for want in [
        ("cuGetProcAddress", "cuGetProcAddress_v2"),
        ("cuMemAlloc", "cuMemAlloc_v2"),
        ("cuMemFree", "cuMemFree_v2"),
        ("cuMemGetInfo", "cuMemGetInfo_v2"),
        ("cuDeviceTotalMem", "cuDeviceTotalMem_v2"),
        ("cuMemAllocPitch", "cuMemAllocPitch_v2"),
        ("cuMemAllocManaged", "cuMemAllocManaged"),
        ("cuDevicePrimaryCtxRelease", "cuDevicePrimaryCtxRelease"),
        ("cuArrayCreate", "cuArrayCreate_v2"),
        ("cuDevicePrimaryCtxRetain", "cuDevicePrimaryCtxRetain"),
        ("cuMemAllocAsync", "cuMemAllocAsync"),
        ("cuMemAllocAsync", "cuMemAllocAsync_ptsz"),
        ("cuMemFreeAsync", "cuMemFreeAsync_ptsz"),
    ] {
        assert!(got.contains(&want), "cudart did not receive {want:?}; got {got:?}");
    }
}
