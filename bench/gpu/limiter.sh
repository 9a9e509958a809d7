#!/usr/bin/env bash
# Compute limiter acceptance on the GPU: throughput ratio vs unlimited for a bf16 matmul, a
# stream of small kernels and a replayed CUDA graph at 10/25/50/75/90 %, and two containers at
# 30 % and 60 % together. Run from the repo root: bash bench/gpu/limiter.sh path/to/libvgpu.so
set -u -o pipefail
LIB=$(realpath -e "$1") || exit 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
SECS=${SECS:-4}
WORKLOADS=${WORKLOADS:-matmul small graph}
LIMITS=${LIMITS:-10 25 50 75 90}
TOGETHER=${TOGETHER:-1}  # 0: skip the two-container run
LATENCY=${LATENCY:-1}    # 0: skip the latency runs
ROUNDS=${ROUNDS:-1}      # rounds of (unlimited + every limit) per workload
W=$(mktemp -d /tmp/vgpu-lim.XXXXXX)
unset LD_PRELOAD
for v in $(compgen -e | grep -E '^(CUDA_DEVICE_|LIBVGPU_)'); do unset "$v"; done
run() {  # run PCT WORKLOAD -> iters/s ; PCT "none" = no preload
  local pct=$1 wl=$2 out
  # A fresh region per run (run is called in $(...), so a counter would not survive).
  n=$(mktemp -u XXXXXX)
  if [ "$pct" = none ]; then
    out=$(timeout -k 5 60 "$PY" "$HERE/sm_share.py" "$wl" "$SECS" 2>"$W/err.$n")
  else
    out=$(timeout -k 5 90 env LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/r$n.cache" \
      CUDA_DEVICE_SM_LIMIT="$pct" "$PY" "$HERE/sm_share.py" "$wl" "$SECS" 2>"$W/err.$n")
  fi
  echo "$out" | grep -o 'iters_per_s=[0-9.]*' | cut -d= -f2
}
echo "# libvgpu compute limiter on the GPU ($(date -u '+%F %TZ'), commit ${COMMIT:-unknown})"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "| workload | limit % | iters/s (per round) | unlimited iters/s (per round) | ratio % (mean) | error (points) |"
echo "|---|---|---|---|---|---|"
errs=()
for wl in $WORKLOADS; do
  # Runs vary by several percent (the small-kernel loop is CPU-bound: ±15 %), so each round runs
  # the unlimited reference and every limit, in alternating order, and a limit's ratio is the
  # mean over rounds of its run against that round's reference.
  for ((r = 1; r <= ROUNDS; r++)); do
    order="none $LIMITS"
    ((r % 2)) || order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' ')
    for pct in $order; do echo "$pct $(run "$pct" "$wl")"; done >"$W/round.$wl.$r"
  done
  for pct in $LIMITS; do
    line=$(for ((r = 1; r <= ROUNDS; r++)); do
      awk -v p="$pct" '$1 == "none" { b = $2 } $1 == p { g = $2 } END { print g, b }' "$W/round.$wl.$r"
    done | awk -v p="$pct" '$1 != "" && $2 > 0 { s += 100 * $1 / $2; g = g (g == "" ? "" : " / ") $1; b = b (b == "" ? "" : " / ") $2; k++ }
      END { if (k) printf "%s | %s | %.1f | %+.1f", g, b, s / k, s / k - p; else print "fail | - | - | -" }')
    echo "| $wl | $pct | $line |"
    errs+=("$(echo "$line" | awk -F'|' '{print $4}')")
  done
done
printf '%s\n' "${errs[@]}" | awk '{ v = $1 < 0 ? -$1 : $1; s += v; if (v > m) m = v; k++ } END { printf "mean abs error %.2f points, max %.2f (over %d runs)\n", s / k, m, k }'
if [ "$TOGETHER" = 1 ]; then
echo "## two containers together: 30 % and 60 % (matmul), each its own region"
base=$(run none matmul)
( timeout -k 5 90 env LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/a.cache" CUDA_DEVICE_SM_LIMIT=30 \
    "$PY" "$HERE/sm_share.py" matmul "$SECS" >"$W/a.out" 2>&1 ) & A=$!
( timeout -k 5 90 env LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/b.cache" CUDA_DEVICE_SM_LIMIT=60 \
    "$PY" "$HERE/sm_share.py" matmul "$SECS" >"$W/b.out" 2>&1 ) & B=$!
wait "$A"; wait "$B"
for x in a b; do
  g=$(grep -o 'iters_per_s=[0-9.]*' "$W/$x.out" | cut -d= -f2)
  awk -v g="$g" -v b="$base" -v x="$x" 'BEGIN { if (g != "") printf "container %s: %.1f %% of unlimited alone\n", (x == "a" ? "30%" : "60%"), 100 * g / b }'
done
fi
if [ "$LATENCY" = 1 ]; then
echo "## latency of one small kernel (launch + synchronize), 2000 iterations"
lat() {  # lat LABEL PCT MODE
  local pre=()
  [ "$2" = none ] || pre=(env LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/l$1.cache" CUDA_DEVICE_SM_LIMIT="$2")
  echo "$1: $(timeout -k 5 60 "${pre[@]}" "$PY" "$HERE/latency.py" 2000 $3 2>&1 | grep latency)"
}
lat "alone, no preload" none ""
lat "alone, SM 50 %" 50 ""
lat "beside a busy stream, no preload" none busy
lat "beside a busy stream, SM 50 %" 50 busy
fi
tail -3 "$W"/err.* 2>/dev/null | grep -i "error\|libvgpu" | head -5
rm -rf "$W"
