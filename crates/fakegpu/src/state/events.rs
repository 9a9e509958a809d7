//! Events, graphs, modules and the fake's kernels.
//!
//! A kernel is its duration: the fake has no code to run, so a `CUfunction` handle *encodes*
//! how long the kernel occupies the device. Looking up a function named like `sleep_us_500`
//! (anywhere in the name, so a mangled `_Z12sleep_us_500v` works too) gives a 500 µs kernel;
//! any other name gets `FAKEGPU_KERNEL_US` (default 10 µs). The encoding is public, see
//! [`kernel_handle`], so a test may also build a handle without loading a module. Any other
//! non-NULL handle launches as a 0 µs kernel (see `cuda::launch`).

use cuda_types::CUresult;

use super::streams::{Event, StreamKey, Work};
use super::{Res, State};

pub const TAG_EVENT: u64 = 0x5e00_0000_0000;
pub const TAG_GRAPH: u64 = 0x5600_0000_0000;
pub const TAG_EXEC: u64 = 0x5700_0000_0000;
pub const TAG_MODULE: u64 = 0x5800_0000_0000;
pub const TAG_LIBRARY: u64 = 0x5900_0000_0000;
/// `CUfunction`/`CUkernel` = `TAG_FUNCTION | µs << 8`; µs below 2^32 (71 minutes).
pub const TAG_FUNCTION: u64 = 0x5f00_0000_0000;
const US_MASK: u64 = 0xffff_ffff;

/// `CU_EVENT_DISABLE_TIMING`: such events cannot be timed.
pub const EVENT_DISABLE_TIMING: u32 = 2;

pub const ERROR_INVALID_IMAGE: CUresult = CUresult(200);

/// The handle of a kernel lasting `us` microseconds (clamped to what the encoding holds).
pub fn kernel_handle(us: u64) -> u64 {
    TAG_FUNCTION | (us.min(US_MASK) << 8)
}

/// The duration in ns of a kernel handle, or `None` if it is not one.
pub fn kernel_ns(handle: u64) -> Option<u64> {
    (handle & !(US_MASK << 8) == TAG_FUNCTION).then(|| ((handle >> 8) & US_MASK) * 1000)
}

/// The µs a kernel name asks for: the digits after the first `sleep_us_`, else `default`.
pub fn kernel_us(name: &str, default: u64) -> u64 {
    let Some((_, rest)) = name.split_once("sleep_us_") else { return default };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(default)
}

impl State {
    // ---- modules and libraries ----

    /// Any image loads (there is nothing to compile); a NULL one is refused by the caller.
    pub fn module_load(&mut self, library: bool) -> u64 {
        let h = self.new_handle(if library { TAG_LIBRARY } else { TAG_MODULE });
        self.work.modules.insert(h);
        h
    }

    pub fn module_unload(&mut self, h: u64, library: bool) -> Res<()> {
        let tag = if library { TAG_LIBRARY } else { TAG_MODULE };
        if h & 0xff00_0000_0000 == tag && self.work.modules.remove(&h) {
            Ok(())
        } else {
            Err(CUresult::ERROR_INVALID_HANDLE)
        }
    }

    /// cuModuleGetFunction / cuLibraryGetKernel: every name exists; it only sets the duration.
    pub fn get_function(&self, module: u64, name: &str) -> Res<u64> {
        if !self.work.modules.contains(&module) {
            return Err(CUresult::ERROR_INVALID_HANDLE);
        }
        Ok(kernel_handle(kernel_us(name, self.cfg.kernel_us)))
    }

    // ---- events ----

    pub fn event_create(&mut self, ctx: u64, flags: u32) -> u64 {
        let h = self.new_handle(TAG_EVENT);
        self.work.events.insert(h, Event { ctx, flags, time: None, captured: None });
        h
    }

    pub fn event_destroy(&mut self, h: u64) -> Res<()> {
        self.work.events.remove(&h).map(|_| ()).ok_or(CUresult::ERROR_INVALID_HANDLE)
    }

