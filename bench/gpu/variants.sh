#!/usr/bin/env bash
# Throughput of one sm_share.py workload under several variants of the library, interleaved in
# rounds so that the machine's drift (the small-kernel loop is CPU-bound and varies by ±15 %
# from run to run) falls on every variant alike. Each variant is one line of the file given:
#   NAME LIMIT LIB [VAR=VALUE ...]     (LIB "-" = no preload; LIMIT "-" = no SM limit)
# Usage: bash bench/gpu/variants.sh VARIANTS_FILE WORKLOAD   (ROUNDS default 2, SECS default 3)
# Prints each variant's iters/s per round, the median, and the ratio to the first variant.
set -u -o pipefail
SPEC=$(realpath -e "${1:?usage: $0 VARIANTS_FILE WORKLOAD}") || exit 2
WL=${2:?workload}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
ROUNDS=${ROUNDS:-2}
SECS=${SECS:-3}
W=$(mktemp -d /tmp/vgpu-variants.XXXXXX) || exit 2
trap 'rm -rf "$W"' EXIT
unset LD_PRELOAD
for v in $(compgen -e | grep -E '^(CUDA_DEVICE_|LIBVGPU_)'); do unset "$v"; done
mapfile -t LINES < <(grep -v '^\s*\(#\|$\)' "$SPEC")
for ((r = 1; r <= ROUNDS; r++)); do
  for line in "${LINES[@]}"; do
    read -r name limit lib extra <<<"$line"
    envv=(env)
    if [ "$lib" != - ]; then
      envv+=(LD_PRELOAD="$(realpath -e "$lib")" CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/$name-$r.cache")
      [ "$limit" != - ] && envv+=(CUDA_DEVICE_SM_LIMIT="$limit")
      # shellcheck disable=SC2206
      [ -n "$extra" ] && envv+=($extra)
    fi
    got=$(timeout -k 5 60 "${envv[@]}" "$PY" "$HERE/sm_share.py" "$WL" "$SECS" 2>>"$W/err" |
      grep -o 'iters_per_s=[0-9.]*' | cut -d= -f2)
    echo "$name $r ${got:-fail}" | tee -a "$W/samples"
  done
done
echo "| variant | limit | iters/s per round | median | vs first |"
echo "|---|---|---|---:|---:|"
first=""
for line in "${LINES[@]}"; do
  read -r name limit _ <<<"$line"
  vals=$(awk -v n="$name" '$1 == n { print $3 }' "$W/samples" | tr '\n' ' ')
  med=$(awk -v n="$name" '$1 == n && $3 != "fail" { print $3 }' "$W/samples" | sort -g |
    awk '{ a[NR] = $1 } END { if (NR) printf "%.1f", (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }')
  [ -z "$first" ] && first=$med
  ratio=$(awk -v m="$med" -v f="$first" 'BEGIN { if (m != "" && f > 0) printf "%.3f", m / f }')
  echo "| $name | $limit | $vals | $med | $ratio |"
done
tail -3 "$W/err" | grep -i "error\|libvgpu" | head -3
