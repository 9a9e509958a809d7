/* libvgpu's added cost per call, measured inside ONE process: the driver's function (linked
 * with -lcuda, no LD_PRELOAD) and libvgpu's hook of it (libvgpu.so dlopen'ed RTLD_LOCAL, its
 * export found with dlsym) are timed in alternating blocks on the same thread, core and caches.
 * Separate processes vary by up to 2x on the H200 host for a 1 us call (session 5), which hides a
 * 2 % budget; here both sides share every condition but the hook.
 *
 *   inproc_ab LIBVGPU.so [-r ROUNDS] [-n CALLS] [OP,OP,...|all]
 *
 * Ops: async_free (cuMemAllocAsync + cuMemFreeAsync of 1 MiB on stream 0, a pool hit: the
 * default pool keeps its memory), alloc_free (cuMemAlloc_v2 + cuMemFree_v2 of 1 MiB), launch
 * (cuLaunchKernel of an empty kernel loaded from PTX, in batches of 256 with an untimed
 * synchronisation between), meminfo (cuMemGetInfo_v2), stream_sync (cuStreamSynchronize on an
 * idle stream). The library reads its variables at its first call: set CUDA_DEVICE_MEMORY_LIMIT
 * (or CUDA_DEVICE_SM_LIMIT) in the environment for the capped figures.
 *
 * Prints per op: `ab OP real_ns=R hook_ns=H added_ns=D ratio=Q rounds=K d_range=LO..HI`, with R
 * and H the medians over rounds of the per-call means and D the median of the per-round
 * differences (the figure to read; d_range is its spread). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vgpu_cuda.h"

/* Not in vgpu_cuda.h: the driver API signatures this benchmark alone needs. */
typedef struct vgpu_opaque_module *CUmodule;
typedef struct vgpu_opaque_function *CUfunction;
CUresult cuModuleLoadData(CUmodule *module, const void *image);
CUresult cuModuleGetFunction(CUfunction *f, CUmodule module, const char *name);
CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int shared,
                        CUstream stream, void **params, void **extra);
CUresult cuStreamSynchronize(CUstream stream);
CUresult cuCtxSynchronize(void);
CUresult cuMemPoolSetAttribute(CUmemoryPool pool, int attr, void *value);
#define MEMPOOL_ATTR_RELEASE_THRESHOLD 4

static const char PTX[] = ".version 8.0\n.target sm_90\n.address_size 64\n"
                          ".visible .entry vgpu_empty()\n{\n\tret;\n}\n";

#define MIB (1ull << 20)
#define MAX_ROUNDS 201
#define BATCH 256

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* One side of the comparison: the driver's functions or the hooks. */
struct side {
    CUresult (*alloc_async)(CUdeviceptr *, size_t, CUstream);
    CUresult (*free_async)(CUdeviceptr, CUstream);
    CUresult (*alloc)(CUdeviceptr *, size_t);
    CUresult (*free)(CUdeviceptr);
    CUresult (*launch)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                       unsigned, CUstream, void **, void **);
    CUresult (*meminfo)(size_t *, size_t *);
    CUresult (*stream_sync)(CUstream);
};

static CUfunction kernel;
static long bad;

/* Per-call nanoseconds of `n` calls of `op` through side `s`. */
static double run(const struct side *s, const char *op, long n)
{
    uint64_t t0, spent = 0;
    CUdeviceptr p;
    size_t f, t;
    if (strcmp(op, "async_free") == 0) {
        t0 = now_ns();
        for (long i = 0; i < n; i++) {
            bad += s->alloc_async(&p, MIB, NULL) != 0;
            bad += s->free_async(p, NULL) != 0;
        }
        spent = now_ns() - t0;
        cuCtxSynchronize();
    } else if (strcmp(op, "alloc_free") == 0) {
        t0 = now_ns();
        for (long i = 0; i < n; i++) {
            bad += s->alloc(&p, MIB) != 0;
            bad += s->free(p) != 0;
        }
        spent = now_ns() - t0;
    } else if (strcmp(op, "launch") == 0) {
        for (long done = 0; done < n; done += BATCH) {
            t0 = now_ns();
            for (int i = 0; i < BATCH; i++)
                bad += s->launch(kernel, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL) != 0;
            spent += now_ns() - t0;
            cuCtxSynchronize();
        }
        n = (n + BATCH - 1) / BATCH * BATCH;
    } else if (strcmp(op, "meminfo") == 0) {
        t0 = now_ns();
        for (long i = 0; i < n; i++)
            bad += s->meminfo(&f, &t) != 0;
        spent = now_ns() - t0;
    } else if (strcmp(op, "stream_sync") == 0) {
        t0 = now_ns();
        for (long i = 0; i < n; i++)
            bad += s->stream_sync(NULL) != 0;
        spent = now_ns() - t0;
    } else {
        return -1;
    }
    return (double)spent / (double)n;
}

