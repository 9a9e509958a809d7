/* Overhead benchmark of the hooked driver calls (bench/run_fake.sh times it, tests/budgets.rs
 * counts its instructions under callgrind). Linked with -lcuda: each call binds to the exported
 * symbol it names, so under LD_PRELOAD it enters libvgpu's export (or, for functions libvgpu does
 * not hook, such as cuLaunchKernel, the driver's). NVML and dlsym go through dlopen handles.
 *
 *   bench_api ops [-n N] [OP,OP,...|all]   time N calls of each operation (default 10000, all)
 *   bench_api list                          the operation names
 *   bench_api first-alloc                   cuInit, primary context, 1 MiB allocation, exit
 *   bench_api spawn K ROUNDS                ROUNDS times: start K `first-alloc` children at once
 *
 * `ops` prints `op <name> n=<N> ns=<per call> bad=<failed calls>`. Each operation runs once
 * outside the measurement (warm-up: lazy binding, our lazy state, the driver's first use), then
 * N times inside `bench_op_<name>`, a non-inlined function: `valgrind --tool=callgrind
 * --toggle-collect='bench_op_*' --dump-after='bench_op_*'` gives exactly the loop's instructions,
 * one dump per operation. BENCH_REPEAT=k calls the operation k times per iteration (still counted
 * as one): set for the preloaded run only, it simulates a hook that calls the driver twice, the
 * deliberate regression the budget test must catch.
 *
 * `spawn` prints per round `spawn k=K first_alloc_max_us=.. first_alloc_med_us=.. exit_us=..`:
 * microseconds from just before the first child was started to the last child's (resp. the
 * median child's) first allocation, and to the last child's exit. Children inherit the
 * environment (LD_PRELOAD included) and report through a pipe named by BENCH_FD. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vgpu_cuda.h"
#include "vgpu_nvml.h"

extern char **environ;

/* Not in vgpu_cuda.h (no other test launches): the driver API signature. */
typedef struct vgpu_opaque_function *CUfunction;
CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int shared,
                        CUstream stream, void **params, void **extra);
CUresult cuStreamSynchronize(CUstream stream);

#define NOINLINE __attribute__((noinline, noclone))
#define MIB (1ull << 20)

static int repeat = 1;
static void *cuda_lib, *nvml_lib, *libc_lib;
static nvmlDevice_t nvml_dev;
static nvmlReturn_t (*p_nvmlInit_v2)(void);
static nvmlReturn_t (*p_nvmlDeviceGetHandleByIndex_v2)(unsigned int, nvmlDevice_t *);
static nvmlReturn_t (*p_nvmlDeviceGetMemoryInfo_v2)(nvmlDevice_t, nvmlMemory_v2_t *);

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One call of each operation; nonzero = failed. */
static inline int op_launch(void)
{
    return cuLaunchKernel((CUfunction)(uintptr_t)0x1000, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL) != 0;
}
static inline int op_alloc_free(void)
{
    CUdeviceptr p = 0;
    if (cuMemAlloc_v2(&p, MIB) != 0)
        return 1;
    return cuMemFree_v2(p) != 0;
}
static inline int op_async_free(void)
{
    CUdeviceptr p = 0;
    if (cuMemAllocAsync(&p, MIB, NULL) != 0)
        return 1;
    return cuMemFreeAsync(p, NULL) != 0;
}
static inline int op_stream_sync(void) { return cuStreamSynchronize(NULL) != 0; }
static inline int op_meminfo(void)
{
    size_t f = 0, t = 0;
    return cuMemGetInfo_v2(&f, &t) != 0 || t == 0;
}
static inline int op_procaddr(void)
{
    void *pfn = NULL;
    CUdriverProcAddressQueryResult st = 99;
    return cuGetProcAddress_v2("cuMemAlloc", &pfn, 12000, 0, &st) != 0 || pfn == NULL;
}
static inline int op_dlsym_hooked(void) { return dlsym(cuda_lib, "cuMemAlloc_v2") == NULL; }
static inline int op_dlsym_cuda(void) { return dlsym(cuda_lib, "cuCtxGetDevice") == NULL; }
static inline int op_dlsym_other(void) { return dlsym(libc_lib, "malloc") == NULL; }
static inline int op_dlsym_next(void) { return dlsym(RTLD_NEXT, "malloc") == NULL; }
static inline int op_nvml_meminfo(void)
{
    nvmlMemory_v2_t m;
    memset(&m, 0, sizeof m);
    m.version = NVML_MEMORY_V2;
    return p_nvmlDeviceGetMemoryInfo_v2(nvml_dev, &m) != 0 || m.total == 0;
}

