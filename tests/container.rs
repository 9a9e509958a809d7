//! The cap is the container's: real processes under the preload share one region file.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use common::{GIB, MIB, Run, field, fresh_region_path};
use vgpu_region::Region;

const CONTEXT: u64 = 300 * MIB;

fn in_container(region: &Path, cap: &str, args: &[&str]) -> Command {
    let a = common::artifacts();
    let mut cmd = Command::new(a.bin_dir.join("alloc_linked"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CUDA_") || k.starts_with("LIBVGPU_") || k.starts_with("FAKEGPU_") || k.starts_with("LIBCUDA_")
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env("LD_LIBRARY_PATH", &a.driver_dir)
        .env("LD_PRELOAD", &a.lib)
        .env("FAKEGPU_MEMORY", "16g")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", region)
        .env("LIBVGPU_NODE_FILE", region.with_extension("node"))
        .env("CUDA_DEVICE_MEMORY_LIMIT", cap)
        .args(args);
    cmd
}

fn region_total(region: &Path, dev: usize) -> u64 {
    // The file may not exist, or be mid-initialisation, while its first process starts.
    let Ok(r) = Region::open_existing(region) else { return 0 };
    r.used(dev)
}

/// Eight processes grab 64 MiB blocks at the same moment and hold them: what they got together
/// never exceeds the cap, and comes close to it (the protocol is not needlessly strict).
#[test]
fn eight_racing_processes_never_exceed_the_container_cap() {
    let region = fresh_region_path();
    let cap = 4 * GIB;
    let mut script = vec!["init"];
    script.extend(std::iter::repeat_n(["alloc", "64m"], 40).flatten());
    script.extend(["sleep", "400", "free-all"]);
    for round in 0..3 {
        let children: Vec<_> = (0..8)
            .map(|_| in_container(&region, "4g", &script).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap())
            .collect();
        let (mut granted, mut contexts) = (0, 0);
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            let text = String::from_utf8_lossy(&out.stdout);
            granted += text.lines().filter(|l| l.starts_with("alloc 67108864 0 ")).count() as u64 * 64 * MIB;
            // A process whose context no longer fits is refused at init (OUT_OF_MEMORY).
            contexts += text.lines().filter(|l| l.starts_with("init 0 ")).count() as u64 * CONTEXT;
        }
        assert!(granted + contexts <= cap, "round {round}: {granted} + {contexts} over {cap}");
        assert!(
            granted + contexts + CONTEXT + 8 * 64 * MIB >= cap,
            "round {round}: only {granted} granted under {cap}"
        );
    }
    // Everything was freed; the processes' contexts are released with their (dead) slots.
    Region::open_existing(&region).unwrap().reap(None);
    assert_eq!(region_total(&region, 0), 0);
}

/// kill -9 at random points of a process's life: its usage is reclaimed and the next process can
/// use the whole cap.
#[test]
fn sigkilled_processes_are_reclaimed() {
    let region = fresh_region_path();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
    for run in 0..100 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = Duration::from_micros((seed >> 33) % 40_000);
        let mut victim = in_container(&region, "2g", &["init", "alloc", "512m", "alloc", "512m", "sleep", "1000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        victim.kill().unwrap(); // SIGKILL
        victim.wait().unwrap();
        // 2 GiB cap: the checker's context + 1.5 GiB only fit if the victim's 1 GiB + context
        // were given back.
        let out = in_container(&region, "2g", &["init", "alloc", "1536m", "free-last"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("alloc 1610612736 0 "), "run {run} (killed after {delay:?}):\n{text}");
    }
}

#[test]
fn a_corrupt_region_file_degrades_to_per_process_limits() {
    for (name, content) in
        [("garbage", vec![0xA5u8; 3 << 20]), ("truncated", b"not a region".to_vec()), ("hami", vec![0u8; 2_008_953])]
    {
        let path = fresh_region_path();
        std::fs::write(&path, &content).unwrap();
        let r = Run::new("alloc_linked")
            .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &path)
            .env("CUDA_DEVICE_MEMORY_LIMIT", "2g")
            .args(["init", "alloc-until-oom", "64m", "meminfo"])
            .ok();
        let bytes = field(r.line("alloc-until-oom"), "bytes");
        assert!(bytes + CONTEXT <= 2 * GIB && bytes > GIB, "{name}: the env cap still holds: {bytes}");
        assert_eq!(r.field("meminfo", "total"), 2 * GIB, "{name}");
        let lines: Vec<&str> = r.stderr.lines().filter(|l| l.contains("region file")).collect();
        assert_eq!(lines.len(), 1, "{name}: one clear line: {}", r.stderr);
        assert!(lines[0].contains("this process only"), "{name}: {}", lines[0]);
        assert_eq!(std::fs::read(&path).unwrap(), content, "{name}: a foreign file is never written");
    }
}

#[test]
fn limits_are_live_and_usage_is_visible_to_other_processes() {
    let region = fresh_region_path();
    let started = Instant::now();
    let holder = in_container(&region, "4g", &["init", "alloc", "1g", "sleep", "1500", "free-all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the holder's gigabyte shows in the region.
    while region_total(&region, 0) < GIB + CONTEXT {
        assert!(started.elapsed() < Duration::from_secs(5), "holder never charged");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A second process (nvidia-smi's view, through NVML) sees the container's usage.
    let smi = Run::new("nvml_smi").env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region).ok();
    assert!(smi.stdout.contains("gpu 0 1324MiB / 4096MiB"), "{}", smi.stdout);
    // An operator lowers the cap below usage: existing memory stays, new allocations fail.
    Region::open_existing(&region).unwrap().shared().limit[0].store(2 * GIB, SeqCst);
    let r = in_container(&region, "4g", &["init", "alloc", "512m", "meminfo"]).output().unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains("alloc 536870912 2 "), "{text}");
    assert!(text.contains("total=2147483648"), "the view follows the live cap: {text}");
    holder.wait_with_output().unwrap();
}

/// An operator's `vgpu set` changes what the container's next allocation sees, without a restart.
#[test]
fn vgpu_set_changes_the_next_allocation() {
    let region = fresh_region_path();
    let a = common::artifacts();
    let first = in_container(&region, "4g", &["init", "alloc", "2g", "free-last", "meminfo"]).output().unwrap();
    assert!(String::from_utf8_lossy(&first.stdout).contains("alloc 2147483648 0 "));
    let set = Command::new(&a.vgpu).args(["set", "--cache"]).arg(&region).args(["--memory", "1g"]).output().unwrap();
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    assert!(
        String::from_utf8_lossy(&set.stdout).contains("4 GiB -> 1 GiB"),
        "{}",
        String::from_utf8_lossy(&set.stdout)
    );
    // The same environment (4g) no longer decides: the region's live cap does.
    let next = in_container(&region, "4g", &["init", "alloc", "1g", "meminfo"]).output().unwrap();
    let text = String::from_utf8_lossy(&next.stdout);
    assert!(text.contains("alloc 1073741824 2 "), "{text}");
    assert!(text.contains("total=1073741824"), "{text}");
    let status = Command::new(&a.vgpu).args(["status", "--json", "--cache"]).arg(&region).output().unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("\"memory_limit\": 1073741824"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

/// The context's cost is measured once per container (NVML costs every process start ~15 ms on
/// an H200): a later process charges the kept figure even where a measurement would differ.
#[test]
fn the_first_processes_context_measurement_serves_the_container() {
    let region = fresh_region_path();
    let first = in_container(&region, "4g", &["init", "meminfo"]).output().unwrap();
    let first = String::from_utf8_lossy(&first.stdout);
    let line = first.lines().find(|l| l.starts_with("meminfo")).unwrap();
    assert_eq!(field(line, "free"), 4 * GIB - CONTEXT, "{first}");
    let kept = Region::open_existing(&region).unwrap().extension().context_cost[0].load(SeqCst);
    assert_eq!(kept, CONTEXT);

    // This driver's contexts cost 500 MiB, but the container's figure stands (reconciliation,
    // which would charge the other 200 MiB as driver overhead, is off here; tests/footprint.rs).
    let later = in_container(&region, "4g", &["init", "meminfo"])
        .env("FAKEGPU_CONTEXT_OVERHEAD", "500m")
        .env("LIBVGPU_RECONCILE_MS", "off")
        .output()
        .unwrap();
    let later = String::from_utf8_lossy(&later.stdout);
    let line = later.lines().find(|l| l.starts_with("meminfo")).unwrap();
    assert_eq!(field(line, "free"), 4 * GIB - CONTEXT, "{later}");
}

/// Operators see refusals: the cap's own (`cap_denials`) apart from a driver out of memory
/// while the cap still had room (`driver_denials`).
#[test]
fn refusals_are_counted_by_whom() {
    for (cap, by_cap) in [("2g", true), ("64g", false)] {
        let region = fresh_region_path();
        let out = in_container(&region, cap, &["init", "alloc-until-oom", "256m"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("alloc-until-oom 268435456 2 "), "{cap}: {stdout}");
        let r = Region::open_existing(&region).unwrap();
        let (cap_n, driver_n) =
            (r.extension().cap_denials[0].load(SeqCst), r.extension().driver_denials[0].load(SeqCst));
        if by_cap {
            assert_eq!((cap_n, driver_n), (1, 0), "{cap}");
        } else {
            assert_eq!((cap_n, driver_n), (0, 1), "{cap}: the 16g device ran out first");
        }
    }
}

/// A container's first process charges what another container measured on the same GPU: NVML
/// is started once per node, not once per container.
#[test]
fn the_node_shares_the_context_cost_between_containers() {
    let (first, second) = (fresh_region_path(), fresh_region_path());
    let node = first.with_extension("node");
    let run = |region: &Path, overhead: &str| {
        let out = in_container(region, "4g", &["init", "meminfo"])
            .env("LIBVGPU_NODE_FILE", &node)
            .env("FAKEGPU_CONTEXT_OVERHEAD", overhead)
            // The charged figure, not what reconciliation adds to it (tests/footprint.rs).
            .env("LIBVGPU_RECONCILE_MS", "off")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        field(out.lines().find(|l| l.starts_with("meminfo")).unwrap(), "free")
    };
    assert_eq!(run(&first, "300m"), 4 * GIB - CONTEXT);
    assert_eq!(run(&second, "500m"), 4 * GIB - CONTEXT, "the node's figure, not a new measurement");
}
