#!/usr/bin/env bash
# Usage: scripts/check-glibc.sh [--max X.Y] [--allowlist FILE | --no-exports] FILE...
#
# For each ELF file: prints the highest GLIBC_x.y symbol version it needs (from its version
# references) and fails if that is above --max (default 2.17: CentOS 7, UBI 8, Ubuntu 18.04+).
# Also fails on a strong undefined symbol without a version (it would bind to whatever the
# loader finds, or fail to load) and, for a shared library (*.so), compares its exported
# symbols (nm -D --defined-only: functions and data) with the allowlist (default
# tests/exports.allowlist) and checks it does not need the driver (libcuda/libnvidia-ml) at
# load time. Run-time lookups such as dlvsym(..., "GLIBC_2.34") are strings, not requirements.
# Needs binutils (objdump, nm, readelf). Exit status: 0 ok, 1 a check failed, 2 usage.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
max=2.17
allowlist=$here/tests/exports.allowlist
exports=auto
files=()
while [ $# -gt 0 ]; do
    case $1 in
        --max) max=${2:?--max needs a version}; shift 2 ;;
        --max=*) max=${1#--max=}; shift ;;
        --allowlist) allowlist=${2:?--allowlist needs a file}; exports=yes; shift 2 ;;
        --allowlist=*) allowlist=${1#--allowlist=}; exports=yes; shift ;;
        --no-exports) exports=no; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "check-glibc: unknown option $1" >&2; exit 2 ;;
        *) files+=("$1"); shift ;;
    esac
done
if [ ${#files[@]} -eq 0 ]; then
    echo "usage: $0 [--max X.Y] [--allowlist FILE | --no-exports] FILE..." >&2
    exit 2
fi
for tool in objdump nm readelf; do
    command -v $tool >/dev/null || { echo "check-glibc: $tool not found (install binutils)" >&2; exit 2; }
done

# version_gt A B: A > B in version order.
version_gt() { [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -1)" = "$1" ]; }

status=0
for f in "${files[@]}"; do
    if [ ! -f "$f" ]; then
        echo "FAIL $f: no such file"; status=1; continue
    fi
    name=$(basename "$f")
    # Versions this file requires: the "Version References" of its dynamic section.
    versions=$(objdump -p "$f" | sed -n '/^Version References:/,/^$/p' | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV || true)
    highest=$(printf '%s\n' "$versions" | tail -1)
    if [ -z "$highest" ]; then
        echo "ok   $name: needs no versioned glibc symbol"
    elif version_gt "$highest" "$max"; then
        echo "FAIL $name: needs GLIBC_$highest, above the floor GLIBC_$max; symbols above the floor:"
        objdump -T "$f" | awk -v max="$max" '/GLIBC_[0-9]/ { for (i = 1; i <= NF; i++) if ($i ~ /GLIBC_[0-9]/) { v = $i; gsub(/[()]/, "", v); print "       " $NF " " v } }' \
            | while read -r sym ver; do version_gt "${ver#GLIBC_}" "$max" && echo "       $sym@$ver"; done || true
        status=1
    else
        echo "ok   $name: highest glibc symbol version GLIBC_$highest (floor GLIBC_$max)"
    fi
    # Strong undefined symbols without a version (weak ones, like std's statx/getrandom probes,
    # resolve to null when absent and are fine).
    strong=$(nm -D --undefined-only "$f" | awk '$1 == "U" && $2 !~ /@/ { print $2 }')
    if [ -n "$strong" ]; then
        echo "FAIL $name: strong undefined symbols without a version: $(echo $strong)"
        status=1
    fi
    case $exports in
        no) continue ;;
        auto) case $name in *.so|*.so.*) ;; *) continue ;; esac ;;
    esac
    if [ ! -f "$allowlist" ]; then
        echo "FAIL $name: allowlist $allowlist not found"; status=1; continue
    fi
    exported=$(nm -D --defined-only "$f" | awk 'NF == 3 && $2 ~ /^[TtWDdBbRrVviu]$/ { print $3 }' | sed 's/@.*//' | sort -u)
    allowed=$(grep -v '^[[:space:]]*\(#\|$\)' "$allowlist" | sort -u)
    if [ "$exported" = "$allowed" ]; then
        echo "ok   $name: exports exactly the $(printf '%s\n' "$allowed" | wc -l) symbols of $(basename "$allowlist")"
    else
        echo "FAIL $name: exports differ from $allowlist (< exported only, > allowlist only):"
        diff <(printf '%s\n' "$exported") <(printf '%s\n' "$allowed") | grep '^[<>]' | sed 's/^/       /' || true
        status=1
    fi
    needed=$(readelf -d "$f" | awk '/\(NEEDED\)/ { gsub(/[][]/, "", $NF); print $NF }')
    if printf '%s\n' "$needed" | grep -q 'libcuda\|libnvidia-ml'; then
        echo "FAIL $name: the driver is in DT_NEEDED: $(echo $needed)"
        status=1
    else
        echo "ok   $name: DT_NEEDED $(echo $needed)"
    fi
done
exit $status
