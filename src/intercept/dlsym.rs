//! The `dlsym` door.
//!
//! Since CUDA 11.3 the runtime and PyTorch take driver entry points with `dlsym(libcuda_handle,
//! name)`, which ignores `LD_PRELOAD` order, so we export `dlsym` itself. Two rules:
//! - `dlsym(RTLD_NEXT, …)` resolves relative to the *caller's* object, which glibc finds from the
//!   return address. A Rust wrapper would make that address ours, so the export is a naked
//!   function that tail-jumps into the real `dlsym`, leaving the caller's frame untouched.
//! - Any other handle: call the real `dlsym`; if the answer is the real address of a function we
//!   hook, return the hook instead (pointer identity, the same rule as `cuGetProcAddress`).
//!
//! The real `dlsym` is `driver::symbols`'s, found with `dlvsym`, never `dlsym` (that would be us).

use std::ffi::{c_char, c_void};

use crate::driver::Lib;
use crate::driver::symbols::{DlsymFn, REAL_DLSYM, init_real_dlsym};

/// `dlsym` for every handle but `RTLD_NEXT`.
unsafe extern "C" fn dlsym_hook(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    let real = init_real_dlsym();
    // SAFETY: forwarding the caller's own arguments to the real dlsym.
    let found = unsafe { std::mem::transmute::<usize, DlsymFn>(real)(handle, name) };
    if found.is_null() || name.is_null() {
        return found;
    }
    // SAFETY: the real dlsym just read `name` as a NUL-terminated string, so two bytes are valid
    // (the second may be the terminator).
    let lib = match unsafe { (*name as u8, *name.add(1) as u8) } {
        (b'c', b'u') => Lib::Cuda,
        (b'n', b'v') => Lib::Nvml,
        _ => return found,
    };
    // Never unwind into the loader; a failed lookup of ours returns the real answer.
    std::panic::catch_unwind(|| super::hook_for(lib, found)).ok().flatten().unwrap_or(found)
}

#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        "cmp rdi, -1",                // RTLD_NEXT?
        "jne {hook}",
        "mov rax, qword ptr [rip + {real}]",
        "test rax, rax",
        "jz 2f",
        "jmp rax",                    // tail call: the caller's return address stays on top
        "2:",
        "push rdi",
        "push rsi",
        "sub rsp, 8",                 // keep the stack 16-byte aligned for the call
        "call {init}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "jmp rax",
        hook = sym dlsym_hook,
        real = sym REAL_DLSYM,
        init = sym init_real_dlsym,
    )
}

#[cfg(target_arch = "aarch64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        "cmn x0, #1",                 // RTLD_NEXT?
        "b.ne {hook}",
        "adrp x16, {real}",
        "ldr x16, [x16, :lo12:{real}]",
        "cbz x16, 2f",
        "br x16",                     // tail call: x30 still holds the caller's return address
        "2:",
        "stp x0, x1, [sp, #-32]!",
        "str x30, [sp, #16]",
        "bl {init}",
        "mov x16, x0",
        "ldr x30, [sp, #16]",
        "ldp x0, x1, [sp], #32",
        "br x16",
        hook = sym dlsym_hook,
        real = sym REAL_DLSYM,
        init = sym init_real_dlsym,
    )
}
