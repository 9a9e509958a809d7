#!/usr/bin/env python3
"""Turns interleaved with/without measurements into the overhead table (bench/README.md).

    summarize.py ROWS SAMPLES [--strict]

ROWS: one row per line, tab-separated: key, label, unit, budget. Budget is one of
  added<=X   median of the per-pair differences (with - without), in the row's unit
  ratio<=X   median of the per-pair ratios (with / without)
  ratio<X    the same, strictly below
  -          recorded, no budget
SAMPLES: tab-separated lines `key pair side value`, side `base` (no preload) or `with`; a pair
is one run of each side, taken back to back. Pairs missing a side are ignored.

Prints a Markdown table: operation, without and with (medians), ratio and added (medians over
pairs of the per-pair ratio and difference), the range of the per-pair ratios (the noise),
budget, verdict. Exit status 1 with --strict if a verdict is FAIL or a budgeted row has no data.
"""
import math
import statistics
import sys


def median(xs):
    return statistics.median(xs) if xs else math.nan


def fmt(x, unit=""):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    a = abs(x)
    s = f"{x:.0f}" if a >= 1000 else f"{x:.1f}" if a >= 10 else f"{x:.2f}" if a >= 0.1 else f"{x:.3f}"
    return f"{s} {unit}".strip()


def verdict(budget, ratio, added):
    if budget == "-":
        return "recorded"
    for op in ("<=", "<"):
        kind, sep, limit = budget.partition(op)
        if sep:
            break
    else:
        return f"bad budget {budget!r}"
    value = {"added": added, "ratio": ratio}.get(kind)
    if value is None:
        return f"bad budget {budget!r}"
    if math.isnan(value):
        return "NO DATA"
    ok = value <= float(limit) if op == "<=" else value < float(limit)
    return "PASS" if ok else "FAIL"


def main():
    args = [a for a in sys.argv[1:] if a != "--strict"]
    strict = "--strict" in sys.argv[1:]
    if len(args) != 2:
        sys.exit(__doc__)
    rows = []
    for line in open(args[0]):
        line = line.rstrip("\n")
        if line and not line.startswith("#"):
            key, label, unit, budget = line.split("\t")
            rows.append((key, label, unit, budget))
    samples = {}
    for line in open(args[1]):
        parts = line.split()
        if len(parts) != 4:
            continue
        key, pair, side, value = parts
        try:
            samples.setdefault(key, {}).setdefault(pair, {})[side] = float(value)
        except ValueError:
            continue
    print("| operation | without | with | ratio | added | pair ratios | pairs | budget | verdict |")
    print("|---|---:|---:|---:|---:|---|---:|---|---|")
    failed = False
    for key, label, unit, budget in rows:
        pairs = [p for p in samples.get(key, {}).values() if "base" in p and "with" in p]
        base = [p["base"] for p in pairs]
        with_ = [p["with"] for p in pairs]
        ratios = [p["with"] / p["base"] for p in pairs if p["base"] > 0]
        diffs = [p["with"] - p["base"] for p in pairs]
        ratio, added = median(ratios), median(diffs)
        v = verdict(budget, ratio, added)
        failed |= v in ("FAIL", "NO DATA") or v.startswith("bad budget")
        spread = f"{min(ratios):.3f}–{max(ratios):.3f}" if ratios else "n/a"
        shown_budget = "—" if budget == "-" else budget.replace("<=", " ≤ ").replace("<", " < ") + (
            f" {unit}" if budget.startswith("added") else "")
        shown_ratio = "n/a" if math.isnan(ratio) else f"{ratio:.3f}"
        print(f"| {label} | {fmt(median(base), unit)} | {fmt(median(with_), unit)} | {shown_ratio} | "
              f"{'+' if added >= 0 else ''}{fmt(added, unit)} | {spread} | {len(pairs)} | {shown_budget} | {v} |")
    sys.exit(1 if strict and failed else 0)


if __name__ == "__main__":
    main()
