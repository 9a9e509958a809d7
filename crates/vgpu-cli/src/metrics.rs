//! Prometheus text exposition (format 0.0.4) of region snapshots.
//!
//! Families that HAMi's vGPUmonitor also exports keep its names, meanings and label names
//! (`hami_vgpu_memory_used_bytes`: Σ `used[dev].total` of live slots; `container`,
//! `vdevice_index`, `device_uuid`), so its dashboards and alerts work on either. Our own
//! families are `libvgpu_*`. Every family gets `# HELP` and `# TYPE`, its samples are contiguous,
//! and label values are escaped (`\\`, `\"`, `\n`).

use std::fmt::Write as _;
use std::path::Path;

use crate::snapshot::{Process, Status};

/// A region with where it came from, as labels.
pub struct Located<'a> {
    pub status: &'a Status,
    /// HAMi's container name (from its `<podUID>_<name>` directory), else the subdirectory's
    /// name (scan), else the file's name.
    pub container: String,
    /// From HAMi's directory name; empty when unknown.
    pub pod_uid: String,
}

impl<'a> Located<'a> {
    /// `scan_dir`: the directory given to `--scan`, if any.
    pub fn new(status: &'a Status, scan_dir: Option<&Path>) -> Self {
        let path = Path::new(&status.path);
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = path.parent();
        let dir_name = parent.and_then(Path::file_name).map(|f| f.to_string_lossy().into_owned());
        if let Some((uid, name)) = dir_name.as_deref().and_then(hami_dir) {
            return Located { status, container: name.to_string(), pod_uid: uid.to_string() };
        }
        let in_subdir = scan_dir.is_some_and(|d| parent.is_some_and(|p| p != d));
        let container = match dir_name {
            Some(d) if in_subdir => d,
            _ => file,
        };
        Located { status, container, pod_uid: String::new() }
    }
}

/// HAMi names a container's directory `<pod UID>_<container name>`; the UID is a UUID
/// (8-4-4-4-12 hex digits) and a container name never holds `_`.
fn hami_dir(name: &str) -> Option<(&str, &str)> {
    let (uid, ctr) = name.split_once('_')?;
    let groups: Vec<&str> = uid.split('-').collect();
    let shape = groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    (shape && !ctr.is_empty()).then_some((uid, ctr))
}

