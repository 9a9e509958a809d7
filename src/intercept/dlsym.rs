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
//! The real `dlsym` comes from `dlvsym`, never from `dlsym` (that would be us).

use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Lib;

/// The real `dlsym`; read by the naked export, so it is a plain word.
static REAL_DLSYM: AtomicUsize = AtomicUsize::new(0);

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

/// Finds glibc's `dlsym` (2.34 moved it into libc; older versions in libdl, per architecture).
extern "C" fn init_real_dlsym() -> usize {
    let current = REAL_DLSYM.load(Ordering::Acquire);
    if current != 0 {
        return current;
    }
    let mut found = 0usize;
    for version in [c"GLIBC_2.34", c"GLIBC_2.2.5", c"GLIBC_2.17"] {
        // SAFETY: dlvsym with constant C strings; RTLD_NEXT finds the definition after ours.
        let p = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
        if !p.is_null() {
            found = p as usize;
            break;
        }
    }
    if found == 0 {
        // Without a real dlsym every lookup answers "not found" rather than recursing into us.
        found = not_found as *const () as usize;
    }
    REAL_DLSYM.store(found, Ordering::Release);
    found
}

unsafe extern "C" fn not_found(_: *mut c_void, _: *const c_char) -> *mut c_void {
    std::ptr::null_mut()
}

/// Looks a symbol up with the real `dlsym`.
pub fn real_dlsym(handle: *mut c_void, name: &CStr) -> *mut c_void {
    let f = init_real_dlsym();
    // SAFETY: `f` is glibc's dlsym (or `not_found`), which accepts any handle and C string.
    unsafe { std::mem::transmute::<usize, DlsymFn>(f)(handle, name.as_ptr()) }
}

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
