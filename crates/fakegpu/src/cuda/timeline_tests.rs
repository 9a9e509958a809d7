//! The simulated timeline through the C ABI: launches return at once, synchronisation sleeps
//! for the queued GPU time. Called from `tests::c_abi_round_trip` (one process-wide driver
//! state, so one sequence), on a context of its own on device 1.

use std::ffi::c_void;
use std::time::{Duration, Instant};

use cuda_types::CUevent;
use cuda_types::*;

use super::context::*;
use super::graph::*;
use super::launch::*;
use super::procaddr::*;
use super::stream::*;
use crate::state::{CAPTURE_STATUS_ACTIVE, CAPTURE_STATUS_NONE, ERROR_CAPTURE_UNSUPPORTED};

const OK: CUresult = CUresult::SUCCESS;

unsafe fn launch(f: CUfunction, s: CUstream) -> CUresult {
    unsafe { cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, std::ptr::null_mut(), std::ptr::null_mut()) }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What the steps share: a context of their own on device 1, a module with `sleep_us_2000` (`f`,
/// 2 ms) and `other` (`g`, the default 10 µs), a stream and two events.
struct Setup {
    ctx: CUcontext,
    module: CUmodule,
    f: CUfunction,
    g: CUfunction,
    s: CUstream,
    e0: CUevent,
    e1: CUevent,
}

pub unsafe fn launch_and_wait() {
    unsafe {
        let x = set_up();
        queued_kernels_take_their_time_at_synchronise(&x);
        every_launch_flavour_queues(&x);
        a_captured_graph_replays_its_kernels(&x);
        synchronise_spoils_a_capture(&x);
        proc_address_and_busy_time();
        tear_down(x);
    }
}

unsafe fn set_up() -> Setup {
    unsafe {
        let mut ctx: CUcontext = std::ptr::null_mut();
        assert_eq!(cuCtxCreate_v2(&mut ctx, 0, 1), OK);
        let mut module: CUmodule = std::ptr::null_mut();
        assert_eq!(cuModuleLoadData(&mut module, std::ptr::null()), CUresult(200));
        assert_eq!(cuModuleLoadData(&mut module, c"ptx".as_ptr().cast()), OK);
        let (mut f, mut g) = (std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(cuModuleGetFunction(&mut f, module, c"sleep_us_2000".as_ptr()), OK);
        assert_eq!(cuModuleGetFunction(&mut g, module, c"other".as_ptr()), OK);
        let mut s: CUstream = std::ptr::null_mut();
        assert_eq!(cuStreamCreate(&mut s, 0), OK);
        let (mut e0, mut e1) = (std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(cuEventCreate(&mut e0, 0), OK);
        assert_eq!(cuEventCreate(&mut e1, 0), OK);
        Setup { ctx, module, f, g, s, e0, e1 }
    }
}

unsafe fn tear_down(x: Setup) {
    unsafe {
        assert_eq!(cuEventDestroy_v2(x.e0), OK);
        assert_eq!(cuEventDestroy_v2(x.e1), OK);
        assert_eq!(cuStreamDestroy_v2(x.s), OK);
        assert_eq!(cuModuleUnload(x.module), OK);
        assert_eq!(cuCtxDestroy_v2(x.ctx), OK);
    }
}

/// Ten 2 ms kernels: queued at once, 20 ms to synchronise.
unsafe fn queued_kernels_take_their_time_at_synchronise(x: &Setup) {
    let &Setup { f, s, e0, e1, .. } = x;
    unsafe {
        let t = Instant::now();
        assert_eq!(cuEventRecord(e0, s), OK);
        for _ in 0..10 {
            assert_eq!(launch(f, s), OK);
        }
        assert_eq!(cuEventRecord(e1, s), OK);
        let queued = t.elapsed();
        assert!(ms(queued) < 10.0, "launches are asynchronous: {queued:?}");
        assert_eq!(cuStreamQuery(s), CUresult::ERROR_NOT_READY);
        assert_eq!(cuEventQuery(e1), CUresult::ERROR_NOT_READY);
        let mut elapsed = 0f32;
        assert_eq!(cuEventElapsedTime(&mut elapsed, e0, e1), CUresult::ERROR_NOT_READY);
        assert_eq!(cuStreamSynchronize(s), OK);
        assert!(ms(t.elapsed()) >= 20.0, "synchronise waits for the GPU: {:?}", t.elapsed());
        assert_eq!(cuStreamQuery(s), OK);
        assert_eq!(cuEventElapsedTime(&mut elapsed, e0, e1), OK);
        // The stream was idle when e0 was recorded, so the first kernel starts when it is
        // launched: the events are 20 ms apart plus the host's gap before that launch (at most
        // the whole queueing time; tens of µs on a loaded CI host).
        assert!(elapsed >= 20.0 - 0.01 && elapsed <= 20.0 + ms(queued) as f32 + 0.01, "{elapsed} ({queued:?})");
    }
}

/// Every other launch flavour queues too; an unknown name gets the default 10 µs, and a pointer
/// the fake never handed out a 0 µs kernel.
unsafe fn every_launch_flavour_queues(x: &Setup) {
    let &Setup { f, g, s, .. } = x;
    let config = CUlaunchConfig {
        gridDimX: 1,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: 1,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: 0,
        hStream: s,
        attrs: std::ptr::null_mut(),
        numAttrs: 0,
    };
    let null = std::ptr::null_mut();
    unsafe {
        let t = Instant::now();
        assert_eq!(cuLaunchKernelEx(&config, f, null, null), OK);
        assert_eq!(cuLaunchKernelEx_ptsz(&config, f, null, null), OK);
        assert_eq!(cuLaunchCooperativeKernel(f, 1, 1, 1, 1, 1, 1, 0, s, null), OK);
        assert_eq!(cuLaunchCooperativeKernel_ptsz(f, 1, 1, 1, 1, 1, 1, 0, std::ptr::null_mut(), null), OK);
        assert_eq!(cuLaunchKernel_ptsz(g, 1, 1, 1, 1, 1, 1, 0, std::ptr::null_mut(), null, null), OK);
        assert_eq!(cuCtxSynchronize(), OK);
        assert!(ms(t.elapsed()) >= 8.0, "four 2 ms kernels: {:?}", t.elapsed());
        assert_eq!(launch(std::ptr::null_mut(), s), CUresult::ERROR_INVALID_HANDLE);
        // A pointer the fake never handed out: a 0 µs kernel (launch-overhead benchmarks).
        let t = Instant::now();
        for _ in 0..2000 {
            assert_eq!(launch(0x1000 as CUfunction, s), OK);
        }
        assert_eq!(cuStreamSynchronize(s), OK);
        assert!(ms(t.elapsed()) < 1000.0);
        assert_eq!(cuStreamQuery(s), OK);
        assert_eq!(cuLaunchKernel(f, 0, 1, 1, 1, 1, 1, 0, s, null, null), CUresult::ERROR_INVALID_VALUE);
    }
}

/// Capture five launches, replay the graph twice: 20 ms, one queue entry per replay.
unsafe fn a_captured_graph_replays_its_kernels(x: &Setup) {
    let &Setup { f, s, e1, .. } = x;
    unsafe {
        let mut status = 9u32;
        assert_eq!(cuStreamBeginCapture_v2(s, 0), OK);
        assert_eq!(cuStreamIsCapturing(s, &mut status), OK);
        assert_eq!(status, CAPTURE_STATUS_ACTIVE);
        for _ in 0..5 {
            assert_eq!(launch(f, s), OK);
        }
        let mut graph: CUgraph = std::ptr::null_mut();
        assert_eq!(cuStreamEndCapture(s, &mut graph), OK);
        assert_eq!(cuStreamIsCapturing(s, &mut status), OK);
        assert_eq!(status, CAPTURE_STATUS_NONE);
        let mut exec: CUgraphExec = std::ptr::null_mut();
        assert_eq!(cuGraphInstantiateWithFlags(&mut exec, graph, 0), OK);
        let t = Instant::now();
        assert_eq!(cuGraphLaunch(exec, s), OK);
        assert_eq!(cuGraphLaunch_ptsz(exec, s), OK);
        assert!(ms(t.elapsed()) < 10.0);
        assert_eq!(cuEventRecord_ptsz(e1, s), OK);
        assert_eq!(cuEventSynchronize(e1), OK);
        assert!(ms(t.elapsed()) >= 20.0, "{:?}", t.elapsed());
        assert_eq!(cuGraphExecDestroy(exec), OK);
        assert_eq!(cuGraphDestroy(graph), OK);
    }
}

/// Synchronising a capturing stream is refused and spoils the capture.
unsafe fn synchronise_spoils_a_capture(x: &Setup) {
    unsafe {
        let mut graph: CUgraph = std::ptr::null_mut();
        assert_eq!(cuStreamBeginCapture_v2(x.s, 0), OK);
        assert_eq!(cuStreamSynchronize(x.s), ERROR_CAPTURE_UNSUPPORTED);
        assert_eq!(cuStreamEndCapture(x.s, &mut graph), CUresult(901));
        assert!(graph.is_null());
    }
}

/// The entry points cuGetProcAddress hands out are these very functions; device 1's busy time is
/// the sum of the kernels above.
unsafe fn proc_address_and_busy_time() {
    unsafe {
        let mut pfn: *mut c_void = std::ptr::null_mut();
        let mut st = 0u32;
        let r = cuGetProcAddress_v2(c"cuLaunchKernelEx".as_ptr(), &mut pfn, 12000, 2, &mut st);
        assert_eq!((r, st), (OK, 0));
        assert_eq!(pfn as usize, cuLaunchKernelEx_ptsz as *const () as usize);
        assert_eq!(crate::tally::fakegpu_call_count(c"cuLaunchKernelEx_ptsz".as_ptr()), 1);

        let (mut busy, mut n) = (0u64, 0u64);
        assert_eq!(fakegpu_device_busy(1, &mut busy, &mut n), OK);
        assert_eq!((busy, n), (((10 + 4 + 10) * 2000 + 10) * 1000, 10 + 5 + 2000 + 2), "device 1 only ran ours");
        assert_eq!(fakegpu_device_busy(9, &mut busy, std::ptr::null_mut()), CUresult::ERROR_INVALID_DEVICE);
    }
}
