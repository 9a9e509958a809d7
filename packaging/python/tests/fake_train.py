"""A stand-in for `train.py` in `vgpu run --memory 4g -- python train.py`: what a PyTorch job
does to the driver, through ctypes (no framework needed), checked against the expected cap.

    python fake_train.py EXPECTED_TOTAL_BYTES [--preloaded]

cuInit, cuCtxCreate_v2, cuMemGetInfo_v2 (total must be EXPECTED_TOTAL_BYTES), then cuMemAlloc_v2
of 256 MiB blocks until the driver refuses: the refusal must be CUDA_ERROR_OUT_OF_MEMORY (2)
within the expected total; after freeing, one block can be allocated again. With --preloaded,
LD_PRELOAD must start with the library of the installed libvgpu package (what `vgpu run`
found). Used by .ci/wheel.sh against the fake driver (crates/fakegpu); exits non-zero on a
failed check. Prints one line per step.
"""

import ctypes
import os
import sys

CUDA_ERROR_OUT_OF_MEMORY = 2
BLOCK = 256 << 20


def main():
    expected_total = int(sys.argv[1])
    if "--preloaded" in sys.argv[2:]:
        import libvgpu

        first = os.environ.get("LD_PRELOAD", "").replace(" ", ":").split(":")[0]
        print("preload %s" % first)
        if os.path.realpath(first) != libvgpu.library_path():
            sys.exit("LD_PRELOAD starts with %r, not the package's %r" % (first, libvgpu.library_path()))

    cuda = ctypes.CDLL("libcuda.so.1")
    size_p = ctypes.POINTER(ctypes.c_size_t)
    dptr_p = ctypes.POINTER(ctypes.c_uint64)
    cuda.cuInit.argtypes = [ctypes.c_uint]
    cuda.cuDeviceGet.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    cuda.cuCtxCreate_v2.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint, ctypes.c_int]
    cuda.cuMemGetInfo_v2.argtypes = [size_p, size_p]
    cuda.cuMemAlloc_v2.argtypes = [dptr_p, ctypes.c_size_t]
    cuda.cuMemFree_v2.argtypes = [ctypes.c_uint64]

    def check(what, code):
        print("%s %d" % (what, code))
        if code != 0:
            sys.exit("%s failed with CUresult %d" % (what, code))

    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    check("cuInit", cuda.cuInit(0))
    check("cuDeviceGet", cuda.cuDeviceGet(ctypes.byref(dev), 0))
    check("cuCtxCreate_v2", cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev))

    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    check("cuMemGetInfo_v2", cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)))
    print("meminfo free=%d total=%d" % (free.value, total.value))

    blocks, code = [], 0
    while len(blocks) * BLOCK <= 2 * expected_total:  # bounded even if nothing refuses
        p = ctypes.c_uint64()
        code = cuda.cuMemAlloc_v2(ctypes.byref(p), BLOCK)
        if code != 0:
            break
        blocks.append(p.value)
    allocated = len(blocks) * BLOCK
    print("alloc-until-oom code=%d bytes=%d" % (code, allocated))
    for p in blocks:
        cuda.cuMemFree_v2(p)
    p = ctypes.c_uint64()
    again = cuda.cuMemAlloc_v2(ctypes.byref(p), BLOCK)
    print("alloc-after-free code=%d" % again)
    if again == 0:
        cuda.cuMemFree_v2(p.value)

    failures = []
    if total.value != expected_total:
        failures.append("cuMemGetInfo total %d, expected %d" % (total.value, expected_total))
    if code != CUDA_ERROR_OUT_OF_MEMORY:
        failures.append("allocation stopped with CUresult %d, expected %d" % (code, CUDA_ERROR_OUT_OF_MEMORY))
    if not 0 < allocated <= expected_total:
        failures.append("allocated %d bytes, expected some and at most %d" % (allocated, expected_total))
    if again != 0:
        failures.append("allocation after freeing failed with CUresult %d" % again)
    if failures:
        sys.exit("; ".join(failures))
    print("ok: total %d, %d bytes allocated before CUDA_ERROR_OUT_OF_MEMORY" % (total.value, allocated))


if __name__ == "__main__":
    main()
