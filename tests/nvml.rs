//! The NVML door: what `nvidia-smi` shows under a cap. `nvml_smi` `dlopen`s NVML and `dlsym`s
//! its functions as nvidia-smi does (the `dlsym` door); `nvml_linked` is linked with
//! `-lnvidia-ml`, so its calls bind to our exports. Both must show `used / cap` on the capped
//! GPUs, the driver's numbers untouched elsewhere, and NVML's errors unchanged.

mod common;

use common::{GIB, MIB, Run, field};

/// The fake's context costs 300 MiB (its default), which libvgpu measures through NVML.
const CONTEXT: u64 = 300 * MIB;
const PHYSICAL: u64 = 16 * GIB;

/// One `gpu <i> <uuid> total=… …` line of nvml_smi / nvml_linked, plus its `MiB /` line.
#[derive(Debug, PartialEq)]
struct Gpu {
    uuid: String,
    total: u64,
    used: u64,
    free: u64,
    reserved: u64,
    v1total: u64,
    v1used: u64,
    v1free: u64,
    smi: String,
}

fn gpu(r: &common::Result, i: usize) -> Gpu {
    let prefix = format!("gpu {i} ");
    let lines = r.lines(&prefix);
    let errors: Vec<_> = lines.iter().filter(|l| l.contains(" error ")).collect();
    assert!(errors.is_empty(), "{errors:?}\n{}", r.stdout);
    let info = lines
        .iter()
        .find(|l| l.contains(" total="))
        .unwrap_or_else(|| panic!("no memory line for gpu {i}:\n{}", r.stdout));
    let smi =
        lines.iter().find(|l| l.contains("MiB / ")).unwrap_or_else(|| panic!("no MiB line for gpu {i}:\n{}", r.stdout));
    Gpu {
        uuid: info.split_whitespace().nth(2).unwrap().to_string(),
        total: field(info, "total"),
        used: field(info, "used"),
        free: field(info, "free"),
        reserved: field(info, "reserved"),
        v1total: field(info, "v1total"),
        v1used: field(info, "v1used"),
        v1free: field(info, "v1free"),
        smi: smi.to_string(),
    }
}

fn count(r: &common::Result) -> usize {
    let line = r.line("count ");
    assert!(line.starts_with("count 0 "), "{line}");
    field(line, "n") as usize
}

/// A capped GPU: total is the cap, used what this process holds, free the rest, nothing
/// reserved, and the v1 struct agrees with v2.
fn assert_capped(r: &common::Result, i: usize, cap: u64, used: u64) {
    let g = gpu(r, i);
    assert_eq!(g.total, cap, "gpu {i} total\n{}", r.stdout);
    assert_eq!(g.used, used, "gpu {i} used\n{}", r.stdout);
    assert_eq!(g.reserved, 0, "gpu {i} reserved\n{}", r.stdout);
    assert_eq!(g.total, g.used + g.free, "total = used + free\n{}", r.stdout);
    assert_eq!((g.v1total, g.v1used, g.v1free), (g.total, g.used, g.free), "v1 = v2\n{}", r.stdout);
    assert_eq!(g.smi, format!("gpu {i} {}MiB / {}MiB", used / MIB, cap / MIB));
}

