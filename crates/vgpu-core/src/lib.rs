//! libvgpu's policy: configuration, the memory ledger, the virtual memory view and device
//! mapping. Safe Rust with no FFI types, so it is unit-tested without a driver and shared by the
//! preloaded library and the `vgpu` command.
#![forbid(unsafe_code)]

pub mod busy;
pub mod config;
pub mod devices;
pub mod ledger;
pub mod limiter;
pub mod overhead;
pub mod ptr_table;
pub mod sched;
pub mod size;
pub mod throttle;
pub mod view;

/// HAMi-core's region describes at most 16 devices; so do we.
pub const MAX_DEVICES: usize = 16;
