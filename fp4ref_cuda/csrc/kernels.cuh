// CudaExec: runs dispatch.cuh's "for every tile i, f(i)" as grid-stride CUDA kernels (one tile per thread).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "dispatch.cuh"

namespace fp4ref {

constexpr int THREADS = 256;

template <class F>
__global__ void __launch_bounds__(THREADS) for_each_kernel(int64_t n, F f) {
  const int64_t stride = (int64_t)gridDim.x * THREADS;
  for (int64_t i = (int64_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += stride) f(i);
}

// OR (error flags) or unsigned max (float32 magnitude bits) of f(i) over all i into *acc: per thread, then
// per warp, then one atomic per warp.
template <bool MAX, class F>
__global__ void __launch_bounds__(THREADS) reduce_kernel(int64_t n, uint32_t* acc, F f) {
  const int64_t stride = (int64_t)gridDim.x * THREADS;
  uint32_t a = 0;
  for (int64_t i = (int64_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += stride) {
    const uint32_t v = f(i);
    a = MAX ? (v > a ? v : a) : (a | v);
  }
  a = MAX ? __reduce_max_sync(0xFFFFFFFFu, a) : __reduce_or_sync(0xFFFFFFFFu, a);
  if ((threadIdx.x & 31) == 0 && a != 0) {
    if (MAX) atomicMax(acc, a);
    else atomicOr(acc, a);
  }
}

struct CudaExec {
  cudaStream_t stream;
  int rc = 0;

  explicit CudaExec(void* s) : stream(static_cast<cudaStream_t>(s)) {}

  static unsigned grid(int64_t n) {
    const int64_t blocks = (n + THREADS - 1) / THREADS;
    return (unsigned)(blocks < (1 << 30) ? blocks : (1 << 30));  // grid-stride beyond that
  }
  void note() {
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess && rc == 0) rc = (int)e;
  }
  template <class F>
  void run(int64_t n, F f) {
    if (n <= 0 || rc != 0) return;
    for_each_kernel<<<grid(n), THREADS, 0, stream>>>(n, f);
    note();
  }
  template <class F>
  void reduce_or(int64_t n, uint32_t* acc, F f) {
    if (n <= 0 || rc != 0) return;
    reduce_kernel<false><<<grid(n), THREADS, 0, stream>>>(n, acc, f);
    note();
  }
  template <class F>
  void reduce_max(int64_t n, uint32_t* acc, F f) {
    if (n <= 0 || rc != 0) return;
    reduce_kernel<true><<<grid(n), THREADS, 0, stream>>>(n, acc, f);
    note();
  }
  int status() const { return rc; }
};

}  // namespace fp4ref
