//! Streams on the simulated timeline, and stream capture.
//!
//! Every stream remembers when its last work completes (`ready`, CLOCK_MONOTONIC ns). A launch
//! asks the device's [`Slot`](crate::timeline::Slot) for a span that starts after both the
//! device and the stream are free; synchronising means sleeping until `ready`. Time is always
//! an argument (`now`), so the rules are unit-tested without sleeping.
//!
//! The three kinds of stream a handle can name, as in the driver: streams made by
//! cuStreamCreate; each context's legacy default stream (handle 0 through an ordinary entry
//! point, or `CU_STREAM_LEGACY`), which waits for all earlier work of the context's blocking
//! streams and makes them wait for its own; and a per-thread default stream per (context,
//! thread) (handle 0 through a `_ptsz` entry point, or `CU_STREAM_PER_THREAD`).
//!
//! A capturing stream executes nothing: its launches add to the capture's graph. The calls a
//! real driver refuses during capture (synchronising or querying the stream, the legacy
//! stream touching a capturing blocking stream, cuCtxSynchronize under a global or
//! thread-local capture) fail here with the same codes and invalidate the capture, so a test
//! notices an interposer that breaks capture.

use std::collections::{HashMap, HashSet, VecDeque};

use cuda_types::CUresult;

use super::{Res, State, TAG_STREAM};
use crate::timeline::Span;

pub const ERROR_ILLEGAL_STATE: CUresult = CUresult(401);
pub const ERROR_CAPTURE_UNSUPPORTED: CUresult = CUresult(900);
pub const ERROR_CAPTURE_INVALIDATED: CUresult = CUresult(901);
pub const ERROR_CAPTURE_IMPLICIT: CUresult = CUresult(906);
pub const ERROR_CAPTURE_WRONG_THREAD: CUresult = CUresult(908);

/// `CUstreamCaptureMode` and `CUstreamCaptureStatus`.
pub const CAPTURE_MODE_GLOBAL: u32 = 0;
pub const CAPTURE_MODE_THREAD_LOCAL: u32 = 1;
pub const CAPTURE_MODE_RELAXED: u32 = 2;
pub const CAPTURE_STATUS_NONE: u32 = 0;
pub const CAPTURE_STATUS_ACTIVE: u32 = 1;
pub const CAPTURE_STATUS_INVALIDATED: u32 = 2;

/// `CU_STREAM_NON_BLOCKING`: the stream does not synchronise with the legacy stream.
pub const STREAM_NON_BLOCKING: u32 = 1;
const HANDLE_LEGACY: u64 = 1;
const HANDLE_PER_THREAD: u64 = 2;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum StreamKey {
    Created(u64),
    Legacy { ctx: u64 },
    PerThread { ctx: u64, thread: u64 },
}

#[derive(Debug)]
pub struct Stream {
    pub ctx: u64,
    /// Physical device.
    pub dev: usize,
    pub blocking: bool,
    /// When the last work queued on it completes (0: never used).
    pub ready: u64,
    /// End times of launches still pending, oldest first, for the queue-depth bound.
    pending: VecDeque<u64>,
    /// The capture (keyed by its graph) the stream records into.
    pub capture: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
pub struct Capture {
    pub origin: StreamKey,
    pub mode: u32,
    pub thread: u64,
    pub invalidated: bool,
}

/// What a graph (or a graph exec) holds: the fake only needs the total.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Work {
    pub ns: u64,
    pub kernels: u64,
}

#[derive(Debug)]
pub struct Event {
    pub ctx: u64,
    pub flags: u32,
    /// When the work before the last record completes; `None`: never recorded.
    pub time: Option<u64>,
    /// The last record happened inside this capture (no time: capture is not execution).
    pub captured: Option<u64>,
}

/// The execution-side objects of one process.
#[derive(Default)]
pub struct Objects {
    pub streams: HashMap<StreamKey, Stream>,
    pub captures: HashMap<u64, Capture>,
    pub graphs: HashMap<u64, Work>,
    pub execs: HashMap<u64, Work>,
    pub events: HashMap<u64, Event>,
    pub modules: HashSet<u64>,
    /// Per context, when the work of its destroyed streams completes: cuCtxSynchronize
    /// still waits for it.
    pub orphaned: HashMap<u64, u64>,
}

/// The outcome of queueing work.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Submitted {
    Queued(Span),
    Captured,
    /// The stream's queue is full until this time: sleep, then submit again.
    Full(u64),
}

impl State {
    pub fn stream_create(&mut self, ctx: u64, dev: usize, flags: u32) -> u64 {
        let h = self.new_handle(TAG_STREAM);
        let s = Stream::new(ctx, dev, flags & STREAM_NON_BLOCKING == 0);
        self.work.streams.insert(StreamKey::Created(h), s);
        h
    }

    /// Pending work still completes, as in the driver; only the handle goes.
    pub fn stream_destroy(&mut self, h: u64) -> Res<()> {
        let s = self.work.streams.remove(&StreamKey::Created(h)).ok_or(CUresult::ERROR_INVALID_HANDLE)?;
        let done = self.work.orphaned.entry(s.ctx).or_default();
        *done = s.ready.max(*done);
        Ok(())
    }

