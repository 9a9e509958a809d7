// Pointer-identity probe (DESIGN §2.3).
//
// libvgpu's cuGetProcAddress hook calls the real one and swaps the answer for a hook only when the
// returned pointer is the address of a real function it hooks. That works only if every non-null
// answer of the real cuGetProcAddress_v2 is the address of an *exported* libcuda symbol. This probe
// checks that assumption on the driver it runs on, and — run under LD_PRELOAD with --ref — checks
// that the hook keeps rc/symbolStatus verbatim and swaps each hooked answer for the hook exported
// under the *same* name (so the caller still gets the ABI version it asked for).
//
//   procaddr_identity --where                       print the path of the libcuda.so.1 loaded
//   procaddr_identity NAMES [--dump F] [--ref F] [--hooklib LIB]
//
// Plain C, no CUDA headers: the few types are declared here. Build: gcc -O2 -o X this.c -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef unsigned long long cuuint64_t;
typedef int CUdriverProcAddressQueryResult;
typedef CUresult (*GetProcV2)(const char *, void **, int, cuuint64_t,
                              CUdriverProcAddressQueryResult *);

static const int VERS[] = {3000,  3020,  4000,  5000,  6000,  7000,  8000,  9000,
                           10000, 11000, 11040, 12000, 12050, 12080, 13000, 13100};
#define NVERS (int)(sizeof VERS / sizeof VERS[0])

static GetProcV2 get_proc;
static const char *cuda_path; // l_name of the libcuda we opened
static void *hook_handle;     // the preloaded library, if --hooklib was given

static const char *base(const char *p) {
  const char *s = strrchr(p, '/');
  return s ? s + 1 : p;
}

// Name and library of the exported symbol at exactly `p`, or NULL if `p` is not one.
static const char *exported_name(void *p, const char **lib) {
  Dl_info di;
  *lib = "-";
  if (!dladdr(p, &di) || !di.dli_fname) return NULL;
  *lib = strcmp(di.dli_fname, cuda_path) == 0 ? "libcuda" : base(di.dli_fname);
  if (!di.dli_sname || di.dli_saddr != p || strncmp(di.dli_sname, "cu", 2) != 0) return NULL;
  return di.dli_sname;
}

// Distinct strings, for the per-library counts and the list of swapped names.
typedef struct { char *s[4096]; long n[4096]; int len; } Set;
static void set_add(Set *t, const char *s) {
  for (int i = 0; i < t->len; i++)
    if (strcmp(t->s[i], s) == 0) { t->n[i]++; return; }
  if (t->len < 4096) { t->s[t->len] = strdup(s); t->n[t->len++] = 1; }
}

static void example(const char *name, int ver, int flags) {
  void *p = NULL;
  CUdriverProcAddressQueryResult st = -1;
  CUresult rc = get_proc(name, &p, ver, flags, &st);
  const char *lib, *sym = p ? exported_name(p, &lib) : NULL;
  if (!p) lib = "-";
  printf("example %s@%d flags %d -> %s (%s) rc=%d status=%d\n", name, ver, flags,
         p ? (sym ? sym : "NOT-EXPORTED") : "NULL", lib, rc, st);
}

