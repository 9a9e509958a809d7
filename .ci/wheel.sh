#!/usr/bin/env bash
# CI: the pip wheel end to end, without a GPU (fake driver, crates/fakegpu).
#   1. scripts/build-wheel.sh: libvgpu.so + vgpu for glibc 2.17, maturin, check-glibc on both;
#   2. the wheel's name/tag, its contents and metadata;
#   3. a fresh virtualenv, `pip install --no-index` of the wheel;
#   4. from the venv, as a user would: `vgpu run --memory 2g -- <CUDA program>` (C, linked with
#      -lcuda) and `vgpu run --memory 2g -- python fake_train.py` (ctypes), the cap enforced and
#      shown; `python -m libvgpu` / `libvgpu.library_path()` name the installed library.
# Honours CARGO_TARGET_DIR; everything it writes is under it (default target/).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
tgt=${CARGO_TARGET_DIR:-target}
work=$tgt/wheel-ci
rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)

fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== build the wheel"
scripts/build-wheel.sh "$work/dist"

echo "== wheel name, tag and contents"
version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)
tag=py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64
whl=$work/dist/libvgpu-$version-$tag.whl
[ -f "$whl" ] || fail "expected $whl; built: $(ls "$work/dist")"
echo "$(basename "$whl")"
python3 -m zipfile -l "$whl" | tee "$work/contents"
for entry in "libvgpu-$version.data/scripts/vgpu" "libvgpu-$version.data/data/lib/libvgpu.so" \
    libvgpu/__init__.py libvgpu/__main__.py "libvgpu-$version.dist-info/METADATA" \
    "libvgpu-$version.dist-info/WHEEL" "libvgpu-$version.dist-info/RECORD" \
    "libvgpu-$version.dist-info/licenses/LICENSE"; do
    awk '{ print $1 }' "$work/contents" | grep -qxF "$entry" || fail "$entry missing from the wheel"
done
python3 - "$whl" "$version" <<'EOF'
import sys, zipfile
whl, version = sys.argv[1], sys.argv[2]
z = zipfile.ZipFile(whl)
def headers(name):
    text = z.read("libvgpu-%s.dist-info/%s" % (version, name)).decode().split("\n\n")[0]
    return [tuple(l.split(": ", 1)) for l in text.splitlines() if ": " in l]
wheel, meta = headers("WHEEL"), dict(headers("METADATA"))
tags = sorted(v for k, v in wheel if k == "Tag")
want = ["py3-none-manylinux2014_x86_64", "py3-none-manylinux_2_17_x86_64"]
assert tags == want, "WHEEL tags %s, expected %s" % (tags, want)
assert ("Root-Is-Purelib", "false") in wheel, wheel
for key, value in [("Name", "libvgpu"), ("Version", version), ("License-Expression", "Apache-2.0"),
                   ("Requires-Python", ">=3.8")]:
    assert meta.get(key) == value, "METADATA %s: %r, expected %r" % (key, meta.get(key), value)
for name in z.namelist():  # nothing else lands outside site-packages, bin/ and lib/
    assert name.startswith(("libvgpu/", "libvgpu-%s.dist-info/" % version,
                            "libvgpu-%s.data/scripts/vgpu" % version,
                            "libvgpu-%s.data/data/lib/libvgpu.so" % version)), name
print("ok   WHEEL tags %s, METADATA %s" % (" ".join(tags), meta["Summary"][:60] + "..."))
EOF

echo "== fresh virtualenv, pip install --no-index"
venv=$work/venv
python3 -m venv "$venv"
"$venv/bin/pip" install --no-index --disable-pip-version-check --quiet "$whl"
[ -x "$venv/bin/vgpu" ] || fail "$venv/bin/vgpu not installed"
[ -f "$venv/lib/libvgpu.so" ] || fail "$venv/lib/libvgpu.so not installed"
"$venv/bin/vgpu" --version
printed=$("$venv/bin/python" -m libvgpu)
[ "$printed" = "$(realpath "$venv/lib/libvgpu.so")" ] || fail "python -m libvgpu printed $printed"
"$venv/bin/python" -c 'import libvgpu, os, sys; assert libvgpu.vgpu_path() == os.path.realpath(sys.argv[1]), libvgpu.vgpu_path()' "$venv/bin/vgpu"
echo "ok   python -m libvgpu: $printed"
if "$venv/bin/python" -m libvgpu extra 2>/dev/null; then fail "python -m libvgpu extra should fail"; fi

echo "== the fake driver and the C test programs"
cargo build --release --quiet -p fakegpu
driver=$work/driver
sh crates/fakegpu/make-driver-dir.sh "$tgt/release" "$driver"
sh tests/c/build.sh "$driver" "$work/bin"

# The user's shell: the venv activated, nothing of ours in the environment, the fake GPU (16 GiB)
# where the driver would be.
in_venv() {
    env -u LIBVGPU_LIB -u LD_PRELOAD -u CUDA_DEVICE_MEMORY_LIMIT -u CUDA_DEVICE_SM_LIMIT \
        -u CUDA_DEVICE_MEMORY_SHARED_CACHE LD_LIBRARY_PATH="$driver" FAKEGPU_MEMORY=16g \
        bash -c '. "$1/bin/activate" && cd "$2" && shift 2 && "$@"' in_venv "$venv" "$work" "$@"
}

echo "== vgpu run --memory 2g -- alloc_linked (the venv's vgpu and libvgpu.so)"
[ "$(in_venv command -v vgpu)" = "$venv/bin/vgpu" ] || fail "vgpu is not the venv's"
in_venv vgpu run --memory 2g -- "$work/bin/alloc_linked" init meminfo alloc-until-oom 64m | tee "$work/c.out"
grep -q '^meminfo .*total=2147483648' "$work/c.out" || fail "cuMemGetInfo total is not 2 GiB"
grep -q '^alloc-until-oom 67108864 2 ' "$work/c.out" || fail "allocation did not stop with CUDA_ERROR_OUT_OF_MEMORY"

echo "== vgpu run --memory 2g -- python fake_train.py (ctypes)"
cp packaging/python/tests/fake_train.py "$work/fake_train.py"
in_venv vgpu run --memory 2g -- python fake_train.py 2147483648 --preloaded
echo "== LD_PRELOAD=\$(python -m libvgpu) CUDA_DEVICE_MEMORY_LIMIT=3g python fake_train.py"
in_venv bash -c 'CUDA_DEVICE_MEMORY_SHARED_CACHE=$PWD/region LD_PRELOAD=$(python -m libvgpu) \
    CUDA_DEVICE_MEMORY_LIMIT=3g python fake_train.py 3221225472 --preloaded'
echo "== without vgpu the same program sees the whole fake GPU"
in_venv python fake_train.py 17179869184

echo "== pip uninstall removes both"
"$venv/bin/pip" uninstall --yes --quiet libvgpu
[ ! -e "$venv/bin/vgpu" ] && [ ! -e "$venv/lib/libvgpu.so" ] || fail "pip uninstall left files behind"
echo "== wheel passed in $((SECONDS - start)) s: $(basename "$whl")"