/* The measured loops: one symbol per operation, for callgrind's --toggle-collect. */
#define BENCH(name)                                  \
    NOINLINE long bench_op_##name(long n)            \
    {                                                \
        long bad = 0;                                \
        for (long i = 0; i < n; i++)                 \
            for (int r = 0; r < repeat; r++)         \
                bad += op_##name();                  \
        return bad;                                  \
    }
#define OPS(X)        \
    X(launch)         \
    X(alloc_free)     \
    X(async_free)     \
    X(stream_sync)    \
    X(meminfo)        \
    X(procaddr)       \
    X(dlsym_hooked)   \
    X(dlsym_cuda)     \
    X(dlsym_other)    \
    X(dlsym_next)     \
    X(nvml_meminfo)
OPS(BENCH)

struct op {
    const char *name;
    int (*once)(void);  /* the body, for the warm-up: never enters the measured symbol */
    long (*loop)(long); /* the measured loop */
};
#define ENTRY(name) {#name, op_##name, bench_op_##name},
static const struct op ops[] = {OPS(ENTRY)};
#define NOPS (sizeof ops / sizeof ops[0])

static void die(const char *what, long code)
{
    fprintf(stderr, "bench_api: %s failed (%ld)\n", what, code);
    exit(1);
}

static void cuda_setup(void)
{
    CUcontext ctx = NULL;
    CUresult rc;
    if ((rc = cuInit(0)) != 0)
        die("cuInit", rc);
    if ((rc = cuDevicePrimaryCtxRetain(&ctx, 0)) != 0)
        die("cuDevicePrimaryCtxRetain", rc);
    if ((rc = cuCtxSetCurrent(ctx)) != 0)
        die("cuCtxSetCurrent", rc);
}

static void lib_setup(void)
{
    cuda_lib = dlopen("libcuda.so.1", RTLD_NOW);
    nvml_lib = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    libc_lib = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    if (!cuda_lib || !nvml_lib || !libc_lib)
        die("dlopen", 0);
    p_nvmlInit_v2 = (nvmlReturn_t(*)(void))dlsym(nvml_lib, "nvmlInit_v2");
    p_nvmlDeviceGetHandleByIndex_v2 = (nvmlReturn_t(*)(unsigned int, nvmlDevice_t *))dlsym(
        nvml_lib, "nvmlDeviceGetHandleByIndex_v2");
    p_nvmlDeviceGetMemoryInfo_v2 = (nvmlReturn_t(*)(nvmlDevice_t, nvmlMemory_v2_t *))dlsym(
        nvml_lib, "nvmlDeviceGetMemoryInfo_v2");
    if (!p_nvmlInit_v2 || !p_nvmlDeviceGetHandleByIndex_v2 || !p_nvmlDeviceGetMemoryInfo_v2)
        die("dlsym of NVML", 0);
    nvmlReturn_t n = p_nvmlInit_v2();
    if (n != 0)
        die("nvmlInit_v2", n);
    if ((n = p_nvmlDeviceGetHandleByIndex_v2(0, &nvml_dev)) != 0)
        die("nvmlDeviceGetHandleByIndex_v2", n);
}

static int selected(const char *list, const char *name)
{
    if (!list || strcmp(list, "all") == 0)
        return 1;
    size_t len = strlen(name);
    for (const char *p = list; (p = strstr(p, name)) != NULL; p += len)
        if ((p == list || p[-1] == ',') && (p[len] == ',' || p[len] == 0))
            return 1;
    return 0;
}

static int cmd_ops(int argc, char **argv)
{
    long n = 10000;
    const char *list = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
            n = atol(argv[++i]);
        else
            list = argv[i];
    }
    if (list && strcmp(list, "all") != 0) {
        /* Unknown names are a usage error, not a silently empty run. */
        char *copy = strdup(list), *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            size_t i;
            for (i = 0; i < NOPS && strcmp(ops[i].name, t) != 0; i++)
                ;
            if (i == NOPS) {
                fprintf(stderr, "bench_api: unknown operation %s\n", t);
                return 2;
            }
        }
        free(copy);
    }
    cuda_setup();
    lib_setup();
    for (size_t i = 0; i < NOPS; i++) {
        if (!selected(list, ops[i].name))
            continue;
        /* Warm-up outside the measured symbol, twice (the first call may initialise). */
        int bad = ops[i].once() + ops[i].once();
        if (bad)
            die(ops[i].name, bad);
        uint64_t t0 = now_ns();
        long failed = ops[i].loop(n);
        uint64_t t1 = now_ns();
        printf("op %s n=%ld ns=%.1f bad=%ld\n", ops[i].name, n, (double)(t1 - t0) / (double)n, failed);
        fflush(stdout);
    }
    return 0;
}

