//! The environment contract, parsed once into a [`Config`].
//!
//! Variable names and meanings are HAMi-core's (see the README's variable table). The parser is
//! strict where HAMi-core is lax: a value we cannot read is reported with the variable, the
//! value and what is accepted, and that one limit is then not applied — never read as 1 byte.
//! Parsing is a pure function of the variables so tests never touch the process environment.

use crate::MAX_DEVICES;
use crate::size::{ACCEPTED_SIZES, parse_cap, parse_size};

pub const MEMORY_LIMIT: &str = "CUDA_DEVICE_MEMORY_LIMIT";
pub const SM_LIMIT: &str = "CUDA_DEVICE_SM_LIMIT";
pub const SHARED_CACHE: &str = "CUDA_DEVICE_MEMORY_SHARED_CACHE";
pub const LOG_LEVEL: &str = "LIBCUDA_LOG_LEVEL";
pub const VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";
/// Our own: bytes charged per CUDA context when its cost cannot be measured through NVML.
pub const CONTEXT_OVERHEAD: &str = "LIBVGPU_CONTEXT_OVERHEAD";
/// Least interval between two reconciliations of the ledger with the driver's per-process
/// count, in ms (`off`: never; `0`: at every trigger).
pub const RECONCILE_MS: &str = "LIBVGPU_RECONCILE_MS";
pub const DEFAULT_RECONCILE_MS: u64 = 100;
/// Our own: permissions of a region file we create (octal), for containers whose processes run
/// as several users.
pub const REGION_MODE: &str = "LIBVGPU_REGION_MODE";
/// Our own: the node table where containers sharing a GPU meet (compute limiter, priorities);
/// empty or `off` = none.
pub const NODE_FILE: &str = "LIBVGPU_NODE_FILE";
pub const DEFAULT_NODE_FILE: &str = "/tmp/libvgpu-node.v2";
/// Ours: a limited container also takes the GPU time others leave idle.
pub const SM_BURST: &str = "LIBVGPU_SM_BURST";
/// Our own: owners (uids) of a region or node table file to trust besides this process's own uid
/// and root: a comma-separated list of numeric uids, or `*` for any owner. For containers whose
/// processes run as several users (see docs/security.md).
pub const TRUSTED_UIDS: &str = "LIBVGPU_TRUSTED_UIDS";
/// HAMi: 0 high priority, 1 low (default).
pub const TASK_PRIORITY: &str = "CUDA_TASK_PRIORITY";
/// HAMi: FORCE always limits SM, DISABLE never, anything else follows the region's
/// `utilization_switch`.
pub const CORE_POLICY: &str = "GPU_CORE_UTILIZATION_POLICY";
/// HAMi's switch (set by its device plugin when memory scaling is above 1): an allocation past
/// the cap spills into host memory instead of failing.
pub const OVERSUBSCRIBE: &str = "CUDA_OVERSUBSCRIBE";
/// How much host memory a container may spill past the cap, per device.
pub const SPILL_LIMIT: &str = "LIBVGPU_SPILL_LIMIT";
/// Without `LIBVGPU_SPILL_LIMIT`, the spill limit is this many times the device's cap.
pub const DEFAULT_SPILL_FACTOR: u64 = 2;

/// Whose shared files (region, node table) a process joins. A file written by another user can
/// change this process's caps and shares, so by default only files owned by the process's own
/// (effective) uid or by root are trusted; `LIBVGPU_TRUSTED_UIDS` adds others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedOwners {
    /// `*`: any owner.
    pub any: bool,
    pub uids: Vec<u32>,
}

impl TrustedOwners {
    /// Whether a file owned by `owner` may be joined by a process running as `me`.
    pub fn allows(&self, owner: u32, me: u32) -> bool {
        owner == me || owner == 0 || self.any || self.uids.contains(&owner)
    }

