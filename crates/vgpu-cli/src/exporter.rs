//! `vgpu exporter`: `/metrics` (Prometheus text), `/api/status` (the `vgpu status --json`
//! document), `/api/history` and the dashboard page `/` over plain HTTP/1.1 — std::net, one
//! short-lived thread per connection, no runtime. Every request re-reads the regions (a few
//! atomic loads per slot), so what it serves never goes stale; the one piece of state is the
//! history a sampler thread keeps for rates and charts. Nothing is ever written to a region.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::CliError;
use crate::args::{default_cache, invalid, lx, once, value};
use crate::history::{self, History};
use crate::metrics::{self, Located};
use crate::ops;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
const CMD: &str = "exporter";
/// Connections served at once; more get 503 (a scrape is a few milliseconds).
const MAX_CONNECTIONS: usize = 64;
const MAX_REQUEST: usize = 16 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole request head must arrive within this, however it is split into reads: a client
/// that trickles a byte at a time cannot hold a connection for longer.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// Connections still reading their request head, oldest first. When every connection is taken,
/// a new one evicts the oldest of these: a scrape sends its head at once, so clients that hold
/// connections without finishing a request (slow or hostile) lose their place to it.
#[derive(Default)]
struct Pending {
    next: u64,
    conns: Vec<(u64, TcpStream)>,
}

impl Pending {
    fn add(&mut self, stream: &TcpStream) -> Option<u64> {
        let clone = stream.try_clone().ok()?;
        self.next += 1;
        self.conns.push((self.next, clone));
        Some(self.next)
    }

    fn remove(&mut self, id: u64) {
        self.conns.retain(|(i, _)| *i != id);
    }

    /// Shuts the oldest pending connection down (its thread then ends); false if none.
    fn evict_oldest(&mut self) -> bool {
        if self.conns.is_empty() {
            return false;
        }
        let (_, s) = self.conns.remove(0);
        let _ = s.shutdown(std::net::Shutdown::Both);
        true
    }
}
/// The dashboard: one self-contained page (no framework, nothing fetched from elsewhere), so it
/// works on an air-gapped node.
const DASHBOARD: &str = include_str!("dashboard.html");

#[derive(Debug, Clone)]
pub enum Source {
    Cache(PathBuf),
    Scan(PathBuf),
}

#[derive(Debug)]
pub struct ExporterOpts {
    pub listen: String,
    pub allow_remote: bool,
    pub source: Source,
    pub sample_interval: Duration,
}

pub fn parse(p: &mut lexopt::Parser) -> Result<crate::args::Command, CliError> {
    use lexopt::prelude::*;
    let (mut listen, mut cache, mut scan, mut allow_remote) = (None, None, None, false);
    let mut interval = None;
    while let Some(arg) = p.next().map_err(lx(Some(CMD)))? {
        match arg {
            Short('h') | Long("help") => return Ok(crate::args::Command::Help(Some(CMD))),
            Long("allow-remote") => allow_remote = true,
            Long("listen") => listen = Some(once(CMD, "--listen", listen, value(p, CMD, "--listen")?)?),
            Long("cache") => cache = Some(once(CMD, "--cache", cache, PathBuf::from(value(p, CMD, "--cache")?))?),
            Long("scan") => scan = Some(once(CMD, "--scan", scan, PathBuf::from(value(p, CMD, "--scan")?))?),
            Long("sample-interval") => {
                let v = parse_interval(&value(p, CMD, "--sample-interval")?)?;
                interval = Some(once(CMD, "--sample-interval", interval, v)?);
            }
            other => return Err(lx(Some(CMD))(other.unexpected())),
        }
    }
    let source = match (scan, cache) {
        (Some(_), Some(_)) => return Err(CliError::usage(Some(CMD), "--scan and --cache cannot be combined".into())),
        (Some(dir), None) => Source::Scan(dir),
        (None, cache) => Source::Cache(cache.unwrap_or_else(default_cache)),
    };
    let listen = listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    check_listen(&listen, allow_remote)?;
    let sample_interval = interval.unwrap_or(history::DEFAULT_INTERVAL);
    Ok(crate::args::Command::Exporter(ExporterOpts { listen, allow_remote, source, sample_interval }))
}

const ACCEPTED_INTERVAL: &str = "seconds from 0.5 to 60, optionally with a unit: 2, 2s, 0.5, 500ms";

