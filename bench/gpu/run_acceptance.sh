#!/usr/bin/env bash
# GPU acceptance suite for libvgpu. Run from the repo root on the GPU machine:
#   bash bench/gpu/run_acceptance.sh target/release/libvgpu.so
# Everything goes to stdout and to $OUT/acceptance.txt (raw logs under $OUT/); without $OUT,
# to a fresh /tmp/vgpu-acceptance.* directory. Exit 0 iff no check FAILs.
# Knobs: OUT, COMMIT, SUITE_BUDGET_S (default 360), NVCC, PYTHON, MAX_RATIO_{LAUNCH,MALLOC,INFO}.
set -u -o pipefail

LIB=$(realpath -e "${1:?usage: $0 path/to/libvgpu.so}") || exit 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOGS=${OUT:-$(mktemp -d /tmp/vgpu-acceptance.XXXXXX)}
mkdir -p "$LOGS" || exit 2
WORK=$(mktemp -d /tmp/vgpu-acc-work.XXXXXX) || exit 2
trap 'rm -rf "$WORK"' EXIT
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
PY=${PYTHON:-python3}
DEADLINE=$((SECONDS + ${SUITE_BUDGET_S:-360}))
# Overhead limits for the timing ratios (median of 5 interleaved runs vs no preload).
MAX_RATIO_LAUNCH=${MAX_RATIO_LAUNCH:-1.10}
MAX_RATIO_MALLOC=${MAX_RATIO_MALLOC:-1.25}
MAX_RATIO_INFO=${MAX_RATIO_INFO:-1.50}

# Start from a clean slate: a stray limit or preload in the caller's shell would skew every run.
unset LD_PRELOAD PYTORCH_CUDA_ALLOC_CONF
for v in $(compgen -e | grep -E '^(CUDA_DEVICE_|LIBVGPU_)'); do unset "$v"; done

N_REGION=0
# runp MODE SECS NAME CMD... — run CMD under `timeout`, log to $LOGS/NAME.log, print it unless
# QUIET=1. MODE: none | uncapped | a CUDA_DEVICE_MEMORY_LIMIT value. Every preloaded run gets a
# fresh region file: limits live in the region, so a file left by an earlier run with another
# cap (or by a killed process) must not leak into the next test.
runp() {
  local mode=$1 secs=$2 name=$3; shift 3
  local -a envv=(env)
  if [ "$mode" != none ]; then
    N_REGION=$((N_REGION + 1))
    envv+=(LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$WORK/region-$N_REGION.cache")
    [ "$mode" != uncapped ] && envv+=(CUDA_DEVICE_MEMORY_LIMIT="$mode")
  fi
  local left=$((DEADLINE - SECONDS)) rc
  ((left < secs)) && secs=$left
  if ((secs < 5)); then  # the suite's time is spent: report the test as skipped, not hung
    echo "SKIPPED: suite budget (SUITE_BUDGET_S) spent" >"$LOGS/$name.log"; rc=125
  else
    timeout -k 5 "$secs" "${envv[@]}" "$@" </dev/null >"$LOGS/$name.log" 2>&1
    rc=$?
    ((rc == 124 || rc == 137)) && echo "TIMEOUT after ${secs}s" >>"$LOGS/$name.log"
  fi
  if [ "${QUIET:-0}" != 1 ]; then echo "--- $name (mode=$mode rc=$rc)"; cat "$LOGS/$name.log"; fi
  return $rc
}
# kv NAME KEY — the rest of the first line of $LOGS/NAME.log that starts with KEY.
kv() { awk -v k="$2" '$1 == k { $1 = ""; sub(/^ /, ""); print; exit }' "$LOGS/$1.log" 2>/dev/null; }
# num A OP B — integer comparison that is false (not an error) when A or B is empty.
num() { [[ $1 =~ ^-?[0-9]+$ && $3 =~ ^-?[0-9]+$ ]] && (($1 $2 $3)); }
between() { num "$1" '<' "$2" && num "$2" '<' "$3"; }  # between LO X HI, strict
# fle A B — float A <= B, false when A is empty.
fle() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && a + 0 <= b + 0) }'; }
pf() { if "$@"; then echo PASS; else echo FAIL; fi; }
ROWS=()
row() { ROWS+=("| $1 | $2 | $3 | $4 |"); }  # row CHECK EXPECTED OBSERVED PASS|FAIL|INFO

