//! The compute limiter on the fake driver's simulated GPU timeline: achieved share = GPU time /
//! wall time of a job that always has work, against `CUDA_DEVICE_SM_LIMIT`.

mod common;

use std::process::{Command, Stdio};

use common::{Run, fresh_region_path};

/// The tests of this file run one at a time: the shares they measure are wall-clock ratios, and
/// a 2-core CI machine running them together would measure its own load.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn share(line: &str) -> f64 {
    let v = line.split_whitespace().find_map(|w| w.strip_prefix("share=")).expect("share=");
    v.parse().unwrap()
}

/// Runs `kernels` with `args` under limit `pct`; about `gpu_ms` of GPU work.
fn run(pct: u32, args: &[String]) -> f64 {
    let r = Run::new("kernels")
        .env("CUDA_DEVICE_SM_LIMIT", pct.to_string())
        .env("FAKEGPU_QUEUE_DEPTH", "16")
        .args(args)
        .ok();
    share(r.line("launches="))
}

fn args(us: u64, gpu_ms: u64, extra: &[&str]) -> Vec<String> {
    let n = gpu_ms * 1000 / us;
    let mut a = vec!["--us".to_string(), us.to_string(), "--n".to_string(), n.to_string()];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn single_process_shares_hold_for_every_limit_and_kernel_length() {
    let _serial = serial();
    // One kernel length at a time. 20 us kernels are host-bound (each job needs a core), so
    // they run one after another; longer kernels leave the CPU idle and run side by side.
    let mut results = Vec::new();
    for us in [20u64, 500, 5000] {
        // The job's unlimited share on this machine (host-bound for short kernels) is the
        // reference: the target is a fraction of the unlimited throughput.
        let job = move |pct: u32| {
            // Long kernels need longer runs: the last queued work is never paid back.
            let gpu_ms = if us >= 5000 { 3000 } else { 1500 };
            (pct, us, run(pct, &args(us, gpu_ms, &[])))
        };
        let limits = [0u32, 10, 25, 50, 75, 90];
        let mut batch: Vec<(u32, u64, f64)> = if us < 100 {
            limits.into_iter().map(job).collect()
        } else {
            let handles: Vec<_> = limits.into_iter().map(|p| std::thread::spawn(move || job(p))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        };
        let unlimited = batch.remove(0).2;
        results.extend(batch.into_iter().map(|(pct, us, got)| (pct, us, got / unlimited)));
    }
    let mut report = String::new();
    let (mut short, mut long) = (Vec::new(), Vec::new());
    for (pct, us, got) in results {
        let err = (got * 100.0 - pct as f64).abs();
        report += &format!("limit {pct:>2}% kernel {us:>4} us: {:.2}% of unlimited (error {err:.2})\n", got * 100.0);
        if us < 5000 { short.push(err) } else { long.push(err) }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "{report}20/500 us: mean {:.2}, max {:.2}; 5 ms: mean {:.2}, max {:.2}",
        mean(&short),
        max(&short),
        mean(&long),
        max(&long)
    );
    assert!(mean(&short) <= 2.0 && max(&short) <= 5.0, "short kernels off target\n{report}");
    assert!(mean(&long) <= 2.0 && max(&long) <= 5.0, "5 ms kernels off target\n{report}");
}

#[test]
fn every_launch_path_is_gated_and_capture_is_untouched() {
    let _serial = serial();
    for extra in [
        &["--launch", "ex"][..],
        &["--launch", "coop"][..],
        &["--ptsz", "--stream", "per-thread"][..],
        &["--launch", "ex", "--ptsz", "--stream", "per-thread"][..],
        // Graphs: launches are captured (never gated nor given an event), then replayed (gated).
        &["--graph", "10"][..],
        &["--graph", "10", "--ptsz"][..],
    ] {
        let got = run(50, &args(500, 1500, extra)) * 100.0;
        assert!((got - 50.0).abs() <= 5.0, "{extra:?}: {got:.2}%");
    }
}

#[test]
fn unlimited_is_untouched() {
    let _serial = serial();
    let got = run(0, &args(500, 500, &[])) * 100.0;
    assert!(got > 97.0, "{got:.2}%");
    let got = run(100, &args(500, 500, &[])) * 100.0;
    assert!(got > 97.0, "{got:.2}%");
}

/// A wait ends the charged interval: the host time after it is not GPU time. A job that waits
/// for each 100 µs kernel and then works 900 µs on the host keeps the GPU ~10 % busy and runs
/// unthrottled under a 30 % limit; jobs that wait after every kernel but give the GPU no rest
/// still get 30 % of its time.
#[test]
fn waits_end_the_charged_interval() {
    let _serial = serial();
    let sparse = |pct| run(pct, &args(100, 100, &["--sync-every", "1", "--pause-us", "900"]));
    let (free, limited) = (sparse(0), sparse(30));
    assert!(free < 0.2, "the sparse job keeps the GPU {:.1} % busy", free * 100.0);
    assert!(
        limited >= free * 0.9,
        "a job using {:.1} % of the GPU was throttled to {:.1} %",
        free * 100.0,
        limited * 100.0
    );
    for us in [100, 2000] {
        let got = run(30, &args(us, 1500, &["--sync-every", "1"])) * 100.0;
        assert!((got - 30.0).abs() <= 5.0, "{us} µs kernels, a wait after each: {got:.2} % of the GPU");
    }
}

/// Three processes of one container share one budget (one region) on one simulated GPU.
#[test]
fn a_containers_processes_share_one_budget() {
    let _serial = serial();
    let region = fresh_region_path();
    let (timeline, node) = (region.with_extension("timeline"), region.with_extension("node"));
    let start = std::time::SystemTime::now();
    let children: Vec<_> = (0..3)
        .map(|_| {
            container(&region, &timeline, &node)
                .env("CUDA_DEVICE_SM_LIMIT", "30")
                .args(args(500, 800, &[]))
                .spawn()
                .unwrap()
        })
        .collect();
    let gpu_ms: f64 = children.into_iter().map(|c| summary(&c.wait_with_output().unwrap()).0).sum();
    let wall_ms = start.elapsed().unwrap().as_secs_f64() * 1000.0;
    let got = gpu_ms / wall_ms * 100.0;
    for f in [&timeline, &node] {
        let _ = std::fs::remove_file(f);
    }
    assert!((got - 30.0).abs() <= 5.0, "container share {got:.2}% (gpu {gpu_ms:.0} ms over {wall_ms:.0} ms)");
}

/// `kernels`' summary line as (gpu_ms, start_ns, end_ns).
fn summary(out: &std::process::Output) -> (f64, u64, u64) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("launches=")).unwrap().to_string();
    let get = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap().to_string();
    (get("gpu_ms=").parse().unwrap(), get("start_ns=").parse().unwrap(), get("end_ns=").parse().unwrap())
}

