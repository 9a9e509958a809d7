//! A small hand-written argument parser: four commands with a handful of flags do not justify
//! clap's dependency tree, and writing it out keeps every error message under our control
//! (the bad value, why, and what is accepted — the same style as the library's variables).

use std::ffi::OsString;
use std::path::PathBuf;

use vgpu_core::MAX_DEVICES;
use vgpu_core::config::{DEFAULT_SHARED_CACHE, SHARED_CACHE};
use vgpu_core::size::{ACCEPTED_SIZES, parse_cap};

use crate::CliError;

pub const ACCEPTED_MEMORY: &str = "0 or unlimited (no cap), or ";
pub const ACCEPTED_PERCENT: &str = "a whole percentage 0-100 (0, 100 or unlimited = no limit), e.g. 30 or 30%";
pub const ACCEPTED_DEVICE: &str = "a device index 0-15";

#[derive(Debug)]
pub enum Command {
    Help(Option<&'static str>),
    Version,
    Status { cache: PathBuf, json: bool },
    Scan { dir: PathBuf, json: bool },
    Set { cache: PathBuf, devices: Vec<usize>, memory: Option<u64>, sm: Option<u64> },
    Reap { cache: PathBuf },
    Run(crate::run::RunOpts),
    Exporter(crate::exporter::ExporterOpts),
}

pub const MAIN_HELP: &str = "\
vgpu — inspect and adjust a container's libvgpu region (memory caps, SM shares, processes)

Usage: vgpu <command> [options]

Commands:
  status   show devices, caps, usage and processes of one region (or all regions under a dir)
  set      change memory caps / SM shares live, without restarting anything
  reap     reclaim the slots (and memory accounting) of processes that died
  run      run a command under a memory cap / SM share (sets the variables and LD_PRELOAD)
  exporter serve a live dashboard, Prometheus metrics and the status JSON of one region or a
           directory of them
  help     show help for a command

Options:
  -h, --help     show this help
  -V, --version  show the version

The region is --cache PATH, else $CUDA_DEVICE_MEMORY_SHARED_CACHE, else /tmp/cudevshr.cache.
Exit status: 0 ok, 1 runtime error (missing/foreign/corrupt region...), 2 usage error.
";

pub const STATUS_HELP: &str = "\
Usage: vgpu status [--cache PATH] [--json]
       vgpu status --scan DIR [--json]

Shows devices (memory cap, SM limit, usage, cap denials) and process slots of a region.

Options:
  --cache PATH  region file (default: $CUDA_DEVICE_MEMORY_SHARED_CACHE or /tmp/cudevshr.cache)
  --scan DIR    node view: every libvgpu region in DIR and in its direct subdirectories;
                other files are listed as skipped with the reason
  --json        machine-readable output (schema: crates/vgpu-cli/README.md, schema_version 1)
";

pub const SET_HELP: &str = "\
Usage: vgpu set [--cache PATH] [--device I]... (--memory SIZE | --sm PERCENT)...

Changes limits live; running processes apply them on their next allocation or launch.

Options:
  --cache PATH     region file (default: $CUDA_DEVICE_MEMORY_SHARED_CACHE or /tmp/cudevshr.cache)
  --device I       device index 0-15, may be repeated (default: every device of the region)
  --memory SIZE    memory cap, binary units: 4g, 4096m, 4GiB, 1.5g; 0 or unlimited = no cap
  --sm PERCENT     SM share 0-100 (30 or 30%); 0, 100 or unlimited = no limit

A cap below current usage is allowed: existing memory stays allocated, new allocations fail
until usage drops below the cap.
";

pub const REAP_HELP: &str = "\
Usage: vgpu reap [--cache PATH]

Zeroes the slots of processes that died without releasing them (their memory then stops
counting against the cap) and prints what was reclaimed.

Options:
  --cache PATH  region file (default: $CUDA_DEVICE_MEMORY_SHARED_CACHE or /tmp/cudevshr.cache)
";

pub const RUN_HELP: &str = "\
Usage: vgpu run [--memory SIZE] [--sm PERCENT] [--device I]... [--cache PATH] [--lib PATH] -- CMD [ARG]...

Runs CMD with libvgpu preloaded and the limits set: CUDA_DEVICE_MEMORY_LIMIT and
CUDA_DEVICE_SM_LIMIT (or their _<I> forms with --device), LD_PRELOAD (libvgpu.so first, any
existing entries kept after it) and CUDA_DEVICE_MEMORY_SHARED_CACHE. Limit variables inherited
from the environment are dropped: the command line is the whole configuration.

Options:
  --memory SIZE  memory cap, binary units: 4g, 4096m, 4GiB, 1.5g; 0 or unlimited = no cap
  --sm PERCENT   SM share 0-100 (30 or 30%); 0, 100 or unlimited = no limit. Enforced by the
                 compute limiter: launches wait while the container's GPU-time budget is spent
  --device I     apply the limits to CUDA device I only (0-15, as CMD sees it); may be repeated
  --cache PATH   use (or create) this region file, shared with other processes given the same
                 path, and keep it afterwards; default: a private region in a fresh temporary
                 directory, removed when CMD exits (CMD and its children share it)
  --lib PATH     libvgpu.so to preload; default: $LIBVGPU_LIB, else libvgpu.so next to the vgpu
                 binary, else ../lib/libvgpu.so relative to it, else /usr/local/vgpu/libvgpu.so

At least one of --memory, --sm or --cache is required. The exit status is CMD's (128+N if it
was killed by signal N; 127 if it was not found, 126 if it could not be executed); vgpu's own
errors exit 1 (runtime) or 2 (usage). SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2
sent to vgpu are passed on to CMD.
";

