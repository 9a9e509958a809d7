#!/usr/bin/env bash
# Multi-GPU acceptance for libvgpu (issue 7).
#
# First run (session 5, nvidia-h200-x2) found one bug, here: every run shared one region file.
#
#   bash bench/gpu/multi_gpu.sh target/release/libvgpu.so      # repo root, >= 2 GPUs
#
# Needs python3 with torch (CUDA + NCCL build) and nvidia-smi; nothing is built or downloaded.
# Output: stdout and $OUT/multi_gpu.txt (without $OUT, a fresh /tmp/vgpu-multi.* directory), raw
# logs next to it, the header and results table in $OUT/multi-gpu-<date>.md. Exit 0 iff no
# check FAILs; 3 when fewer than two GPUs are present. Knobs: OUT, COMMIT, PYTHON.
#
# (a) One PyTorch process, CUDA_DEVICE_MEMORY_LIMIT_0=20g and _1=30g, fills device 0 then
#     device 1 until out of memory and holds it: torch's view of each device is its own cap,
#     each stops below it, and NVML (nvidia-smi from outside, no preload) shows each physical
#     GPU's usage grown by at most that GPU's cap.
# (b) CUDA_VISIBLE_DEVICES=1,0, and the same as GPU-<uuid1>,GPU-<uuid0>, with
#     CUDA_DEVICE_MEMORY_LIMIT_0=4g: ordinal 0's 4 GiB land on physical GPU 1 (nvidia-smi
#     index 1, read from outside while the process holds them), GPU 0 is untouched, and
#     nvidia-smi under the preload shows / 4096MiB on GPU 1 only.
# (c) torch.distributed NCCL all-reduce of 1 GiB float32 tensors, 2 ranks (mp.spawn), one GPU
#     each, CUDA_DEVICE_MEMORY_LIMIT=8g: the sum is right, and each rank is charged about what
#     NVML says it uses (the peer's buffers it imports are not its own). Twice: NCCL's default
#     (cuMem* buffers shared as POSIX file descriptors) and NCCL_CUMEM_ENABLE=0 (CUDA IPC).
# (d) nvidia-smi under the preload with _0=20g and _1=30g shows / 20480MiB and / 30720MiB.
# (e) One container of both GPUs (_0=20g, _1=30g; its first process names them), and a worker a
#     launcher narrowed to the container's GPU 1 (CUDA_VISIBLE_DEVICES=1, the same env caps):
#     its ordinal 0 gets GPU 1's 30 GiB and fills physical GPU 1, and it is told on stderr that
#     its own _0=20g does not apply.
set -u -o pipefail

LIB=$(realpath -e "${1:?usage: $0 path/to/libvgpu.so}") || exit 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOGS=${OUT:-$(mktemp -d /tmp/vgpu-multi.XXXXXX)}
mkdir -p "$LOGS" || exit 2
WORK=$(mktemp -d /tmp/vgpu-multi-work.XXXXXX) || exit 2
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-python3}

# A stray limit, preload or device list in the caller's shell would skew every run.
unset LD_PRELOAD PYTORCH_CUDA_ALLOC_CONF CUDA_VISIBLE_DEVICES
for v in $(compgen -e | grep -E '^(CUDA_DEVICE_|LIBVGPU_|NCCL_)'); do unset "$v"; done

# A fresh region file's path (each run its own container unless REGION names a shared one).
# mktemp, not a counter: `$(region)` runs in a subshell, where a counter never moves (the first
# run made every run share one region, so (a)'s caps held in (b) and (c)).
region() { mktemp -u "$WORK/region.XXXXXX"; }

# runp MODE SECS NAME CMD...: CMD under `timeout`, logged to $LOGS/NAME.log and printed. MODE:
# none (no preload) or preload (LD_PRELOAD and a fresh region file; limits go in CMD as `env`).
runp() {
  local mode=$1 secs=$2 name=$3 rc; shift 3
  local -a envv=(env)
  [ "$mode" = preload ] && envv+=(LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="${REGION:-$(region)}")
  timeout -k 5 "$secs" "${envv[@]}" "$@" </dev/null >"$LOGS/$name.log" 2>&1
  rc=$?
  ((rc == 124 || rc == 137)) && echo "TIMEOUT after ${secs}s" >>"$LOGS/$name.log"
  echo "--- $name (mode=$mode rc=$rc)"; cat "$LOGS/$name.log"
  return $rc
}

