"""One of several PyTorch processes sharing a container's cap (bench/gpu/region_acceptance.sh).

Usage: torch_share.py NAME GIB CTL_DIR
Tries to allocate GIB GiB in one tensor, reports to CTL_DIR/NAME.state, then obeys commands
written to CTL_DIR/NAME.cmd: "retry" (try the allocation again if it failed) or "exit".
"""
import os
import sys
import time

import torch

name, gib, ctl = sys.argv[1], float(sys.argv[2]), sys.argv[3]
state_path = os.path.join(ctl, name + ".state")
cmd_path = os.path.join(ctl, name + ".cmd")


def report(text):
    tmp = state_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, state_path)
    print(f"{name}: {text}", flush=True)


def attempt():
    try:
        t = torch.empty(int(gib * (1 << 30)), dtype=torch.uint8, device="cuda")
        t.fill_(1)
        torch.cuda.synchronize()
        return t, f"allocated {gib:g} GiB pid={os.getpid()}"
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        return None, f"oom-clean pid={os.getpid()} {str(e).splitlines()[0][:100]}"


torch.zeros(1, device="cuda")
free, total = torch.cuda.mem_get_info()
print(f"{name}: mem_get_info free={free >> 20} MiB total={total >> 20} MiB", flush=True)
held, status = attempt()
report(status)
deadline = time.time() + 120
while time.time() < deadline:
    if os.path.exists(cmd_path):
        cmd = open(cmd_path).read().strip()
        os.remove(cmd_path)
        if cmd == "exit":
            break
        if cmd == "retry" and held is None:
            held, status = attempt()
            report("retry " + status)
    time.sleep(0.05)
