#!/usr/bin/env bash
# Usage: scripts/build-wheel.sh [OUT_DIR]            (default OUT_DIR: target/wheels)
#
# Builds the pip wheel `libvgpu` (packaging/python/pyproject.toml) into OUT_DIR:
#   libvgpu-<version>-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
# which installs
#   <prefix>/bin/vgpu            the command (`vgpu run` finds the library at ../lib/libvgpu.so)
#   <prefix>/lib/libvgpu.so      the preloaded library
#   site-packages/libvgpu/       `python -m libvgpu` / `libvgpu.library_path()`
# so that in a virtualenv `pip install libvgpu-*.whl && vgpu run --memory 4g -- python train.py`
# works. Both artifacts are built for glibc 2.17 (the manylinux2014 floor) with zig:
#   - libvgpu.so by scripts/build-portable.sh (cargo zigbuild, then scripts/check-glibc.sh:
#     glibc floor, exports, no driver in DT_NEEDED); incremental, so nearly free after a build;
#   - vgpu by `maturin build --zig` (bindings = "bin"), checked by maturin's manylinux audit and
#     then by scripts/check-glibc.sh, like the library, on the copy inside the wheel.
# Needs cargo, python3 and binutils; maturin and ziglang come from PyPI (prebuilt wheels) into
# $CARGO_TARGET_DIR/wheel-tools (default target/wheel-tools); maturin builds in .../wheel-build.
#
# Environment: MATURIN_VERSION, ZIGLANG_VERSION (pins of the PyPI packages; cargo-zigbuild's is
# in build-portable.sh), LIBVGPU_SO (use this already-built libvgpu.so, absolute or relative to
# the repository root, instead of running build-portable.sh; it is checked all the same),
# TARGET_TRIPLE (default this machine's; only x86_64 is tested), CARGO_TARGET_DIR (honoured).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/wheels}
tgt=${CARGO_TARGET_DIR:-target}
mkdir -p "$tgt"
tgt_abs=$(cd "$tgt" && pwd)
floor=2.17 # manylinux2014 = manylinux_2_17: keep in step with packaging/python/pyproject.toml
triple=${TARGET_TRIPLE:-$(uname -m)-unknown-linux-gnu}
maturin_version=${MATURIN_VERSION:-1.16.0}
zig_version=${ZIGLANG_VERSION:-0.17.1}
pkg=packaging/python
start=$SECONDS

# 1. libvgpu.so for the glibc floor.
if [ -n "${LIBVGPU_SO:-}" ]; then
    lib=$LIBVGPU_SO
    echo "== using $lib"
    scripts/check-glibc.sh --max "$floor" "$lib"
else
    GLIBC_FLOOR=$floor TARGET_TRIPLE=$triple scripts/build-portable.sh "$tgt/portable"
    lib=$tgt/portable/libvgpu.so
fi

# 2. Stage it where pyproject.toml's `data` points: <name>.data/data/lib/ installs to <prefix>/lib/.
rm -rf "$pkg/libvgpu.data"
install -D -m 755 "$lib" "$pkg/libvgpu.data/data/lib/libvgpu.so"

# 3. maturin (and zig for it) from PyPI, pinned.
tools=$tgt_abs/wheel-tools
have_tools() {
    [ "$("$tools/bin/maturin" --version 2>/dev/null)" = "maturin $maturin_version" ] &&
        [ "$("$tools/bin/python" -c 'import importlib.metadata as m; print(m.version("ziglang"))' 2>/dev/null)" = "$zig_version" ]
}
if ! have_tools; then
    echo "== installing maturin $maturin_version and ziglang $zig_version from PyPI into $tools"
    rm -rf "$tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check \
        "maturin==$maturin_version" "ziglang==$zig_version"
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
    rustup target add "$triple"
fi

# 4. The wheel. --zig links vgpu against zig's glibc $floor stubs; --auditwheel check fails (never
#    repairs) if the binary needs anything outside the manylinux2014 policy. Its own target dir:
#    maturin's flags differ from cargo-zigbuild's, and sharing $tgt/$triple/release would make
#    each rebuild everything after the other.
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out"/libvgpu-*.whl
echo "== maturin build --zig --target $triple ($floor) -> $out"
(cd "$pkg" && PATH=$tools/bin:$PATH "$tools/bin/maturin" build --zig --target "$triple" \
    --compatibility manylinux2014 --auditwheel check --locked --color never \
    --target-dir "$tgt_abs/wheel-build" -o "$out")
wheels=("$out"/libvgpu-*.whl)
if [ ${#wheels[@]} -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
    echo "build-wheel: expected one wheel in $out, found: ${wheels[*]}" >&2
    exit 1
fi
whl=${wheels[0]}

# 5. What the wheel carries, checked like the portable build: glibc floor, exports, DT_NEEDED.
check=$(mktemp -d)
trap 'rm -rf "$check"' EXIT
python3 -m zipfile -e "$whl" "$check"
echo "== checking the artifacts inside $(basename "$whl")"
scripts/check-glibc.sh --max "$floor" "$check"/libvgpu-*.data/data/lib/libvgpu.so \
    "$check"/libvgpu-*.data/scripts/vgpu
rm -rf "$pkg/libvgpu.data"
ls -l "$whl"
echo "wheel built in $((SECONDS - start)) s"