    /// The null stream, the two special handles, and streams this process created.
    pub fn stream_valid(&self, h: u64) -> bool {
        h <= HANDLE_PER_THREAD || self.work.streams.contains_key(&StreamKey::Created(h))
    }

    /// The stream a handle names from the current context `ctx` on `dev`, `thread` calling
    /// through a `_ptsz` entry point or not. The implicit streams come into being on first use.
    pub fn stream_key(&mut self, h: u64, ctx: u64, dev: usize, thread: u64, ptsz: bool) -> Res<StreamKey> {
        let key = match h {
            0 if ptsz => StreamKey::PerThread { ctx, thread },
            0 | HANDLE_LEGACY => StreamKey::Legacy { ctx },
            HANDLE_PER_THREAD => StreamKey::PerThread { ctx, thread },
            _ if self.work.streams.contains_key(&StreamKey::Created(h)) => return Ok(StreamKey::Created(h)),
            _ => return Err(CUresult::ERROR_INVALID_HANDLE),
        };
        self.work.streams.entry(key).or_insert_with(|| Stream::new(ctx, dev, true));
        Ok(key)
    }

    pub fn stream(&self, key: StreamKey) -> Res<&Stream> {
        self.work.streams.get(&key).ok_or(CUresult::ERROR_INVALID_HANDLE)
    }

    fn stream_mut(&mut self, key: StreamKey) -> Res<&mut Stream> {
        self.work.streams.get_mut(&key).ok_or(CUresult::ERROR_INVALID_HANDLE)
    }

    /// When new work on `key` may start as far as streams go: after the stream's own work, and
    /// across the legacy stream's implicit barrier. The legacy stream cannot wait for a
    /// capturing stream (it has no execution to wait for): that invalidates the capture.
    pub fn stream_deps(&mut self, key: StreamKey) -> Res<u64> {
        let s = self.stream(key)?;
        let (ctx, own, blocking) = (s.ctx, s.ready, s.blocking);
        if let StreamKey::Legacy { .. } = key {
            let peers = self.work.streams.values().filter(|p| p.ctx == ctx && p.blocking);
            let capturing: Vec<u64> = peers.clone().filter_map(|p| p.capture).collect();
            if !capturing.is_empty() {
                capturing.iter().for_each(|g| self.invalidate(*g));
                return Err(ERROR_CAPTURE_IMPLICIT);
            }
            return Ok(peers.map(|p| p.ready).fold(own, u64::max));
        }
        let legacy = self.work.streams.get(&StreamKey::Legacy { ctx });
        Ok(if blocking { legacy.map_or(own, |l| l.ready.max(own)) } else { own })
    }

    /// Queues `work` on `key`: onto the device timeline, or into the graph being captured.
    pub fn submit(&mut self, key: StreamKey, now: u64, work: Work) -> Res<Submitted> {
        if let Some(g) = self.stream(key)?.capture {
            if self.work.captures.get(&g).is_none_or(|c| c.invalidated) {
                return Err(ERROR_CAPTURE_INVALIDATED);
            }
            let graph = self.work.graphs.entry(g).or_default();
            graph.ns = graph.ns.saturating_add(work.ns);
            graph.kernels += work.kernels;
            return Ok(Submitted::Captured);
        }
        let depth = self.cfg.queue_depth;
        let s = self.stream_mut(key)?;
        while s.pending.front().is_some_and(|&end| end <= now) {
            s.pending.pop_front();
        }
        if s.pending.len() >= depth {
            return Ok(Submitted::Full(s.pending[0]));
        }
        let ready = self.stream_deps(key)?;
        let dev = self.stream(key)?.dev;
        let arrives = now.saturating_add(self.cfg.launch_latency_ns);
        let span = self.timeline.slot(dev).enqueue(arrives, ready, work.ns);
        let s = self.stream_mut(key)?;
        s.ready = span.end;
        s.pending.push_back(span.end);
        Ok(Submitted::Queued(span))
    }

    /// When `key`'s work so far completes (what cuStreamSynchronize sleeps until).
    /// Synchronising a capturing stream is illegal and ends the capture's usefulness.
    pub fn stream_sync_target(&mut self, key: StreamKey) -> Res<u64> {
        if let Some(g) = self.stream(key)?.capture {
            self.invalidate(g);
            return Err(ERROR_CAPTURE_UNSUPPORTED);
        }
        self.stream_deps(key)
    }

    pub fn stream_query(&mut self, key: StreamKey, now: u64) -> Res<()> {
        if self.stream_sync_target(key)? <= now { Ok(()) } else { Err(CUresult::ERROR_NOT_READY) }
    }