header() {
  echo "# libvgpu GPU acceptance"
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%SZ')"
  timeout -k 5 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  if [ -n "${COMMIT:-}" ]; then echo "commit: $COMMIT"
  elif git rev-parse HEAD >/dev/null 2>&1; then
    echo "commit: $(git rev-parse HEAD) (changed files: $(git status --porcelain | wc -l))"
  else echo "commit: unknown (no git here; pass COMMIT=...)"; fi
  echo "library: $LIB sha256 $(sha256sum "$LIB" | cut -c1-16)"
  echo "nvcc: $(timeout 30 "$NVCC" --version 2>&1 | tail -1)"
  echo "torch: $(timeout -k 5 60 "$PY" -c 'import torch; print(torch.__version__)' 2>&1 | tail -1)"
  # Another process on the GPU would distort the footprint checks (they fall back to the max).
  echo "compute apps before start: $(timeout -k 5 30 nvidia-smi \
    --query-compute-apps=pid,used_memory --format=csv,noheader | tr '\n' ';')"
}

main() {
  header | tee "$WORK/header.txt"

  echo; echo "## build"
  local cudalib pids=() p
  cudalib="$(dirname "$(dirname "$(readlink -f "$NVCC")")")/lib64"
  timeout -k 5 60 gcc -O2 -Wall -o "$WORK/procaddr_identity" "$HERE/procaddr_identity.c" -ldl \
    >"$LOGS/build_probe.log" 2>&1 & pids+=($!)
  timeout -k 5 240 "$NVCC" -O2 -arch=sm_90 -o "$WORK/alloc_static" "$HERE/alloc_cap.cu" \
    >"$LOGS/build_alloc_static.log" 2>&1 & pids+=($!)
  # rpath so the shared-cudart binary finds libcudart.so without LD_LIBRARY_PATH.
  timeout -k 5 240 "$NVCC" -O2 -arch=sm_90 --cudart shared -Xlinker -rpath -Xlinker "$cudalib" \
    -o "$WORK/alloc_shared" "$HERE/alloc_cap.cu" >"$LOGS/build_alloc_shared.log" 2>&1 & pids+=($!)
  timeout -k 5 240 "$NVCC" -O2 -arch=sm_90 -o "$WORK/bench_api" "$HERE/bench_api.cu" \
    >"$LOGS/build_bench.log" 2>&1 & pids+=($!)
  for p in "${pids[@]}"; do wait "$p"; done  # explicit PIDs: a bare wait would wait for tee
  for b in procaddr_identity alloc_static alloc_shared bench_api; do
    if [ -x "$WORK/$b" ]; then echo "built $b"; else echo "BUILD FAILED: $b"; cat "$LOGS"/build_*.log; fi
  done
  ldd "$WORK/alloc_shared" 2>/dev/null | grep cudart

  echo; echo "## 1. cuGetProcAddress pointer identity"
  local cuda_so nq
  cuda_so=$(timeout -k 5 30 "$WORK/procaddr_identity" --where 2>/dev/null)
  [ -f "$cuda_so" ] || cuda_so=$(ldconfig -p | awk '/libcuda\.so\.1 / { print $NF; exit }')
  echo "libcuda: $cuda_so -> $(readlink -f "$cuda_so")"
  # Exported cu* names plus their base names (suffixes _vN/_ptsz/_ptds stripped), as the
  # runtime asks for base names.
  nm -D --defined-only "$cuda_so" | awk '$3 ~ /^cu/ { sub(/@.*/, "", $3); print $3 }' \
    | sort -u >"$WORK/exports.txt"
  { cat "$WORK/exports.txt"; sed -E ':a; s/_(v[0-9]+|ptsz|ptds)$//; ta' "$WORK/exports.txt"; } \
    | sort -u >"$WORK/queries.txt"
  nq=$(wc -l <"$WORK/queries.txt")
  echo "exported cu* functions: $(wc -l <"$WORK/exports.txt"), names queried: $nq"
  runp none 60 procaddr_nopreload "$WORK/procaddr_identity" "$WORK/queries.txt" \
    --dump "$WORK/procaddr_ref.txt"
  local r1=$? ; gzip -c "$WORK/procaddr_ref.txt" >"$LOGS/procaddr_ref.txt.gz" 2>/dev/null
  row "procaddr identity, no preload" "all non-null answers are exported cu* symbols" \
    "$(kv procaddr_nopreload exported)/$(kv procaddr_nopreload nonnull) of $(kv procaddr_nopreload queries) queries" \
    "$(pf [ $r1 = 0 ])"
  runp uncapped 60 procaddr_preload "$WORK/procaddr_identity" "$WORK/queries.txt" \
    --ref "$WORK/procaddr_ref.txt" --hooklib "$LIB"
  local r2=$?
  row "procaddr, preload" "rc/status verbatim; hooks swapped by same name; none missed" \
    "swapped $(kv procaddr_preload swapped) ($(kv procaddr_preload swapped_distinct) names), rc_mismatch $(kv procaddr_preload rc_mismatch), name_mismatch $(kv procaddr_preload name_mismatch), missed $(kv procaddr_preload missed_swaps)" \
    "$(pf [ $r2 = 0 ])"

  echo; echo "## 2. cudaMalloc under CUDA_DEVICE_MEMORY_LIMIT=8g"
  local b n
  for b in static shared; do
    runp none 90 "alloc_${b}_none" "$WORK/alloc_$b"
    runp 8g 90 "alloc_${b}_8g" "$WORK/alloc_$b"
    runp uncapped 90 "alloc_${b}_uncapped" "$WORK/alloc_$b"
    n="alloc_${b}_8g"
    local tot tgm al er re fp
    tot=$(kv "$n" memgetinfo_total_MiB); tgm=$(kv "$n" totalGlobalMem_MiB)
    al=$(kv "$n" alloc_MiB); er=$(kv "$n" alloc_error); re=$(kv "$n" realloc)
    fp=$(kv "$n" footprint_MiB)
    row "$b cudart, 8g: cudaMemGetInfo total" "8192 MiB" "$tot" "$(pf num "$tot" == 8192)"
    row "$b cudart, 8g: totalGlobalMem" "8192 MiB" "$tgm" "$(pf num "$tgm" == 8192)"
    row "$b cudart, 8g: allocated in 256 MiB blocks" "0 < x < 8192 MiB (context counts)" "$al" \
      "$(pf between 0 "$al" 8192)"
    row "$b cudart, 8g: error at the cap" "cudaErrorMemoryAllocation" "$er" \
      "$(pf [ "$er" = cudaErrorMemoryAllocation ])"
    row "$b cudart, 8g: NVML footprint at peak" "<= 8192 MiB" "$fp ($(kv "$n" footprint_source))" \
      "$(pf num "$fp" '<=' 8192)"
    row "$b cudart, 8g: allocate after free" "ok" "$re" "$(pf [ "$re" = ok ])"
    local t0 t1 a0 a1
    t0=$(kv "alloc_${b}_none" totalGlobalMem_MiB); t1=$(kv "alloc_${b}_uncapped" totalGlobalMem_MiB)
    a0=$(kv "alloc_${b}_none" alloc_MiB); a1=$(kv "alloc_${b}_uncapped" alloc_MiB)
    row "$b cudart, preload uncapped: totalGlobalMem" "= no preload ($t0 MiB)" "$t1" \
      "$(pf num "$t1" == "${t0:-x}")"
    row "$b cudart, preload uncapped: allocatable" ">= no preload ($a0 MiB) - 512" "$a1" \
      "$(pf num "$a1" '>=' "$((${a0:-999999} - 512))")"
  done

  echo; echo "## 3. host cost, 5 interleaved rounds (µs; medians)"
  local i m
  for i in 1 2 3 4 5; do
    for m in none uncapped 8g; do QUIET=1 runp "$m" 60 "bench_${m}_$i" "$WORK/bench_api"; done
  done
  med() {  # med MODE KEY — median over the rounds that produced a value
    for i in 1 2 3 4 5; do kv "bench_$1_$i" "$2"; done | sort -g \
      | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
  }
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.3f", a / b }'; }
  local key lim base up cp ru rc
  printf '%-22s %10s %10s %10s %8s %8s\n' figure none uncapped capped8g r_unc r_cap
  for key in launch_us malloc_free_1MiB_us memgetinfo_us; do
    base=$(med none $key); up=$(med uncapped $key); cp=$(med 8g $key)
    ru=$(ratio "$up" "$base"); rc=$(ratio "$cp" "$base")
    printf '%-22s %10s %10s %10s %8s %8s\n' "$key" "$base" "$up" "$cp" "$ru" "$rc"
    case $key in launch_us) lim=$MAX_RATIO_LAUNCH ;; malloc*) lim=$MAX_RATIO_MALLOC ;; *) lim=$MAX_RATIO_INFO ;; esac
    row "$key ratio, preload uncapped" "<= $lim" "${ru:-no data} ($up vs $base µs)" "$(pf fle "$ru" "$lim")"
    row "$key ratio, preload capped 8g" "<= $lim" "${rc:-no data} ($cp vs $base µs)" "$(pf fle "$rc" "$lim")"
  done

  echo; echo "## 4. PyTorch under CUDA_DEVICE_MEMORY_LIMIT=4g"
  local conf v
  for conf in default expandable_segments:True backend:cudaMallocAsync; do
    n="torch_${conf%%:*}"
    local -a pyenv=(env)
    [ "$conf" != default ] && pyenv+=(PYTORCH_CUDA_ALLOC_CONF="$conf")
    runp 4g 150 "$n" "${pyenv[@]}" "$PY" "$HERE/torch_cap.py" 4096 "$conf"
    v=$(grep -m1 '^VERDICT' "$LOGS/$n.log")
    row "torch 4g, $conf" "total=props=4096, alloc<4096, clean OOM, footprint<=4096, recovery" \
      "${v:-no verdict (see $n.log)}" "$(pf grep -q '^VERDICT torch_cap PASS' "$LOGS/$n.log")"
  done
  runp none 150 torch_none "$PY" "$HERE/torch_cap.py" none none
  row "torch, no preload" "runs; real values" \
    "total $(kv torch_none mem_get_info_total_MiB) MiB, allocated $(kv torch_none allocated_MiB) MiB, recovery $(kv torch_none recovery)" INFO

  echo; echo "## 5. nvidia-smi under CUDA_DEVICE_MEMORY_LIMIT=2g"
  local line q
  runp none 30 smi_none nvidia-smi >/dev/null
  runp none 30 smi_query_none nvidia-smi --query-gpu=memory.total,memory.used --format=csv
  echo "no preload: $(grep -m1 'MiB /' "$LOGS/smi_none.log")"
  runp 2g 30 smi_2g nvidia-smi >/dev/null
  line=$(grep -m1 'MiB /' "$LOGS/smi_2g.log")
  echo "preload 2g: $line"
  row "nvidia-smi memory line, 2g" "/ 2048MiB" "$(echo "$line" | grep -o '[0-9]*MiB / *[0-9]*MiB')" \
    "$(pf grep -q '/ *2048MiB' <<<"$line")"
  runp 2g 30 smi_query_2g nvidia-smi --query-gpu=memory.total,memory.used --format=csv
  q=$(sed -n 2p "$LOGS/smi_query_2g.log")
  row "nvidia-smi --query-gpu memory.total, 2g" "2048 MiB" "$q" "$(pf grep -q '^2048 MiB' <<<"$q")"

  echo; echo "## summary"
  local fails=0 r
  {
    cat "$WORK/header.txt"; echo
    echo "| check | expected | observed | result |"
    echo "|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
  } >"$LOGS/results-$(date -u +%Y-%m-%d).md"
  printf '%s\n' "| check | expected | observed | result |" "|---|---|---|---|" "${ROWS[@]}"
  for r in "${ROWS[@]}"; do [[ $r == *"| FAIL |" ]] && fails=$((fails + 1)); done
  echo; echo "FAILED checks: $fails of ${#ROWS[@]}; elapsed ${SECONDS}s; logs in $LOGS"
  ((fails == 0))
}

main 2>&1 | tee "$LOGS/acceptance.txt"
exit "${PIPESTATUS[0]}"
