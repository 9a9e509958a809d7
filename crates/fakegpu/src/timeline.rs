//! The simulated GPUs' clocks: when each device will have finished everything queued on it.
//!
//! A real GPU is one queue of work shared by every process (and container) that uses it, so
//! a compute limiter is only testable if the fake's processes contend for one device clock
//! too. Each device is one [`Slot`] whose `busy_until` (CLOCK_MONOTONIC ns, which every process
//! on the host reads alike) is advanced by compare-and-swap: a kernel starts when the device,
//! its stream and the wall clock all allow, `start = max(now, busy_until, stream_ready)`, and
//! holds the device until `start + duration`. Kernels are served in submission order; real
//! GPUs time-slice between contexts, which this model ignores on purpose (it keeps the total
//! work and the sharing right, and a test's expectations simple).
//!
//! With `FAKEGPU_TIMELINE=<file>` the slots live in that file, mapped shared, so processes
//! pointing at the same file share devices. A slot is claimed by device UUID, not index:
//! processes with different `CUDA_VISIBLE_DEVICES` orders still meet on the same device, and
//! runs with different `FAKEGPU_UUIDS` can share a file without meeting at all. Unset, the
//! timeline is private to the process.

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};

/// "fakegpu\0" + layout version 1, little-endian.
const MAGIC: u64 = u64::from_le_bytes(*b"fkgpuTL1");
/// Slots in a shared file: enough for every device of several differently configured runs.
pub const SHARED_SLOTS: usize = 64;
const FREE: u64 = 0;
const CLAIMING: u64 = 1;
const READY: u64 = 2;

/// One device. A cache line of its own so processes hammering different devices do not
/// contend. `#[repr(C)]`: it is a file format shared by every process mapping the file.
#[repr(C, align(64))]
#[derive(Default)]
pub struct Slot {
    /// FREE → CLAIMING → READY, never back; only shared files use it.
    state: AtomicU64,
    uuid: [AtomicU64; 2],
    /// When the last kernel queued on the device ends.
    busy_until: AtomicU64,
    /// Sum of the durations of every kernel ever queued (busy time, for tests and reports).
    busy_ns: AtomicU64,
    launches: AtomicU64,
}

#[repr(C, align(64))]
struct Header {
    magic: AtomicU64,
    /// A hash of the kernel's boot id: CLOCK_MONOTONIC restarts at boot, so busy times from a
    /// file kept across a reboot would lie far in the future and stall every launch.
    boot: AtomicU64,
}

const FILE_LEN: usize = size_of::<Header>() + SHARED_SLOTS * size_of::<Slot>();
const _: () = assert!(size_of::<Slot>() == 64 && size_of::<Header>() == 64);

/// Where a kernel landed on its device.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

/// The FIFO rule, as a pure function: the kernel starts as soon as the device is free, its
/// stream's earlier work is done, and (nothing runs in the past) not before it is submitted.
pub fn schedule(now: u64, busy_until: u64, stream_ready: u64, duration: u64) -> Span {
    let start = now.max(busy_until).max(stream_ready);
    Span { start, end: start.saturating_add(duration) }
}

impl Slot {
    /// Queues `duration` ns of work; lock-free, so concurrent processes serialise exactly.
    pub fn enqueue(&self, now: u64, stream_ready: u64, duration: u64) -> Span {
        let mut busy = self.busy_until.load(Ordering::Acquire);
        loop {
            let span = schedule(now, busy, stream_ready, duration);
            match self.busy_until.compare_exchange_weak(busy, span.end, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.busy_ns.fetch_add(duration, Ordering::Relaxed);
                    self.launches.fetch_add(1, Ordering::Relaxed);
                    return span;
                }
                Err(seen) => busy = seen,
            }
        }
    }

    pub fn busy_until(&self) -> u64 {
        self.busy_until.load(Ordering::Acquire)
    }

    /// (total busy ns, kernels) queued on the device by every process sharing it.
    pub fn totals(&self) -> (u64, u64) {
        (self.busy_ns.load(Ordering::Relaxed), self.launches.load(Ordering::Relaxed))
    }
}

/// The devices of this process, by physical index.
pub struct Timeline {
    slots: Vec<&'static Slot>,
    /// The shared file's path, for messages; `None` when private.
    pub path: Option<String>,
}

impl Timeline {
    /// Private slots, one per device.
    pub fn private(devices: usize) -> Timeline {
        let slots = (0..devices).map(|_| &*Box::leak(Box::<Slot>::default())).collect();
        Timeline { slots, path: None }
    }

