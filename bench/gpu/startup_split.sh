#!/usr/bin/env bash
# Where a process's start-up time goes with the preload, on the GPU: the time from spawn to the
# first cuMemAlloc (bench_api first-alloc) under
#   none       no preload
#   null       a preloaded library that does nothing (the dynamic loader's own cost of a preload)
#   existing   libvgpu, region file already there (a container's later processes)
#   fresh      libvgpu, a new region file each start (a container's first process)
#   shm        libvgpu, a new region file on /dev/shm each start
# interleaved, ROUNDS starts each; medians and the added time against `none`.
# Usage: bash bench/gpu/startup_split.sh path/to/libvgpu.so   (ROUNDS, default 15)
set -u -o pipefail
LIB=$(realpath -e "${1:?usage: $0 path/to/libvgpu.so}") || exit 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ROUNDS=${ROUNDS:-15}
W=$(mktemp -d /tmp/vgpu-startup.XXXXXX) || exit 2
S=$(mktemp -d /dev/shm/vgpu-startup.XXXXXX) || exit 2
trap 'rm -rf "$W" "$S"' EXIT
unset LD_PRELOAD
for v in $(compgen -e | grep -E '^(CUDA_DEVICE_|LIBVGPU_)'); do unset "$v"; done
cudadir=${CUDA_LIB_DIR:-$(dirname "$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 / { print $NF; exit }')")}
gcc -O1 -I"$ROOT/cuda-headers" -o "$W/bench_api" "$ROOT/tests/c/bench_api.c" -L"$cudadir" -l:libcuda.so.1 -ldl || exit 2
echo 'int vgpu_null_preload;' | gcc -shared -fPIC -x c -o "$W/null.so" - || exit 2
one() {  # one MODE ROUND -> first_alloc_max_us
  local envv=(env)
  case $1 in
    null) envv+=(LD_PRELOAD="$W/null.so") ;;
    existing) envv+=(LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/existing.cache") ;;
    fresh) envv+=(LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/fresh-$2.cache") ;;
    shm) envv+=(LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$S/fresh-$2.cache") ;;
  esac
  timeout -k 5 30 "${envv[@]}" "$W/bench_api" spawn 1 1 2>/dev/null |
    awk -F'[ =]' '$1 == "spawn" { for (i = 2; i < NF; i++) if ($i == "first_alloc_max_us") print $(i + 1) }'
}
MODES="none null existing fresh shm"
one existing 0 >/dev/null  # creates the `existing` region
for ((r = 1; r <= ROUNDS; r++)); do
  for m in $MODES; do echo "$m $(one "$m" "$r")"; done >>"$W/samples"
done
echo "# start-up split ($(date -u '+%F %TZ'), commit ${COMMIT:-unknown}, $ROUNDS interleaved rounds)"
echo "| mode | median spawn → first cuMemAlloc | added vs none |"
echo "|---|---:|---:|"
med() { awk -v m="$1" '$1 == m && $2 != "" { print $2 }' "$W/samples" | sort -g | awk '{ a[NR] = $1 } END { if (NR) print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
base=$(med none)
for m in $MODES; do
  v=$(med "$m")
  awk -v m="$m" -v v="$v" -v b="$base" 'BEGIN { if (v == "") { print "| " m " | fail | |"; exit } printf "| %s | %.0f µs | %+.0f µs |\n", m, v, v - b }'
done