    /// `1000,1001` or `*`; `None` for anything else.
    pub fn parse(value: &str) -> Option<TrustedOwners> {
        let v = value.trim();
        if v == "*" {
            return Some(TrustedOwners { any: true, uids: Vec::new() });
        }
        let uids = v.split(',').map(|u| u.trim().parse::<u32>().ok()).collect::<Option<Vec<u32>>>()?;
        Some(TrustedOwners { any: false, uids })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorePolicy {
    Default,
    Force,
    Disable,
}

pub const DEFAULT_SHARED_CACHE: &str = "/tmp/cudevshr.cache";

/// HAMi-core's levels: 0 errors, 1–2 warnings (default), 3 info, 4 debug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Memory cap per CUDA device ordinal (the index the process sees); `None` = uncapped.
    pub memory_limit: [Option<u64>; MAX_DEVICES],
    /// SM share in percent per ordinal; `None` = unlimited (HAMi: 0 or 100).
    pub sm_limit: [Option<u8>; MAX_DEVICES],
    pub log_level: LogLevel,
    pub shared_cache: String,
    pub visible_devices: Option<String>,
    /// Fixed per-context charge, overriding the measured one.
    pub context_overhead: Option<u64>,
    /// Permission bits of a region file we create.
    pub region_mode: u32,
    pub priority: i32,
    pub core_policy: CorePolicy,
    /// The node table's path; `None` = containers do not coordinate.
    pub node_file: Option<String>,
    /// The SM limit is a guaranteed share, and idle GPU time beyond it is taken too.
    pub sm_burst: bool,
    /// Least interval between driver-overhead reconciliations, ms; `None` = never reconcile.
    pub reconcile_ms: Option<u64>,
    /// `CUDA_OVERSUBSCRIBE`: allocations past the cap spill into host memory.
    pub oversubscribe: bool,
    /// `LIBVGPU_SPILL_LIMIT` in bytes; `None` = twice the device's cap (see [`Config::spill_limit`]).
    pub spill_limit: Option<u64>,
    /// Owners of shared files to trust besides our own uid and root.
    pub trusted: TrustedOwners,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            memory_limit: [None; MAX_DEVICES],
            sm_limit: [None; MAX_DEVICES],
            log_level: LogLevel::Warn,
            shared_cache: DEFAULT_SHARED_CACHE.to_string(),
            visible_devices: None,
            context_overhead: None,
            region_mode: 0o600,
            priority: 1,
            core_policy: CorePolicy::Default,
            node_file: Some(DEFAULT_NODE_FILE.to_string()),
            sm_burst: false,
            reconcile_ms: Some(DEFAULT_RECONCILE_MS),
            oversubscribe: false,
            spill_limit: None,
            trusted: TrustedOwners::default(),
        }
    }
}

/// A variable we could not use; `Display` is the one stderr line the user sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: String,
    pub value: String,
    pub problem: String,
    pub accepted: &'static str,
    pub consequence: &'static str,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}={:?} is invalid ({}); accepted: {}; {}",
            self.variable, self.value, self.problem, self.accepted, self.consequence
        )
    }
}

const ACCEPTED_PERCENT: &str = "a whole percentage 0-100 (0 or 100 = unlimited), e.g. 30";
const ACCEPTED_LEVEL: &str = "0 (errors), 1-2 (warnings), 3 (info), 4 (debug)";
const ACCEPTED_INDEX: &str = "a device index suffix 0-15, e.g. CUDA_DEVICE_MEMORY_LIMIT_0";
const NOT_APPLIED: &str = "this limit is NOT applied";
const ACCEPTED_MODE: &str = "octal permission bits, e.g. 0600 (owner only) or 0666 (every user)";
const ACCEPTED_PRIORITY: &str = "0 (high) or 1 (low)";
const ACCEPTED_SWITCH: &str = "1, true, yes or on; 0, false, no or off";
const ACCEPTED_BOOL: &str = "true or 1; false or 0";
const ACCEPTED_UIDS: &str = "numeric uids separated by commas, e.g. 1000,1001, or * for any owner";

/// Which device(s) a limit variable names.
#[derive(Clone, Copy)]
enum Target {
    All,
    Device(usize),
}

