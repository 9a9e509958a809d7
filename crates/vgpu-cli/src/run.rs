//! `vgpu run`: one command under a cap, without writing any variable by hand.
//!
//! The child gets `LD_PRELOAD` (libvgpu.so first), the limit variables and a region. Without
//! `--cache` the region is private to this invocation: a fresh file in a fresh 0700 directory,
//! shared by the command and its children, removed once the command exits — so we spawn and
//! wait (passing signals on) rather than exec. With `--cache` there is nothing to clean up and
//! we exec, so the command keeps our PID and receives its signals directly.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicI32;
use std::sync::atomic::Ordering::SeqCst;

use vgpu_core::MAX_DEVICES;
use vgpu_core::config::{MEMORY_LIMIT, SHARED_CACHE, SM_LIMIT};
use vgpu_region::{Limit, Region};

use crate::CliError;
use crate::args::{lx, once, parse_device, parse_memory, parse_percent, value};
use crate::render::{cap, percent};

/// Where an installed library lives (HAMi's mount point in a container).
pub const STANDARD_LIB: &str = "/usr/local/vgpu/libvgpu.so";
/// Overrides the search for the library (like `--lib`).
pub const LIB_ENV: &str = "LIBVGPU_LIB";
/// The region's file name inside the private directory.
const PRIVATE_REGION: &str = "cudevshr.cache";

#[derive(Debug)]
pub struct RunOpts {
    pub memory: Option<u64>,
    pub sm: Option<u64>,
    pub devices: Vec<usize>,
    pub cache: Option<PathBuf>,
    pub lib: Option<PathBuf>,
    pub command: Vec<OsString>,
}

const CMD: &str = "run";

/// Options up to `--` or the first argument that is not an option; the rest is the command,
/// as the OS gave it.
pub fn parse(p: &mut lexopt::Parser) -> Result<crate::args::Command, CliError> {
    use lexopt::prelude::*;
    let mut o = RunOpts { memory: None, sm: None, devices: Vec::new(), cache: None, lib: None, command: Vec::new() };
    while let Some(arg) = p.next().map_err(lx(Some(CMD)))? {
        match arg {
            Short('h') | Long("help") => return Ok(crate::args::Command::Help(Some(CMD))),
            Long("memory") => {
                let v = parse_memory(CMD, &value(p, CMD, "--memory")?)?;
                o.memory = Some(once(CMD, "--memory", o.memory, v)?);
            }
            Long("sm") => o.sm = Some(once(CMD, "--sm", o.sm, parse_percent(CMD, &value(p, CMD, "--sm")?)?)?),
            Long("device") => o.devices.push(parse_device(CMD, &value(p, CMD, "--device")?)?),
            Long("cache") => {
                o.cache = Some(once(CMD, "--cache", o.cache, non_empty("--cache", value(p, CMD, "--cache")?)?)?)
            }
            Long("lib") => o.lib = Some(once(CMD, "--lib", o.lib, non_empty("--lib", value(p, CMD, "--lib")?)?)?),
            Value(command) => {
                o.command.push(command);
                o.command.extend(p.raw_args().map_err(lx(Some(CMD)))?);
                break;
            }
            other => {
                let CliError::Usage { msg, .. } = lx(Some(CMD))(other.unexpected()) else { unreachable!() };
                return Err(CliError::usage(Some(CMD), format!("{msg} (put the command after --)")));
            }
        }
    }
    if o.command.is_empty() {
        return Err(CliError::usage(
            Some(CMD),
            "no command to run: give it after --, e.g. vgpu run --memory 4g -- python train.py".into(),
        ));
    }
    if o.memory.is_none() && o.sm.is_none() && o.cache.is_none() {
        return Err(CliError::usage(
            Some(CMD),
            "nothing to limit: give --memory SIZE and/or --sm PERCENT (or --cache PATH to join a region)".into(),
        ));
    }
    o.devices.sort_unstable();
    o.devices.dedup();
    Ok(crate::args::Command::Run(o))
}

