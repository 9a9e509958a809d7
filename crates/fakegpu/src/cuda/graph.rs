//! CUDA graphs and stream capture. A graph is only the total of its kernels: capturing a
//! stream adds each launch's duration instead of running it, and launching an instantiated
//! graph queues that total on the stream as one piece of work (a real graph's kernels run
//! back to back too; only the total matters to a GPU-time limiter).

use std::ffi::{c_char, c_uint, c_ulonglong, c_void};

// One `CUgraphExec` for the whole repository (cuda-types'), so that test modules which glob-import
// both this module and cuda-types see one name, not two.
pub use cuda_types::CUgraphExec;
use cuda_types::{CUresult, CUstream};

use super::{enqueue, guard, need_init, nn, thread_id, with_stream};
use crate::state::{CAPTURE_MODE_GLOBAL, state};

pub type CUgraph = *mut c_void;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphCreate(graph: *mut CUgraph, _flags: c_uint) -> CUresult {
    crate::tally!("cuGraphCreate");
    guard(|| {
        let out = nn(graph)?;
        need_init()?;
        let h = state().graph_create();
        unsafe { out.write(h as usize as CUgraph) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphDestroy(graph: CUgraph) -> CUresult {
    crate::tally!("cuGraphDestroy");
    guard(|| {
        need_init()?;
        state().graph_destroy(graph as u64)
    })
}

fn instantiate(exec: *mut CUgraphExec, graph: CUgraph) -> CUresult {
    guard(|| {
        let out = nn(exec)?;
        need_init()?;
        let h = state().graph_instantiate(graph as u64)?;
        unsafe { out.write(h as usize as CUgraphExec) };
        super::grow_behind_the_ledger();
        Ok(())
    })
}

/// The pre-12.0 form: error node and log buffer stay untouched (instantiation never fails
/// for a valid graph).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiate(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    _error_node: *mut *mut c_void,
    _log: *mut c_char,
    _log_size: usize,
) -> CUresult {
    crate::tally!("cuGraphInstantiate");
    instantiate(exec, graph)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiate_v2(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    _error_node: *mut *mut c_void,
    _log: *mut c_char,
    _log_size: usize,
) -> CUresult {
    crate::tally!("cuGraphInstantiate_v2");
    instantiate(exec, graph)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    _flags: c_ulonglong,
) -> CUresult {
    crate::tally!("cuGraphInstantiateWithFlags");
    instantiate(exec, graph)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphExecDestroy(exec: CUgraphExec) -> CUresult {
    crate::tally!("cuGraphExecDestroy");
    guard(|| {
        need_init()?;
        state().graph_exec_destroy(exec as u64)
    })
}

fn launch(exec: CUgraphExec, stream: CUstream, ptsz: bool) -> CUresult {
    guard(|| enqueue(stream, ptsz, |st| st.graph_exec(exec as u64)))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphLaunch(exec: CUgraphExec, stream: CUstream) -> CUresult {
    crate::tally!("cuGraphLaunch");
    launch(exec, stream, false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphLaunch_ptsz(exec: CUgraphExec, stream: CUstream) -> CUresult {
    crate::tally!("cuGraphLaunch_ptsz");
    launch(exec, stream, true)
}

// ---- stream capture ----

fn begin(stream: CUstream, mode: c_uint, ptsz: bool) -> CUresult {
    guard(|| with_stream(stream, ptsz, |st, key| st.begin_capture(key, mode, thread_id())))
}

/// The CUDA 10.0 form, always in global mode.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamBeginCapture(stream: CUstream) -> CUresult {
    crate::tally!("cuStreamBeginCapture");
    begin(stream, CAPTURE_MODE_GLOBAL, false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamBeginCapture_v2(stream: CUstream, mode: c_uint) -> CUresult {
    crate::tally!("cuStreamBeginCapture_v2");
    begin(stream, mode, false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamBeginCapture_v2_ptsz(stream: CUstream, mode: c_uint) -> CUresult {
    crate::tally!("cuStreamBeginCapture_v2_ptsz");
    begin(stream, mode, true)
}

fn end(stream: CUstream, graph: *mut CUgraph, ptsz: bool) -> CUresult {
    guard(|| {
        let out = nn(graph)?;
        let g = with_stream(stream, ptsz, |st, key| st.end_capture(key, thread_id()));
        unsafe { out.write(g.unwrap_or(0) as usize as CUgraph) };
        g.map(|_| ())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamEndCapture(stream: CUstream, graph: *mut CUgraph) -> CUresult {
    crate::tally!("cuStreamEndCapture");
    end(stream, graph, false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamEndCapture_ptsz(stream: CUstream, graph: *mut CUgraph) -> CUresult {
    crate::tally!("cuStreamEndCapture_ptsz");
    end(stream, graph, true)
}

fn is_capturing(stream: CUstream, status: *mut c_uint, ptsz: bool) -> CUresult {
    guard(|| {
        let out = nn(status)?;
        let s = with_stream(stream, ptsz, |st, key| st.capture_status(key))?;
        unsafe { out.write(s) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamIsCapturing(stream: CUstream, status: *mut c_uint) -> CUresult {
    crate::tally!("cuStreamIsCapturing");
    is_capturing(stream, status, false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamIsCapturing_ptsz(stream: CUstream, status: *mut c_uint) -> CUresult {
    crate::tally!("cuStreamIsCapturing_ptsz");
    is_capturing(stream, status, true)
}
