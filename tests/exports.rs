//! The library exports exactly the functions it changes (plus `dlsym` and `cuGetProcAddress`):
//! anything else exported would shadow the driver for every process in the container. It must
//! not need the driver at load time either (it is in every process's preload list).

mod common;

use std::process::Command;

fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn exports_match_the_allowlist() {
    let lib = common::artifacts().lib.to_str().unwrap().to_owned();
    let nm = tool("nm", &["-D", "--defined-only", &lib]);
    let mut exported: Vec<&str> = nm
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Functions (T/W) and data (D/B/R): anything a program could bind to.
            (f.len() == 3 && "TtWDdBbRrVv".contains(f[1])).then_some(f[2])
        })
        .collect();
    exported.sort_unstable();
    let allow = include_str!("exports.allowlist");
    let mut allowed: Vec<&str> = allow.lines().filter(|l| !l.is_empty()).collect();
    allowed.sort_unstable();
    assert_eq!(exported, allowed, "exports differ from tests/exports.allowlist");
}

#[test]
fn no_driver_at_load_time() {
    let lib = common::artifacts().lib.to_str().unwrap().to_owned();
    let dynamic = tool("readelf", &["-d", &lib]);
    let needed: Vec<&str> = dynamic.lines().filter(|l| l.contains("(NEEDED)")).collect();
    // libc at least: an empty list would mean readelf printed nothing useful, not "no driver".
    assert!(needed.iter().any(|n| n.contains("libc.so")), "readelf -d listed no libc:\n{dynamic}");
    for n in &needed {
        assert!(!n.contains("libcuda") && !n.contains("libnvidia-ml"), "driver in DT_NEEDED: {n}");
    }
}

#[test]
fn preloading_into_a_program_that_never_uses_the_gpu_is_silent() {
    let a = common::artifacts();
    let out = Command::new("sh")
        .args(["-c", "echo hello"])
        .env("LD_PRELOAD", &a.lib)
        .env("CUDA_DEVICE_MEMORY_LIMIT", "not-a-size")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    // The configuration is read on the first CUDA call, not at load: a shell never sees it.
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
