#!/usr/bin/env bash
# One program, run without and with the preload (no limit set) in PAIRS interleaved pairs (the
# order alternates), for figures too noisy on the H200 for overhead.sh's 5 pairs. Every figure
# the program prints ("KEY VALUE" lines, or bench_api's "op NAME n=.. ns=VALUE") gets the median
# of its per-pair ratios (with / without) and the range of those ratios.
# Usage: bash bench/gpu/pairs.sh path/to/libvgpu.so PAIRS CMD [ARG...]
# PIN=N runs every process on CPU N (taskset): less spread between processes.
set -u -o pipefail
LIB=$(realpath -e "${1:?usage: $0 LIB PAIRS CMD...}") || exit 2
PAIRS=${2:?pairs}
shift 2
W=$(mktemp -d /tmp/vgpu-pairs.XXXXXX) || exit 2
trap 'rm -rf "$W"' EXIT
unset LD_PRELOAD
for v in $(compgen -e | grep -E '^(CUDA_DEVICE_|LIBVGPU_)'); do unset "$v"; done
figures() {  # figures SIDE PAIR: the program's figures as "KEY PAIR SIDE VALUE"
  awk -v s="$1" -v p="$2" '$1 == "op" { split($4, a, "="); print $2, p, s, a[2]; next }
    NF == 2 && $2 ~ /^[0-9.eE+-]+$/ { print $1, p, s, $2 }'
}
[ -n "${PIN:-}" ] && set -- taskset -c "$PIN" "$@"
for ((p = 1; p <= PAIRS; p++)); do
  if ((p % 2)); then sides="none with"; else sides="with none"; fi
  for s in $sides; do
    if [ "$s" = none ]; then timeout -k 5 120 "$@" 2>/dev/null | figures none "$p"
    else timeout -k 5 120 env LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/r$p.cache" "$@" 2>/dev/null | figures with "$p"; fi
  done
done >"$W/samples"
echo "# $* — $PAIRS interleaved pairs, no limit ($(date -u '+%F %TZ'), commit ${COMMIT:-unknown})"
echo "| figure | median without | median with | median of pair ratios | pair ratios |"
echo "|---|---:|---:|---:|---|"
for k in $(awk '{ print $1 }' "$W/samples" | awk '!seen[$0]++'); do
  awk -v k="$k" '$1 == k { v[$2, $3] = $4; if ($2 > n) n = $2 }
    function med(a, m,   i, j, t) { for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2 }
    END { m = 0; for (p = 1; p <= n; p++) if (((p, "none") in v) && ((p, "with") in v) && v[p, "none"] > 0) {
        m++; r[m] = v[p, "with"] / v[p, "none"]; a[m] = v[p, "none"]; b[m] = v[p, "with"] }
      if (!m) exit; lo = r[1]; hi = r[1]; for (i = 2; i <= m; i++) { if (r[i] < lo) lo = r[i]; if (r[i] > hi) hi = r[i] }
      printf "| %s | %g | %g | %.3f | %.3f–%.3f (%d) |\n", k, med(a, m), med(b, m), med(r, m), lo, hi, m }' "$W/samples"
done
