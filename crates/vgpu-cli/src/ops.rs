//! The commands proper. Each returns its stdout text; warnings go straight to stderr.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::SeqCst;

use vgpu_core::MAX_DEVICES;
use vgpu_region::{Limit, Region, RegionError};

use crate::CliError;
use crate::args::Setting;
use crate::render::{self, cap, percent, size};
use crate::snapshot::{self, SCHEMA_VERSION, Scan, Skipped};

/// Never `open_or_create`: a region is the container's to create, with its environment's limits.
/// A copy read with `pread`, never a mapping: a tenant truncating its file under a mapping would
/// kill the command (SIGBUS); writes go through `Region::set_limit` and `reap` (`pwrite`).
fn open(path: &Path) -> Result<Region, CliError> {
    Region::open_copy(path).map_err(|e| CliError::Runtime(e.to_string()))
}

pub fn json<T: serde::Serialize>(value: &T) -> Result<String, CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Runtime(format!("encoding JSON: {e}")))?;
    Ok(text + "\n")
}

pub fn status(path: &Path, as_json: bool) -> Result<String, CliError> {
    let s = collect_status(path)?;
    if as_json { json(&s) } else { Ok(render::status(&s)) }
}

/// Node view. HAMi mounts one directory per container, so the files of DIR and of each direct
/// subdirectory are candidates; anything that is not a region is reported, never fatal.
pub fn scan(dir: &Path, as_json: bool) -> Result<String, CliError> {
    let scan = collect_scan(dir)?;
    if as_json { json(&scan) } else { Ok(render::scan(&scan)) }
}

/// One region's snapshot (`vgpu status --cache PATH`, the exporter's `--cache` form).
pub fn collect_status(path: &Path) -> Result<snapshot::Status, CliError> {
    let region = open(path)?;
    Ok(snapshot::take(&region, &path.display().to_string()))
}

/// The node view's data (`vgpu status --scan DIR`, the exporter's `--scan` form).
pub fn collect_scan(dir: &Path) -> Result<Scan, CliError> {
    let mut candidates = Vec::new();
    let mut skipped = Vec::new();
    for entry in list(dir).map_err(|e| CliError::Runtime(format!("cannot read directory {}: {e}", dir.display())))? {
        if entry.is_dir() {
            match list(&entry) {
                Ok(inner) => candidates.extend(inner),
                Err(e) => skipped.push(skip(&entry, "unreadable", format!("cannot read directory: {e}"))),
            }
        } else {
            candidates.push(entry);
        }
    }
    let mut regions = Vec::new();
    for path in candidates {
        // `symlink_metadata`: the library never follows a link at a region's path, nor do we.
        match fs::symlink_metadata(&path) {
            Err(e) => skipped.push(skip(&path, "unreadable", e.to_string())),
            Ok(m) if m.is_dir() => {
                skipped.push(skip(&path, "directory", "directory (only one level below DIR is scanned)".into()))
            }
            Ok(m) if m.file_type().is_symlink() => {
                skipped.push(skip(&path, "symbolic link", "a symbolic link (never followed)".into()))
            }
            // A FIFO or device would block or misbehave on open: never touch non-regular files.
            Ok(m) if !m.is_file() => skipped.push(skip(&path, "not a regular file", "not a regular file".into())),
            Ok(_) if !starts_like_a_region(&path) => skipped.push(skip(
                &path,
                "not a region file",
                "not a region file (it does not start with the region's magic number)".into(),
            )),
            Ok(_) => match Region::open_copy(&path) {
                Ok(r) => regions.push(snapshot::take(&r, &path.display().to_string())),
                Err(e) => {
                    let kind = match &e {
                        RegionError::Foreign(..) => "HAMi-core region",
                        RegionError::WrongVersion(..) => "other version",
                        RegionError::Io(..) | RegionError::Missing(..) => "unreadable",
                        _ => "corrupt region",
                    };
                    skipped.push(skip(&path, kind, e.to_string()))
                }
            },
        }
    }
    regions.sort_by(|a, b| a.path.cmp(&b.path));
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Scan { schema_version: SCHEMA_VERSION, dir: dir.display().to_string(), regions, skipped })
}

fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<Vec<_>>>()?;
    paths.sort();
    Ok(paths)
}

fn skip(path: &Path, kind: &'static str, reason: String) -> Skipped {
    Skipped { path: path.display().to_string(), kind, reason }
}

