//! Prometheus text exposition (format 0.0.4) of region snapshots.
//!
//! Families that HAMi's vGPUmonitor also exports keep its names, meanings and label names
//! (`hami_vgpu_memory_used_bytes`: Σ `used[dev].total` of live slots; `container`,
//! `vdevice_index`, `device_uuid`), so its dashboards and alerts work on either. Our own
//! families are `libvgpu_*`. Every family gets `# HELP` and `# TYPE`, its samples are contiguous,
//! and label values are escaped (`\\`, `\"`, `\n`).

use std::fmt::Write as _;
use std::path::Path;

use crate::snapshot::{Device, Process, Status};

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

/// A family's name, `# TYPE` and `# HELP` text.
struct Spec {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

const fn gauge(name: &'static str, help: &'static str) -> Spec {
    Spec { name, kind: "gauge", help }
}

const fn counter(name: &'static str, help: &'static str) -> Spec {
    Spec { name, kind: "counter", help }
}

const USED: Spec = gauge(
    "hami_vgpu_memory_used_bytes",
    "Device memory charged to the container's live processes (allocations and contexts), bytes; HAMi vGPUmonitor compatible.",
);
const LIMIT: Spec = gauge(
    "hami_vgpu_memory_limit_bytes",
    "Device memory cap of the container, bytes; 0 = no cap; HAMi vGPUmonitor compatible.",
);
const CORE: Spec =
    gauge("hami_vgpu_core_limit_percent", "SM (compute) share of the container in percent; 0 = no limit.");
const CONTEXT: Spec = gauge(
    "hami_vgpu_memory_context_bytes",
    "Of the used memory, what CUDA contexts take, bytes; HAMi vGPUmonitor compatible.",
);
const MODULE: Spec = gauge(
    "hami_vgpu_memory_module_bytes",
    "Of the used memory, what loaded modules take, bytes; HAMi vGPUmonitor compatible.",
);
const BUFFER: Spec = gauge(
    "hami_vgpu_memory_buffer_bytes",
    "Of the used memory, what allocations take, bytes; HAMi vGPUmonitor compatible.",
);
const DRIVER: Spec = gauge(
    "libvgpu_memory_driver_overhead_bytes",
    "Of the used memory, what the driver spends outside the hooked allocations (lazily loaded modules, graph memory, pool caches, library workspaces), found by reconciling with its per-process count, bytes.",
);
const LAST_KERNEL: Spec = gauge(
    "hami_container_last_kernel_elapsed_seconds",
    "Seconds since the container last launched a kernel (only once it has); HAMi vGPUmonitor compatible.",
);
const DEAD: Spec = gauge(
    "libvgpu_memory_dead_bytes",
    "Device memory still charged to processes that died, counted against the cap until reaped (vgpu reap), bytes.",
);
const SPILLED: Spec = gauge(
    "libvgpu_memory_spilled_bytes",
    "Host memory the container spilled past its cap (CUDA_OVERSUBSCRIBE), bytes; not part of the used device memory.",
);
const SPILL_LIMIT: Spec = gauge(
    "libvgpu_memory_spill_limit_bytes",
    "The container's spill limit (LIBVGPU_SPILL_LIMIT, default twice the cap) as its spilling processes published it, bytes; 0 = none has spilled.",
);
const DENIALS: Spec = counter(
    "libvgpu_allocation_denials_total",
    "Allocations refused: reason=cap by the container's cap, reason=driver by the driver while within the cap, reason=spill_limit past the spill limit while oversubscribing.",
);
const GPU_TIME: Spec = counter(
    "libvgpu_gpu_time_seconds_total",
    "GPU time the compute limiter charged to the container (the union of its processes' busy intervals), seconds; measured only while an SM limit applies.",
);
const THROTTLED: Spec = counter(
    "libvgpu_throttled_seconds_total",
    "Time the container's launching threads slept waiting for the compute limiter, seconds, summed over threads.",
);
const PROCS: Spec = gauge(
    "libvgpu_processes",
    "Process slots of the region: state=alive (owner running) or dead (owner gone, not yet reaped).",
);
const PER_PROCESS: Spec =
    gauge("libvgpu_process_memory_used_bytes", "Device memory charged to one process (slot), bytes.");
const INFO: Spec = gauge(
    "libvgpu_region_info",
    "Always 1; labels give the region's layout version (HAMi major.minor) and libvgpu extension version.",
);
const COUNT: Spec = gauge("libvgpu_exporter_regions", "Regions read for this scrape.");
const SKIP: Spec = gauge(
    "libvgpu_exporter_skipped_files",
    "Files passed over for this scrape (not a region, unreadable, foreign or corrupt; see /api/status).",
);

type Labels = Vec<(&'static str, String)>;

struct Family {
    spec: Spec,
    samples: Vec<(Labels, Value)>,
}

impl Family {
    fn new(spec: Spec) -> Self {
        Family { spec, samples: Vec::new() }
    }
    fn add(&mut self, labels: Labels, value: u64) {
        self.samples.push((labels, Value::Count(value)));
    }
    fn add_nanos(&mut self, labels: Labels, ns: u64) {
        self.samples.push((labels, Value::Nanos(ns)));
    }

    /// `# HELP`, `# TYPE`, then one line per sample.
    fn write(&self, out: &mut String) {
        let Spec { name, kind, help } = self.spec;
        let _ = writeln!(out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in &self.samples {
            out.push_str(name);
            if !labels.is_empty() {
                let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
                let _ = write!(out, "{{{}}}", parts.join(","));
            }
            let _ = writeln!(out, " {value}");
        }
    }
}

fn region_labels(r: &Located) -> Labels {
    vec![("container", r.container.clone()), ("pod_uid", r.pod_uid.clone()), ("path", r.status.path.clone())]
}

fn device_labels(r: &Located, index: usize, uuid: &str) -> Labels {
    let mut l = region_labels(r);
    l.push(("vdevice_index", index.to_string()));
    l.push(("device_uuid", uuid.to_string()));
    l
}

fn with(mut labels: Labels, k: &'static str, v: impl Into<String>) -> Labels {
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

/// Every family of the body, fields in the order they are written.
struct Families {
    used: Family,
    limit: Family,
    core: Family,
    context: Family,
    module: Family,
    buffer: Family,
    driver: Family,
    last_kernel: Family,
    dead: Family,
    spilled: Family,
    spill_limit: Family,
    denials: Family,
    gpu_time: Family,
    throttled: Family,
    procs: Family,
    per_process: Family,
    info: Family,
    count: Family,
    skip: Family,
}

impl Families {
    fn new() -> Self {
        Families {
            used: Family::new(USED),
            limit: Family::new(LIMIT),
            core: Family::new(CORE),
            context: Family::new(CONTEXT),
            module: Family::new(MODULE),
            buffer: Family::new(BUFFER),
            driver: Family::new(DRIVER),
            last_kernel: Family::new(LAST_KERNEL),
            dead: Family::new(DEAD),
            spilled: Family::new(SPILLED),
            spill_limit: Family::new(SPILL_LIMIT),
            denials: Family::new(DENIALS),
            gpu_time: Family::new(GPU_TIME),
            throttled: Family::new(THROTTLED),
            procs: Family::new(PROCS),
            per_process: Family::new(PER_PROCESS),
            info: Family::new(INFO),
            count: Family::new(COUNT),
            skip: Family::new(SKIP),
        }
    }

    /// One region's samples: its devices, its processes' usage, then its own gauges.
    fn add_region(&mut self, r: &Located, now: u64) {
        let s = r.status;
        for d in &s.devices {
            self.add_device(r, d);
        }
        for p in &s.processes {
            for u in &p.usage {
                let uuid = s.devices.get(u.device).map_or("", |d| d.uuid.as_str());
                let l = device_labels(r, u.device, uuid);
                let l = with(with(with(l, "slot", p.slot.to_string()), "pid", p.pid.to_string()), "state", p.state);
                self.per_process.add(l, u.total);
            }
        }
        if s.last_kernel_time > 0 {
            self.last_kernel.add(region_labels(r), now.saturating_sub(s.last_kernel_time));
        }
        self.procs.add(with(region_labels(r), "state", "alive"), s.alive_processes as u64);
        self.procs.add(with(region_labels(r), "state", "dead"), s.dead_slots as u64);
        let version = format!("{}.{}", s.version.major, s.version.minor);
        let info = with(with(region_labels(r), "version", version), "extension", s.version.extension.to_string());
        self.info.add(info, 1);
    }

    /// The per-device families of one of `r`'s devices.
    fn add_device(&mut self, r: &Located, d: &Device) {
        let processes = &r.status.processes;
        let l = device_labels(r, d.index, &d.uuid);
        self.used.add(l.clone(), d.used);
        self.limit.add(l.clone(), d.memory_limit.unwrap_or(0));
        self.core.add(l.clone(), d.sm_limit.unwrap_or(0));
        self.context.add(l.clone(), d.context);
        self.module.add(l.clone(), live_sum(processes, d.index, |u| u.module));
        self.buffer.add(l.clone(), live_sum(processes, d.index, |u| u.data));
        self.driver.add(l.clone(), d.driver_overhead);
        self.dead.add(l.clone(), d.dead_used);
        self.denials.add(with(l.clone(), "reason", "cap"), d.cap_denials);
        self.denials.add(with(l.clone(), "reason", "driver"), d.driver_denials);
        self.denials.add(with(l.clone(), "reason", "spill_limit"), d.spill_denials);
        self.spilled.add(l.clone(), d.spilled);
        self.spill_limit.add(l.clone(), d.spill_limit.unwrap_or(0));
        self.gpu_time.add_nanos(l.clone(), d.gpu_time_ns);
        self.throttled.add_nanos(l, d.throttled_ns);
    }

    fn write(&self, out: &mut String) {
        for f in [
            &self.used,
            &self.limit,
            &self.core,
            &self.context,
            &self.module,
            &self.buffer,
            &self.driver,
            &self.last_kernel,
            &self.dead,
            &self.spilled,
            &self.spill_limit,
            &self.denials,
            &self.gpu_time,
            &self.throttled,
            &self.procs,
            &self.per_process,
            &self.info,
            &self.count,
            &self.skip,
        ] {
            f.write(out);
        }
    }
}

/// The whole `/metrics` body. `skipped`: files a scan passed over (or a `--cache` region that
/// could not be read); `now`: unix seconds, for the time since the last kernel.
pub fn render(regions: &[Located], skipped: usize, now: u64) -> String {
    let mut families = Families::new();
    for r in regions {
        families.add_region(r, now);
    }
    families.count.add(Vec::new(), regions.len() as u64);
    families.skip.add(Vec::new(), skipped as u64);
    let mut out = String::new();
    families.write(&mut out);
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
