//! Host-memory oversubscription (`CUDA_OVERSUBSCRIBE=true`), end to end under LD_PRELOAD with the
//! fake driver: past the cap, `cuMemAlloc_v2`, `cuMemAllocAsync` and `cuMemAllocFromPoolAsync`
//! spill to host-preferred managed memory; the view keeps the cap as total; the device's own
//! count (what NVML sees from outside) never passes the cap; the spill counter in the region is
//! right and returns to 0 after the frees; without the variable nothing changes.

mod common;

use common::{GIB, MIB, Run, artifacts, field, fresh_region_path};
use std::process::Command;

/// The fake's context costs 300 MiB, charged under the cap.
const CONTEXT: u64 = 300 * MIB;
const BLOCK: u64 = 64 * MIB;
const BLOCKS: usize = 32; // 2 GiB

/// `init`, `BLOCKS` × `alloc_cmd 64m`, views, then the frees and views again.
fn two_gib(alloc_cmd: &str, free_cmd: &str, env: &[(&str, &str)]) -> common::Result {
    let mut args = vec!["init"];
    args.extend(std::iter::repeat_n([alloc_cmd, "64m"], BLOCKS).flatten());
    args.extend(["meminfo", "physical", "0"]);
    args.extend(std::iter::repeat_n(free_cmd, BLOCKS));
    args.extend(["meminfo", "physical", "0"]);
    let mut run = Run::new("alloc_linked").env("CUDA_DEVICE_MEMORY_LIMIT", "1g");
    for (k, v) in env {
        run = run.env(k, v);
    }
    run.args(args).ok()
}

/// The CUresult a command line reports: the first bare integer after its `args` echoed arguments.
fn code_after(line: &str, args: usize) -> i64 {
    line.split_whitespace().nth(1 + args).and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("no code in {line:?}"))
}

/// For the one-argument allocation commands.
fn code(line: &str) -> i64 {
    code_after(line, 1)
}

/// Room kept under the 1 GiB cap for the driver's own growth while spilling
/// (`vgpu_core::ledger::spill_headroom`).
const HEADROOM: u64 = 64 << 20;

/// Blocks that fit under the cap (less the headroom) beside the context, and the rest, spilled.
fn expected_split() -> (u64, u64) {
    let on_device = (GIB - HEADROOM - CONTEXT) / BLOCK;
    (on_device * BLOCK, (BLOCKS as u64 - on_device) * BLOCK)
}

#[test]
fn two_gib_under_a_one_gib_cap_spill_and_come_back_on_every_spillable_path() {
    let (device_bytes, _) = expected_split();
    for (alloc, free) in [("alloc", "free-last"), ("async", "free-async-last"), ("pool-async", "free-async-last")] {
        let r = two_gib(alloc, free, &[("CUDA_OVERSUBSCRIBE", "true")]);
        let allocs = r.lines(&format!("{alloc} "));
        assert_eq!(allocs.len(), BLOCKS, "{}", r.stdout);
        assert!(allocs.iter().all(|l| code(l) == 0), "every block succeeds on {alloc}:\n{}", r.stdout);
        let infos = r.lines("meminfo");
        assert_eq!(field(infos[0], "total"), GIB, "the cap stays the total while spilling ({alloc})");
        assert_eq!(field(infos[0], "free"), GIB - CONTEXT - device_bytes, "free: what is left under the cap ({alloc})");
        let physical = r.lines("physical");
        assert_eq!(
            field(physical[0], "used"),
            CONTEXT + device_bytes,
            "the device holds no more than the cap ({alloc})"
        );
        assert!(r.lines(free).iter().all(|l| code_after(l, 0) == 0), "{}", r.stdout);
        assert_eq!(field(infos[1], "free"), GIB - CONTEXT, "{alloc}: everything returned");
        assert_eq!(field(physical[1], "used"), CONTEXT);
        let said: Vec<&str> = r.stderr.lines().filter(|l| l.contains("spills allocations to host memory")).collect();
        assert_eq!(said.len(), 1, "one line when the process starts spilling:\n{}", r.stderr);
        assert!(!r.stderr.contains("refused"), "{}", r.stderr);
    }
}

#[test]
fn without_the_variable_allocation_stops_at_the_cap() {
    for env in [&[][..], &[("CUDA_OVERSUBSCRIBE", "false")][..], &[("CUDA_OVERSUBSCRIBE", "0")][..]] {
        let r = two_gib("alloc", "free-last", env);
        let ok = r.lines("alloc ").iter().filter(|l| code(l) == 0).count() as u64;
        assert_eq!(ok, (GIB - CONTEXT) / BLOCK, "{env:?}\n{}", r.stdout);
        assert!(r.stderr.contains("refused"), "{}", r.stderr);
        assert!(!r.stderr.contains("spill"), "{}", r.stderr);
    }
}

#[test]
fn a_bad_value_is_said_and_leaves_the_cap_hard() {
    let r = two_gib("alloc", "free-last", &[("CUDA_OVERSUBSCRIBE", "yes")]);
    let ok = r.lines("alloc ").iter().filter(|l| code(l) == 0).count() as u64;
    assert_eq!(ok, (GIB - CONTEXT) / BLOCK);
    assert!(r.stderr.contains("CUDA_OVERSUBSCRIBE=\"yes\" is invalid"), "{}", r.stderr);
}

