//! Caps are written per CUDA ordinal (`CUDA_DEVICE_MEMORY_LIMIT_<i>`, after
//! `CUDA_VISIBLE_DEVICES`), while NVML lists every physical GPU by physical index. The cap must
//! land on the right physical GPU in every view, for every form of `CUDA_VISIBLE_DEVICES`, and
//! whether NVML is asked before CUDA exists in the process (nvidia-smi, vLLM: libvgpu resolves
//! the list itself) or after (libvgpu asks CUDA).
//!
//! Four fake GPUs of 10, 20, 30 and 40 GiB with distinct UUIDs, so every device is recognisable.

mod common;

use common::{GIB, MIB, Run, field};

/// The fake's context costs 300 MiB (its default).
const CONTEXT: u64 = 300 * MIB;

const UUIDS: [&str; 4] = [
    "GPU-a0a0a0a0-1111-4111-8111-000000000000",
    "GPU-b1b1b1b1-2222-4222-8222-000000000001",
    "GPU-c2c2c2c2-3333-4333-8333-000000000002",
    "GPU-d3d3d3d3-4444-4444-8444-000000000003",
];

fn physical_total(p: usize) -> u64 {
    (p as u64 + 1) * 10 * GIB
}

fn run(program: &str, visible: Option<&str>, caps: &[(&str, &str)]) -> Run {
    let mut r = Run::new(program)
        .env("FAKEGPU_DEVICES", "4")
        .env("FAKEGPU_MEMORY", "10g,20g,30g,40g")
        .env("FAKEGPU_UUIDS", UUIDS.join(","));
    if let Some(v) = visible {
        r = r.env("CUDA_VISIBLE_DEVICES", v);
    }
    for (k, v) in caps {
        r = r.env(k, v);
    }
    r
}

/// (total, used, free) NVML's v2 struct reports for physical GPU `p`; checks the line is the
/// right GPU, that v1 agrees, and that nothing is reserved under a cap.
fn nvml_gpu(r: &common::Result, p: usize) -> (u64, u64, u64) {
    let prefix = format!("gpu {p} GPU-");
    let line = r.line(&prefix);
    assert_eq!(line.split_whitespace().nth(2), Some(UUIDS[p]), "{line}");
    let v2 = (field(line, "total"), field(line, "used"), field(line, "free"));
    let v1 = (field(line, "v1total"), field(line, "v1used"), field(line, "v1free"));
    assert_eq!(v1, v2, "{line}");
    assert_eq!(field(line, "reserved"), 0, "{line}");
    v2
}

struct Case {
    visible: Option<&'static str>,
    /// Physical GPU of each CUDA ordinal.
    ordinals: &'static [usize],
}

const CASES: &[Case] = &[
    Case { visible: None, ordinals: &[0, 1, 2, 3] },
    Case { visible: Some("2,0"), ordinals: &[2, 0] },
    Case { visible: Some("1,0"), ordinals: &[1, 0] },
    Case { visible: Some("3"), ordinals: &[3] },
    Case {
        visible: Some("GPU-d3d3d3d3-4444-4444-8444-000000000003,GPU-b1b1b1b1-2222-4222-8222-000000000001"),
        ordinals: &[3, 1],
    },
    Case { visible: Some("GPU-c2,gpu-B1B1"), ordinals: &[2, 1] },
    Case { visible: Some("GPU-d3d3d3d3-4444-4444-8444-000000000003,1"), ordinals: &[3, 1] },
    Case { visible: Some("2,GPU-a0a0"), ordinals: &[2, 0] },
    Case { visible: Some(" 1 , 3 "), ordinals: &[1, 3] },
];

/// Cap sets by ordinal: ordinal 0 only (1 GiB), then ordinal 0 and 1 (1 GiB, 3 GiB).
fn cap_sets(case: &Case) -> Vec<Vec<Option<u64>>> {
    let mut sets = vec![vec![Some(GIB)]];
    if case.ordinals.len() > 1 {
        sets.push(vec![Some(GIB), Some(3 * GIB)]);
    }
    sets
}

