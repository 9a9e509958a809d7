#!/usr/bin/env python3
"""PyTorch under a libvgpu memory cap: what it sees, where it stops, and that it recovers.

    vgpu run --memory 4g -- python examples/torch_cap.py
    # or, without the launcher:
    LD_PRELOAD=$PWD/target/release/libvgpu.so CUDA_DEVICE_MEMORY_LIMIT=4g python examples/torch_cap.py

Prints torch.cuda.mem_get_info() and the device's total_memory (both show the cap), allocates
--step blocks until PyTorch raises OutOfMemoryError, frees them, and allocates again. The
context's own memory (~520 MiB on an H200) counts against the cap, so the blocks stop short of
it. Exit status: 0 when the cap held (allocations stopped within the reported total and worked
again after freeing), 1 otherwise, 2 without a CUDA device. Needs a real GPU and PyTorch.
"""
import argparse
import os
import sys

GIB = 1 << 30
MIB = 1 << 20


def gib(n):
    return f"{n / GIB:.2f} GiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--step", type=int, default=256, help="block size in MiB (default 256)")
    ap.add_argument("--device", type=int, default=0, help="CUDA device ordinal (default 0)")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    dev = torch.device(f"cuda:{args.device}")
    torch.cuda.init()
    limits = {k: v for k, v in os.environ.items() if k.startswith("CUDA_DEVICE_MEMORY_LIMIT")}
    print(f"limits: {limits or 'none set'}; LD_PRELOAD={os.environ.get('LD_PRELOAD', '')}")
    free, total = torch.cuda.mem_get_info(dev)
    props = torch.cuda.get_device_properties(dev)
    print(f"{props.name}: mem_get_info free={gib(free)} total={gib(total)}; total_memory={gib(props.total_memory)}")

    step = args.step * MIB
    blocks = []
    try:
        while True:
            blocks.append(torch.empty(step, dtype=torch.uint8, device=dev))
    except torch.cuda.OutOfMemoryError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"OutOfMemoryError after {len(blocks)} blocks of {args.step} MiB = {gib(len(blocks) * step)}: {first[:160]}")
    held = len(blocks) * step
    free_at_oom, _ = torch.cuda.mem_get_info(dev)
    print(f"at the cap: torch reserved={gib(torch.cuda.memory_reserved(dev))}, mem_get_info free={gib(free_at_oom)}")

    del blocks
    torch.cuda.empty_cache()
    free_after, _ = torch.cuda.mem_get_info(dev)
    print(f"after freeing: mem_get_info free={gib(free_after)}")
    again = [torch.ones(step, dtype=torch.uint8, device=dev) for _ in range(2)]
    torch.cuda.synchronize(dev)
    ok_again = all(int(t.sum().item()) == step for t in again)
    print(f"allocating 2 x {args.step} MiB again: {'ok' if ok_again else 'FAILED'}")

    ok = held <= total and held > 0 and ok_again and free_after > free_at_oom
    print("ok: the cap held and PyTorch recovered" if ok else "FAILED: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
