/* The command language shared by alloc_linked.c (driver functions linked with -lcuda) and
 * cudart_like.c (driver functions found through cuGetProcAddress_v2 or dlsym).
 *
 *   <program> [options] <cmd> [args] [<cmd> [args] ...]
 *
 * Every command prints exactly one line:
 *
 *   <cmd> [<args, sizes in bytes>] <code> [key=value ...]
 *
 * where <code> is the CUresult of the call that decides the outcome (decimal), or -1 when
 * the program could not make the call (function not resolved: missing=<symbol>; nothing
 * left to free: empty). Sizes accept k/m/g/t suffixes (binary). See README.md beside this
 * file for the full list.
 *
 * The including file defines _GNU_SOURCE before any include (dladdr, RTLD_DEFAULT). */
#ifndef VGPU_COMMANDS_H
#define VGPU_COMMANDS_H

#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vgpu_cuda.h"

/* Not in vgpu_cuda.h (kernels.c names these handle types itself): calls after which the
 * driver's footprint grows outside any allocation (module code, graph-exec state). */
struct vgpu_opaque_module;
struct vgpu_opaque_graph;
struct vgpu_opaque_graph_exec;
CUresult cuModuleLoadData(struct vgpu_opaque_module **module, const void *image);
CUresult cuGraphCreate(struct vgpu_opaque_graph **graph, unsigned int flags);
CUresult cuGraphInstantiateWithFlags(struct vgpu_opaque_graph_exec **exec, struct vgpu_opaque_graph *graph,
                                     unsigned long long flags);

/* X(symbol, base name for cuGetProcAddress, version (0: the program's), flags (-1: the
 * program's)). The fixed versions pin a slot to the variant whose signature it has. */
#define CU_API(X)                                                 \
    X(cuInit, "cuInit", 0, -1)                                    \
    X(cuDriverGetVersion, "cuDriverGetVersion", 0, -1)            \
    X(cuDeviceGet, "cuDeviceGet", 0, -1)                          \
    X(cuDeviceGetCount, "cuDeviceGetCount", 0, -1)                \
    X(cuDeviceTotalMem_v2, "cuDeviceTotalMem", 0, -1)             \
    X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", 0, -1) \
    X(cuDevicePrimaryCtxRelease_v2, "cuDevicePrimaryCtxRelease", 0, -1) \
    X(cuCtxSetCurrent, "cuCtxSetCurrent", 0, -1)                  \
    X(cuCtxCreate_v2, "cuCtxCreate", 11000, -1)                   \
    X(cuCtxCreate_v4, "cuCtxCreate", 12050, -1)                   \
    X(cuCtxDestroy_v2, "cuCtxDestroy", 0, -1)                     \
    X(cuMemAlloc_v2, "cuMemAlloc", 0, -1)                         \
    X(cuMemAlloc, "cuMemAlloc", 3010, -1)                         \
    X(cuMemAllocPitch_v2, "cuMemAllocPitch", 0, -1)               \
    X(cuMemAllocManaged, "cuMemAllocManaged", 0, -1)              \
    X(cuMemFree_v2, "cuMemFree", 0, -1)                           \
    X(cuMemGetInfo_v2, "cuMemGetInfo", 0, -1)                     \
    X(cuMemAllocAsync, "cuMemAllocAsync", 0, -1)                  \
    X(cuMemAllocAsync_ptsz, "cuMemAllocAsync", 0, 2)              \
    X(cuMemAllocFromPoolAsync, "cuMemAllocFromPoolAsync", 0, -1)  \
    X(cuMemFreeAsync, "cuMemFreeAsync", 0, -1)                    \
    X(cuDeviceGetDefaultMemPool, "cuDeviceGetDefaultMemPool", 0, -1) \
    X(cuMemCreate, "cuMemCreate", 0, -1)                          \
    X(cuMemRelease, "cuMemRelease", 0, -1)                        \
    X(cuMemAddressReserve, "cuMemAddressReserve", 0, -1)          \
    X(cuMemAddressFree, "cuMemAddressFree", 0, -1)                \
    X(cuMemMap, "cuMemMap", 0, -1)                                \
    X(cuMemUnmap, "cuMemUnmap", 0, -1)                            \
    X(cuMemSetAccess, "cuMemSetAccess", 0, -1)                    \
    X(cuMemExportToShareableHandle, "cuMemExportToShareableHandle", 0, -1) \
    X(cuMemImportFromShareableHandle, "cuMemImportFromShareableHandle", 0, -1) \
    X(cuIpcGetMemHandle, "cuIpcGetMemHandle", 0, -1)              \
    X(cuIpcOpenMemHandle_v2, "cuIpcOpenMemHandle", 11000, -1)     \
    X(cuIpcCloseMemHandle, "cuIpcCloseMemHandle", 0, -1)          \
    X(cuDeviceCanAccessPeer, "cuDeviceCanAccessPeer", 0, -1)      \
    X(cuCtxEnablePeerAccess, "cuCtxEnablePeerAccess", 0, -1)      \
    X(cuArrayCreate_v2, "cuArrayCreate", 0, -1)                   \
    X(cuArray3DCreate_v2, "cuArray3DCreate", 0, -1)               \
    X(cuArrayDestroy, "cuArrayDestroy", 0, -1)                    \
    X(cuMipmappedArrayCreate, "cuMipmappedArrayCreate", 0, -1)    \
    X(cuMipmappedArrayDestroy, "cuMipmappedArrayDestroy", 0, -1)  \
    X(cuModuleLoadData, "cuModuleLoadData", 0, -1)                \
    X(cuGraphCreate, "cuGraphCreate", 0, -1)                      \
    X(cuGraphInstantiateWithFlags, "cuGraphInstantiateWithFlags", 0, -1) \
    X(cuGetProcAddress_v2, "cuGetProcAddress", 12000, -1)

