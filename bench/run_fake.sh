#!/usr/bin/env bash
# Host-time overhead of libvgpu on the fake driver (CPU only, no GPU): every operation of
# tests/c/bench_api.c without the preload and with it, interleaved in pairs, medians.
#
#   bench/run_fake.sh                 # builds the release library + fake driver, 7 pairs
#   PAIRS=9 N=50000 bench/run_fake.sh
#
# Knobs: PAIRS (default 7, at least 5), N (calls per operation per run, default 20000),
# SPAWN_ROUNDS (single start-ups per run, default 5), CONC (concurrent start-ups, default 32),
# LIB (library to measure; default target/release/libvgpu.so, built here unless NO_BUILD=1),
# OUT (where the table and raw samples go; default target/release/bench-fake).
# Exit status: 0 when every budgeted row passes, 1 otherwise, 2 when a run failed.
#
# The budgets are the H200 budgets of issue 6 turned into added host time (the fake driver is
# far cheaper than the real one, so a ratio against it means nothing): launch 1 % of 3.5 µs,
# cudaMalloc+cudaFree 2 % of 70 µs, pooled cudaMallocAsync+free 2 % of 5.6 µs, start-up 2 ms.
# Lookups (cuGetProcAddress, dlsym on libcuda) get 0.5 µs each: PyTorch makes ~1 400 of them
# at start-up, which must stay well inside the 2 ms. A capped cuMemGetInfo must be cheaper than
# the driver's own (ratio < 1): it is meant to be answered from libvgpu's state. That, and 32
# concurrent starts within 5 %, are H200 budgets only (bench/gpu/overhead.sh): the fake answers
# cuMemGetInfo in ~20 ns, and 32 starts on a 2-CPU CI host queue for the CPUs; both are recorded.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PAIRS=${PAIRS:-7}
N=${N:-20000}
SPAWN_ROUNDS=${SPAWN_ROUNDS:-5}
CONC=${CONC:-32}
OUT=${OUT:-$ROOT/target/release/bench-fake}
((PAIRS >= 5)) || { echo "PAIRS must be at least 5" >&2; exit 2; }

if [ "${NO_BUILD:-0}" != 1 ]; then
  nice cargo build --release -p libvgpu -p fakegpu 2>&1 | tail -1 || exit 2
fi
LIB=$(realpath -e "${LIB:-$ROOT/target/release/libvgpu.so}") || exit 2
mkdir -p "$OUT" || exit 2
WORK=$(mktemp -d /tmp/vgpu-bench-fake.XXXXXX) || exit 2
trap 'rm -rf "$WORK"' EXIT
sh crates/fakegpu/make-driver-dir.sh target/release "$WORK/driver" || exit 2
sh tests/c/build.sh "$WORK/driver" "$WORK/bin" || exit 2
BENCH=$WORK/bin/bench_api

# Clean slate: a limit or preload in the caller's shell would skew every run.
unset LD_PRELOAD
for v in $(compgen -e | grep -E '^(CUDA_|LIBVGPU_|LIBCUDA_|FAKEGPU_|BENCH_)'); do unset "$v"; done
export LD_LIBRARY_PATH=$WORK/driver FAKEGPU_MEMORY=16g

