#!/usr/bin/env bash
# Quick start: build libvgpu, then show a 2 GiB cap enforced and reported, and say in words
# what happened. Uses the real driver when nvidia-smi finds a GPU, otherwise the fake driver
# (crates/fakegpu), here with one simulated 16 GiB GPU. The raw lines of the test program are
# shown indented; their format is in tests/c/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p libvgpu -p fakegpu
lib=$PWD/target/release/libvgpu.so
work=$PWD/target/release/demo
mkdir -p "$work"
if nvidia-smi -L >/dev/null 2>&1; then
    what="the real driver ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
    real=$(ldconfig -p | awk '/libcuda\.so\.1 / {print $NF; exit}')
    mkdir -p "$work/driver" && ln -sfn "$real" "$work/driver/libcuda.so"
else
    what="the fake driver (crates/fakegpu: one simulated 16 GiB GPU, no GPU needed)"
    sh crates/fakegpu/make-driver-dir.sh target/release "$work/driver"
    export LD_LIBRARY_PATH=$work/driver FAKEGPU_MEMORY=16g FAKEGPU_DEVICES=1
fi
# The node table where containers sharing a GPU meet: this demo's own, not the node's.
export LIBVGPU_NODE_FILE=$work/node.v1
sh tests/c/build.sh "$work/driver" "$work/bin"
prog=$work/bin/alloc_linked
# Runs a command, shows its output indented, and keeps it in $work/last.out.
run() { echo "\$ $*"; "$@" >"$work/last.out" 2>&1 || true; sed 's/^/    /' "$work/last.out"; }
# `field KEY PREFIX`: the value of KEY= on the first line of the last output starting with PREFIX.
field() { sed -n "s/^$2.* $1=\([0-9]*\).*/\1/p" "$work/last.out" | head -1; }
code() { awk -v p="$1" '$1 == p {print $3; exit}' "$work/last.out"; }
gib() { awk -v b="$1" 'BEGIN {printf "%.1f GiB", b / 1073741824}'; }
# Each scenario is its own "container": its own region file (the cap lives there, shared by
# the container's processes), instead of the default /tmp/cudevshr.cache.
region() { rm -f "$work/$1.cache"; echo "CUDA_DEVICE_MEMORY_SHARED_CACHE=$work/$1.cache"; }

echo "== libvgpu demo on $what"
echo
echo "-- 1. without libvgpu: how much can a CUDA program take, in 1 GiB blocks?"
run "$prog" init meminfo alloc-until-oom 1g
echo "=> the GPU shows $(gib "$(field total meminfo)") and the program took $(gib "$(field bytes alloc-until-oom)")."
echo
echo "-- 2. the same program with LD_PRELOAD=libvgpu.so CUDA_DEVICE_MEMORY_LIMIT=2g"
cache=$(region capped)
run env LD_PRELOAD="$lib" "$cache" CUDA_DEVICE_MEMORY_LIMIT=2g "$prog" init meminfo alloc-until-oom 64m alloc 1g free-last
total=$(field total meminfo)
free=$(field free meminfo)
took=$(field bytes alloc-until-oom)
refused=$(awk '$1 == "alloc-until-oom" {print $3; exit}' "$work/last.out")
again=$(code alloc)
echo "=> the program sees a $(gib "$total") GPU, $(gib "$free") of it free: its CUDA context"
echo "   already counts against the cap (README: what is counted)."
echo "=> it allocated $(gib "$took") in 64 MiB blocks ($(gib $((total - free + took))) of the 2 GiB cap with its context);"
echo "   the next allocation was refused with"
echo "   $([ "$refused" = 2 ] && echo CUDA_ERROR_OUT_OF_MEMORY || echo "code $refused"); after freeing them,"
echo "   a 1 GiB allocation $([ "$again" = 0 ] && echo "worked again" || echo "failed with code $again")."
echo
echo "-- 3. what nvidia-smi shows in that container (NVML, opened as nvidia-smi does), while a"
echo "      process holds 1 GiB"
mkfifo "$work/hold" 2>/dev/null || true
env LD_PRELOAD="$lib" "$cache" CUDA_DEVICE_MEMORY_LIMIT=2g "$prog" init alloc 1g wait <"$work/hold" >"$work/holder.out" 2>&1 &
holder=$!
exec 3>"$work/hold"
for _ in $(seq 100); do grep -q '^wait' "$work/holder.out" 2>/dev/null && break; sleep 0.1; done
run env LD_PRELOAD="$lib" "$cache" CUDA_DEVICE_MEMORY_LIMIT=2g "$work/bin/nvml_smi"
exec 3>&-
wait "$holder" || true
smi=$(sed -n 's/^gpu 0 \([0-9]*MiB \/ [0-9]*MiB\)$/\1/p' "$work/last.out")
pid=$(field pid 'proc 0')
echo "=> NVML (what nvidia-smi shows): $smi; its process list names the holder (PID ${pid:-none})"
echo "   with the memory charged to it."
echo
echo "-- 4. a malformed limit is reported, not guessed, and not applied"
run env LD_PRELOAD="$lib" "$(region malformed)" CUDA_DEVICE_MEMORY_LIMIT="2 gigs" "$prog" init meminfo
echo "=> one line on stderr names the variable, the value and the accepted forms; the program"
echo "   runs uncapped ($(gib "$(field total meminfo)"))."
echo
echo "Next: examples/two_processes.sh (two processes sharing one cap), and README.md."