int main(int argc, char **argv) {
  const char *names_path = NULL, *dump_path = NULL, *ref_path = NULL, *hooklib = NULL;
  int where = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--where")) where = 1;
    else if (!strcmp(argv[i], "--dump") && i + 1 < argc) dump_path = argv[++i];
    else if (!strcmp(argv[i], "--ref") && i + 1 < argc) ref_path = argv[++i];
    else if (!strcmp(argv[i], "--hooklib") && i + 1 < argc) hooklib = argv[++i];
    else names_path = argv[i];
  }
  void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) { fprintf(stderr, "dlopen libcuda.so.1: %s\n", dlerror()); return 2; }
  struct link_map *lm = NULL;
  if (dlinfo(h, RTLD_DI_LINKMAP, &lm) || !lm) { fprintf(stderr, "dlinfo failed\n"); return 2; }
  cuda_path = lm->l_name;
  if (where) { puts(cuda_path); return 0; }
  if (!names_path) {
    fprintf(stderr, "usage: %s NAMES [--dump F] [--ref F] [--hooklib LIB] | --where\n", argv[0]);
    return 2;
  }
  // Under LD_PRELOAD this dlsym is libvgpu's override and yields its cuGetProcAddress_v2 hook:
  // exactly what cudart gets.
  get_proc = (GetProcV2)dlsym(h, "cuGetProcAddress_v2");
  if (!get_proc) { fprintf(stderr, "no cuGetProcAddress_v2\n"); return 2; }
  if (hooklib && !(hook_handle = dlopen(hooklib, RTLD_NOW | RTLD_NOLOAD)))
    fprintf(stderr, "warning: %s is not loaded (is LD_PRELOAD set?)\n", hooklib);

  FILE *nf = fopen(names_path, "r");
  FILE *df = dump_path ? fopen(dump_path, "w") : NULL;
  FILE *rf = ref_path ? fopen(ref_path, "r") : NULL;
  if (!nf || (dump_path && !df) || (ref_path && !rf)) { perror("open"); return 2; }

  long queries = 0, nonnull = 0, exported = 0, not_exported = 0;
  long rc_mismatch = 0, swapped = 0, name_mismatch = 0, missed = 0;
  Set libs = {0}, swapped_names = {0};
  char name[512];
  while (fscanf(nf, "%511s", name) == 1) {
    for (int v = 0; v < NVERS; v++)
      for (int flags = 0; flags < 3; flags++) {
        void *p = NULL;
        CUdriverProcAddressQueryResult st = -1;
        CUresult rc = get_proc(name, &p, VERS[v], flags, &st);
        queries++;
        const char *lib = "-", *sym = NULL;
        if (p) {
          nonnull++;
          sym = exported_name(p, &lib);
          set_add(&libs, lib);
          if (sym) exported++;
          else if (++not_exported <= 20)
            printf("NOT-EXPORTED %s@%d flags %d -> %p (%s)\n", name, VERS[v], flags, p, lib);
        }
        if (df) fprintf(df, "%s %d %d %d %d %s %s\n", name, VERS[v], flags, rc, st,
                        sym ? sym : (p ? "?" : "-"), lib);
        if (!rf) continue;
        // The reference run (no preload) made the same queries in the same order.
        char rname[512], rsym[512], rlib[512];
        int rver, rflags, rrc, rst;
        if (fscanf(rf, "%511s %d %d %d %d %511s %511s", rname, &rver, &rflags, &rrc, &rst, rsym,
                   rlib) != 7 ||
            strcmp(rname, name) || rver != VERS[v] || rflags != flags) {
          fprintf(stderr, "reference dump out of step at %s@%d/%d\n", name, VERS[v], flags);
          return 2;
        }
        if (rrc != rc || rst != st || (!p) != (strcmp(rsym, "-") == 0)) {
          if (++rc_mismatch <= 20)
            printf("RC-MISMATCH %s@%d flags %d: rc %d/%d status %d/%d (ref/now)\n", name,
                   VERS[v], flags, rrc, rc, rst, st);
          continue;
        }
        if (!p) continue;
        if (strcmp(lib, "libcuda") != 0) {
          // Swapped: the hook must be the one libvgpu exports under the real symbol's name;
          // dladdr may pick an alias, so compare addresses rather than names.
          swapped++;
          set_add(&swapped_names, rsym);
          if (!hook_handle || dlsym(hook_handle, rsym) != p) {
            if (++name_mismatch <= 20)
              printf("NAME-MISMATCH %s@%d flags %d: real %s, hook is %s (%s)\n", name, VERS[v],
                     flags, rsym, sym ? sym : "?", lib);
          }
        } else if (hook_handle) {
          // Not swapped although libvgpu exports a hook of that name: callers bypass the hook.
          void *hp = dlsym(hook_handle, rsym);
          Dl_info di;
          if (hp && hp != p && dladdr(hp, &di) && di.dli_fname &&
              strcmp(di.dli_fname, cuda_path) != 0 && ++missed <= 20)
            printf("MISSED-SWAP %s@%d flags %d -> real %s, hook exists in %s\n", name, VERS[v],
                   flags, rsym, base(di.dli_fname));
        }
      }
  }
  if (df) fclose(df);

  printf("cuda_library %s\n", cuda_path);
  printf("queries %ld\nnonnull %ld\nexported %ld\nnot_exported %ld\n", queries, nonnull,
         exported, not_exported);
  for (int i = 0; i < libs.len; i++) printf("answers_in %s %ld\n", libs.s[i], libs.n[i]);
  example("cuMemAlloc", 3020, 0);
  example("cuLaunchKernel", 7000, 2);
  example("cuGetProcAddress", 12000, 0);
  example("cuMemGetInfo", 3020, 0);
  example("cuDeviceTotalMem", 3020, 0);
  int ok = nonnull > 0 && not_exported == 0;
  if (rf) {
    printf("rc_mismatch %ld\nswapped %ld\nswapped_distinct %d\nname_mismatch %ld\n"
           "missed_swaps %ld\n",
           rc_mismatch, swapped, swapped_names.len, name_mismatch, missed);
    printf("swapped_names");
    for (int i = 0; i < swapped_names.len; i++) printf(" %s", swapped_names.s[i]);
    printf("\n");
    ok = ok && rc_mismatch == 0 && name_mismatch == 0 && missed == 0 && swapped > 0;
  }
  printf("RESULT %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
