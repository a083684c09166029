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

// for_each_kernel with a per-CTA value S in shared memory: prep(j, &s) for j < PREP_N by the CTA's threads,
// one barrier, then f(i, s) for every tile.
template <class S, int PREP_N, class P, class F>
__global__ void __launch_bounds__(THREADS) for_each_shared_kernel(int64_t n, P prep, F f) {
  __shared__ S s;
  for (int j = threadIdx.x; j < PREP_N; j += THREADS) prep(j, &s);
  __syncthreads();
  const int64_t stride = (int64_t)gridDim.x * THREADS;
  for (int64_t i = (int64_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += stride) f(i, s);
}

// for_each_kernel whose f(i, stage) also gets its warp's BYTES * 32 bytes of shared memory (store_tile).
template <int BYTES, class F>
__global__ void __launch_bounds__(THREADS) for_each_staged_kernel(int64_t n, F f) {
  __shared__ __align__(16) uint8_t stage[THREADS * BYTES];
  uint8_t* const mine = stage + (threadIdx.x >> 5) * (32 * BYTES);
  const int64_t stride = (int64_t)gridDim.x * THREADS;
  for (int64_t i = (int64_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += stride) f(i, mine);
}

// OR (error flags) or unsigned max (float32 magnitude bits) of f(i) over all i into *acc: per thread (a
// grid-stride loop over a grid of at most REDUCE_BLOCKS blocks), then per warp, then per block through
// shared memory, then one atomic per block. (Atomics on one address are serialized at the L2: one per warp
// of a one-tile-per-thread grid was 131,072 of them for an 8192^2 NVFP4 amax.)
constexpr int64_t REDUCE_BLOCKS = 1024;

template <bool MAX, class F>
__global__ void __launch_bounds__(THREADS) reduce_kernel(int64_t n, uint32_t* acc, F f) {
  __shared__ uint32_t part[THREADS / 32];
  const int64_t stride = (int64_t)gridDim.x * THREADS;
  uint32_t a = 0;
  for (int64_t i = (int64_t)blockIdx.x * THREADS + threadIdx.x; i < n; i += stride) {
    const uint32_t v = f(i);
    a = MAX ? (v > a ? v : a) : (a | v);
  }
  a = MAX ? __reduce_max_sync(0xFFFFFFFFu, a) : __reduce_or_sync(0xFFFFFFFFu, a);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = a;
  __syncthreads();
  if (threadIdx.x < 32) {
    uint32_t b = threadIdx.x < THREADS / 32 ? part[threadIdx.x] : 0u;
    b = MAX ? __reduce_max_sync(0xFFFFFFFFu, b) : __reduce_or_sync(0xFFFFFFFFu, b);
    if (threadIdx.x == 0 && b != 0) {
      if (MAX) atomicMax(acc, b);
      else atomicOr(acc, b);
    }
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
  // WARPS (the lane-split rotations' calls, n a multiple of 32) changes nothing here: every GPU warp runs its
  // 32 lanes together.
  template <bool WARPS = false, class F>
  void run(int64_t n, F f) {
    if (n <= 0 || rc != 0) return;
    for_each_kernel<<<grid(n), THREADS, 0, stream>>>(n, f);
    note();
  }
  template <class S, int PREP_N, bool WARPS = false, class P, class F>
  void run_shared(int64_t n, P prep, F f) {
    if (n <= 0 || rc != 0) return;
    for_each_shared_kernel<S, PREP_N><<<grid(n), THREADS, 0, stream>>>(n, prep, f);
    note();
  }
  template <int BYTES, class F>
  void run_staged(int64_t n, F f) {
    if (n <= 0 || rc != 0) return;
    for_each_staged_kernel<BYTES><<<grid(n), THREADS, 0, stream>>>(n, f);
    note();
  }
  static unsigned reduce_grid(int64_t n) {
    const int64_t blocks = (n + THREADS - 1) / THREADS;
    return (unsigned)(blocks < REDUCE_BLOCKS ? blocks : REDUCE_BLOCKS);
  }
  template <class F>
  void reduce_or(int64_t n, uint32_t* acc, F f) {
    if (n <= 0 || rc != 0) return;
    reduce_kernel<false><<<reduce_grid(n), THREADS, 0, stream>>>(n, acc, f);
    note();
  }
  template <bool WARPS = false, class F>
  void reduce_max(int64_t n, uint32_t* acc, F f) {
    if (n <= 0 || rc != 0) return;
    reduce_kernel<true><<<reduce_grid(n), THREADS, 0, stream>>>(n, acc, f);
    note();
  }
  int status() const { return rc; }
};

}  // namespace fp4ref