struct cu_api {
#define CU_FIELD(sym, base, version, flags) __typeof__(&sym) sym;
    CU_API(CU_FIELD)
#undef CU_FIELD
};

/* "name lib=file" for a code address: the exported symbol starting exactly there, or "?"
 * (e.g. an interposer's unexported hook), and the basename of the object holding it. */
static void describe(const void *p, char *out, size_t len)
{
    Dl_info info;
    if (p == NULL) {
        snprintf(out, len, "sym=- lib=-");
        return;
    }
    if (dladdr(p, &info) == 0) {
        snprintf(out, len, "sym=? lib=?");
        return;
    }
    const char *lib = info.dli_fname ? strrchr(info.dli_fname, '/') : NULL;
    lib = lib ? lib + 1 : (info.dli_fname ? info.dli_fname : "?");
    const char *name = (info.dli_sname && info.dli_saddr == p) ? info.dli_sname : "?";
    snprintf(out, len, "sym=%s lib=%s", name, lib);
}

static unsigned long long parse_size(const char *s)
{
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    unsigned shift = 0;
    if (end == s) {
        fprintf(stderr, "bad size: %s\n", s);
        exit(2);
    }
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default: break;
    }
    if (*end != '\0') {
        fprintf(stderr, "bad size: %s\n", s);
        exit(2);
    }
    return v << shift;
}

struct stack {
    unsigned long long v[4096];
    int kind[4096];
    int n;
};

static void push(struct stack *s, unsigned long long v, int kind)
{
    if (s->n < 4096) {
        s->v[s->n] = v;
        s->kind[s->n] = kind;
        s->n++;
    }
}

static int pop(struct stack *s, unsigned long long *v, int *kind)
{
    if (s->n == 0)
        return 0;
    s->n--;
    *v = s->v[s->n];
    if (kind)
        *kind = s->kind[s->n];
    return 1;
}

static struct stack g_allocs, g_async, g_vmm, g_arrays, g_ctxs, g_ipc;

/* VMM mappings made by vmm-map: reserved range = mapped range. */
static struct {
    CUdeviceptr ptr[256];
    size_t size[256];
    int n;
} g_maps;

/* Prints the rest of the line and skips the command when a slot was not filled. */
#define HAVE(api, fn) ((api)->fn != NULL || (printf(" -1 missing=%s\n", #fn), 0))

#define ARRAY_PLAIN 0
#define ARRAY_MIPMAP 1

static CUresult free_all(const struct cu_api *api, int *count)
{
    CUresult first = CUDA_SUCCESS, r;
    unsigned long long v;
    int kind;
    *count = 0;
#define NOTE(call)                          \
    do {                                    \
        r = (call);                         \
        if (r == CUDA_SUCCESS)              \
            (*count)++;                     \
        else if (first == CUDA_SUCCESS)     \
            first = r;                      \
    } while (0)
    while (api->cuMemFree_v2 && pop(&g_allocs, &v, NULL))
        NOTE(api->cuMemFree_v2(v));
    while (api->cuMemFreeAsync && pop(&g_async, &v, NULL))
        NOTE(api->cuMemFreeAsync(v, NULL));
    while (api->cuIpcCloseMemHandle && pop(&g_ipc, &v, NULL))
        NOTE(api->cuIpcCloseMemHandle(v));
    while (api->cuMemUnmap && api->cuMemAddressFree && g_maps.n > 0) {
        g_maps.n--;
        NOTE(api->cuMemUnmap(g_maps.ptr[g_maps.n], g_maps.size[g_maps.n]));
        NOTE(api->cuMemAddressFree(g_maps.ptr[g_maps.n], g_maps.size[g_maps.n]));
    }
    while (pop(&g_arrays, &v, &kind)) {
        if (kind == ARRAY_MIPMAP && api->cuMipmappedArrayDestroy)
            NOTE(api->cuMipmappedArrayDestroy((CUmipmappedArray)(uintptr_t)v));
        else if (kind == ARRAY_PLAIN && api->cuArrayDestroy)
            NOTE(api->cuArrayDestroy((CUarray)(uintptr_t)v));
    }
    while (api->cuMemRelease && pop(&g_vmm, &v, NULL))
        NOTE(api->cuMemRelease(v));
#undef NOTE
    return first;
}