# smi NAME: every GPU's "index, uuid, memory.used, memory.total" (MiB) into $LOGS/NAME.smi,
# read by the driver's own nvidia-smi (this shell has no LD_PRELOAD).
smi() {
  timeout -k 5 30 nvidia-smi --query-gpu=index,uuid,memory.used,memory.total \
    --format=csv,noheader,nounits >"$LOGS/$1.smi" 2>&1
}
# col NAME INDEX COLUMN: a column (2 uuid, 3 used, 4 total) of GPU INDEX in $LOGS/NAME.smi.
col() { awk -F', *' -v i="$2" -v c="$3" '$1 == i { print $c; exit }' "$LOGS/$1.smi" 2>/dev/null; }
# index_of NAME UUID: the nvidia-smi index of the GPU with that UUID.
index_of() { awk -F', *' -v u="$2" 'tolower($2) == tolower(u) { print $1; exit }' "$LOGS/$1.smi" 2>/dev/null; }

# held NAME SECS CMD...: CMD (a multi_gpu_fill.py command line, to which the release file and
# a hold time are appended) under the preload in the background; once its log says HOLDING,
# nvidia-smi is read from outside into $LOGS/NAME.smi, then the process is let go.
held() {
  local name=$1 secs=$2 pid i rc; shift 2
  local release="$WORK/$name.release" log="$LOGS/$name.log"
  timeout -k 5 "$secs" env LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="${REGION:-$(region)}" \
    "$@" "$release" 60 </dev/null >"$log" 2>&1 &
  pid=$!
  for ((i = 0; i < secs * 10; i++)); do
    grep -q '^HOLDING' "$log" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if grep -q '^HOLDING' "$log"; then smi "$name"; else echo "never reached HOLDING" >>"$log"; fi
  touch "$release"
  wait "$pid"; rc=$?
  ((rc == 124 || rc == 137)) && echo "TIMEOUT after ${secs}s" >>"$log"
  echo "--- $name (rc=$rc)"; cat "$log"
  echo "nvidia-smi while held (index, uuid, used MiB, total MiB):"; cat "$LOGS/$name.smi" 2>/dev/null
  return $rc
}

# kv NAME KEY: the rest of the first line of $LOGS/NAME.log whose first word is KEY.
kv() { awk -v k="$2" '$1 == k { $1 = ""; sub(/^ /, ""); print; exit }' "$LOGS/$1.log" 2>/dev/null; }
num() { [[ $1 =~ ^-?[0-9]+$ && $3 =~ ^-?[0-9]+$ ]] && (($1 $2 $3)); }
between() { num "$1" '<' "$2" && num "$2" '<=' "$3"; }  # between LO X HI: LO < X <= HI
minus() { if [[ $1 =~ ^-?[0-9]+$ && $2 =~ ^-?[0-9]+$ ]]; then echo $(($1 - $2)); fi; }
pf() { if "$@"; then echo PASS; else echo FAIL; fi; }
rank_view_ok() { num "$1" == 8192 && num "$2" '<=' 8192; }  # rank_view_ok TOTAL CHARGED
ROWS=()
row() { ROWS+=("| $1 | $2 | $3 | $4 |"); }  # row CHECK EXPECTED OBSERVED PASS|FAIL|INFO

header() {
  echo "# libvgpu multi-GPU acceptance"
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%SZ')"
  echo "host: $(hostname)"
  timeout -k 5 30 nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total --format=csv
  if [ -n "${COMMIT:-}" ]; then echo "commit: $COMMIT"
  elif git rev-parse HEAD >/dev/null 2>&1; then
    echo "commit: $(git rev-parse HEAD) (changed files: $(git status --porcelain | wc -l))"
  else echo "commit: unknown (no git here; pass COMMIT=...)"; fi
  echo "library: $LIB sha256 $(sha256sum "$LIB" | cut -c1-16)"
  echo "torch: $(timeout -k 5 60 "$PY" -c 'import torch; print(torch.__version__, "nccl", torch.cuda.nccl.version())' 2>&1 | tail -1)"
  echo "compute apps before start: $(timeout -k 5 30 nvidia-smi \
    --query-compute-apps=pid,used_memory --format=csv,noheader | tr '\n' ';')"
}

