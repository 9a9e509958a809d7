#!/usr/bin/env bash
# Host-memory oversubscription on the GPU (issue 17): PyTorch under CUDA_DEVICE_MEMORY_LIMIT=4g
# CUDA_OVERSUBSCRIBE=true. Prints a pass/fail table; exit 0 iff nothing FAILs.
#   1 sums      8 GiB of int32 tensors with known contents, reduced on the GPU: right sums, the
#               process's device memory from outside (nvidia-smi, no preload) <= 4096 MiB, the
#               view's total still 4096 MiB, the spill counter in the region (vgpu status)
#   2 backends  the same with PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync (pool path), and
#               with expandable_segments:True (cuMemCreate: cannot spill; expected clean OOM)
#   3 matmul    bf16 8192^2 matmul throughput, resident vs spilled operands
#   4 generate  a transformers Llama-shaped model larger than the cap (random weights from a
#               config, fixed seed: no weights or internet on the box), greedy generate():
#               the same tokens as uncapped, and the slowdown
#   5 control   without CUDA_OVERSUBSCRIBE: the 8 GiB stop at the cap with a clean OOM
# Usage: bash bench/gpu/oversubscribe.sh path/to/libvgpu.so [path/to/vgpu]
# Writes $OUT/oversubscribe.txt and $OUT/oversubscribe-<date>.md (OUT defaults to /tmp).
# About 2-3 minutes; every part runs under timeout, the whole within SUITE_BUDGET_S (220 s).
set -u -o pipefail
LIB=$(realpath -e "$1") || exit 2
VGPU=${2:+$(realpath -e "$2")}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
O=${OUT:-/tmp}
mkdir -p "$O"
LOG="$O/oversubscribe.txt"
: >"$LOG"
W=$(mktemp -d /tmp/vgpu-ovs.XXXXXX)
unset LD_PRELOAD
for v in $(compgen -e | grep -E '^(CUDA_DEVICE_|CUDA_OVERSUBSCRIBE|LIBVGPU_|PYTORCH_CUDA_ALLOC_CONF)'); do unset "$v"; done
START=$(date +%s)
n=0
# run NAME TIMEOUT [ENV=VALUE...] -- ARGS...: under the preload, 4g, oversubscription, a fresh region
run() {
  local name=$1 limit=$2
  shift 2
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  n=$((n + 1))
  # The suite's budget (SUITE_BUDGET_S, default 220 s): a part that would run past it is cut
  # short, one with under 15 s left is skipped (its checks then FAIL as "no result").
  local left=$(( ${SUITE_BUDGET_S:-220} - ($(date +%s) - START) ))
  if [ "$left" -lt 15 ]; then echo "### $name SKIPPED (suite budget)" >>"$LOG"; : >"$W/$name.out"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "### $name" >>"$LOG"
  env LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_LIMIT=4g CUDA_OVERSUBSCRIBE=true \
    CUDA_DEVICE_MEMORY_SHARED_CACHE="$W/region.$n" LIBVGPU_NODE_FILE="$W/node" OVS_VGPU="$VGPU" \
    "${envs[@]}" timeout -k 5 "$limit" "$PY" "$HERE/oversubscribe.py" "$@" >"$W/$name.out" 2>&1
  echo "rc=$?" >>"$W/$name.out"
  cat "$W/$name.out" >>"$LOG"
}
res() { grep '^RESULT ' "$W/$1.out" | tail -1 | cut -d' ' -f2-; }

run sums 45 -- sums 8
run generate_capped 75 -- generate "$W/capped.json"
echo "### generate_uncapped (no preload)" >>"$LOG"
timeout -k 5 45 "$PY" "$HERE/oversubscribe.py" generate "$W/uncapped.json" >>"$LOG" 2>&1
run matmul 45 -- matmul 8192
run sums_async 40 PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync -- sums 8
run control 30 CUDA_OVERSUBSCRIBE=false -- sums 8
run sums_expandable 30 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True -- sums 8

"$PY" - "$W" "$LIB" "$O" "$START" <<'EOF' | tee -a "$LOG"
import json, os, subprocess, sys, time
w, lib, out, start = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def res(name):
    try:
        lines = [l for l in open(f"{w}/{name}.out") if l.startswith("RESULT ")]
        return json.loads(lines[-1][7:]) if lines else {}
    except OSError:
        return {}
rows = []
def row(part, ok, detail):
    rows.append((part, {True: "PASS", False: "FAIL", None: "INFO"}[ok], detail))
