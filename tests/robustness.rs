//! No neighbour, file or value can crash, stall or deceive a process. One test per hostile case
//! (`dNN`, the number its comment starts with), each run as real programs under the preload
//! against the fake driver.

mod common;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::{GIB, MIB, Run, fresh_region_path};
use vgpu_region::{InitParams, Region, SlotState};

/// CUDA_ERROR_OUT_OF_MEMORY.
const OOM: &str = "2";

/// The result code of the `n`-th line starting with `prefix` (the third word of `alloc SIZE CODE`).
fn code(r: &common::Result, prefix: &str, n: usize) -> String {
    let lines = r.lines(prefix);
    let line = lines.get(n).unwrap_or_else(|| panic!("no line {n} for {prefix:?} in:\n{}\n{}", r.stdout, r.stderr));
    line.split_whitespace().nth(2).unwrap_or_default().to_string()
}

/// The result code of the `init` line.
fn init_code(r: &common::Result) -> String {
    r.line("init ").split_whitespace().nth(1).unwrap_or_default().to_string()
}

/// Lines of stderr mentioning `needle`.
fn mentions(r: &common::Result, needle: &str) -> usize {
    r.stderr.lines().filter(|l| l.contains(needle)).count()
}

fn no_panic(r: &common::Result) {
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// A process of a container whose region is `region`, with fixed context costs.
fn in_region(region: &Path, cap: &str, args: &[&str]) -> Run {
    Run::new("alloc_linked")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", region)
        .env("CUDA_DEVICE_MEMORY_LIMIT", cap)
        .env("LIBVGPU_CONTEXT_OVERHEAD", "32m")
        .args(args)
}

/// 1: a symbolic link at the region's path is never followed: its target is left untouched,
/// one clear line says why, and the process keeps its own cap.
#[test]
fn d01_a_link_at_the_region_path_is_not_followed() {
    let link = fresh_region_path();
    let victim = link.with_extension("victim");
    std::fs::write(&victim, b"").unwrap();
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let r = in_region(&link, "1g", &["init", "alloc", "600m", "alloc", "600m"]).ok();
    assert_eq!(std::fs::metadata(&victim).unwrap().len(), 0, "the link's target was written");
    assert_eq!(mentions(&r, "symbolic link"), 1, "{}", r.stderr);
    assert_eq!((code(&r, "alloc ", 0), code(&r, "alloc ", 1)), ("0".into(), OOM.into()), "own cap:\n{}", r.stdout);
}

/// 2: a region created by another unprivileged user is not joined unless allowed; its cap does
/// not apply to us. Needs root (to plant a file owned by `nobody`); skipped otherwise.
#[test]
fn d02_a_region_of_another_user_is_not_trusted_unless_allowed() {
    let region = fresh_region_path();
    let mut init = InitParams::default();
    init.limits[0] = Some(64 * MIB);
    // Set as an operator's (`vgpu set`) cap, which outlives the processes: a cap only a
    // newcomer's environment had set would be replaced by the next newcomer's anyway.
    let planted = Region::open_or_create(&region, 0o666, &init).unwrap();
    planted.set_operator_mark(0, vgpu_region::Limit::Memory, true).unwrap();
    drop(planted);
    if std::os::unix::fs::chown(&region, Some(65534), Some(65534)).is_err() {
        eprintln!("skipped: not root");
        return;
    }
    let r = in_region(&region, "4g", &["init", "alloc", "1g"]).ok();
    assert_eq!(code(&r, "alloc ", 0), "0", "the planted 64 MiB cap applied:\n{}\n{}", r.stdout, r.stderr);
    assert_eq!(mentions(&r, "owned by uid 65534"), 1, "{}", r.stderr);
    let r = in_region(&region, "4g", &["init", "alloc", "1g"]).env("LIBVGPU_TRUSTED_UIDS", "65534").ok();
    assert_eq!(code(&r, "alloc ", 0), OOM, "explicitly trusted: its 64 MiB cap applies\n{}", r.stdout);
}

/// 3: truncating the region under a live process does not kill it (SIGBUS): it re-creates the
/// region, says so, and its cap still holds.
#[test]
fn d03_truncating_the_region_under_a_process_does_not_kill_it() {
    let region = fresh_region_path();
    let mut p =
        in_region(&region, "1g", &["init", "alloc", "100m", "wait", "meminfo", "alloc", "2g", "alloc", "100m"]).spawn();
    p.until("wait");
    std::fs::File::options().write(true).open(&region).unwrap().set_len(0).unwrap();
    // The watcher re-attaches within microseconds; give a loaded host ample time.
    std::thread::sleep(Duration::from_millis(300));
    p.release();
    let r = p.finish(); // insists on a clean exit: 135 was SIGBUS
    assert_eq!((code(&r, "alloc ", 1), code(&r, "alloc ", 2)), (OOM.into(), "0".into()), "{}", r.stdout);
    assert_eq!(mentions(&r, "was truncated"), 1, "{}", r.stderr);
}

/// 5: a process stopped while holding the region's initialisation lock does not hang the next
/// ones: they wait a bounded time, say so once, and keep their own cap.
#[test]
fn d05_a_held_region_lock_is_waited_for_a_bounded_time() {
    let region = fresh_region_path();
    drop(Region::open_or_create(&region, 0o600, &InitParams::default()).unwrap());
    let holder = std::fs::File::options().read(true).write(true).open(&region).unwrap();
    assert!(vgpu_region::lock::try_lock(&holder, 0).unwrap());
    let r = in_region(&region, "1g", &["init", "alloc", "600m", "alloc", "600m"])
        .output_within(Duration::from_secs(20))
        .expect("hung on the held lock");
    assert!(r.status.success(), "{}", r.stderr);
    assert_eq!(mentions(&r, "initialisation lock"), 1, "{}", r.stderr);
    assert_eq!((code(&r, "alloc ", 0), code(&r, "alloc ", 1)), ("0".into(), OOM.into()), "{}", r.stdout);
    drop(holder);
}

/// 6: a non-ASCII CUDA_VISIBLE_DEVICES entry makes no panic: one clear line, and NVML still
/// shows the cap.
#[test]
fn d06_a_non_ascii_visible_devices_entry_is_reported_not_a_panic() {
    let r = Run::new("nvml_smi").env("CUDA_VISIBLE_DEVICES", "GPUé1").env("CUDA_DEVICE_MEMORY_LIMIT", "1g").ok();
    no_panic(&r);
    assert_eq!(mentions(&r, "CUDA_VISIBLE_DEVICES"), 1, "{}", r.stderr);
    assert!(r.stdout.lines().any(|l| l.starts_with("gpu 0 ") && l.ends_with("MiB / 1024MiB")), "{}", r.stdout);
}

/// 7: a limit that is not valid UTF-8 gets the same clear line as any other bad value.
#[test]
fn d07_a_limit_that_is_not_utf8_is_reported() {
    for var in ["CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_MEMORY_LIMIT_0", "CUDA_DEVICE_SM_LIMIT"] {
        let value = OsString::from_vec(b"1g\xa0".to_vec());
        let r = Run::new("alloc_linked").env(var, &value).args(["init", "alloc", "2g"]).ok();
        let line = format!("{var}=\"1g\u{fffd}\" is invalid");
        assert_eq!(mentions(&r, &line), 1, "{var}: {}", r.stderr);
    }
}

/// 8: sizes that round to nothing and caps no context fits in are refused with a clear line
/// naming the value (never "no cap"); a cap below one context's cost is said to be so.
#[test]
fn d08_sizes_that_round_to_nothing_are_refused() {
    for (value, why) in [("0.0001k", "rounds to 0 bytes"), ("0.0000000001g", "rounds to 0 bytes"), ("2", "below")] {
        let r = Run::new("alloc_linked").env("CUDA_DEVICE_MEMORY_LIMIT", value).args(["init"]).ok();
        assert_eq!(mentions(&r, &format!("CUDA_DEVICE_MEMORY_LIMIT={value:?} is invalid")), 1, "{}", r.stderr);
        assert_eq!(mentions(&r, why), 1, "{value}: {}", r.stderr);
    }
    let r = in_region(&fresh_region_path(), "100m", &["init"]).env("LIBVGPU_CONTEXT_OVERHEAD", "300m").ok();
    assert_eq!(init_code(&r), OOM, "{}", r.stdout);
    assert_eq!(mentions(&r, "below what one CUDA context costs"), 1, "{}", r.stderr);
    let vgpu =
        Command::new(&common::artifacts().vgpu).args(["run", "--memory", "2048", "--", "true"]).output().unwrap();
    assert_eq!(vgpu.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&vgpu.stderr).contains("--memory \"2048\" is invalid"));
}

