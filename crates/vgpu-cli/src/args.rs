//! The command line, read with lexopt (one small, dependency-free crate: the `vgpu` binary stays
//! lean; see crates/vgpu-cli/README.md for the measurement), our own messages on top: every error
//! names the bad value, why, and what is accepted — the same style as the library's variables.

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;
use vgpu_core::MAX_DEVICES;
use vgpu_core::config::{DEFAULT_SHARED_CACHE, SHARED_CACHE};
use vgpu_core::size::{ACCEPTED_SIZES, parse_cap};

use crate::CliError;

pub const ACCEPTED_MEMORY: &str = "0 or unlimited (no cap), or ";
pub const ACCEPTED_PERCENT: &str = "a whole percentage 0-100 (0, 100 or unlimited = no limit), e.g. 30 or 30%";
pub const ACCEPTED_DEVICE: &str = "a device index 0-15";

/// A limit `vgpu set` writes: a value (0 = none), or `env`: hand it back to the processes'
/// environment (the next process to find the region unheld sets it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    To(u64),
    Env,
}

#[derive(Debug)]
pub enum Command {
    Help(Option<&'static str>),
    Version,
    Status { cache: PathBuf, json: bool },
    Scan { dir: PathBuf, json: bool },
    Set { cache: PathBuf, devices: Vec<usize>, memory: Option<Setting>, sm: Option<Setting> },
    Reap { cache: PathBuf },
    Run(crate::run::RunOpts),
    Exporter(crate::exporter::ExporterOpts),
}

pub const MAIN_HELP: &str = "\
vgpu — inspect and adjust a container's libvgpu region (memory caps, SM shares, processes)

Usage: vgpu <command> [options]   (vgpu help <command> for its options)

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

A limit set here stays after every process has exited: the next process keeps it whatever its
own environment says. `--memory env` / `--sm env` hand it back to the environment: the next
process that starts while none is running sets it (the value stays until then).
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
/// (they need not be UTF-8); every option value elsewhere must be valid UTF-8.
pub fn parse_os(args: &[OsString]) -> Result<Command, CliError> {
    let mut p = lexopt::Parser::from_args(args.iter().cloned());
    let name = match p.next().map_err(lx(None))? {
        None => return Err(CliError::NoCommand),
        Some(Short('h') | Long("help")) => return Ok(Command::Help(None)),
        Some(Short('V') | Long("version")) => return Ok(Command::Version),
        Some(Value(v)) => utf8(None, "command", v)?,
        Some(other) => return Err(lx(None)(other.unexpected())),
    };
    match name.as_str() {
        "help" => {
            let topic = match p.next().map_err(lx(None))? {
                None => None,
                Some(Value(v)) => {
                    let c = utf8(None, "command", v)?;
                    Some(command_name(&c).ok_or_else(|| unknown_command(&c))?)
                }
                Some(other) => return Err(lx(None)(other.unexpected())),
            };
            match p.next().map_err(lx(None))? {
                None => Ok(Command::Help(topic)),
                Some(other) => Err(lx(None)(other.unexpected())),
            }
        }
        "status" | "set" | "reap" => parse_command(command_name(&name).unwrap_or("status"), &mut p),
        "run" => crate::run::parse(&mut p),
        "exporter" => crate::exporter::parse(&mut p),
        other => Err(unknown_command(other)),
    }
}

/// Parses `argv[1..]` (tests; UTF-8 only).
#[cfg(test)]
pub fn parse(args: &[String]) -> Result<Command, CliError> {
    parse_os(&args.iter().map(OsString::from).collect::<Vec<_>>())
}

fn command_name(c: &str) -> Option<&'static str> {
    ["status", "set", "reap", "run", "exporter"].into_iter().find(|&k| k == c)
}

fn unknown_command(c: &str) -> CliError {
    CliError::usage(None, format!("unknown command {c:?}; accepted: status, set, reap, run, exporter, help"))
}

/// lexopt's errors in our words, naming the command.
pub fn lx(cmd: Option<&'static str>) -> impl Fn(lexopt::Error) -> CliError {
    move |e| {
        let of = cmd.map_or(String::new(), |c| format!(" for `vgpu {c}`"));
        let msg = match e {
            lexopt::Error::MissingValue { option: Some(o) } => format!("{o} needs a value"),
            lexopt::Error::UnexpectedOption(o) => format!("unknown option {o:?}{of}"),
            lexopt::Error::UnexpectedArgument(a) => format!("unexpected argument {a:?}{of}"),
            lexopt::Error::UnexpectedValue { option, .. } => format!("{option} takes no value"),
            e => e.to_string(),
        };
        CliError::usage(cmd, msg)
    }
}