static int cmd_first_alloc(void)
{
    cuda_setup();
    CUdeviceptr p = 0;
    CUresult rc = cuMemAlloc_v2(&p, MIB);
    uint64_t t = now_ns();
    if (rc != 0)
        die("cuMemAlloc_v2", rc);
    const char *fd = getenv("BENCH_FD");
    if (fd) {
        if (write(atoi(fd), &t, sizeof t) != (ssize_t)sizeof t)
            die("write to BENCH_FD", errno);
    } else {
        printf("first-alloc t=%llu\n", (unsigned long long)t);
    }
    cuMemFree_v2(p);
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmd_spawn(int k, int rounds)
{
    if (k < 1 || k > 1024 || rounds < 1)
        return 2;
    uint64_t *t = calloc((size_t)k, sizeof *t);
    pid_t *pids = calloc((size_t)k, sizeof *pids);
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0)
        die("readlink /proc/self/exe", errno);
    self[len] = 0;
    for (int r = 0; r < rounds; r++) {
        int fds[2];
        if (pipe(fds) != 0)
            die("pipe", errno);
        char fdvar[32];
        snprintf(fdvar, sizeof fdvar, "BENCH_FD=%d", fds[1]);
        size_t ne = 0;
        while (environ[ne])
            ne++;
        char **env = calloc(ne + 2, sizeof *env);
        size_t j = 0;
        for (size_t e = 0; e < ne; e++)
            if (strncmp(environ[e], "BENCH_FD=", 9) != 0)
                env[j++] = environ[e];
        env[j++] = fdvar;
        env[j] = NULL;
        char *args[] = {self, "first-alloc", NULL};
        uint64_t t0 = now_ns();
        for (int c = 0; c < k; c++) {
            int e = posix_spawn(&pids[c], self, NULL, NULL, args, env);
            if (e != 0)
                die("posix_spawn", e);
        }
        close(fds[1]);
        int got = 0;
        while (got < k) {
            ssize_t n = read(fds[0], &t[got], sizeof t[got]);
            if (n == (ssize_t)sizeof t[got])
                got++;
            else if (n < 0 && errno == EINTR)
                continue;
            else
                break; /* EOF: a child died before reporting */
        }
        int failed = 0;
        for (int c = 0; c < k; c++) {
            int status = 0;
            while (waitpid(pids[c], &status, 0) < 0 && errno == EINTR)
                ;
            failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
        uint64_t t_end = now_ns();
        close(fds[0]);
        free(env);
        if (got < k || failed)
            die("a first-alloc child", failed);
        qsort(t, (size_t)k, sizeof *t, cmp_u64);
        printf("spawn k=%d first_alloc_max_us=%.1f first_alloc_med_us=%.1f exit_us=%.1f\n", k,
               (double)(t[k - 1] - t0) / 1e3, (double)(t[k / 2] - t0) / 1e3, (double)(t_end - t0) / 1e3);
        fflush(stdout);
    }
    free(t);
    free(pids);
    return 0;
}

int main(int argc, char **argv)
{
    const char *rep = getenv("BENCH_REPEAT");
    if (rep && atoi(rep) > 0)
        repeat = atoi(rep);
    if (argc >= 2 && strcmp(argv[1], "ops") == 0)
        return cmd_ops(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "list") == 0) {
        for (size_t i = 0; i < NOPS; i++)
            printf("%s\n", ops[i].name);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "first-alloc") == 0)
        return cmd_first_alloc();
    if (argc == 4 && strcmp(argv[1], "spawn") == 0)
        return cmd_spawn(atoi(argv[2]), atoi(argv[3]));
    fprintf(stderr, "usage: bench_api ops [-n N] [OP,...|all] | list | first-alloc | spawn K ROUNDS\n");
    return 2;
}
