/* A program linked against NVML with -lnvidia-ml: every NVML call binds at load time to the
 * exported symbol it names (the door an LD_PRELOAD interposer sees through symbol lookup),
 * and it probes how errors come back.
 *
 *   nvml_linked
 *
 * Output:
 *   init <code>
 *   count <code> n=<devices>
 *   gpu <i> <uuid> total=<b> used=<b> free=<b> reserved=<b> v1total=<b> v1used=<b> v1free=<b>
 *   gpu <i> <used>MiB / <total>MiB
 *   gpu <i> error <function> <code>                            (on a failed query)
 *   probe <name> <code>                                        (error probes, device 0)
 *   shutdown <code>
 *   probe after-shutdown <code>          (nvmlDeviceGetMemoryInfo_v2 after the last shutdown)
 * Probes: v2-version (a version-1 struct given to nvmlDeviceGetMemoryInfo_v2), v2-bad-handle
 * and v1-bad-handle (a pointer that is no device), v2-null and v1-null (NULL out-pointer).
 */
#include <stdio.h>
#include <string.h>

#include "vgpu_nvml.h"

static nvmlDevice_t bogus_handle(void)
{
    static int not_a_device;
    return (nvmlDevice_t)(void *)&not_a_device;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    nvmlReturn_t r = nvmlInitWithFlags(0);
    printf("init %u\n", r);
    if (r != NVML_SUCCESS)
        return 1;
    unsigned int n = 0;
    r = nvmlDeviceGetCount_v2(&n);
    printf("count %u n=%u\n", r, n);

    nvmlDevice_t first = NULL;
    for (unsigned int i = 0; i < n; i++) {
        nvmlDevice_t dev = NULL;
        char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE] = "";
        nvmlMemory_v2_t m2;
        nvmlMemory_t m1;
        if ((r = nvmlDeviceGetHandleByIndex_v2(i, &dev)) != NVML_SUCCESS) {
            printf("gpu %u error nvmlDeviceGetHandleByIndex_v2 %u\n", i, r);
            continue;
        }
        if (i == 0)
            first = dev;
        if ((r = nvmlDeviceGetUUID(dev, uuid, sizeof uuid)) != NVML_SUCCESS)
            printf("gpu %u error nvmlDeviceGetUUID %u\n", i, r);
        memset(&m2, 0, sizeof m2);
        m2.version = NVML_MEMORY_V2;
        if ((r = nvmlDeviceGetMemoryInfo_v2(dev, &m2)) != NVML_SUCCESS)
            printf("gpu %u error nvmlDeviceGetMemoryInfo_v2 %u\n", i, r);
        memset(&m1, 0, sizeof m1);
        if ((r = nvmlDeviceGetMemoryInfo(dev, &m1)) != NVML_SUCCESS)
            printf("gpu %u error nvmlDeviceGetMemoryInfo %u\n", i, r);
        printf("gpu %u %s total=%llu used=%llu free=%llu reserved=%llu v1total=%llu v1used=%llu "
               "v1free=%llu\n",
               i, uuid, m2.total, m2.used, m2.free, m2.reserved, m1.total, m1.used, m1.free);
        printf("gpu %u %lluMiB / %lluMiB\n", i, m2.used >> 20, m2.total >> 20);
    }
    if (first == NULL)
        return 1;

    nvmlMemory_v2_t m2;
    nvmlMemory_t m1;
    memset(&m2, 0, sizeof m2);
    m2.version = (unsigned int)(sizeof(nvmlMemory_v2_t) | (1u << 24));
    printf("probe v2-version %u\n", nvmlDeviceGetMemoryInfo_v2(first, &m2));
    memset(&m2, 0, sizeof m2);
    m2.version = NVML_MEMORY_V2;
    printf("probe v2-bad-handle %u\n", nvmlDeviceGetMemoryInfo_v2(bogus_handle(), &m2));
    printf("probe v1-bad-handle %u\n", nvmlDeviceGetMemoryInfo(bogus_handle(), &m1));
    printf("probe v2-null %u\n", nvmlDeviceGetMemoryInfo_v2(first, NULL));
    printf("probe v1-null %u\n", nvmlDeviceGetMemoryInfo(first, NULL));

    printf("shutdown %u\n", nvmlShutdown());
    memset(&m2, 0, sizeof m2);
    m2.version = NVML_MEMORY_V2;
    printf("probe after-shutdown %u\n", nvmlDeviceGetMemoryInfo_v2(first, &m2));
    return 0;
}
