"""vLLM-style worker for bench/gpu/footprint.sh (issue 19): run under libvgpu's preload.

NVML first, a ~1.1B-parameter model (transformers' Llama if importable, else plain torch of the
same shape), a profile pass, a KV cache sized from mem_get_info to UTIL of its total, CUDA graphs
for 7 batch sizes and their replay. After each stage it prints one line

    STAGE <name> ours_free=<bytes> ours_total=<bytes> outside=<bytes> pid=<pid>

where ours_* is torch.cuda.mem_get_info() (libvgpu's view) and outside is this process's
used_memory from nvidia-smi --query-compute-apps run without the preload. Exit 0 unless an
allocation was refused (then it prints REFUSED and exits 3).
"""
import ctypes
import os
import subprocess
import sys
import time

UTIL = float(os.environ.get("UTIL", "0.90"))
MIB = 1 << 20


def nvml_first():
    nv = ctypes.CDLL("libnvidia-ml.so.1")
    assert nv.nvmlInit_v2() == 0
    h = ctypes.c_void_p()
    assert nv.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(h)) == 0

    class Mem(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    m = Mem()
    assert nv.nvmlDeviceGetMemoryInfo(h, ctypes.byref(m)) == 0
    print(f"NVML total={m.total} used={m.used}", flush=True)


def outside(pid):
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    total = 0
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            total += int(parts[1]) * MIB
    return total


def stage(torch, name):
    torch.cuda.synchronize()
    # Let libvgpu's reconciliation interval (LIBVGPU_RECONCILE_MS, 100 ms) pass, as an idle
    # moment in a real worker would.
    time.sleep(0.25)
    free, total = torch.cuda.mem_get_info()
    seen = outside(os.getpid())
    print(f"STAGE {name} ours_free={free} ours_total={total} outside={seen} pid={os.getpid()}", flush=True)
    return free, total


def build_model(torch):
    # TinyLlama-1.1B's shape, random weights (nothing downloaded).
    cfg = dict(vocab=32000, hidden=2048, inter=5632, layers=22, heads=32, kv_heads=4)
    try:
        from transformers import LlamaConfig, LlamaForCausalLM

        c = LlamaConfig(
            vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], intermediate_size=cfg["inter"],
            num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
            num_key_value_heads=cfg["kv_heads"], max_position_embeddings=2048,
        )
        with torch.device("cuda"):
            model = LlamaForCausalLM(c).to(torch.bfloat16).eval()
        print("MODEL transformers LlamaForCausalLM (TinyLlama-1.1B shape, random weights)", flush=True)

        def forward(ids):
            return model(input_ids=ids, use_cache=False).logits

        return model, forward
    except ImportError as e:
        print(f"MODEL plain torch (transformers not importable: {e}); same shape as TinyLlama-1.1B", flush=True)
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            h, i = cfg["hidden"], cfg["inter"]
            kv = h // cfg["heads"] * cfg["kv_heads"]
            self.qkv = nn.Linear(h, h + 2 * kv, bias=False)
            self.o = nn.Linear(h, h, bias=False)
            self.up = nn.Linear(h, 2 * i, bias=False)
            self.down = nn.Linear(i, h, bias=False)
            self.n1 = nn.LayerNorm(h)
            self.n2 = nn.LayerNorm(h)

        def forward(self, x):
            h = cfg["hidden"]
            q = self.qkv(self.n1(x))[..., :h]
            x = x + self.o(torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True))
            g, u = self.up(self.n2(x)).chunk(2, dim=-1)
            return x + self.down(torch.nn.functional.silu(g) * u)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(cfg["vocab"], cfg["hidden"])
            self.blocks = nn.ModuleList(Block() for _ in range(cfg["layers"]))
            self.head = nn.Linear(cfg["hidden"], cfg["vocab"], bias=False)

        def forward(self, ids):
            x = self.emb(ids)
            for b in self.blocks:
                x = b(x)
            return self.head(x)

    with torch.device("cuda"):
        model = Model().to(torch.bfloat16).eval()
    return model, model


def main():
    nvml_first()
    import torch

    try:
        model, forward = build_model(torch)
        n = sum(p.numel() for p in model.parameters())
        print(f"PARAMS {n}", flush=True)
        stage(torch, "model")
        # Profile pass: the largest batch of tokens the worker will see.
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            forward(torch.randint(0, 32000, (8, 512), device="cuda"))
        torch.cuda.synchronize()
        peak_activation = torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()
        torch.cuda.empty_cache()
        free, total = stage(torch, "profile")
        # vLLM: KV cache = util * total - what is in use - the activation peak.
        kv_bytes = int(UTIL * total) - (total - free) - peak_activation
        print(f"KV util={UTIL} bytes={kv_bytes} peak_activation={peak_activation}", flush=True)
        kv = torch.empty(max(kv_bytes, 0), dtype=torch.uint8, device="cuda")
        kv.fill_(1)
        stage(torch, "kv_cache")
        # CUDA graphs for 7 decode batch sizes, one shared pool (as vLLM), then replay.
        pool = torch.cuda.graph_pool_handle()
        graphs = []
        with torch.inference_mode():
            for bs in (64, 32, 16, 8, 4, 2, 1):
                ids = torch.randint(0, 32000, (bs, 1), device="cuda")
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    forward(ids)  # warm-up outside capture
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                try:
                    with torch.cuda.graph(g, pool=pool):
                        out = forward(ids)
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as e:  # a model whose forward cannot be captured
                    print(f"GRAPH bs={bs} full forward not capturable ({type(e).__name__}); capturing its MLPs", flush=True)
                    mlps = [m for m in model.modules() if type(m).__name__ in ("LlamaMLP", "Block")]
                    x = torch.randn(bs, 1, 2048, device="cuda", dtype=torch.bfloat16)
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g, pool=pool):
                        out = x
                        for m in mlps:
                            out = m(out)
                graphs.append((g, ids, out))
        stage(torch, "graphs")
        for _ in range(5):
            for g, _, _ in graphs:
                g.replay()
        stage(torch, "replay")
        del kv
    except torch.cuda.OutOfMemoryError as e:
        print(f"REFUSED {e}", flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
