#!/usr/bin/env bash
# Issue 7's narrowed worker, on ONE GPU (when no two-GPU machine is lent): a container region
# whose first process named two GPUs, [another GPU, this GPU], with caps _0=20g and _1=30g, and
# a worker that sees only this GPU (CUDA_VISIBLE_DEVICES=0, the container's same env caps). Its
# ordinal 0 is the container's device 1: torch must see 30720 MiB in totalGlobalMem (asked before
# any context) and mem_get_info, fill to just under 30 GiB, and be told on stderr that its own
# _0=20g does not apply. The "other GPU" is written into the region by hand (offsets of HAMi's
# v1.2 layout: device_num at 56, 96-byte UUIDs from 64).
#   bash bench/gpu/narrowed_one_gpu.sh path/to/libvgpu.so
set -u -o pipefail
LIB=$(realpath -e "${1:?usage: $0 path/to/libvgpu.so}") || exit 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
W=$(mktemp -d /tmp/vgpu-narrow.XXXXXX) || exit 2
trap 'rm -rf "$W"' EXIT
unset LD_PRELOAD CUDA_VISIBLE_DEVICES
for v in $(compgen -e | grep -E '^(CUDA_DEVICE_|LIBVGPU_)'); do unset "$v"; done
PY=${PYTHON:-python3}
REGION=$W/region.cache
CAPS=(CUDA_DEVICE_MEMORY_LIMIT_0=20g CUDA_DEVICE_MEMORY_LIMIT_1=30g)
uuid=$(nvidia-smi -i 0 --query-gpu=uuid --format=csv,noheader | tr -d ' ')
used0=$(nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits | tr -d ' ')
# The container's first process: NVML only (creates the region with the caps, names no GPU).
env LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$REGION" "${CAPS[@]}" \
  timeout -k 5 30 nvidia-smi --query-gpu=memory.total --format=csv,noheader >/dev/null
"$PY" - "$REGION" "$uuid" <<'PYEOF'
import struct, sys
path, mine = sys.argv[1], sys.argv[2].encode()
with open(path, "r+b") as f:
    for i, u in enumerate([b"GPU-00000000-1111-2222-3333-444444444444", mine]):
        f.seek(64 + 96 * i); f.write(u.ljust(96, b"\0"))
    f.seek(56); f.write(struct.pack("<Q", 2))
PYEOF
env LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$REGION" CUDA_VISIBLE_DEVICES=0 "${CAPS[@]}" \
  timeout -k 5 200 "$PY" "$HERE/multi_gpu_fill.py" 0 "$W/release" 60 >"$W/worker.log" 2>&1 &
pid=$!
for ((i = 0; i < 1500; i++)); do grep -q '^HOLDING' "$W/worker.log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
grown=$(( $(nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits | tr -d ' ') - used0 ))
touch "$W/release"; wait $pid; echo "worker rc=$?"
cat "$W/worker.log"
kv() { awk -v k="$1" '$1 == k { print $2; exit }' "$W/worker.log"; }
pf() { if "$@"; then echo PASS; else echo FAIL; fi; }
echo "| check | expected | observed | result |"
echo "|---|---|---|---|"
echo "| totalGlobalMem (before any context) | 30720 | $(kv props_total_MiB_0) | $(pf [ "$(kv props_total_MiB_0)" = 30720 ]) |"
echo "| mem_get_info total | 30720 | $(kv total_MiB_0) | $(pf [ "$(kv total_MiB_0)" = 30720 ]) |"
a=$(kv allocated_MiB_0)
echo "| allocated until OOM | 29184 < x <= 30720 | $a, OOM $(kv oom_0) | $(pf [ "${a:-0}" -gt 29184 -a "${a:-0}" -le 30720 ]) |"
echo "| NVML used grew (this GPU) | 29184 < x <= 30720 | $grown | $(pf [ "$grown" -gt 29184 -a "$grown" -le 30720 ]) |"
w=$(grep -c "the region's cap applies" "$W/worker.log")
echo "| told its _0=20g does not apply | 1 line | $w | $(pf [ "$w" = 1 ]) |"
