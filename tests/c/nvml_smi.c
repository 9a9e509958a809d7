/* Reads memory the way nvidia-smi does: dlopen("libnvidia-ml.so.1") and NVML queries.
 *
 *   nvml_smi [--alloc DEV SIZE]...
 *
 * --alloc first allocates SIZE bytes on device DEV through the CUDA driver in this same
 * process (dlopen("libcuda.so.1"), primary context, cuMemAlloc_v2), so the NVML numbers
 * can be checked against CUDA activity. Output:
 *   cuda-alloc <dev> <size> <code>                                  (per --alloc)
 *   init <code>
 *   count <code> n=<devices>
 *   gpu <i> <uuid> total=<b> used=<b> free=<b> reserved=<b> v1total=<b> v1used=<b> v1free=<b>
 *   gpu <i> <used>MiB / <total>MiB
 *   proc <i> pid=<pid> used=<bytes> gi=<id> ci=<id>   (per compute process, _v3)
 *   procs-size <i> <code> n=<count>                   (_v3 asked with capacity 0, no buffer)
 *   proc1 <i> pid=<pid> used=<bytes>                  (per compute process, unversioned)
 *   gproc <i> pid=<pid> used=<bytes>                  (per graphics process, _v3)
 *   gpu <i> error <function> <code>                                 (on a failed query)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vgpu_cuda.h"
#include "vgpu_nvml.h"

#define LOOKUP(lib, fn) ((__typeof__(&fn))dlsym((lib), #fn))

static unsigned long long parse_size(const char *s)
{
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    switch (*end) {
    case 'k': case 'K': return v << 10;
    case 'm': case 'M': return v << 20;
    case 'g': case 'G': return v << 30;
    default: return v;
    }
}

static int cuda_alloc(int dev, unsigned long long size)
{
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (lib == NULL) {
        printf("cuda-alloc %d %llu -1 dlopen-failed\n", dev, size);
        return 1;
    }
    __typeof__(&cuInit) init = LOOKUP(lib, cuInit);
    __typeof__(&cuDevicePrimaryCtxRetain) retain = LOOKUP(lib, cuDevicePrimaryCtxRetain);
    __typeof__(&cuCtxSetCurrent) set_current = LOOKUP(lib, cuCtxSetCurrent);
    __typeof__(&cuMemAlloc_v2) alloc = LOOKUP(lib, cuMemAlloc_v2);
    if (!init || !retain || !set_current || !alloc) {
        printf("cuda-alloc %d %llu -1 missing-symbol\n", dev, size);
        return 1;
    }
    CUcontext ctx = NULL;
    CUdeviceptr p = 0;
    CUresult r = init(0);
    if (r == CUDA_SUCCESS)
        r = retain(&ctx, dev);
    if (r == CUDA_SUCCESS)
        r = set_current(ctx);
    if (r == CUDA_SUCCESS)
        r = alloc(&p, size);
    printf("cuda-alloc %d %llu %u\n", dev, size, r);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--alloc") == 0 && i + 2 < argc) {
            if (cuda_alloc(atoi(argv[i + 1]), parse_size(argv[i + 2])) != 0)
                return 1;
            i += 2;
        } else {
            fprintf(stderr, "usage: %s [--alloc DEV SIZE]...\n", argv[0]);
            return 2;
        }
    }

    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (lib == NULL) {
        printf("dlopen libnvidia-ml.so.1 failed: %s\n", dlerror());
        return 1;
    }
    __typeof__(&nvmlInitWithFlags) init = LOOKUP(lib, nvmlInitWithFlags);
    __typeof__(&nvmlDeviceGetCount_v2) get_count = LOOKUP(lib, nvmlDeviceGetCount_v2);
    __typeof__(&nvmlDeviceGetHandleByIndex_v2) by_index = LOOKUP(lib, nvmlDeviceGetHandleByIndex_v2);
    __typeof__(&nvmlDeviceGetUUID) get_uuid = LOOKUP(lib, nvmlDeviceGetUUID);
    __typeof__(&nvmlDeviceGetMemoryInfo_v2) mem_v2 = LOOKUP(lib, nvmlDeviceGetMemoryInfo_v2);
    __typeof__(&nvmlDeviceGetMemoryInfo) mem_v1 = LOOKUP(lib, nvmlDeviceGetMemoryInfo);
    __typeof__(&nvmlDeviceGetComputeRunningProcesses_v3) procs =
        LOOKUP(lib, nvmlDeviceGetComputeRunningProcesses_v3);
    __typeof__(&nvmlDeviceGetComputeRunningProcesses) procs_v1 =
        LOOKUP(lib, nvmlDeviceGetComputeRunningProcesses);
    __typeof__(&nvmlDeviceGetGraphicsRunningProcesses_v3) gprocs =
        LOOKUP(lib, nvmlDeviceGetGraphicsRunningProcesses_v3);
    __typeof__(&nvmlShutdown) shutdown = LOOKUP(lib, nvmlShutdown);
    if (!init || !get_count || !by_index || !get_uuid || !mem_v2 || !mem_v1) {
        printf("dlsym failed for a required NVML function\n");
        return 1;
    }

    nvmlReturn_t r = init(0);
    printf("init %u\n", r);
    if (r != NVML_SUCCESS)
        return 1;
    unsigned int n = 0;
    r = get_count(&n);
    printf("count %u n=%u\n", r, n);

    for (unsigned int i = 0; i < n; i++) {
        nvmlDevice_t dev = NULL;
        char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE] = "";
        nvmlMemory_v2_t m2;
        nvmlMemory_t m1;
        if ((r = by_index(i, &dev)) != NVML_SUCCESS) {
            printf("gpu %u error nvmlDeviceGetHandleByIndex_v2 %u\n", i, r);
            continue;
        }
        if ((r = get_uuid(dev, uuid, sizeof uuid)) != NVML_SUCCESS)
            printf("gpu %u error nvmlDeviceGetUUID %u\n", i, r);
        memset(&m2, 0, sizeof m2);
        m2.version = NVML_MEMORY_V2;
        if ((r = mem_v2(dev, &m2)) != NVML_SUCCESS)
            printf("gpu %u error nvmlDeviceGetMemoryInfo_v2 %u\n", i, r);
        memset(&m1, 0, sizeof m1);
        if ((r = mem_v1(dev, &m1)) != NVML_SUCCESS)
            printf("gpu %u error nvmlDeviceGetMemoryInfo %u\n", i, r);
        printf("gpu %u %s total=%llu used=%llu free=%llu reserved=%llu v1total=%llu v1used=%llu "
               "v1free=%llu\n",
               i, uuid, m2.total, m2.used, m2.free, m2.reserved, m1.total, m1.used, m1.free);
        printf("gpu %u %lluMiB / %lluMiB\n", i, m2.used >> 20, m2.total >> 20);
        if (procs != NULL) {
            nvmlProcessInfo_t infos[64];
            unsigned int count = 64;
            if ((r = procs(dev, &count, infos)) != NVML_SUCCESS) {
                printf("gpu %u error nvmlDeviceGetComputeRunningProcesses_v3 %u\n", i, r);
                continue;
            }
            for (unsigned int k = 0; k < count; k++)
                printf("proc %u pid=%u used=%llu gi=%u ci=%u\n", i, infos[k].pid, infos[k].usedGpuMemory,
                       infos[k].gpuInstanceId, infos[k].computeInstanceId);
            /* NVML's size query: capacity 0, no buffer. */
            unsigned int needed = 0;
            r = procs(dev, &needed, NULL);
            printf("procs-size %u %u n=%u\n", i, r, needed);
        }
        if (procs_v1 != NULL) {
            nvmlProcessInfo_v1_t infos[64];
            unsigned int count = 64;
            if ((r = procs_v1(dev, &count, infos)) != NVML_SUCCESS)
                printf("gpu %u error nvmlDeviceGetComputeRunningProcesses %u\n", i, r);
            else
                for (unsigned int k = 0; k < count; k++)
                    printf("proc1 %u pid=%u used=%llu\n", i, infos[k].pid, infos[k].usedGpuMemory);
        }
        if (gprocs != NULL) {
            nvmlProcessInfo_t infos[64];
            unsigned int count = 64;
            if ((r = gprocs(dev, &count, infos)) != NVML_SUCCESS)
                printf("gpu %u error nvmlDeviceGetGraphicsRunningProcesses_v3 %u\n", i, r);
            else
                for (unsigned int k = 0; k < count; k++)
                    printf("gproc %u pid=%u used=%llu\n", i, infos[k].pid, infos[k].usedGpuMemory);
        }
    }
    if (shutdown != NULL)
        shutdown();
    return 0;
}
