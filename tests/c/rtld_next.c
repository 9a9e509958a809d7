/* dlsym(RTLD_NEXT, ...) from the main program must search the objects after the program —
 * the preloaded library first — exactly as if libvgpu's dlsym were not there. A dlsym wrapper
 * that is not a tail call makes glibc think libvgpu is the caller and skip its own hooks.
 * Linked with -lcuda so the driver is in the search list. Prints `next <name> lib=<file>`. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "vgpu_cuda.h"

static void show(const char *name) {
    void *p = dlsym(RTLD_NEXT, name);
    Dl_info info;
    const char *lib = "-";
    if (p != NULL && dladdr(p, &info) && info.dli_fname != NULL) {
        const char *slash = strrchr(info.dli_fname, '/');
        lib = slash ? slash + 1 : info.dli_fname;
    }
    printf("next %s lib=%s\n", name, lib);
}

int main(void) {
    /* Keep a reference so -lcuda stays in DT_NEEDED. */
    unsigned int flags = 0;
    (void)cuInit(flags);
    show("cuMemAlloc_v2");
    show("cuInit");
    show("dlsym");
    show("strlen");
    return 0;
}
