//! The two clocks of the library. Every timestamp another process reads (the node table, the
//! region's buckets, GPU times mapped through an anchor event) is [`now_ns`]:
//! CLOCK_MONOTONIC, which all processes of a machine share. [`coarse_ns`] (CLOCK_MONOTONIC_COARSE,
//! a few ns but only as fine as the kernel's tick) only paces work inside this process, such as
//! how often a launch does its bookkeeping; it is never stored nor compared with `now_ns`.

pub fn now_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

pub fn coarse_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC_COARSE)
}

fn read(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer; both clocks always exist on Linux and the vDSO answers
    // without a syscall.
    unsafe { libc::clock_gettime(id, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}