impl Config {
    /// Parses the variables we know; unrelated ones are ignored.
    pub fn from_vars<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> (Config, Vec<ConfigError>) {
        let mut config = Config::default();
        let mut errors = Vec::new();
        let mut memory_all = None;
        let mut memory_dev = [None; MAX_DEVICES];
        let mut sm_all = None;
        let mut sm_dev = [None; MAX_DEVICES];
        for (name, value) in vars {
            let error = |problem: String, accepted, consequence| ConfigError {
                variable: name.to_string(),
                value: value.to_string(),
                problem,
                accepted,
                consequence,
            };
            if let Some(target) = limit_target(name, MEMORY_LIMIT, &mut errors, value) {
                if value.trim().is_empty() {
                    continue;
                }
                match parse_cap(value) {
                    // HAMi: 0 means no cap.
                    Ok(cap) => match target {
                        Target::All => memory_all = Some(cap),
                        Target::Device(i) => memory_dev[i] = Some(cap),
                    },
                    Err(e) => errors.push(error(e.to_string(), ACCEPTED_SIZES, NOT_APPLIED)),
                }
            } else if let Some(target) = limit_target(name, SM_LIMIT, &mut errors, value) {
                if value.trim().is_empty() {
                    continue;
                }
                match parse_percent(value) {
                    Ok(p) => {
                        let share = (p > 0 && p < 100).then_some(p);
                        match target {
                            Target::All => sm_all = Some(share),
                            Target::Device(i) => sm_dev[i] = Some(share),
                        }
                    }
                    Err(problem) => errors.push(error(problem, ACCEPTED_PERCENT, NOT_APPLIED)),
                }
            } else if name == LOG_LEVEL {
                match value.trim().parse::<u8>() {
                    Ok(0) => config.log_level = LogLevel::Error,
                    Ok(1 | 2) => config.log_level = LogLevel::Warn,
                    Ok(3) => config.log_level = LogLevel::Info,
                    Ok(4..) => config.log_level = LogLevel::Debug,
                    Err(_) => errors.push(error("not a level".into(), ACCEPTED_LEVEL, "using the default (warnings)")),
                }
            } else if name == SHARED_CACHE && !value.trim().is_empty() {
                config.shared_cache = value.to_string();
            } else if name == VISIBLE_DEVICES {
                match crate::devices::first_invalid_entry(value) {
                    None => config.visible_devices = Some(value.to_string()),
                    Some(entry) => errors.push(error(
                        format!("entry {entry:?} names no device"),
                        "device indices, GPU-<uuid> or MIG-<uuid>, separated by commas",
                        "CUDA hides the devices from that entry on; memory views show every device with its cap",
                    )),
                }
            } else if name == REGION_MODE {
                let digits = value.trim().trim_start_matches("0o");
                match u32::from_str_radix(digits, 8) {
                    Ok(mode) if mode <= 0o777 && !digits.is_empty() => config.region_mode = mode,
                    _ => errors.push(error("not a permission mode".into(), ACCEPTED_MODE, "using 0600")),
                }
            } else if name == CORE_POLICY {
                match value.trim().to_ascii_uppercase().as_str() {
                    "FORCE" => config.core_policy = CorePolicy::Force,
                    "DISABLE" => config.core_policy = CorePolicy::Disable,
                    "" | "DEFAULT" => config.core_policy = CorePolicy::Default,
                    _ => errors.push(error(
                        "not a policy".into(),
                        "FORCE, DISABLE or DEFAULT",
                        "following the region's utilization_switch",
                    )),
                }
            } else if name == TASK_PRIORITY {
                match value.trim() {
                    "0" => config.priority = 0,
                    "1" => config.priority = 1,
                    _ => errors.push(error("not a priority".into(), ACCEPTED_PRIORITY, "using 1 (low)")),
                }
            } else if name == SM_BURST {
                match value.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => config.sm_burst = true,
                    "" | "0" | "false" | "no" | "off" => config.sm_burst = false,
                    _ => errors.push(error("not a switch".into(), ACCEPTED_SWITCH, "not bursting")),
                }
            } else if name == OVERSUBSCRIBE {
                match value.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" => config.oversubscribe = true,
                    "" | "0" | "false" => config.oversubscribe = false,
                    _ => errors.push(error(
                        "not true or false".into(),
                        ACCEPTED_BOOL,
                        "oversubscription is OFF: allocations stop at the cap",
                    )),
                }
            } else if name == SPILL_LIMIT {
                if value.trim().is_empty() {
                    continue;
                }
                match parse_size(value) {
                    Ok(bytes) => config.spill_limit = Some(bytes),
                    Err(e) => errors.push(error(
                        e.to_string(),
                        ACCEPTED_SIZES,
                        "the spill limit is twice the device's memory cap",
                    )),
                }
            } else if name == NODE_FILE {
                let v = value.trim();
                config.node_file = (!v.is_empty() && !v.eq_ignore_ascii_case("off")).then(|| v.to_string());
            } else if name == RECONCILE_MS {
                let v = value.trim();
                if v.eq_ignore_ascii_case("off") {
                    config.reconcile_ms = None;
                } else {
                    match v.parse::<u64>() {
                        Ok(ms) => config.reconcile_ms = Some(ms),
                        Err(_) => errors.push(error(
                            "not a whole number of milliseconds".into(),
                            "a whole number of milliseconds, or off",
                            "using 100 ms",
                        )),
                    }
                }
            } else if name == TRUSTED_UIDS {
                if value.trim().is_empty() {
                    continue;
                }
                match TrustedOwners::parse(value) {
                    Some(t) => config.trusted = t,
                    None => errors.push(error(
                        "not a list of uids".into(),
                        ACCEPTED_UIDS,
                        "trusting only files of this process's own uid and root",
                    )),
                }
            } else if name == CONTEXT_OVERHEAD {
                match parse_size(value) {
                    Ok(bytes) => config.context_overhead = Some(bytes),
                    Err(e) => errors.push(error(e.to_string(), ACCEPTED_SIZES, "the context cost is measured instead")),
                }
            }
        }
        for i in 0..MAX_DEVICES {
            config.memory_limit[i] = memory_dev[i].or(memory_all).flatten();
            config.sm_limit[i] = sm_dev[i].or(sm_all).flatten();
        }
        (config, errors)
    }

    pub fn from_env() -> (Config, Vec<ConfigError>) {
        Config::from_os_vars(std::env::vars_os())
    }

    /// As [`from_vars`](Self::from_vars), from the raw environment. A value that is not UTF-8 is
    /// read with U+FFFD in place of its bad bytes, so it is refused with the same line as any
    /// other bad value (no parser accepts U+FFFD); a path or device list is not guessed at.
    pub fn from_os_vars(
        vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> (Config, Vec<ConfigError>) {
        use std::os::unix::ffi::OsStrExt;
        let mut owned: Vec<(String, String)> = Vec::new();
        let mut errors = Vec::new();
        // Filter on the raw bytes first: only our few variables are converted (and copied).
        for (k, v) in vars {
            let kb = k.as_bytes();
            if !(kb.starts_with(b"CUDA_")
                || kb.starts_with(b"LIBCUDA_")
                || kb.starts_with(b"LIBVGPU_")
                || kb == CORE_POLICY.as_bytes())
            {
                continue;
            }
            let Ok(name) = k.into_string() else { continue };
            match v.into_string() {
                Ok(value) => owned.push((name, value)),
                Err(raw) => {
                    let lossy = raw.to_string_lossy().into_owned();
                    if [SHARED_CACHE, NODE_FILE, VISIBLE_DEVICES].contains(&name.as_str()) {
                        errors.push(ConfigError {
                            variable: name,
                            value: lossy,
                            problem: "not valid UTF-8".into(),
                            accepted: "UTF-8 text",
                            consequence: "this variable is ignored",
                        });
                    } else {
                        owned.push((name, lossy));
                    }
                }
            }
        }
        let (config, more) = Config::from_vars(owned.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        errors.extend(more);
        (config, errors)
    }

    /// Host memory the container may spill past a device's cap (`cap`), when oversubscription
    /// is on and the device is capped: `LIBVGPU_SPILL_LIMIT`, else twice the cap (a container
    /// then holds at most three times its cap, two thirds of it in host memory).
    /// `None`: no spilling (off, uncapped, or a limit of 0).
    pub fn spill_limit(&self, cap: Option<u64>) -> Option<u64> {
        if !self.oversubscribe {
            return None;
        }
        let cap = cap?;
        Some(self.spill_limit.unwrap_or(cap.saturating_mul(DEFAULT_SPILL_FACTOR))).filter(|&b| b > 0)
    }

    pub fn any_memory_limit(&self) -> bool {
        self.memory_limit.iter().any(Option::is_some)
    }
}

/// `CUDA_DEVICE_MEMORY_LIMIT` → all devices, `CUDA_DEVICE_MEMORY_LIMIT_3` → device 3; a bad
/// suffix is reported rather than ignored, since it is almost certainly a typo'd limit.
fn limit_target(name: &str, base: &str, errors: &mut Vec<ConfigError>, value: &str) -> Option<Target> {
    let rest = name.strip_prefix(base)?;
    if rest.is_empty() {
        return Some(Target::All);
    }
    let index = rest.strip_prefix('_')?;
    match index.parse::<usize>() {
        Ok(i) if i < MAX_DEVICES && (index == "0" || !index.starts_with('0')) => Some(Target::Device(i)),
        _ => {
            errors.push(ConfigError {
                variable: name.to_string(),
                value: value.to_string(),
                problem: "unknown device index".into(),
                accepted: ACCEPTED_INDEX,
                consequence: NOT_APPLIED,
            });
            None
        }
    }
}

fn parse_percent(value: &str) -> Result<u8, String> {
    let digits = value.trim();
    let digits = digits.strip_suffix('%').unwrap_or(digits);
    match digits.parse::<u32>() {
        Ok(p) if p <= 100 => Ok(p as u8),
        Ok(_) => Err("above 100".into()),
        Err(_) => Err("not a whole number".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn parse(vars: &[(&str, &str)]) -> (Config, Vec<ConfigError>) {
        Config::from_vars(vars.iter().copied())
    }

    #[test]
    fn general_limit_applies_to_every_device_and_per_device_overrides() {
        let (c, e) = parse(&[("CUDA_DEVICE_MEMORY_LIMIT", "4g"), ("CUDA_DEVICE_MEMORY_LIMIT_1", "1024m")]);
        assert!(e.is_empty());
        assert_eq!(c.memory_limit[0], Some(4 * GIB));
        assert_eq!(c.memory_limit[1], Some(GIB));
        assert_eq!(c.memory_limit[15], Some(4 * GIB));
    }

    #[test]
    fn per_device_zero_uncaps_one_device() {
        let (c, _) = parse(&[("CUDA_DEVICE_MEMORY_LIMIT", "4g"), ("CUDA_DEVICE_MEMORY_LIMIT_2", "0")]);
        assert_eq!(c.memory_limit[2], None);
        assert_eq!(c.memory_limit[1], Some(4 * GIB));
    }

    #[test]
    fn bad_value_is_reported_with_variable_value_and_forms_and_not_applied() {
        let (c, e) = parse(&[("CUDA_DEVICE_MEMORY_LIMIT_0", "2 gigs")]);
        assert_eq!(c.memory_limit[0], None);
        assert_eq!(e.len(), 1);
        let line = e[0].to_string();
        assert!(line.contains("CUDA_DEVICE_MEMORY_LIMIT_0"), "{line}");
        assert!(line.contains("\"2 gigs\""), "{line}");
        assert!(line.contains("4GiB"), "{line}");
        assert!(line.contains("NOT applied"), "{line}");
    }

    #[test]
    fn bad_general_limit_leaves_valid_per_device_limit() {
        let (c, e) = parse(&[("CUDA_DEVICE_MEMORY_LIMIT", "lots"), ("CUDA_DEVICE_MEMORY_LIMIT_0", "1g")]);
        assert_eq!(e.len(), 1);
        assert_eq!(c.memory_limit[0], Some(GIB));
        assert_eq!(c.memory_limit[1], None);
    }

    #[test]
    fn bad_index_suffix_is_reported() {
        for name in ["CUDA_DEVICE_MEMORY_LIMIT_16", "CUDA_DEVICE_MEMORY_LIMIT_x", "CUDA_DEVICE_SM_LIMIT_01"] {
            let (_, e) = parse(&[(name, "1g")]);
            assert_eq!(e.len(), 1, "{name}");
            assert!(e[0].to_string().contains("device index"));
        }
    }

    #[test]
    fn sm_limits() {
        let (c, e) = parse(&[
            ("CUDA_DEVICE_SM_LIMIT", "30"),
            ("CUDA_DEVICE_SM_LIMIT_1", "100"),
            ("CUDA_DEVICE_SM_LIMIT_2", "50%"),
        ]);
        assert!(e.is_empty());
        assert_eq!(c.sm_limit[0], Some(30));
        assert_eq!(c.sm_limit[1], None);
        assert_eq!(c.sm_limit[2], Some(50));
        let (c, e) = parse(&[("CUDA_DEVICE_SM_LIMIT", "130")]);
        assert_eq!(c.sm_limit[0], None);
        assert!(e[0].to_string().contains("0-100"));
    }

    #[test]
    fn log_levels_and_paths() {
        let (c, e) = parse(&[("LIBCUDA_LOG_LEVEL", "4"), ("CUDA_DEVICE_MEMORY_SHARED_CACHE", "/x/y")]);
        assert!(e.is_empty());
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.shared_cache, "/x/y");
        let (c, e) = parse(&[("LIBCUDA_LOG_LEVEL", "loud")]);
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn burst_switch() {
        assert!(!parse(&[]).0.sm_burst);
        assert!(parse(&[("LIBVGPU_SM_BURST", "1")]).0.sm_burst);
        assert!(parse(&[("LIBVGPU_SM_BURST", " On ")]).0.sm_burst);
        assert!(!parse(&[("LIBVGPU_SM_BURST", "off")]).0.sm_burst);
        let (c, errors) = parse(&[("LIBVGPU_SM_BURST", "maybe")]);
        assert!(!c.sm_burst);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("LIBVGPU_SM_BURST=\"maybe\""), "{}", errors[0]);
    }

    #[test]
    fn oversubscribe_switch_and_spill_limit() {
        let (c, e) = parse(&[]);
        assert!(!c.oversubscribe && e.is_empty());
        assert_eq!(c.spill_limit(Some(1 << 30)), None, "off by default");
        for on in ["true", "1", "TRUE", " True "] {
            assert!(parse(&[("CUDA_OVERSUBSCRIBE", on)]).0.oversubscribe, "{on}");
        }
        for off in ["false", "0", "False", ""] {
            let (c, e) = parse(&[("CUDA_OVERSUBSCRIBE", off)]);
            assert!(!c.oversubscribe && e.is_empty(), "{off}");
        }
        let (c, e) = parse(&[("CUDA_OVERSUBSCRIBE", "yes please")]);
        assert!(!c.oversubscribe);
        assert_eq!(e.len(), 1);
        let line = e[0].to_string();
        assert!(line.contains("CUDA_OVERSUBSCRIBE=\"yes please\"") && line.contains("OFF"), "{line}");

        let (c, _) = parse(&[("CUDA_OVERSUBSCRIBE", "true")]);
        assert_eq!(c.spill_limit(Some(4 << 30)), Some(8 << 30), "default: twice the cap");
        assert_eq!(c.spill_limit(None), None, "an uncapped device never spills");
        let (c, _) = parse(&[("CUDA_OVERSUBSCRIBE", "1"), ("LIBVGPU_SPILL_LIMIT", "16g")]);
        assert_eq!(c.spill_limit(Some(4 << 30)), Some(16 << 30));
        let (c, _) = parse(&[("CUDA_OVERSUBSCRIBE", "1"), ("LIBVGPU_SPILL_LIMIT", "0")]);
        assert_eq!(c.spill_limit(Some(4 << 30)), None, "0: no spilling");
        let (c, e) = parse(&[("CUDA_OVERSUBSCRIBE", "1"), ("LIBVGPU_SPILL_LIMIT", "lots")]);
        assert_eq!((c.spill_limit(Some(1 << 30)), e.len()), (Some(2 << 30), 1));
    }

    #[test]
    fn node_file_default_path_and_off() {
        assert_eq!(parse(&[]).0.node_file.as_deref(), Some(DEFAULT_NODE_FILE));
        assert_eq!(parse(&[("LIBVGPU_NODE_FILE", "/run/vgpu/node")]).0.node_file.as_deref(), Some("/run/vgpu/node"));
        assert_eq!(parse(&[("LIBVGPU_NODE_FILE", "off")]).0.node_file, None);
        assert_eq!(parse(&[]).0.reconcile_ms, Some(100));
        assert_eq!(parse(&[("LIBVGPU_RECONCILE_MS", "0")]).0.reconcile_ms, Some(0));
        assert_eq!(parse(&[("LIBVGPU_RECONCILE_MS", "OFF")]).0.reconcile_ms, None);
        let (c, e) = parse(&[("LIBVGPU_RECONCILE_MS", "1s")]);
        assert_eq!((c.reconcile_ms, e.len()), (Some(100), 1));
        assert_eq!(parse(&[("LIBVGPU_NODE_FILE", "")]).0.node_file, None);
    }

    #[test]
    fn region_mode_and_priority() {
        let (c, e) = parse(&[("LIBVGPU_REGION_MODE", "0666"), ("CUDA_TASK_PRIORITY", "0")]);
        assert!(e.is_empty());
        assert_eq!((c.region_mode, c.priority), (0o666, 0));
        let (c, e) = parse(&[("LIBVGPU_REGION_MODE", "0o640")]);
        assert!(e.is_empty());
        assert_eq!(c.region_mode, 0o640);
        for bad in ["999", "rw-", "", "01777"] {
            let (c, e) = parse(&[("LIBVGPU_REGION_MODE", bad)]);
            assert_eq!(c.region_mode, 0o600, "{bad}");
            assert_eq!(e.len(), 1, "{bad}");
        }
        let (c, e) = parse(&[("CUDA_TASK_PRIORITY", "high")]);
        assert_eq!((c.priority, e.len()), (1, 1));
    }

    #[test]
    fn empty_values_mean_unset() {
        let (c, e) = parse(&[("CUDA_DEVICE_MEMORY_LIMIT", ""), ("CUDA_DEVICE_SM_LIMIT", " ")]);
        assert!(e.is_empty());
        assert_eq!(c, Config::default());
    }

    #[test]
    fn values_that_are_not_utf8_get_the_bad_value_line() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        for name in [
            "CUDA_DEVICE_MEMORY_LIMIT",
            "CUDA_DEVICE_MEMORY_LIMIT_0",
            "CUDA_DEVICE_SM_LIMIT",
            "CUDA_DEVICE_SM_LIMIT_1",
            "LIBCUDA_LOG_LEVEL",
            "LIBVGPU_REGION_MODE",
            "CUDA_DEVICE_MEMORY_SHARED_CACHE",
        ] {
            let vars = vec![(OsString::from(name), OsString::from_vec(b"1g\xa0".to_vec()))];
            let (c, e) = Config::from_os_vars(vars);
            assert_eq!(e.len(), 1, "{name}: {e:?}");
            let line = e[0].to_string();
            assert!(line.starts_with(&format!("{name}=")) && line.contains("invalid"), "{line}");
            assert_eq!(c.memory_limit, [None; MAX_DEVICES], "{name}");
            assert_eq!(c.shared_cache, DEFAULT_SHARED_CACHE);
        }
    }

    #[test]
    fn caps_that_round_to_nothing_or_are_tiny_are_refused() {
        for v in ["0.0001k", "0.0000000001g", "2", "2048"] {
            let (c, e) = parse(&[("CUDA_DEVICE_MEMORY_LIMIT", v)]);
            assert_eq!(c.memory_limit[0], None, "{v}");
            assert_eq!(e.len(), 1, "{v}");
            assert!(e[0].to_string().contains(&format!("{v:?}")), "{}", e[0]);
        }
        assert_eq!(parse(&[("CUDA_DEVICE_MEMORY_LIMIT", "0")]).1, vec![]);
    }

    #[test]
    fn an_invalid_visible_devices_entry_is_reported_and_views_keep_their_caps() {
        let (c, e) = parse(&[("CUDA_VISIBLE_DEVICES", "GPUé1"), ("CUDA_DEVICE_MEMORY_LIMIT", "1g")]);
        assert_eq!(e.len(), 1);
        assert!(e[0].to_string().contains("\"GPUé1\""), "{}", e[0]);
        assert_eq!((c.visible_devices, c.memory_limit[0]), (None, Some(GIB)));
        assert_eq!(parse(&[("CUDA_VISIBLE_DEVICES", "1,0")]).0.visible_devices.as_deref(), Some("1,0"));
    }

    #[test]
    fn trusted_uids() {
        assert_eq!(parse(&[]).0.trusted, TrustedOwners::default());
        let (c, e) = parse(&[("LIBVGPU_TRUSTED_UIDS", "1000, 1001")]);
        assert!(e.is_empty());
        assert_eq!(c.trusted.uids, vec![1000, 1001]);
        assert!(c.trusted.allows(1001, 5) && c.trusted.allows(0, 5) && c.trusted.allows(5, 5));
        assert!(!c.trusted.allows(1002, 5));
        assert!(parse(&[("LIBVGPU_TRUSTED_UIDS", "*")]).0.trusted.allows(65534, 5));
        let (c, e) = parse(&[("LIBVGPU_TRUSTED_UIDS", "nobody")]);
        assert_eq!((c.trusted, e.len()), (TrustedOwners::default(), 1));
    }

    #[test]
    fn unrelated_variables_are_ignored() {
        let (c, e) = parse(&[("CUDA_DEVICE_ORDER", "PCI_BUS_ID"), ("CUDA_DEVICE_MEMORY_LIMITX", "1")]);
        assert!(e.is_empty());
        assert_eq!(c, Config::default());
    }
}