# fill_checks NAME LABEL ORDINAL CAP_MIB: rows for one device filled by multi_gpu_fill.py;
# the GPU is found in nvidia-smi by the UUID torch reported, and its growth is measured
# against the idle snapshot `idle`.
fill_checks() {
  local n=$1 label=$2 d=$3 cap=$4 uuid idx total props got oom grown
  uuid=$(kv "$n" "uuid_$d"); idx=$(index_of "$n" "$uuid")
  total=$(kv "$n" "total_MiB_$d"); props=$(kv "$n" "props_total_MiB_$d")
  got=$(kv "$n" "allocated_MiB_$d"); oom=$(kv "$n" "oom_$d")
  grown=$(minus "$(col "$n" "$idx" 3)" "$(col idle "$idx" 3)")
  row "$label: ordinal $d mem_get_info total" "$cap MiB" "$total" "$(pf num "$total" == "$cap")"
  row "$label: ordinal $d totalGlobalMem" "$cap MiB" "$props" "$(pf num "$props" == "$cap")"
  row "$label: ordinal $d allocated until OOM" "$((cap - 1536)) < x <= $cap MiB (context counts)" \
    "$got MiB, OOM $oom" "$(pf between $((cap - 1536)) "$got" "$cap")"
  row "$label: ordinal $d OOM" "clean torch.cuda.OutOfMemoryError" "$oom" "$(pf [ "$oom" = clean ])"
  row "$label: ordinal $d = physical GPU $idx: NVML used grew" "$((cap - 1536)) < x <= $cap MiB" \
    "${grown:-unknown} MiB ($uuid)" "$(pf between $((cap - 1536)) "$grown" "$cap")"
  row "$label: ordinal $d allocates after freeing" "ok" "$(kv "$n" "recovery_$d")" \
    "$(pf [ "$(kv "$n" "recovery_$d")" = ok ])"
}

