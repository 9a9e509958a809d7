// Host cost of the runtime calls libvgpu sits on, for bench/gpu/overhead.sh (run with and
// without the preload, interleaved; the script compares medians). One "key value" line each:
//   launch_us            enqueue of an empty kernel <<<1,1>>> on the legacy default stream
//   launch_paced_us      the same, each batch followed by 3x its time of idle (not timed): a job
//                        well within a 50 % compute share, so a limited run measures the
//                        limiter's fast path, not its throttling
//   malloc_free_us       cudaMalloc + cudaFree of 1 MiB
//   mallocasync_free_us  cudaMallocAsync + cudaFreeAsync of 1 MiB (pool hit: the default pool
//                        keeps its memory, release threshold = max)
//   memgetinfo_us        cudaMemGetInfo
// Launches and stream-ordered allocations are timed in batches of 256 with a synchronisation
// between batches that is not timed, so a full launch queue never turns host cost into GPU time.
//   overhead_api [scale]   scale multiplies the call counts (default 1).
#include <cuda_runtime.h>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>

__global__ void empty_kernel() {}

static double now_us() {
  return std::chrono::duration<double, std::micro>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
  fprintf(stderr, "%s failed: %s\n", #x, cudaGetErrorString(e_)); return 1; } } while (0)

int main(int argc, char **argv) {
  const double scale = argc > 1 ? atof(argv[1]) : 1.0;
  const int BATCH = 256;
  const int launch_batches = (int)(80 * scale), alloc_n = (int)(2000 * scale);
  const int async_batches = (int)(80 * scale), info_n = (int)(20000 * scale);
  CK(cudaFree(0));
  cudaMemPool_t pool;
  CK(cudaDeviceGetDefaultMemPool(&pool, 0));
  uint64_t keep = UINT64_MAX;
  CK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));

  // Warm up every path: lazy module loading, the pool's first growth, our lazy state.
  void *p;
  size_t fr, tot;
  for (int i = 0; i < 1000; i++) empty_kernel<<<1, 1>>>();
  for (int i = 0; i < 50; i++) { CK(cudaMalloc(&p, 1 << 20)); CK(cudaFree(p)); }
  for (int i = 0; i < 1000; i++) { CK(cudaMallocAsync(&p, 1 << 20, 0)); CK(cudaFreeAsync(p, 0)); }
  for (int i = 0; i < 100; i++) CK(cudaMemGetInfo(&fr, &tot));
  CK(cudaDeviceSynchronize());

  double busy = 0;
  for (int b = 0; b < launch_batches; b++) {
    double t0 = now_us();
    for (int i = 0; i < BATCH; i++) empty_kernel<<<1, 1>>>();
    busy += now_us() - t0;
    CK(cudaDeviceSynchronize());
  }
  CK(cudaGetLastError());
  printf("launch_us %.4f\n", busy / (launch_batches * BATCH));

  busy = 0;
  const int paced_batches = (int)(20 * scale);
  for (int b = 0; b < paced_batches; b++) {
    double t1 = now_us();
    for (int i = 0; i < BATCH; i++) empty_kernel<<<1, 1>>>();
    double spent = now_us() - t1;
    busy += spent;
    CK(cudaDeviceSynchronize());
    double idle_until = now_us() + 3 * (now_us() - t1);
    while (now_us() < idle_until) {
      struct timespec ts = {0, 100000};
      nanosleep(&ts, nullptr);
    }
  }
  printf("launch_paced_us %.4f\n", busy / (paced_batches * BATCH));

  double t0 = now_us();
  for (int i = 0; i < alloc_n; i++) { CK(cudaMalloc(&p, 1 << 20)); CK(cudaFree(p)); }
  printf("malloc_free_us %.4f\n", (now_us() - t0) / alloc_n);

  busy = 0;
  for (int b = 0; b < async_batches; b++) {
    double t1 = now_us();
    for (int i = 0; i < BATCH; i++) { CK(cudaMallocAsync(&p, 1 << 20, 0)); CK(cudaFreeAsync(p, 0)); }
    busy += now_us() - t1;
    CK(cudaDeviceSynchronize());
  }
  printf("mallocasync_free_us %.4f\n", busy / (async_batches * BATCH));

  t0 = now_us();
  for (int i = 0; i < info_n; i++) CK(cudaMemGetInfo(&fr, &tot));
  printf("memgetinfo_us %.4f\n", (now_us() - t0) / info_n);
  printf("memgetinfo_total_MiB %zu\n", tot >> 20);
  return 0;
}