/// `2`, `2s`, `0.5`, `500ms`.
fn parse_interval(value: &str) -> Result<Duration, CliError> {
    let text = value.trim();
    let (number, scale) = match text.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (text.strip_suffix('s').unwrap_or(text), 1.0),
    };
    let bad = |why: &str| invalid(CMD, "--sample-interval", value, why, ACCEPTED_INTERVAL);
    let seconds = number.trim().parse::<f64>().map_err(|_| bad("not a number"))? * scale;
    if !seconds.is_finite() {
        return Err(bad("not a number"));
    }
    if seconds < history::MIN_INTERVAL.as_secs_f64() {
        return Err(bad("below 0.5 s"));
    }
    if seconds > history::MAX_INTERVAL.as_secs_f64() {
        return Err(bad("above 60 s"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Loopback only unless `--allow-remote`: the endpoint has no authentication or TLS, and what
/// it serves names containers, file paths and PIDs.
fn check_listen(listen: &str, allow_remote: bool) -> Result<Vec<SocketAddr>, CliError> {
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| {
            CliError::usage(
                Some(CMD),
                format!(
                    "--listen {listen:?} is invalid ({e}); accepted: ADDRESS:PORT, e.g. 127.0.0.1:9464 or [::1]:9464"
                ),
            )
        })?
        .collect();
    if addrs.is_empty() {
        return Err(CliError::usage(Some(CMD), format!("--listen {listen:?} resolves to no address")));
    }
    if let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()).filter(|_| !allow_remote) {
        return Err(CliError::usage(
            Some(CMD),
            format!(
                "--listen {listen:?} is not a loopback address ({}): the exporter has no authentication \
                 or TLS and its metrics name containers, region paths and PIDs; pass --allow-remote to \
                 serve on it anyway (e.g. a DaemonSet scraped by Prometheus, behind a NetworkPolicy)",
                remote.ip()
            ),
        ));
    }
    Ok(addrs)
}

/// What one request reads: the regions, as the exporter's source says, and the history.
struct Reader {
    source: Source,
    /// The last error logged for a `--cache` region, so a missing file is logged once, not on
    /// every scrape.
    last_error: Mutex<Option<String>>,
    history: Mutex<History>,
    /// The sampler's monotonic clock starts here.
    started: Instant,
}

impl Reader {
    /// One reading of every region into the history (read before taking the lock, so a
    /// request for the history never waits on the regions).
    fn sample(&self) {
        let (regions, scan_dir) = match &self.source {
            Source::Cache(path) => (ops::collect_status(path).map(|s| vec![s]), None),
            Source::Scan(dir) => (ops::collect_scan(dir).map(|s| s.regions), Some(dir.as_path())),
        };
        let unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let at_ns = self.started.elapsed().as_nanos() as u64;
        match regions {
            Ok(regions) => {
                self.note(None);
                let located: Vec<Located> = regions.iter().map(|s| Located::new(s, scan_dir)).collect();
                self.history.lock().unwrap_or_else(|p| p.into_inner()).record(&located, unix_ms as u64, at_ns);
            }
            Err(e) => self.note(Some(message(&e))),
        }
    }

    fn history_json(&self) -> String {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::to_string(&*history).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
    }

    fn metrics(&self) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match &self.source {
            Source::Cache(path) => match ops::collect_status(path) {
                Ok(s) => {
                    self.note(None);
                    metrics::render(&[Located::new(&s, None)], 0, now)
                }
                Err(e) => {
                    self.note(Some(message(&e)));
                    metrics::render(&[], 1, now)
                }
            },
            Source::Scan(dir) => match ops::collect_scan(dir) {
                Ok(scan) => {
                    self.note(None);
                    let located: Vec<Located> = scan.regions.iter().map(|s| Located::new(s, Some(dir))).collect();
                    metrics::render(&located, scan.skipped.len(), now)
                }
                Err(e) => {
                    self.note(Some(message(&e)));
                    metrics::render(&[], 0, now)
                }
            },
        }
    }

    /// (HTTP status, JSON body).
    fn status_json(&self) -> (u16, String) {
        let result = match &self.source {
            Source::Cache(path) => ops::collect_status(path).and_then(|s| ops::json(&s)),
            Source::Scan(dir) => ops::collect_scan(dir).and_then(|s| ops::json(&s)),
        };
        match result {
            Ok(body) => (200, body),
            Err(e) => (503, serde_json::json!({ "error": message(&e) }).to_string() + "\n"),
        }
    }

    fn note(&self, error: Option<String>) {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if error.is_some() && *last != error {
            eprintln!("vgpu exporter: {}", error.as_deref().unwrap_or_default());
        } else if error.is_none() && last.is_some() {
            eprintln!("vgpu exporter: source readable again");
        }
        *last = error;
    }
}

