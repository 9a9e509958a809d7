// The library is loaded under the names `libcuda.so.1` and `libnvidia-ml.so.1` (symlinks made by
// make-driver-dir.sh). Giving it the soname `libcuda.so.1` lets glibc recognise a second dlopen()
// of either name as the same object, so CUDA and NVML calls see one in-process state.
//
// -Bsymbolic binds the library's references to its own functions inside the library, as the real
// driver's are: its cuGetProcAddress hands out its *own* addresses. Without it, taking the address
// of an exported function goes through the GOT and, under LD_PRELOAD, yields the preloaded
// library's same-named hook — a shortcut the real driver never gives an interposer.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
    println!("cargo:rerun-if-changed=build.rs");
}
