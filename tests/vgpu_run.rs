//! `vgpu run` end to end on the fake driver: the real `vgpu` binary finds libvgpu.so next to
//! itself, sets the variables, gives the command a private region (removed afterwards) or the
//! one named by `--cache`, and passes the exit status through.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{GIB, MIB, field};

/// The fake's context costs 300 MiB (its default), which libvgpu measures through NVML.
const CONTEXT: u64 = 300 * MIB;

/// `target/<profile>/vgpu`, built once per test binary next to libvgpu.so (the root package has
/// no `vgpu` binary, so `CARGO_BIN_EXE_vgpu` does not exist here).
fn vgpu_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let lib = &common::artifacts().lib;
        let profile = lib.parent().unwrap();
        let mut build = Command::new(env!("CARGO"));
        build.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "--quiet", "-p", "vgpu-cli"]);
        if profile.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let out = build.output().expect("cargo build -p vgpu-cli");
        assert!(out.status.success(), "cargo build -p vgpu-cli:\n{}", String::from_utf8_lossy(&out.stderr));
        profile.join("vgpu")
    })
}

/// `vgpu <args>` with the fake driver on the library path and a clean CUDA environment.
fn vgpu(args: &[&str]) -> Command {
    let a = common::artifacts();
    let mut cmd = Command::new(vgpu_bin());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CUDA_")
            || k.starts_with("LIBVGPU_")
            || k.starts_with("FAKEGPU_")
            || k.starts_with("LIBCUDA_")
            || k == "LD_PRELOAD"
        {
            cmd.env_remove(&k);
        }
    }
    // No node table: the default one in /tmp would outlive the test.
    cmd.env("LD_LIBRARY_PATH", &a.driver_dir).env("FAKEGPU_MEMORY", "16g").env("LIBVGPU_NODE_FILE", "off").args(args);
    cmd
}

fn prog(name: &str) -> String {
    common::artifacts().bin_dir.join(name).to_str().unwrap().to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn vgpu")
}

#[test]
fn caps_a_cuda_program_to_the_given_memory() {
    let alloc = prog("alloc_linked");
    let o = run(&mut vgpu(&["run", "--memory", "2g", "--", &alloc, "init", "alloc-until-oom", "64m", "meminfo"]));
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    let oom = out.lines().find(|l| l.starts_with("alloc-until-oom")).unwrap();
    assert!(oom.starts_with("alloc-until-oom 67108864 2 "), "CUDA_ERROR_OUT_OF_MEMORY: {oom}");
    assert_eq!(field(oom, "bytes"), (2 * GIB - CONTEXT) / (64 * MIB) * 64 * MIB);
    let meminfo = out.lines().find(|l| l.starts_with("meminfo")).unwrap();
    assert_eq!(field(meminfo, "total"), 2 * GIB, "{meminfo}");

    // The same program without vgpu sees the whole (fake) 16 GiB GPU.
    let a = common::artifacts();
    let plain = Command::new(&alloc)
        .env("LD_LIBRARY_PATH", &a.driver_dir)
        .env("FAKEGPU_MEMORY", "16g")
        .args(["init", "meminfo"])
        .output()
        .unwrap();
    let plain = text(&plain.stdout);
    assert_eq!(field(plain.lines().find(|l| l.starts_with("meminfo")).unwrap(), "total"), 16 * GIB);
}

#[test]
fn the_exit_status_is_passed_through() {
    for (script, want) in
        [("exit 0", 0), ("exit 7", 7), ("exit 255", 255), ("kill -TERM $$", 128 + 15), ("kill -KILL $$", 128 + 9)]
    {
        let o = run(&mut vgpu(&["run", "--memory", "1g", "--", "sh", "-c", script]));
        assert_eq!(o.status.code(), Some(want), "{script}: {}", text(&o.stderr));
    }
    let o = run(&mut vgpu(&["run", "--memory", "1g", "--", "/nonexistent/program"]));
    assert_eq!(o.status.code(), Some(127));
    assert!(text(&o.stderr).contains("/nonexistent/program: command not found"), "{}", text(&o.stderr));
    // With --cache vgpu execs the command: the status is the command's own.
    let cache = common::fresh_region_path();
    let o = run(&mut vgpu(&["run", "--memory", "1g", "--cache", cache.to_str().unwrap(), "--", "sh", "-c", "exit 9"]));
    assert_eq!(o.status.code(), Some(9));
}

