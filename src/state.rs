//! Process-wide state, built on the first hooked call (never at load: the library is mapped into
//! every process of a container and must cost nothing in those that never touch the GPU).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use vgpu_core::MAX_DEVICES;

use vgpu_core::config::Config;
use vgpu_core::devices::{format_uuid, format_uuid_bytes, ordinal_uuids};
use vgpu_core::ledger::MemoryLedger;

use crate::container::Container;
use crate::driver;
use crate::driver::{Lib, libs};

pub struct State {
    pub config: Config,
    /// Container-wide through the shared region (or per process when it cannot be used).
    pub ledger: MemoryLedger<Container>,
    /// The primary context we charged, per device (0 = none), so its release can be matched.
    pub primary: [AtomicU64; MAX_DEVICES],
}

static STATE: LazyLock<State> = LazyLock::new(|| {
    let _timed = crate::startup::OneTime::begin();
    let (config, errors) = Config::from_env();
    crate::log::init(config.log_level);
    for e in &errors {
        tracing::error!("{e}");
    }
    if config.any_memory_limit() {
        tracing::info!("memory caps by CUDA device ordinal: {}", describe_caps(&config.memory_limit));
    }
    let ledger = MemoryLedger::new(Container::new(&config, || &state().ledger));
    STARTED.store(true, Ordering::Release);
    State { config, ledger, primary: Default::default() }
});

/// Whether [`STATE`] exists.
static STARTED: AtomicBool = AtomicBool::new(false);

/// The state, if it was built (nothing is built at exit just to be torn down).
pub fn started() -> Option<&'static State> {
    STARTED.load(Ordering::Acquire).then(state)
}

pub fn state() -> &'static State {
    &STATE
}

impl State {
    /// The container this process accounts in: its region, limits and places.
    pub fn container(&self) -> &Container {
        self.ledger.accounting()
    }
}

/// The CUDA ordinal an NVML device is, by UUID: `Some(Some(i))`, `Some(None)` when CUDA does not
/// see the device, `None` when NVML could not be asked now (so a definite answer can be cached).
/// CUDA's own answer when it is initialised in this process; otherwise `CUDA_VISIBLE_DEVICES`
/// resolved against NVML's enumeration (nvidia-smi and vLLM query NVML before, or without, CUDA).
pub fn resolve_ordinal(uuid: &str) -> Option<Option<usize>> {
    let cuda = libs::loaded_handle(Lib::Cuda).and_then(|_| driver::device_count().ok());
    if let Some(n) = cuda {
        let found = (0..n).position(|d| {
            driver::device_uuid(d).is_ok_and(|b| format_uuid_bytes(&b).eq_ignore_ascii_case(uuid.as_bytes()))
        });
        return Some(found);
    }
    let session = driver::NvmlSession::open().ok()?;
    let physical = driver::nvml_uuids(&session).ok()?;
    let ordinals = ordinal_uuids(state().config.visible_devices.as_deref(), &physical);
    Some(ordinals.iter().position(|u| u.as_deref().is_some_and(|u| u.eq_ignore_ascii_case(uuid))))
}

/// `all 2048 MiB` when every device has the same cap, else `0: 20480 MiB, 1: none, …`.
fn describe_caps(caps: &[Option<u64>; MAX_DEVICES]) -> String {
    let show = |c: &Option<u64>| c.map_or("none".to_string(), |b| format!("{} MiB", b >> 20));
    if caps.iter().all(|c| *c == caps[0]) {
        return format!("all {}", show(&caps[0]));
    }
    let last = caps.iter().rposition(Option::is_some).unwrap_or(0);
    caps[..=last].iter().enumerate().map(|(i, c)| format!("{i}: {}", show(c))).collect::<Vec<_>>().join(", ")
}

/// Places this process's devices in the region by UUID (HAMi's monitor reads the UUIDs; our
/// accounting charges each ordinal on its physical GPU's index). Before the first charge: a
/// context's cost goes to the device's index. Not done until CUDA can name the devices.
pub fn record_cuda_uuids() {
    static DONE: AtomicBool = AtomicBool::new(false);
    static PLACING: Mutex<()> = Mutex::new(());
    if DONE.load(Ordering::Acquire) {
        return;
    }
    let _one = PLACING.lock().unwrap_or_else(|p| p.into_inner());
    if DONE.load(Ordering::Acquire) {
        return;
    }
    let _timed = crate::startup::OneTime::begin();
    let Ok(n) = driver::device_count() else { return };
    let uuids: Vec<String> =
        (0..n).map(|d| driver::device_uuid(d).map(|b| format_uuid(&b)).unwrap_or_default()).collect();
    let accounting = state().container();
    let placed = accounting.place_devices(&uuids);
    for (dev, (uuid, index)) in uuids.iter().zip(&placed).enumerate() {
        match index {
            Some(i) if i.get() != dev => tracing::info!(
                "CUDA device {dev} ({uuid}) is device {i} of the container's region: its cap and share apply"
            ),
            Some(_) => {}
            None => tracing::warn!(
                "CUDA device {dev} ({uuid}) has no place in the region ({} devices recorded); it is not capped",
                MAX_DEVICES
            ),
        }
        let Some(i) = *index else { continue };
        let env = state().config.memory_limit.get(dev).copied().flatten();
        let live = accounting.limit_at(i);
        // A region nobody held took this process's own limits (see vgpu_region::limits); they
        // differ here when a running process or an operator set others, or when this process's
        // ordinal is another of the container's GPUs.
        if env != live {
            tracing::warn!(
                "CUDA device {dev} ({uuid}): this process's environment asks for {}, the container's region has {}; the region's cap applies",
                describe_cap(env),
                describe_cap(live)
            );
        }
    }
    DONE.store(true, Ordering::Release);
}

fn describe_cap(cap: Option<u64>) -> String {
    cap.map_or("no cap".to_string(), |b| format!("{} MiB", b >> 20))
}
