//! The per-device limits: `CUDA_DEVICE_MEMORY_LIMIT` and `CUDA_DEVICE_SM_LIMIT`, each for every
//! device, or with an index suffix (`_3`) for one; a device's own variable wins.

use super::read::{Refusal, Var};
use super::{Config, MEMORY_LIMIT, SM_LIMIT};
use crate::MAX_DEVICES;
use crate::limiter::sm_limit_applies;
use crate::size::{ACCEPTED_SIZES, parse_cap};

const ACCEPTED_PERCENT: &str = "a whole percentage 0-100 (0 or 100 = unlimited), e.g. 30";
const ACCEPTED_INDEX: &str = "a device index suffix 0-15, e.g. CUDA_DEVICE_MEMORY_LIMIT_0";
const NOT_APPLIED: &str = "this limit is NOT applied";

/// Which device(s) a limit variable names.
#[derive(Clone, Copy)]
enum Target {
    All,
    Device(usize),
}

/// One limit as read so far: the general variable's value and each device's, `None` while
/// unset (a set value may itself be `None`: no limit).
#[derive(Default)]
struct PerDevice<T> {
    all: Option<Option<T>>,
    device: [Option<Option<T>>; MAX_DEVICES],
}

impl<T: Copy> PerDevice<T> {
    /// Sets `target`'s limit to `value` as `parse` reads it; an empty value leaves it unset.
    fn read(
        &mut self,
        target: Target,
        value: &str,
        parse: fn(&str) -> Result<Option<T>, Refusal>,
    ) -> Result<(), Refusal> {
        if value.trim().is_empty() {
            return Ok(());
        }
        let limit = parse(value)?;
        match target {
            Target::All => self.all = Some(limit),
            Target::Device(i) => self.device[i] = Some(limit),
        }
        Ok(())
    }

    fn resolve(&self) -> [Option<T>; MAX_DEVICES] {
        std::array::from_fn(|i| self.device[i].or(self.all).flatten())
    }
}

/// The memory caps and SM shares read so far.
#[derive(Default)]
pub(super) struct Limits {
    memory: PerDevice<u64>,
    sm: PerDevice<u8>,
}

impl Limits {
    /// Reads `var` if it is a limit variable (`None` if it is not).
    pub(super) fn read(&mut self, var: Var<'_>) -> Option<Result<(), Refusal>> {
        if let Some(target) = target(var.name, MEMORY_LIMIT) {
            return Some(target.and_then(|t| self.memory.read(t, var.value, memory_cap)));
        }
        let target = target(var.name, SM_LIMIT)?;
        Some(target.and_then(|t| self.sm.read(t, var.value, sm_share)))
    }

    /// Writes each device's limits into `config`.
    pub(super) fn apply(&self, config: &mut Config) {
        config.memory_limit = self.memory.resolve();
        config.sm_limit = self.sm.resolve();
    }
}

/// `CUDA_DEVICE_MEMORY_LIMIT` → all devices, `CUDA_DEVICE_MEMORY_LIMIT_3` → device 3; a bad
/// suffix is reported rather than ignored, since it is almost certainly a typo'd limit. `None`:
/// not this variable.
fn target(name: &str, base: &str) -> Option<Result<Target, Refusal>> {
    let rest = name.strip_prefix(base)?;
    if rest.is_empty() {
        return Some(Ok(Target::All));
    }
    let index = rest.strip_prefix('_')?;
    Some(match index.parse::<usize>() {
        Ok(i) if i < MAX_DEVICES && (index == "0" || !index.starts_with('0')) => Ok(Target::Device(i)),
        _ => Err(Refusal::new("unknown device index", ACCEPTED_INDEX, NOT_APPLIED)),
    })
}

/// A memory cap; `None` for 0, HAMi's "no cap".
fn memory_cap(value: &str) -> Result<Option<u64>, Refusal> {
    parse_cap(value).map_err(|e| Refusal::new(e.to_string(), ACCEPTED_SIZES, NOT_APPLIED))
}

/// An SM share in percent; `None` for 0 or 100, HAMi's "unlimited".
fn sm_share(value: &str) -> Result<Option<u8>, Refusal> {
    let p = parse_percent(value).map_err(|problem| Refusal::new(problem, ACCEPTED_PERCENT, NOT_APPLIED))?;
    Ok(sm_limit_applies(p.into()).then_some(p))
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
