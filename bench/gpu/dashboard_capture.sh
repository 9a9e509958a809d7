#!/usr/bin/env bash
# The node dashboard on the GPU: `vgpu exporter --scan` watches two containers while they run —
# "training": two PyTorch processes sharing an 8 GiB cap; "inference": one PyTorch process under
# a 4 GiB cap and a 30 % SM limit — and at the end its /api/status, /api/history and page are
# saved under $OUT/dashboard (bench/dashboard/render.mjs turns them into the screenshot).
# Usage: bash bench/gpu/dashboard_capture.sh path/to/libvgpu.so path/to/vgpu [SECS]
set -u -o pipefail
LIB=$(realpath -e "$1") || exit 2
VGPU=$(realpath -e "$2") || exit 2
SECS=${3:-30}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
D=${OUT:-/tmp}/dashboard
mkdir -p "$D"
W=$(mktemp -d /tmp/vgpu-dash.XXXXXX)
mkdir -p "$W/containers"
unset LD_PRELOAD
for v in $(compgen -e | grep -E '^(CUDA_DEVICE_|LIBVGPU_)'); do unset "$v"; done
timeout -k 5 $((SECS + 30)) "$VGPU" exporter --scan "$W/containers" --listen 127.0.0.1:9477 --sample-interval 1 \
  >"$D/exporter.log" 2>&1 &
EXP=$!
pids=()
job() {  # job NAME MEMORY SM GIB
  LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/containers/$1.cache" CUDA_DEVICE_MEMORY_LIMIT="$2" \
    CUDA_DEVICE_SM_LIMIT="$3" LIBVGPU_NODE_FILE="$W/node" \
    timeout -k 5 $((SECS + 20)) "$PY" "$HERE/dash_load.py" "$4" "$SECS" >>"$D/jobs.log" 2>&1 &
  pids+=($!)
}
# Staggered, as jobs start in practice (and so a first context measurement is not skewed by
# another process allocating at the same moment).
job training 8g 0 3
sleep 6
job training 8g 0 2
sleep 6
job inference 4g 30 1
sleep $((SECS - 14))
get() { "$PY" -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"; }
get http://127.0.0.1:9477/api/status >"$D/status.json"
get http://127.0.0.1:9477/api/history >"$D/history.json"
get http://127.0.0.1:9477/ >"$D/index.html"
for p in "${pids[@]}"; do wait "$p"; done
kill "$EXP" 2>/dev/null; wait "$EXP" 2>/dev/null
date -u '+%F %TZ' >"$D/captured_at"
cat "$D/jobs.log"
"$PY" -c 'import json,sys; s=json.load(open(sys.argv[1])); [print(r["path"].rsplit("/",1)[-1], [(d["used"]>>20, d["memory_limit"], d["sm_limit"], d.get("gpu_time_ns")) for d in r["devices"][:1]]) for r in s["regions"]]' "$D/status.json"
rm -rf "$W"
