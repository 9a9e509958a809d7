"""One tenant's workload for the compute-share acceptance (bench/gpu/share_acceptance.py).

Usage: share_job.py WORKLOAD SECONDS   (WORKLOAD: matmul | graph | small)
  matmul  bf16 4096x4096 matmuls, queued back to back (compute-bound)
  graph   a CUDA graph of 10 such matmuls, replayed
  small   batches of 100 elementwise kernels on 4 MiB, a synchronize after each batch
          (host-bound: PyTorch's launch cost leaves the GPU idle about half the time)
Prints one line: `WORKLOAD iters_per_s=<float> t0=<CLOCK_MONOTONIC s> t1=<...>`, the measured
window after 1.5 s of warm-up (so a limiter has reached its steady state).
"""
import sys
import time

import torch

work, seconds = sys.argv[1], float(sys.argv[2])
if work in ("matmul", "graph"):
    a = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    step = lambda: torch.mm(a, b)
    per = 1
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
        step, per = g.replay, 10
    sync_every = 50
elif work == "small":
    x = torch.randn(1 << 20, device="cuda")

    def step():
        for _ in range(100):
            x.mul_(1.0000001)
        torch.cuda.synchronize()

    per, sync_every = 1, 1
else:
    sys.exit(f"unknown workload {work}")

clock = lambda: time.clock_gettime(time.CLOCK_MONOTONIC)
t_warm = clock()
while clock() - t_warm < 1.5:
    step()
torch.cuda.synchronize()
t0 = clock()
n = 0
while True:
    step()
    n += 1
    if n % sync_every == 0:
        torch.cuda.synchronize()
        if clock() - t0 >= seconds:
            break
torch.cuda.synchronize()
t1 = clock()
print(f"{work} iters_per_s={n * per / (t1 - t0):.2f} t0={t0:.3f} t1={t1:.3f}", flush=True)