pub const EXPORTER_HELP: &str = "\
Usage: vgpu exporter [--listen ADDR:PORT] [--allow-remote] [--cache PATH | --scan DIR]
                     [--sample-interval SECONDS]

Serves, over HTTP/1.1:
  /             a live dashboard (one self-contained page): per GPU, each container's memory
                used vs cap (contexts and dead processes shown apart), SM limit vs the share
                achieved over the last 10 minutes, throttled time, OOM denials, processes
  /metrics      Prometheus text format: per region and device memory used/cap, SM limit,
                contexts, allocation denials (cap vs driver), GPU and throttled time,
                processes alive/dead
  /api/status   the JSON of `vgpu status --json` (with --scan: `vgpu status --scan DIR --json`)
  /api/history  the last 10 minutes per region and device, one point per sample: memory used
                and contexts, achieved SM share and throttled time in % of the interval
Regions are re-read on every request and sampled for the history; nothing is written.

Options:
  --listen ADDR:PORT         where to listen (default 127.0.0.1:9464; port 0 picks a free port)
  --allow-remote             allow a non-loopback --listen address (there is no authentication
                             or TLS, and the metrics name containers, paths and PIDs)
  --cache PATH               one region (default: $CUDA_DEVICE_MEMORY_SHARED_CACHE or
                             /tmp/cudevshr.cache)
  --scan DIR                 every region in DIR and its direct subdirectories (HAMi:
                             /usr/local/vgpu/containers, one directory per container)
  --sample-interval SECONDS  how often the history samples the regions: 0.5 to 60 s
                             (2, 2s, 500ms; default 2)
";

/// Parses `argv[1..]` as the OS gave it: `vgpu run` keeps its command's arguments as they are
/// (they need not be UTF-8); every other command must be valid UTF-8.
pub fn parse_os(args: &[OsString]) -> Result<Command, CliError> {
    if args.first().is_some_and(|a| a == "run") {
        return crate::run::parse(&args[1..]);
    }
    let strings = args
        .iter()
        .map(|a| {
            a.clone().into_string().map_err(|a| CliError::usage(None, format!("argument {a:?} is not valid UTF-8")))
        })
        .collect::<Result<Vec<String>, CliError>>()?;
    parse(&strings)
}

