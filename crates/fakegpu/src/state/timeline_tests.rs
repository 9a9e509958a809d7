//! The execution model with time as an argument: streams, events, capture and graphs on a
//! private timeline, no sleeping.

use super::*;
use crate::config::Config;
use crate::timeline::Span;

const US: u64 = 1000;

/// A state whose device starts work the moment it is submitted (no launch latency), so the
/// expected times are exact; `launch_latency_is_added_to_submissions` covers the latency.
fn setup() -> (State, u64) {
    let mut cfg = Config::from_values(Some("2"), None, None, None, None, None);
    cfg.launch_latency_ns = 0;
    let mut st = State::new(cfg);
    let ctx = st.primary_retain(0).unwrap();
    (st, ctx)
}

fn kernel(us: u64) -> Work {
    Work { ns: us * US, kernels: 1 }
}

fn queued(r: Res<Submitted>) -> Span {
    match r {
        Ok(Submitted::Queued(s)) => s,
        other => panic!("not queued: {other:?}"),
    }
}

fn created(st: &mut State, ctx: u64, flags: u32) -> StreamKey {
    let h = st.stream_create(ctx, 0, flags);
    st.stream_key(h, ctx, 0, 1, false).unwrap()
}

#[test]
fn kernel_names_and_handles() {
    assert_eq!(kernel_us("sleep_us_500", 10), 500);
    assert_eq!(kernel_us("_Z12sleep_us_20v", 10), 20, "mangled");
    assert_eq!(kernel_us("gemm", 7), 7);
    assert_eq!(kernel_us("sleep_us_", 7), 7);
    assert_eq!(kernel_ns(kernel_handle(500)), Some(500 * US));
    assert_eq!(kernel_ns(kernel_handle(0)), Some(0));
    assert_eq!(kernel_ns(kernel_handle(u64::MAX)), Some(0xffff_ffff * US), "clamped");
    assert_eq!(kernel_ns(0), None);
    assert_eq!(kernel_ns(kernel_handle(5) | 1), None);
    assert_eq!(kernel_ns(TAG_STREAM | 5 << 8), None);
    let (mut st, _) = setup();
    st.cfg.kernel_us = 33;
    let m = st.module_load(false);
    assert_eq!(st.get_function(m, "x"), Ok(kernel_handle(33)), "FAKEGPU_KERNEL_US");
    assert_eq!(st.get_function(m, "sleep_us_9"), Ok(kernel_handle(9)));
    assert_eq!(st.module_unload(m, true), Err(CUresult::ERROR_INVALID_HANDLE), "not a library");
    st.module_unload(m, false).unwrap();
    assert_eq!(st.get_function(m, "x"), Err(CUresult::ERROR_INVALID_HANDLE));
}

#[test]
fn launches_are_fifo_on_the_device() {
    let (mut st, ctx) = setup();
    let (a, b) = (created(&mut st, ctx, 0), created(&mut st, ctx, 0));
    let t = 1_000_000;
    assert_eq!(queued(st.submit(a, t, kernel(500))), Span { start: t, end: t + 500 * US });
    assert_eq!(queued(st.submit(a, t + 1, kernel(500))).start, t + 500 * US, "same stream: in order");
    let other = queued(st.submit(b, t + 2, kernel(100)));
    assert_eq!(other.start, t + 1000 * US, "another stream waits for the device");
    assert_eq!(st.stream_sync_target(a), Ok(t + 1000 * US));
    assert_eq!(st.stream_sync_target(b), Ok(t + 1100 * US));
    assert_eq!(st.stream_query(a, t + 999 * US), Err(CUresult::ERROR_NOT_READY));
    assert_eq!(st.stream_query(a, t + 1000 * US), Ok(()));
    assert_eq!(st.ctx_sync_target(ctx, 1), Ok(t + 1100 * US));
    let StreamKey::Created(hb) = b else { unreachable!() };
    st.stream_destroy(hb).unwrap();
    assert_eq!(st.ctx_sync_target(ctx, 1), Ok(t + 1100 * US), "a destroyed stream's work still counts");
    let b = created(&mut st, ctx, 0);
    assert_eq!(st.timeline.slot(0).totals(), (1100 * US, 3));
    assert_eq!(st.timeline.slot(1).totals(), (0, 0));
    // Idle again later: starts at submission.
    assert_eq!(queued(st.submit(b, t + 5000 * US, kernel(1))).start, t + 5000 * US);
}

