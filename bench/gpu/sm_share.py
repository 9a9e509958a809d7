"""Throughput of one workload for a few seconds, for the compute limiter's acceptance.

Usage: sm_share.py WORKLOAD SECONDS   (WORKLOAD: matmul | small | graph)
Prints `WORKLOAD iters_per_s=<float>`; run once without a limit and once per limit, in one call,
and compare the ratios.
"""
import sys
import time

import torch

work, seconds = sys.argv[1], float(sys.argv[2])
if work in ("matmul", "graph"):
    a = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    step = lambda: torch.mm(a, b)
else:
    x = torch.randn(1 << 14, device="cuda")
    step = lambda: x.mul_(1.0000001)

if work == "graph":
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(10):
            step()
    run = g.replay
    per = 10
else:
    run = step
    per = 1

for _ in range(20):
    run()
torch.cuda.synchronize()
t0 = time.perf_counter()
n = 0
while time.perf_counter() - t0 < 1.0:  # warm-up, and let a limiter reach its steady state
    run()
torch.cuda.synchronize()
t0 = time.perf_counter()
n = 0
while True:
    run()
    n += per
    if n % (50 * per) == 0 and time.perf_counter() - t0 >= seconds:
        break
torch.cuda.synchronize()
print(f"{work} iters_per_s={n / (time.perf_counter() - t0):.1f}", flush=True)