fn message(e: &CliError) -> String {
    match e {
        CliError::Usage { msg, .. } | CliError::Runtime(msg) => msg.clone(),
        CliError::NoCommand => "no command given".into(),
    }
}

/// Serves until killed. Prints the address actually bound (port 0 picks one) on stdout.
pub fn serve(o: ExporterOpts) -> Result<String, CliError> {
    let addrs = check_listen(&o.listen, o.allow_remote)?;
    let listener =
        TcpListener::bind(&addrs[..]).map_err(|e| CliError::Runtime(format!("cannot listen on {}: {e}", o.listen)))?;
    let local = listener.local_addr().map_err(|e| CliError::Runtime(format!("listening socket: {e}")))?;
    let what = match &o.source {
        Source::Cache(p) => format!("region {}", p.display()),
        Source::Scan(d) => format!("regions under {}", d.display()),
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "vgpu exporter: serving {what} on http://{local}/ (dashboard; also /metrics, /api/status, /api/history)"
        );
        let _ = out.flush();
    }
    let reader = Arc::new(Reader {
        source: o.source,
        last_error: Mutex::new(None),
        history: Mutex::new(History::new(o.sample_interval)),
        started: Instant::now(),
    });
    spawn_sampler(Arc::clone(&reader), o.sample_interval)?;
    let active = Arc::new(AtomicUsize::new(0));
    let pending = Arc::new(Mutex::new(Pending::default()));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if active.fetch_add(1, SeqCst) >= MAX_CONNECTIONS {
            // Full: take the place of the oldest connection that has not sent its request yet.
            if !pending.lock().unwrap_or_else(|p| p.into_inner()).evict_oldest() {
                active.fetch_sub(1, SeqCst);
                let _ = respond(&mut stream, 503, "text/plain; charset=utf-8", b"too many connections\n", false);
                continue;
            }
        }
        let (reader, done, pending) = (Arc::clone(&reader), Arc::clone(&active), Arc::clone(&pending));
        let spawned = std::thread::Builder::new().name("vgpu-exporter-conn".into()).spawn(move || {
            handle(stream, &reader, &pending);
            done.fetch_sub(1, SeqCst);
        });
        if spawned.is_err() {
            active.fetch_sub(1, SeqCst);
        }
    }
    Ok(String::new())
}

/// Reads the regions every `interval`, on a schedule that does not drift with the time a
/// reading takes.
fn spawn_sampler(reader: Arc<Reader>, interval: Duration) -> Result<(), CliError> {
    let sampler = move || {
        let mut next = Instant::now();
        loop {
            reader.sample();
            next += interval;
            let now = Instant::now();
            match next.checked_duration_since(now) {
                Some(wait) => std::thread::sleep(wait),
                None => next = now,
            }
        }
    };
    std::thread::Builder::new()
        .name("vgpu-exporter-sampler".into())
        .spawn(sampler)
        .map(drop)
        .map_err(|e| CliError::Runtime(format!("cannot start the sampler thread: {e}")))
}

