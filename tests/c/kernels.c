/* A compute-bound job for the fake driver's simulated GPU: N launches of a D µs kernel on
 * one stream, as fast as the driver (and any limiter in between) lets them go. It measures
 * the share of GPU time it achieved: the GPU time it asked for over the wall time it took.
 *
 *   kernels [--us D] [--n N] [--sync-every K] [--graph K] [--launch kernel|ex|coop]
 *           [--stream created|legacy|per-thread] [--ptsz] [--dlsym] [--version V]
 *           [--device I] [--start-at NS] [--pause-us P] [--host-us H] [--ms T]
 *
 * The kernel is fakegpu's "sleep_us_<D>" function (see crates/fakegpu/src/state/events.rs).
 * Functions are found as cudart finds them: dlopen("libcuda.so.1"), dlsym of
 * cuGetProcAddress_v2 only, then cuGetProcAddress_v2(base name, V, flags) (flags 2 with
 * --ptsz); with --dlsym, dlsym of every exported name (the _ptsz names with --ptsz). So
 * an LD_PRELOAD interposer sees the launches through the door a real application uses.
 *
 * --graph K captures K launches into a graph first (not timed) and replays it N times.
 * --sync-every K synchronises the stream after every K launches (0, the default: only at
 * the end); --pause-us P then sleeps P µs after each of those waits, as a job that works on
 * every result on the host would. --host-us H works H µs on the host (a busy loop) after every
 * launch, as a host-bound loop of small kernels (a Python training step) does. --ms T launches
 * until T ms have passed instead of N times, so several processes overlap for the same time.
 * --start-at NS sleeps until CLOCK_MONOTONIC reaches NS before starting, so
 * several processes can start together. One line is printed:
 *
 *   launches=<api launches> kernels=<kernels> us=<D> wall_ms=<ms> gpu_ms=<ms> share=<ratio>
 *   event_ms=<ms between events recorded before the first and after the last launch>
 *   start_ns=<CLOCK_MONOTONIC before the first launch> end_ns=<... after the final sync>
 *
 * (start_ns/end_ns let a test put several processes' runs on one time axis.)
 *
 * On a failed call: "kernels: <call> failed: <code>" on stderr, exit status 1; bad
 * arguments: exit status 2. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vgpu_cuda.h"

/* What vgpu_cuda.h does not declare (from the public driver API documentation). */
typedef struct vgpu_opaque_module *CUmodule;
typedef struct vgpu_opaque_function *CUfunction;
typedef struct vgpu_opaque_event *CUevent;
typedef struct vgpu_opaque_graph *CUgraph;
typedef struct vgpu_opaque_graph_exec *CUgraphExec;
typedef struct {
    unsigned int gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ;
    unsigned int sharedMemBytes;
    CUstream hStream;
    void *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;
#define STREAM_LEGACY ((CUstream)(uintptr_t)1)
#define STREAM_PER_THREAD ((CUstream)(uintptr_t)2)

/* X(field, base name, exported name, per-thread exported name or NULL, signature) */
#define API(X)                                                                               \
    X(init, "cuInit", "cuInit", NULL, (unsigned))                                            \
    X(retain, "cuDevicePrimaryCtxRetain", "cuDevicePrimaryCtxRetain", NULL, (CUcontext *, int)) \
    X(set_current, "cuCtxSetCurrent", "cuCtxSetCurrent", NULL, (CUcontext))                  \
    X(load, "cuModuleLoadData", "cuModuleLoadData", NULL, (CUmodule *, const void *))        \
    X(get_function, "cuModuleGetFunction", "cuModuleGetFunction", NULL,                     \
      (CUfunction *, CUmodule, const char *))                                                \
    X(stream_create, "cuStreamCreate", "cuStreamCreate", NULL, (CUstream *, unsigned))       \
    X(stream_sync, "cuStreamSynchronize", "cuStreamSynchronize", "cuStreamSynchronize_ptsz", \
      (CUstream))                                                                            \
    X(event_create, "cuEventCreate", "cuEventCreate", NULL, (CUevent *, unsigned))           \
    X(event_record, "cuEventRecord", "cuEventRecord", "cuEventRecord_ptsz", (CUevent, CUstream)) \
    X(event_sync, "cuEventSynchronize", "cuEventSynchronize", NULL, (CUevent))               \
    X(elapsed, "cuEventElapsedTime", "cuEventElapsedTime", NULL, (float *, CUevent, CUevent)) \
    X(launch, "cuLaunchKernel", "cuLaunchKernel", "cuLaunchKernel_ptsz",                     \
      (CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,     \
       CUstream, void **, void **))                                                          \
    X(launch_ex, "cuLaunchKernelEx", "cuLaunchKernelEx", "cuLaunchKernelEx_ptsz",            \
      (const CUlaunchConfig *, CUfunction, void **, void **))                                \
    X(launch_coop, "cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel",                 \
      "cuLaunchCooperativeKernel_ptsz",                                                      \
      (CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,     \
       CUstream, void **))                                                                   \
    X(begin_capture, "cuStreamBeginCapture", "cuStreamBeginCapture_v2",                      \
      "cuStreamBeginCapture_v2_ptsz", (CUstream, unsigned))                                  \
    X(end_capture, "cuStreamEndCapture", "cuStreamEndCapture", "cuStreamEndCapture_ptsz",    \
      (CUstream, CUgraph *))                                                                 \
    X(instantiate, "cuGraphInstantiateWithFlags", "cuGraphInstantiateWithFlags", NULL,       \
      (CUgraphExec *, CUgraph, unsigned long long))                                          \
    X(graph_launch, "cuGraphLaunch", "cuGraphLaunch", "cuGraphLaunch_ptsz", (CUgraphExec, CUstream))

static struct {
#define FIELD(field, base, name, ptsz, args) CUresult(*field) args;
    API(FIELD)
#undef FIELD
} cu;

#define CHECK(call)                                                              \
    do {                                                                         \
        CUresult r_ = (call);                                                    \
        if (r_ != CUDA_SUCCESS) {                                                \
            fprintf(stderr, "kernels: %s failed: %u\n", #call, r_);              \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long arg_long(int argc, char **argv, int *i)
{
    char *end = NULL;
    long v;
    if (*i + 1 >= argc) {
        fprintf(stderr, "%s needs a value\n", argv[*i]);
        exit(2);
    }
    v = strtol(argv[++*i], &end, 10);
    if (*end != '\0' || v < 0) {
        fprintf(stderr, "bad value for %s: %s\n", argv[*i - 1], argv[*i]);
        exit(2);
    }
    return v;
}

static void resolve(int use_dlsym, int version, int ptsz)
{
    typedef CUresult (*get_proc_t)(const char *, void **, int, unsigned long long,
                                   CUdriverProcAddressQueryResult *);
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    get_proc_t get_proc = lib ? (get_proc_t)dlsym(lib, "cuGetProcAddress_v2") : NULL;
    if (get_proc == NULL) {
        fprintf(stderr, "kernels: no libcuda.so.1 with cuGetProcAddress_v2: %s\n", dlerror());
        exit(1);
    }
#define RESOLVE(field, base, name, ptsz_name, args)                                         \
    {                                                                                       \
        void *p = NULL;                                                                     \
        CUdriverProcAddressQueryResult st = 0;                                              \
        if (use_dlsym)                                                                      \
            p = dlsym(lib, ptsz && (ptsz_name) ? (const char *)(ptsz_name) : (name));       \
        else if (get_proc(base, &p, version, ptsz ? 2 : 0, &st) != CUDA_SUCCESS)            \
            p = NULL;                                                                       \
        if (p == NULL) {                                                                    \
            fprintf(stderr, "kernels: cannot resolve %s\n", base);                          \
            exit(1);                                                                        \
        }                                                                                   \
        memcpy(&cu.field, &p, sizeof p);                                                    \
    }
    API(RESOLVE)
#undef RESOLVE
}

enum { LAUNCH_KERNEL, LAUNCH_EX, LAUNCH_COOP };

static void launch(int how, CUfunction f, CUstream s)
{
    CUlaunchConfig config = { 1, 1, 1, 32, 1, 1, 0, s, NULL, 0 };
    switch (how) {
    case LAUNCH_EX: CHECK(cu.launch_ex(&config, f, NULL, NULL)); break;
    case LAUNCH_COOP: CHECK(cu.launch_coop(f, 1, 1, 1, 32, 1, 1, 0, s, NULL)); break;
    default: CHECK(cu.launch(f, 1, 1, 1, 32, 1, 1, 0, s, NULL, NULL)); break;
    }
}

int main(int argc, char **argv)
{
    long us = 500, n = 1000, sync_every = 0, graph_k = 0, version = 12080, device = 0, pause_us = 0;
    long host_us = 0, run_ms = 0;
    long long start_at = 0;
    int use_dlsym = 0, ptsz = 0, how = LAUNCH_KERNEL;
    const char *stream_kind = "created";

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--us") == 0) us = arg_long(argc, argv, &i);
        else if (strcmp(a, "--n") == 0) n = arg_long(argc, argv, &i);
        else if (strcmp(a, "--sync-every") == 0) sync_every = arg_long(argc, argv, &i);
        else if (strcmp(a, "--graph") == 0) graph_k = arg_long(argc, argv, &i);
        else if (strcmp(a, "--version") == 0) version = arg_long(argc, argv, &i);
        else if (strcmp(a, "--device") == 0) device = arg_long(argc, argv, &i);
        else if (strcmp(a, "--start-at") == 0) start_at = arg_long(argc, argv, &i);
        else if (strcmp(a, "--pause-us") == 0) pause_us = arg_long(argc, argv, &i);
        else if (strcmp(a, "--host-us") == 0) host_us = arg_long(argc, argv, &i);
        else if (strcmp(a, "--ms") == 0) run_ms = arg_long(argc, argv, &i);
        else if (strcmp(a, "--dlsym") == 0) use_dlsym = 1;
        else if (strcmp(a, "--ptsz") == 0) ptsz = 1;
        else if (strcmp(a, "--launch") == 0 && i + 1 < argc) {
            a = argv[++i];
            how = strcmp(a, "ex") == 0 ? LAUNCH_EX : strcmp(a, "coop") == 0 ? LAUNCH_COOP : LAUNCH_KERNEL;
            if (how == LAUNCH_KERNEL && strcmp(a, "kernel") != 0) {
                fprintf(stderr, "--launch takes kernel, ex or coop\n");
                return 2;
            }
        } else if (strcmp(a, "--stream") == 0 && i + 1 < argc) {
            stream_kind = argv[++i];
        } else {
            fprintf(stderr, "unknown option %s (see the comment at the top of kernels.c)\n", a);
            return 2;
        }
    }

    resolve(use_dlsym, (int)version, ptsz);
    CUcontext ctx = NULL;
    CUmodule module = NULL;
    CUfunction f = NULL;
    CUstream s = NULL;
    CUevent e0 = NULL, e1 = NULL;
    CUgraphExec exec = NULL;
    char name[64];
    CHECK(cu.init(0));
    CHECK(cu.retain(&ctx, (int)device));
    CHECK(cu.set_current(ctx));
    CHECK(cu.load(&module, "fakegpu"));
    snprintf(name, sizeof name, "sleep_us_%ld", us);
    CHECK(cu.get_function(&f, module, name));
    if (strcmp(stream_kind, "created") == 0)
        CHECK(cu.stream_create(&s, 0));
    else if (strcmp(stream_kind, "legacy") == 0)
        s = STREAM_LEGACY;
    else if (strcmp(stream_kind, "per-thread") == 0)
        s = STREAM_PER_THREAD;
    else {
        fprintf(stderr, "--stream takes created, legacy or per-thread\n");
        return 2;
    }
    CHECK(cu.event_create(&e0, 0));
    CHECK(cu.event_create(&e1, 0));
    if (graph_k > 0) {
        CUgraph graph = NULL;
        CHECK(cu.begin_capture(s, 0 /* global */));
        for (long k = 0; k < graph_k; k++)
            launch(how, f, s);
        CHECK(cu.end_capture(s, &graph));
        CHECK(cu.instantiate(&exec, graph, 0));
    }
    if (start_at > 0) {
        struct timespec ts = { start_at / 1000000000LL, start_at % 1000000000LL };
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0)
            ;
    }

    long long t0 = now_ns();
    CHECK(cu.event_record(e0, s));
    long done = 0;
    for (long i = 0; run_ms > 0 ? now_ns() - t0 < run_ms * 1000000LL : i < n; i++) {
        if (exec != NULL)
            CHECK(cu.graph_launch(exec, s));
        else
            launch(how, f, s);
        done++;
        if (host_us > 0) {
            long long until = now_ns() + host_us * 1000LL;
            while (now_ns() < until)
                ;
        }
        if (sync_every > 0 && (i + 1) % sync_every == 0) {
            CHECK(cu.stream_sync(s));
            if (pause_us > 0) {
                struct timespec ts = { pause_us / 1000000, (pause_us % 1000000) * 1000 };
                nanosleep(&ts, NULL);
            }
        }
    }
    CHECK(cu.event_record(e1, s));
    CHECK(cu.stream_sync(s));
    long long t1 = now_ns();
    CHECK(cu.event_sync(e1));
    float event_ms = 0;
    CHECK(cu.elapsed(&event_ms, e0, e1));

    n = done;
    long kernels = n * (graph_k > 0 ? graph_k : 1);
    double wall_ms = (t1 - t0) / 1e6, gpu_ms = kernels * (double)us / 1e3;
    printf("launches=%ld kernels=%ld us=%ld wall_ms=%.3f gpu_ms=%.3f share=%.4f event_ms=%.3f "
           "start_ns=%lld end_ns=%lld\n",
           n, kernels, us, wall_ms, gpu_ms, wall_ms > 0 ? gpu_ms / wall_ms : 0.0, event_ms, t0, t1);
    return 0;
}