main() {
  header | tee "$WORK/header.txt"
  smi idle
  local ngpu
  ngpu=$(grep -Ec '^[0-9]+, ' "$LOGS/idle.smi")
  if ! num "$ngpu" '>=' 2; then
    echo "need two GPUs, nvidia-smi lists ${ngpu:-none}:"; cat "$LOGS/idle.smi"; return 3
  fi
  echo "idle (index, uuid, used MiB, total MiB):"; cat "$LOGS/idle.smi"
  local u0 u1 t0 t1
  u0=$(col idle 0 2); u1=$(col idle 1 2); t0=$(col idle 0 4); t1=$(col idle 1 4)

  echo; echo "## (a) one process, CUDA_DEVICE_MEMORY_LIMIT_0=20g, _1=30g: fill both until OOM"
  held a_fill 300 env CUDA_DEVICE_MEMORY_LIMIT_0=20g CUDA_DEVICE_MEMORY_LIMIT_1=30g \
    "$PY" "$HERE/multi_gpu_fill.py" 0,1
  fill_checks a_fill "(a) 20g/30g" 0 20480
  fill_checks a_fill "(a) 20g/30g" 1 30720

  echo; echo "## (b) CUDA_VISIBLE_DEVICES=1,0 and GPU-<uuid> forms, CUDA_DEVICE_MEMORY_LIMIT_0=4g"
  local form vis n other line k
  k=0
  for vis in "1,0" "$u1,$u0"; do
    k=$((k + 1)); n="b_fill_$k"; form=$([ $k = 1 ] && echo "1,0" || echo "GPU-<uuid1>,GPU-<uuid0>")
    # PCI_BUS_ID: CUDA's own order for integer entries is fastest-first, which on identical GPUs
    # is the PCI order nvidia-smi uses; pinning it makes "1" mean nvidia-smi's GPU 1 anyway.
    held "$n" 200 env CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES="$vis" \
      CUDA_DEVICE_MEMORY_LIMIT_0=4g "$PY" "$HERE/multi_gpu_fill.py" 0
    fill_checks "$n" "(b) $form" 0 4096
    row "(b) $form: ordinal 0 is physical GPU 1" "$u1" "$(kv "$n" uuid_0)" \
      "$(pf [ "$(kv "$n" uuid_0 | tr 'A-Z' 'a-z')" = "$(echo "$u1" | tr 'A-Z' 'a-z')" ])"
    other=$(minus "$(col "$n" 0 3)" "$(col idle 0 3)")
    row "(b) $form: physical GPU 0 untouched" "NVML used grew < 256 MiB" "${other:-unknown} MiB" \
      "$(pf num "$other" '<' 256)"
    runp preload 30 "b_smi_$k" env CUDA_VISIBLE_DEVICES="$vis" CUDA_DEVICE_MEMORY_LIMIT_0=4g \
      nvidia-smi --query-gpu=index,memory.total --format=csv,noheader,nounits
    line=$(tr '\n' ';' <"$LOGS/b_smi_$k.log")
    row "(b) $form: nvidia-smi under the preload" "1: 4096, 0: $t0 (uncapped)" "$line" \
      "$(pf grep -Eq "(^|;)0, *$t0;.*1, *4096(;|$)" <<<"$line")"
  done

  echo; echo "## (c) NCCL all-reduce, 2 ranks x 1 GiB float32, CUDA_DEVICE_MEMORY_LIMIT=8g"
  local variant r charged nvml
  for variant in default cumem0; do
    n="c_nccl_$variant"
    local -a extra=(env)
    [ $variant = cumem0 ] && extra+=(NCCL_CUMEM_ENABLE=0)
    runp preload 300 "$n" "${extra[@]}" CUDA_DEVICE_MEMORY_LIMIT=8g NCCL_DEBUG=WARN \
      "$PY" "$HERE/multi_gpu_nccl.py" 5
    row "(c) NCCL $variant: all-reduce sum" "VERDICT nccl PASS" "$(grep -m1 '^VERDICT' "$LOGS/$n.log")" \
      "$(pf grep -q '^VERDICT nccl PASS' "$LOGS/$n.log")"
    for r in 0 1; do
      charged=$(kv "$n" "charged_MiB_$r"); nvml=$(kv "$n" "nvml_proc_MiB_$r")
      row "(c) NCCL $variant: rank $r view" "total 8192 MiB, charged <= 8192" \
        "total $(kv "$n" "total_MiB_$r"), charged $charged, reserved $(kv "$n" "reserved_MiB_$r"), $(kv "$n" "allreduce_ms_$r") ms/all-reduce" \
        "$(pf rank_view_ok "$(kv "$n" "total_MiB_$r")" "$charged")"
      if num "$nvml" '>' 0; then
        row "(c) NCCL $variant: rank $r charged vs NVML" "charged <= NVML per-process + 256 MiB" \
          "charged $charged, NVML $nvml MiB" "$(pf num "$charged" '<=' $((nvml + 256)))"
      else
        row "(c) NCCL $variant: rank $r charged vs NVML" "NVML per-process figure" \
          "charged $charged, NVML ${nvml:-unknown} (pid not listed)" INFO
      fi
    done
  done
  runp none 300 c_nccl_none "$PY" "$HERE/multi_gpu_nccl.py" 5
  row "(c) NCCL without preload" "reference" \
    "$(grep -m1 '^VERDICT' "$LOGS/c_nccl_none.log"); $(kv c_nccl_none allreduce_ms_0) ms/all-reduce; NVML $(kv c_nccl_none nvml_proc_MiB_0)/$(kv c_nccl_none nvml_proc_MiB_1) MiB" INFO

  echo; echo "## (d) nvidia-smi under the preload, CUDA_DEVICE_MEMORY_LIMIT_0=20g, _1=30g"
  runp preload 30 d_smi env CUDA_DEVICE_MEMORY_LIMIT_0=20g CUDA_DEVICE_MEMORY_LIMIT_1=30g nvidia-smi
  runp preload 30 d_query env CUDA_DEVICE_MEMORY_LIMIT_0=20g CUDA_DEVICE_MEMORY_LIMIT_1=30g \
    nvidia-smi --query-gpu=index,memory.total --format=csv,noheader,nounits
  line=$(grep -o '[0-9]*MiB / *[0-9]*MiB' "$LOGS/d_smi.log" | tr '\n' ';')
  row "(d) nvidia-smi memory lines" "GPU 0 / 20480MiB, GPU 1 / 30720MiB" "$line" \
    "$(pf grep -Eq '/ *20480MiB;.*/ *30720MiB' <<<"$line")"
  line=$(tr '\n' ';' <"$LOGS/d_query.log")
  row "(d) nvidia-smi --query-gpu memory.total" "0: 20480, 1: 30720" "$line" \
    "$(pf grep -Eq '(^|;)0, *20480;1, *30720(;|$)' <<<"$line")"
  runp preload 30 d_query_i1 env CUDA_DEVICE_MEMORY_LIMIT_0=20g CUDA_DEVICE_MEMORY_LIMIT_1=30g \
    nvidia-smi -i 1 --query-gpu=index,memory.total --format=csv,noheader,nounits
  line=$(tr '\n' ';' <"$LOGS/d_query_i1.log")
  row "(d) nvidia-smi -i 1 memory.total" "1: 30720" "$line" "$(pf grep -Eq '^1, *30720;$' <<<"$line")"
  row "(d) physical totals without preload" "reference" "0: $t0 MiB, 1: $t1 MiB" INFO

  echo; echo "## (e) one container of two GPUs (_0=20g, _1=30g), a worker narrowed to its GPU 1"
  local shared
  shared=$(region)
  REGION=$shared runp preload 120 e_first env CUDA_DEVICE_MEMORY_LIMIT_0=20g CUDA_DEVICE_MEMORY_LIMIT_1=30g \
    "$PY" -c 'import torch; [torch.zeros(1, device=f"cuda:{i}") for i in range(2)]; print("named", torch.cuda.device_count())'
  REGION=$shared held e_worker 300 env CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1 \
    CUDA_DEVICE_MEMORY_LIMIT_0=20g CUDA_DEVICE_MEMORY_LIMIT_1=30g "$PY" "$HERE/multi_gpu_fill.py" 0
  fill_checks e_worker "(e) worker CUDA_VISIBLE_DEVICES=1" 0 30720
  row "(e) worker: ordinal 0 is physical GPU 1" "$u1" "$(kv e_worker uuid_0)" \
    "$(pf [ "$(kv e_worker uuid_0 | tr 'A-Z' 'a-z')" = "$(echo "$u1" | tr 'A-Z' 'a-z')" ])"
  other=$(minus "$(col e_worker 0 3)" "$(col idle 0 3)")
  row "(e) worker: physical GPU 0 untouched" "NVML used grew < 256 MiB" "${other:-unknown} MiB" \
    "$(pf num "$other" '<' 256)"
  line=$(grep -m1 "the region's cap applies" "$LOGS/e_worker.log")
  row "(e) worker told its _0=20g does not apply" "one warning line" "${line:-none}" "$(pf [ -n "$line" ])"

  echo; echo "## summary"
  local fails=0
  {
    cat "$WORK/header.txt"; echo
    echo "| check | expected | observed | result |"
    echo "|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
  } >"$LOGS/multi-gpu-$(date -u +%Y-%m-%d).md"
  printf '%s\n' "| check | expected | observed | result |" "|---|---|---|---|" "${ROWS[@]}"
  for r in "${ROWS[@]}"; do [[ $r == *"| FAIL |" ]] && fails=$((fails + 1)); done
  echo; echo "FAILED checks: $fails of ${#ROWS[@]}; elapsed ${SECONDS}s; logs in $LOGS"
  ((fails == 0))
}

main 2>&1 | tee "$LOGS/multi_gpu.txt"
exit "${PIPESTATUS[0]}"
