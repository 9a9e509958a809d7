//! Logs: stderr only, one line each, `libvgpu[pid] LEVEL: message`. Never stdout — the host
//! application owns it. Our `tracing` dispatcher is private to this library's copy of the crate,
//! so it cannot clash with a host application that uses tracing itself.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use vgpu_core::config::LogLevel;

struct Line;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(w, "libvgpu[{}] {}: ", std::process::id(), event.metadata().level())?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

pub fn init(level: LogLevel) {
    let max = match level {
        LogLevel::Error => Level::ERROR,
        LogLevel::Warn => Level::WARN,
        LogLevel::Info => Level::INFO,
        LogLevel::Debug => Level::DEBUG,
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(max)
        .with_ansi(false)
        .event_format(Line)
        .try_init();
}

/// One line written straight to fd 2, for the process's exit: by then thread-locals (which the
/// tracing dispatcher uses) may be destroyed. `level` as in the configuration.
pub fn at_exit_line(configured: LogLevel, level: LogLevel, message: &str) {
    if level > configured {
        return;
    }
    let name = match level {
        LogLevel::Error => "ERROR",
        LogLevel::Warn => "WARN",
        LogLevel::Info => "INFO",
        LogLevel::Debug => "DEBUG",
    };
    let line = format!("libvgpu[{}] {name}: {message}\n", std::process::id());
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        // SAFETY: writing our own buffer to fd 2; a failure (closed stderr) is ignored.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            return;
        }
        rest = &rest[n as usize..];
    }
}
