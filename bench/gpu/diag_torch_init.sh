#!/usr/bin/env bash
# Extra diagnostics for the first H200 run: what PyTorch asks for, what the context costs.
LIB=$(realpath "${1:-gpu-artifacts/libvgpu.so}")
echo "## diag: torch init under 4g, log level 4"
timeout -k 5 120 env LD_PRELOAD=$LIB CUDA_DEVICE_MEMORY_LIMIT=4g LIBCUDA_LOG_LEVEL=4 python3 -c "
import torch
torch.zeros(1, device='cuda')
f, t = torch.cuda.mem_get_info(); print('mem_get_info MiB', f >> 20, t >> 20)
x = torch.empty(1 << 30, dtype=torch.uint8, device='cuda'); del x
print('ok')
" > "$OUT/diag_torch.out" 2> "$OUT/diag_torch.err"
echo "rc=$?"; cat "$OUT/diag_torch.out"
grep -v "cuGetProcAddress" "$OUT/diag_torch.err" | head -20
echo "swaps: $(grep -c 'cuGetProcAddress' "$OUT/diag_torch.err")"
grep 'cuGetProcAddress' "$OUT/diag_torch.err" | awk '{print $NF}' | sort | uniq -c | sort -rn | head -40
echo "## diag: nvidia-smi -q memory section under 2g"
timeout -k 5 30 env LD_PRELOAD=$LIB CUDA_DEVICE_MEMORY_LIMIT=2g nvidia-smi -q -d MEMORY | head -30
