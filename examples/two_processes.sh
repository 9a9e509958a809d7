#!/usr/bin/env bash
# Two processes, one cap: both run with the same region file (--cache), as the processes of one
# container do, so what the first holds the second cannot take; once the first is gone, the
# second gets the whole cap again. Uses the real driver when nvidia-smi finds a GPU, otherwise
# the fake driver (crates/fakegpu, a 16 GiB GPU). CAP (default 4g) is the container's cap;
# VGPU=path/to/vgpu uses an already built command (and the libvgpu.so next to it) instead of
# building with cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
cap=${CAP:-4g}
if [ -z "${VGPU:-}" ]; then
    cargo build --release --quiet -p libvgpu -p fakegpu -p vgpu-cli
fi
vgpu=${VGPU:-$PWD/target/release/vgpu}    # finds the libvgpu.so next to itself
work=$PWD/target/release/two-processes
if nvidia-smi -L >/dev/null 2>&1; then
    what="the real driver ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
    real=$(ldconfig -p | awk '/libcuda\.so\.1 / {print $NF; exit}')
    mkdir -p "$work/driver" && ln -sfn "$real" "$work/driver/libcuda.so"
else
    what="the fake driver (crates/fakegpu, 16 GiB)"
    sh crates/fakegpu/make-driver-dir.sh target/release "$work/driver"
    export LD_LIBRARY_PATH=$work/driver FAKEGPU_MEMORY=16g
fi
# The node table where containers sharing a GPU meet: this example's own, not the node's.
export LIBVGPU_NODE_FILE=$work/node.v1
sh tests/c/build.sh "$work/driver" "$work/bin"
prog=$work/bin/alloc_linked
region=$work/container.cache
rm -f "$region" "$work"/*.out
field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p" | head -1; }
mib() { echo "$(( $1 / 1048576 )) MiB"; }

echo "== two processes sharing one $cap cap through $region, on $what"
echo
echo "-- process A takes 1 GiB and holds it"
echo "\$ vgpu run --memory $cap --cache $region -- alloc_linked init alloc 1g sleep 5000 free-all &"
"$vgpu" run --memory "$cap" --cache "$region" -- "$prog" init alloc 1g sleep 5000 free-all >"$work/a.out" &
a=$!
for _ in $(seq 100); do grep -q '^alloc ' "$work/a.out" 2>/dev/null && break; sleep 0.1; done
sed 's/^/    /' "$work/a.out"
grep -q '^alloc 1073741824 0 ' "$work/a.out" || { echo "process A could not allocate" >&2; exit 1; }
echo
echo "-- the container as the operator sees it"
echo "\$ vgpu status --cache $region"
"$vgpu" status --cache "$region" | sed 's/^/    /'
echo
echo "-- process B, same region: it can only take what A left of the cap"
echo "\$ vgpu run --memory $cap --cache $region -- alloc_linked init alloc-until-oom 64m meminfo"
"$vgpu" run --memory "$cap" --cache "$region" -- "$prog" init alloc-until-oom 64m meminfo 2>&1 | tee "$work/b.out" | sed 's/^/    /'
b_bytes=$(grep '^alloc-until-oom' "$work/b.out" | field bytes)
wait "$a"
echo
echo "-- A has freed and exited; process C, same region, gets the whole cap again"
"$vgpu" run --memory "$cap" --cache "$region" -- "$prog" init alloc-until-oom 64m 2>&1 | tee "$work/c.out" | sed 's/^/    /'
c_bytes=$(grep '^alloc-until-oom' "$work/c.out" | field bytes)
echo
echo "B got $(mib "$b_bytes") while A held 1 GiB; C got $(mib "$c_bytes") alone."
# Under one cap, B plus A's gigabyte stays within it and C gets about a gigabyte more than B.
cap_bytes=$(( $("$vgpu" status --cache "$region" --json | sed -n 's/.*"memory_limit": \([0-9]*\).*/\1/p' | head -1) ))
if [ $(( b_bytes + 1073741824 )) -gt "$cap_bytes" ] || [ $(( c_bytes - b_bytes )) -lt $(( 1073741824 - 134217728 )) ]; then
    echo "FAILED: the two processes did not share one cap" >&2
    exit 1
fi
echo "ok: one cap, shared"
