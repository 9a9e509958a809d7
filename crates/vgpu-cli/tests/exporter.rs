//! `vgpu exporter` scraped over real HTTP (std::net::TcpStream): the Prometheus text format is
//! checked line by line (every family has HELP and TYPE before its samples, samples are
//! contiguous, every sample parses as `name{labels} value`), and the values are the regions'.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::SeqCst;

use common::*;
use tempfile::TempDir;
use vgpu_core::ledger::Kind;
use vgpu_region::{Region, RegionAccounting};

/// A running exporter, killed when dropped.
struct Exporter {
    child: Child,
    addr: String,
}

impl Exporter {
    fn start(args: &[&str]) -> Exporter {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vgpu"))
            .arg("exporter")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("CUDA_DEVICE_MEMORY_SHARED_CACHE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // "vgpu exporter: serving … on http://127.0.0.1:PORT/metrics and …"
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Exporter { child, addr }
    }

    /// (status code, headers lower-cased, body).
    fn request(&self, method: &str, path: &str) -> (u16, BTreeMap<String, String>, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\n\r\n", self.addr).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {text:?}"));
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect::<BTreeMap<_, _>>();
        (status, headers, body.to_string())
    }

    fn get(&self, path: &str) -> (u16, BTreeMap<String, String>, String) {
        let (code, headers, body) = self.request("GET", path);
        assert_eq!(headers["content-length"].parse::<usize>().unwrap(), body.len(), "Content-Length of {path}");
        assert_eq!(headers["connection"], "close");
        (code, headers, body)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// Parses `{k="v",…}` with the format's escapes; returns the labels and the rest of the line.
fn parse_labels(s: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').unwrap();
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return (labels, r);
        }
        let (key, r) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label in {s:?}"));
        assert!(is_name(key, false), "bad label name {key:?}");
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?} in {s:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) | None => panic!("unterminated label value in {s:?}"),
                Some((_, c)) => value.push(c),
            }
        };
        assert!(labels.insert(key.to_string(), value).is_none(), "label {key} twice in {s:?}");
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Checks the whole body against the text exposition format and returns its samples.
fn parse_exposition(body: &str) -> Vec<Sample> {
    assert!(body.ends_with('\n'), "body must end with a newline");
    let (mut help, mut kind) = (HashSet::new(), BTreeMap::new());
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(is_name(name, true) && !text.is_empty(), "bad HELP line {line:?}");
            assert!(help.insert(name.to_string()), "HELP twice for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&t), "bad type in {line:?}");
            assert!(help.contains(name), "TYPE before HELP for {name}");
            assert!(kind.insert(name.to_string(), t.to_string()).is_none(), "TYPE twice for {name}");
            if let Some(prev) = current.replace(name.to_string()) {
                finished.insert(prev);
            }
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..name_end];
        assert!(is_name(name, true), "bad metric name in {line:?}");
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..])
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value_text = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no space before the value in {line:?}"));
        let value: f64 = value_text.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert_eq!(
            current.as_deref(),
            Some(name),
            "sample {name} outside its family block (HELP/TYPE missing or not contiguous)"
        );
        assert!(!finished.contains(name));
        if kind[name] == "counter" {
            assert!(name.ends_with("_total"), "counter {name} without _total");
        }
        samples.push(Sample { name: name.to_string(), labels, value });
    }
    assert_eq!(help.len(), kind.len(), "every HELP has a TYPE");
    samples
}

/// The value of the one sample of `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name} {want:?}: {found:?}");
    found[0].value
}

const POD: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

/// A directory for `--scan`: region `a.cache` directly in it (two live processes on two devices,
/// a dead one, denials, limiter time), one in a HAMi container directory (`b`), one in a
/// directory whose name needs escaping in a label value (`c`), and a file that is not a region.
struct ScanDir {
    a: PathBuf,
    b: PathBuf,
    c: PathBuf,
    /// The first live process of `a`: pid 100, 1.5 GiB on device 0.
    pa: RegionAccounting,
    /// The other live process (pid 200) and the regions, kept open for the test's length.
    _kept: (RegionAccounting, [Region; 3]),
    /// Dropped last: the files go with it.
    dir: TempDir,
}