    fn event(&self, h: u64) -> Res<&Event> {
        self.work.events.get(&h).ok_or(CUresult::ERROR_INVALID_HANDLE)
    }

    /// The event completes when the stream's earlier work does (on an idle stream, once the
    /// device has taken the submission: the launch latency).
    /// In a capture it becomes a point other streams may fork from, with no time.
    pub fn event_record(&mut self, h: u64, key: StreamKey, now: u64) -> Res<()> {
        self.event(h)?;
        let capture = self.stream(key)?.capture;
        let time = match capture {
            Some(_) => None,
            None => Some(self.stream_deps(key)?.max(now.saturating_add(self.cfg.launch_latency_ns))),
        };
        let ev = self.work.events.get_mut(&h).ok_or(CUresult::ERROR_INVALID_HANDLE)?;
        (ev.time, ev.captured) = (time, capture);
        Ok(())
    }

    /// When the event completes (0 for one never recorded: it counts as complete). An event
    /// recorded in a capture has no completion to wait for: `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED`
    /// (the fake's choice: it flags a caller that waits on capture as if it were execution).
    pub fn event_target(&self, h: u64) -> Res<u64> {
        let ev = self.event(h)?;
        if ev.captured.is_some() {
            return Err(super::streams::ERROR_CAPTURE_UNSUPPORTED);
        }
        Ok(ev.time.unwrap_or(0))
    }

    pub fn event_query(&self, h: u64, now: u64) -> Res<()> {
        if self.event_target(h)? <= now { Ok(()) } else { Err(CUresult::ERROR_NOT_READY) }
    }

    /// Milliseconds from `start` to `end`, both recorded, complete and timing-enabled.
    pub fn event_elapsed(&self, start: u64, end: u64, now: u64) -> Res<f32> {
        let (a, b) = (self.event(start)?, self.event(end)?);
        if (a.flags | b.flags) & EVENT_DISABLE_TIMING != 0 {
            return Err(CUresult::ERROR_INVALID_HANDLE);
        }
        let (Some(ta), Some(tb)) = (a.time, b.time) else { return Err(CUresult::ERROR_INVALID_HANDLE) };
        if ta.max(tb) > now {
            return Err(CUresult::ERROR_NOT_READY);
        }
        Ok((tb as f64 - ta as f64) as f32 / 1e6)
    }

    // ---- graphs ----

    pub fn graph_create(&mut self) -> u64 {
        let h = self.new_handle(TAG_GRAPH);
        self.work.graphs.insert(h, Work::default());
        h
    }

    /// A graph being captured into cannot be destroyed from under its capture.
    pub fn graph_destroy(&mut self, h: u64) -> Res<()> {
        if self.work.captures.contains_key(&h) {
            return Err(super::streams::ERROR_ILLEGAL_STATE);
        }
        self.work.graphs.remove(&h).map(|_| ()).ok_or(CUresult::ERROR_INVALID_HANDLE)
    }

    /// An executable graph is a snapshot: later changes to the graph do not reach it.
    pub fn graph_instantiate(&mut self, graph: u64) -> Res<u64> {
        let work = *self.work.graphs.get(&graph).ok_or(CUresult::ERROR_INVALID_VALUE)?;
        let h = self.new_handle(TAG_EXEC);
        self.work.execs.insert(h, work);
        Ok(h)
    }

    pub fn graph_exec(&self, h: u64) -> Res<Work> {
        self.work.execs.get(&h).copied().ok_or(CUresult::ERROR_INVALID_HANDLE)
    }

    pub fn graph_exec_destroy(&mut self, h: u64) -> Res<()> {
        self.work.execs.remove(&h).map(|_| ()).ok_or(CUresult::ERROR_INVALID_HANDLE)
    }

    pub fn graph_work(&self, h: u64) -> Res<Work> {
        self.work.graphs.get(&h).copied().ok_or(CUresult::ERROR_INVALID_HANDLE)
    }
}
