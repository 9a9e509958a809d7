"""Host-memory oversubscription on the GPU (issue 17), one part per invocation; run by
oversubscribe.sh, which sets the environment (LD_PRELOAD, CUDA_DEVICE_MEMORY_LIMIT=4g,
CUDA_OVERSUBSCRIBE=true, a fresh region) and prints the table. Each part prints one line
`RESULT <json>` (and may print other lines before it).

  sums GIB            GIB of int32 tensors (256 MiB each) with known contents, reduced on the GPU;
                      the sums, the footprint nvidia-smi reports from outside while they are held,
                      how many tensors are managed (spilled) memory, the region's spill counter
  matmul N            bf16 N×N matmul throughput: operands resident vs spilled (cap filled first)
  generate OUT        a transformers causal LM (weights from a config, random, fixed seed) runs
                      greedy generate(); token ids and time per token go to OUT (json)
"""
import ctypes
import json
import os
import subprocess
import sys
import time

import torch

MIB = 1 << 20
CAP_MIB = int(os.environ.get("OVS_CAP_MIB", "4096"))


def result(**kw):
    print("RESULT " + json.dumps(kw), flush=True)


def footprint_mib():
    """The driver's own count for this process, read from outside by nvidia-smi (LD_PRELOAD
    dropped, so NVML's figure and not libvgpu's view). In a PID namespace our pid may not be
    listed: then the largest process is taken (keep the GPU otherwise idle)."""
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
    if rows:
        return max(m for _, m in rows), "largest"
    return None, "none listed"


_cuda = None


def is_managed(ptr):
    """cuPointerGetAttribute(CU_POINTER_ATTRIBUTE_IS_MANAGED): libvgpu spills as managed memory."""
    global _cuda
    if _cuda is None:
        _cuda = ctypes.CDLL("libcuda.so.1")
        _cuda.cuPointerGetAttribute.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64]
    v = ctypes.c_uint(0)
    rc = _cuda.cuPointerGetAttribute(ctypes.byref(v), 8, ctypes.c_uint64(ptr))
    return rc == 0 and v.value != 0


def region_spilled():
    """Device 0's spilled bytes as `vgpu status --json` reads them from the region (or None)."""
    vgpu, cache = os.environ.get("OVS_VGPU"), os.environ.get("CUDA_DEVICE_MEMORY_SHARED_CACHE")
    if not vgpu or not cache:
        return None
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    try:
        out = subprocess.run([vgpu, "status", "--json", "--cache", cache], env=env,
                             capture_output=True, text=True, timeout=20).stdout
        return json.loads(out)["devices"][0]["spilled"]
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        return f"error:{type(e).__name__}"


