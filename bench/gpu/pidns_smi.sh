#!/usr/bin/env bash
# nvidia-smi inside a container lists the container's processes (issue 16), on a real GPU.
#
# Two PID namespaces (`unshare --pid --fork --mount-proc`, as a container has), each running a
# capped PyTorch process that holds memory: namespace A holds A_MIB, namespace B holds B_MIB (so
# the two can be told apart by their memory too). Inside A, nvidia-smi is asked for its process
# list without libvgpu and under it (LD_PRELOAD, A's region); the checks:
#   - under the preload, A's process is listed, by the PID A sees (2), with its true memory
#     (at least A_MIB: the tensor plus the context);
#   - B's process is not listed (neither its host PID nor an entry with B's memory);
#   - under the preload, nvidia-smi shows A's cap as the total;
#   - the driver's own list (no preload) is recorded, and the preload keeps it where it already
#     names A's process (driver 580 does).
# Prints a pass/fail table and exits 1 if a check fails. Run as root from the repository root
# after `cargo build --release`:
#
#   sudo bash bench/gpu/pidns_smi.sh            # GPU=0 A_MIB=1024 B_MIB=3072 CAP=8g PYTHON=python3
set -euo pipefail
cd "$(dirname "$0")/../.."
lib=${LIB:-$PWD/target/release/libvgpu.so}
python=${PYTHON:-python3}
gpu=${GPU:-0}
a_mib=${A_MIB:-1024}
b_mib=${B_MIB:-3072}
cap=${CAP:-8g}
[ -f "$lib" ] || { echo "no $lib: run cargo build --release first (or set LIB=)" >&2; exit 2; }
command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found" >&2; exit 2; }
command -v unshare >/dev/null || { echo "unshare (util-linux) not found" >&2; exit 2; }
ns=(unshare --pid --fork --mount-proc)
[ "$(id -u)" = 0 ] || ns=(unshare --user --map-root-user --pid --fork --mount-proc)

work=$(mktemp -d /tmp/pidns-smi.XXXXXX)
trap 'touch "$work/stop"; sleep 1; rm -rf "$work"' EXIT
cat >"$work/holder.py" <<'EOF'
import os, sys, time
import torch
mib, stop = int(sys.argv[1]), sys.argv[2]
x = torch.empty(mib << 20, dtype=torch.uint8, device="cuda")
x.fill_(1)
torch.cuda.synchronize()
print(f"ready pid={os.getpid()}", flush=True)
while not os.path.exists(stop):
    time.sleep(0.1)
EOF

# The container's environment: libvgpu preloaded with a cap and the container's own region.
env_of() {
    echo "LD_PRELOAD=$lib CUDA_DEVICE_MEMORY_LIMIT=$cap CUDA_DEVICE_MEMORY_SHARED_CACHE=$work/$1.cache LIBVGPU_NODE_FILE=off CUDA_VISIBLE_DEVICES=$gpu"
}

# Namespace B: its holder, until the end. Its host PID is recorded from outside.
"${ns[@]}" bash -c "env $(env_of b) $python $work/holder.py $b_mib $work/stop >$work/b.out 2>$work/b.err" &
for _ in $(seq 600); do grep -q '^ready' "$work/b.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^ready' "$work/b.out" || { echo "namespace B's holder did not start:" >&2; cat "$work/b.err" >&2; exit 1; }
# The python process itself (`env` execs it), not the unshare and bash wrappers whose command
# lines contain the same words.
b_host_pid=$(pgrep -f "^[^ ]*python[^ ]* $work/holder.py $b_mib " | head -1)

