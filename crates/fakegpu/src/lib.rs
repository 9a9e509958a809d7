//! fakegpu: a fake CUDA driver (`libcuda.so.1`) and NVML (`libnvidia-ml.so.1`) in one shared
//! library, so libvgpu's tests run on machines without a GPU.
//!
//! # Using it
//!
//! ```text
//! cargo build -p fakegpu
//! crates/fakegpu/make-driver-dir.sh target/debug /tmp/fakedriver
//! LD_LIBRARY_PATH=/tmp/fakedriver ./program
//! ```
//!
//! `make-driver-dir.sh <profile-dir> <out-dir>` creates `libcuda.so.1`, `libcuda.so`,
//! `libnvidia-ml.so.1` and `libnvidia-ml.so` in `<out-dir>`, absolute symlinks to
//! `<profile-dir>/libfakegpu.so`. The library's soname is `libcuda.so.1` (see build.rs), so
//! whichever name a program loads first, glibc maps the file once and the CUDA and NVML
//! entry points share one in-process state.
//!
//! # Configuration (environment, read once on first use)
//!
//! - `FAKEGPU_DEVICES`: number of devices, default 2, at most 16.
//! - `FAKEGPU_MEMORY`: memory per device, `80g`, `512m`, `4096` (binary units) or a comma
//!   list, one per device, the last value repeating; default `16g`.
//! - `FAKEGPU_CONTEXT_OVERHEAD`: device memory each live context costs; default `300m`.
//! - `FAKEGPU_UUIDS`: comma list of UUID strings; default
//!   `GPU-fa4e0000-0000-4000-8000-00000000000N` (N the device index in hex). `CUuuid` bytes
//!   are the 16 bytes those hex digits spell.
//! - `CUDA_VISIBLE_DEVICES`: which devices the CUDA side sees, in which order, as in the
//!   driver: a comma list of physical indices or `GPU-<uuid>` (a unique prefix will do, any
//!   case), ending silently at the first entry that names no device (out of range, unknown or
//!   ambiguous UUID, `MIG-…`, garbage, a repeat). Empty hides every device (cuInit then fails
//!   with `CUDA_ERROR_NO_DEVICE`); unset shows all in physical order. CUDA ordinals count the
//!   visible devices, while memory is accounted per physical device and NVML lists every
//!   device by physical index, as the real one does: under `2,0`, an allocation on ordinal 0
//!   shows up in NVML's device 2.
//! - `FAKEGPU_LOG`: a file that gets one line per cuGetProcAddress request,
//!   `procaddr <symbol> <version> <flags> -> <exported name or NULL>`.
//! - `FAKEGPU_KERNEL_US`: GPU time of a kernel whose name does not give one (below);
//!   default 10.
//! - `FAKEGPU_TIMELINE`: a file (e.g. in `/dev/shm`, created if missing, 4160 bytes) holding
//!   the devices' clocks; every process naming the same file shares the simulated GPUs, as
//!   containers share a real one. Devices meet by UUID, so differently ordered
//!   `CUDA_VISIBLE_DEVICES` still meet, and runs with their own `FAKEGPU_UUIDS` (or their own
//!   file) are isolated. Unset: the process has the devices to itself.
//! - `FAKEGPU_QUEUE_DEPTH`: launches a stream may have pending before the next launch blocks
//!   until the oldest completes (a real driver's command queue); default 1024.
//! - `FAKEGPU_NVML_PROCESSES`: what NVML's running-process lists show. Unset: none, as drivers
//!   560/570 inside a container; `self`: this process with the device's memory, as driver 580
//!   in a PID namespace; `host`: a PID no container can see, as a driver giving host PIDs.
//! - `FAKEGPU_HIDDEN_GROWTH`: device memory the driver takes behind an interposer's back on
//!   every module/library load and graph instantiation (held by the current context, seen by
//!   NVML, through no allocation entry point); default 0.
//!
//! Besides the CUDA and NVML symbols the library exports one of its own,
//! `uint64_t fakegpu_call_count(const char *name)`: how often the exported function `name`
//! was entered, so a test can tell which variant a call through an interposer reached; and
//! `size_t fakegpu_call_summary(char *buf, size_t len)`, all counts as `name=n ...`.
//!
//! # The model
//!
//! Each device has a total; used = live allocations + live contexts' overhead, and a request
//! beyond the remainder fails with `CUDA_ERROR_OUT_OF_MEMORY`. Nothing is enforced beyond
//! that physical size: caps are the interposer's job. Pointers are fake (never
//! dereferenceable), unique per device and not reused while the address window lasts.
//! Memory calls need a current context; destroying a context frees what was made under it.
//! Async frees release at once.
//!
//! # Memory shared between processes and devices
//!
//! The simulated memory is per process, so what one process shares travels in its handle
//! (state/shared.rs), and the importer's mapping is charged to none of its devices: the memory
//! stays the exporter's.
//!
//! - CUDA IPC: `cuIpcGetMemHandle` (memory from `cuMemAlloc`/`cuMemAllocPitch`; managed, pool
//!   and imported memory are refused) writes a 64-byte handle naming the exporter's pid, the
//!   device's UUID, its base pointer and size. `cuIpcOpenMemHandle`/`_v2` in another process
//!   (the exporter's own is refused with `CUDA_ERROR_INVALID_CONTEXT`; a dead exporter with
//!   `CUDA_ERROR_INVALID_VALUE`) maps a range of that size at a new pointer in the current
//!   context, on whatever device the handle names, visible or not; opening it again in the
//!   same context returns the same pointer with one more reference. `cuIpcCloseMemHandle`
//!   drops a reference; `cuMemFree` refuses the pointer. The fake cannot tell whether a live
//!   exporter has freed the allocation meanwhile.
//! - VMM shareable handles: `cuMemExportToShareableHandle` of a handle created with
//!   `requestedHandleTypes` including `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR` (the only type
//!   supported) returns a memfd holding the location (device UUID or host) and size; any
//!   process holding that descriptor (SCM_RIGHTS, `pidfd_getfd`, `/proc/<pid>/fd/<n>`) gets a
//!   handle of its own from `cuMemImportFromShareableHandle`, to map and `cuMemRelease` like
//!   any other.
//! - Peers: `cuDeviceCanAccessPeer` says yes for any two distinct devices;
//!   `cuCtxEnablePeerAccess`/`cuCtxDisablePeerAccess` keep per context pair whether access is
//!   on (`CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED`/`_NOT_ENABLED` as the driver); neither they
//!   nor `cuMemSetAccess` for another device cost memory.
//!
//! # The timeline
//!
//! Kernels take simulated GPU time (`timeline.rs`, `state/streams.rs`, `state/events.rs`).
//! A kernel is its duration: `cuModuleLoadData`/`cuModuleLoad`/`cuLibraryLoadData` accept any
//! image, and `cuModuleGetFunction`/`cuLibraryGetKernel` of a name containing `sleep_us_<N>`
//! return a handle encoding N µs (any other name: `FAKEGPU_KERNEL_US`; a non-NULL handle the
//! fake never made: 0 µs). Launches (`cuLaunchKernel`, `cuLaunchKernelEx`,
//! `cuLaunchCooperativeKernel`, `cuGraphLaunch`, each also `_ptsz`) return at once and queue
//! the work: it starts at `max(now, device busy until, stream's previous work done)` and holds
//! the device for its duration — one FIFO per device, shared by every process on the same
//! `FAKEGPU_TIMELINE` (no time-slicing: a process that queues far ahead delays the others).
//! `cuStreamSynchronize`, `cuCtxSynchronize` and `cuEventSynchronize` sleep until the work
//! they wait for is done; `cuStreamQuery`/`cuEventQuery` answer `CUDA_ERROR_NOT_READY` before;
//! an event's time is when its stream's earlier work completes, and `cuEventElapsedTime`
//! reports the difference. Handle 0 is the legacy stream (per-thread under `_ptsz`), 1
//! `CU_STREAM_LEGACY`, 2 `CU_STREAM_PER_THREAD`; the legacy stream synchronises with blocking
//! streams. A captured stream (`cuStreamBeginCapture_v2` … `cuStreamEndCapture`) runs nothing
//! and adds each launch to its graph; a graph launch queues the sum of its kernels. What the
//! driver forbids during capture (synchronising or querying the capturing stream, legacy-stream
//! work beside it, `cuCtxSynchronize` under a global capture) fails with the driver's code and
//! invalidates the capture, so a test sees an interposer that breaks capture.
//!
//! Extra export: `CUresult fakegpu_device_busy(int ordinal, uint64_t *busy_ns, uint64_t
//! *kernels)`, the GPU time and kernel count queued on a device by every process sharing its
//! timeline.

#![allow(non_snake_case)]
#![allow(clippy::missing_safety_doc)]

pub mod config;
pub mod cuda;
pub mod nvml;
pub mod state;
pub mod tally;
pub mod timeline;

/// The name both cuDeviceGetName and nvmlDeviceGetName report.
pub const DEVICE_NAME: &str = "NVIDIA H200 (fakegpu)";

/// Device N sits on PCI bus N of domain 0, in NVML's long form.
pub fn pci_bus_id(dev: usize) -> String {
    format!("00000000:{dev:02X}:00.0")
}

/// (domain, bus, device, function) of `dddd:bb:dd.f` or `dddddddd:bb:dd.f` (hex).
pub fn parse_pci_bus_id(s: &str) -> Option<(u32, u32, u32, u32)> {
    let s = s.trim();
    let (rest, function) = s.rsplit_once('.')?;
    let mut parts = rest.split(':');
    let (domain, bus, device) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let hex = |t: &str| u32::from_str_radix(t, 16).ok();
    Some((hex(domain)?, hex(bus)?, hex(device)?, hex(function)?))
}