#[test]
fn the_spill_limit_bounds_the_spill_with_a_clear_out_of_memory() {
    let r = two_gib("alloc", "free-last", &[("CUDA_OVERSUBSCRIBE", "1"), ("LIBVGPU_SPILL_LIMIT", "512m")]);
    let ok = r.lines("alloc ").iter().filter(|l| code(l) == 0).count() as u64;
    assert_eq!(ok, (GIB - HEADROOM - CONTEXT) / BLOCK + 8, "the cap's blocks plus 512 MiB spilled\n{}", r.stdout);
    assert!(r.lines("alloc ").iter().any(|l| code(l) == 2), "CUDA_ERROR_OUT_OF_MEMORY past it");
    assert!(r.stderr.contains("512 MiB spill limit (LIBVGPU_SPILL_LIMIT)"), "{}", r.stderr);
}

/// Paths that cannot spill keep the hard cap: the pre-3.2 32-bit `cuMemAlloc`, pitched and
/// managed allocations of the application's own, VMM (`cuMemCreate`), arrays. A spilled pointer
/// is not IPC-exportable (managed memory): the driver says so.
#[test]
fn paths_that_cannot_spill_keep_the_hard_cap() {
    let over: &[&[&str]] = &[
        &["alloc-v1", "2g"],
        &["pitch", "65536", "32768"],
        &["managed", "2g"],
        &["vmm", "2g", "0"],
        &["array", "32768", "16384"],
    ];
    for cmd in over {
        let mut args = vec!["init"];
        args.extend_from_slice(cmd);
        let r = Run::new("alloc_linked")
            .env("CUDA_DEVICE_MEMORY_LIMIT", "1g")
            .env("CUDA_OVERSUBSCRIBE", "true")
            .args(args)
            .ok();
        let line = r.line(&format!("{} ", cmd[0]));
        assert_eq!(code_after(line, cmd.len() - 1), 2, "{cmd:?} refused at the cap:\n{}", r.stdout);
    }
    let r = Run::new("alloc_linked")
        .env("CUDA_DEVICE_MEMORY_LIMIT", "1g")
        .env("CUDA_OVERSUBSCRIBE", "true")
        .args(["init", "alloc", "1g", "ipc-export"])
        .ok();
    assert_eq!(code(r.line("alloc ")), 0);
    assert_ne!(code_after(r.line("ipc-export"), 0), 0, "a spilled pointer cannot be exported:\n{}", r.stdout);
}

/// The spill counter lives in the region's extension, per slot: `vgpu status` shows it (text
/// and JSON) while the process holds it, and 0 once it has freed.
#[test]
fn the_spill_counter_is_in_the_region_and_shown_by_vgpu_status() {
    let region = fresh_region_path();
    let mut args = vec!["init"];
    args.extend(std::iter::repeat_n(["alloc", "64m"], BLOCKS).flatten());
    args.push("wait");
    args.extend(std::iter::repeat_n("free-last", BLOCKS));
    args.push("wait");
    let mut p = Run::new("alloc_linked")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
        .env("CUDA_DEVICE_MEMORY_LIMIT", "1g")
        .env("CUDA_OVERSUBSCRIBE", "true")
        .args(args)
        .spawn();
    let status = |json: bool| {
        let mut cmd = Command::new(&artifacts().vgpu);
        cmd.arg("status");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.arg("--cache").arg(&region).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let (_, spilled) = expected_split();
    p.until("wait 0");
    let json = status(true);
    assert!(json.contains(&format!("\"spilled\": {spilled}")), "{json}");
    assert!(json.contains(&format!("\"spill_limit\": {}", 2 * GIB)), "{json}");
    assert!(json.contains("\"cap_denials\": 0"), "a spill is not a cap denial: {json}");
    let text = status(false);
    assert!(text.contains("spilled"), "{text}");
    p.release();
    p.until("wait 0");
    assert!(status(true).contains("\"spilled\": 0"), "back to 0 after the frees");
    p.release();
    p.finish();
}

/// Through the runtime's door (every entry point from `cuGetProcAddress_v2`, as PyTorch's
/// cudart resolves `cuMemAlloc_v2`), the same spill.
#[test]
fn the_spill_works_through_cu_get_proc_address() {
    let mut args = vec!["init"];
    args.extend(std::iter::repeat_n(["alloc", "64m"], BLOCKS).flatten());
    args.extend(["meminfo", "physical", "0", "free-all", "meminfo"]);
    let r =
        Run::new("cudart_like").env("CUDA_DEVICE_MEMORY_LIMIT", "1g").env("CUDA_OVERSUBSCRIBE", "true").args(args).ok();
    assert!(r.lines("alloc ").iter().all(|l| code(l) == 0), "{}", r.stdout);
    let (device_bytes, _) = expected_split();
    assert_eq!(r.field("physical", "used"), CONTEXT + device_bytes);
    let infos = r.lines("meminfo");
    assert_eq!(field(infos[0], "total"), GIB);
    assert_eq!(field(infos[1], "free"), GIB - CONTEXT, "{}", r.stdout);
}