static void *need(void *lib, const char *name)
{
    void *f = dlsym(lib, name);
    if (!f) {
        fprintf(stderr, "inproc_ab: libvgpu exports no %s\n", name);
        exit(2);
    }
    return f;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: inproc_ab LIBVGPU.so [-r ROUNDS] [-n CALLS] [OP,...|all]\n");
        return 2;
    }
    int rounds = 21;
    long n = 4000;
    const char *ops = "all";
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "-r") == 0 && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
            n = atol(argv[++i]);
        else
            ops = argv[i];
    }
    if (rounds < 1 || rounds > MAX_ROUNDS || n < 1) {
        fprintf(stderr, "inproc_ab: rounds 1..%d, calls >= 1\n", MAX_ROUNDS);
        return 2;
    }
    if (strcmp(ops, "all") == 0)
        ops = "launch,async_free,alloc_free,meminfo,stream_sync";

    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "inproc_ab: %s\n", dlerror());
        return 2;
    }
    struct side real = {cuMemAllocAsync, cuMemFreeAsync, cuMemAlloc_v2, cuMemFree_v2,
                        cuLaunchKernel, cuMemGetInfo_v2, cuStreamSynchronize};
    struct side hook = {need(lib, "cuMemAllocAsync"), need(lib, "cuMemFreeAsync"),
                        need(lib, "cuMemAlloc_v2"),   need(lib, "cuMemFree_v2"),
                        need(lib, "cuLaunchKernel"),  need(lib, "cuMemGetInfo_v2"),
                        need(lib, "cuStreamSynchronize")};
    CUresult (*retain)(CUcontext *, CUdevice) = need(lib, "cuDevicePrimaryCtxRetain");

    CUcontext ctx;
    CUmodule module;
    CUmemoryPool pool;
    uint64_t keep = UINT64_MAX;
    /* The context through the hook, so that libvgpu knows it (and charges it under a cap). */
    if (cuInit(0) != 0 || retain(&ctx, 0) != 0 || cuCtxSetCurrent(ctx) != 0) {
        fprintf(stderr, "inproc_ab: no CUDA context\n");
        return 1;
    }
    if (cuDeviceGetDefaultMemPool(&pool, 0) == 0)
        cuMemPoolSetAttribute(pool, MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep);
    if (cuModuleLoadData(&module, PTX) != 0 || cuModuleGetFunction(&kernel, module, "vgpu_empty") != 0)
        kernel = (CUfunction)(uintptr_t)0x1000; /* the fake driver takes any handle */

    char *list = strdup(ops);
    for (char *op = strtok(list, ","); op; op = strtok(NULL, ",")) {
        double r[MAX_ROUNDS], h[MAX_ROUNDS], d[MAX_ROUNDS];
        /* Warm-up of both sides: lazy binding, the pool's growth, libvgpu's lazy state. */
        if (run(&real, op, n / 4 + 1) < 0) {
            fprintf(stderr, "inproc_ab: unknown op %s\n", op);
            return 2;
        }
        run(&hook, op, n / 4 + 1);
        for (int k = 0; k < rounds; k++) {
            if (k % 2) {
                h[k] = run(&hook, op, n);
                r[k] = run(&real, op, n);
            } else {
                r[k] = run(&real, op, n);
                h[k] = run(&hook, op, n);
            }
            d[k] = h[k] - r[k];
        }
        double dm = median(d, rounds), lo = d[0], hi = d[rounds - 1];
        double rm = median(r, rounds), hm = median(h, rounds);
        printf("ab %s real_ns=%.1f hook_ns=%.1f added_ns=%.1f ratio=%.4f rounds=%d d_range=%.1f..%.1f\n",
               op, rm, hm, dm, (rm + dm) / rm, rounds, lo, hi);
        fflush(stdout);
    }
    free(list);
    if (bad)
        fprintf(stderr, "inproc_ab: %ld calls failed\n", bad);
    return bad ? 1 : 0;
}
