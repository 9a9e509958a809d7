// What a CUDA runtime program sees and can allocate under a memory cap.
// Runtime API only (no -lcuda): cudart reaches the driver through dlopen + cuGetProcAddress,
// the path every real application takes. Build static (default) and with --cudart shared.
// Prints "key value" lines for run_acceptance.sh.
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

// The process's real device footprint as NVML sees it from outside. LD_PRELOAD is dropped for
// nvidia-smi so the answer is the driver's, not libvgpu's view. In a PID namespace our pid may
// be absent: then report the largest process (this suite runs one GPU program at a time).
static long footprint_mib(const char **how) {
  FILE *f = popen("env -u LD_PRELOAD timeout -k 2 20 nvidia-smi "
                  "--query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null",
                  "r");
  *how = "none";
  if (!f) return -1;
  long pid, mib, mine = -1, max = -1;
  while (fscanf(f, " %ld , %ld", &pid, &mib) == 2) {
    if (pid == (long)getpid()) mine = mib;
    if (mib > max) max = mib;
  }
  pclose(f);
  if (mine >= 0) { *how = "pid"; return mine; }
  if (max >= 0) *how = "max";
  return max;
}

int main() {
  size_t fr = 0, tot = 0;
  cudaError_t e = cudaMemGetInfo(&fr, &tot);
  if (e != cudaSuccess) { printf("init_error %s\n", cudaGetErrorString(e)); return 2; }
  cudaDeviceProp prop;
  e = cudaGetDeviceProperties(&prop, 0);
  printf("memgetinfo_total_MiB %zu\nmemgetinfo_free_MiB %zu\n", tot >> 20, fr >> 20);
  printf("totalGlobalMem_MiB %zu\n", e == cudaSuccess ? prop.totalGlobalMem >> 20 : 0);

  const size_t B = 256ull << 20;
  const int MAXB = 8192;  // 2 TiB: a bound in case allocation never fails
  static void *blk[MAXB];
  int n = 0;
  while (n < MAXB && (e = cudaMalloc(&blk[n], B)) == cudaSuccess) n++;
  printf("alloc_blocks %d\nalloc_MiB %d\n", n, n * 256);
  printf("alloc_error %s\n", n < MAXB ? cudaGetErrorName(e) : "none");
  printf("alloc_error_string %s\n", n < MAXB ? cudaGetErrorString(e) : "none");
  cudaGetLastError();  // the failed cudaMalloc must not poison later calls
  if (cudaMemGetInfo(&fr, &tot) == cudaSuccess) printf("peak_free_MiB %zu\n", fr >> 20);
  const char *how;
  long fp = footprint_mib(&how);
  printf("footprint_MiB %ld\nfootprint_source %s\n", fp, how);

  for (int i = 0; i < n; i++) cudaFree(blk[i]);
  void *q = nullptr;
  e = cudaMalloc(&q, B);
  if (e == cudaSuccess) e = cudaMemset(q, 1, B);
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  printf("realloc %s\n", e == cudaSuccess ? "ok" : cudaGetErrorString(e));
  cudaFree(q);
  return 0;
}
