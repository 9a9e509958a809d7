"""Two-process NCCL all-reduce of 1 GiB float32 tensors, one GPU per rank, for multi_gpu.sh.

usage: multi_gpu_nccl.py [ITERS]
Spawns world size 2 with torch.multiprocessing (backend nccl, rank r on cuda:r). Each rank
all-reduces (sum) a 1 GiB tensor whose element i is (i mod 1024) + r and checks every element
is 2 * (i mod 1024) + 1, then times ITERS (default 5) more all-reduces. Prints "key value"
lines per rank r:
  total_MiB_<r>        torch.cuda.mem_get_info total (libvgpu's view: the cap)
  charged_MiB_<r>      total - free after the all-reduces: what libvgpu charges this process
  nvml_proc_MiB_<r>    the driver's own per-process figure (nvidia-smi without LD_PRELOAD), or
                       unknown when this process's pid is not listed (PID namespace)
  reserved_MiB_<r>     PyTorch's caching allocator
  sum_ok_<r>           1 if every element is right
  allreduce_ms_<r>     mean time of one all-reduce after the warm-up
and "VERDICT nccl PASS|FAIL" (FAIL: a wrong sum, an exception, or a rank that did not report).
NCCL's buffers cross between the ranks through cuMem* exports/imports (or CUDA IPC) and host
memory from cuMemCreate: libvgpu must charge each rank for its own memory only, so charged
should stay close to the NVML figure.
"""
import os
import socket
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MiB = 1 << 20
N = (1 << 30) // 4  # 1 GiB of float32
WORLD = 2


def nvml_proc_mib(pid):
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    try:
        out = subprocess.run(
            ["timeout", "-k", "2", "20", "nvidia-smi", "--query-compute-apps=pid,used_memory",
             "--format=csv,noheader,nounits"],
            env=env, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return parts[1]
    return "unknown"


def rank_main(rank, port, iters, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    out = {}
    try:
        dist.init_process_group("nccl", rank=rank, world_size=WORLD)
        # int32 and in place: int64 temporaries would hold 4 GiB of the 8 GiB cap.
        base = torch.arange(N, dtype=torch.int32, device=dev).remainder_(1024).to(torch.float32)
        t = base + rank
        dist.all_reduce(t)
        torch.cuda.synchronize(dev)
        base.mul_(2).add_(1)  # the expected sum, in place: 1 GiB less to hold
        out["sum_ok"] = int(torch.equal(t, base))
        del base
        dist.barrier(device_ids=[rank])
        start = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(t)
        torch.cuda.synchronize(dev)
        out["allreduce_ms"] = f"{(time.perf_counter() - start) * 1000 / max(iters, 1):.2f}"
        free, total = torch.cuda.mem_get_info(dev)
        out["total_MiB"] = total // MiB
        out["charged_MiB"] = (total - free) // MiB
        out["reserved_MiB"] = torch.cuda.memory_reserved(dev) // MiB
        # Both ranks read NVML while both still hold their NCCL buffers.
        dist.barrier(device_ids=[rank])
        out["nvml_proc_MiB"] = nvml_proc_mib(os.getpid())
        dist.barrier(device_ids=[rank])
        dist.destroy_process_group()
    except Exception as e:  # noqa: BLE001 - reported, and the verdict fails
        out["error"] = f"{type(e).__name__}: " + (str(e).splitlines() or [""])[0][:200]
    results.put((rank, out))


def main():
    iters = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print("torch", torch.__version__)
    print("nccl", ".".join(map(str, torch.cuda.nccl.version())))
    print("device_count", torch.cuda.device_count())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(rank_main, args=(port, iters, results), nprocs=WORLD, join=True, start_method="spawn")
    got = {}
    while not results.empty():
        rank, out = results.get()
        got[rank] = out
    ok = len(got) == WORLD
    for rank in sorted(got):
        for k, v in got[rank].items():
            print(f"{k}_{rank}", v)
        ok = ok and got[rank].get("sum_ok") == 1 and "error" not in got[rank]
    print("VERDICT nccl", "PASS" if ok else "FAIL", f"ranks_reported={len(got)}")


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main()
