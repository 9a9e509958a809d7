"""What PyTorch sees and can allocate under a libvgpu memory cap.

usage: torch_cap.py CAP_MIB|none [LABEL]
Prints "key value" lines and, when a cap is given, one line
  VERDICT torch_cap PASS|FAIL label=... <figures> [failed=<checks>]
Checks: mem_get_info total == cap, device properties total == cap, allocated < cap,
the OOM is a clean torch.cuda.OutOfMemoryError, the true NVML footprint at the peak <= cap,
and allocation works again after freeing.
"""
import os
import subprocess
import sys

import torch

MiB = 1 << 20
BLOCK = 256 * MiB
MAX_BLOCKS = 4096  # 1 TiB: a bound in case allocation never fails

cap = None if len(sys.argv) < 2 or sys.argv[1] in ("", "none") else int(sys.argv[1])
label = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "default")


def footprint_mib():
    """The driver's own count for this process, read from outside by nvidia-smi.

    LD_PRELOAD is dropped so nvidia-smi reports NVML's figures, not libvgpu's view. In a PID
    namespace our pid may not appear: then take the largest process (one GPU test at a time).
    """
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    try:
        out = subprocess.run(
            ["timeout", "-k", "2", "20", "nvidia-smi",
             "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            env=env, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"error:{type(e).__name__}"
    rows = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            rows.append((int(parts[0]), int(parts[1])))
    mine = [m for p, m in rows if p == os.getpid()]
    if mine:
        return mine[0], "pid"
    return (max(m for _, m in rows), "max") if rows else (None, "none")


free, total = torch.cuda.mem_get_info()
props_total = torch.cuda.get_device_properties(0).total_memory
print("label", label)
print("mem_get_info_total_MiB", total // MiB)
print("mem_get_info_free_MiB", free // MiB)
print("props_total_MiB", props_total // MiB)

xs, clean, err = [], False, "no OOM within bound"
try:
    for _ in range(MAX_BLOCKS):
        xs.append(torch.empty(BLOCK, dtype=torch.uint8, device="cuda"))
except torch.cuda.OutOfMemoryError as e:
    clean, err = True, (str(e).splitlines() or [""])[0]
except Exception as e:  # anything else (RuntimeError, a crash in the allocator) is not clean
    err = f"{type(e).__name__}: " + (str(e).splitlines() or [""])[0]
allocated = len(xs) * BLOCK // MiB
print("allocated_MiB", allocated)
print("oom_clean", "yes" if clean else "no")
print("oom_first_line", err[:200])
print("reserved_MiB", torch.cuda.memory_reserved() // MiB)
fp, fp_src = footprint_mib()  # tensors still held: this is the peak
print("footprint_MiB", fp if fp is not None else "unknown", f"({fp_src})")

del xs
torch.cuda.empty_cache()
try:
    y = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y.fill_(1)
    torch.cuda.synchronize()
    recovery = "ok"
    del y
except Exception as e:
    recovery = f"{type(e).__name__}: " + (str(e).splitlines() or [""])[0][:160]
print("recovery", recovery)

if cap is None:
    print("VERDICT torch_cap SKIP label=%s (no cap given)" % label)
    sys.exit(0)

checks = {
    "total": total // MiB == cap,
    "props_total": props_total // MiB == cap,
    "allocated": 0 < allocated < cap,
    "clean_oom": clean,
    "footprint": fp is not None and fp <= cap,
    "recovery": recovery == "ok",
}
failed = [k for k, ok in checks.items() if not ok]
margin = cap - fp if fp is not None else "unknown"
print(f"VERDICT torch_cap {'FAIL' if failed else 'PASS'} label={label} cap={cap} "
      f"total={total // MiB} props={props_total // MiB} allocated={allocated} "
      f"footprint={fp}({fp_src}) margin={margin} recovery={recovery} clean={clean}"
      + (f" failed={','.join(failed)}" if failed else ""))
sys.exit(1 if failed else 0)
