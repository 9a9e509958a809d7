"""Latency of one small kernel (launch + synchronize), for the compute limiter's p99 figure.

Usage: latency.py N [busy]   — N timed iterations; `busy` adds a thread that keeps bf16 matmuls
queued on its own stream, so the process uses its whole share and the limiter throttles it.
Prints `latency p50_us=.. p99_us=.. max_us=..`; run with and without CUDA_DEVICE_SM_LIMIT in one
call and compare.
"""
import sys
import threading
import time

import torch

n = int(sys.argv[1])
busy = len(sys.argv) > 2 and sys.argv[2] == "busy"
x = torch.randn(1 << 14, device="cuda")
stop = threading.Event()


def background():
    s = torch.cuda.Stream()
    a = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
    with torch.cuda.stream(s):
        while not stop.is_set():
            for _ in range(8):
                torch.mm(a, a)
            s.synchronize()


if busy:
    t = threading.Thread(target=background, daemon=True)
    t.start()
    time.sleep(1.0)
for _ in range(200):
    x.mul_(1.0000001)
torch.cuda.synchronize()
lat = []
for _ in range(n):
    t0 = time.perf_counter()
    x.mul_(1.0000001)
    torch.cuda.current_stream().synchronize()
    lat.append((time.perf_counter() - t0) * 1e6)
    time.sleep(0.0005)
stop.set()
lat.sort()
print(f"latency p50_us={lat[len(lat) // 2]:.1f} p99_us={lat[int(len(lat) * 0.99)]:.1f} max_us={lat[-1]:.1f}", flush=True)