/// `\`, `"` and newlines escaped, as the text format requires inside label values.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample's value: integers as they are, nanosecond counters as seconds (the unit Prometheus
/// expects) written exactly in decimal rather than through a lossy f64.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Value {
    Count(u64),
    Nanos(u64),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match *self {
            Value::Count(v) => write!(f, "{v}"),
            Value::Nanos(ns) => {
                let (secs, frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
                if frac == 0 {
                    write!(f, "{secs}")
                } else {
                    write!(f, "{secs}.{}", format!("{frac:09}").trim_end_matches('0'))
                }
            }
        }
    }
}

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, Value)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Family { name, kind, help, samples: Vec::new() }
    }
    fn add(&mut self, labels: Vec<(&'static str, String)>, value: u64) {
        self.samples.push((labels, Value::Count(value)));
    }
    fn add_nanos(&mut self, labels: Vec<(&'static str, String)>, ns: u64) {
        self.samples.push((labels, Value::Nanos(ns)));
    }
}

fn region_labels(r: &Located) -> Vec<(&'static str, String)> {
    vec![("container", r.container.clone()), ("pod_uid", r.pod_uid.clone()), ("path", r.status.path.clone())]
}

fn device_labels(r: &Located, index: usize, uuid: &str) -> Vec<(&'static str, String)> {
    let mut l = region_labels(r);
    l.push(("vdevice_index", index.to_string()));
    l.push(("device_uuid", uuid.to_string()));
    l
}

fn with(mut labels: Vec<(&'static str, String)>, k: &'static str, v: impl Into<String>) -> Vec<(&'static str, String)> {
    labels.push((k, v.into()));
    labels
}

/// Σ over live slots of one usage field on one device.
fn live_sum(processes: &[Process], dev: usize, f: fn(&crate::snapshot::Usage) -> u64) -> u64 {
    processes
        .iter()
        .filter(|p| p.state == "alive")
        .flat_map(|p| &p.usage)
        .filter(|u| u.device == dev)
        .map(f)
        .fold(0, u64::saturating_add)
}

/// The whole `/metrics` body. `skipped`: files a scan passed over (or a `--cache` region that
/// could not be read); `now`: unix seconds, for the time since the last kernel.
pub fn render(regions: &[Located], skipped: usize, now: u64) -> String {
    let mut used = Family::new(
        "hami_vgpu_memory_used_bytes",
        "gauge",
        "Device memory charged to the container's live processes (allocations and contexts), bytes; HAMi vGPUmonitor compatible.",
    );
    let mut limit = Family::new(
        "hami_vgpu_memory_limit_bytes",
        "gauge",
        "Device memory cap of the container, bytes; 0 = no cap; HAMi vGPUmonitor compatible.",
    );
    let mut core = Family::new(
        "hami_vgpu_core_limit_percent",
        "gauge",
        "SM (compute) share of the container in percent; 0 = no limit.",
    );
    let mut context = Family::new(
        "hami_vgpu_memory_context_bytes",
        "gauge",
        "Of the used memory, what CUDA contexts take, bytes; HAMi vGPUmonitor compatible.",
    );
    let mut module = Family::new(
        "hami_vgpu_memory_module_bytes",
        "gauge",
        "Of the used memory, what loaded modules take, bytes; HAMi vGPUmonitor compatible.",
    );
    let mut driver = Family::new(
        "libvgpu_memory_driver_overhead_bytes",
        "gauge",
        "Of the used memory, what the driver spends outside the hooked allocations (lazily loaded modules, graph memory, pool caches, library workspaces), found by reconciling with its per-process count, bytes.",
    );
    let mut buffer = Family::new(
        "hami_vgpu_memory_buffer_bytes",
        "gauge",
        "Of the used memory, what allocations take, bytes; HAMi vGPUmonitor compatible.",
    );
    let mut last_kernel = Family::new(
        "hami_container_last_kernel_elapsed_seconds",
        "gauge",
        "Seconds since the container last launched a kernel (only once it has); HAMi vGPUmonitor compatible.",
    );
    let mut dead = Family::new(
        "libvgpu_memory_dead_bytes",
        "gauge",
        "Device memory still charged to processes that died, counted against the cap until reaped (vgpu reap), bytes.",
    );
    let mut denials = Family::new(
        "libvgpu_allocation_denials_total",
        "counter",
        "Allocations refused: reason=cap by the container's cap, reason=driver by the driver while within the cap, reason=spill_limit past the spill limit while oversubscribing.",
    );
    let mut spilled = Family::new(
        "libvgpu_memory_spilled_bytes",
        "gauge",
        "Host memory the container spilled past its cap (CUDA_OVERSUBSCRIBE), bytes; not part of the used device memory.",
    );
    let mut spill_limit = Family::new(
        "libvgpu_memory_spill_limit_bytes",
        "gauge",
        "The container's spill limit (LIBVGPU_SPILL_LIMIT, default twice the cap) as its spilling processes published it, bytes; 0 = none has spilled.",
    );
    let mut gpu_time = Family::new(
        "libvgpu_gpu_time_seconds_total",
        "counter",
        "GPU time the compute limiter charged to the container (the union of its processes' busy intervals), seconds; measured only while an SM limit applies.",
    );
    let mut throttled = Family::new(
        "libvgpu_throttled_seconds_total",
        "counter",
        "Time the container's launching threads slept waiting for the compute limiter, seconds, summed over threads.",
    );
    let mut procs = Family::new(
        "libvgpu_processes",
        "gauge",
        "Process slots of the region: state=alive (owner running) or dead (owner gone, not yet reaped).",
    );
    let mut per_process = Family::new(
        "libvgpu_process_memory_used_bytes",
        "gauge",
        "Device memory charged to one process (slot), bytes.",
    );
    let mut info = Family::new(
        "libvgpu_region_info",
        "gauge",
        "Always 1; labels give the region's layout version (HAMi major.minor) and libvgpu extension version.",
    );
    let mut count = Family::new("libvgpu_exporter_regions", "gauge", "Regions read for this scrape.");
    let mut skip = Family::new(
        "libvgpu_exporter_skipped_files",
        "gauge",
        "Files passed over for this scrape (not a region, unreadable, foreign or corrupt; see /api/status).",
    );

    for r in regions {
        let s = r.status;
        for d in &s.devices {
            let l = device_labels(r, d.index, &d.uuid);
            used.add(l.clone(), d.used);
            limit.add(l.clone(), d.memory_limit.unwrap_or(0));
            core.add(l.clone(), d.sm_limit.unwrap_or(0));
            context.add(l.clone(), d.context);
            module.add(l.clone(), live_sum(&s.processes, d.index, |u| u.module));
            buffer.add(l.clone(), live_sum(&s.processes, d.index, |u| u.data));
            driver.add(l.clone(), d.driver_overhead);
            dead.add(l.clone(), d.dead_used);
            denials.add(with(l.clone(), "reason", "cap"), d.cap_denials);
            denials.add(with(l.clone(), "reason", "driver"), d.driver_denials);
            denials.add(with(l.clone(), "reason", "spill_limit"), d.spill_denials);
            spilled.add(l.clone(), d.spilled);
            spill_limit.add(l.clone(), d.spill_limit.unwrap_or(0));
            gpu_time.add_nanos(l.clone(), d.gpu_time_ns);
            throttled.add_nanos(l, d.throttled_ns);
        }
        for p in &s.processes {
            for u in &p.usage {
                let uuid = s.devices.get(u.device).map_or("", |d| d.uuid.as_str());
                let l = device_labels(r, u.device, uuid);
                let l = with(with(with(l, "slot", p.slot.to_string()), "pid", p.pid.to_string()), "state", p.state);
                per_process.add(l, u.total);
            }
        }
        if s.last_kernel_time > 0 {
            last_kernel.add(region_labels(r), now.saturating_sub(s.last_kernel_time));
        }
        procs.add(with(region_labels(r), "state", "alive"), s.alive_processes as u64);
        procs.add(with(region_labels(r), "state", "dead"), s.dead_slots as u64);
        let version = format!("{}.{}", s.version.major, s.version.minor);
        info.add(with(with(region_labels(r), "version", version), "extension", s.version.extension.to_string()), 1);
    }
    count.add(Vec::new(), regions.len() as u64);
    skip.add(Vec::new(), skipped as u64);

    let mut out = String::new();
    let families = [
        used,
        limit,
        core,
        context,
        module,
        buffer,
        driver,
        last_kernel,
        dead,
        spilled,
        spill_limit,
        denials,
        gpu_time,
        throttled,
        procs,
        per_process,
        info,
        count,
        skip,
    ];
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, value) in &f.samples {
            out.push_str(f.name);
            if !labels.is_empty() {
                let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
                let _ = write!(out, "{{{}}}", parts.join(","));
            }
            let _ = writeln!(out, " {value}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_label("plain/path.cache"), "plain/path.cache");
    }

    #[test]
    fn hami_directories_give_pod_and_container() {
        assert_eq!(
            hami_dir("0f8fad5b-d9cb-469f-a165-70867728950e_trainer"),
            Some(("0f8fad5b-d9cb-469f-a165-70867728950e", "trainer"))
        );
        assert_eq!(hami_dir("pod-b"), None);
        assert_eq!(hami_dir("abc_def"), None);
        assert_eq!(hami_dir("0f8fad5b-d9cb-469f-a165-70867728950e_"), None);
    }

    #[test]
    fn nanosecond_counters_are_exact_seconds() {
        assert_eq!(Value::Nanos(0).to_string(), "0");
        assert_eq!(Value::Nanos(1_500_000_000).to_string(), "1.5");
        assert_eq!(Value::Nanos(2_000_000_000).to_string(), "2");
        assert_eq!(Value::Nanos(1).to_string(), "0.000000001");
        assert_eq!(Value::Nanos(u64::MAX).to_string(), "18446744073.709551615");
        assert_eq!(Value::Count(u64::MAX).to_string(), "18446744073709551615");
    }

    fn one_device(gpu_time_ns: u64, throttled_ns: u64) -> Status {
        use crate::snapshot::{Device, Version};
        Status {
            schema_version: 1,
            path: "/r/a.cache".into(),
            version: Version { major: 1, minor: 2, extension: 1 },
            device_num: 1,
            proc_num: 0,
            alive_processes: 0,
            dead_slots: 0,
            priority: 1,
            utilization_switch: 1,
            last_kernel_time: 0,
            devices: vec![Device {
                index: 0,
                uuid: "GPU-aaaa".into(),
                memory_limit: None,
                sm_limit: Some(30),
                used: 0,
                context: 0,
                driver_overhead: 0,
                dead_used: 0,
                cap_denials: 0,
                driver_denials: 0,
                spilled: 0,
                spill_limit: None,
                spill_denials: 0,
                gpu_time_ns,
                throttled_ns,
            }],
            processes: Vec::new(),
        }
    }

    #[test]
    fn limiter_counters_are_exported_in_seconds() {
        let s = one_device(12_250_000_000, 3_000_000);
        let body = render(&[Located::new(&s, None)], 0, 0);
        let labels = r#"{container="a.cache",pod_uid="",path="/r/a.cache",vdevice_index="0",device_uuid="GPU-aaaa"}"#;
        assert!(body.contains("# TYPE libvgpu_gpu_time_seconds_total counter\n"), "{body}");
        assert!(body.contains(&format!("\nlibvgpu_gpu_time_seconds_total{labels} 12.25\n")), "{body}");
        assert!(body.contains("# TYPE libvgpu_throttled_seconds_total counter\n"), "{body}");
        assert!(body.contains(&format!("\nlibvgpu_throttled_seconds_total{labels} 0.003\n")), "{body}");
    }
}
