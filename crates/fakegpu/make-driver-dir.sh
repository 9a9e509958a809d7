#!/bin/sh
# Usage: make-driver-dir.sh <profile-dir> <out-dir>
# Creates <out-dir> holding libcuda.so.1, libcuda.so, libnvidia-ml.so.1 and libnvidia-ml.so,
# all absolute symlinks to <profile-dir>/libfakegpu.so, so that a program run with
# LD_LIBRARY_PATH=<out-dir> finds the fake driver and the fake NVML (one library, one state).
set -eu
if [ "$#" -ne 2 ]; then
    echo "usage: $0 <profile-dir> <out-dir>" >&2
    exit 2
fi
lib="$(cd "$1" && pwd)/libfakegpu.so"
if [ ! -f "$lib" ]; then
    echo "$0: $lib not found (build it: cargo build -p fakegpu)" >&2
    exit 1
fi
mkdir -p "$2"
for name in libcuda.so.1 libcuda.so libnvidia-ml.so.1 libnvidia-ml.so; do
    ln -sfn "$lib" "$2/$name"
done