NREG=0
# run MODE LOG CMD... — MODE none | uncapped | capped (8g + SM 50 %) | capped64 (64g); a fresh
# region file per preloaded run.
run() {
  local mode=$1 log=$2; shift 2
  local -a envv=(env)
  if [ "$mode" != none ]; then
    NREG=$((NREG + 1))
    envv+=(LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$WORK/region-$NREG.cache")
    [ "$mode" = capped ] && envv+=(CUDA_DEVICE_MEMORY_LIMIT=8g CUDA_DEVICE_SM_LIMIT=50)
    # Start-ups: 32 processes share one region, so the cap must hold 32 contexts.
    [ "$mode" = capped64 ] && envv+=(CUDA_DEVICE_MEMORY_LIMIT=64g)
  fi
  if ! timeout -k 5 120 "${envv[@]}" "$@" >"$log" 2>&1; then
    echo "FAILED ($mode): $*" >&2; cat "$log" >&2; exit 2
  fi
}

SAMPLES=$OUT/samples.tsv
: >"$SAMPLES"
# ops_samples PAIR LOG MODE — `op NAME n=.. ns=X` lines → samples, keyed by op and mode.
ops_samples() {
  awk -v pair="$1" -v mode="$3" '$1 == "op" {
      split($4, a, "="); ns = a[2]
      if (mode == "none") {
        print $2 "@uncapped", pair, "base", ns; print $2 "@capped", pair, "base", ns
      } else print $2 "@" mode, pair, "with", ns
    }' "$2" >>"$SAMPLES"
}
# spawn_samples PAIR LOG KEY SIDE — median over rounds of first_alloc_max_us.
spawn_samples() {
  awk -F'[ =]' '$1 == "spawn" { for (i = 2; i < NF; i++) if ($i == "first_alloc_max_us") print $(i + 1) }' "$2" |
    sort -g | awk -v key="$3" -v pair="$1" -v side="$4" '{ v[NR] = $1 }
      END { if (NR) print key, pair, side, (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }' >>"$SAMPLES"
}

echo "libvgpu fake-driver overhead: $PAIRS interleaved pairs, N=$N calls per operation, library $LIB"
for ((p = 1; p <= PAIRS; p++)); do
  # Alternate the order inside a pair so a drift of the machine does not favour one side.
  if ((p % 2)); then modes="none uncapped capped"; else modes="capped uncapped none"; fi
  for m in $modes; do
    run "$m" "$WORK/ops-$p-$m.log" "$BENCH" ops -n "$N" all
    ops_samples "$p" "$WORK/ops-$p-$m.log" "$m"
  done
  if ((p % 2)); then modes="none capped64"; else modes="capped64 none"; fi
  for m in $modes; do
    side=with; [ "$m" = none ] && side=base
    run "$m" "$WORK/spawn1-$p-$m.log" "$BENCH" spawn 1 "$SPAWN_ROUNDS"
    spawn_samples "$p" "$WORK/spawn1-$p-$m.log" startup "$side"
    run "$m" "$WORK/spawnN-$p-$m.log" "$BENCH" spawn "$CONC" 1
    spawn_samples "$p" "$WORK/spawnN-$p-$m.log" startN "$side"
  done
  echo "  pair $p/$PAIRS done"
done

ROWS=$WORK/rows.tsv
tab=$'\t'
cat >"$ROWS" <<EOF
launch@uncapped${tab}cuLaunchKernel, no limit${tab}ns${tab}added<=35
launch@capped${tab}cuLaunchKernel, 8g + SM limit 50 % (the fake's launch takes no GPU time: within the share)${tab}ns${tab}added<=35
alloc_free@uncapped${tab}cuMemAlloc_v2+cuMemFree_v2 1 MiB, no limit${tab}ns${tab}added<=1400
alloc_free@capped${tab}cuMemAlloc_v2+cuMemFree_v2 1 MiB, 8g cap${tab}ns${tab}added<=1400
async_free@uncapped${tab}cuMemAllocAsync+cuMemFreeAsync, no limit${tab}ns${tab}added<=112
async_free@capped${tab}cuMemAllocAsync+cuMemFreeAsync, 8g cap${tab}ns${tab}added<=112
meminfo@uncapped${tab}cuMemGetInfo_v2, no limit${tab}ns${tab}-
meminfo@capped${tab}cuMemGetInfo_v2, 8g cap (the fake's own answer takes 22 ns; the H200's 4–7 µs)${tab}ns${tab}-
procaddr@uncapped${tab}cuGetProcAddress_v2("cuMemAlloc")${tab}ns${tab}added<=500
dlsym_hooked@uncapped${tab}dlsym(libcuda, "cuMemAlloc_v2") (swapped)${tab}ns${tab}added<=500
dlsym_cuda@uncapped${tab}dlsym(libcuda, "cuCtxGetDevice") (not hooked)${tab}ns${tab}added<=500
dlsym_other@uncapped${tab}dlsym(libc, "malloc")${tab}ns${tab}added<=50
dlsym_next@uncapped${tab}dlsym(RTLD_NEXT, "malloc")${tab}ns${tab}added<=50
nvml_meminfo@uncapped${tab}nvmlDeviceGetMemoryInfo_v2, no limit${tab}ns${tab}-
nvml_meminfo@capped${tab}nvmlDeviceGetMemoryInfo_v2, 8g cap${tab}ns${tab}-
startup${tab}process start → first cuMemAlloc (64g cap)${tab}µs${tab}added<=2000
startN${tab}${CONC} processes at once → last first alloc (64g cap; on few CPUs the processes' start-up work queues)${tab}µs${tab}-
EOF

COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
[ "$COMMIT" != unknown ] && ! git diff --quiet HEAD -- 2>/dev/null && COMMIT="$COMMIT+uncommitted"
{
  echo "### Fake driver (CPU), $(date -u +%Y-%m-%d), commit $COMMIT"
  echo
  echo "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load $(cut -d' ' -f1-3 /proc/loadavg); $PAIRS pairs, N=$N, $SPAWN_ROUNDS single starts per run"
  echo
  python3 bench/summarize.py "$ROWS" "$SAMPLES"
} | tee "$OUT/results.md"
python3 bench/summarize.py --strict "$ROWS" "$SAMPLES" >/dev/null
