"""Fill CUDA devices until out of memory and hold the memory, for multi_gpu.sh.

usage: multi_gpu_fill.py DEVICES RELEASE_FILE [HOLD_S]
  DEVICES       comma list of CUDA ordinals (as this process numbers them), filled in order
  RELEASE_FILE  once everything is held, "HOLDING" is printed and the memory is kept until
                this file exists (or HOLD_S seconds, default 60, have passed), so that the
                caller can read nvidia-smi from outside while the process holds its peak

Prints "key value" lines, per device d:
  uuid_<d>             the device's UUID as torch reports it (which physical GPU ordinal d is)
  total_MiB_<d>        torch.cuda.mem_get_info total (libvgpu's view: the cap)
  props_total_MiB_<d>  get_device_properties total_memory
  allocated_MiB_<d>    bytes held when the device refused: 256 MiB blocks, then 2 MiB blocks
  oom_<d>              clean (torch.cuda.OutOfMemoryError) or the other error
  recovery_<d>         1 GiB allocates again after everything was freed: ok or the error
A device is touched only when it comes to be filled, so a device not listed gets no context.
"""
import os
import sys
import time

import torch

MiB = 1 << 20
COARSE, FINE = 256 * MiB, 2 * MiB
MAX_BLOCKS = 8192  # bounds a device that never refuses


def first_line(e):
    return f"{type(e).__name__}: " + (str(e).splitlines() or [""])[0][:160]


def fill(dev, held):
    """Allocate on `dev` until it refuses; returns (bytes held, oom description)."""
    got, oom = 0, "no OOM within bound"
    for block in (COARSE, FINE):
        for _ in range(MAX_BLOCKS):
            try:
                held.append(torch.empty(block, dtype=torch.uint8, device=dev))
                got += block
            except torch.cuda.OutOfMemoryError:
                oom = "clean"
                break
            except Exception as e:  # noqa: BLE001 - anything but a clean OOM is a finding
                return got, first_line(e)
    return got, oom


def main():
    devices = [int(d) for d in sys.argv[1].split(",") if d != ""]
    release = sys.argv[2]
    hold_s = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    print("visible", os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"))
    print("device_count", torch.cuda.device_count())
    held = {}
    for d in devices:
        dev = torch.device("cuda", d)
        props = torch.cuda.get_device_properties(d)
        uuid = getattr(props, "uuid", None)
        print(f"uuid_{d}", f"GPU-{uuid}" if uuid is not None else "unknown")
        free, total = torch.cuda.mem_get_info(dev)
        print(f"total_MiB_{d}", total // MiB)
        print(f"free_MiB_{d}", free // MiB)
        print(f"props_total_MiB_{d}", props.total_memory // MiB)
        held[d] = []
        got, oom = fill(dev, held[d])
        torch.cuda.synchronize(dev)
        print(f"allocated_MiB_{d}", got // MiB)
        print(f"oom_{d}", oom)
        print(f"reserved_MiB_{d}", torch.cuda.memory_reserved(dev) // MiB)
    print("HOLDING", flush=True)
    deadline = time.monotonic() + hold_s
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.1)
    print("released", "file" if os.path.exists(release) else "timeout")
    for d in devices:
        held[d].clear()
        torch.cuda.empty_cache()
        try:
            y = torch.empty(1 << 30, dtype=torch.uint8, device=torch.device("cuda", d))
            y.fill_(1)
            torch.cuda.synchronize(d)
            del y
            print(f"recovery_{d}", "ok")
        except Exception as e:  # noqa: BLE001
            print(f"recovery_{d}", first_line(e))


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main()
