//! The process-wide settings: every variable other than the per-device limits, each with a
//! reader of its own that sets its field of [`Config`] or says why not.

use super::read::{Refusal, Var};
use super::{
    CONTEXT_OVERHEAD, CORE_POLICY, Config, CorePolicy, LOG_LEVEL, LogLevel, NODE_FILE, OVERSUBSCRIBE, RECONCILE_MS,
    REGION_MODE, SHARED_CACHE, SM_BURST, SPILL_LIMIT, TASK_PRIORITY, TRUSTED_UIDS, TrustedOwners, VISIBLE_DEVICES,
};
use crate::size::{ACCEPTED_SIZES, parse_size};

const ACCEPTED_LEVEL: &str = "0 (errors), 1-2 (warnings), 3 (info), 4 (debug)";
const ACCEPTED_MODE: &str = "octal permission bits, e.g. 0600 (owner only) or 0666 (every user)";
const ACCEPTED_PRIORITY: &str = "0 (high) or 1 (low)";
const ACCEPTED_SWITCH: &str = "1, true, yes or on; 0, false, no or off";
const ACCEPTED_BOOL: &str = "true or 1; false or 0";
const ACCEPTED_UIDS: &str = "numeric uids separated by commas, e.g. 1000,1001, or * for any owner";

type Reader = fn(&mut Config, &str) -> Result<(), Refusal>;

/// Reads `var` if it is one of ours; any other variable is ignored.
pub(super) fn read(config: &mut Config, var: Var<'_>) -> Result<(), Refusal> {
    let reader: Reader = match var.name {
        LOG_LEVEL => log_level,
        SHARED_CACHE => shared_cache,
        VISIBLE_DEVICES => visible_devices,
        REGION_MODE => region_mode,
        CORE_POLICY => core_policy,
        TASK_PRIORITY => priority,
        SM_BURST => sm_burst,
        OVERSUBSCRIBE => oversubscribe,
        SPILL_LIMIT => spill_limit,
        NODE_FILE => node_file,
        RECONCILE_MS => reconcile_ms,
        TRUSTED_UIDS => trusted_uids,
        CONTEXT_OVERHEAD => context_overhead,
        _ => return Ok(()),
    };
    reader(config, var.value)
}

fn log_level(c: &mut Config, value: &str) -> Result<(), Refusal> {
    c.log_level = match value.trim().parse::<u8>() {
        Ok(0) => LogLevel::Error,
        Ok(1 | 2) => LogLevel::Warn,
        Ok(3) => LogLevel::Info,
        Ok(4..) => LogLevel::Debug,
        Err(_) => return Err(Refusal::new("not a level", ACCEPTED_LEVEL, "using the default (warnings)")),
    };
    Ok(())
}

/// An empty path keeps the default.
fn shared_cache(c: &mut Config, value: &str) -> Result<(), Refusal> {
    if !value.trim().is_empty() {
        c.shared_cache = value.to_string();
    }
    Ok(())
}

fn visible_devices(c: &mut Config, value: &str) -> Result<(), Refusal> {
    match crate::devices::first_invalid_entry(value) {
        None => c.visible_devices = Some(value.to_string()),
        Some(entry) => {
            return Err(Refusal::new(
                format!("entry {entry:?} names no device"),
                "device indices, GPU-<uuid> or MIG-<uuid>, separated by commas",
                "CUDA hides the devices from that entry on; memory views show every device with its cap",
            ));
        }
    }
    Ok(())
}

fn region_mode(c: &mut Config, value: &str) -> Result<(), Refusal> {
    let digits = value.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 && !digits.is_empty() => c.region_mode = mode,
        _ => return Err(Refusal::new("not a permission mode", ACCEPTED_MODE, "using 0600")),
    }
    Ok(())
}

fn core_policy(c: &mut Config, value: &str) -> Result<(), Refusal> {
    c.core_policy = match value.trim().to_ascii_uppercase().as_str() {
        "FORCE" => CorePolicy::Force,
        "DISABLE" => CorePolicy::Disable,
        "" | "DEFAULT" => CorePolicy::Default,
        _ => {
            return Err(Refusal::new(
                "not a policy",
                "FORCE, DISABLE or DEFAULT",
                "following the region's utilization_switch",
            ));
        }
    };
    Ok(())
}

fn priority(c: &mut Config, value: &str) -> Result<(), Refusal> {
    c.priority = match value.trim() {
        "0" => 0,
        "1" => 1,
        _ => return Err(Refusal::new("not a priority", ACCEPTED_PRIORITY, "using 1 (low)")),
    };
    Ok(())
}

fn sm_burst(c: &mut Config, value: &str) -> Result<(), Refusal> {
    c.sm_burst = match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => true,
        "" | "0" | "false" | "no" | "off" => false,
        _ => return Err(Refusal::new("not a switch", ACCEPTED_SWITCH, "not bursting")),
    };
    Ok(())
}

fn oversubscribe(c: &mut Config, value: &str) -> Result<(), Refusal> {
    c.oversubscribe = match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" => true,
        "" | "0" | "false" => false,
        _ => {
            return Err(Refusal::new(
                "not true or false",
                ACCEPTED_BOOL,
                "oversubscription is OFF: allocations stop at the cap",
            ));
        }
    };
    Ok(())
}

/// An empty value keeps the default (twice the cap).
fn spill_limit(c: &mut Config, value: &str) -> Result<(), Refusal> {
    if value.trim().is_empty() {
        return Ok(());
    }
    let bytes = parse_size(value)
        .map_err(|e| Refusal::new(e.to_string(), ACCEPTED_SIZES, "the spill limit is twice the device's memory cap"))?;
    c.spill_limit = Some(bytes);
    Ok(())
}

/// Empty or `off`: no node table.
fn node_file(c: &mut Config, value: &str) -> Result<(), Refusal> {
    let v = value.trim();
    c.node_file = (!v.is_empty() && !v.eq_ignore_ascii_case("off")).then(|| v.to_string());
    Ok(())
}

fn reconcile_ms(c: &mut Config, value: &str) -> Result<(), Refusal> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("off") {
        c.reconcile_ms = None;
        return Ok(());
    }
    let ms = v.parse::<u64>().map_err(|_| {
        Refusal::new("not a whole number of milliseconds", "a whole number of milliseconds, or off", "using 100 ms")
    })?;
    c.reconcile_ms = Some(ms);
    Ok(())
}

/// An empty value keeps the default (own uid and root only).
fn trusted_uids(c: &mut Config, value: &str) -> Result<(), Refusal> {
    if value.trim().is_empty() {
        return Ok(());
    }
    c.trusted = TrustedOwners::parse(value).ok_or_else(|| {
        Refusal::new("not a list of uids", ACCEPTED_UIDS, "trusting only files of this process's own uid and root")
    })?;
    Ok(())
}

fn context_overhead(c: &mut Config, value: &str) -> Result<(), Refusal> {
    let bytes = parse_size(value)
        .map_err(|e| Refusal::new(e.to_string(), ACCEPTED_SIZES, "the context cost is measured instead"))?;
    c.context_overhead = Some(bytes);
    Ok(())
}