#[test]
fn default_streams() {
    let (mut st, ctx) = setup();
    let legacy = st.stream_key(0, ctx, 0, 1, false).unwrap();
    assert_eq!(legacy, StreamKey::Legacy { ctx });
    assert_eq!(st.stream_key(1, ctx, 0, 1, true).unwrap(), legacy, "CU_STREAM_LEGACY");
    let pt1 = st.stream_key(0, ctx, 0, 1, true).unwrap();
    assert_eq!(pt1, StreamKey::PerThread { ctx, thread: 1 });
    assert_eq!(st.stream_key(2, ctx, 0, 1, false).unwrap(), pt1, "CU_STREAM_PER_THREAD");
    assert_ne!(st.stream_key(0, ctx, 0, 2, true).unwrap(), pt1, "one per thread");
    assert_eq!(st.stream_key(0xdead00, ctx, 0, 1, false), Err(CUresult::ERROR_INVALID_HANDLE));

    // The legacy stream waits for blocking streams' work and they wait for its.
    let blocking = created(&mut st, ctx, 0);
    let free = created(&mut st, ctx, STREAM_NON_BLOCKING);
    let t = 1_000_000;
    let b = queued(st.submit(blocking, t, kernel(100)));
    queued(st.submit(free, t, kernel(100)));
    assert_eq!(st.stream_sync_target(legacy), Ok(b.end), "not the non-blocking stream's");
    let l = queued(st.submit(legacy, t, kernel(10)));
    assert_eq!(st.stream_deps(blocking), Ok(l.end));
    assert_eq!(st.stream_deps(free), Ok(t + 200 * US), "non-blocking ignores the legacy stream");
}

#[test]
fn a_full_queue_blocks_the_launch() {
    let (mut st, ctx) = setup();
    st.cfg.queue_depth = 2;
    let s = created(&mut st, ctx, 0);
    let first = queued(st.submit(s, 0, kernel(10)));
    queued(st.submit(s, 0, kernel(10)));
    assert_eq!(st.submit(s, 1, kernel(10)), Ok(Submitted::Full(first.end)));
    assert_eq!(st.timeline.slot(0).totals().1, 2, "nothing queued while full");
    queued(st.submit(s, first.end, kernel(10)));
}

#[test]
fn events_follow_the_stream() {
    let (mut st, ctx) = setup();
    let s = created(&mut st, ctx, 0);
    let (e0, e1) = (st.event_create(ctx, 0), st.event_create(ctx, 0));
    assert_eq!(st.event_query(e0, 0), Ok(()), "never recorded counts as complete");
    assert_eq!(st.event_elapsed(e0, e1, 0), Err(CUresult::ERROR_INVALID_HANDLE), "not recorded");
    let t = 1_000_000;
    st.event_record(e0, s, t).unwrap();
    let k = queued(st.submit(s, t, kernel(250)));
    st.event_record(e1, s, t + 1).unwrap();
    assert_eq!(st.event_target(e0), Ok(t), "idle stream: now");
    assert_eq!(st.event_target(e1), Ok(k.end));
    assert_eq!(st.event_query(e1, k.end - 1), Err(CUresult::ERROR_NOT_READY));
    assert_eq!(st.event_elapsed(e0, e1, k.end - 1), Err(CUresult::ERROR_NOT_READY));
    assert_eq!(st.event_elapsed(e0, e1, k.end), Ok(0.25));
    assert_eq!(st.event_elapsed(e1, e0, k.end), Ok(-0.25));

    // Another stream waiting on the event starts its work after it.
    let other = created(&mut st, ctx, STREAM_NON_BLOCKING);
    st.stream_wait_event(other, e1).unwrap();
    assert_eq!(st.stream_deps(other), Ok(k.end));

    let quiet = st.event_create(ctx, EVENT_DISABLE_TIMING);
    st.event_record(quiet, s, t).unwrap();
    assert_eq!(st.event_elapsed(e0, quiet, k.end), Err(CUresult::ERROR_INVALID_HANDLE));
    st.event_destroy(quiet).unwrap();
    assert_eq!(st.event_query(quiet, 0), Err(CUresult::ERROR_INVALID_HANDLE));
}

#[test]
fn capture_builds_a_graph_and_replays_it() {
    let (mut st, ctx) = setup();
    let s = created(&mut st, ctx, 0);
    assert_eq!(st.capture_status(s), Ok(CAPTURE_STATUS_NONE));
    st.begin_capture(s, CAPTURE_MODE_GLOBAL, 1).unwrap();
    assert_eq!(st.capture_status(s), Ok(CAPTURE_STATUS_ACTIVE));
    assert_eq!(st.begin_capture(s, CAPTURE_MODE_GLOBAL, 1), Err(ERROR_ILLEGAL_STATE));
    for _ in 0..10 {
        assert_eq!(st.submit(s, 5, kernel(100)), Ok(Submitted::Captured));
    }
    assert_eq!(st.timeline.slot(0).totals(), (0, 0), "capture runs nothing");
    assert_eq!(st.end_capture(s, 2), Err(ERROR_CAPTURE_WRONG_THREAD));
    let g = st.end_capture(s, 1).unwrap();
    assert_eq!(st.capture_status(s), Ok(CAPTURE_STATUS_NONE));
    assert_eq!(st.graph_work(g), Ok(Work { ns: 1000 * US, kernels: 10 }));
    let exec = st.graph_instantiate(g).unwrap();
    st.graph_destroy(g).unwrap();
    let t = 1_000_000;
    let w = st.graph_exec(exec).unwrap();
    assert_eq!(queued(st.submit(s, t, w)), Span { start: t, end: t + 1000 * US }, "one piece: the sum");
    st.graph_exec_destroy(exec).unwrap();
    assert_eq!(st.graph_exec(exec), Err(CUresult::ERROR_INVALID_HANDLE));
    assert_eq!(st.end_capture(s, 1), Err(ERROR_ILLEGAL_STATE), "not capturing");
}