# Namespace A: its holder, then nvidia-smi in the same namespace, without and with the preload.
cat >"$work/a.sh" <<EOF
set -u
env $(env_of a) $python $work/holder.py $a_mib $work/stop-a >$work/a.out 2>$work/a.err &
holder=\$!
for _ in \$(seq 600); do grep -q '^ready' $work/a.out 2>/dev/null && break; sleep 0.1; done
echo "\$holder" >$work/a.pid
q="--query-compute-apps=pid,used_memory --format=csv,noheader,nounits -i $gpu"
nvidia-smi \$q >$work/plain.csv 2>&1
env $(env_of a) nvidia-smi \$q >$work/preload.csv 2>&1
env $(env_of a) nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader,nounits -i $gpu >$work/mem.csv 2>&1
env $(env_of a) nvidia-smi -i $gpu >$work/table.txt 2>&1
touch $work/stop-a
wait \$holder
EOF
"${ns[@]}" bash "$work/a.sh"
a_pid=$(cat "$work/a.pid")

cap_mib=$(python3 -c "import sys; s=sys.argv[1].lower(); u={'k':1/1024,'m':1,'g':1024,'t':1<<20}; print(int(float(s[:-1])*u[s[-1]]) if s[-1] in u else int(s)>>20)" "$cap")
lists() { awk -F', *' -v p="$2" '$1 == p {found=1} END {exit !found}' "$work/$1.csv"; }
mem_of() { awk -F', *' -v p="$2" '$1 == p {print $2; exit}' "$work/$1.csv"; }
near() { awk -v m="$1" -v lo="$2" -v hi="$3" 'BEGIN {exit !(m != "" && m >= lo && m <= hi)}'; }

results=()
check() { # name, expected, got, ok(0/1)
    results+=("$1|$2|$3|$([ "$4" = 0 ] && echo PASS || echo FAIL)")
}
a_mem=$(mem_of preload "$a_pid")
set +e
lists preload "$a_pid"; check "A's process listed under the preload" "pid $a_pid (as namespace A sees it)" "$(tr '\n' ';' <"$work/preload.csv")" $?
near "$a_mem" "$a_mib" "$cap_mib"; check "its memory is its true footprint" "$a_mib..$cap_mib MiB" "${a_mem:-none} MiB" $?
! lists preload "$b_host_pid"; check "B's process hidden (host PID)" "no pid $b_host_pid" "$(cut -d, -f1 "$work/preload.csv" | tr '\n' ' ')" $?
big=$(awk -F', *' -v b="$b_mib" '$2 >= b {n++} END {print n+0}' "$work/preload.csv")
[ "$big" = 0 ]; check "B's process hidden (no entry with B's memory)" "no entry >= $b_mib MiB" "$big" $?
[ "$(wc -l <"$work/preload.csv")" = 1 ]; check "only A's process listed" "1 entry" "$(wc -l <"$work/preload.csv") entries" $?
total=$(cut -d, -f2 "$work/mem.csv" | tr -d ' ')
[ "$total" = "$cap_mib" ]; check "nvidia-smi shows A's cap" "total $cap_mib MiB" "$(tr -d '\n' <"$work/mem.csv")" $?
if lists plain "$a_pid"; then
    cmp -s "$work/plain.csv" "$work/preload.csv"
    check "the driver's list (it names A's process) is kept" "same as without the preload" "$(tr '\n' ';' <"$work/plain.csv")" $?
else
    check "the driver's list (names no A process): the region's is shown" "driver: no pid $a_pid" "$(tr '\n' ';' <"$work/plain.csv")" 0
fi
set -e

echo "== nvidia-smi in a PID namespace under libvgpu ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader -i "$gpu"); commit $(git rev-parse --short HEAD 2>/dev/null || echo ?); $(date -u +%F))"
echo "A: holder pid $a_pid in its namespace, $a_mib MiB tensor, cap $cap; B: host pid $b_host_pid, $b_mib MiB"
printf '| %s | %s | %s | %s |\n' check expected got result
printf '|---|---|---|---|\n'
fails=0
for r in "${results[@]}"; do
    IFS='|' read -r name want got verdict <<<"$r"
    printf '| %s | %s | %s | %s |\n' "$name" "$want" "$got" "$verdict"
    [ "$verdict" = PASS ] || fails=$((fails + 1))
done
echo
echo "nvidia-smi in namespace A under the preload:"
sed 's/^/    /' "$work/table.txt"
[ "$fails" = 0 ] && echo "all checks passed" || { echo "$fails check(s) failed"; exit 1; }