/// Whether a file begins as a region does: HAMi's magic, or zeros (a region being created). A
/// shared library, a log or any other file in the directory is passed over without mapping it.
fn starts_like_a_region(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    let read = fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    let flag = i32::from_le_bytes(head);
    read.is_ok() && (flag == vgpu_region::layout::MAGIC || flag == 0)
}

/// What the cap is enforced against: every slot's `total`, dead ones included until reaped
/// (the same sum `RegionAccounting` computes).
fn charged(region: &Region, dev: usize) -> u64 {
    region.used(dev)
}

fn sm_of(raw: u64) -> Option<u64> {
    vgpu_core::limiter::sm_limit_applies(raw).then_some(raw)
}

/// Writes limits live: processes read `limit[dev]`/`sm_limit[dev]` on every charge or launch.
pub fn set(path: &Path, devices: &[usize], memory: Option<Setting>, sm: Option<Setting>) -> Result<String, CliError> {
    let region = open(path)?;
    let s = region.shared();
    let described = (s.device_num.load(SeqCst) as usize).min(MAX_DEVICES);
    let targets: Vec<usize> = if !devices.is_empty() {
        // An index past the devices the region describes is almost surely a typo; with
        // device_num 0 (no process has seen CUDA yet) any index is plausible.
        if let Some(&bad) = devices.iter().find(|&&d| described > 0 && d >= described) {
            return Err(CliError::Runtime(format!(
                "device {bad} is not in region {} (it describes devices 0-{})",
                path.display(),
                described - 1
            )));
        }
        devices.to_vec()
    } else if described > 0 {
        (0..described).collect()
    } else {
        (0..MAX_DEVICES).collect()
    };
    let mut out = String::new();
    for &d in &targets {
        if memory == Some(Setting::Env) {
            region.set_operator_mark(d, Limit::Memory, false).map_err(|e| write_error(path, e))?;
            out += &format!(
                "device {d}: memory cap handed back to the processes' environment (the next process to start when none runs sets it)\n"
            );
        }
        if let Some(Setting::To(new)) = memory {
            region.set_operator_mark(d, Limit::Memory, true).map_err(|e| write_error(path, e))?;
            let old = region.set_limit(d, new).map_err(|e| write_error(path, e))?;
            out += &change(d, "memory cap", cap((old != 0).then_some(old)), cap((new != 0).then_some(new)));
            let used = charged(&region, d);
            if new != 0 && used > new {
                eprintln!(
                    "vgpu: warning: device {d}: {} in use is above the new cap {}; existing memory stays \
                     allocated and new allocations fail until usage drops below the cap",
                    size(used),
                    size(new)
                );
            }
        }
        if sm == Some(Setting::Env) {
            region.set_operator_mark(d, Limit::Sm, false).map_err(|e| write_error(path, e))?;
            out += &format!(
                "device {d}: SM limit handed back to the processes' environment (the next process to start when none runs sets it)\n"
            );
        }
        if let Some(Setting::To(new)) = sm {
            region.set_operator_mark(d, Limit::Sm, true).map_err(|e| write_error(path, e))?;
            let old = region.set_sm_limit(d, new).map_err(|e| write_error(path, e))?;
            out += &change(d, "SM limit", percent(sm_of(old)), percent(sm_of(new)));
        }
    }
    Ok(out)
}

fn write_error(path: &Path, e: std::io::Error) -> CliError {
    CliError::Runtime(format!("cannot write region file {}: {e}", path.display()))
}

fn change(dev: usize, what: &str, old: String, new: String) -> String {
    if old == new {
        format!("device {dev}: {what} {new} (unchanged)\n")
    } else {
        format!("device {dev}: {what} {old} -> {new}\n")
    }
}

/// Zeroes dead slots. The library reaps on its own when a charge is refused; this is for an
/// operator who wants the numbers right now (or whose container has no live process left).
pub fn reap(path: &Path) -> Result<String, CliError> {
    let region = open(path)?;
    let reaped = region.reap(None);
    if reaped.is_empty() {
        return Ok("no dead slots to reclaim\n".into());
    }
    let mut out = String::new();
    let mut total = 0u64;
    for (slot, pid, bytes) in &reaped {
        out += &format!("reclaimed slot {slot} (pid {pid}): {}\n", size(*bytes));
        total = total.saturating_add(*bytes);
    }
    out += &format!("reclaimed {} slot(s), {} in total\n", reaped.len(), size(total));
    Ok(out)
}