/// An option's value as UTF-8 (paths and sizes are read as text everywhere but `run`'s command).
pub fn utf8(cmd: Option<&'static str>, what: &str, v: OsString) -> Result<String, CliError> {
    v.into_string().map_err(|v| CliError::usage(cmd, format!("{what} {v:?} is not valid UTF-8")))
}

/// The value of the option just read.
pub fn value(p: &mut lexopt::Parser, cmd: &'static str, flag: &str) -> Result<String, CliError> {
    let v = p.value().map_err(lx(Some(cmd)))?;
    utf8(Some(cmd), flag, v)
}

/// `status`, `set` and `reap`: which options are allowed depends on the command.
fn parse_command(cmd: &'static str, p: &mut lexopt::Parser) -> Result<Command, CliError> {
    let (mut cache, mut scan, mut json) = (None, None, false);
    let (mut devices, mut memory, mut sm) = (Vec::new(), None, None);
    while let Some(arg) = p.next().map_err(lx(Some(cmd)))? {
        match (cmd, arg) {
            (_, Short('h') | Long("help")) => return Ok(Command::Help(Some(cmd))),
            (_, Long("cache")) => cache = Some(once(cmd, "--cache", cache, PathBuf::from(value(p, cmd, "--cache")?))?),
            ("status", Long("json")) => json = true,
            ("status", Long("scan")) => {
                scan = Some(once(cmd, "--scan", scan, PathBuf::from(value(p, cmd, "--scan")?))?)
            }
            ("set", Long("device")) => devices.push(parse_device(cmd, &value(p, cmd, "--device")?)?),
            ("set", Long("memory")) => {
                let v = value(p, cmd, "--memory")?;
                let setting = if is_env(&v) { Setting::Env } else { Setting::To(parse_memory(cmd, &v)?) };
                memory = Some(once(cmd, "--memory", memory, setting)?);
            }
            ("set", Long("sm")) => {
                let v = value(p, cmd, "--sm")?;
                let setting = if is_env(&v) { Setting::Env } else { Setting::To(parse_percent(cmd, &v)?) };
                sm = Some(once(cmd, "--sm", sm, setting)?);
            }
            (_, other) => return Err(lx(Some(cmd))(other.unexpected())),
        }
    }
    match cmd {
        "status" => match (scan, cache) {
            (Some(_), Some(_)) => Err(CliError::usage(Some(cmd), "--scan and --cache cannot be combined".into())),
            (Some(dir), None) => Ok(Command::Scan { dir, json }),
            (None, cache) => Ok(Command::Status { cache: cache.unwrap_or_else(default_cache), json }),
        },
        "set" if memory.is_none() && sm.is_none() => Err(CliError::usage(
            Some(cmd),
            "nothing to set: give --memory SIZE and/or --sm PERCENT (or env to hand a limit back)".into(),
        )),
        "set" => {
            devices.sort_unstable();
            devices.dedup();
            Ok(Command::Set { cache: cache.unwrap_or_else(default_cache), devices, memory, sm })
        }
        _ => Ok(Command::Reap { cache: cache.unwrap_or_else(default_cache) }),
    }
}

fn is_env(v: &str) -> bool {
    v.trim().eq_ignore_ascii_case("env")
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
        assert_eq!((devices, memory, sm), (vec![0, 1], Some(Setting::To(3 << 29)), Some(Setting::To(30))));
        let Ok(Command::Set { memory, sm, .. }) = p(&["set", "--memory", "unlimited"]) else { panic!() };
        assert_eq!((memory, sm), (Some(Setting::To(0)), None));
        let Ok(Command::Set { memory, sm, .. }) = p(&["set", "--memory", "env", "--sm=ENV"]) else { panic!() };
        assert_eq!((memory, sm), (Some(Setting::Env), Some(Setting::Env)));
    }

    #[test]
    fn help_version_and_no_command() {
        assert!(matches!(p(&[]), Err(CliError::NoCommand)));
        assert!(matches!(p(&["--help"]), Ok(Command::Help(None))));
        assert!(matches!(p(&["-V"]), Ok(Command::Version)));
        assert!(matches!(p(&["help"]), Ok(Command::Help(None))));
        for c in ["status", "set", "reap", "run", "exporter"] {
            assert!(matches!(p(&["help", c]), Ok(Command::Help(Some(n))) if n == c), "help {c}");
            assert!(matches!(p(&[c, "--help"]), Ok(Command::Help(Some(n))) if n == c), "{c} --help");
        }
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
            (&["--foo"], "unknown option \"--foo\""),
            (&["help", "frobnicate"], "unknown command \"frobnicate\""),
            (&["status", "--json=yes"], "--json takes no value"),
            (&["status", "extra"], "unexpected argument \"extra\" for `vgpu status`"),
            (&["status", "--scan", "/x", "--cache", "/y"], "cannot be combined"),
        ] {
            match p(args) {
                Err(CliError::Usage { msg, .. }) => assert!(msg.contains(needle), "{msg}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }
}