static CUresult alloc_until_oom(const struct cu_api *api, unsigned long long step, long *count,
                                unsigned long long *bytes, int *freed)
{
    size_t cap = 1024, n = 0;
    CUdeviceptr *ptrs = malloc(cap * sizeof *ptrs);
    CUresult r = CUDA_SUCCESS;
    while (ptrs != NULL) {
        CUdeviceptr p = 0;
        r = api->cuMemAlloc_v2(&p, step);
        if (r != CUDA_SUCCESS)
            break;
        if (n == cap) {
            CUdeviceptr *grown = realloc(ptrs, 2 * cap * sizeof *ptrs);
            if (grown == NULL) {
                api->cuMemFree_v2(p);
                break;
            }
            ptrs = grown;
            cap *= 2;
        }
        ptrs[n++] = p;
    }
    *count = (long)n;
    *bytes = (unsigned long long)n * step;
    *freed = 0;
    for (size_t i = 0; i < n; i++)
        *freed += api->cuMemFree_v2(ptrs[i]) == CUDA_SUCCESS;
    free(ptrs);
    return r;
}

/* The device the last init/device/ctx-create command made current (for pool-async). */
static CUdevice g_device;

static int need_args(int argc, int i, int n, const char *cmd)
{
    if (i + n >= argc) {
        fprintf(stderr, "%s needs %d argument(s)\n", cmd, n);
        exit(2);
    }
    return 1;
}

static void array_command(const struct cu_api *api, const char *cmd, unsigned long long w,
                          unsigned long long h, unsigned long long d, int levels)
{
    CUresult r;
    unsigned long long handle = 0;
    if (levels > 0) {
        CUDA_ARRAY3D_DESCRIPTOR desc = { w, h, d, CU_AD_FORMAT_FLOAT, 1, 0 };
        CUmipmappedArray mm = NULL;
        if (!HAVE(api, cuMipmappedArrayCreate))
            return;
        r = api->cuMipmappedArrayCreate(&mm, &desc, (unsigned)levels);
        handle = (uintptr_t)mm;
    } else if (strcmp(cmd, "array3d") == 0) {
        CUDA_ARRAY3D_DESCRIPTOR desc = { w, h, d, CU_AD_FORMAT_FLOAT, 1, 0 };
        CUarray a = NULL;
        if (!HAVE(api, cuArray3DCreate_v2))
            return;
        r = api->cuArray3DCreate_v2(&a, &desc);
        handle = (uintptr_t)a;
    } else {
        CUDA_ARRAY_DESCRIPTOR desc = { w, h, CU_AD_FORMAT_FLOAT, 1 };
        CUarray a = NULL;
        if (!HAVE(api, cuArrayCreate_v2))
            return;
        r = api->cuArrayCreate_v2(&a, &desc);
        handle = (uintptr_t)a;
    }
    if (r == CUDA_SUCCESS)
        push(&g_arrays, handle, levels > 0 ? ARRAY_MIPMAP : ARRAY_PLAIN);
    printf(" %u handle=0x%llx\n", r, handle);
}

static void vmm_command(const struct cu_api *api, unsigned long long size, unsigned type, int id,
                        unsigned handle_types)
{
    CUmemAllocationProp prop;
    CUmemGenericAllocationHandle h = 0;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.requestedHandleTypes = handle_types;
    prop.location.type = type;
    prop.location.id = id;
    if (!HAVE(api, cuMemCreate))
        return;
    CUresult r = api->cuMemCreate(&h, size, &prop, 0);
    if (r == CUDA_SUCCESS)
        push(&g_vmm, h, 0);
    printf(" %u handle=%llu\n", r, h);
}

static void calls_command(const char *name)
{
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    unsigned long long (*count)(const char *) = NULL;
    if (lib != NULL)
        count = (unsigned long long (*)(const char *))dlsym(lib, "fakegpu_call_count");
    if (count == NULL)
        printf(" -1 missing=fakegpu_call_count\n");
    else
        printf(" 0 n=%llu\n", count(name));
    if (lib != NULL)
        dlclose(lib);
}

/* The fake driver's own count of the device memory in use (fakegpu_device_used): what NVML
 * shows from outside, not an interposer's view. */
static void physical_command(int ordinal)
{
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    CUresult (*used)(int, unsigned long long *) = NULL;
    unsigned long long bytes = 0;
    if (lib != NULL)
        used = (CUresult(*)(int, unsigned long long *))dlsym(lib, "fakegpu_device_used");
    if (used == NULL)
        printf(" -1 missing=fakegpu_device_used\n");
    else {
        CUresult r = used(ordinal, &bytes);
        printf(" %u used=%llu\n", r, bytes);
    }
    if (lib != NULL)
        dlclose(lib);
}

/* The handle as 128 lowercase hex digits, and back (0 on a malformed string). */
static void ipc_to_hex(const CUipcMemHandle *h, char out[2 * CU_IPC_HANDLE_SIZE + 1])
{
    for (int i = 0; i < CU_IPC_HANDLE_SIZE; i++)
        snprintf(out + 2 * i, 3, "%02x", (unsigned char)h->reserved[i]);
}

