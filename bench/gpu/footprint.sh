#!/usr/bin/env bash
# The cap bounds the true footprint (issue 19): a vLLM-style worker under a 20g cap.
#
#   bash bench/gpu/footprint.sh target/release/libvgpu.so     # repo root, one GPU
#
# Needs python3 with torch (CUDA build) and nvidia-smi; transformers is used when importable
# (else a plain-torch model of the same shape; the log says which). Nothing is downloaded.
# Runs bench/gpu/footprint.py (NVML first, a 1.1B-parameter model, a profile pass, a KV cache
# of UTIL x mem_get_info's total, CUDA graphs for 7 batch sizes, replay) at UTIL 0.90 and 0.95
# with reconciliation on (the default), and once at 0.90 with LIBVGPU_RECONCILE_MS=off to
# measure what the ledger alone misses per stage. Checks, for every stage of the two runs:
#   - the outside footprint (nvidia-smi --query-compute-apps, no preload) <= the cap;
#   - our free (torch.cuda.mem_get_info under the preload) within 16 MiB of cap - outside;
#   - no allocation refused (the worker sizes everything to fit, so any refusal is needless).
# Output: stdout and $OUT/footprint.txt (without $OUT, a fresh /tmp/vgpu-footprint.* dir).
# Exit 0 iff every check passes. Knobs: OUT, PYTHON, CAP (default 20g), PYTORCH_CUDA_ALLOC_CONF.
set -u -o pipefail

LIB=$(realpath -e "${1:?usage: $0 path/to/libvgpu.so}") || exit 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOGS=${OUT:-$(mktemp -d /tmp/vgpu-footprint.XXXXXX)}
mkdir -p "$LOGS" || exit 2
PY=${PYTHON:-python3}
CAP=${CAP:-20g}
unset LD_PRELOAD CUDA_VISIBLE_DEVICES CUDA_DEVICE_MEMORY_LIMIT CUDA_DEVICE_SM_LIMIT LIBVGPU_RECONCILE_MS
for v in $(env | sed -n 's/^\(CUDA_DEVICE_MEMORY_LIMIT_[0-9]*\)=.*/\1/p'); do unset "$v"; done

cap_bytes=$("$PY" -c "import sys; s=sys.argv[1].lower(); u={'k':1<<10,'m':1<<20,'g':1<<30}; print(int(float(s[:-1])*u[s[-1]]) if s[-1] in u else int(s))" "$CAP")
VGPU=$(dirname "$LIB")/vgpu
fails=0

run() { # name util extra-env...
    local name=$1 util=$2
    shift 2
    local region
    region=$(mktemp -u /tmp/vgpu-footprint-region.XXXXXX)
    env "$@" UTIL="$util" LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_LIMIT="$CAP" \
        CUDA_DEVICE_MEMORY_SHARED_CACHE="$region" LIBVGPU_NODE_FILE=off \
        "$PY" "$HERE/footprint.py" >"$LOGS/$name.log" 2>"$LOGS/$name.err"
    echo "$?" >"$LOGS/$name.rc"
    [ -x "$VGPU" ] && "$VGPU" status --json --cache "$region" >"$LOGS/$name.status.json" 2>/dev/null
    rm -f "$region"
}

run reconciled-90 0.90
run reconciled-95 0.95
run ledger-only-90 0.90 LIBVGPU_RECONCILE_MS=off

{
echo "# footprint under CUDA_DEVICE_MEMORY_LIMIT=$CAP ($(date -u +%F), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1), commit $(git -C "$HERE" rev-parse --short HEAD 2>/dev/null))"
grep -h '^MODEL' "$LOGS/reconciled-90.log" | head -1
echo
printf '%-15s %-9s %12s %12s %14s %10s  %s\n' RUN STAGE OUTSIDE_MiB OURS_FREE_MiB CAP-OUTSIDE_MiB DIFF_MiB RESULT
for name in reconciled-90 reconciled-95 ledger-only-90; do
    rc=$(cat "$LOGS/$name.rc")
    while read -r _ stage kv; do
        eval "$(echo "$kv" | tr ' ' '\n' | grep -E '^(ours_free|outside)=')"
        want=$((cap_bytes - outside))
        diff=$(( (ours_free - want) / 1048576 ))
        result=info
        if [ "${name#reconciled}" != "$name" ]; then
            result=PASS
            [ "$outside" -le "$cap_bytes" ] || result="FAIL(outside>cap)"
            [ "${diff#-}" -le 16 ] || result="FAIL(free off by ${diff} MiB)"
            [ "$result" = PASS ] || fails=$((fails + 1))
        fi
        printf '%-15s %-9s %12d %12d %14d %10d  %s\n' "$name" "$stage" $((outside / 1048576)) \
            $((ours_free / 1048576)) $((want / 1048576)) "$diff" "$result"
    done < <(grep '^STAGE' "$LOGS/$name.log")
    if grep -q '^REFUSED' "$LOGS/$name.log" || [ "$rc" != 0 ]; then
        echo "$name: exit $rc $(grep -h '^REFUSED' "$LOGS/$name.log") (see $LOGS/$name.err)"
        [ "${name#reconciled}" != "$name" ] && fails=$((fails + 1))
    else
        echo "$name: no refusal: PASS"
    fi
    [ -s "$LOGS/$name.status.json" ] && echo "$name: vgpu status after exit: $(tr -d ' \n' <"$LOGS/$name.status.json" | grep -o '"cap_denials":[0-9]*' | head -1)"
done
echo
echo "ledger-only rows: DIFF = what the ledger alone misses at each stage (driver overhead)."
if [ "$fails" = 0 ]; then echo "ALL PASS"; else echo "$fails FAIL"; fi
} | tee "$LOGS/footprint.txt"
grep -q '^ALL PASS' "$LOGS/footprint.txt"