    /// The slots of `uuids` in the shared file at `path` (created if missing). The mapping is
    /// never unmapped: the process's state lives as long as the process.
    pub fn shared(path: &str, uuids: &[[u8; 16]]) -> Result<Timeline, String> {
        let base = map_file(path)?;
        // SAFETY: `base` maps FILE_LEN bytes, page-aligned, for the rest of the process; the
        // header and the slots are atomics only, valid for any bytes another process wrote.
        let header = unsafe { &*(base as *const Header) };
        let all: &'static [Slot] =
            unsafe { std::slice::from_raw_parts(base.add(size_of::<Header>()) as *const Slot, SHARED_SLOTS) };
        match header.magic.compare_exchange(0, MAGIC, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}
            Err(m) if m == MAGIC => {}
            Err(m) => return Err(format!("{path}: not a fakegpu timeline (magic {m:#x})")),
        }
        let boot = boot_hash();
        let seen = header.boot.load(Ordering::Acquire);
        if seen != boot && header.boot.compare_exchange(seen, boot, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            // First opener since a reboot (or ever): old busy times are on another clock.
            for s in all {
                s.busy_until.store(0, Ordering::Release);
            }
        }
        let slots = uuids.iter().map(|u| claim(all, u)).collect::<Result<Vec<_>, _>>()?;
        Ok(Timeline { slots, path: Some(path.to_string()) })
    }

    pub fn slot(&self, dev: usize) -> &'static Slot {
        self.slots[dev]
    }
}

/// The slot holding `uuid`, claiming the first free one if none does. Slots are claimed in
/// order and never freed, so a scan meets every claimed slot before the first free one: two
/// processes claiming the same UUID at once cannot both miss each other (the later one waits
/// at the slot the earlier one is filling in).
fn claim(all: &'static [Slot], uuid: &[u8; 16]) -> Result<&'static Slot, String> {
    let want = [u64::from_le_bytes(uuid[..8].try_into().unwrap()), u64::from_le_bytes(uuid[8..].try_into().unwrap())];
    for slot in all {
        let mut spins = 0u32;
        loop {
            match slot.state.compare_exchange(FREE, CLAIMING, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    slot.uuid[0].store(want[0], Ordering::Relaxed);
                    slot.uuid[1].store(want[1], Ordering::Relaxed);
                    slot.state.store(READY, Ordering::Release);
                    return Ok(slot);
                }
                Err(READY) => {
                    let have = [slot.uuid[0].load(Ordering::Relaxed), slot.uuid[1].load(Ordering::Relaxed)];
                    if have == want {
                        return Ok(slot);
                    }
                    break;
                }
                // Another process is filling it in (a few stores); a claimer killed in
                // between leaves it CLAIMING for good, so give up on it after a while.
                Err(_) if spins < 100_000 => {
                    spins += 1;
                    std::thread::yield_now();
                }
                Err(_) => break,
            }
        }
    }
    Err(format!("no free device slot (all {SHARED_SLOTS} taken)"))
}

fn map_file(path: &str) -> Result<*mut u8, String> {
    let err = |what: &str| format!("{path}: {what}: {}", std::io::Error::last_os_error());
    let c = CString::new(path).map_err(|_| format!("{path:?}: NUL in path"))?;
    // SAFETY: plain syscalls on a descriptor we own; the mapping outlives the descriptor.
    unsafe {
        let fd = libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC, 0o666 as libc::c_uint);
        if fd < 0 {
            return Err(err("open"));
        }
        let mut st: libc::stat = std::mem::zeroed();
        // Growing only: concurrent openers all extend to the same length, and zero fill is a
        // valid empty timeline.
        if libc::fstat(fd, &mut st) != 0
            || ((st.st_size as usize) < FILE_LEN && libc::ftruncate(fd, FILE_LEN as _) != 0)
        {
            let e = err("size");
            libc::close(fd);
            return Err(e);
        }
        let p = libc::mmap(std::ptr::null_mut(), FILE_LEN, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
        libc::close(fd);
        if p == libc::MAP_FAILED {
            return Err(err("mmap"));
        }
        Ok(p.cast())
    }
}

/// FNV-1a of /proc/sys/kernel/random/boot_id (1 where it cannot be read: then stale times
/// after a reboot go undetected).
fn boot_hash() -> u64 {
    let id = std::fs::read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let h = id.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    h.max(1)
}

