//! Shared test helpers: regions are built the way the library builds them (open_or_create,
//! claim_slot, RegionAccounting), then the real `vgpu` binary is run against them. Each
//! "process" is a separate open of the file, so its OFD slot lock is released when it is dropped
//! — exactly what the kernel does when a process dies.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use vgpu_region::{InitParams, Region, RegionAccounting};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// A region of two devices: device 0 capped at `cap`, device 1 uncapped with a 30% SM share.
pub fn params(cap: u64) -> InitParams {
    let mut p = InitParams::default();
    p.limits[0] = Some(cap);
    p.sm_limits[1] = Some(30);
    p.uuids = vec!["GPU-aaaa".into(), "GPU-bbbb".into()];
    p
}

pub fn region(path: &Path, cap: u64) -> Region {
    Region::open_or_create(path, 0o600, &params(cap)).unwrap()
}

/// A "process" of the container with its own slot.
pub fn process(path: &Path, pid: i32, hostpid: i32) -> RegionAccounting {
    let r = region(path, 0);
    let slot = r.claim_slot(pid, hostpid).unwrap();
    RegionAccounting::new(r, slot)
}

/// Runs `vgpu` with a clean environment for the region variable, so the host's cannot leak in.
pub fn vgpu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vgpu")).args(args).env_remove("CUDA_DEVICE_MEMORY_SHARED_CACHE").output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command expected to succeed and returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let o = vgpu(args);
    assert_eq!(o.status.code(), Some(0), "vgpu {args:?}\nstdout: {}\nstderr: {}", stdout(&o), stderr(&o));
    stdout(&o)
}

pub fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