/// A container of its own (region) on the shared simulated GPU (`timeline`), meeting the others
/// in the node table `node`.
fn container(region: &std::path::Path, timeline: &std::path::Path, node: &std::path::Path) -> Command {
    let a = common::artifacts();
    let mut cmd = Command::new(a.bin_dir.join("kernels"));
    cmd.env("LD_LIBRARY_PATH", &a.driver_dir)
        .env("LD_PRELOAD", &a.lib)
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", region)
        .env("FAKEGPU_TIMELINE", timeline)
        .env("FAKEGPU_QUEUE_DEPTH", "16")
        .env("LIBVGPU_NODE_FILE", node)
        .stdout(Stdio::piped());
    cmd
}

/// Two limited containers on one GPU each get their share: a kernel that waited for the other
/// container's is not charged that wait (without the node table: 30 % + 60 % gave 22 % + 51 %).
#[test]
fn two_containers_on_one_gpu_each_get_their_share() {
    let _serial = serial();
    let base = fresh_region_path();
    let (timeline, node) = (base.with_extension("timeline"), base.with_extension("node"));
    let runs: Vec<_> = [(30u32, 900u64), (60, 1800)]
        .into_iter()
        .map(|(pct, gpu_ms)| {
            let region = base.with_extension(format!("{pct}.cache"));
            let child = container(&region, &timeline, &node)
                .env("CUDA_DEVICE_SM_LIMIT", pct.to_string())
                .args(args(500, gpu_ms, &[]))
                .spawn()
                .unwrap();
            (pct, region, child)
        })
        .collect();
    let mut report = String::new();
    let mut got = Vec::new();
    for (pct, region, child) in runs {
        let (gpu_ms, start, end) = summary(&child.wait_with_output().unwrap());
        let share = gpu_ms * 1e6 / (end - start) as f64 * 100.0;
        report += &format!("limit {pct}%: {share:.1}%\n");
        got.push((pct, share));
        let _ = std::fs::remove_file(region);
    }
    for f in [&timeline, &node] {
        let _ = std::fs::remove_file(f);
    }
    eprintln!("{report}");
    for (pct, share) in got {
        assert!((share - pct as f64).abs() <= 5.0, "{report}");
    }
}

/// A low-priority container yields the GPU while a high-priority one on it is active, then
/// takes it again.
#[test]
fn a_low_priority_container_yields_to_a_high_priority_one() {
    let _serial = serial();
    let base = fresh_region_path();
    let (timeline, node) = (base.with_extension("timeline"), base.with_extension("node"));
    let low_region = base.with_extension("low.cache");
    let high_region = base.with_extension("high.cache");
    // The low-priority job starts first and has the GPU to itself for a while.
    let low = container(&low_region, &timeline, &node)
        .env("CUDA_TASK_PRIORITY", "1")
        .args(args(500, 1500, &[]))
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let high = container(&high_region, &timeline, &node)
        .env("CUDA_TASK_PRIORITY", "0")
        .args(args(500, 600, &[]))
        .spawn()
        .unwrap();
    let (high_gpu, high_start, high_end) = summary(&high.wait_with_output().unwrap());
    let (low_gpu, low_start, low_end) = summary(&low.wait_with_output().unwrap());
    for f in [&timeline, &node, &low_region, &high_region] {
        let _ = std::fs::remove_file(f);
    }
    let high_share = high_gpu * 1e6 / (high_end - high_start) as f64;
    eprintln!(
        "high: {high_gpu:.0} ms of GPU in {:.0} ms ({:.1}%); low: {low_gpu:.0} ms in {:.0} ms",
        (high_end - high_start) as f64 / 1e6,
        high_share * 100.0,
        (low_end - low_start) as f64 / 1e6
    );
    // Sharing in submission order would give the high-priority job about half the GPU.
    assert!(high_share >= 0.85, "high-priority share {:.1}%", high_share * 100.0);
    assert!(low_end > high_end, "the low-priority job finishes after the high-priority one");
}