/// One request, one response, then close.
fn handle(mut stream: TcpStream, reader: &Reader, pending: &Mutex<Pending>) {
    let id = pending.lock().unwrap_or_else(|p| p.into_inner()).add(&stream);
    let head_end = read_head(&mut stream, &mut Vec::with_capacity(1024));
    if let Some(id) = id {
        pending.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
    serve_head(stream, reader, head_end);
}

/// Reads up to the end of the request head, within [`REQUEST_DEADLINE`] in all; the head's
/// bytes and where it ends, or what arrived when it did not.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(Vec<u8>, usize), Vec<u8>> {
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok((std::mem::take(buf), pos));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if buf.len() > MAX_REQUEST || left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(std::mem::take(buf));
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(std::mem::take(buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn serve_head(mut stream: TcpStream, reader: &Reader, head: Result<(Vec<u8>, usize), Vec<u8>>) {
    let (buf, end) = match head {
        Ok(h) => h,
        Err(partial) => {
            if !partial.is_empty() {
                let _ = respond(&mut stream, 400, "text/plain; charset=utf-8", b"bad request\n", false);
            }
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (method, target, version) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || parts.next().is_some() || !target.starts_with('/') {
        let _ = respond(&mut stream, 400, "text/plain; charset=utf-8", b"bad request\n", false);
        return;
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let _ = respond(&mut stream, 405, "text/plain; charset=utf-8", b"only GET and HEAD\n", false);
        return;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let _ = match path {
        "/metrics" => {
            let body = reader.metrics();
            respond(&mut stream, 200, "text/plain; version=0.0.4; charset=utf-8", body.as_bytes(), head_only)
        }
        "/api/status" => {
            let (code, body) = reader.status_json();
            respond(&mut stream, code, "application/json", body.as_bytes(), head_only)
        }
        "/api/history" => respond(&mut stream, 200, "application/json", reader.history_json().as_bytes(), head_only),
        "/" => respond(&mut stream, 200, "text/html; charset=utf-8", DASHBOARD.as_bytes(), head_only),
        _ => respond(
            &mut stream,
            404,
            "text/plain; charset=utf-8",
            b"not found; try / (dashboard), /metrics, /api/status or /api/history\n",
            head_only,
        ),
    };
}

fn respond(stream: &mut TcpStream, code: u16, content_type: &str, body: &[u8], head_only: bool) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let allow = if code == 405 { "Allow: GET, HEAD\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Command as C;

    fn p(args: &[&str]) -> Result<C, CliError> {
        crate::args::parse(
            &std::iter::once("exporter").chain(args.iter().copied()).map(String::from).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn loopback_by_default_remote_only_when_allowed() {
        let Ok(C::Exporter(o)) = p(&["--scan", "/d"]) else { panic!() };
        assert_eq!(o.listen, DEFAULT_LISTEN);
        assert!(matches!(o.source, Source::Scan(_)));
        assert!(matches!(p(&["--listen", "[::1]:0"]), Ok(C::Exporter(_))));
        assert!(matches!(p(&["--listen=localhost:0"]), Ok(C::Exporter(_))));
        match p(&["--listen", "0.0.0.0:9464"]) {
            Err(CliError::Usage { msg, .. }) => {
                assert!(msg.contains("not a loopback address") && msg.contains("--allow-remote"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(p(&["--listen", "0.0.0.0:9464", "--allow-remote"]), Ok(C::Exporter(_))));
    }

    #[test]
    fn sample_intervals() {
        let interval = |v: &str| match p(&["--sample-interval", v]) {
            Ok(C::Exporter(o)) => o.sample_interval,
            other => panic!("{v}: {other:?}"),
        };
        assert_eq!(interval("2"), Duration::from_secs(2));
        assert_eq!(interval("2s"), Duration::from_secs(2));
        assert_eq!(interval("0.5"), Duration::from_millis(500));
        assert_eq!(interval("750ms"), Duration::from_millis(750));
        let Ok(C::Exporter(o)) = p(&[]) else { panic!() };
        assert_eq!(o.sample_interval, history::DEFAULT_INTERVAL);
    }

    #[test]
    fn usage_errors() {
        for (args, needle) in [
            (&["--listen", "nonsense"][..], "--listen \"nonsense\" is invalid"),
            (&["--scan", "/a", "--cache", "/b"], "cannot be combined"),
            (&["--json"], "unknown option \"--json\""),
            (&["--listen"], "--listen needs a value"),
            (&["--sample-interval", "0.1"], "--sample-interval \"0.1\" is invalid (below 0.5 s)"),
            (&["--sample-interval", "2m"], "--sample-interval \"2m\" is invalid (not a number)"),
            (&["--sample-interval", "61"], "(above 60 s)"),
            (&["--sample-interval", "inf"], "(not a number)"),
            (&["--sample-interval", "1", "--sample-interval", "2"], "given more than once"),
        ] {
            match p(args) {
                Err(CliError::Usage { msg, .. }) => assert!(msg.contains(needle), "{args:?}: {msg}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }
}