fn non_empty(flag: &str, value: String) -> Result<PathBuf, CliError> {
    if value.is_empty() {
        return Err(CliError::usage(Some(CMD), format!("{flag} needs a path, not an empty string")));
    }
    Ok(PathBuf::from(value))
}

/// Finds the library to preload: `--lib`, `$LIBVGPU_LIB`, next to the binary, `../lib/` from
/// the binary, the standard install path. An explicit choice that does not exist is an error,
/// never a silent fallback to another copy.
pub fn find_lib(explicit: Option<&Path>) -> Result<PathBuf, CliError> {
    let chosen = match explicit {
        Some(p) => Some(("--lib", p.to_path_buf())),
        None => std::env::var_os(LIB_ENV).filter(|v| !v.is_empty()).map(|v| (LIB_ENV, PathBuf::from(v))),
    };
    let found = if let Some((how, path)) = chosen {
        if !path.is_file() {
            return Err(CliError::Runtime(format!("{how} {}: no such file", path.display())));
        }
        path
    } else {
        let mut looked = Vec::new();
        if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
            looked.push(dir.join("libvgpu.so"));
            looked.push(dir.join("../lib/libvgpu.so"));
        }
        looked.push(PathBuf::from(STANDARD_LIB));
        match looked.iter().find(|p| p.is_file()) {
            Some(p) => p.clone(),
            None => {
                let list: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
                return Err(CliError::Runtime(format!(
                    "cannot find libvgpu.so; looked in: {}; give --lib PATH or set {LIB_ENV} \
                     (build it with `cargo build --release`)",
                    list.join(", ")
                )));
            }
        }
    };
    let abs =
        std::fs::canonicalize(&found).map_err(|e| CliError::Runtime(format!("library {}: {e}", found.display())))?;
    // ld.so splits LD_PRELOAD at spaces and colons: such a path cannot be preloaded.
    if abs.as_os_str().as_bytes().iter().any(|b| b" :\t\n".contains(b)) {
        return Err(CliError::Runtime(format!(
            "library path {} contains a space or a colon, which LD_PRELOAD cannot carry; move or link it elsewhere",
            abs.display()
        )));
    }
    Ok(abs)
}

/// `lib` first, then the existing entries (minus any copy of `lib`), colon-separated.
pub fn preload_list(lib: &Path, existing: Option<&OsStr>) -> OsString {
    let mut out = lib.as_os_str().to_os_string();
    if let Some(existing) = existing {
        for entry in existing.as_bytes().split(|b| *b == b':' || *b == b' ').filter(|e| !e.is_empty()) {
            if entry != lib.as_os_str().as_bytes() {
                out.push(":");
                out.push(OsStr::from_bytes(entry));
            }
        }
    }
    out
}

fn is_limit_var(name: &OsStr) -> bool {
    let n = name.as_bytes();
    n.starts_with(MEMORY_LIMIT.as_bytes()) || n.starts_with(SM_LIMIT.as_bytes())
}

/// A fresh 0700 directory under `$TMPDIR` (or /tmp).
fn private_dir() -> Result<PathBuf, CliError> {
    let base = std::env::temp_dir();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    for attempt in 0..100u32 {
        let dir = base.join(format!("vgpu-run-{}-{:x}", std::process::id(), nanos.wrapping_add(attempt)));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(CliError::Runtime(format!(
                    "cannot create a private region directory in {}: {e}",
                    base.display()
                )));
            }
        }
    }
    Err(CliError::Runtime(format!("cannot create a private region directory in {}", base.display())))
}