#[test]
fn a_malformed_size_is_a_usage_error_and_nothing_runs() {
    for bad in ["2 gigs", "1.5", "-1g", "4gb!"] {
        let o = run(&mut vgpu(&["run", "--memory", bad, "--", "sh", "-c", "echo ran"]));
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let err = text(&o.stderr);
        assert!(err.contains(&format!("--memory {bad:?} is invalid")) && err.contains("accepted:"), "{err}");
        assert!(err.contains("Try 'vgpu run --help'."), "{err}");
        assert_eq!(text(&o.stdout), "", "the command must not run");
    }
    let o = run(&mut vgpu(&["run", "--sm", "130", "--", "true"]));
    assert_eq!(o.status.code(), Some(2));
    let o = run(&mut vgpu(&["run", "--", "true"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("nothing to limit"), "{}", text(&o.stderr));
}

#[test]
fn variables_and_preload_are_set_and_inherited_limits_dropped() {
    let lib = std::fs::canonicalize(&common::artifacts().lib).unwrap();
    let o = run(vgpu(&["run", "--device", "1", "--memory", "1g", "--sm", "30", "--", "env"])
        .env("CUDA_DEVICE_MEMORY_LIMIT", "8g")
        .env("CUDA_DEVICE_SM_LIMIT_0", "50")
        .env("LD_PRELOAD", "/nonexistent/other.so"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let env = text(&o.stdout);
    let mut vars: Vec<&str> =
        env.lines().filter(|l| l.starts_with("CUDA_DEVICE_") || l.starts_with("LD_PRELOAD=")).collect();
    vars.sort_unstable();
    let cache = vars.iter().find(|v| v.starts_with("CUDA_DEVICE_MEMORY_SHARED_CACHE=")).unwrap().to_string();
    vars.retain(|v| !v.starts_with("CUDA_DEVICE_MEMORY_SHARED_CACHE="));
    assert_eq!(
        vars,
        [
            "CUDA_DEVICE_MEMORY_LIMIT_1=1073741824",
            "CUDA_DEVICE_SM_LIMIT_1=30",
            &format!("LD_PRELOAD={}:/nonexistent/other.so", lib.display()),
        ]
    );
    assert!(cache.ends_with("/cudevshr.cache") && cache.contains("/vgpu-run-"), "{cache}");
}

#[test]
fn a_private_region_is_shared_by_the_commands_processes_and_removed_afterwards() {
    let alloc = prog("alloc_linked");
    // Two processes of one `vgpu run`: the first holds 1 GiB; the second gets only what is left
    // of the one 2 GiB cap (alone it would get 2 GiB minus its context).
    let script = format!(
        "echo region=$CUDA_DEVICE_MEMORY_SHARED_CACHE; {alloc} init alloc 1g sleep 1500 free-all & \
         sleep 0.5; {alloc} init alloc-until-oom 64m; wait"
    );
    let o = run(&mut vgpu(&["run", "--memory", "2g", "--", "sh", "-c", &script]));
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    let held = out.lines().find(|l| l.starts_with("alloc 1073741824")).unwrap();
    assert!(held.starts_with("alloc 1073741824 0 "), "{held}");
    let second = field(out.lines().find(|l| l.starts_with("alloc-until-oom")).unwrap(), "bytes");
    assert!(second <= 2 * GIB - GIB - 2 * CONTEXT, "the second process got {second}: the cap is not shared\n{out}");
    assert!(second >= GIB - 2 * CONTEXT - 64 * MIB, "the second process got only {second}\n{out}");

    let region = PathBuf::from(out.lines().find_map(|l| l.strip_prefix("region=")).unwrap());
    assert!(!region.exists(), "{} left behind", region.display());
    assert!(!region.parent().unwrap().exists(), "private directory left behind");
}

#[test]
fn a_cache_region_persists_and_keeps_its_own_limits() {
    let cache = common::fresh_region_path();
    let c = cache.to_str().unwrap();
    let alloc = prog("alloc_linked");
    let o = run(&mut vgpu(&["run", "--memory", "1g", "--cache", c, "--", &alloc, "init", "meminfo"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(field(text(&o.stdout).lines().find(|l| l.starts_with("meminfo")).unwrap(), "total"), GIB);
    assert!(cache.exists(), "--cache regions are kept");
    let region = vgpu_region::Region::open_existing(&cache).unwrap();
    assert_eq!(region.shared().limit[0].load(std::sync::atomic::Ordering::SeqCst), GIB);
    let st = run(&mut vgpu(&["status", "--cache", c]));
    assert!(text(&st.stdout).contains("1 GiB"), "{}", text(&st.stdout));

    // A second run with another cap, once the first has exited, gets its own cap.
    let o = run(&mut vgpu(&["run", "--memory", "3g", "--cache", c, "--", &alloc, "init", "meminfo"]));
    assert!(o.status.success());
    assert!(!text(&o.stderr).contains("stays in force"), "{}", text(&o.stderr));
    assert_eq!(field(text(&o.stdout).lines().find(|l| l.starts_with("meminfo")).unwrap(), "total"), 3 * GIB);

    // One that joins while a process holds the region gets the region's cap, and says so.
    let mut holder = vgpu(&["run", "--memory", "3g", "--cache", c, "--", &alloc, "init", "wait"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    while !line.starts_with("wait") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0, "the holder ended early");
    }
    let o = run(&mut vgpu(&["run", "--memory", "1g", "--cache", c, "--", &alloc, "init", "meminfo"]));
    assert!(o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("already exists with device 0 memory cap 3 GiB, which stays in force (not 1 GiB)"), "{err}");
    assert_eq!(field(text(&o.stdout).lines().find(|l| l.starts_with("meminfo")).unwrap(), "total"), 3 * GIB);
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
}

#[test]
fn the_library_is_found_next_to_the_binary_or_in_lib_or_named() {
    let a = common::artifacts();
    let bin = vgpu_bin();
    // bin/vgpu + lib/libvgpu.so (an install prefix) works; a lone binary says where it looked.
    // The prefix is next to the artifacts, so that the files can be hard links, not copies.
    let dir = tempfile::tempdir_in(a.bin_dir.parent().unwrap()).unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("lib")).unwrap();
    let place = |from: &Path, to: &Path| {
        if std::fs::hard_link(from, to).is_err() {
            std::fs::copy(from, to).unwrap();
        }
    };
    place(bin, &root.join("bin/vgpu"));
    let show = ["run", "--memory", "1g", "--", "sh", "-c", "printf %s \"$LD_PRELOAD\""];
    let lone = run(Command::new(root.join("bin/vgpu")).args(show).env_remove("LIBVGPU_LIB"));
    if !Path::new("/usr/local/vgpu/libvgpu.so").exists() {
        assert_eq!(lone.status.code(), Some(1));
        let err = text(&lone.stderr);
        assert!(err.contains("cannot find libvgpu.so; looked in: "), "{err}");
        assert!(err.contains(&format!("{}/bin/libvgpu.so", root.display())), "{err}");
        assert!(err.contains("/usr/local/vgpu/libvgpu.so") && err.contains("--lib PATH"), "{err}");
    }
    place(&a.lib, &root.join("lib/libvgpu.so"));
    let o = run(Command::new(root.join("bin/vgpu")).args(show).env_remove("LIBVGPU_LIB"));
    assert_eq!(text(&o.stdout), format!("{}", root.join("lib/libvgpu.so").display()), "{}", text(&o.stderr));

    // --lib and LIBVGPU_LIB win, and a missing one is an error, never a fallback.
    let o = run(&mut vgpu(&["run", "--lib", "/nonexistent/libvgpu.so", "--memory", "1g", "--", "true"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--lib /nonexistent/libvgpu.so: no such file"), "{}", text(&o.stderr));
    let o = run(vgpu(&["run", "--memory", "1g", "--", "true"]).env("LIBVGPU_LIB", "/nonexistent/x.so"));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("LIBVGPU_LIB /nonexistent/x.so: no such file"), "{}", text(&o.stderr));
    let lib = root.join("lib/libvgpu.so");
    let o = run(vgpu(&show).env("LIBVGPU_LIB", &lib));
    assert_eq!(text(&o.stdout), lib.display().to_string());
}
