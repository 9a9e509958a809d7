// The library is loaded under the names `libcuda.so.1` and `libnvidia-ml.so.1` (symlinks made by
// make-driver-dir.sh). Giving it the soname `libcuda.so.1` lets glibc recognise a second dlopen()
// of either name as the same object, so CUDA and NVML calls see one in-process state.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo:rerun-if-changed=build.rs");
}
