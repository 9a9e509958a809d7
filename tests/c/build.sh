#!/bin/sh
# Usage: tests/c/build.sh <driver-dir> <out-dir>
# Compiles the C test programs into <out-dir>. alloc_linked links against <driver-dir>'s
# libcuda.so (no rpath: run it with LD_LIBRARY_PATH=<driver-dir>); the others dlopen.
set -eu
if [ "$#" -ne 2 ]; then
    echo "usage: $0 <driver-dir> <out-dir>" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
headers="$here/../../cuda-headers"
driver="$1"
out="$2"
mkdir -p "$out"
cc="${CC:-gcc}"
flags="-O1 -Wall -Werror -I$headers"
$cc $flags -o "$out/alloc_linked" "$here/alloc_linked.c" -L"$driver" -lcuda -ldl
$cc $flags -o "$out/cudart_like" "$here/cudart_like.c" -ldl
$cc $flags -o "$out/nvml_smi" "$here/nvml_smi.c" -ldl
$cc $flags -o "$out/cudart_real" "$here/cudart_real.c" -ldl
$cc $flags -o "$out/rtld_next" "$here/rtld_next.c" -L"$driver" -lcuda -ldl
$cc $flags -o "$out/nvml_linked" "$here/nvml_linked.c" -L"$driver" -lnvidia-ml
$cc $flags -o "$out/kernels" "$here/kernels.c" -ldl
$cc $flags -o "$out/bench_api" "$here/bench_api.c" -L"$driver" -lcuda -ldl