/// A region given with `--cache` that a running process holds keeps its own limits (the library
/// reads them live from the file), and so do limits an operator set with `vgpu set`: say so if
/// they differ from the command line. A region nobody holds takes the command's limits.
fn warn_if_region_differs(path: &Path, o: &RunOpts) {
    let Ok(region) = Region::open_copy(path) else { return };
    let held = region.any_live_slot();
    let s = region.shared();
    let devices: Vec<usize> = if o.devices.is_empty() {
        let n = (s.device_num.load(SeqCst) as usize).clamp(1, MAX_DEVICES);
        (0..n).collect()
    } else {
        o.devices.clone()
    };
    for d in devices {
        if let Some(want) = o.memory.filter(|_| held || region.operator_set(d, Limit::Memory)) {
            let have = s.limit[d].load(SeqCst);
            if have != want {
                eprintln!(
                    "vgpu: note: region {} already exists with device {d} memory cap {}, which stays in force \
                     (not {}); change it with `vgpu set --cache {} --device {d} --memory ...`",
                    path.display(),
                    cap((have != 0).then_some(have)),
                    cap((want != 0).then_some(want)),
                    path.display()
                );
            }
        }
        if let Some(want) = o.sm.filter(|_| held || region.operator_set(d, Limit::Sm)) {
            let have = s.sm_limit[d].load(SeqCst);
            let norm = |v: u64| vgpu_core::limiter::sm_limit_applies(v).then_some(v);
            if norm(have) != norm(want) {
                eprintln!(
                    "vgpu: note: region {} already exists with device {d} SM limit {}, which stays in force (not {})",
                    path.display(),
                    percent(norm(have)),
                    percent(norm(want))
                );
            }
        }
    }
}

/// The child's PID while we wait, for the signal handler (0: not spawned yet).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A signal that arrived before the child's PID was known, to pass on once it is.
static PENDING: AtomicI32 = AtomicI32::new(0);
const FORWARDED: [libc::c_int; 6] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

/// Passes a signal on to the child — unless the kernel sent it (a terminal's Ctrl-C goes to the
/// whole foreground process group: the child has it already, and must not get it twice).
extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    if !info.is_null() && unsafe { (*info).si_code } > 0 {
        return;
    }
    match CHILD.load(SeqCst) {
        0 => PENDING.store(sig, SeqCst),
        // SAFETY: kill is async-signal-safe.
        child => unsafe {
            libc::kill(child, sig);
        },
    }
}

/// 127/126 like a shell when the command cannot be started.
fn spawn_error(program: &OsStr, e: &std::io::Error) -> (u8, String) {
    let name = program.to_string_lossy();
    match e.kind() {
        std::io::ErrorKind::NotFound => (127, format!("{name}: command not found")),
        std::io::ErrorKind::PermissionDenied => (126, format!("{name}: permission denied")),
        _ => (126, format!("{name}: {e}")),
    }
}

/// Runs the command; returns the exit status to leave with.
pub fn run(o: RunOpts) -> Result<u8, CliError> {
    let lib = find_lib(o.lib.as_deref())?;
    let mut cmd = Command::new(&o.command[0]);
    cmd.args(&o.command[1..]);
    for (name, _) in std::env::vars_os() {
        if is_limit_var(&name) {
            cmd.env_remove(&name);
        }
    }
    let suffixes: Vec<String> =
        if o.devices.is_empty() { vec![String::new()] } else { o.devices.iter().map(|d| format!("_{d}")).collect() };
    for sfx in &suffixes {
        if let Some(m) = o.memory {
            cmd.env(format!("{MEMORY_LIMIT}{sfx}"), m.to_string());
        }
        if let Some(p) = o.sm {
            cmd.env(format!("{SM_LIMIT}{sfx}"), p.to_string());
        }
    }
    cmd.env("LD_PRELOAD", preload_list(&lib, std::env::var_os("LD_PRELOAD").as_deref()));

    if let Some(cache) = &o.cache {
        warn_if_region_differs(cache, &o);
        cmd.env(SHARED_CACHE, cache);
        // Nothing to clean up: become the command (same PID, signals reach it directly).
        let e = cmd.exec();
        let (code, msg) = spawn_error(&o.command[0], &e);
        eprintln!("vgpu: {msg}");
        return Ok(code);
    }

    let dir = private_dir()?;
    cmd.env(SHARED_CACHE, dir.join(PRIVATE_REGION));
    let status = spawn_and_wait(&mut cmd);
    // Processes the command left running keep their mapping; the file only loses its name.
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Ok(s) => Ok(match (s.code(), s.signal()) {
            (Some(c), _) => c as u8,
            (None, Some(sig)) => (128 + sig).min(255) as u8,
            _ => 1,
        }),
        Err(e) => {
            let (code, msg) = spawn_error(&o.command[0], &e);
            eprintln!("vgpu: {msg}");
            Ok(code)
        }
    }
}

