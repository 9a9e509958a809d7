//! The `dlsym` and `cuGetProcAddress` doors, driven by a program that behaves like the CUDA
//! runtime (dlopen the driver, take `cuGetProcAddress_v2`, ask for everything by base name with
//! a version and flags) or like PyTorch (plain `dlsym` on the driver handle).

mod common;

use common::{GIB, MIB, Run, field};

const HOOKED: &str = include_str!("exports.allowlist");

fn hooked(sym: &str) -> bool {
    HOOKED.lines().any(|l| l == sym)
}

fn word<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(pat.as_str()))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// Every resolution of a hooked function lands in libvgpu, every other one in the driver.
fn assert_routed(r: &common::Result, prefix: &str) -> usize {
    let lines = r.lines(prefix);
    assert!(lines.len() > 20, "{}", r.stdout);
    let mut swapped = 0;
    for l in &lines {
        let (sym, lib) = (word(l, "sym"), word(l, "lib"));
        if hooked(sym) {
            assert_eq!(lib, "libvgpu.so", "hooked function not swapped: {l}");
            swapped += 1;
        } else {
            assert_eq!(lib, "libcuda.so.1", "foreign function must reach the driver untouched: {l}");
        }
    }
    swapped
}

#[test]
fn cuda_get_proc_address_swaps_exactly_the_hooked_functions() {
    let r = Run::new("cudart_like").args(["init"]).ok();
    assert!(assert_routed(&r, "resolve ") >= 20);
    let plain = Run::new("cudart_like").without_preload().args(["init"]).ok();
    assert!(plain.lines("resolve ").iter().all(|l| word(l, "lib") == "libcuda.so.1"));
}

#[test]
fn per_thread_stream_flag_gets_the_ptsz_hooks() {
    let r = Run::new("cudart_like").args(["--ptsz", "init"]).ok();
    assert_routed(&r, "resolve ");
    for base in ["cuMemAllocAsync", "cuMemAllocFromPoolAsync", "cuMemFreeAsync"] {
        let l = r.lines(&format!("resolve {base} ")).into_iter().next().unwrap();
        assert_eq!(word(l, "sym"), format!("{base}_ptsz"), "{l}");
    }
    let plain = Run::new("cudart_like").args(["init"]).ok();
    let l = plain.lines("resolve cuMemAllocAsync ").into_iter().next().unwrap();
    assert_eq!(word(l, "sym"), "cuMemAllocAsync", "flags 0 keep the legacy-stream function");
}

#[test]
fn versions_select_the_abi_the_caller_asked_for() {
    let r = Run::new("cudart_like")
        .args(["procaddr", "cuMemAlloc", "3010", "0", "procaddr", "cuMemAlloc", "3020", "0"])
        .args(["procaddr", "cuCtxCreate", "11040", "0", "procaddr", "cuGetProcAddress", "11030", "0"])
        .args(["procaddr", "cuGetProcAddress", "12000", "0"])
        .ok();
    let syms: Vec<&str> = r.lines("procaddr ").iter().map(|l| word(l, "sym")).collect();
    assert_eq!(syms, ["cuMemAlloc", "cuMemAlloc_v2", "cuCtxCreate_v3", "cuGetProcAddress", "cuGetProcAddress_v2"]);
    assert!(r.lines("procaddr ").iter().all(|l| word(l, "lib") == "libvgpu.so"));
}

#[test]
fn return_codes_and_symbol_status_are_the_drivers() {
    let cmds = [
        "procaddr",
        "cuNoSuchThing",
        "13000",
        "0", //
        "procaddr",
        "cuMemAllocAsync",
        "9000",
        "0", // too old a version for it
        "procaddr",
        "cuMemAlloc",
        "13000",
        "2",
    ];
    let ours = Run::new("cudart_like").args(cmds).ok();
    let plain = Run::new("cudart_like").without_preload().args(cmds).ok();
    let strip = |r: &common::Result| -> Vec<String> {
        // "procaddr NAME VER FLAGS CODE status=S ptr=… sym=… lib=…": compare all but the address.
        r.lines("procaddr ").iter().map(|l| l.split_whitespace().take(6).collect::<Vec<_>>().join(" ")).collect()
    };
    assert_eq!(strip(&ours), strip(&plain));
    assert!(strip(&ours)[0].ends_with("500 status=1"), "{:?}", strip(&ours));
    assert!(strip(&ours)[1].ends_with("500 status=2"), "{:?}", strip(&ours));
}

#[test]
fn the_cap_holds_through_get_proc_address() {
    for mode in [&[][..], &["--ptsz"][..], &["--dlsym"][..]] {
        let r = Run::new("cudart_like")
            .env("CUDA_DEVICE_MEMORY_LIMIT", "2g")
            .args(mode)
            .args(["init", "alloc-until-oom", "128m", "async", "1g", "free-async-last", "meminfo"])
            .ok();
        assert!(field(r.line("alloc-until-oom"), "bytes") <= 2 * GIB - 300 * MIB, "{mode:?}: {}", r.stdout);
        assert_eq!(r.field("meminfo", "total"), 2 * GIB, "{mode:?}");
        assert_eq!(r.field("meminfo", "free"), 2 * GIB - 300 * MIB, "{mode:?}: nothing leaked");
    }
}

#[test]
fn dlsym_on_the_driver_handle_swaps_like_pytorch_needs() {
    let r = Run::new("cudart_like").args(["--dlsym", "init"]).ok();
    assert!(assert_routed(&r, "dlsym ") >= 20);
}

#[test]
fn debug_log_names_each_swap() {
    let r = Run::new("cudart_like").env("LIBCUDA_LOG_LEVEL", "4").args(["--ptsz", "init"]).ok();
    assert!(r.stderr.contains("cuGetProcAddress cuMemAlloc@13000 flags=2 -> cuMemAlloc_v2"), "{}", r.stderr);
    assert!(
        r.stderr.contains("cuGetProcAddress cuMemAllocAsync@13000 flags=2 -> cuMemAllocAsync_ptsz"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("libvgpu["), "logs never go to stdout");
}

#[test]
fn rtld_next_from_the_application_resolves_relative_to_the_application() {
    // From the main program, RTLD_NEXT searches the preloaded library first: a dlsym wrapper
    // that is not a tail call would make glibc search after libvgpu and skip its hooks.
    let r = Run::new("rtld_next").ok();
    assert_eq!(
        r.stdout,
        "next cuMemAlloc_v2 lib=libvgpu.so\nnext cuInit lib=libcuda.so.1\nnext dlsym lib=libvgpu.so\nnext strlen lib=libc.so.6\n"
    );
}

#[test]
fn ctypes_and_other_dlsym_users_are_unaffected() {
    let a = common::artifacts();
    let out = std::process::Command::new("python3")
        .args(["-c", "import ctypes; print(ctypes.CDLL(None).getpid() > 0, ctypes.CDLL('libc.so.6').strlen(b'abc'))"])
        .env("LD_PRELOAD", &a.lib)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "True 3", "{}", String::from_utf8_lossy(&out.stderr));
}
