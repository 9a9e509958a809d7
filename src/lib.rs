//! libvgpu: load with `LD_PRELOAD` to slice one NVIDIA GPU — a hard device-memory cap and one
//! consistent memory view per container, without changing the application.
//!
//! Layers (cudarc's split): `intercept` and `driver` hold the unsafe FFI; `hooks` are ordinary
//! Rust handlers; policy (config, ledger, views, device mapping) is the safe `vgpu-core` crate.
#![deny(unsafe_op_in_unsafe_fn)]

mod clock;
mod container;
mod driver;
mod hooks;
mod intercept;
mod limiter;
mod log;
mod node;
mod reconcile;
mod startup;
mod state;

/// Runs at `exit()` (and `dlclose`), after the application's `atexit` handlers: the dynamic
/// loader's destructors come last. Never panics across the FFI boundary.
/// Says the refusals not yet said and gives this process's slot back.
extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let Some(st) = state::started() else { return };
        hooks::memory::say_unsaid_refusals();
        st.container().release_at_exit();
    });
}

// SAFETY: `.fini_array` holds pointers to `extern "C" fn()` destructors, which this is.
#[used]
#[unsafe(link_section = ".fini_array")]
static AT_EXIT: extern "C" fn() = at_exit;