fn scan_dir() -> ScanDir {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.cache");
    let ra = region(&a, 2 * GIB);
    let pa = process(&a, 100, 4242);
    pa.charge(0, 512 * MIB, Kind::Context);
    assert!(pa.try_charge(0, GIB, pa.limit(0)));
    pa.record_denial(0);
    pa.record_denial(0);
    ra.extension().driver_denials[0].fetch_add(5, SeqCst);
    ra.extension().buckets[0].consume(12_250_000_000);
    ra.extension().buckets[0].record_throttle(3_000_000);
    let pb = process(&a, 200, 0);
    pb.charge(1, 200 * MIB, Kind::Data);
    let dead = process(&a, 300, 0);
    dead.charge(0, 300 * MIB, Kind::Data);
    drop(dead); // its lock goes with it, as on kill -9 (and no later claim reuses the slot)

    let hami = dir.path().join(format!("{POD}_trainer"));
    std::fs::create_dir(&hami).unwrap();
    let b = hami.join("9e2c.cache");
    let rb = region(&b, 3 * GIB);
    let weird = dir.path().join("we\"ird\\dir");
    std::fs::create_dir(&weird).unwrap();
    let c = weird.join("x.cache");
    let rc = region(&c, GIB);
    std::fs::write(dir.path().join("junk.txt"), b"not a region").unwrap();
    ScanDir { a, b, c, pa, _kept: (pb, [ra, rb, rc]), dir }
}

