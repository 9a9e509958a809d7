//! End to end: the C job `tests/c/kernels.c` on the fake driver's simulated GPU, as separate
//! processes. Two busy processes sharing one `FAKEGPU_TIMELINE` must split the device (each
//! gets about half, its wall time doubles); with private timelines each has a whole device.
//!
//! The jobs do not synchronise while they run: they are paced by the stream's queue
//! (`FAKEGPU_QUEUE_DEPTH=16`, as a real command queue paces a launch loop), so a host thread
//! woken late still finds work queued and the device stays busy. A job that synchronises
//! every few launches idles the device for every late wake-up, and on a loaded two-core CI
//! machine those reach milliseconds: its share measures the CI machine, not the fake.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

struct Tools {
    driver: PathBuf,
    kernels: PathBuf,
    dir: PathBuf,
}

fn check(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    out
}

/// The fake driver directory and the compiled job, once per test binary. Cargo does not build
/// a cdylib for its own crate's integration tests, so build it here; it lands in
/// `target/<profile>`, two levels above this binary (`target/<profile>/deps/…`).
fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let exe = std::env::current_exe().unwrap();
        let profile = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let mut build = Command::new(env!("CARGO"));
        build.current_dir(&repo).args(["build", "-p", "fakegpu"]);
        if profile.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        check(&mut build);
        let dir = profile.join("fakegpu-e2e");
        let driver = dir.join("driver");
        check(Command::new("sh").arg(repo.join("crates/fakegpu/make-driver-dir.sh")).arg(&profile).arg(&driver));
        let kernels = dir.join("kernels");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        check(
            Command::new(cc)
                .args(["-O1", "-Wall", "-Werror", "-I"])
                .arg(repo.join("cuda-headers"))
                .arg("-o")
                .arg(&kernels)
                .arg(repo.join("tests/c/kernels.c"))
                .arg("-ldl"),
        );
        Tools { driver, kernels, dir }
    })
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The job, with a clean fake-driver environment (nothing inherited from the test's own).
fn job(args: &[&str], timeline: Option<&Path>) -> Command {
    let t = tools();
    let mut cmd = Command::new(&t.kernels);
    cmd.args(args).env("LD_LIBRARY_PATH", &t.driver).env_remove("LD_PRELOAD").env_remove("CUDA_VISIBLE_DEVICES");
    cmd.env("FAKEGPU_QUEUE_DEPTH", "16");
    for var in ["FAKEGPU_DEVICES", "FAKEGPU_UUIDS", "FAKEGPU_KERNEL_US", "FAKEGPU_LOG"] {
        cmd.env_remove(var);
    }
    match timeline {
        Some(p) => cmd.env("FAKEGPU_TIMELINE", p),
        None => cmd.env_remove("FAKEGPU_TIMELINE"),
    };
    cmd
}

#[derive(Debug)]
struct Report {
    kernels: u64,
    wall_ms: f64,
    gpu_ms: f64,
    share: f64,
    event_ms: f64,
    start_ns: f64,
    end_ns: f64,
}

fn report(out: &Output) -> Report {
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| -> f64 {
        let v = text.split_whitespace().find_map(|w| w.strip_prefix(k).and_then(|r| r.strip_prefix('=')));
        v.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {k} in {text:?}"))
    };
    Report {
        kernels: field("kernels") as u64,
        wall_ms: field("wall_ms"),
        gpu_ms: field("gpu_ms"),
        share: field("share"),
        event_ms: field("event_ms"),
        start_ns: field("start_ns"),
        end_ns: field("end_ns"),
    }
}

/// Runs `jobs` concurrently, all starting at the same instant.
fn together(jobs: Vec<Command>) -> Vec<Report> {
    let start = (now_ns() + 300_000_000).to_string();
    let children: Vec<_> = jobs
        .into_iter()
        .map(|mut c| c.args(["--start-at", &start]).stdout(std::process::Stdio::piped()).spawn().unwrap())
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{out:?}");
            report(&out)
        })
        .collect()
}

/// A timeline path no other test uses, in a directory that goes with the returned `TempDir`.
fn fresh_timeline() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(&tools().dir).unwrap();
    let path = dir.path().join("timeline");
    (dir, path)
}

const BUSY: &[&str] = &["--us", "1000", "--n", "300"];

#[test]
fn one_process_keeps_the_gpu_busy() {
    let r = report(&check(&mut job(&["--us", "1000", "--n", "200"], None)));
    assert_eq!((r.kernels, r.gpu_ms), (200, 200.0));
    assert!(r.share > 0.85 && r.share <= 1.001, "{r:?}");
    assert!(r.event_ms >= r.gpu_ms - 0.01 && r.event_ms <= r.wall_ms, "events span the GPU work: {r:?}");
}

#[test]
fn two_processes_on_one_timeline_get_half_each() {
    let (_dir, tl) = fresh_timeline();
    let rs = together(vec![job(BUSY, Some(&tl)), job(BUSY, Some(&tl))]);
    for r in &rs {
        assert!((0.4..=0.6).contains(&r.share), "{rs:?}");
        assert!(r.wall_ms > 1.6 * r.gpu_ms, "wall time doubles: {rs:?}");
    }
    // One device cannot have done more work than the time both runs took together.
    let span_ms = (rs[0].end_ns.max(rs[1].end_ns) - rs[0].start_ns.min(rs[1].start_ns)) / 1e6;
    assert!(rs[0].gpu_ms + rs[1].gpu_ms <= span_ms + 0.01, "{rs:?}");
}

#[test]
fn private_timelines_do_not_meet() {
    let rs = together(vec![job(BUSY, None), job(BUSY, None)]);
    for r in &rs {
        assert!(r.share > 0.85, "{rs:?}");
    }
}

#[test]
fn different_devices_of_one_timeline_do_not_meet() {
    let (_dir, tl) = fresh_timeline();
    let mut second = job(BUSY, Some(&tl));
    second.args(["--device", "1"]);
    let rs = together(vec![job(BUSY, Some(&tl)), second]);
    for r in &rs {
        assert!(r.share > 0.85, "{rs:?}");
    }
}

#[test]
fn graphs_and_every_launch_flavour() {
    let graph = report(&check(&mut job(&["--us", "1000", "--n", "20", "--graph", "10"], None)));
    assert_eq!(graph.kernels, 200);
    assert!(graph.share > 0.85, "{graph:?}");
    let flavours: &[&[&str]] = &[
        &["--launch", "ex"],
        &["--launch", "coop", "--stream", "legacy"],
        &["--launch", "ex", "--ptsz", "--stream", "per-thread"],
        &["--launch", "coop", "--ptsz", "--dlsym"],
        &["--ptsz", "--dlsym", "--graph", "4", "--n", "10"],
    ];
    for extra in flavours {
        let mut args = vec!["--us", "1000", "--n", "40"];
        args.extend_from_slice(extra);
        let r = report(&check(&mut job(&args, None)));
        assert!(r.share > 0.8 && r.share <= 1.001, "{extra:?}: {r:?}");
    }
}

/// Synchronising jobs: only what holds however late the host wakes.
#[test]
fn synchronising_jobs_never_beat_the_device() {
    let r = report(&check(&mut job(&["--us", "200", "--n", "200", "--sync-every", "10"], None)));
    assert_eq!(r.gpu_ms, 40.0);
    assert!(r.wall_ms >= r.gpu_ms && r.share <= 1.0, "{r:?}");
    assert!(r.event_ms >= r.gpu_ms - 0.01 && r.event_ms <= r.wall_ms, "{r:?}");
}
