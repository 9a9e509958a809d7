//! `vgpu set` writes limits that running processes see on their next charge; bad input is a
//! usage error (exit 2) naming the value and the accepted forms; a bad region is exit 1.

mod common;

use std::sync::atomic::Ordering::SeqCst;

use common::*;

#[test]
fn set_memory_changes_the_limit_live() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let r = region(&path, 4 * GIB);
    let out = ok(&["set", "--cache", s(&path), "--device", "0", "--memory", "6g"]);
    assert_eq!(out, "device 0: memory cap 4 GiB -> 6 GiB\n");
    assert_eq!(r.shared().limit[0].load(SeqCst), 6 * GIB);
    assert_eq!(r.shared().limit[1].load(SeqCst), 0, "other devices untouched");

    let out = ok(&["set", "--cache", s(&path), "--memory=unlimited", "--sm", "50%"]);
    assert_eq!(
        out,
        "device 0: memory cap 6 GiB -> unlimited\ndevice 0: SM limit unlimited -> 50%\n\
         device 1: memory cap unlimited (unchanged)\ndevice 1: SM limit 30% -> 50%\n"
    );
    assert_eq!(r.shared().limit[0].load(SeqCst), 0);
    assert_eq!(r.shared().sm_limit[1].load(SeqCst), 50);
    ok(&["set", "--cache", s(&path), "--device", "1", "--sm", "unlimited"]);
    assert_eq!(r.shared().sm_limit[1].load(SeqCst), 0);
}

#[test]
fn a_cap_below_usage_is_allowed_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let _r = region(&path, 4 * GIB);
    let p = process(&path, 100, 0);
    assert!(p.try_charge(0, GIB, p.limit(0)));
    let o = vgpu(&["set", "--cache", s(&path), "--device", "0", "--memory", "512m"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "device 0: memory cap 4 GiB -> 512 MiB\n");
    let err = stderr(&o);
    assert!(err.contains("warning: device 0: 1 GiB in use is above the new cap 512 MiB"), "{err}");
    assert!(err.contains("existing memory stays allocated and new allocations fail"), "{err}");
    assert!(!p.try_charge(0, MIB, p.limit(0)), "the running process sees the new cap");
    assert_eq!(p.used(0), GIB);
    let text = ok(&["status", "--cache", s(&path)]);
    assert!(text.contains("note: device 0: 1 GiB charged is above the cap 512 MiB"), "{text}");
}

#[test]
fn a_device_the_region_does_not_describe_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let r = region(&path, GIB);
    let o = vgpu(&["set", "--cache", s(&path), "--device", "5", "--memory", "1g"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("device 5 is not in region"), "{}", stderr(&o));
    assert_eq!(r.shared().limit[5].load(SeqCst), 0);
}