/// The labels of region `a`'s device 0 (process 100's).
fn a_dev0(a: &Path) -> [(&'static str, &str); 4] {
    [("path", s(a)), ("container", "a.cache"), ("vdevice_index", "0"), ("device_uuid", "GPU-aaaa")]
}

/// Every family's value for region `a` of `scan_dir`.
fn check_region_a(m: &[Sample], a: &Path) {
    let pa_labels = a_dev0(a);
    assert_eq!(value(m, "hami_vgpu_memory_used_bytes", &pa_labels), (GIB + 512 * MIB) as f64);
    assert_eq!(value(m, "hami_vgpu_memory_limit_bytes", &pa_labels), (2 * GIB) as f64);
    assert_eq!(value(m, "hami_vgpu_memory_context_bytes", &pa_labels), (512 * MIB) as f64);
    assert_eq!(value(m, "hami_vgpu_memory_buffer_bytes", &pa_labels), GIB as f64);
    assert_eq!(value(m, "hami_vgpu_core_limit_percent", &pa_labels), 0.0);
    assert_eq!(value(m, "libvgpu_memory_dead_bytes", &pa_labels), (300 * MIB) as f64);
    let with_reason = |r| [pa_labels[0], pa_labels[2], ("reason", r)];
    assert_eq!(value(m, "libvgpu_allocation_denials_total", &with_reason("cap")), 2.0);
    assert_eq!(value(m, "libvgpu_allocation_denials_total", &with_reason("driver")), 5.0);
    assert_eq!(value(m, "libvgpu_gpu_time_seconds_total", &pa_labels), 12.25);
    assert_eq!(value(m, "libvgpu_throttled_seconds_total", &pa_labels), 0.003);
    let dev1 = [("path", s(a)), ("vdevice_index", "1"), ("device_uuid", "GPU-bbbb")];
    assert_eq!(value(m, "hami_vgpu_memory_used_bytes", &dev1), (200 * MIB) as f64);
    assert_eq!(value(m, "hami_vgpu_memory_limit_bytes", &dev1), 0.0, "0 = no cap");
    assert_eq!(value(m, "hami_vgpu_core_limit_percent", &dev1), 30.0);
    assert_eq!(value(m, "libvgpu_processes", &[("path", s(a)), ("state", "alive")]), 2.0);
    assert_eq!(value(m, "libvgpu_processes", &[("path", s(a)), ("state", "dead")]), 1.0);
    assert_eq!(
        value(m, "libvgpu_process_memory_used_bytes", &[("path", s(a)), ("pid", "100"), ("vdevice_index", "0")]),
        (GIB + 512 * MIB) as f64
    );
    assert_eq!(value(m, "libvgpu_process_memory_used_bytes", &[("pid", "300"), ("state", "dead")]), (300 * MIB) as f64);
    assert_eq!(value(m, "libvgpu_region_info", &[("path", s(a)), ("version", "1.2"), ("extension", "1")]), 1.0);
}

/// Labels of regions `b` and `c` of `scan_dir`, from their directories' names.
fn check_directory_labels(m: &[Sample], b: &Path, c: &Path) {
    // HAMi's directory gives the pod UID and the container name.
    let b_labels = [("path", s(b)), ("container", "trainer"), ("pod_uid", POD), ("vdevice_index", "0")];
    assert_eq!(value(m, "hami_vgpu_memory_limit_bytes", &b_labels), (3 * GIB) as f64);
    // Quotes and backslashes survive the round trip through escaping.
    let c_labels = [("container", "we\"ird\\dir"), ("path", s(c)), ("vdevice_index", "0")];
    assert_eq!(value(m, "hami_vgpu_memory_limit_bytes", &c_labels), GIB as f64);
}

#[test]
fn metrics_over_http_match_the_regions_in_the_exposition_format() {
    let f = scan_dir();
    let e = Exporter::start(&["--scan", s(f.dir.path())]);
    let (code, headers, body) = e.get("/metrics");
    assert_eq!(code, 200);
    assert_eq!(headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let m = parse_exposition(&body);
    check_region_a(&m, &f.a);
    check_directory_labels(&m, &f.b, &f.c);
    assert_eq!(value(&m, "libvgpu_exporter_regions", &[]), 3.0);
    assert_eq!(value(&m, "libvgpu_exporter_skipped_files", &[]), 1.0);
    // No kernel launched yet: HAMi emits the elapsed time only once there was one.
    assert!(!m.iter().any(|s| s.name == "hami_container_last_kernel_elapsed_seconds"));

    // /api/status is `vgpu status --scan DIR --json`, document for document.
    let (code, headers, body) = e.get("/api/status");
    assert_eq!((code, headers["content-type"].as_str()), (200, "application/json"));
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served, json(&["status", "--scan", s(f.dir.path()), "--json"]));

    // Regions are re-read per request: a new charge shows on the next scrape.
    assert!(f.pa.try_charge(0, 256 * MIB, f.pa.limit(0)));
    let m = parse_exposition(&e.get("/metrics").2);
    assert_eq!(value(&m, "hami_vgpu_memory_used_bytes", &a_dev0(&f.a)), (GIB + 768 * MIB) as f64);
}

#[test]
fn http_edges() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    let _r = region(&path, GIB);
    let e = Exporter::start(&["--cache", s(&path)]);
    assert_eq!(e.get("/nope").0, 404);
    assert_eq!(e.get("/metrics?x=1").0, 200, "a query string is ignored");
    let (code, headers, body) = e.request("HEAD", "/metrics");
    assert_eq!((code, body.as_str()), (200, ""));
    assert!(headers["content-length"].parse::<usize>().unwrap() > 0);
    let (code, headers, _) = e.request("POST", "/metrics");
    assert_eq!((code, headers["allow"].as_str()), (405, "GET, HEAD"));
    // Garbage gets a 400 rather than a hang or a crash; the server keeps serving.
    let mut s = TcpStream::connect(&e.addr).unwrap();
    s.write_all(b"hello\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    // Concurrent scrapes.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let addr = e.addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_missing_region_is_reported_then_picked_up_once_it_exists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.cache");
    let mut e = Exporter::start(&["--cache", s(&path)]);
    let (code, _, body) = e.get("/metrics");
    assert_eq!(code, 200, "the exporter stays up without its region");
    let m = parse_exposition(&body);
    assert_eq!(value(&m, "libvgpu_exporter_regions", &[]), 0.0);
    assert_eq!(value(&m, "libvgpu_exporter_skipped_files", &[]), 1.0);
    let (code, _, body) = e.get("/api/status");
    assert_eq!(code, 503);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("does not exist"), "{v}");

    let _r = region(&path, 4 * GIB);
    let m = parse_exposition(&e.get("/metrics").2);
    assert_eq!(value(&m, "libvgpu_exporter_regions", &[]), 1.0);
    assert_eq!(
        value(&m, "hami_vgpu_memory_limit_bytes", &[("container", "later.cache"), ("vdevice_index", "0")]),
        (4 * GIB) as f64
    );
    assert_eq!(e.get("/api/status").0, 200);
    let _ = e.child.kill();
    let _ = e.child.wait();
    // The missing file was logged once, on stderr.
    let mut err = String::new();
    e.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(err.matches("does not exist").count(), 1, "{err}");
}

