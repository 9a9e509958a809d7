// Host cost of the hot CUDA paths libvgpu sits on. One "key value" line per figure (µs);
// run_acceptance.sh runs it interleaved with and without the preload and compares medians,
// because absolute times vary ~20 % between runs of the same binary.
#include <cuda_runtime.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>

__global__ void empty_kernel() {}

static double now_us() {
  return std::chrono::duration<double, std::micro>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
  fprintf(stderr, "%s failed: %s\n", #x, cudaGetErrorString(e_)); return 1; } } while (0)

int main() {
  const int LAUNCHES = 20000, ALLOCS = 2000, INFOS = 20000;
  CK(cudaFree(0));
  // Warm up every path so lazy loading and first-call setup are not timed.
  void *p;
  size_t fr, tot;
  for (int i = 0; i < 1000; i++) empty_kernel<<<1, 1>>>();
  for (int i = 0; i < 50; i++) { CK(cudaMalloc(&p, 1 << 20)); CK(cudaFree(p)); }
  for (int i = 0; i < 100; i++) CK(cudaMemGetInfo(&fr, &tot));
  CK(cudaDeviceSynchronize());

  double t0 = now_us();
  for (int i = 0; i < LAUNCHES; i++) empty_kernel<<<1, 1>>>();
  double t1 = now_us();  // enqueue only: the host cost the limiter's gate adds to
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  printf("launch_us %.3f\n", (t1 - t0) / LAUNCHES);

  t0 = now_us();
  for (int i = 0; i < ALLOCS; i++) { CK(cudaMalloc(&p, 1 << 20)); CK(cudaFree(p)); }
  t1 = now_us();
  printf("malloc_free_1MiB_us %.3f\n", (t1 - t0) / ALLOCS);

  t0 = now_us();
  for (int i = 0; i < INFOS; i++) CK(cudaMemGetInfo(&fr, &tot));
  t1 = now_us();
  printf("memgetinfo_us %.3f\n", (t1 - t0) / INFOS);
  printf("memgetinfo_total_MiB %zu\n", tot >> 20);
  return 0;
}
