//! The exporter reports a live process's usage: a CUDA program started by `vgpu run --cache`
//! on the fake driver holds memory while `vgpu exporter` is scraped over HTTP; once the program is
//! killed, the same memory shows as held by a dead process. (The exposition format itself is
//! checked line by line in crates/vgpu-cli/tests/exporter.rs.)

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

    let mut exporter = Command::new(bin);
    exporter.args(["exporter", "--listen", "127.0.0.1:0", "--cache", r]).stdout(Stdio::piped());
    let mut exporter = Killed(exporter.spawn().unwrap());
    let mut first = String::new();
    BufReader::new(exporter.0.stdout.as_mut().unwrap()).read_line(&mut first).unwrap();
    let addr = first.split("http://").nth(1).unwrap().split('/').next().unwrap().to_string();

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
