#!/usr/bin/env bash
# Container-wide cap on the GPU: two PyTorch processes share an 8g cap through one region file.
# Run from the repo root: bash bench/gpu/region_acceptance.sh path/to/libvgpu.so path/to/vgpu
set -u -o pipefail
LIB=$(realpath -e "$1") || exit 2
VGPU=$(realpath -e "$2") || exit 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CTL=$(mktemp -d /tmp/vgpu-share.XXXXXX)
REGION=$CTL/container.cache
PY=${PYTHON:-python3}
unset LD_PRELOAD PYTORCH_CUDA_ALLOC_CONF
for v in $(compgen -e | grep -E '^(CUDA_DEVICE_|LIBVGPU_)'); do unset "$v"; done
in_container() { env LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$REGION" CUDA_DEVICE_MEMORY_LIMIT=8g "$@"; }
wait_state() {  # wait_state NAME PATTERN
  for _ in $(seq 600); do grep -q "$2" "$CTL/$1.state" 2>/dev/null && return 0; sleep 0.1; done
  echo "TIMEOUT waiting for $1 to report $2"; return 1
}
smi_line() { in_container timeout -k 5 30 nvidia-smi | grep -m1 'MiB /'; }
footprints() {  # the driver's view of every process, without the preload
  timeout -k 5 30 nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader
}

echo "# libvgpu: two PyTorch processes under one 8g container cap"
echo "date: $(date -u '+%Y-%m-%d %H:%M:%SZ')  commit: ${COMMIT:-unknown}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

in_container timeout -k 5 150 "$PY" "$HERE/torch_share.py" A 6 "$CTL" >"$CTL/A.log" 2>&1 &
A=$!
wait_state A "allocated\|oom"
in_container timeout -k 5 150 "$PY" "$HERE/torch_share.py" B 6 "$CTL" >"$CTL/B.log" 2>&1 &
B=$!
wait_state B "allocated\|oom"
echo "A: $(cat "$CTL/A.state")"
echo "B: $(cat "$CTL/B.state")"
echo "## nvidia-smi in a third process of the container"
SMI1=$(smi_line); echo "$SMI1"
echo "## vgpu status"
timeout -k 5 30 "$VGPU" status --cache "$REGION"
PIDA=$(grep -o 'pid=[0-9]*' "$CTL/A.state" | cut -d= -f2); PIDB=$(grep -o 'pid=[0-9]*' "$CTL/B.state" | cut -d= -f2)
both=$(timeout -k 5 30 "$VGPU" status --cache "$REGION" --json | "$PY" -c "
import json, sys
d = json.load(sys.stdin)
alive = {p['pid'] for p in d['processes'] if p['state'] == 'alive'}
print(int({$PIDA, $PIDB} <= alive))")
echo "## the driver's per-process footprint (no preload)"
footprints
total=$(footprints | awk -F', ' '{gsub(/ MiB/, "", $2); s += $2} END {print s + 0}')
echo "sum of footprints: $total MiB (cap 8192 MiB)"

echo "## kill -9 A (python pid $PIDA), then B retries its 6 GiB"
kill -9 "$PIDA"; wait "$A" 2>/dev/null
echo retry >"$CTL/B.cmd"
wait_state B "retry"
echo "B: $(cat "$CTL/B.state")"
smi_line
timeout -k 5 30 "$VGPU" status --cache "$REGION"
echo exit >"$CTL/B.cmd"; wait "$B"
echo "## logs"; cat "$CTL/A.log" "$CTL/B.log"

pass=1
a_ok=$(grep -c "A: allocated 6 GiB" "$CTL/A.log"); b_oom=$(grep -c "B: oom-clean" "$CTL/B.log")
b_retry=$(grep -c "B: retry allocated 6 GiB" "$CTL/B.log")
echo
echo "| check | expected | observed | result |"
echo "|---|---|---|---|"
r() {  # r CHECK EXPECTED OBSERVED OK(1/empty)
  if [ "$4" = 1 ]; then echo "| $1 | $2 | $3 | PASS |"; else echo "| $1 | $2 | $3 | FAIL |"; pass=0; fi
}
r "first process" "gets 6 GiB" "$(cat "$CTL/A.log" | grep -m1 'A: allocated\|A: oom')" "$([ "$a_ok" -ge 1 ] && echo 1)"
r "second process" "clean OOM (8g cap shared)" "$(grep -m1 'B: oom' "$CTL/B.log" | cut -c1-60)" "$([ "$b_oom" -ge 1 ] && echo 1)"
r "sum of true footprints" "<= 8192 MiB" "$total MiB" "$([ "$total" -le 8192 ] && echo 1)"
used1=$(echo "$SMI1" | grep -o '[0-9]*MiB /' | grep -o '[0-9]*')
r "nvidia-smi (third process)" "combined usage / 8192MiB" "$(echo "$SMI1" | grep -o '[0-9]*MiB / *[0-9]*MiB')" \
  "$(echo "$SMI1" | grep -q '/ *8192MiB' && [ "${used1:-0}" -ge 6144 ] && echo 1)"
r "vgpu status" "shows both processes alive" "pids $PIDA $PIDB alive: $both" "$([ "$both" = 1 ] && echo 1)"
r "after kill -9 of the first" "second gets 6 GiB" "$(grep -m1 'B: retry' "$CTL/B.log")" "$([ "$b_retry" -ge 1 ] && echo 1)"
rm -rf "$CTL"
[ "$pass" = 1 ]