/// Installs the forwarder first (signals are then never fatal to us while the child runs), then
/// spawns. The child starts with default handlers (exec resets caught signals) and our mask.
fn spawn_and_wait(cmd: &mut Command) -> std::io::Result<std::process::ExitStatus> {
    for &sig in &FORWARDED {
        // SAFETY: installs a handler that only does async-signal-safe work.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    let mut child = cmd.spawn()?;
    CHILD.store(child.id() as i32, SeqCst);
    let early = PENDING.swap(0, SeqCst);
    if early != 0 {
        // SAFETY: plain kill of our own child.
        unsafe { libc::kill(child.id() as i32, early) };
    }
    child.wait()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Command as C;

    fn p(args: &[&str]) -> Result<C, CliError> {
        crate::args::parse_os(
            &std::iter::once("run").chain(args.iter().copied()).map(OsString::from).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn options_then_the_command() {
        let Ok(C::Run(o)) = p(&["--memory", "4g", "--sm=30%", "--device", "1", "--", "python", "-c", "x"]) else {
            panic!()
        };
        assert_eq!((o.memory, o.sm, o.devices), (Some(4 << 30), Some(30), vec![1]));
        assert_eq!(o.command, ["python", "-c", "x"]);
        // Without `--`, the first non-option starts the command; its own options stay its own.
        let Ok(C::Run(o)) = p(&["--memory", "1g", "ls", "--memory", "-l"]) else { panic!() };
        assert_eq!(o.command, ["ls", "--memory", "-l"]);
        let Ok(C::Run(o)) = p(&["--cache", "/r.cache", "--", "sh"]) else { panic!() };
        assert_eq!((o.cache, o.memory), (Some(PathBuf::from("/r.cache")), None));
    }

    #[test]
    fn usage_errors() {
        for (args, needle) in [
            (&["--memory", "2 gigs", "--", "x"][..], r#"--memory "2 gigs" is invalid (unknown unit "gigs")"#),
            (&["--memory", "4g"], "no command to run"),
            (&["--memory", "4g", "--"], "no command to run"),
            (&["--", "x"], "nothing to limit"),
            (&["--sm", "101", "--", "x"], r#"--sm "101" is invalid (above 100)"#),
            (&["--device", "16", "--sm", "1", "--", "x"], r#"--device "16" is invalid (out of range)"#),
            (&["--memory", "1g", "--memory", "2g", "--", "x"], "--memory given more than once"),
            (&["--frob", "--", "x"], r#"unknown option "--frob" for `vgpu run`"#),
            (&["--lib", "", "--memory", "1g", "--", "x"], "--lib needs a path"),
            (&["--memory"], "--memory needs a value"),
            (&["--memory", "2048", "--", "x"], r#"--memory "2048" is invalid (2048 bytes is below the smallest cap"#),
        ] {
            match p(args) {
                Err(CliError::Usage { msg, cmd }) => {
                    assert!(msg.contains(needle), "{args:?}: {msg}");
                    assert_eq!(cmd, Some("run"));
                }
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn preload_goes_first_once() {
        let lib = Path::new("/opt/libvgpu.so");
        assert_eq!(preload_list(lib, None), "/opt/libvgpu.so");
        assert_eq!(preload_list(lib, Some(OsStr::new(""))), "/opt/libvgpu.so");
        assert_eq!(preload_list(lib, Some(OsStr::new("/a.so /opt/libvgpu.so:/b.so"))), "/opt/libvgpu.so:/a.so:/b.so");
    }

    #[test]
    fn limit_variables_are_recognised() {
        for v in ["CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_MEMORY_LIMIT_3", "CUDA_DEVICE_SM_LIMIT_0"] {
            assert!(is_limit_var(OsStr::new(v)), "{v}");
        }
        assert!(!is_limit_var(OsStr::new("CUDA_DEVICE_MEMORY_SHARED_CACHE")));
        assert!(!is_limit_var(OsStr::new("CUDA_VISIBLE_DEVICES")));
    }
}
