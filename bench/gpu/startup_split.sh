#!/usr/bin/env bash
# Where a process's start-up time goes with the preload, on the GPU: the time from spawn to the
# first cuMemAlloc (bench_api first-alloc) under
#   none       no preload
#   null       a preloaded library that does nothing (the dynamic loader's own cost of a preload)
#   existing   libvgpu, region file already there (a container's later processes)
#   fresh      libvgpu, a new region file each start (a container's first process)
#   shm        libvgpu, a new region file on /dev/shm each start
# interleaved, ROUNDS starts each; medians and the added time against `none`. A process start
# varies by more than the 2 ms budget from run to run, so a second table takes the added time
# apart in-process, where it can be measured: the dynamic loader's time (LD_DEBUG=statistics,
# cycles at the CPU's nominal clock) without and with the preload, and libvgpu's own one-time
# work before the first allocation (its debug line, src/startup.rs), with a fresh region and a
# 64g cap (the context's cost looked up or measured) and with an existing region and no cap.
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
loader_us() {  # loader_us PRELOAD -> µs the dynamic loader took to start bench_api
  local envv=(env LD_DEBUG=statistics)
  [ "$1" = - ] || envv+=(LD_PRELOAD="$1" CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/existing.cache")
  "${envv[@]}" "$W/bench_api" list 2>&1 >/dev/null |
    awk -v mhz="$MHZ" '/total startup time in dynamic loader/ { for (i = 1; i <= NF; i++) if ($i == "cycles") { printf "%.1f\n", $(i - 1) / mhz; exit } }'
}
ours_us() {  # ours_us fresh|existing ROUND -> µs of libvgpu's one-time work
  local envv=(env LD_PRELOAD="$LIB" LIBCUDA_LOG_LEVEL=4)
  if [ "$1" = fresh ]; then envv+=(CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/ours-$2.cache" CUDA_DEVICE_MEMORY_LIMIT=64g)
  else envv+=(CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/existing.cache"); fi
  timeout -k 5 30 "${envv[@]}" "$W/bench_api" first-alloc 2>&1 >/dev/null |
    sed -n 's/.*start-up: \([0-9]*\) µs of one-time work.*/\1/p'
}
MHZ=$(awk -F: '/^cpu MHz/ { printf "%.0f", $2; exit }' /proc/cpuinfo)
for ((r = 1; r <= ROUNDS; r++)); do
  echo "loader-none $(loader_us -)"; echo "loader-lib $(loader_us "$LIB")"
  echo "ours-fresh $(ours_us fresh "$r")"; echo "ours-existing $(ours_us existing "$r")"
done >>"$W/inproc"
echo "# start-up split ($(date -u '+%F %TZ'), commit ${COMMIT:-unknown}, $ROUNDS interleaved rounds)"
echo "| mode | median spawn → first cuMemAlloc | added vs none |"
echo "|---|---:|---:|"
# med FILE MODE -> the median of MODE's samples in FILE
med() { awk -v m="$2" '$1 == m && $2 != "" { print $2 }' "$1" | sort -g | awk '{ a[NR] = $1 } END { if (NR) print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
base=$(med "$W/samples" none)
for m in $MODES; do
  v=$(med "$W/samples" "$m")
  awk -v m="$m" -v v="$v" -v b="$base" 'BEGIN { if (v == "") { print "| " m " | fail | |"; exit } printf "| %s | %.0f µs | %+.0f µs |\n", m, v, v - b }'
done
echo
echo "In-process ($ROUNDS rounds; loader cycles at ${MHZ} MHz):"
echo "| part | median |"
echo "|---|---:|"
ln=$(med "$W/inproc" loader-none); ll=$(med "$W/inproc" loader-lib)
echo "| dynamic loader, no preload | ${ln:-?} µs |"
echo "| dynamic loader, libvgpu preloaded | ${ll:-?} µs |"
echo "| libvgpu one-time work, fresh region, 64g cap | $(med "$W/inproc" ours-fresh) µs |"
echo "| libvgpu one-time work, existing region, no cap | $(med "$W/inproc" ours-existing) µs |"
