#!/usr/bin/env bash
# Quick start: build libvgpu, then show a 2 GiB cap enforced and reported.
# Uses the real driver when nvidia-smi finds a GPU, otherwise the fake driver (a 16 GiB GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p libvgpu -p fakegpu
lib=$PWD/target/release/libvgpu.so
work=$PWD/target/release/demo
if nvidia-smi -L >/dev/null 2>&1; then
    what="the real driver ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
    real=$(ldconfig -p | awk '/libcuda\.so\.1 / {print $NF; exit}')
    mkdir -p "$work/driver" && ln -sfn "$real" "$work/driver/libcuda.so"
else
    what="the fake driver (crates/fakegpu, 16 GiB)"
    sh crates/fakegpu/make-driver-dir.sh target/release "$work/driver"
    export LD_LIBRARY_PATH=$work/driver FAKEGPU_MEMORY=16g
fi
sh tests/c/build.sh "$work/driver" "$work/bin"
prog=$work/bin/alloc_linked
run() { echo "\$ $*"; "$@" | sed 's/^/    /'; }
# Each scenario is its own "container": its own region file (the cap lives there, shared by
# the container's processes), instead of the default /tmp/cudevshr.cache.
region() { rm -f "$work/$1.cache"; echo "CUDA_DEVICE_MEMORY_SHARED_CACHE=$work/$1.cache"; }

echo "== libvgpu demo on $what"
echo
echo "-- without libvgpu: how much can a CUDA program take, in 1 GiB blocks?"
run "$prog" init meminfo alloc-until-oom 1g
echo
echo "-- with LD_PRELOAD=libvgpu.so CUDA_DEVICE_MEMORY_LIMIT=2g"
echo "   (the context's own memory counts against the cap; see README 'What is counted')"
cache=$(region capped)
run env LD_PRELOAD="$lib" "$cache" CUDA_DEVICE_MEMORY_LIMIT=2g "$prog" init meminfo totalmem 0 alloc-until-oom 64m alloc 1g free-last meminfo
echo
echo "-- the same container's cap as nvidia-smi sees it (NVML, dlopen + dlsym like nvidia-smi)"
run env LD_PRELOAD="$lib" "$cache" "$work/bin/nvml_smi"
echo
echo "-- a malformed limit is reported, not guessed (and not applied)"
run env LD_PRELOAD="$lib" "$(region malformed)" CUDA_DEVICE_MEMORY_LIMIT="2 gigs" "$prog" init meminfo 2>&1
