//! `vgpu`: the operator's view of a container's libvgpu region — what is capped, what is used,
//! by whom — and the levers to change caps live and reclaim dead processes' slots.
//!
//! It only ever opens existing regions (`Region::open_existing`): creating one here would pin
//! limits before the container's first process sets them. It links only vgpu-region and
//! vgpu-core, never the preloaded library, so it defines no `dlsym` or driver symbols.

mod args;
mod exporter;
mod history;
mod metrics;
mod ops;
mod render;
mod run;
mod snapshot;

use std::io::Write;
use std::process::ExitCode;

use args::Command;

/// Exit 2 for what the user typed, 1 for what we found (missing, foreign or corrupt region…).
#[derive(Debug)]
pub enum CliError {
    /// Bare `vgpu`: the help goes to stderr and the exit status is 2 (nothing was done).
    NoCommand,
    Usage {
        cmd: Option<&'static str>,
        msg: String,
    },
    Runtime(String),
}

impl CliError {
    pub fn usage(cmd: Option<&'static str>, msg: String) -> Self {
        CliError::Usage { cmd, msg }
    }
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let result = args::parse_os(&argv).and_then(|cmd| match cmd {
        // The command's own exit status, passed through.
        Command::Run(opts) => run::run(opts).map(ExitCode::from),
        cmd => run(cmd).map(|out| emit(&out)),
    });
    match result {
        Ok(code) => code,
        Err(CliError::NoCommand) => {
            eprint!("vgpu: no command given\n\n{}", args::MAIN_HELP);
            ExitCode::from(2)
        }
        Err(CliError::Usage { cmd, msg }) => {
            let hint = cmd.map_or("vgpu --help".to_string(), |c| format!("vgpu {c} --help"));
            eprintln!("vgpu: {msg}\nTry '{hint}'.");
            ExitCode::from(2)
        }
        Err(CliError::Runtime(msg)) => {
            eprintln!("vgpu: {msg}");
            ExitCode::from(1)
        }
    }
}

/// Runs a command and returns its stdout; warnings go to stderr as they happen.
fn run(cmd: Command) -> Result<String, CliError> {
    match cmd {
        Command::Help(None) => Ok(args::MAIN_HELP.to_string()),
        Command::Help(Some("set")) => Ok(args::SET_HELP.to_string()),
        Command::Help(Some("reap")) => Ok(args::REAP_HELP.to_string()),
        Command::Help(Some("run")) => Ok(args::RUN_HELP.to_string()),
        Command::Help(Some("exporter")) => Ok(args::EXPORTER_HELP.to_string()),
        Command::Help(Some(_)) => Ok(args::STATUS_HELP.to_string()),
        Command::Version => Ok(format!(
            "vgpu {} (region HAMi v{}.{}, libvgpu extension v{})\n",
            env!("CARGO_PKG_VERSION"),
            vgpu_region::layout::MAJOR,
            vgpu_region::layout::MINOR,
            vgpu_region::layout::EXTENSION_VERSION
        )),
        Command::Status { cache, json } => ops::status(&cache, json),
        Command::Scan { dir, json } => ops::scan(&dir, json),
        Command::Set { cache, devices, memory, sm } => ops::set(&cache, &devices, memory, sm),
        Command::Reap { cache } => ops::reap(&cache),
        Command::Exporter(opts) => exporter::serve(opts),
        Command::Run(_) => unreachable!("handled in main"),
    }
}

/// Writes the whole output at once; a closed pipe (`vgpu status | head`) is not an error.
fn emit(out: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("vgpu: writing output: {e}");
            ExitCode::from(1)
        }
        _ => ExitCode::SUCCESS,
    }
}
