"""PyTorch throughput for bench/gpu/overhead.sh, run with and without the preload (no limit set).

Prints "key value" lines:
  matmul_ms        one bf16 4096x4096 @ 4096x4096 matmul (median of 5 timed blocks)
  matmul_tflops    the same as throughput
  small_kernel_us  one x.add_(1) on a 256-element tensor, host-bound (median of 5 blocks)
  init_s           import torch + first CUDA tensor (informational)
"""
import statistics
import sys
import time

t_start = time.perf_counter()
import torch  # noqa: E402

scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
dev = torch.device("cuda")
x = torch.zeros(256, device=dev)
torch.cuda.synchronize()
print(f"init_s {time.perf_counter() - t_start:.3f}")

n = 4096
a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
for _ in range(30):
    c = a @ b
torch.cuda.synchronize()
iters = max(1, int(100 * scale))
blocks = []
for _ in range(5):
    t0 = time.perf_counter()
    for _ in range(iters):
        c = a @ b
    torch.cuda.synchronize()
    blocks.append((time.perf_counter() - t0) / iters)
per = statistics.median(blocks)
print(f"matmul_ms {per * 1e3:.5f}")
print(f"matmul_tflops {2 * n**3 / per / 1e12:.2f}")

for _ in range(2000):
    x.add_(1)
torch.cuda.synchronize()
iters = max(1, int(4000 * scale))
blocks = []
for _ in range(5):
    t0 = time.perf_counter()
    for _ in range(iters):
        x.add_(1)
    torch.cuda.synchronize()
    blocks.append((time.perf_counter() - t0) / iters)
print(f"small_kernel_us {statistics.median(blocks) * 1e6:.4f}")