#[test]
fn invalid_values_are_usage_errors_naming_the_value_and_the_accepted_forms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let r = region(&path, GIB);
    let cases: &[(&[&str], &str)] = &[
        (&["--memory", "2 gigs"], r#"--memory "2 gigs" is invalid (unknown unit "gigs"); accepted: 0 or unlimited"#),
        (&["--memory", "1.5"], r#"--memory "1.5" is invalid (a fraction needs a unit"#),
        (&["--memory", "-1g"], r#"--memory "-1g" is invalid (does not start with a number)"#),
        (&["--memory", "99999999t"], r#"--memory "99999999t" is invalid (too large)"#),
        (&["--sm", "150"], r#"--sm "150" is invalid (above 100); accepted: a whole percentage 0-100"#),
        (&["--sm", "abc"], r#"--sm "abc" is invalid (not a whole number)"#),
        (
            &["--device", "x", "--sm", "1"],
            r#"--device "x" is invalid (not a whole number); accepted: a device index 0-15"#,
        ),
        (&["--memory", "1g", "--memory", "2g"], "--memory given more than once"),
        (&[], "nothing to set"),
        (&["--bogus"], r#"unknown option "--bogus" for `vgpu set`"#),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["set", "--cache", s(&path)];
        args.extend_from_slice(extra);
        let o = vgpu(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(err.contains("Try 'vgpu set --help'."), "{err}");
        assert!(stdout(&o).is_empty());
    }
    // Accepted sizes list the binary forms, from the same parser as CUDA_DEVICE_MEMORY_LIMIT.
    let err = stderr(&vgpu(&["set", "--memory", "lots"]));
    assert!(err.contains("k, m, g or t") && err.contains("1.5g"), "{err}");
    assert_eq!(r.shared().limit[0].load(SeqCst), GIB, "nothing written on a usage error");
}

#[test]
fn missing_foreign_and_corrupt_regions_are_one_line_runtime_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.cache");
    let junk = dir.path().join("junk.cache");
    std::fs::write(&junk, b"hello").unwrap();
    let hami = dir.path().join("hami.cache");
    std::fs::write(&hami, vec![0u8; 2_008_953]).unwrap();
    for (path, needle) in [
        (&missing, "does not exist"),
        (&junk, "is not a libvgpu region (5 bytes"),
        (&hami, "a HAMi-core region without libvgpu's extension"),
    ] {
        for cmd in [&["status"][..], &["reap"], &["set", "--sm", "10"]] {
            let mut args = cmd.to_vec();
            args.extend(["--cache", s(path)]);
            let o = vgpu(&args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            assert!(err.starts_with(&format!("vgpu: region file {}", s(path))), "{err}");
            assert!(err.contains(needle), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
    // The command never creates a region: it belongs to the container's first process.
    assert!(!missing.exists());
    assert_eq!(std::fs::read(&junk).unwrap(), b"hello", "a foreign file is left alone");
}

#[test]
fn help_and_version() {
    let out = ok(&["--help"]);
    assert!(out.contains("status") && out.contains("set") && out.contains("reap"), "{out}");
    // No command: nothing was done, so the help goes to stderr and the exit status is 2.
    let bare = vgpu(&[]);
    assert_eq!(bare.status.code(), Some(2));
    assert!(stdout(&bare).is_empty() && stderr(&bare).contains(out.trim_end()), "{}", stderr(&bare));
    let foo = vgpu(&["--foo"]);
    assert_eq!(foo.status.code(), Some(2));
    assert!(stderr(&foo).contains(r#"unknown option "--foo""#), "an option, not a command: {}", stderr(&foo));
    assert!(ok(&["help", "set"]).contains("--memory SIZE"));
    assert!(ok(&["set", "--help"]).contains("--memory SIZE"));
    assert!(ok(&["help", "status"]).contains("--scan DIR"));
    assert!(ok(&["reap", "-h"]).starts_with("Usage: vgpu reap"));
    assert!(ok(&["--version"]).starts_with(&format!("vgpu {}", env!("CARGO_PKG_VERSION"))));
    let o = vgpu(&["stauts"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(r#"unknown command "stauts"; accepted: status, set, reap, run, exporter, help"#));
}

/// The command must not carry the preloaded library's interposers: it would hook itself.
#[test]
fn the_binary_defines_no_dlsym() {
    // nm comes with binutils, which the C test programs' gcc needs anyway: a missing or failing
    // nm is a failure, not a pass.
    let o = std::process::Command::new("nm")
        .args(["--defined-only", env!("CARGO_BIN_EXE_vgpu")])
        .output()
        .expect("nm (binutils) runs");
    assert!(o.status.success(), "nm failed: {}", String::from_utf8_lossy(&o.stderr));
    let syms = String::from_utf8_lossy(&o.stdout);
    assert!(syms.lines().count() > 100, "nm listed the binary's symbols:\n{syms}");
    assert!(!syms.lines().any(|l| l.ends_with(" dlsym") || l.ends_with(" cuMemAlloc_v2")), "defines dlsym");
}
