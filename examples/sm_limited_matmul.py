#!/usr/bin/env python3
"""bf16 matmul throughput under an SM (compute) share.

    python examples/sm_limited_matmul.py                          # unlimited baseline
    vgpu run --sm 30 -- python examples/sm_limited_matmul.py      # 30 % share
    vgpu run --sm 30 -- python examples/sm_limited_matmul.py --baseline 700   # share of 700 TFLOP/s

STATUS: the compute limiter is NOT built yet. libvgpu parses and records CUDA_DEVICE_SM_LIMIT
(`vgpu status` shows it) but does not enforce it, so today both runs above print about the same
throughput. This script is the measurement for the limiter when it lands (DESIGN.md section 5:
a 30 % share should give ~30 % of the unlimited throughput, alone or beside other tenants).

Runs --size x --size bf16 matmuls for --seconds, timing each --window with CUDA events, and
prints TFLOP/s per window and overall (plus the share of --baseline when given). Needs a real
GPU and PyTorch. --graphs replays the matmuls from a CUDA graph (another launch path to gate).
"""
import argparse
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=1.0, help="seconds per printed sample")
    ap.add_argument("--baseline", type=float, help="unlimited TFLOP/s, to print the achieved share")
    ap.add_argument("--graphs", action="store_true", help="replay a CUDA graph of 20 matmuls")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    n = args.size
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    per_call = 20
    flops_per_call = 2 * n**3 * per_call

    def step():
        for _ in range(per_call):
            torch.matmul(a, b, out=c)

    if args.graphs:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            step()  # warm up cuBLAS outside the capture
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
    else:
        run = step
    for _ in range(3):
        run()
    torch.cuda.synchronize()

    sm = {k: v for k, v in os.environ.items() if k.startswith("CUDA_DEVICE_SM_LIMIT")}
    print(f"{torch.cuda.get_device_name()}: bf16 {n}x{n} matmul, {'graph replay' if args.graphs else 'eager'}, "
          f"SM limit {sm or 'none'} (NOTE: not enforced yet, the limiter is in progress)")
    total_flops, start = 0, time.perf_counter()
    samples = []
    while time.perf_counter() - start < args.seconds:
        t0, flops = time.perf_counter(), 0
        while time.perf_counter() - t0 < args.window:
            run()
            flops += flops_per_call
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tflops = flops / dt / 1e12
        samples.append(tflops)
        total_flops += flops
        share = f"  ({100 * tflops / args.baseline:.0f} % of baseline)" if args.baseline else ""
        print(f"  {tflops:8.1f} TFLOP/s{share}")
    overall = total_flops / (time.perf_counter() - start) / 1e12
    share = f", {100 * overall / args.baseline:.1f} % of the {args.baseline} TFLOP/s baseline" if args.baseline else ""
    print(f"overall {overall:.1f} TFLOP/s over {len(samples)} windows{share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
