//! The cap bounds the true footprint: memory the driver takes outside every hooked
//! allocation is found by reconciling with its per-process count and charged as driver overhead.
//! The fake driver grows the process's usage behind the ledger's back on every module load and
//! graph instantiation (`FAKEGPU_HIDDEN_GROWTH`) and lists the process in NVML with its true
//! usage (`FAKEGPU_NVML_PROCESSES=self`).

mod common;

use std::process::Command;

use common::{MIB, Run, field};

/// The fake's context cost (its default), which libvgpu measures through NVML.
const CONTEXT: u64 = 300 * MIB;
const GROWTH: u64 = 100 * MIB;
const CAP: u64 = 2048 * MIB;

fn growing(cmds: &[&str]) -> Run {
    Run::new("alloc_linked")
        .env("CUDA_DEVICE_MEMORY_LIMIT", "2g")
        .env("FAKEGPU_HIDDEN_GROWTH", "100m")
        .env("FAKEGPU_NVML_PROCESSES", "self")
        .args(cmds)
}

/// The CUresult a command line reports: the first bare integer after its echoed arguments.
fn code(line: &str, args: usize) -> i64 {
    line.split_whitespace().nth(1 + args).and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("no code in {line:?}"))
}

#[test]
fn growth_behind_the_ledger_is_reconciled_and_the_cap_holds() {
    let r = growing(&[
        "init",
        "alloc",
        "512m",
        "meminfo",
        "module-load",
        "module-load",
        "graph-instantiate",
        "meminfo",
        // Fits the ledger's 812 MiB, not the true footprint of 1112 MiB: refused.
        "alloc",
        "1000m",
        "alloc",
        "900m",
        "meminfo",
    ])
    .env("LIBVGPU_RECONCILE_MS", "0")
    .ok();
    let infos = r.lines("meminfo");
    assert_eq!(field(infos[0], "free"), CAP - CONTEXT - 512 * MIB, "nothing hidden yet");
    let footprint = CONTEXT + 512 * MIB + 3 * GROWTH;
    assert_eq!(field(infos[1], "free"), CAP - footprint, "free = cap - true footprint");
    let allocs = r.lines("alloc ");
    assert_eq!(code(allocs[1], 1), 2, "the cap holds against the true footprint: {}", allocs[1]);
    assert_eq!(code(allocs[2], 1), 0, "what truly fits is not refused: {}", allocs[2]);
    assert_eq!(field(infos[2], "free"), CAP - footprint - 900 * MIB);
}

/// With the default interval the view reconciles at once after growth (module loads mark it),
/// not only once the interval has passed.
#[test]
fn the_view_after_growth_is_fresh_with_the_default_interval() {
    let r = growing(&["init", "meminfo", "module-load", "module-load", "module-load", "meminfo"]).ok();
    let infos = r.lines("meminfo");
    assert_eq!(field(infos[0], "free"), CAP - CONTEXT);
    assert_eq!(field(infos[1], "free"), CAP - CONTEXT - 3 * GROWTH);
}

/// Switched off, nothing is reconciled (and NVML is never asked for processes).
#[test]
fn reconciliation_can_be_switched_off() {
    let r = growing(&["init", "module-load", "meminfo"]).env("LIBVGPU_RECONCILE_MS", "off").ok();
    assert_eq!(r.field("meminfo", "free"), CAP - CONTEXT);
}

/// Where NVML does not list the process (e.g. under a PID namespace), the estimate from the
/// driver's graph and pool figures applies; the fake keeps no cache, so it adds nothing, and
/// nothing is charged twice.
#[test]
fn without_the_process_row_nothing_is_double_charged() {
    let r = growing(&["init", "alloc", "256m", "async", "256m", "meminfo"])
        .env("FAKEGPU_NVML_PROCESSES", "none")
        .env("LIBVGPU_RECONCILE_MS", "0")
        .ok();
    assert_eq!(r.field("meminfo", "free"), CAP - CONTEXT - 512 * MIB);
}

/// `vgpu status` shows the driver overhead apart, per device and per process.
#[test]
fn status_shows_the_driver_overhead_apart() {
    let a = common::artifacts();
    let region = common::fresh_region_path();
    let mut p = growing(&["init", "module-load", "module-load", "meminfo", "wait"])
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
        .spawn();
    p.until("meminfo");
    let json = Command::new(&a.vgpu).args(["status", "--json", "--cache"]).arg(&region).output().unwrap();
    let json = String::from_utf8_lossy(&json.stdout).into_owned();
    let text = Command::new(&a.vgpu).args(["status", "--cache"]).arg(&region).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    p.release();
    p.finish();
    assert!(json.contains(&format!("\"driver_overhead\": {}", 2 * GROWTH)), "{json}");
    assert!(json.contains(&format!("\"used\": {}", CONTEXT + 2 * GROWTH)), "{json}");
    assert!(text.contains("DRIVER") && text.contains("driver 200 MiB"), "{text}");
}

/// A context that costs more than the container's kept figure (measured once, by another
/// process): the difference is found and charged as driver overhead, so the view is still the
/// cap minus the true footprint.
#[test]
fn a_context_dearer_than_the_kept_figure_is_corrected() {
    let region = common::fresh_region_path();
    let first = growing(&["init", "meminfo"]).env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region).ok();
    assert_eq!(first.field("meminfo", "free"), CAP - CONTEXT);
    let later = growing(&["init", "meminfo"])
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
        .env("FAKEGPU_CONTEXT_OVERHEAD", "500m")
        .ok();
    assert_eq!(later.field("meminfo", "free"), CAP - 500 * MIB);
}