static int ipc_from_hex(const char *s, CUipcMemHandle *h)
{
    if (strlen(s) != 2 * CU_IPC_HANDLE_SIZE)
        return 0;
    for (int i = 0; i < CU_IPC_HANDLE_SIZE; i++) {
        unsigned byte;
        char pair[3] = { s[2 * i], s[2 * i + 1], '\0' };
        char *end = NULL;
        byte = (unsigned)strtoul(pair, &end, 16);
        if (end != pair + 2)
            return 0;
        h->reserved[i] = (char)byte;
    }
    return 1;
}

/* vmm-map: reserve SIZE, map the last vmm handle at offset 0, give the current device
 * read-write access. The code is the first call that failed. */
static void vmm_map_command(const struct cu_api *api, unsigned long long size)
{
    CUdeviceptr p = 0;
    unsigned long long h;
    CUmemAccessDesc desc;
    if (!HAVE(api, cuMemAddressReserve) || !HAVE(api, cuMemMap) || !HAVE(api, cuMemSetAccess) ||
        !HAVE(api, cuMemAddressFree))
        return;
    if (g_vmm.n == 0 || g_maps.n == 256) {
        printf(" -1 empty\n");
        return;
    }
    h = g_vmm.v[g_vmm.n - 1];
    memset(&desc, 0, sizeof desc);
    desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    desc.location.id = g_device;
    desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CUresult r = api->cuMemAddressReserve(&p, size, 0, 0, 0);
    if (r == CUDA_SUCCESS) {
        r = api->cuMemMap(p, size, 0, h, 0);
        if (r != CUDA_SUCCESS)
            api->cuMemAddressFree(p, size);
    }
    if (r == CUDA_SUCCESS) {
        g_maps.ptr[g_maps.n] = p;
        g_maps.size[g_maps.n] = size;
        g_maps.n++;
        r = api->cuMemSetAccess(p, size, &desc, 1);
    }
    printf(" %u ptr=0x%llx\n", r, p);
}

/* Blocks until a line (or EOF) arrives on stdin: lets a test hold a process at a point
 * (e.g. while it holds memory another process imports). */
static void wait_stdin(void)
{
    int c;
    do {
        c = getchar();
    } while (c != EOF && c != '\n');
}

