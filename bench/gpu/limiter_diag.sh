#!/usr/bin/env bash
# Why a limited job's throughput ratio differs from its share: for each workload and limit,
# throughput, the GPU time one step takes (events around every 64th step), the GPU time the
# limiter charged and the time it throttled (sm_share.py reads them from the region), and the
# SM clock, power and NVML's utilisation (the share of time a kernel ran: an independent view of
# the GPU time the job took) over the timed loop (nvidia-smi, 100 ms samples).
# Usage: bash bench/gpu/limiter_diag.sh path/to/libvgpu.so   (WORKLOADS, LIMITS, SECS: knobs)
set -u -o pipefail
LIB=$(realpath -e "$1") || exit 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
SECS=${SECS:-3}
W=$(mktemp -d /tmp/vgpu-diag.XXXXXX)
unset LD_PRELOAD
for v in $(compgen -e | grep -E '^(CUDA_DEVICE_|LIBVGPU_)'); do unset "$v"; done
k=0
one() {  # one WORKLOAD PCT(none|N)
  k=$((k + 1))
  local r="$W/r$k.cache" pre=() clocks
  [ "$2" = none ] || pre=(env LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$r" CUDA_DEVICE_SM_LIMIT="$2")
  nvidia-smi --query-gpu=clocks.sm,power.draw,utilization.gpu --format=csv,noheader,nounits -lms 100 >"$W/smi$k" 2>/dev/null &
  local smi=$!
  local out
  out=$(SM_SHARE_TIMING=1 timeout -k 5 60 "${pre[@]}" "$PY" "$HERE/sm_share.py" "$1" "$SECS" 2>"$W/err$k" | tail -1)
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  # The timed loop is the last SECS seconds before exit: average the samples of its middle.
  clocks=$(awk -F', ' -v secs="$SECS" '{ c[NR] = $1; p[NR] = $2; u[NR] = $3 }
    END { lo = NR - 10 * secs + 3; hi = NR - 3; if (lo < 1) lo = 1
      for (i = lo; i <= hi; i++) { C += c[i]; P += p[i]; U += u[i]; n++ }
      if (n) printf "sm_mhz=%.0f power_w=%.0f gpu_util_pct=%.1f", C / n, P / n, U / n }' "$W/smi$k")
  echo "$1 limit=$2 $out $clocks"
  grep -i "libvgpu" "$W/err$k" | head -2
}
echo "# limiter diagnosis ($(date -u '+%F %TZ'), commit ${COMMIT:-unknown})"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for wl in ${WORKLOADS:-small matmul graph}; do
  one "$wl" none
  for pct in ${LIMITS:-50 90}; do one "$wl" "$pct"; done
  one "$wl" none
done
rm -rf "$W"