/// Pids differ from run to run; everything else must be byte-identical.
fn without_pids(s: &str) -> String {
    s.lines()
        .map(|l| {
            l.split_whitespace().map(|w| if w.starts_with("pid=") { "pid=_" } else { w }).collect::<Vec<_>>().join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn smi(env: &[(&str, &str)], args: &[&str]) -> common::Result {
    let mut run = Run::new("nvml_smi").env("FAKEGPU_DEVICES", "3");
    for (k, v) in env {
        run = run.env(k, v);
    }
    run.args(args).ok()
}

#[test]
fn smi_shows_the_cap_on_every_gpu() {
    let r = smi(&[("CUDA_DEVICE_MEMORY_LIMIT", "2g")], &[]);
    assert_eq!(r.line("init "), "init 0");
    assert_eq!(count(&r), 3);
    for i in 0..3 {
        assert_capped(&r, i, 2 * GIB, 0);
        assert_eq!(gpu(&r, i).smi, format!("gpu {i} 0MiB / 2048MiB"));
    }
    assert!(r.lines("proc ").is_empty(), "no process holds memory");
}

#[test]
fn smi_counts_cuda_allocations_of_the_same_process_on_their_gpu_only() {
    let r = smi(&[("CUDA_DEVICE_MEMORY_LIMIT", "2g")], &["--alloc", "0", "1g"]);
    assert_eq!(r.line("cuda-alloc "), "cuda-alloc 0 1073741824 0");
    assert_capped(&r, 0, 2 * GIB, GIB + CONTEXT);
    assert_eq!(gpu(&r, 0).smi, "gpu 0 1324MiB / 2048MiB");
    assert_capped(&r, 1, 2 * GIB, 0);
    assert_capped(&r, 2, 2 * GIB, 0);

    // Two devices, two allocations: each shows on its own GPU.
    let r = smi(&[("CUDA_DEVICE_MEMORY_LIMIT", "2g")], &["--alloc", "0", "1g", "--alloc", "2", "512m"]);
    assert_capped(&r, 0, 2 * GIB, GIB + CONTEXT);
    assert_capped(&r, 1, 2 * GIB, 0);
    assert_capped(&r, 2, 2 * GIB, 512 * MIB + CONTEXT);
}

#[test]
fn smi_cap_above_the_physical_size_shows_the_physical_size() {
    let r = smi(&[("CUDA_DEVICE_MEMORY_LIMIT", "32g")], &["--alloc", "0", "1g"]);
    assert_capped(&r, 0, PHYSICAL, GIB + CONTEXT);
    assert_capped(&r, 1, PHYSICAL, 0);
}

#[test]
fn smi_uncapped_is_the_drivers_output() {
    for args in [&[][..], &["--alloc", "0", "1g"][..], &["--alloc", "1", "3g"][..]] {
        let plain = Run::new("nvml_smi").env("FAKEGPU_DEVICES", "3").without_preload().args(args).ok();
        for cap in [None, Some("0")] {
            let mut run = Run::new("nvml_smi").env("FAKEGPU_DEVICES", "3");
            if let Some(cap) = cap {
                run = run.env("CUDA_DEVICE_MEMORY_LIMIT", cap);
            }
            let hooked = run.args(args).ok();
            assert_eq!(without_pids(&hooked.stdout), without_pids(&plain.stdout), "{args:?} cap {cap:?}");
            assert_eq!(hooked.stderr, "", "silent when there is nothing to say");
        }
        assert_eq!(gpu(&plain, 0).total, PHYSICAL, "{}", plain.stdout);
    }
}

#[test]
fn smi_per_device_cap_shows_only_on_its_gpu() {
    let r = smi(&[("CUDA_DEVICE_MEMORY_LIMIT_1", "3g")], &[]);
    assert_eq!(gpu(&r, 0).smi, "gpu 0 0MiB / 16384MiB");
    assert_eq!(gpu(&r, 1).smi, "gpu 1 0MiB / 3072MiB");
    assert_eq!(gpu(&r, 2).smi, "gpu 2 0MiB / 16384MiB");
    assert_capped(&r, 1, 3 * GIB, 0);
    let plain = smi(&[], &[]);
    assert_eq!(gpu(&r, 0), gpu(&plain, 0), "uncapped gpu 0 untouched");
    assert_eq!(gpu(&r, 2), gpu(&plain, 2), "uncapped gpu 2 untouched");

    // With CUDA in the process, and overriding the general cap.
    let r = smi(&[("CUDA_DEVICE_MEMORY_LIMIT", "2g"), ("CUDA_DEVICE_MEMORY_LIMIT_1", "3g")], &["--alloc", "1", "1g"]);
    assert_capped(&r, 0, 2 * GIB, 0);
    assert_capped(&r, 1, 3 * GIB, GIB + CONTEXT);
    assert_capped(&r, 2, 2 * GIB, 0);
}

/// Where the driver lists this container's processes (driver 580 in a PID namespace; the fake
/// with `FAKEGPU_NVML_PROCESSES=self`), its answer is kept as it is.
#[test]
fn smi_process_list_is_the_drivers_when_it_names_the_containers_processes() {
    let r = smi(&[("CUDA_DEVICE_MEMORY_LIMIT", "2g"), ("FAKEGPU_NVML_PROCESSES", "self")], &["--alloc", "0", "1g"]);
    let procs = r.lines("proc ");
    assert_eq!(procs.len(), 1, "{}", r.stdout);
    assert!(procs[0].starts_with("proc 0 "), "{}", procs[0]);
    assert_eq!(field(procs[0], "used"), GIB + CONTEXT);
    assert_eq!(r.line("procs-size 0 "), "procs-size 0 7 n=1", "NVML's size query: INSUFFICIENT_SIZE, 1 needed");
}

/// A container's holder and, in the same container, `nvidia-smi`: the driver lists no process
/// (drivers 560/570, and the fake by default) or only host PIDs the container cannot see, so
/// the list is the region's: the holder's PID as the container sees it, with its memory, in
/// each struct version and with NVML's size protocol; graphics lists keep no unseen PID.
#[test]
fn smi_in_a_second_process_lists_the_holder_from_the_region() {
    let region = common::fresh_region_path();
    let node = region.with_extension("node");
    let mut holder = Run::new("alloc_linked")
        .env("FAKEGPU_DEVICES", "3")
        .env("CUDA_DEVICE_MEMORY_LIMIT", "4g")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
        .env("LIBVGPU_NODE_FILE", &node)
        .args(["init", "alloc", "1g", "wait"])
        .spawn();
    holder.until("wait ");
    let pid = holder.pid() as u64;
    for driver in ["none", "host"] {
        let r = smi(
            &[
                ("CUDA_DEVICE_MEMORY_LIMIT", "4g"),
                ("CUDA_DEVICE_MEMORY_SHARED_CACHE", region.to_str().unwrap()),
                ("LIBVGPU_NODE_FILE", node.to_str().unwrap()),
                ("FAKEGPU_NVML_PROCESSES", driver),
            ],
            &[],
        );
        let procs = r.lines("proc ");
        assert_eq!(procs.len(), 1, "driver lists {driver}: {}", r.stdout);
        assert!(procs[0].starts_with("proc 0 "), "on the holder's GPU only: {}", procs[0]);
        assert_eq!((field(procs[0], "pid"), field(procs[0], "used")), (pid, GIB + CONTEXT), "{}", procs[0]);
        assert_eq!((field(procs[0], "gi"), field(procs[0], "ci")), (u32::MAX as u64, u32::MAX as u64));
        assert_eq!(r.line("procs-size 0 "), "procs-size 0 7 n=1", "NVML's size query");
        assert_eq!(r.line("procs-size 1 "), "procs-size 1 0 n=0");
        let v1 = r.lines("proc1 ");
        assert_eq!(v1.len(), 1, "{}", r.stdout);
        assert_eq!((field(v1[0], "pid"), field(v1[0], "used")), (pid, GIB + CONTEXT), "the v1 layout: {}", v1[0]);
        assert!(r.lines("gproc ").is_empty(), "no graphics process, and no host PID: {}", r.stdout);
    }
    holder.release();
    holder.finish();
}

fn linked(cap: Option<&str>) -> common::Result {
    let mut run = Run::new("nvml_linked").env("FAKEGPU_DEVICES", "3");
    if let Some(cap) = cap {
        run = run.env("CUDA_DEVICE_MEMORY_LIMIT", cap);
    }
    run.ok()
}

#[test]
fn linked_program_gets_the_hooks() {
    let r = linked(Some("2g"));
    assert_eq!(count(&r), 3);
    for i in 0..3 {
        assert_capped(&r, i, 2 * GIB, 0);
    }
    let r = Run::new("nvml_linked").env("FAKEGPU_DEVICES", "3").env("CUDA_DEVICE_MEMORY_LIMIT_2", "5g").ok();
    assert_eq!(gpu(&r, 0).total, PHYSICAL);
    assert_eq!(gpu(&r, 1).total, PHYSICAL);
    assert_capped(&r, 2, 5 * GIB, 0);
}

/// Everything but the probe after the last `nvmlShutdown` (see `nvml_shutdown_is_the_applications`).
fn before_shutdown(r: &common::Result) -> String {
    r.stdout.lines().take_while(|l| !l.starts_with("shutdown ")).collect::<Vec<_>>().join("\n")
}

#[test]
fn linked_program_uncapped_is_the_drivers_output() {
    let plain = Run::new("nvml_linked").env("FAKEGPU_DEVICES", "3").without_preload().ok();
    let hooked = linked(None);
    assert_eq!(before_shutdown(&hooked), before_shutdown(&plain));
    assert_eq!(hooked.stderr, "");
}

#[test]
fn nvml_errors_pass_through_unchanged() {
    let plain = Run::new("nvml_linked").env("FAKEGPU_DEVICES", "3").without_preload().ok();
    // The fake answers as NVML does: version mismatch, invalid argument for a handle that is no
    // device and for a NULL out-pointer.
    for (probe, code) in
        [("v2-version", 25), ("v2-bad-handle", 2), ("v1-bad-handle", 2), ("v2-null", 2), ("v1-null", 2)]
    {
        let want = format!("probe {probe} {code}");
        assert_eq!(plain.line(&format!("probe {probe} ")), want);
        for cap in [None, Some("2g"), Some("64g")] {
            let r = linked(cap);
            assert_eq!(r.line(&format!("probe {probe} ")), want, "cap {cap:?}");
        }
    }
}

/// After the application's last `nvmlShutdown`, NVML answers UNINITIALIZED (1): libvgpu's own
/// NVML queries hold a reference only while they run, so the application's shutdown is final.
#[test]
fn nvml_shutdown_is_the_applications() {
    let plain = Run::new("nvml_linked").env("FAKEGPU_DEVICES", "3").without_preload().ok();
    assert_eq!(plain.line("probe after-shutdown "), "probe after-shutdown 1");
    for cap in [None, Some("2g")] {
        let r = linked(cap);
        assert_eq!(r.line("shutdown "), "shutdown 0");
        assert_eq!(r.line("probe after-shutdown "), "probe after-shutdown 1", "cap {cap:?}");
    }
}
