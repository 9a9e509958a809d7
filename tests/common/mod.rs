//! Shared by the end-to-end tests: builds the preload library, the fake driver and the C test
//! programs once per test binary, and runs programs under `LD_PRELOAD` against the fake driver
//! with a clean CUDA environment (the test process's own environment is never modified).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

pub struct Artifacts {
    /// `target/<profile>/libvgpu.so`
    pub lib: PathBuf,
    /// Directory with `libcuda.so.1` & co. pointing at the fake driver.
    pub driver_dir: PathBuf,
    /// Compiled C test programs.
    pub bin_dir: PathBuf,
    /// The `vgpu` operator command.
    pub vgpu: PathBuf,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>`, from where this test binary lives (`target/<profile>/deps/…`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps").to_path_buf()
}

fn check(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        let profile = profile_dir();
        let mut build = Command::new(env!("CARGO"));
        build.current_dir(repo()).args(["build", "-p", "libvgpu", "-p", "fakegpu", "-p", "vgpu-cli"]);
        if profile.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        check(&mut build);
        let e2e = profile.join("e2e");
        let driver_dir = e2e.join("driver");
        let bin_dir = e2e.join("bin");
        check(Command::new("sh").arg(repo().join("crates/fakegpu/make-driver-dir.sh")).arg(&profile).arg(&driver_dir));
        check(Command::new("sh").arg(repo().join("tests/c/build.sh")).arg(&driver_dir).arg(&bin_dir));
        Artifacts { lib: profile.join("libvgpu.so"), driver_dir, bin_dir, vgpu: profile.join("vgpu") }
    })
}

/// A region path no other run uses (the file does not exist yet), in a directory of its own
/// under `target/<profile>/e2e/regions`. The directory, with what the run left there (the region,
/// the node table, any sibling a test derives with `with_extension`), goes when this is dropped.
pub struct RegionPath {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for RegionPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for RegionPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for RegionPath {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

pub fn fresh_region_path() -> RegionPath {
    let parent = artifacts().bin_dir.parent().unwrap().join("regions");
    std::fs::create_dir_all(&parent).unwrap();
    let dir = tempfile::tempdir_in(&parent).unwrap();
    RegionPath { path: dir.path().join("region.cache"), _dir: dir }
}

/// A program run under the preload against the fake driver.
pub struct Run {
    cmd: Command,
    /// This run's own region file, removed once the program has exited.
    region: RegionPath,
}

impl Run {
    /// `program` is a compiled test program's name (or a path).
    pub fn new(program: &str) -> Run {
        let a = artifacts();
        let path = if program.contains('/') { PathBuf::from(program) } else { a.bin_dir.join(program) };
        let mut cmd = Command::new(path);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("CUDA_")
                || k.starts_with("LIBVGPU_")
                || k.starts_with("FAKEGPU_")
                || k.starts_with("LIBCUDA_")
                || k == "LD_PRELOAD"
            {
                cmd.env_remove(&k);
            }
        }
        cmd.env("LD_LIBRARY_PATH", &a.driver_dir).env("LD_PRELOAD", &a.lib).env("FAKEGPU_MEMORY", "16g");
        // Each run is its own container unless a test says otherwise: tests run in parallel and
        // must not meet in the default /tmp/cudevshr.cache.
        let region = fresh_region_path();
        cmd.env("CUDA_DEVICE_MEMORY_SHARED_CACHE", &region);
        // Nor in the default node table: every fake GPU has the same UUID, so runs of parallel
        // tests would see one another as containers sharing a GPU.
        cmd.env("LIBVGPU_NODE_FILE", region.with_extension("node"));
        Run { cmd, region }
    }

    pub fn without_preload(mut self) -> Run {
        self.cmd.env_remove("LD_PRELOAD");
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Run {
        self.cmd.env(k, v);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, args: I) -> Run {
        self.cmd.args(args);
        self
    }

    pub fn output(mut self) -> Result {
        let out: Output = self.cmd.output().expect("spawn test program");
        drop(self.region); // its directory, with the region and the node table
        Result {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// As [`output`](Self::output), but kills the program if it is still running after
    /// `limit` and returns `None` (for a test whose failure would be a hang).
    pub fn output_within(mut self, limit: std::time::Duration) -> Option<Result> {
        let mut child = self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn test program");
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for test program") {
                break Some(status);
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let (mut stdout, mut stderr) = (String::new(), String::new());
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut stdout);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        drop(self.region); // its directory, with the region and the node table
        Some(Result { status: status?, stdout, stderr })
    }

    /// Starts the program with stdin and stdout piped, for a test that reads its lines as they
    /// come and holds it at its `wait` commands (see [`Spawned`]).
    pub fn spawn(mut self) -> Spawned {
        let mut child = self
            .cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn test program");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Spawned { child, stdout, seen: String::new(), region: self.region }
    }

    /// Runs and insists on a clean exit.
    pub fn ok(self) -> Result {
        let r = self.output();
        assert!(r.status.success(), "exit {:?}\nstdout:\n{}\nstderr:\n{}", r.status, r.stdout, r.stderr);
        r
    }
}

/// A running test program. Its `wait` commands block until [`Spawned::release`] writes a line;
/// dropping it (a failed test) closes stdin, so every `wait` returns and the program ends.
pub struct Spawned {
    child: Child,
    stdout: BufReader<ChildStdout>,
    /// Everything read from stdout so far.
    seen: String,
    region: RegionPath,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads up to the next line starting with `prefix` and returns it; the program must print
    /// one before it exits.
    pub fn until(&mut self, prefix: &str) -> String {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("read test program output");
            assert!(n > 0, "the program ended before printing {prefix:?}:\n{}", self.seen);
            self.seen.push_str(&line);
            if line.starts_with(prefix) {
                return line.trim_end().to_string();
            }
        }
    }

    /// Lets the program past its current `wait`.
    pub fn release(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"\n").and_then(|()| stdin.flush()).expect("write to test program");
    }

    /// Closes stdin, waits for the exit, insists it is clean, and returns the whole output
    /// (what [`Spawned::until`] read included).
    pub fn finish(mut self) -> Result {
        drop(self.child.stdin.take());
        let mut stdout = std::mem::take(&mut self.seen);
        self.stdout.read_to_string(&mut stdout).expect("read test program output");
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut stderr).expect("read test program stderr");
        }
        let status = self.child.wait().expect("wait for test program");
        drop(self.region); // its directory, with the region and the node table
        assert!(status.success(), "exit {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        Result { status, stdout, stderr }
    }
}

pub struct Result {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Result {
    /// Lines of stdout starting with `prefix` (the C programs print `<command> <code> …`).
    pub fn lines(&self, prefix: &str) -> Vec<&str> {
        self.stdout.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    pub fn line(&self, prefix: &str) -> &str {
        let l = self.lines(prefix);
        assert_eq!(
            l.len(),
            1,
            "expected one line starting with {prefix:?} in:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        l[0]
    }

    /// The value of `key=` on the one line starting with `prefix`.
    pub fn field(&self, prefix: &str, key: &str) -> u64 {
        field(self.line(prefix), key)
    }
}

pub fn field(line: &str, key: &str) -> u64 {
    let pat = format!("{key}=");
    let v =
        line.split_whitespace().find_map(|w| w.strip_prefix(&pat)).unwrap_or_else(|| panic!("no {key}= in {line:?}"));
    v.parse().unwrap_or_else(|_| panic!("{key}={v} is not a number in {line:?}"))
}