    /// When every stream of `ctx` is done. Refused (and the captures invalidated) while a
    /// global capture runs anywhere, or a thread-local one on this thread: the driver counts
    /// cuCtxSynchronize among the "potentially unsafe" calls. Relaxed captures allow it.
    pub fn ctx_sync_target(&mut self, ctx: u64, thread: u64) -> Res<u64> {
        let blocked: Vec<u64> = (self.work.captures.iter())
            .filter(|(_, c)| {
                c.mode == CAPTURE_MODE_GLOBAL || (c.mode == CAPTURE_MODE_THREAD_LOCAL && c.thread == thread)
            })
            .map(|(&g, _)| g)
            .collect();
        if !blocked.is_empty() {
            blocked.iter().for_each(|&g| self.invalidate(g));
            return Err(ERROR_CAPTURE_UNSUPPORTED);
        }
        let orphaned = self.work.orphaned.get(&ctx).copied().unwrap_or(0);
        Ok(self.work.streams.values().filter(|s| s.ctx == ctx).map(|s| s.ready).fold(orphaned, u64::max))
    }

    fn invalidate(&mut self, graph: u64) {
        if let Some(c) = self.work.captures.get_mut(&graph) {
            c.invalidated = true;
        }
    }

    // ---- capture ----

    /// cuStreamBeginCapture: the legacy stream cannot be captured (it would have to wait for
    /// every other stream), a stream already capturing cannot start again.
    pub fn begin_capture(&mut self, key: StreamKey, mode: u32, thread: u64) -> Res<()> {
        if mode > CAPTURE_MODE_RELAXED {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        if let StreamKey::Legacy { .. } = key {
            return Err(ERROR_CAPTURE_UNSUPPORTED);
        }
        if self.stream(key)?.capture.is_some() {
            return Err(ERROR_ILLEGAL_STATE);
        }
        let graph = self.graph_create();
        self.work.captures.insert(graph, Capture { origin: key, mode, thread, invalidated: false });
        self.stream_mut(key)?.capture = Some(graph);
        Ok(())
    }

    /// cuStreamEndCapture: ends the capture on every stream that joined it and hands out the
    /// graph, or fails with `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED` (the graph is dropped).
    /// (Unlike the driver, streams that forked off and never joined back are not an error.)
    pub fn end_capture(&mut self, key: StreamKey, thread: u64) -> Res<u64> {
        let g = self.stream(key)?.capture.ok_or(ERROR_ILLEGAL_STATE)?;
        let c = *self.work.captures.get(&g).ok_or(ERROR_ILLEGAL_STATE)?;
        if c.origin != key {
            return Err(ERROR_ILLEGAL_STATE);
        }
        if c.mode != CAPTURE_MODE_RELAXED && c.thread != thread {
            return Err(ERROR_CAPTURE_WRONG_THREAD);
        }
        self.work.captures.remove(&g);
        for s in self.work.streams.values_mut().filter(|s| s.capture == Some(g)) {
            s.capture = None;
        }
        if c.invalidated {
            self.work.graphs.remove(&g);
            return Err(ERROR_CAPTURE_INVALIDATED);
        }
        Ok(g)
    }

    /// `CUstreamCaptureStatus` of a stream. For the legacy stream, a capturing blocking
    /// stream is the implicit-dependency error (and the capture is invalidated), as in the
    /// driver.
    pub fn capture_status(&mut self, key: StreamKey) -> Res<u32> {
        if let StreamKey::Legacy { .. } = key {
            self.stream_deps(key)?;
            return Ok(CAPTURE_STATUS_NONE);
        }
        Ok(match self.stream(key)?.capture.and_then(|g| self.work.captures.get(&g)) {
            None => CAPTURE_STATUS_NONE,
            Some(c) if c.invalidated => CAPTURE_STATUS_INVALIDATED,
            Some(_) => CAPTURE_STATUS_ACTIVE,
        })
    }

    /// A stream that waits for an event recorded in a capture joins that capture (the
    /// fork pattern of multi-stream capture). Otherwise it waits for the event's time.
    pub fn stream_wait_event(&mut self, key: StreamKey, event: u64) -> Res<()> {
        let ev = self.work.events.get(&event).ok_or(CUresult::ERROR_INVALID_HANDLE)?;
        let (time, captured) = (ev.time, ev.captured);
        let live = captured.filter(|g| self.work.captures.contains_key(g));
        let s = self.stream_mut(key)?;
        match (s.capture, live) {
            (Some(_), _) => {}
            (None, Some(g)) => s.capture = Some(g),
            (None, None) => s.ready = s.ready.max(time.unwrap_or(0)),
        }
        Ok(())
    }

    /// A context going away takes its streams and events with it.
    pub fn forget_ctx_work(&mut self, ctx: u64) {
        self.work.streams.retain(|_, s| s.ctx != ctx);
        self.work.events.retain(|_, e| e.ctx != ctx);
        self.work.orphaned.remove(&ctx);
        let streams = &self.work.streams;
        self.work.captures.retain(|_, c| streams.contains_key(&c.origin));
    }
}

impl Stream {
    fn new(ctx: u64, dev: usize, blocking: bool) -> Stream {
        Stream { ctx, dev, blocking, ready: 0, pending: VecDeque::new(), capture: None }
    }
}