/// CLOCK_MONOTONIC in ns: the clock every process on the host shares.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until CLOCK_MONOTONIC reaches `t` (absolute, so a signal or a late wake-up does not
/// add up): how a synchronising call waits for the simulated GPU without burning a CPU that
/// the other simulated processes need. (Sleeping to near the deadline and then spinning was
/// tried: on a loaded two-core machine it woke no sooner and took CPU from the others.)
pub fn sleep_until(t: u64) {
    if now_ns() >= t {
        return;
    }
    thread_local! {
        // Linux lets a sleep overrun by the thread's timer slack, 50 µs by default: more than
        // a short kernel, so every synchronisation would idle the simulated GPU that long
        // (a real driver wakes within a few µs). Tighten it once per waiting thread.
        static PRECISE: () = unsafe {
            // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
        };
    }
    PRECISE.with(|_| ());
    let ts = libc::timespec { tv_sec: (t / 1_000_000_000) as _, tv_nsec: (t % 1_000_000_000) as _ };
    // SAFETY: `ts` is valid; a NULL remainder is allowed with TIMER_ABSTIME.
    while now_ns() < t
        && unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut()) }
            == libc::EINTR
    {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_rule() {
        // Idle device: starts now.
        assert_eq!(schedule(100, 50, 0, 10), Span { start: 100, end: 110 });
        // Busy device: queued behind it.
        assert_eq!(schedule(100, 500, 0, 10), Span { start: 500, end: 510 });
        // The stream waits for an event later than the device is busy.
        assert_eq!(schedule(100, 500, 900, 10), Span { start: 900, end: 910 });
        assert_eq!(schedule(0, u64::MAX - 1, 0, 10).end, u64::MAX, "saturates");
    }

    #[test]
    fn back_to_back_kernels_tile_the_device() {
        let tl = Timeline::private(2);
        let a = tl.slot(0).enqueue(1000, 0, 300);
        let b = tl.slot(0).enqueue(1001, 0, 300);
        assert_eq!((a, b), (Span { start: 1000, end: 1300 }, Span { start: 1300, end: 1600 }));
        assert_eq!(tl.slot(1).enqueue(1002, 0, 5), Span { start: 1002, end: 1007 }, "devices are independent");
        assert_eq!(tl.slot(0).totals(), (600, 2));
    }

    #[test]
    fn concurrent_submitters_never_overlap() {
        let tl = Timeline::private(1);
        let slot = tl.slot(0);
        let spans: Vec<Span> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(move || (0..2000).map(|_| slot.enqueue(10, 0, 7)).collect::<Vec<_>>()))
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = spans.clone();
        sorted.sort_by_key(|s| s.start);
        for w in sorted.windows(2) {
            assert_eq!(w[0].end, w[1].start, "gapless and disjoint");
        }
        assert_eq!(sorted.last().unwrap().end, 10 + 8000 * 7);
        assert_eq!(slot.totals(), (8000 * 7, 8000));
    }

    /// The path of `name` in a fresh directory, which goes with the returned `TempDir`.
    fn temp(name: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name).to_string_lossy().into_owned();
        (dir, path)
    }

    #[test]
    fn shared_file_meets_by_uuid() {
        let (_dir, path) = temp("uuid");
        let (u0, u1, u2) = ([1u8; 16], [2u8; 16], [3u8; 16]);
        // Two "processes" (two mappings) that list the devices in different orders.
        let a = Timeline::shared(&path, &[u0, u1]).unwrap();
        let b = Timeline::shared(&path, &[u1, u2, u0]).unwrap();
        let x = a.slot(1).enqueue(now_ns(), 0, 1_000_000);
        let y = b.slot(0).enqueue(now_ns(), 0, 10);
        assert_eq!(y.start, x.end, "the second mapping queues behind the first");
        assert_eq!(b.slot(1).totals(), (0, 0), "u2 is nobody else's device");
        b.slot(2).enqueue(0, 0, 5);
        assert_eq!(a.slot(0).totals(), (5, 1), "u0 is index 0 in one, 2 in the other");
        std::fs::write(&path, b"garbage!").unwrap();
        assert!(Timeline::shared(&path, &[u0]).is_err(), "a foreign file is refused");
    }

    #[test]
    fn concurrent_claims_of_one_uuid_agree() {
        let (_dir, path) = temp("claim");
        let tls: Vec<Timeline> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|i| {
                    let path = path.clone();
                    s.spawn(move || Timeline::shared(&path, &[[9u8; 16], [i; 16]]))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        let first = tls[0].slot(0);
        for t in &tls {
            t.slot(0).enqueue(0, 0, 1);
        }
        assert_eq!(first.totals().1, 4, "all four mapped the same slot for uuid 9");
    }

    #[test]
    fn sleep_until_reaches_the_deadline() {
        let t = now_ns() + 2_000_000;
        sleep_until(t);
        assert!(now_ns() >= t);
        sleep_until(0);
    }
}