fn cap_env(caps: &[Option<u64>]) -> Vec<(String, String)> {
    caps.iter()
        .enumerate()
        .filter_map(|(i, c)| c.map(|b| (format!("CUDA_DEVICE_MEMORY_LIMIT_{i}"), format!("{}m", b / MIB))))
        .collect()
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The cap a physical GPU shows: that of the ordinal it is, if any.
fn cap_of_physical(case: &Case, caps: &[Option<u64>], p: usize) -> Option<u64> {
    let ordinal = case.ordinals.iter().position(|&q| q == p)?;
    caps.get(ordinal).copied().flatten()
}

fn describe(case: &Case, caps: &[Option<u64>]) -> String {
    format!("CUDA_VISIBLE_DEVICES={:?} caps {:?}", case.visible, caps)
}

#[test]
fn nvml_shows_each_cap_on_its_physical_gpu_before_cuda() {
    for case in CASES {
        for caps in cap_sets(case) {
            let env = cap_env(&caps);
            let r = run("nvml_smi", case.visible, &env_refs(&env)).ok();
            let what = describe(case, &caps);
            assert_eq!(r.line("count "), "count 0 n=4", "{what}");
            for p in 0..4 {
                let want = cap_of_physical(case, &caps, p).unwrap_or(physical_total(p));
                let (total, used, free) = nvml_gpu(&r, p);
                assert_eq!((total, used, free), (want, 0, want), "{what}: gpu {p}\n{}", r.stdout);
            }
        }
    }
}

#[test]
fn nvml_shows_each_cap_on_its_physical_gpu_with_cuda() {
    for case in CASES {
        for caps in cap_sets(case) {
            let env = cap_env(&caps);
            // One allocation per ordinal (at most two), sized differently to tell them apart.
            let sizes = [256 * MIB, 128 * MIB];
            let mut args = Vec::new();
            for (ordinal, size) in sizes.iter().enumerate().take(case.ordinals.len()) {
                args.extend(["--alloc".to_string(), ordinal.to_string(), size.to_string()]);
            }
            let r = run("nvml_smi", case.visible, &env_refs(&env)).args(&args).ok();
            let what = describe(case, &caps);
            for l in r.lines("cuda-alloc ") {
                assert!(l.ends_with(" 0"), "{what}: {l}");
            }
            for p in 0..4 {
                let used =
                    case.ordinals.iter().position(|&q| q == p).and_then(|o| sizes.get(o)).map_or(0, |s| s + CONTEXT);
                let total = cap_of_physical(case, &caps, p).unwrap_or(physical_total(p));
                assert_eq!(nvml_gpu(&r, p), (total, used, total - used), "{what}: gpu {p}\n{}", r.stdout);
            }
        }
    }
}

#[test]
fn cuda_views_and_enforcement_follow_the_ordinal() {
    for case in CASES {
        for caps in cap_sets(case) {
            let env = cap_env(&caps);
            let n = case.ordinals.len();
            let mut args = vec!["init".to_string(), "count".to_string()];
            for o in 0..n {
                args.extend(["totalmem".to_string(), o.to_string()]);
            }
            // On each ordinal: its primary context, the view, then 1 GiB, which only a 1 GiB
            // cap refuses (the context already holds 300 MiB of it).
            for o in 0..n {
                args.extend([
                    "device".to_string(),
                    o.to_string(),
                    "meminfo".to_string(),
                    "alloc".to_string(),
                    "1g".to_string(),
                ]);
            }
            let r = run("alloc_linked", case.visible, &env_refs(&env)).args(&args).ok();
            let what = describe(case, &caps);
            assert_eq!(r.field("count", "n"), n as u64, "{what}");
            let meminfo = r.lines("meminfo ");
            let allocs = r.lines("alloc ");
            assert_eq!((meminfo.len(), allocs.len()), (n, n), "{what}\n{}", r.stdout);
            for (o, &p) in case.ordinals.iter().enumerate() {
                let cap = caps.get(o).copied().flatten();
                let want = cap.unwrap_or(physical_total(p));
                assert_eq!(
                    r.field(&format!("totalmem {o} "), "bytes"),
                    want,
                    "{what}: totalmem {o} (physical {p})\n{}",
                    r.stdout
                );
                assert_eq!(field(meminfo[o], "total"), want, "{what}: ordinal {o}");
                let code: u32 = allocs[o].split_whitespace().nth(2).unwrap().parse().unwrap();
                let refused = cap == Some(GIB);
                assert_eq!(code, if refused { 2 } else { 0 }, "{what}: alloc 1g on ordinal {o}: {}", allocs[o]);
            }
        }
    }
}

/// The example of the brief: `2,0` with a 1 GiB cap on ordinal 0.
#[test]
fn reordered_cap_lands_on_physical_gpu_2_only() {
    let caps = [("CUDA_DEVICE_MEMORY_LIMIT_0", "1g")];
    let nvml = run("nvml_smi", Some("2,0"), &caps).ok();
    let lines: Vec<&str> = nvml.lines("gpu ").into_iter().filter(|l| l.contains("MiB / ")).collect();
    assert_eq!(
        lines,
        ["gpu 0 0MiB / 10240MiB", "gpu 1 0MiB / 20480MiB", "gpu 2 0MiB / 1024MiB", "gpu 3 0MiB / 40960MiB",]
    );
    let cuda = run("alloc_linked", Some("2,0"), &caps).args(["init", "totalmem", "0", "totalmem", "1"]).ok();
    assert_eq!(cuda.field("totalmem 0 ", "bytes"), GIB);
    assert_eq!(cuda.field("totalmem 1 ", "bytes"), 10 * GIB);
}

/// A general cap covers the visible devices; GPUs the process cannot see keep the driver's
/// numbers, before and after CUDA is initialised.
#[test]
fn general_cap_covers_the_visible_gpus_only() {
    let caps = [("CUDA_DEVICE_MEMORY_LIMIT", "2g")];
    for args in [&[][..], &["--alloc", "0", "64m"][..]] {
        let r = run("nvml_smi", Some("3,1"), &caps).args(args).ok();
        let used = if args.is_empty() { 0 } else { 64 * MIB + CONTEXT };
        assert_eq!(nvml_gpu(&r, 3), (2 * GIB, used, 2 * GIB - used), "{args:?}");
        assert_eq!(nvml_gpu(&r, 1), (2 * GIB, 0, 2 * GIB), "{args:?}");
        assert_eq!(nvml_gpu(&r, 0).0, 10 * GIB, "{args:?}");
        assert_eq!(nvml_gpu(&r, 2).0, 30 * GIB, "{args:?}");
    }
}

/// `CUDA_VISIBLE_DEVICES=""` hides every device from CUDA: nothing is a CUDA ordinal, so no
/// GPU shows a cap, with or without CUDA in the process.
#[test]
fn empty_visible_list_caps_nothing() {
    let caps = [("CUDA_DEVICE_MEMORY_LIMIT", "2g")];
    let r = run("nvml_smi", Some(""), &caps).ok();
    for p in 0..4 {
        assert_eq!(nvml_gpu(&r, p).0, physical_total(p), "{}", r.stdout);
    }
    let r = run("nvml_smi", Some(""), &caps).args(["--alloc", "0", "64m"]).ok();
    assert_eq!(r.line("cuda-alloc "), "cuda-alloc 0 67108864 100", "NO_DEVICE");
    for p in 0..4 {
        assert_eq!(nvml_gpu(&r, p).0, physical_total(p), "{}", r.stdout);
    }
}

/// CUDA ends the list at the first entry that names no device (out of range, unknown or
/// ambiguous UUID, a repeat), so the GPUs after it are not CUDA ordinals. libvgpu's own
/// resolution, used when NVML is asked before CUDA (and when cuInit fails), must agree with
/// CUDA's, or nvidia-smi shows a cap on a GPU that CUDA (and so the cap's owner) never sees.
#[test]
fn nvml_first_agrees_with_cuda_on_lists_with_an_invalid_entry() {
    let caps = [("CUDA_DEVICE_MEMORY_LIMIT", "2g")];
    let cases: [(&str, &[usize]); 4] = [("1,7,0", &[1]), ("1,GPU-ffff,0", &[1]), ("1,1,0", &[1]), ("7,0", &[])];
    for (visible, seen) in cases {
        let cuda = run("alloc_linked", Some(visible), &caps).args(["init", "count"]).ok();
        if seen.is_empty() {
            assert!(cuda.line("init ").starts_with("init 100 "), "NO_DEVICE under {visible:?}");
        } else {
            assert_eq!(cuda.field("count", "n"), seen.len() as u64, "CUDA sees {seen:?} under {visible:?}");
        }
        let before = run("nvml_smi", Some(visible), &caps).ok();
        let after = run("nvml_smi", Some(visible), &caps).args(["--alloc", "0", "0"]).ok();
        for p in 0..4 {
            let want = if seen.contains(&p) { 2 * GIB } else { physical_total(p) };
            assert_eq!(nvml_gpu(&after, p).0, want, "{visible:?} with CUDA: gpu {p}\n{}", after.stdout);
            assert_eq!(nvml_gpu(&before, p).0, want, "{visible:?} before CUDA: gpu {p}\n{}", before.stdout);
        }
    }
}

/// A different cap on each of four ordinals (1, 2, 3 and 4 GiB): every ordinal reports its
/// own and stops allocating exactly there, and NVML shows each on the physical GPU behind its
/// ordinal. Caps of ordinals the list does not create (`_2`, `_3` under `1,0`) cap nothing.
#[test]
fn four_ordinals_each_show_and_enforce_their_own_cap() {
    let caps: Vec<(String, String)> =
        (0..4).map(|o| (format!("CUDA_DEVICE_MEMORY_LIMIT_{o}"), format!("{}g", o + 1))).collect();
    let cap = |o: usize| (o as u64 + 1) * GIB;
    let reversed = [UUIDS[3], UUIDS[2], UUIDS[1], UUIDS[0]].join(",");
    let cases: [(Option<&str>, &[usize]); 4] = [
        (None, &[0, 1, 2, 3]),
        (Some("1,0"), &[1, 0]),
        (Some(&reversed), &[3, 2, 1, 0]),
        (Some("GPU-b1b1b1b1-2222-4222-8222-000000000001,GPU-a0a0a0a0"), &[1, 0]),
    ];
    for (visible, ordinals) in cases {
        let mut args = vec!["init".to_string()];
        for o in 0..ordinals.len() {
            let o = o.to_string();
            args.extend(["device", &o, "totalmem", &o, "meminfo", "alloc-until-oom", "4m"].map(String::from));
        }
        let r = run("alloc_linked", visible, &env_refs(&caps)).args(&args).ok();
        let (infos, ooms) = (r.lines("meminfo "), r.lines("alloc-until-oom "));
        assert_eq!((infos.len(), ooms.len()), (ordinals.len(), ordinals.len()), "{visible:?}\n{}", r.stdout);
        for (o, &p) in ordinals.iter().enumerate() {
            let what = format!("CUDA_VISIBLE_DEVICES={visible:?}: ordinal {o} (physical {p})");
            assert_eq!(r.field(&format!("totalmem {o} "), "bytes"), cap(o), "{what}");
            assert_eq!((field(infos[o], "total"), field(infos[o], "free")), (cap(o), cap(o) - CONTEXT), "{what}");
            assert!(ooms[o].starts_with("alloc-until-oom 4194304 2 "), "{what}: {}", ooms[o]);
            assert_eq!(field(ooms[o], "bytes"), cap(o) - CONTEXT, "{what}: the cap is enforced to the byte");
        }
        let smi = run("nvml_smi", visible, &env_refs(&caps)).ok();
        for p in 0..4 {
            let want = ordinals.iter().position(|&q| q == p).map_or(physical_total(p), cap);
            assert_eq!(nvml_gpu(&smi, p), (want, 0, want), "CUDA_VISIBLE_DEVICES={visible:?}: gpu {p}");
        }
    }
}

/// One container, two GPUs (physical 2 and 0, capped 1 GiB and 3 GiB), and a worker that a
/// launcher narrowed to the container's second GPU (`CUDA_VISIBLE_DEVICES=0` here): its ordinal
/// 0 is physical GPU 0, so it gets that GPU's 3 GiB and is charged there, whatever its own
/// `_0` says (it is told so on stderr), and nvidia-smi shows the usage on physical GPU 0.
#[test]
fn a_narrowed_worker_is_capped_and_charged_on_its_own_gpu() {
    let region = common::fresh_region_path();
    let caps = [("CUDA_DEVICE_MEMORY_LIMIT_0", "1g"), ("CUDA_DEVICE_MEMORY_LIMIT_1", "3g")];
    let in_container = |visible: &str, program: &str| {
        run(program, Some(visible), &caps).env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
    };
    // The container's first process names its devices: [physical 2, physical 0].
    in_container("2,0", "alloc_linked").args(["init", "device", "0", "meminfo", "device", "1", "meminfo"]).ok();

    let mut worker = in_container("0", "alloc_linked")
        .args(["cuinit", "totalmem", "0", "init", "meminfo", "alloc", "2g", "wait"])
        .spawn();
    // Asked before the worker has a context (torch reads totalGlobalMem first).
    assert_eq!(field(&worker.until("totalmem 0 "), "bytes"), 3 * GIB, "the container's cap of physical GPU 0");
    assert_eq!(field(&worker.until("meminfo "), "total"), 3 * GIB);
    let alloc = worker.until("alloc ");
    assert!(alloc.starts_with("alloc 2147483648 0 "), "2 GiB fit under 3 GiB: {alloc}");
    worker.until("wait ");
    let smi = in_container("2,0", "nvml_smi").ok();
    let used = 2 * GIB + CONTEXT;
    assert_eq!(nvml_gpu(&smi, 0), (3 * GIB, used, 3 * GIB - used), "{}", smi.stdout);
    assert_eq!(nvml_gpu(&smi, 2), (GIB, 0, GIB), "{}", smi.stdout);
    // Through CUDA in the container's order: ordinal 1 is physical 0 and holds the worker's usage.
    let view = in_container("2,0", "alloc_linked").args(["init", "device", "1", "meminfo"]).ok();
    assert_eq!(field(view.line("meminfo "), "free"), 3 * GIB - used - CONTEXT, "{}", view.stdout);
    worker.release();
    let out = worker.finish();
    assert!(
        out.stderr.contains("environment asks for 1024 MiB, the container's region has 3072 MiB"),
        "the worker is told its own _0 does not apply:\n{}",
        out.stderr
    );
}
