//! What a newcomer meets: a region left behind by an earlier run does not cap later processes
//! silently, a clean exit leaves no dead slot, and refusals do not flood stderr.

mod common;

use std::process::Command;

use common::{GIB, Run, fresh_region_path};

fn status_json(region: &std::path::Path) -> serde_json::Value {
    let out = Command::new(&common::artifacts().vgpu)
        .args(["status", "--json", "--cache"])
        .arg(region)
        .env("LIBVGPU_NODE_FILE", "off")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The README's order: a capped run, then another run with another cap or none. The region
/// stays in the file, but nobody holds it any more, so each run gets what it asks for.
#[test]
fn a_capped_process_exits_cleanly_and_a_later_uncapped_one_is_uncapped() {
    let region = fresh_region_path();
    let node = region.with_extension("node");
    let first = Run::new("alloc_linked")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
        .env("LIBVGPU_NODE_FILE", &node)
        .env("CUDA_DEVICE_MEMORY_LIMIT", "4g")
        // Exits holding its allocation and context: the exit gives the slot back.
        .args(["init", "alloc", "1g", "meminfo"])
        .ok();
    assert_eq!(first.field("meminfo ", "total"), 4 * GIB);

    let status = status_json(&region);
    assert_eq!(status["dead_slots"], 0, "a clean exit leaves no dead slot: {status:#}");
    assert_eq!(status["alive_processes"], 0, "{status:#}");
    let devices = status["devices"].as_array().unwrap();
    assert!(devices.iter().all(|d| d["dead_used"] == 0 && d["used"] == 0), "{status:#}");

    let second = Run::new("alloc_linked")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
        .env("LIBVGPU_NODE_FILE", &node)
        .env("LIBCUDA_LOG_LEVEL", "3")
        .args(["init", "meminfo", "alloc", "6g"])
        .ok();
    assert_eq!(second.field("meminfo ", "total"), 16 * GIB, "uncapped: the whole GPU\n{}", second.stderr);
    assert!(second.line("alloc ").starts_with("alloc 6442450944 0 "), "{}", second.stdout);
    let told: Vec<&str> = second.stderr.lines().filter(|l| l.contains("replaces its limits")).collect();
    assert_eq!(told.len(), 1, "one info line:\n{}", second.stderr);
    assert!(told[0].contains("memory cap 4096 MiB -> none on every device"), "{}", told[0]);

    let third = Run::new("alloc_linked")
        .env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region)
        .env("LIBVGPU_NODE_FILE", &node)
        .env("CUDA_DEVICE_MEMORY_LIMIT", "2g")
        .args(["init", "meminfo"])
        .ok();
    assert_eq!(third.field("meminfo ", "total"), 2 * GIB, "a new cap applies: {}", third.stderr);
}

/// While a process holds the region, a newcomer with another cap gets the container's, and is
/// told; a cap an operator set with `vgpu set` outlives the processes until handed back.
#[test]
fn a_live_region_keeps_its_cap_and_an_operators_cap_persists_until_cleared() {
    let region = fresh_region_path();
    let node = region.with_extension("node");
    let in_region = |cap: Option<&str>| {
        let run =
            Run::new("alloc_linked").env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region).env("LIBVGPU_NODE_FILE", &node);
        match cap {
            Some(c) => run.env("CUDA_DEVICE_MEMORY_LIMIT", c),
            None => run,
        }
    };
    let mut holder = in_region(Some("4g")).args(["init", "wait"]).spawn();
    holder.until("wait ");
    let newcomer = in_region(Some("2g")).args(["init", "meminfo"]).ok();
    assert_eq!(newcomer.field("meminfo ", "total"), 4 * GIB);
    assert!(newcomer.stderr.contains("asks for 2048 MiB, the container's region has 4096 MiB"), "{}", newcomer.stderr);
    let vgpu = |args: &[&str]| {
        let out = Command::new(&common::artifacts().vgpu).args(args).arg("--cache").arg(&region).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    vgpu(&["set", "--memory", "3g"]);
    holder.release();
    holder.finish();

    let later = in_region(None).args(["init", "meminfo"]).ok();
    assert_eq!(later.field("meminfo ", "total"), 3 * GIB, "the operator's cap stays: {}", later.stderr);
    vgpu(&["set", "--memory", "env"]);
    let after = in_region(None).args(["init", "meminfo"]).ok();
    assert_eq!(after.field("meminfo ", "total"), 16 * GIB, "handed back to the environment: {}", after.stderr);
}

/// A program that retries a refused allocation 200 times gets a few lines, not 200.
#[test]
fn two_hundred_refusals_print_at_most_ten_lines() {
    let mut args = vec!["init"];
    args.extend(std::iter::repeat_n(["alloc", "4g"], 200).flatten());
    let r = Run::new("alloc_linked").env("CUDA_DEVICE_MEMORY_LIMIT", "2g").args(args).ok();
    let refused = r.lines("alloc ").iter().filter(|l| l.starts_with("alloc 4294967296 2 ")).count();
    assert_eq!(refused, 200, "{}", r.stdout);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert!(lines.len() <= 10, "{} lines:\n{}", lines.len(), r.stderr);
    assert!(lines[0].contains("allocation of 4096 MiB refused"), "the first is said in full: {}", r.stderr);
    // The others are counted: "N more allocations refused …" at exit, "(N more refused …)" on a
    // later line.
    let counted: u64 = lines
        .iter()
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let n: Vec<u64> = words
                .windows(2)
                .filter(|w| w[1] == "more")
                .filter_map(|w| w[0].trim_start_matches('(').parse().ok())
                .collect();
            n
        })
        .sum();
    assert_eq!(counted, 199, "every refusal is counted:\n{}", r.stderr);
}