/// Parses `argv[1..]`.
pub fn parse(args: &[String]) -> Result<Command, CliError> {
    let Some((cmd, rest)) = args.split_first() else { return Ok(Command::Help(None)) };
    match cmd.as_str() {
        "-h" | "--help" => Ok(Command::Help(None)),
        "-V" | "--version" => Ok(Command::Version),
        "help" => match rest.first().map(String::as_str) {
            None => Ok(Command::Help(None)),
            Some(c) => Ok(Command::Help(Some(command_name(c).ok_or_else(|| unknown_command(c))?))),
        },
        "status" | "set" | "reap" => parse_command(command_name(cmd).unwrap_or("status"), rest),
        "run" => crate::run::parse(&rest.iter().map(OsString::from).collect::<Vec<_>>()),
        "exporter" => crate::exporter::parse(rest),
        other => Err(unknown_command(other)),
    }
}

fn command_name(c: &str) -> Option<&'static str> {
    ["status", "set", "reap", "run", "exporter"].into_iter().find(|&k| k == c)
}

fn unknown_command(c: &str) -> CliError {
    CliError::usage(None, format!("unknown command {c:?}; accepted: status, set, reap, run, exporter, help"))
}

/// `--flag=value` → (`--flag`, Some(value)); anything else → (arg, None).
pub fn split_flag(arg: &str) -> (&str, Option<String>) {
    match arg.split_once('=') {
        Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
        _ => (arg, None),
    }
}

/// Per-command flags; which are allowed depends on the command.
fn parse_command(cmd: &'static str, args: &[String]) -> Result<Command, CliError> {
    let (mut cache, mut scan, mut json) = (None, None, false);
    let (mut devices, mut memory, mut sm) = (Vec::new(), None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // `--flag=value` and `--flag value` are both accepted.
        let (flag, inline) = split_flag(arg);
        let allowed = match cmd {
            "status" => &["--cache", "--scan", "--json", "--help", "-h"][..],
            "set" => &["--cache", "--device", "--memory", "--sm", "--help", "-h"][..],
            _ => &["--cache", "--help", "-h"][..],
        };
        if !allowed.contains(&flag) {
            let what = if flag.starts_with('-') { "unknown option" } else { "unexpected argument" };
            return Err(CliError::usage(Some(cmd), format!("{what} {arg:?} for `vgpu {cmd}`")));
        }
        if matches!(flag, "--help" | "-h") {
            return Ok(Command::Help(Some(cmd)));
        }
        if flag == "--json" {
            json = true;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or_else(|| CliError::usage(Some(cmd), format!("{flag} needs a value")))?,
        };
        match flag {
            "--cache" => cache = Some(once(cmd, flag, cache, PathBuf::from(value))?),
            "--scan" => scan = Some(once(cmd, flag, scan, PathBuf::from(value))?),
            "--device" => devices.push(parse_device(cmd, &value)?),
            "--memory" => memory = Some(once(cmd, flag, memory, parse_memory(cmd, &value)?)?),
            _ => sm = Some(once(cmd, flag, sm, parse_percent(cmd, &value)?)?),
        }
    }
    match cmd {
        "status" => match (scan, cache) {
            (Some(_), Some(_)) => Err(CliError::usage(Some(cmd), "--scan and --cache cannot be combined".into())),
            (Some(dir), None) => Ok(Command::Scan { dir, json }),
            (None, cache) => Ok(Command::Status { cache: cache.unwrap_or_else(default_cache), json }),
        },
        "set" if memory.is_none() && sm.is_none() => {
            Err(CliError::usage(Some(cmd), "nothing to set: give --memory SIZE and/or --sm PERCENT".into()))
        }
        "set" => {
            devices.sort_unstable();
            devices.dedup();
            Ok(Command::Set { cache: cache.unwrap_or_else(default_cache), devices, memory, sm })
        }
        _ => Ok(Command::Reap { cache: cache.unwrap_or_else(default_cache) }),
    }
}