#[test]
fn non_loopback_addresses_need_allow_remote() {
    let o = vgpu(&["exporter", "--listen", "0.0.0.0:0", "--cache", "/nonexistent"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("is not a loopback address (0.0.0.0)") && err.contains("--allow-remote"), "{err}");
    assert!(stdout(&o).is_empty(), "nothing served");
    let o = vgpu(&["exporter", "--listen", "127.0.0.1:nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--listen \"127.0.0.1:nope\" is invalid"), "{}", stderr(&o));
}

#[test]
fn help_lists_the_new_commands() {
    let out = ok(&["--help"]);
    assert!(out.contains("run ") && out.contains("exporter "), "{out}");
    assert!(ok(&["help", "exporter"]).contains("--allow-remote"));
    assert!(ok(&["run", "--help"]).starts_with("Usage: vgpu run"));
}

#[test]
fn the_dashboard_is_one_self_contained_page() {
    let dir = tempfile::tempdir().unwrap();
    let _r = region(&dir.path().join("a.cache"), GIB);
    let e = Exporter::start(&["--scan", s(dir.path())]);
    let (code, headers, page) = e.get("/");
    assert_eq!((code, headers["content-type"].as_str()), (200, "text/html; charset=utf-8"));
    assert!(page.starts_with("<!doctype html>") && page.trim_end().ends_with("</html>"));
    assert!(page.contains("/api/status") && page.contains("/api/history"), "the page polls both");
    // Nothing is fetched from elsewhere: a node without internet gets the whole page.
    for external in ["http://", "https://", "src=", "@import", "url("] {
        assert!(!page.contains(external), "the page references {external:?}");
    }
    for link in page.split("<link").skip(1) {
        assert!(link.contains("href=\"data:"), "only inline links: <link{}", &link[..link.find('>').unwrap()]);
    }
    let (code, headers, body) = e.request("HEAD", "/");
    assert_eq!((code, body.as_str()), (200, ""));
    assert_eq!(headers["content-length"].parse::<usize>().unwrap(), page.len());
    let (code, headers, body) = e.request("HEAD", "/api/history");
    assert_eq!((code, headers["content-type"].as_str(), body.as_str()), (200, "application/json", ""));
    assert_eq!(e.request("POST", "/").0, 405);
    assert_eq!(e.request("PUT", "/api/history").0, 405);
}

/// Polls `/api/history` until `done` accepts it.
fn history_until(e: &Exporter, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, headers, body) = e.get("/api/history");
        assert_eq!((code, headers["content-type"].as_str()), (200, "application/json"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if done(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "no {what} in {v:#}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn history_samples_memory_and_the_achieved_share() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.cache");
    let ra = region(&a, 2 * GIB);
    let p = process(&a, 100, 0);
    p.charge(1, 300 * MIB, Kind::Context);
    assert!(p.try_charge(1, 200 * MIB, p.limit(1)));
    let e = Exporter::start(&["--scan", s(dir.path()), "--sample-interval", "0.5"]);
    let series = |v: &serde_json::Value, dev: u64| {
        v["series"].as_array().unwrap().iter().find(|x| x["path"] == s(&a) && x["device"] == dev).cloned()
    };
    let points = |v: &serde_json::Value, dev: u64| series(v, dev).map_or(0, |s| s["points"].as_array().unwrap().len());
    let v = history_until(&e, "second point", |v| points(v, 1) >= 2);
    assert_eq!((v["schema_version"].as_u64(), v["interval_s"].as_f64()), (Some(1), Some(0.5)));
    assert_eq!((v["window_s"].as_u64(), v["truncated"].as_bool()), (Some(600), Some(false)));
    let s1 = series(&v, 1).unwrap();
    assert_eq!(
        (s1["container"].as_str(), s1["pod_uid"].as_str(), s1["uuid"].as_str()),
        (Some("a.cache"), Some(""), Some("GPU-bbbb"))
    );
    let pts = s1["points"].as_array().unwrap();
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    for p in pts {
        assert_eq!(
            (p["used"].as_u64(), p["context"].as_u64(), p["dead_used"].as_u64()),
            (Some(500 * MIB), Some(300 * MIB), Some(0))
        );
        assert_eq!(p["sm_limit"], 30);
        let t = p["t"].as_f64().unwrap();
        assert!(t <= unix && t > unix - 60.0, "t={t} is unix seconds");
    }
    assert!(pts[0]["achieved_pct"].is_null(), "a first reading has no rate: {}", pts[0]);
    assert_eq!((pts[1]["achieved_pct"].as_f64(), pts[1]["throttled_pct"].as_f64()), (Some(0.0), Some(0.0)));

    // The container runs: one second of GPU time and 0.1 s throttled, charged at once, show as
    // rates whose integral over the readings' wall times gives those amounts back.
    let before = points(&v, 1);
    ra.extension().buckets[1].consume(1_000_000_000);
    ra.extension().buckets[1].record_throttle(100_000_000);
    let v = history_until(&e, "the charged second", |v| points(v, 1) > before + 2);
    let pts = series(&v, 1).unwrap()["points"].as_array().unwrap().clone();
    let integral = |field: &str| -> f64 {
        (before..pts.len())
            .map(|i| {
                pts[i][field].as_f64().unwrap() / 100.0
                    * (pts[i]["t"].as_f64().unwrap() - pts[i - 1]["t"].as_f64().unwrap())
            })
            .sum()
    };
    assert!((integral("achieved_pct") - 1.0).abs() < 0.02, "{:#?}", &pts[before..]);
    assert!((integral("throttled_pct") - 0.1).abs() < 0.005, "{:#?}", &pts[before..]);
    let busy = pts[before..].iter().filter(|p| p["achieved_pct"].as_f64().unwrap() > 0.0).count();
    assert_eq!(busy, 1, "one interval saw the charge: {:#?}", &pts[before..]);
    assert!(points(&v, 0) >= 2, "every device of the region is sampled");
}

/// Clients that trickle their request a byte at a time hold no connection past the request
/// deadline, and scrapes keep working while they try.
#[test]
fn slow_clients_cannot_lock_scrapes_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    drop(region(&path, GIB));
    let e = Exporter::start(&["--cache", path.to_str().unwrap()]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow: Vec<_> = (0..70)
        .map(|_| {
            let (addr, stop) = (e.addr.clone(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                // One byte now and then, reconnecting whenever dropped, until told to stop.
                while !stop.load(SeqCst) {
                    let Ok(mut s) = TcpStream::connect(&addr) else { continue };
                    while !stop.load(SeqCst) && s.write_all(b"G").is_ok() {
                        std::thread::sleep(std::time::Duration::from_millis(500));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let (code, _, body) = e.get("/metrics");
        assert_eq!(code, 200, "{body}");
        assert!(t.elapsed() < std::time::Duration::from_secs(3), "{:?}", t.elapsed());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    stop.store(true, SeqCst);
    for t in slow {
        t.join().unwrap();
    }
}

/// A tenant truncating and re-growing its own region cannot kill the exporter (nor
/// `vgpu status`): they read copies, never a mapping of the tenant's file.
#[test]
fn a_region_truncated_and_regrown_under_the_readers_does_not_kill_them() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cache");
    {
        let r = region(&path, GIB);
        // Every slot in use, so a reader walks every page of the file.
        r.shared().proc_num.store(vgpu_region::layout::MAX_PROCS as i32, SeqCst);
    }
    let image = std::fs::read(&path).unwrap();
    let e = Exporter::start(&["--cache", path.to_str().unwrap(), "--sample-interval", "0.5"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tenant = {
        let (path, stop) = (path.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            while !stop.load(SeqCst) {
                f.set_len(0).unwrap();
                f.write_all_at(&image, 0).unwrap();
            }
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut statuses = 0;
    while std::time::Instant::now() < deadline {
        let o = vgpu(&["status", "--cache", path.to_str().unwrap(), "--json"]);
        assert!(o.status.code().is_some(), "vgpu status killed by a signal: {:?}", o.status);
        let _ = e.get("/metrics");
        statuses += 1;
    }
    stop.store(true, SeqCst);
    tenant.join().unwrap();
    let mut e = e;
    assert!(e.child.try_wait().unwrap().is_none(), "the exporter died: {:?}", e.child.try_wait());
    assert!(statuses > 0);
}
