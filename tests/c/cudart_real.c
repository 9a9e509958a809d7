/* Drives a real libcudart (e.g. libcudart.so.13 from the nvidia-cuda-runtime wheel) against
 * whatever libcuda.so.1 the loader finds, to exercise cudart's own driver-resolution phase.
 *
 *   cudart_real <path-to-libcudart.so> [alloc-size]
 *
 * One line per call: <function> <cudaError_t> [key=value ...] err="<cudaGetErrorString>",
 * then, if the driver is fakegpu, `driver-calls name=count ...` for every driver entry point
 * cudart called.
 * The runtime API's types are declared here by the project (int error codes, plain
 * pointers); nothing from the vendor headers is used. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef int cudart_error;
typedef cudart_error (*get_device_count_t)(int *);
typedef cudart_error (*driver_get_version_t)(int *);
typedef cudart_error (*malloc_t)(void **, size_t);
typedef cudart_error (*mem_get_info_t)(size_t *, size_t *);
typedef cudart_error (*free_t)(void *);
typedef const char *(*error_string_t)(cudart_error);

static error_string_t error_string;

static const char *text(cudart_error e)
{
    const char *s = error_string ? error_string(e) : NULL;
    return s ? s : "?";
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s <libcudart.so> [alloc-size-bytes]\n", argv[0]);
        return 2;
    }
    size_t size = argc > 2 ? strtoull(argv[2], NULL, 0) : (size_t)1 << 20;
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* Hold a reference to the driver so it stays loaded (and its call counts survive) even
     * if cudart gives up and dlclose()s it; cudart's own dlopen gets the same object. */
    void *driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        printf("dlopen failed: %s\n", dlerror());
        return 1;
    }
    get_device_count_t get_device_count = (get_device_count_t)dlsym(lib, "cudaGetDeviceCount");
    driver_get_version_t driver_version = (driver_get_version_t)dlsym(lib, "cudaDriverGetVersion");
    malloc_t cmalloc = (malloc_t)dlsym(lib, "cudaMalloc");
    mem_get_info_t mem_info = (mem_get_info_t)dlsym(lib, "cudaMemGetInfo");
    free_t cfree = (free_t)dlsym(lib, "cudaFree");
    error_string = (error_string_t)dlsym(lib, "cudaGetErrorString");
    if (!get_device_count || !driver_version || !cmalloc || !mem_info || !cfree || !error_string) {
        printf("dlsym failed for a runtime function\n");
        return 1;
    }

    int v = 0, n = 0;
    cudart_error e = driver_version(&v);
    printf("cudaDriverGetVersion %d v=%d err=\"%s\"\n", e, v, text(e));
    e = get_device_count(&n);
    printf("cudaGetDeviceCount %d n=%d err=\"%s\"\n", e, n, text(e));
    void *p = NULL;
    e = cmalloc(&p, size);
    printf("cudaMalloc %d size=%zu ptr=%p err=\"%s\"\n", e, size, p, text(e));
    size_t f = 0, t = 0;
    e = mem_info(&f, &t);
    printf("cudaMemGetInfo %d free=%zu total=%zu err=\"%s\"\n", e, f, t, text(e));
    e = cfree(p);
    printf("cudaFree %d err=\"%s\"\n", e, text(e));

    /* Which driver entry points cudart actually called (when the driver is fakegpu). */
    size_t (*summary)(char *, size_t) =
        driver ? (size_t (*)(char *, size_t))dlsym(driver, "fakegpu_call_summary") : NULL;
    if (summary != NULL) {
        static char calls[16384];
        summary(calls, sizeof calls);
        printf("driver-calls %s\n", calls);
    }
    return 0;
}
