// Link options for libvgpu.so, which is mapped into every process of a container (start-up cost
// matters there, see bench/README.md):
//
// - The unwinder is linked statically (libgcc_eh.a) instead of through `libgcc_s.so.1`, so the
//   dynamic loader has one DT_NEEDED less to find, map and relocate in every process. rustc
//   asks the linker for `-lgcc_s`; a directory searched first that holds a `libgcc_s.a` which
//   is really libgcc_eh.a satisfies that with the static unwinder. Panics are still caught
//   (the hooks' `catch_unwind`): libgcc_eh is the same unwinder, only linked in.
// - `-Bsymbolic` binds the library's references to its own symbols inside the library, so
//   they need no symbol lookups at load time. Our exports still interpose on the driver's for
//   everyone else; nothing in the library takes its own exports' addresses to mean another
//   library's (the real `dlsym` comes from `dlvsym(RTLD_NEXT, …)`).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // tests/cudart.rs needs a real libcudart.so (`.ci/run` installs one): without it the test is
    // compiled as ignored, so `cargo test` reports it as skipped, with the reason, not as passed.
    println!("cargo:rustc-check-cfg=cfg(libvgpu_test_cudart)");
    println!("cargo:rerun-if-env-changed=LIBVGPU_TEST_CUDART");
    if std::env::var_os("LIBVGPU_TEST_CUDART").is_some_and(|v| !v.is_empty()) {
        println!("cargo:rustc-cfg=libvgpu_test_cudart");
    }
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");

    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.contains("linux-gnu") {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let Ok(out) = Command::new(&cc).arg("-print-file-name=libgcc_eh.a").output() else {
        println!("cargo:warning=libvgpu: `{cc} -print-file-name` failed; linking libgcc_s dynamically");
        return;
    };
    let eh = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !eh.is_absolute() || !eh.exists() {
        println!("cargo:warning=libvgpu: libgcc_eh.a not found; linking libgcc_s dynamically");
        return;
    }
    let dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("unwind");
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/unwind");
    let link = dir.join("libgcc_s.a");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&eh, &link).expect("symlink libgcc_s.a → libgcc_eh.a");
    println!("cargo:rustc-link-search=native={}", dir.display());
}
