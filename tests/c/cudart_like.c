/* Finds the driver the way cudart does: dlopen("libcuda.so.1"), dlsym only
 * cuDriverGetVersion and cuGetProcAddress_v2, then ask cuGetProcAddress_v2 for every other
 * function by base name ("cuMemAlloc", ...) with a CUDA version and flags. With --dlsym it
 * instead looks every function up with dlsym by its exported name, as PyTorch does.
 *
 *   cudart_like [--dlsym] [--version N] [--ptsz] <cmd> [args] ...
 *
 * Before the commands it prints one line per lookup:
 *   driver-version <code> v=<version>
 *   resolve <name> <version> <flags> <code> <status> <pointer-hex> sym=<name|?> lib=<file>
 *   dlsym <symbol> <pointer-hex> sym=<name|?> lib=<file>          (--dlsym)
 */
#define _GNU_SOURCE
#include "commands.h"

typedef CUresult (*get_proc_t)(const char *, void **, int, unsigned long long,
                               CUdriverProcAddressQueryResult *);
typedef CUresult (*driver_version_t)(int *);

static void *resolve(get_proc_t get_proc, const char *name, int version,
                     unsigned long long flags)
{
    void *p = NULL;
    CUdriverProcAddressQueryResult status = 99;
    char where[512];
    CUresult r = get_proc(name, &p, version, flags, &status);
    describe(p, where, sizeof where);
    printf("resolve %s %d %llu %u %u 0x%llx %s\n", name, version, flags, r, status,
           (unsigned long long)(uintptr_t)p, where);
    return r == CUDA_SUCCESS ? p : NULL;
}

static void *by_dlsym(void *lib, const char *name)
{
    char where[512];
    void *p = dlsym(lib, name);
    describe(p, where, sizeof where);
    printf("dlsym %s 0x%llx %s\n", name, (unsigned long long)(uintptr_t)p, where);
    return p;
}

int main(int argc, char **argv)
{
    int use_dlsym = 0, version = 13000, i = 1, v = 0;
    unsigned long long flags = CU_GET_PROC_ADDRESS_DEFAULT;
    struct cu_api api;

    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--dlsym") == 0)
            use_dlsym = 1;
        else if (strcmp(argv[i], "--ptsz") == 0)
            flags = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
        else if (strcmp(argv[i], "--version") == 0 && i + 1 < argc)
            version = atoi(argv[++i]);
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (lib == NULL) {
        printf("dlopen libcuda.so.1 failed: %s\n", dlerror());
        return 1;
    }
    driver_version_t driver_version = (driver_version_t)dlsym(lib, "cuDriverGetVersion");
    get_proc_t get_proc = (get_proc_t)dlsym(lib, "cuGetProcAddress_v2");
    if (driver_version == NULL || get_proc == NULL) {
        printf("dlsym failed: cuDriverGetVersion=%p cuGetProcAddress_v2=%p\n",
               (void *)driver_version, (void *)get_proc);
        return 1;
    }
    CUresult r = driver_version(&v);
    printf("driver-version %u v=%d\n", r, v);

    if (use_dlsym) {
#define DLSYM(sym, base, ver, fl) api.sym = (__typeof__(api.sym))by_dlsym(lib, #sym);
        CU_API(DLSYM)
#undef DLSYM
    } else {
#define RESOLVE(sym, base, ver, fl)                                                      \
    api.sym = (__typeof__(api.sym))resolve(get_proc, base, (ver) ? (ver) : version,      \
                                           (fl) >= 0 ? (unsigned long long)(fl) : flags);
        CU_API(RESOLVE)
#undef RESOLVE
    }
    return run_commands(&api, argc, argv, i);
}
