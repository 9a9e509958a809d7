#!/usr/bin/env bash
# No-regression check after a restructuring of the library, in one device call: the interposer
# suite (run_acceptance.sh), the container-wide region suite (region_acceptance.sh), the
# in-process hook cost of a baseline build against the new one (inproc_ab.c, alternating), and a
# short single-tenant compute share (share_acceptance.py single).
# Run from the repo root:
#   COMMIT=... BASE_COMMIT=... bash bench/gpu/house_check.sh NEW/libvgpu.so NEW/vgpu BASE/libvgpu.so
set -u -o pipefail
NEW=$(realpath -e "$1") || exit 2
VGPU=$(realpath -e "$2") || exit 2
BASE=$(realpath -e "$3") || exit 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUTDIR=${OUT:-$(mktemp -d /tmp/vgpu-house.XXXXXX)}
unset LD_PRELOAD
echo "# libvgpu no-regression check"
echo "date: $(date -u '+%Y-%m-%d %H:%M:%SZ')  commit: ${COMMIT:-unknown}  baseline: ${BASE_COMMIT:-unknown}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

echo "## 1. interposer suite (run_acceptance.sh)"
mkdir -p "$OUTDIR/interposer"
OUT="$OUTDIR/interposer" SUITE_BUDGET_S=300 timeout -k 5 330 bash "$HERE/run_acceptance.sh" "$NEW" >"$OUTDIR/interposer.txt" 2>&1
echo "exit $?"
grep -E '^\| ' "$OUTDIR/interposer.txt" | tail -40
echo "PASS: $(grep -c '| PASS' "$OUTDIR/interposer.txt")  FAIL: $(grep -c '| FAIL' "$OUTDIR/interposer.txt")  SKIPPED: $(grep -c 'SKIPPED' "$OUTDIR/interposer.txt")"

echo "## 2. region suite (region_acceptance.sh)"
timeout -k 5 200 bash "$HERE/region_acceptance.sh" "$NEW" "$VGPU" >"$OUTDIR/region.txt" 2>&1
echo "exit $?"
grep -E 'PASS|FAIL' "$OUTDIR/region.txt" | tail -12

echo "## 3. hook cost in one process, baseline vs new (inproc_ab.c, -r 15 -n 4000)"
cudadir=$(dirname "$(ldconfig -p | awk '/libcuda.so.1 /{print $NF; exit}')")
gcc -O2 -Wall -Icuda-headers -o /tmp/inproc_ab "$HERE/inproc_ab.c" -L"$cudadir" -l:libcuda.so.1 -ldl || echo "build failed"
for round in 1 2; do
  for which in base new; do
    lib=$BASE; [ $which = new ] && lib=$NEW
    for cap in none 8g; do
      capenv=(); [ $cap = 8g ] && capenv=(CUDA_DEVICE_MEMORY_LIMIT=8g)
      rm -f /tmp/ab.cache
      echo "-- $which cap=$cap round=$round"
      env CUDA_DEVICE_MEMORY_SHARED_CACHE=/tmp/ab.cache LIBVGPU_NODE_FILE=off "${capenv[@]}" \
        timeout -k 5 60 /tmp/inproc_ab "$lib" -r 15 -n 4000 launch,async_free,alloc_free,stream_sync 2>&1 | grep '^ab '
    done
  done
done

echo "## 4. single tenant compute share (share_acceptance.py single, matmul, SECS=6)"
WORKLOADS=matmul SECS=6 timeout -k 5 120 python3 "$HERE/share_acceptance.py" "$NEW" single 2>&1 | tail -12
