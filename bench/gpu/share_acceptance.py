"""The compute share on a real GPU, measured from outside: nvidia-smi (without the preload)
samples the GPU's utilisation every 200 ms and each process's SM time every second (pmon)
while tenants (each its own container: its own region file, one shared node table) run
bench/gpu/share_job.py.

Usage: python3 bench/gpu/share_acceptance.py LIB.so [SECTIONS...]
  SECTIONS (default all): single multi burst priority latency
Environment: SECS (measured seconds per run, default 6); WORKLOADS (of the single section,
default "matmul graph small"; matmul always runs alone as the others' reference).

Prints markdown tables: per tenant its limit, the GPU time it got (the whole GPU's utilisation
for a tenant alone; for tenants together, that utilisation split in proportion to their
iterations, see `split`), its throughput against the same workload alone and unlimited, and the
error against the expected share in points; then the mean and max error per section.
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

LIB = os.path.realpath(sys.argv[1])
SECTIONS = sys.argv[2:] or ["single", "multi", "burst", "priority", "latency"]
SECS = float(os.environ.get("SECS", "6"))
HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
WORK = tempfile.mkdtemp(prefix="vgpu-share.")
NODE = os.path.join(WORK, "node")
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_DEVICE_", "LIBVGPU_", "LD_PRELOAD"))}
clock = lambda: time.clock_gettime(time.CLOCK_MONOTONIC)


class Sampler:
    """nvidia-smi without the preload: GPU utilisation (200 ms) and per-process SM % (pmon, 1 s)."""

    def __init__(self):
        self.util, self.pmon = [], []
        self.procs = [
            subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                              "-i", "0", "-lms", "200"], stdout=subprocess.PIPE, text=True, env=CLEAN),
            subprocess.Popen(["nvidia-smi", "pmon", "-i", "0", "-s", "u", "-d", "1"], stdout=subprocess.PIPE,
                             text=True, env=CLEAN),
        ]
        threading.Thread(target=self._read, args=(self.procs[0].stdout, self._util), daemon=True).start()
        threading.Thread(target=self._read, args=(self.procs[1].stdout, self._pmon), daemon=True).start()

    @staticmethod
    def _read(f, sink):
        for line in f:
            sink(clock(), line)

    def _util(self, t, line):
        try:
            self.util.append((t, float(line.strip())))
        except ValueError:
            pass

    def _pmon(self, t, line):
        cols = line.split()
        if line.startswith("#") or len(cols) < 4:
            return
        try:
            self.pmon.append((t, int(cols[1]), float(cols[3])))
        except ValueError:
            pass  # '-' when the process had no sample

    def gpu(self, t0, t1):
        v = [u for t, u in self.util if t0 + 0.3 <= t <= t1]
        return statistics.mean(v) if v else float("nan")

    def proc(self, pid, t0, t1):
        # A pmon line covers the second before it; keep those wholly inside the window.
        v = [u for t, p, u in self.pmon if p == pid and t0 + 1.0 <= t <= t1]
        return statistics.mean(v) if v else float("nan")

    def stop(self):
        for p in self.procs:
            p.terminate()


def tenant(name, work, limit=None, burst=False, priority=None, preload=True, secs=SECS):
    env = dict(CLEAN)
    if preload:
        env.update(LD_PRELOAD=LIB, LIBVGPU_NODE_FILE=NODE,
                   CUDA_DEVICE_MEMORY_SHARED_CACHE=os.path.join(WORK, f"{name}-{time.monotonic_ns()}.cache"))
        if limit:
            env["CUDA_DEVICE_SM_LIMIT"] = str(limit)
        if burst:
            env["LIBVGPU_SM_BURST"] = "1"
        if priority is not None:
            env["CUDA_TASK_PRIORITY"] = str(priority)
    p = subprocess.Popen(["timeout", "-k", "5", str(int(secs + 60)), PY, os.path.join(HERE, "share_job.py"), work,
                          str(secs)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return p


def finish(p):
    out, err = p.communicate()
    m = re.search(r"iters_per_s=([\d.]+) t0=([\d.]+) t1=([\d.]+)", out)
    if not m:
        print(f"<!-- tenant failed: {err.strip()[-300:]} -->")
        return None
    # `timeout` is the parent: the python process is its only child.
    return float(m.group(1)), float(m.group(2)), float(m.group(3))


def child_pid(p):
    try:
        with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
            return int(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return -1


S = Sampler()
time.sleep(1.0)
alone = {}
errors = {}


def run_together(specs):
    """specs: [(name, work, kwargs)] started together; returns [(name, ips, util_pmon, util_gpu)]."""
    procs = [(n, tenant(n, w, **kw)) for n, w, kw in specs]
    time.sleep(0.5)
    pids = [(n, child_pid(p)) for n, p in procs]
    res = [(n, finish(p)) for n, p in procs]
    out = []
    for (n, r), (_, pid) in zip(res, pids):
        if r is None:
            out.append((n, float("nan"), float("nan"), float("nan")))
            continue
        ips, t0, t1 = r
        out.append((n, ips, S.proc(pid, t0, t1), S.gpu(t0, t1)))
    return out


def row(section, label, limit, expect, ips, ref, util, work="matmul"):
    ratio = 100 * ips / ref if ref else float("nan")
    if util != util and work in alone:  # pmon had no figure: throughput times the alone utilisation
        util = ips / alone[work][0] * alone[work][1]
        label += " (util estimated)"
    err = util - expect if expect is not None else float("nan")
    if expect is not None and err == err:
        errors.setdefault(section, []).append(abs(err))
    exp = "-" if expect is None else f"{expect:.1f}"
    print(f"| {label} | {limit} | {util:.1f} | {exp} | {err:+.1f} | {ips:.1f} | {ratio:.1f} |", flush=True)


def split(res):
    """Each tenant's GPU time: the GPU's utilisation (read from outside) split in proportion to
    the tenants' iterations. They run the same kernels at the same clocks, so GPU time follows
    iterations. (pmon's per-process figures, also printed, are not usable for tenants that take
    turns within its 1 s samples: two tenants with equal throughput read 75 and 21 %.)"""
    total_ips = sum(ips for _, ips, _, _ in res if ips == ips)
    out = []
    for n, ips, pm, g in res:
        print(f"<!-- {n}: pmon {pm:.1f} % -->")
        out.append((n, ips, g * ips / total_ips if total_ips else float("nan"), g))
    return out


HEAD = "| tenant | limit | GPU time % (outside) | expected % | error (points) | iters/s | % of alone unlimited |\n|---|---|---|---|---|---|---|"
print(f"# libvgpu compute share on the GPU ({time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}, commit {os.environ.get('COMMIT', 'unknown')})")
print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True,
                     text=True, env=CLEAN).stdout.strip())
print(f"measured {SECS:.0f} s per run; utilisation: nvidia-smi without the preload (GPU every 200 ms; per process: pmon, 1 s)\n")

if "single" in SECTIONS or "multi" in SECTIONS or "burst" in SECTIONS:
    print("## One container alone\n")
    print(HEAD)
    works = os.environ.get("WORKLOADS", "matmul graph small").split() if "single" in SECTIONS else []
    for work in ["matmul"] + [w for w in works if w != "matmul"]:
        [(n, ips, _, util)] = run_together([(work, work, dict(preload=False))])
        alone[work] = (ips, util)
        row("reference", f"{work}, no preload", "-", None, ips, ips, util)
        if work not in works:
            continue
        [(n, ips, _, u)] = run_together([(work, work, dict(limit=None))])
        row("single", f"{work}, preload, unlimited", "-", util, ips, alone[work][0], u)
        for limit in (25, 50, 75):
            [(n, ips, _, u)] = run_together([(work, work, dict(limit=limit))])
            # A ceiling: a job that uses less than its limit keeps its natural share.
            row("single", work, limit, min(limit, util), ips, alone[work][0], u)

if "multi" in SECTIONS:
    print("\n## Containers together (matmul each; expected: limits that fit are ceilings, over 100 % shares in proportion)\n")
    print(HEAD)
    for limits, expect in (((30, 60), (30, 60)), ((20, 30, 40), (20, 30, 40)), ((60, 60), (50, 50)),
                           ((30, None), (30, None))):
        specs = [(f"t{i}", "matmul", dict(limit=l)) for i, l in enumerate(limits)]
        res = split(run_together(specs))
        total = res[0][3]
        for (n, ips, u, _), l, e in zip(res, limits, expect):
            if e is None:  # the unlimited one takes what the limited ones leave
                e = max(0.0, alone["matmul"][1] - sum(x for x in expect if x))
            row("multi", f"{'+'.join(str(x or 'U') for x in limits)}: {n}", l or "unlimited", e, ips,
                alone["matmul"][0], u)
        print(f"| (GPU total) | | {total:.1f} | | | | |")

if "burst" in SECTIONS:
    print("\n## Burst (LIBVGPU_SM_BURST=1: the limit is a guaranteed share, idle time is taken too)\n")
    print(HEAD)
    full = alone["matmul"][1]
    for specs, expect in (([(30, True)], [full]), ([(30, True), (60, False)], [full - 60, 60]),
                          ([(30, True), (60, True)], [full / 3, 2 * full / 3])):
        res = split(run_together([(f"t{i}", "matmul", dict(limit=l, burst=b)) for i, (l, b) in enumerate(specs)]))
        for (n, ips, u, g), (l, b), e in zip(res, specs, expect):
            util = u
            row("burst", f"{'+'.join(f'{x}{chr(98) if y else chr(32)}'.strip() for x, y in specs)}: {n}",
                f"{l}{' burst' if b else ''}", e, ips, alone["matmul"][0], util)

if "priority" in SECTIONS:
    print("\n## Priority: a high-priority container (CUDA_TASK_PRIORITY=0) beside a low-priority one, both unlimited\n")
    print(HEAD)
    res = run_together([("high", "matmul", dict(priority=0)), ("low", "matmul", dict(priority=1))])
    for n, ips, u, _ in split(res):
        print(f"| {n} | - | {u:.1f} | | | {ips:.1f} | {100 * ips / alone['matmul'][0]:.1f} |")

if "latency" in SECTIONS:
    print("\n## Latency of one small kernel (launch + synchronize), 2000 iterations\n")

    def lat(label, limit, neighbour):
        env = dict(CLEAN)
        if limit is not None:
            env.update(LD_PRELOAD=LIB, LIBVGPU_NODE_FILE=NODE, CUDA_DEVICE_SM_LIMIT=str(limit),
                       CUDA_DEVICE_MEMORY_SHARED_CACHE=os.path.join(WORK, f"lat-{time.monotonic_ns()}.cache"))
        nb = None
        if neighbour:
            nb = tenant("nb", "matmul", limit=50 if limit is not None else None, preload=limit is not None, secs=30)
            time.sleep(4)
        out = subprocess.run(["timeout", "-k", "5", "60", PY, os.path.join(HERE, "latency.py"), "2000"], env=env,
                             capture_output=True, text=True).stdout.strip()
        if nb:
            nb.kill()
            nb.communicate()
        print(f"- {label}: {out}", flush=True)

    lat("alone, no preload", None, False)
    lat("alone, SM 50 %", 50, False)
    lat("beside a matmul container, no preload (neither)", None, True)
    lat("beside a matmul container at SM 50 %, SM 50 %", 50, True)

S.stop()
print()
for sec, v in errors.items():
    print(f"{sec}: mean abs error {statistics.mean(v):.2f} points, max {max(v):.2f} ({len(v)} tenants)")
