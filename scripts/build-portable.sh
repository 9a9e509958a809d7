#!/usr/bin/env bash
# Usage: scripts/build-portable.sh [OUT_DIR]            (default OUT_DIR: target/portable)
#
# Builds libvgpu.so and the vgpu command for an old glibc floor, so that one .so loads in every
# CUDA image (CentOS 7 / UBI 8 / Ubuntu 18.04 and later: glibc >= 2.17), then checks both with
# scripts/check-glibc.sh (highest GLIBC symbol version, exports = tests/exports.allowlist).
#
# How: `cargo zigbuild --release --target x86_64-unknown-linux-gnu.2.17` links against zig's
# glibc 2.17 stubs. Needs cargo and python3; when `cargo zigbuild` or zig is missing, both come
# from PyPI (ziglang, cargo-zigbuild: prebuilt wheels, no compilation) into target/portable-tools.
#
# Environment: GLIBC_FLOOR (default 2.17), TARGET_TRIPLE (default: this machine's,
# x86_64-unknown-linux-gnu; aarch64-unknown-linux-gnu is added with rustup but not tested here),
# ZIGLANG_VERSION / CARGO_ZIGBUILD_VERSION (pins of the PyPI packages), CARGO_TARGET_DIR (honoured).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/portable}
floor=${GLIBC_FLOOR:-2.17}
triple=${TARGET_TRIPLE:-$(uname -m)-unknown-linux-gnu}
tools=$PWD/target/portable-tools

have_tools() { cargo-zigbuild --version >/dev/null 2>&1 && { command -v zig >/dev/null || python3 -c 'import ziglang' 2>/dev/null; }; }
if ! have_tools; then
    export PATH=$tools/bin:$PATH
    if ! have_tools; then
        echo "== installing ziglang and cargo-zigbuild from PyPI into $tools"
        python3 -m venv "$tools"
        "$tools/bin/pip" install --quiet --disable-pip-version-check \
            "ziglang==${ZIGLANG_VERSION:-0.17.1}" "cargo-zigbuild==${CARGO_ZIGBUILD_VERSION:-0.24.1}"
    fi
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
    rustup target add "$triple"
fi
echo "== cargo zigbuild --release --target $triple.$floor ($(cargo-zigbuild --version))"
start=$SECONDS
cargo zigbuild --release --target "$triple.$floor" -p libvgpu -p vgpu-cli
echo "built in $((SECONDS - start)) s"

built=${CARGO_TARGET_DIR:-target}/$triple/release
mkdir -p "$out"
# Ship without debug info (the release profile keeps line tables for local profiling).
for f in libvgpu.so vgpu; do
    objcopy --strip-debug "$built/$f" "$out/$f.tmp" && mv "$out/$f.tmp" "$out/$f"
done
echo "== checking $out/libvgpu.so and $out/vgpu"
scripts/check-glibc.sh --max "$floor" "$out/libvgpu.so" "$out/vgpu"
ls -l "$out/libvgpu.so" "$out/vgpu"