/// 10: a clean exit gives its slot back: no dead slot, nothing charged.
#[test]
fn d10_a_clean_exit_releases_its_slot() {
    let region = fresh_region_path();
    for _ in 0..3 {
        // The pointer and the context are left for the exit to clean up, as most programs do.
        let r = in_region(&region, "1g", &["init", "alloc", "100m"]).ok();
        assert_eq!(code(&r, "alloc ", 0), "0");
    }
    let r = Region::open_existing(&region).unwrap();
    let n = r.shared().proc_num.load(SeqCst) as usize;
    for i in 0..n {
        assert_eq!(r.slot_state(i, None), SlotState::Free, "slot {i}");
    }
    assert_eq!(r.used(0), 0);
    assert_eq!(n, 1, "each process reused the slot the previous one gave back");
}

/// 11: deleting the region file under a running process does not split the cap: the process
/// re-creates the region with what it holds, and the next process is refused what would pass
/// the cap.
#[test]
fn d11_deleting_the_region_does_not_split_the_cap() {
    let region = fresh_region_path();
    let mut holder = in_region(&region, "1g", &["init", "alloc", "600m", "wait"]).spawn();
    holder.until("wait");
    std::fs::remove_file(&region).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !region.exists() {
        assert!(std::time::Instant::now() < deadline, "the holder did not re-create the region");
        std::thread::sleep(Duration::from_millis(10));
    }
    let next = in_region(&region, "1g", &["init", "alloc", "600m"]).ok();
    assert_eq!(code(&next, "alloc ", 0), OOM, "2 × 600 MiB under a 1 GiB cap:\n{}", next.stdout);
    holder.release();
    let r = holder.finish();
    assert_eq!(mentions(&r, "was deleted"), 1, "{}", r.stderr);
}

