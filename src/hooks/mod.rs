//! Handlers: ordinary Rust behind the generated shims in `intercept::table`.

pub mod context;
pub mod footprint;
pub mod info;
pub mod launch;
pub mod memory;
pub mod nvml;
pub mod spill;
pub mod sync;