CAP = 4096
for name, label in [("sums", "default allocator"), ("sums_async", "backend:cudaMallocAsync")]:
    r = res(name)
    if not r:
        row(f"8 GiB sums, {label}", False, "no result (see log)")
        continue
    if "error" in r:
        row(f"8 GiB sums, {label}", False, f"{r['error']} after {r.get('held_gib')} GiB: {r.get('message')}")
        continue
    row(f"8 GiB sums, {label}", r["ok"] and r["managed"] > 0,
        f"{r['tensors']} tensors, wrong={r['wrong']}, {r['managed']} spilled (managed); fill {r['fill_s']} s, "
        f"reduce {r['reduce_s']} s ({r['reduce_gbps']} GB/s)")
    fp = r.get("footprint_mib")
    row(f"device memory from outside, {label}", fp is not None and fp <= CAP,
        f"nvidia-smi --query-compute-apps: {fp} MiB ({r.get('footprint_how')}) <= {CAP}")
    row(f"view while spilling, {label}", r["total_mib"] == CAP,
        f"mem_get_info total {r['total_mib']} MiB, free {r['free_mib']} MiB")
    sp = r.get("region_spilled_mib")
    row(f"spill counter (vgpu status), {label}", None if sp is None else (isinstance(sp, int) and sp > 0),
        f"{sp} MiB spilled" if sp is not None else "vgpu binary not given")
r = res("sums_expandable")
row("expandable_segments:True (cuMemCreate)", None,
    f"{r.get('error', 'no OOM')} after {r.get('held_gib')} GiB: cannot spill (hard cap)" if "error" in r
    else f"sums ok={r.get('ok')}, managed={r.get('managed')}")
r = res("control")
row("without CUDA_OVERSUBSCRIBE", "error" in r and r.get("held_gib", 99) < 4,
    f"{r.get('error', 'NO OOM')} after {r.get('held_gib')} GiB" if r else "no result")
r = res("matmul")
if r:
    row("matmul 8192^2 bf16 resident vs spilled", r.get("ok"),
        f"resident {r['resident_tflops']} TFLOPS, spilled {r['spilled_tflops']} TFLOPS "
        f"({r['ratio']}x slower), same result {r['same_result']}, spilled operands managed {r['spilled_managed']}")
else:
    row("matmul 8192^2 bf16 resident vs spilled", False, "no result (see log)")
try:
    c, u = json.load(open(f"{w}/capped.json")), json.load(open(f"{w}/uncapped.json"))
except (OSError, ValueError) as e:
    c, u = {"error": str(e)}, {}
if "error" in c or "error" in u:
    row("transformers generate() over the cap", False, c.get("error") or u.get("error"))
else:
    row("transformers generate() over the cap", c["ids"] == u["ids"] and c["model_mib"] > CAP,
        f"transformers {c['transformers']}, Llama-shaped {c['layers']} layers, random weights (seed 0), "
        f"{c['model_mib']} MiB fp16 ({c['managed_mib']} MiB spilled); {c['new_tokens']} greedy tokens "
        f"{'identical' if c['ids'] == u['ids'] else 'DIFFER'} to uncapped")
    row("generate() slowdown", None,
        f"{c['s_per_token']*1000:.1f} ms/token capped vs {u['s_per_token']*1000:.1f} uncapped "
        f"= {c['s_per_token']/u['s_per_token']:.1f}x; footprint {c['footprint_mib']} MiB from outside")
    row("generate() device memory from outside", c["footprint_mib"] is not None and c["footprint_mib"] <= CAP,
        f"{c['footprint_mib']} MiB ({c['footprint_how']}) <= {CAP}")
w1 = max(len(p) for p, _, _ in rows)
print(f"\n{'check':<{w1}}  result  detail")
for p, s, d in rows:
    print(f"{p:<{w1}}  {s:<6}  {d}")
fails = sum(s == "FAIL" for _, s, _ in rows)
print(f"\n{fails} FAIL, {len(rows)} checks, {int(time.time()) - start} s")
try:
    drv = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip()
except Exception:
    drv = "?"
date = time.strftime("%Y-%m-%d")
with open(f"{out}/oversubscribe-{date}.md", "w") as f:
    f.write(f"# Oversubscription (issue 17), {date}\n\nGPU/driver: {drv}; commit {os.environ.get('COMMIT', '?')}\n\n")
    f.write("| check | result | detail |\n|---|---|---|\n")
    for p, s, d in rows:
        f.write(f"| {p} | {s} | {d} |\n")
sys.exit(1 if fails else 0)
EOF
rc=$?
rm -rf "$W"
exit $rc