/* Runs argv[i..] as commands; returns the process exit status (0, or 2 on a usage error). */
static int run_commands(const struct cu_api *api, int argc, char **argv, int i)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (; i < argc; i++) {
        const char *cmd = argv[i];
        CUresult r = CUDA_SUCCESS;
        unsigned long long v = 0;
        int kind = 0;

        if (strcmp(cmd, "init") == 0) {
            CUcontext ctx = NULL;
            printf("init");
            if (!HAVE(api, cuInit) || !HAVE(api, cuDevicePrimaryCtxRetain) || !HAVE(api, cuCtxSetCurrent))
                continue;
            r = api->cuInit(0);
            if (r == CUDA_SUCCESS)
                r = api->cuDevicePrimaryCtxRetain(&ctx, 0);
            if (r == CUDA_SUCCESS)
                r = api->cuCtxSetCurrent(ctx);
            g_device = 0;
            printf(" %u ctx=0x%llx\n", r, (unsigned long long)(uintptr_t)ctx);
        } else if (strcmp(cmd, "cuinit") == 0) {
            /* cuInit alone: no context yet (what a runtime does before cudaGetDeviceProperties). */
            printf("cuinit");
            if (!HAVE(api, cuInit))
                continue;
            printf(" %u\n", api->cuInit(0));
        } else if (strcmp(cmd, "device") == 0 && need_args(argc, i, 1, cmd)) {
            int dev = atoi(argv[++i]);
            CUcontext ctx = NULL;
            printf("device %d", dev);
            if (!HAVE(api, cuDevicePrimaryCtxRetain) || !HAVE(api, cuCtxSetCurrent))
                continue;
            r = api->cuDevicePrimaryCtxRetain(&ctx, dev);
            if (r == CUDA_SUCCESS)
                r = api->cuCtxSetCurrent(ctx);
            if (r == CUDA_SUCCESS)
                g_device = dev;
            printf(" %u ctx=0x%llx\n", r, (unsigned long long)(uintptr_t)ctx);
        } else if (strcmp(cmd, "primary-release") == 0 && need_args(argc, i, 1, cmd)) {
            int dev = atoi(argv[++i]);
            printf("primary-release %d", dev);
            if (!HAVE(api, cuDevicePrimaryCtxRelease_v2))
                continue;
            printf(" %u\n", api->cuDevicePrimaryCtxRelease_v2(dev));
        } else if ((strcmp(cmd, "ctx-create") == 0 || strcmp(cmd, "ctx-create-v4") == 0) &&
                   need_args(argc, i, 1, cmd)) {
            int dev = atoi(argv[++i]);
            CUcontext ctx = NULL;
            printf("%s %d", cmd, dev);
            if (strcmp(cmd, "ctx-create") == 0) {
                if (!HAVE(api, cuCtxCreate_v2))
                    continue;
                r = api->cuCtxCreate_v2(&ctx, 0, dev);
            } else {
                if (!HAVE(api, cuCtxCreate_v4))
                    continue;
                r = api->cuCtxCreate_v4(&ctx, NULL, 0, dev);
            }
            if (r == CUDA_SUCCESS) {
                push(&g_ctxs, (uintptr_t)ctx, 0);
                g_device = dev;
            }
            printf(" %u ctx=0x%llx\n", r, (unsigned long long)(uintptr_t)ctx);
        } else if (strcmp(cmd, "ctx-destroy") == 0) {
            printf("ctx-destroy");
            if (!HAVE(api, cuCtxDestroy_v2))
                continue;
            if (!pop(&g_ctxs, &v, NULL)) {
                printf(" -1 empty\n");
                continue;
            }
            printf(" %u\n", api->cuCtxDestroy_v2((CUcontext)(uintptr_t)v));
        } else if ((strcmp(cmd, "alloc") == 0 || strcmp(cmd, "managed") == 0) &&
                   need_args(argc, i, 1, cmd)) {
            unsigned long long size = parse_size(argv[++i]);
            CUdeviceptr p = 0;
            printf("%s %llu", cmd, size);
            if (cmd[0] == 'a') {
                if (!HAVE(api, cuMemAlloc_v2))
                    continue;
                r = api->cuMemAlloc_v2(&p, size);
            } else {
                if (!HAVE(api, cuMemAllocManaged))
                    continue;
                r = api->cuMemAllocManaged(&p, size, CU_MEM_ATTACH_GLOBAL);
            }
            if (r == CUDA_SUCCESS)
                push(&g_allocs, p, 0);
            printf(" %u ptr=0x%llx\n", r, p);
        } else if (strcmp(cmd, "alloc-v1") == 0 && need_args(argc, i, 1, cmd)) {
            unsigned long long size = parse_size(argv[++i]);
            unsigned int p = 0;
            printf("alloc-v1 %llu", size);
            if (!HAVE(api, cuMemAlloc))
                continue;
            r = api->cuMemAlloc(&p, (unsigned int)size);
            if (r == CUDA_SUCCESS)
                push(&g_allocs, p, 0);
            printf(" %u ptr=0x%x\n", r, p);
        } else if (strcmp(cmd, "pitch") == 0 && need_args(argc, i, 2, cmd)) {
            unsigned long long w = parse_size(argv[i + 1]), h = parse_size(argv[i + 2]);
            CUdeviceptr p = 0;
            size_t pitch = 0;
            i += 2;
            printf("pitch %llu %llu", w, h);
            if (!HAVE(api, cuMemAllocPitch_v2))
                continue;
            r = api->cuMemAllocPitch_v2(&p, &pitch, w, h, 4);
            if (r == CUDA_SUCCESS)
                push(&g_allocs, p, 0);
            printf(" %u ptr=0x%llx pitch=%zu\n", r, p, pitch);
        } else if ((strcmp(cmd, "async") == 0 || strcmp(cmd, "async-ptsz") == 0) &&
                   need_args(argc, i, 1, cmd)) {
            unsigned long long size = parse_size(argv[++i]);
            CUdeviceptr p = 0;
            printf("%s %llu", cmd, size);
            if (strcmp(cmd, "async") == 0) {
                if (!HAVE(api, cuMemAllocAsync))
                    continue;
                r = api->cuMemAllocAsync(&p, size, NULL);
            } else {
                if (!HAVE(api, cuMemAllocAsync_ptsz))
                    continue;
                r = api->cuMemAllocAsync_ptsz(&p, size, NULL);
            }
            if (r == CUDA_SUCCESS)
                push(&g_async, p, 0);
            printf(" %u ptr=0x%llx\n", r, p);
        } else if (strcmp(cmd, "pool-async") == 0 && need_args(argc, i, 1, cmd)) {
            unsigned long long size = parse_size(argv[++i]);
            CUdeviceptr p = 0;
            CUmemoryPool pool = NULL;
            printf("pool-async %llu", size);
            if (!HAVE(api, cuDeviceGetDefaultMemPool) || !HAVE(api, cuMemAllocFromPoolAsync))
                continue;
            r = api->cuDeviceGetDefaultMemPool(&pool, g_device);
            if (r == CUDA_SUCCESS)
                r = api->cuMemAllocFromPoolAsync(&p, size, pool, NULL);
            if (r == CUDA_SUCCESS)
                push(&g_async, p, 0);
            printf(" %u ptr=0x%llx\n", r, p);
        } else if (strcmp(cmd, "free-async-last") == 0) {
            printf("free-async-last");
            if (!HAVE(api, cuMemFreeAsync))
                continue;
            if (!pop(&g_async, &v, NULL)) {
                printf(" -1 empty\n");
                continue;
            }
            printf(" %u\n", api->cuMemFreeAsync(v, NULL));
        } else if (strcmp(cmd, "vmm") == 0 && need_args(argc, i, 2, cmd)) {
            unsigned long long size = parse_size(argv[i + 1]);
            int dev = atoi(argv[i + 2]);
            i += 2;
            printf("vmm %llu %d", size, dev);
            vmm_command(api, size, CU_MEM_LOCATION_TYPE_DEVICE, dev, CU_MEM_HANDLE_TYPE_NONE);
        } else if (strcmp(cmd, "vmm-host") == 0 && need_args(argc, i, 1, cmd)) {
            unsigned long long size = parse_size(argv[++i]);
            printf("vmm-host %llu", size);
            vmm_command(api, size, CU_MEM_LOCATION_TYPE_HOST, 0, CU_MEM_HANDLE_TYPE_NONE);
        } else if (strcmp(cmd, "vmm-host-numa") == 0 && need_args(argc, i, 2, cmd)) {
            unsigned long long size = parse_size(argv[i + 1]);
            int node = atoi(argv[i + 2]);
            i += 2;
            printf("vmm-host-numa %llu %d", size, node);
            vmm_command(api, size, CU_MEM_LOCATION_TYPE_HOST_NUMA, node, CU_MEM_HANDLE_TYPE_NONE);
        } else if (strcmp(cmd, "vmm-fd") == 0 && need_args(argc, i, 2, cmd)) {
            unsigned long long size = parse_size(argv[i + 1]);
            int dev = atoi(argv[i + 2]);
            i += 2;
            printf("vmm-fd %llu %d", size, dev);
            vmm_command(api, size, CU_MEM_LOCATION_TYPE_DEVICE, dev, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
        } else if (strcmp(cmd, "vmm-export") == 0) {
            int fd = -1;
            printf("vmm-export");
            if (!HAVE(api, cuMemExportToShareableHandle))
                continue;
            if (g_vmm.n == 0) {
                printf(" -1 empty\n");
                continue;
            }
            r = api->cuMemExportToShareableHandle(&fd, g_vmm.v[g_vmm.n - 1],
                                                  CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
            printf(" %u fd=%d pid=%d\n", r, fd, (int)getpid());
        } else if (strcmp(cmd, "vmm-import") == 0 && need_args(argc, i, 2, cmd)) {
            int pid = atoi(argv[i + 1]), theirs = atoi(argv[i + 2]), fd;
            char path[64];
            CUmemGenericAllocationHandle h = 0;
            i += 2;
            printf("vmm-import %d %d", pid, theirs);
            if (!HAVE(api, cuMemImportFromShareableHandle))
                continue;
            /* The descriptor travels as a path (a test has no socket to pass it over);
             * opening /proc/<pid>/fd/<n> gives this process the same file. */
            snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, theirs);
            fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                printf(" -1 open-failed\n");
                continue;
            }
            r = api->cuMemImportFromShareableHandle(&h, (void *)(uintptr_t)fd,
                                                    CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
            close(fd);
            if (r == CUDA_SUCCESS)
                push(&g_vmm, h, 0);
            printf(" %u handle=%llu\n", r, h);
        } else if (strcmp(cmd, "vmm-map") == 0 && need_args(argc, i, 1, cmd)) {
            unsigned long long size = parse_size(argv[++i]);
            printf("vmm-map %llu", size);
            vmm_map_command(api, size);
        } else if (strcmp(cmd, "vmm-access") == 0 && need_args(argc, i, 1, cmd)) {
            CUmemAccessDesc desc;
            int dev = atoi(argv[++i]);
            printf("vmm-access %d", dev);
            if (!HAVE(api, cuMemSetAccess))
                continue;
            if (g_maps.n == 0) {
                printf(" -1 empty\n");
                continue;
            }
            memset(&desc, 0, sizeof desc);
            desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
            desc.location.id = dev;
            desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
            printf(" %u\n", api->cuMemSetAccess(g_maps.ptr[g_maps.n - 1], g_maps.size[g_maps.n - 1], &desc, 1));
        } else if (strcmp(cmd, "vmm-unmap") == 0) {
            printf("vmm-unmap");
            if (!HAVE(api, cuMemUnmap) || !HAVE(api, cuMemAddressFree))
                continue;
            if (g_maps.n == 0) {
                printf(" -1 empty\n");
                continue;
            }
            g_maps.n--;
            r = api->cuMemUnmap(g_maps.ptr[g_maps.n], g_maps.size[g_maps.n]);
            if (r == CUDA_SUCCESS)
                r = api->cuMemAddressFree(g_maps.ptr[g_maps.n], g_maps.size[g_maps.n]);
            printf(" %u\n", r);
        } else if (strcmp(cmd, "ipc-export") == 0) {
            CUipcMemHandle h;
            char hex[2 * CU_IPC_HANDLE_SIZE + 1];
            printf("ipc-export");
            if (!HAVE(api, cuIpcGetMemHandle))
                continue;
            if (g_allocs.n == 0) {
                printf(" -1 empty\n");
                continue;
            }
            memset(&h, 0, sizeof h);
            r = api->cuIpcGetMemHandle(&h, g_allocs.v[g_allocs.n - 1]);
            ipc_to_hex(&h, hex);
            printf(" %u handle=%s\n", r, hex);
        } else if (strcmp(cmd, "ipc-open") == 0 && need_args(argc, i, 1, cmd)) {
            CUipcMemHandle h;
            CUdeviceptr p = 0;
            const char *hex = argv[++i];
            printf("ipc-open");
            if (!HAVE(api, cuIpcOpenMemHandle_v2))
                continue;
            if (!ipc_from_hex(hex, &h)) {
                fprintf(stderr, "ipc-open needs %d hex digits\n", 2 * CU_IPC_HANDLE_SIZE);
                return 2;
            }
            r = api->cuIpcOpenMemHandle_v2(&p, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
            if (r == CUDA_SUCCESS)
                push(&g_ipc, p, 0);
            printf(" %u ptr=0x%llx\n", r, p);
        } else if (strcmp(cmd, "ipc-close") == 0) {
            printf("ipc-close");
            if (!HAVE(api, cuIpcCloseMemHandle))
                continue;
            if (!pop(&g_ipc, &v, NULL)) {
                printf(" -1 empty\n");
                continue;
            }
            printf(" %u\n", api->cuIpcCloseMemHandle(v));
        } else if (strcmp(cmd, "peer-enable") == 0 && need_args(argc, i, 1, cmd)) {
            int dev = atoi(argv[++i]), can = -1;
            CUcontext peer = NULL;
            printf("peer-enable %d", dev);
            if (!HAVE(api, cuDeviceCanAccessPeer) || !HAVE(api, cuDevicePrimaryCtxRetain) ||
                !HAVE(api, cuCtxEnablePeerAccess))
                continue;
            r = api->cuDeviceCanAccessPeer(&can, g_device, dev);
            if (r == CUDA_SUCCESS)
                r = api->cuDevicePrimaryCtxRetain(&peer, dev);
            if (r == CUDA_SUCCESS)
                r = api->cuCtxEnablePeerAccess(peer, 0);
            printf(" %u can=%d\n", r, can);
        } else if (strcmp(cmd, "wait") == 0) {
            /* The line first: it tells a test the program has got here. */
            printf("wait 0\n");
            wait_stdin();
        } else if (strcmp(cmd, "release-last") == 0) {
            printf("release-last");
            if (!HAVE(api, cuMemRelease))
                continue;
            if (!pop(&g_vmm, &v, NULL)) {
                printf(" -1 empty\n");
                continue;
            }
            printf(" %u\n", api->cuMemRelease(v));
        } else if ((strcmp(cmd, "array") == 0) && need_args(argc, i, 2, cmd)) {
            unsigned long long w = parse_size(argv[i + 1]), h = parse_size(argv[i + 2]);
            i += 2;
            printf("array %llu %llu", w, h);
            array_command(api, cmd, w, h, 0, 0);
        } else if (strcmp(cmd, "array3d") == 0 && need_args(argc, i, 3, cmd)) {
            unsigned long long w = parse_size(argv[i + 1]), h = parse_size(argv[i + 2]);
            unsigned long long d = parse_size(argv[i + 3]);
            i += 3;
            printf("array3d %llu %llu %llu", w, h, d);
            array_command(api, cmd, w, h, d, 0);
        } else if (strcmp(cmd, "mipmap") == 0 && need_args(argc, i, 3, cmd)) {
            unsigned long long w = parse_size(argv[i + 1]), h = parse_size(argv[i + 2]);
            int levels = atoi(argv[i + 3]);
            i += 3;
            printf("mipmap %llu %llu %d", w, h, levels);
            if (levels <= 0) {
                fprintf(stderr, "mipmap needs at least one level\n");
                return 2;
            }
            array_command(api, cmd, w, h, 0, levels);
        } else if (strcmp(cmd, "destroy-last") == 0) {
            printf("destroy-last");
            if (!pop(&g_arrays, &v, &kind)) {
                printf(" -1 empty\n");
                continue;
            }
            if (kind == ARRAY_MIPMAP) {
                if (!HAVE(api, cuMipmappedArrayDestroy))
                    continue;
                r = api->cuMipmappedArrayDestroy((CUmipmappedArray)(uintptr_t)v);
            } else {
                if (!HAVE(api, cuArrayDestroy))
                    continue;
                r = api->cuArrayDestroy((CUarray)(uintptr_t)v);
            }
            printf(" %u\n", r);
        } else if (strcmp(cmd, "free-last") == 0) {
            printf("free-last");
            if (!HAVE(api, cuMemFree_v2))
                continue;
            if (!pop(&g_allocs, &v, NULL)) {
                printf(" -1 empty\n");
                continue;
            }
            printf(" %u\n", api->cuMemFree_v2(v));
        } else if (strcmp(cmd, "free-first") == 0) {
            /* The oldest pointer (after a fork: one the parent allocated). */
            printf("free-first");
            if (!HAVE(api, cuMemFree_v2))
                continue;
            if (g_allocs.n == 0) {
                printf(" -1 empty\n");
                continue;
            }
            v = g_allocs.v[0];
            memmove(&g_allocs.v[0], &g_allocs.v[1], (g_allocs.n - 1) * sizeof g_allocs.v[0]);
            memmove(&g_allocs.kind[0], &g_allocs.kind[1], (g_allocs.n - 1) * sizeof g_allocs.kind[0]);
            g_allocs.n--;
            printf(" %u\n", api->cuMemFree_v2(v));
        } else if (strcmp(cmd, "fork") == 0) {
            /* The child runs the remaining commands; the parent waits for it and ends. */
            fflush(stdout);
            pid_t child = fork();
            if (child < 0) {
                printf("fork -1\n");
                return 1;
            }
            if (child > 0) {
                int status = 0;
                waitpid(child, &status, 0);
                printf("fork 0 child-exit=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
                fflush(stdout);
                return 0;
            }
            printf("forked 0 pid=%d\n", (int)getpid());
        } else if (strcmp(cmd, "free-all") == 0) {
            int n = 0;
            r = free_all(api, &n);
            printf("free-all %u n=%d\n", r, n);
        } else if (strcmp(cmd, "free-bogus") == 0) {
            printf("free-bogus");
            if (!HAVE(api, cuMemFree_v2))
                continue;
            printf(" %u\n", api->cuMemFree_v2((CUdeviceptr)0xdead000));
        } else if (strcmp(cmd, "meminfo") == 0) {
            size_t f = 0, t = 0;
            printf("meminfo");
            if (!HAVE(api, cuMemGetInfo_v2))
                continue;
            r = api->cuMemGetInfo_v2(&f, &t);
            printf(" %u free=%zu total=%zu\n", r, f, t);
        } else if (strcmp(cmd, "meminfo-null") == 0) {
            printf("meminfo-null");
            if (!HAVE(api, cuMemGetInfo_v2))
                continue;
            printf(" %u\n", api->cuMemGetInfo_v2(NULL, NULL));
        } else if (strcmp(cmd, "totalmem") == 0 && need_args(argc, i, 1, cmd)) {
            int dev = atoi(argv[++i]);
            size_t bytes = 0;
            printf("totalmem %d", dev);
            if (!HAVE(api, cuDeviceTotalMem_v2))
                continue;
            r = api->cuDeviceTotalMem_v2(&bytes, dev);
            printf(" %u bytes=%zu\n", r, bytes);
        } else if (strcmp(cmd, "module-load") == 0) {
            static const char image[] = "fake cubin";
            struct vgpu_opaque_module *m = NULL;
            printf("module-load");
            if (!HAVE(api, cuModuleLoadData))
                continue;
            r = api->cuModuleLoadData(&m, image);
            printf(" %u\n", r);
        } else if (strcmp(cmd, "graph-instantiate") == 0) {
            struct vgpu_opaque_graph *g = NULL;
            struct vgpu_opaque_graph_exec *e = NULL;
            printf("graph-instantiate");
            if (!HAVE(api, cuGraphCreate) || !HAVE(api, cuGraphInstantiateWithFlags))
                continue;
            r = api->cuGraphCreate(&g, 0);
            if (r == 0)
                r = api->cuGraphInstantiateWithFlags(&e, g, 0);
            printf(" %u\n", r);
        } else if (strcmp(cmd, "physical") == 0 && need_args(argc, i, 1, cmd)) {
            int dev = atoi(argv[++i]);
            printf("physical %d", dev);
            physical_command(dev);
        } else if (strcmp(cmd, "count") == 0) {
            int n = 0;
            printf("count");
            if (!HAVE(api, cuDeviceGetCount))
                continue;
            r = api->cuDeviceGetCount(&n);
            printf(" %u n=%d\n", r, n);
        } else if (strcmp(cmd, "version") == 0) {
            int ver = 0;
            printf("version");
            if (!HAVE(api, cuDriverGetVersion))
                continue;
            r = api->cuDriverGetVersion(&ver);
            printf(" %u v=%d\n", r, ver);
        } else if (strcmp(cmd, "alloc-until-oom") == 0 && need_args(argc, i, 1, cmd)) {
            unsigned long long step = parse_size(argv[++i]), bytes = 0;
            long n = 0;
            int freed = 0;
            printf("alloc-until-oom %llu", step);
            if (!HAVE(api, cuMemAlloc_v2) || !HAVE(api, cuMemFree_v2))
                continue;
            if (step == 0) {
                fprintf(stderr, "alloc-until-oom needs a non-zero step\n");
                return 2;
            }
            r = alloc_until_oom(api, step, &n, &bytes, &freed);
            printf(" %u count=%ld bytes=%llu freed=%d\n", r, n, bytes, freed);
        } else if (strcmp(cmd, "procaddr") == 0 && need_args(argc, i, 3, cmd)) {
            const char *name = argv[i + 1];
            int ver = atoi(argv[i + 2]);
            unsigned long long flags = strtoull(argv[i + 3], NULL, 0);
            void *p = NULL;
            CUdriverProcAddressQueryResult status = 99;
            char where[512];
            i += 3;
            printf("procaddr %s %d %llu", name, ver, flags);
            if (!HAVE(api, cuGetProcAddress_v2))
                continue;
            r = api->cuGetProcAddress_v2(name, &p, ver, flags, &status);
            describe(p, where, sizeof where);
            printf(" %u status=%u ptr=0x%llx %s\n", r, status, (unsigned long long)(uintptr_t)p, where);
        } else if (strcmp(cmd, "calls") == 0 && need_args(argc, i, 1, cmd)) {
            printf("calls %s", argv[++i]);
            calls_command(argv[i]);
        } else if (strcmp(cmd, "sleep") == 0 && need_args(argc, i, 1, cmd)) {
            long ms = atol(argv[++i]);
            struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
            nanosleep(&ts, NULL);
            printf("sleep %ld 0\n", ms);
        } else {
            fprintf(stderr, "unknown command or missing arguments: %s\n", cmd);
            return 2;
        }
    }
    return 0;
}

#endif
