//! libvgpu: load with `LD_PRELOAD` to slice one NVIDIA GPU — a hard device-memory cap and one
//! consistent memory view per container, without changing the application.
//!
//! Layers (cudarc's split): `intercept` and `driver` hold the unsafe FFI; `hooks` are ordinary
//! Rust handlers; policy (config, ledger, views, device mapping) is the safe `vgpu-core` crate.
#![deny(unsafe_op_in_unsafe_fn)]

mod container;
mod driver;
mod hooks;
mod intercept;
mod limiter;
mod log;
mod node;
mod startup;
mod state;
mod watch;
