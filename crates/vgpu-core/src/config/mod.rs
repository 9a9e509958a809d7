//! The environment contract, parsed once into a [`Config`].
//!
//! Variable names and meanings are HAMi-core's (see the README's variable table). The parser is
//! strict where HAMi-core is lax: a value we cannot read is reported with the variable, the
//! value and what is accepted, and that one limit is then not applied — never read as 1 byte.
//! Parsing is a pure function of the variables so tests never touch the process environment.

mod environ;
mod limits;
mod read;
mod settings;
#[cfg(test)]
mod tests;

use crate::MAX_DEVICES;

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
/// Our own: a limited container also takes the GPU time others leave idle.
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

impl Config {
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