#[test]
fn what_breaks_a_capture() {
    let (mut st, ctx) = setup();
    let s = created(&mut st, ctx, 0);
    let legacy = st.stream_key(0, ctx, 0, 1, false).unwrap();
    assert_eq!(st.begin_capture(legacy, CAPTURE_MODE_RELAXED, 1), Err(ERROR_CAPTURE_UNSUPPORTED));

    // Synchronising the capturing stream.
    st.begin_capture(s, CAPTURE_MODE_GLOBAL, 1).unwrap();
    assert_eq!(st.stream_sync_target(s), Err(ERROR_CAPTURE_UNSUPPORTED));
    assert_eq!(st.capture_status(s), Ok(CAPTURE_STATUS_INVALIDATED));
    assert_eq!(st.submit(s, 0, kernel(1)), Err(ERROR_CAPTURE_INVALIDATED));
    assert_eq!(st.end_capture(s, 1), Err(ERROR_CAPTURE_INVALIDATED));
    assert_eq!(st.capture_status(s), Ok(CAPTURE_STATUS_NONE), "ended anyway");

    // The legacy stream touching a capturing blocking stream.
    st.begin_capture(s, CAPTURE_MODE_RELAXED, 1).unwrap();
    assert_eq!(st.submit(legacy, 0, kernel(1)), Err(ERROR_CAPTURE_IMPLICIT));
    assert_eq!(st.end_capture(s, 1), Err(ERROR_CAPTURE_INVALIDATED));

    // cuCtxSynchronize: refused under global capture, and thread-local on the same thread.
    st.begin_capture(s, CAPTURE_MODE_THREAD_LOCAL, 1).unwrap();
    assert_eq!(st.ctx_sync_target(ctx, 2), Ok(0), "another thread may");
    assert_eq!(st.ctx_sync_target(ctx, 1), Err(ERROR_CAPTURE_UNSUPPORTED));
    assert!(st.end_capture(s, 1).is_err());
    st.begin_capture(s, CAPTURE_MODE_RELAXED, 1).unwrap();
    assert_eq!(st.ctx_sync_target(ctx, 1), Ok(0), "relaxed allows it");
    let e = st.event_create(ctx, 0);
    st.event_record(e, s, 0).unwrap();
    assert_eq!(st.event_target(e), Err(ERROR_CAPTURE_UNSUPPORTED), "a captured record has no time");
    assert_eq!(st.stream_query(s, 0), Err(ERROR_CAPTURE_UNSUPPORTED));
    assert!(st.end_capture(s, 1).is_err());
}

#[test]
fn forked_streams_join_the_capture() {
    let (mut st, ctx) = setup();
    let (s, side) = (created(&mut st, ctx, 0), created(&mut st, ctx, STREAM_NON_BLOCKING));
    st.begin_capture(s, CAPTURE_MODE_GLOBAL, 1).unwrap();
    let fork = st.event_create(ctx, 0);
    st.event_record(fork, s, 0).unwrap();
    st.stream_wait_event(side, fork).unwrap();
    assert_eq!(st.capture_status(side), Ok(CAPTURE_STATUS_ACTIVE));
    assert_eq!(st.submit(side, 0, kernel(7)), Ok(Submitted::Captured));
    assert_eq!(st.submit(s, 0, kernel(3)), Ok(Submitted::Captured));
    assert_eq!(st.end_capture(side, 1), Err(ERROR_ILLEGAL_STATE), "only the origin ends it");
    let g = st.end_capture(s, 1).unwrap();
    assert_eq!(st.graph_work(g), Ok(Work { ns: 10 * US, kernels: 2 }));
    assert_eq!(st.capture_status(side), Ok(CAPTURE_STATUS_NONE));
}

#[test]
fn a_context_takes_its_streams_along() {
    let (mut st, _) = setup();
    let ctx = st.ctx_create(1).unwrap();
    let h = st.stream_create(ctx, 1, 0);
    let e = st.event_create(ctx, 0);
    assert!(st.stream_valid(h));
    st.ctx_destroy(ctx).unwrap();
    assert!(!st.stream_valid(h));
    assert_eq!(st.event_destroy(e), Err(CUresult::ERROR_INVALID_HANDLE));
}

#[test]
fn launch_latency_is_added_to_submissions() {
    let (mut st, ctx) = setup();
    st.cfg.launch_latency_ns = 4 * US;
    let key = st.stream_key(0, ctx, 0, 1, false).unwrap();
    let span = queued(st.submit(key, 1_000 * US, kernel(10)));
    assert_eq!((span.start, span.end), (1_004 * US, 1_014 * US), "an idle device starts it after the latency");
    let span = queued(st.submit(key, 1_001 * US, kernel(10)));
    assert_eq!(span.start, 1_014 * US, "a busy one when the earlier work ends");
}