def expected_sum(n, i):
    """sum over j < n of (j mod 977) + i."""
    q, r = divmod(n, 977)
    return q * (976 * 977 // 2) + r * (r - 1) // 2 + i * n


def sums(gib):
    n = 64 * MIB  # int32 elements: 256 MiB per tensor
    count = gib * 4
    ts = []
    t0 = time.time()
    try:
        for i in range(count):
            t = torch.arange(n, device="cuda", dtype=torch.int32)
            t.remainder_(977).add_(i)
            ts.append(t)
        torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError as e:
        result(part="sums", ok=False, held_gib=len(ts) / 4, error="OutOfMemoryError",
               message=str(e).splitlines()[0][:200])
        return
    fill_s = time.time() - t0
    t0 = time.time()
    got = [int(t.sum(dtype=torch.int64).item()) for t in ts]
    reduce_s = time.time() - t0
    wrong = [i for i, g in enumerate(got) if g != expected_sum(n, i)]
    managed = sum(is_managed(t.data_ptr()) for t in ts)
    fp, how = footprint_mib()
    free, total = torch.cuda.mem_get_info()
    spilled = region_spilled()
    result(part="sums", ok=not wrong, tensors=count, wrong=wrong[:5], managed=managed,
           footprint_mib=fp, footprint_how=how, total_mib=total // MIB, free_mib=free // MIB,
           region_spilled_mib=(spilled // MIB if isinstance(spilled, int) else spilled),
           fill_s=round(fill_s, 2), reduce_s=round(reduce_s, 2),
           reduce_gbps=round(count * 256 * MIB / reduce_s / 1e9, 1))
    del ts
    torch.cuda.empty_cache()


def tflops(a, b, budget_s=3.0):
    c = a @ b
    torch.cuda.synchronize()
    iters, t0 = 0, time.time()
    while True:
        c = a @ b
        iters += 1
        torch.cuda.synchronize()
        el = time.time() - t0
        if el > budget_s or iters >= 200:
            break
    n = a.shape[0]
    return 2 * n ** 3 * iters / el / 1e12, iters


def matmul(n):
    torch.manual_seed(0)
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    resident_managed = is_managed(a.data_ptr()) or is_managed(b.data_ptr())
    res, res_iters = tflops(a, b)
    # Fill what is left under the cap, so the next allocations spill.
    free, _ = torch.cuda.mem_get_info()
    filler = torch.empty(max(free - 256 * MIB, 0), dtype=torch.uint8, device="cuda")
    blocks = []
    while True:  # the caching allocator may still hold a little under the cap: take it
        x = torch.empty(64 * MIB, dtype=torch.uint8, device="cuda")
        blocks.append(x)
        if is_managed(x.data_ptr()):
            break
        if len(blocks) > 64:
            break
    sa, sb = a.clone(), b.clone()
    spilled_managed = is_managed(sa.data_ptr()) and is_managed(sb.data_ptr())
    sp, sp_iters = tflops(sa, sb)
    same = bool(torch.equal(a @ b, sa @ sb))
    result(part="matmul", n=n, resident_tflops=round(res, 1), spilled_tflops=round(sp, 2),
           ratio=round(res / sp, 1) if sp > 0 else None, resident_iters=res_iters, spilled_iters=sp_iters,
           resident_managed=resident_managed, spilled_managed=spilled_managed, same_result=same,
           ok=(not resident_managed) and spilled_managed and same)
    del filler, blocks


def generate(out):
    try:
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM
    except Exception as e:  # noqa: BLE001
        json.dump({"error": f"transformers not importable: {e}"}, open(out, "w"))
        result(part="generate", ok=False, error="transformers not importable")
        return
    layers = int(os.environ.get("OVS_LAYERS", "14"))
    # No weights on the box and no internet: a Llama-shaped model from a config, random weights
    # from a fixed seed (the same in the capped and the uncapped run).
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                      max_position_embeddings=512)
    torch.manual_seed(0)
    t0 = time.time()
    with torch.device("cuda"):
        try:  # transformers' own way to build in fp16 (it sets the default dtype meanwhile)
            model = LlamaForCausalLM._from_config(cfg, torch_dtype=torch.float16)
        except TypeError:
            prev = torch.get_default_dtype()
            torch.set_default_dtype(torch.float16)
            try:
                model = LlamaForCausalLM(cfg)
            finally:
                torch.set_default_dtype(prev)
    model.eval()
    torch.cuda.synchronize()
    build_s = time.time() - t0
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    managed = sum(p.numel() * p.element_size() for p in model.parameters() if is_managed(p.data_ptr()))
    g = torch.Generator(device="cpu").manual_seed(1)
    prompt = torch.randint(0, cfg.vocab_size, (1, 16), generator=g).cuda()
    new = int(os.environ.get("OVS_NEW_TOKENS", "24"))
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
        torch.cuda.synchronize()
        t0 = time.time()
        # min_new_tokens: no early stop at a random EOS, so both runs time the same length.
        ids = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        gen_s = time.time() - t0
    new = ids.shape[1] - prompt.shape[1]
    fp, how = footprint_mib()
    rec = {"transformers": transformers.__version__, "layers": layers, "model_mib": params // MIB,
           "managed_mib": managed // MIB, "ids": ids[0].tolist(), "new_tokens": new,
           "s_per_token": gen_s / new, "build_s": round(build_s, 2), "footprint_mib": fp, "footprint_how": how}
    json.dump(rec, open(out, "w"))
    result(part="generate", **{k: v for k, v in rec.items() if k != "ids"})


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "sums":
        sums(int(sys.argv[2]))
    elif what == "matmul":
        matmul(int(sys.argv[2]))
    elif what == "generate":
        generate(sys.argv[2])
    else:
        sys.exit(f"unknown part {what}")