/// 13: a forked child starts with no records of its parent's memory: freeing its copy of a
/// parent's pointer takes nothing off its own count, so it cannot pass the cap afterwards.
#[test]
fn d13_a_forked_child_does_not_free_its_parents_charges() {
    let region = fresh_region_path();
    let r =
        in_region(&region, "1g", &["init", "alloc", "600m", "fork", "alloc", "400m", "free-first", "alloc", "400m"])
            .env("LIBVGPU_CONTEXT_OVERHEAD", "0")
            .ok();
    assert!(r.stdout.contains("fork 0 child-exit=0"), "{}", r.stdout);
    // alloc 0 is the parent's; then the child's two.
    assert_eq!(code(&r, "alloc ", 1), "0", "{}", r.stdout);
    assert_eq!(code(&r, "alloc ", 2), OOM, "the child passed the cap:\n{}", r.stdout);
}

/// 10 (second half): the memory of a process that died without giving its slot back is not
/// shown as used: a memory query reaps dead slots first. (A new process would reuse the dead
/// slot anyway; the question is what a process already running sees.)
#[test]
fn d10_a_dead_slots_memory_is_not_shown_as_used() {
    let region = fresh_region_path();
    let mut watcher = in_region(&region, "1g", &["init", "wait", "meminfo"]).spawn();
    watcher.until("wait");
    let mut holder = in_region(&region, "1g", &["init", "alloc", "600m", "wait"]).spawn();
    holder.until("wait");
    let killed = Command::new("kill").args(["-9", &holder.pid().to_string()]).status().unwrap();
    assert!(killed.success());
    drop(holder);
    std::thread::sleep(Duration::from_millis(200));
    watcher.release();
    let r = watcher.finish();
    let line = r.line("meminfo ");
    // Only the watcher's own 32 MiB context is in use.
    assert_eq!(common::field(line, "free"), GIB - 32 * MIB, "{line}");
}
