"""Throughput of one workload for a few seconds, for the compute limiter's acceptance.

Usage: sm_share.py WORKLOAD SECONDS   (WORKLOAD: matmul | small | graph)
Prints `WORKLOAD iters_per_s=<float>`; run once without a limit and once per limit, in one call,
and compare the ratios.
"""
import os
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
# SM_SHARE_TIMING=1: every 64th step is bracketed by events, so the GPU time one step takes
# (its execution, on a stream that is never idle) can be compared with and without a limit.
timing = os.environ.get("SM_SHARE_TIMING") == "1"
marks = []
REGION = os.environ.get("CUDA_DEVICE_MEMORY_SHARED_CACHE")
# Device 0's limiter bucket in a libvgpu region: consumed_ns and throttled_ns (layout v1.2 + our
# extension; the offset is pinned by vgpu-region's layout tests).
BUCKET0 = 2_017_416


def bucket():
    if not (timing and REGION and os.path.exists(REGION)):
        return None
    with open(REGION, "rb") as f:
        f.seek(BUCKET0 + 16)
        b = f.read(16)
    return int.from_bytes(b[:8], "little"), int.from_bytes(b[8:], "little")


before = bucket()
t0 = time.perf_counter()
n = 0
while True:
    if timing and n % (64 * per) == 0:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        marks.append((start, end))
    else:
        run()
    n += per
    if n % (50 * per) == 0 and time.perf_counter() - t0 >= seconds:
        break
torch.cuda.synchronize()
wall = time.perf_counter() - t0
extra = ""
after = bucket()
if before and after:
    extra += f" charged_share={(after[0] - before[0]) / 1e9 / wall:.3f} throttled_frac={(after[1] - before[1]) / 1e9 / wall:.3f}"
if marks:
    ms = sorted(s.elapsed_time(e) / per for s, e in marks)
    extra += f" step_gpu_us_median={1000 * ms[len(ms) // 2]:.2f} step_gpu_us_p10={1000 * ms[len(ms) // 10]:.2f}"
print(f"{work} iters_per_s={n / wall:.1f} wall_s={wall:.3f}{extra}", flush=True)
