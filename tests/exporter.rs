//! The exporter reports a live process's usage: a CUDA program started by `vgpu run --cache`
//! on the fake driver holds memory while `vgpu exporter` is scraped over HTTP; once the program is
//! killed, the same memory shows as held by a dead process; a kernel loop under an SM limit shows
//! its GPU time in /metrics and its achieved share in /api/history. (The exposition format
//! itself is checked line by line in crates/vgpu-cli/tests/exporter.rs; the dashboard page in a
//! browser by tests/dashboard, run by .ci/dashboard.sh.)

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use common::{GIB, MIB};

/// The fake's context costs 300 MiB (its default), which libvgpu measures through NVML.
const CONTEXT: u64 = 300 * MIB;

/// `target/<profile>/vgpu`, built next to libvgpu.so (as in tests/vgpu_run.rs).
fn vgpu_bin() -> std::path::PathBuf {
    let profile = common::artifacts().lib.parent().unwrap().to_path_buf();
    let mut build = Command::new(env!("CARGO"));
    build.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "--quiet", "-p", "vgpu-cli"]);
    if profile.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let out = build.output().expect("cargo build -p vgpu-cli");
    assert!(out.status.success(), "cargo build -p vgpu-cli:\n{}", String::from_utf8_lossy(&out.stderr));
    profile.join("vgpu")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scrape(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// A running `vgpu exporter --listen 127.0.0.1:0 <args>` and the address it serves on.
fn exporter(bin: &std::path::Path, args: &[&str]) -> (Killed, String) {
    let mut exporter = Command::new(bin);
    exporter.args(["exporter", "--listen", "127.0.0.1:0"]).args(args).stdout(Stdio::piped());
    let mut exporter = Killed(exporter.spawn().unwrap());
    let mut first = String::new();
    BufReader::new(exporter.0.stdout.as_mut().unwrap()).read_line(&mut first).unwrap();
    let addr = first.split("http://").nth(1).unwrap().split('/').next().unwrap().to_string();
    (exporter, addr)
}

/// The value of the one sample of `name` whose label text contains every `needle`.
fn sample(body: &str, name: &str, needles: &[&str]) -> u64 {
    let found: Vec<&str> =
        body.lines().filter(|l| l.starts_with(&format!("{name}{{")) && needles.iter().all(|n| l.contains(n))).collect();
    assert_eq!(found.len(), 1, "{name} {needles:?} in:\n{body}");
    found[0].rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn the_exporter_reports_a_live_process_then_its_death() {
    let a = common::artifacts();
    let bin = &vgpu_bin();
    let region = common::fresh_region_path();
    let r = region.to_str().unwrap();
    let alloc = a.bin_dir.join("alloc_linked");
    let mut program = Command::new(bin);
    program
        .args(["run", "--memory", "2g", "--cache", r, "--"])
        .arg(&alloc)
        .args(["init", "alloc", "1g", "sleep", "60000"])
        .env_remove("CUDA_DEVICE_MEMORY_LIMIT")
        .env_remove("LD_PRELOAD")
        .env("LD_LIBRARY_PATH", &a.driver_dir)
        .env("FAKEGPU_MEMORY", "16g")
        .stdout(Stdio::piped());
    let mut program = Killed(program.spawn().unwrap());
    let pid = program.0.id();
    let mut lines = BufReader::new(program.0.stdout.take().unwrap()).lines();
    let held = lines.find(|l| l.as_ref().is_ok_and(|l| l.starts_with("alloc "))).unwrap().unwrap();
    assert!(held.starts_with("alloc 1073741824 0 "), "{held}");

    let (_exporter, addr) = exporter(bin, &["--cache", r]);

    let body = scrape(&addr, "/metrics");
    let dev0 = ["vdevice_index=\"0\""];
    assert_eq!(sample(&body, "hami_vgpu_memory_used_bytes", &dev0), GIB + CONTEXT);
    assert_eq!(sample(&body, "hami_vgpu_memory_limit_bytes", &dev0), 2 * GIB);
    assert_eq!(sample(&body, "hami_vgpu_memory_context_bytes", &dev0), CONTEXT);
    // `vgpu run --cache` execs: the process in the region has vgpu's PID.
    let pid_label = format!("pid=\"{pid}\"");
    assert_eq!(sample(&body, "libvgpu_process_memory_used_bytes", &[&pid_label, "state=\"alive\""]), GIB + CONTEXT);
    assert_eq!(sample(&body, "libvgpu_processes", &["state=\"alive\""]), 1);
    let status = scrape(&addr, "/api/status");
    assert!(status.contains(&format!("\"pid\": {pid}")), "{status}");

    // kill -9: the slot is dead, its memory still counts against the cap until reaped.
    let _ = program.0.kill();
    let _ = program.0.wait();
    let body = scrape(&addr, "/metrics");
    assert_eq!(sample(&body, "hami_vgpu_memory_used_bytes", &dev0), 0);
    assert_eq!(sample(&body, "libvgpu_memory_dead_bytes", &dev0), GIB + CONTEXT);
    assert_eq!(sample(&body, "libvgpu_processes", &["state=\"dead\""]), 1);
}

#[test]
fn a_limited_kernel_loop_shows_its_gpu_time_and_achieved_share() {
    let a = common::artifacts();
    let bin = &vgpu_bin();
    let region = common::fresh_region_path();
    let r = region.to_str().unwrap();
    // 1 ms kernels for far longer than the test: it is killed once the history has its points.
    let mut job = Command::new(bin);
    job.args(["run", "--sm", "30", "--cache", r, "--"])
        .arg(a.bin_dir.join("kernels"))
        .args(["--us", "1000", "--n", "100000000"])
        .env_remove("CUDA_DEVICE_SM_LIMIT")
        .env_remove("LD_PRELOAD")
        .env("LD_LIBRARY_PATH", &a.driver_dir)
        .env("FAKEGPU_MEMORY", "16g")
        .env("FAKEGPU_QUEUE_DEPTH", "16")
        // One device, so /api/history holds one series.
        .env("FAKEGPU_DEVICES", "1")
        .stdout(Stdio::null());
    let _job = Killed(job.spawn().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !region.exists() {
        assert!(std::time::Instant::now() < deadline, "the job never created its region");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (_exporter, addr) = exporter(bin, &["--cache", r, "--sample-interval", "0.5"]);
    // The root package has no JSON parser: the compact document's numbers are read in place.
    let values = |json: &str, key: &str| -> Vec<String> {
        let pat = format!("\"{key}\":");
        json.split(&pat).skip(1).map(|v| v.split([',', '}']).next().unwrap().to_string()).collect()
    };
    let shares = loop {
        let h = scrape(&addr, "/api/history");
        let shares: Vec<f64> = values(&h, "achieved_pct").iter().filter_map(|v| v.parse().ok()).collect();
        if shares.len() >= 6 {
            assert!(values(&h, "sm_limit").iter().all(|v| v == "30"), "{h}");
            break shares;
        }
        assert!(std::time::Instant::now() < deadline, "no history in {h}");
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    // Each sample is half a second of a 30 % budget with a 30 ms burst: near 30, never near 100.
    let mean = shares[1..].iter().sum::<f64>() / (shares.len() - 1) as f64;
    assert!((20.0..=40.0).contains(&mean), "achieved shares {shares:?}");
    let body = scrape(&addr, "/metrics");
    let seconds = |name: &str| -> f64 {
        let line = body.lines().find(|l| l.starts_with(&format!("{name}{{"))).unwrap_or_else(|| panic!("{name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(seconds("libvgpu_gpu_time_seconds_total") > 0.5, "{body}");
    assert!(seconds("libvgpu_throttled_seconds_total") > 0.5, "{body}");
}
