"""A PyTorch job for the dashboard capture: holds GIB GiB of tensors and runs bf16 matmuls for
SECS seconds. Usage: dash_load.py GIB SECS"""
import sys
import time

import torch

gib, secs = float(sys.argv[1]), float(sys.argv[2])
held = torch.empty(int(gib * (1 << 30)), dtype=torch.uint8, device="cuda")
a = torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda")
t0 = time.perf_counter()
n = 0
while time.perf_counter() - t0 < secs:
    for _ in range(20):
        torch.mm(a, a)
    torch.cuda.synchronize()
    n += 20
print(f"dash_load held_gib={gib} matmuls={n} per_s={n / (time.perf_counter() - t0):.0f}", flush=True)