/// A flag given twice is an error rather than "last one wins": `--memory 4g --memory 6g` is
/// more likely a mistake than an intent.
pub fn once<T>(cmd: &'static str, flag: &str, old: Option<T>, new: T) -> Result<T, CliError> {
    match old {
        Some(_) => Err(CliError::usage(Some(cmd), format!("{flag} given more than once"))),
        None => Ok(new),
    }
}

pub fn default_cache() -> PathBuf {
    match std::env::var_os(SHARED_CACHE) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_SHARED_CACHE),
    }
}

pub fn invalid(cmd: &'static str, flag: &str, value: &str, why: &str, accepted: &str) -> CliError {
    CliError::usage(Some(cmd), format!("{flag} {value:?} is invalid ({why}); accepted: {accepted}"))
}

/// Bytes; 0 = no cap. Sizes go through vgpu-core's strict parser (binary units, never "1 byte"
/// for `1GiB` as HAMi-core would), the same one that reads CUDA_DEVICE_MEMORY_LIMIT.
pub fn parse_memory(cmd: &'static str, value: &str) -> Result<u64, CliError> {
    if value.trim().eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    // Sizes that round to nothing or fit no context (`2048`: a forgotten unit) are refused.
    parse_cap(value)
        .map(|cap| cap.unwrap_or(0))
        .map_err(|e| invalid(cmd, "--memory", value, &e.to_string(), &format!("{ACCEPTED_MEMORY}{ACCEPTED_SIZES}")))
}

/// Percent as stored in `sm_limit`; "unlimited" is stored as 0, HAMi's "no limit".
pub fn parse_percent(cmd: &'static str, value: &str) -> Result<u64, CliError> {
    let text = value.trim();
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    match text.strip_suffix('%').unwrap_or(text).parse::<u64>() {
        Ok(p) if p <= 100 => Ok(p),
        Ok(_) => Err(invalid(cmd, "--sm", value, "above 100", ACCEPTED_PERCENT)),
        Err(_) => Err(invalid(cmd, "--sm", value, "not a whole number", ACCEPTED_PERCENT)),
    }
}

pub fn parse_device(cmd: &'static str, value: &str) -> Result<usize, CliError> {
    match value.trim().parse::<usize>() {
        Ok(i) if i < MAX_DEVICES => Ok(i),
        Ok(_) => Err(invalid(cmd, "--device", value, "out of range", ACCEPTED_DEVICE)),
        Err(_) => Err(invalid(cmd, "--device", value, "not a whole number", ACCEPTED_DEVICE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, CliError> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn set_parses_sizes_percent_and_devices() {
        let Ok(Command::Set { devices, memory, sm, .. }) =
            p(&["set", "--device", "1", "--device=0", "--memory", "1.5GiB", "--sm", "30%"])
        else {
            panic!()
        };
        assert_eq!((devices, memory, sm), (vec![0, 1], Some(3 << 29), Some(30)));
        let Ok(Command::Set { memory, sm, .. }) = p(&["set", "--memory", "unlimited"]) else { panic!() };
        assert_eq!((memory, sm), (Some(0), None));
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_value() {
        for (args, needle) in [
            (&["set", "--memory", "2 gigs"][..], "--memory \"2 gigs\" is invalid (unknown unit \"gigs\")"),
            (&["set", "--sm", "150"], "--sm \"150\" is invalid (above 100)"),
            (&["set", "--device", "16", "--sm", "1"], "--device \"16\" is invalid (out of range)"),
            (&["set"], "nothing to set"),
            (&["set", "--memory"], "--memory needs a value"),
            (&["set", "--memory", "2048"], "--memory \"2048\" is invalid (2048 bytes is below the smallest cap"),
            (&["set", "--memory", "0.0001k"], "--memory \"0.0001k\" is invalid (rounds to 0 bytes"),
            (&["reap", "--json"], "unknown option \"--json\""),
            (&["frobnicate"], "unknown command"),
            (&["status", "--scan", "/x", "--cache", "/y"], "cannot be combined"),
        ] {
            match p(args) {
                Err(CliError::Usage { msg, .. }) => assert!(msg.contains(needle), "{msg}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }
}
