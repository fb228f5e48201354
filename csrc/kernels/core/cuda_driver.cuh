// The GPU driver of a per-task op (declared for the host in
// kernels/core/cuda_launch.h): one thread block per task runs the op's
// run_task() with BlockLanes, its lanes the block's threads. One launch for
// the whole meta-batch; no host synchronisation inside. A task's scratch
// lives in shared memory when it fits, else in a global buffer [T, W].
// Included by an op's kernel.cu only (nvcc).
#pragma once
#include <cuda_runtime_api.h>

#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

#include "common/cuda_check.h"
#include "kernels/core/cuda_launch.h"
#include "kernels/core/lanes.h"

namespace metafast {

constexpr int kBlockThreads = 256;

template <typename T>
__device__ __forceinline__ T* block_workspace(T* global, int64_t stride, bool shared) {
  extern __shared__ __align__(16) unsigned char shared_workspace[];
  return shared ? reinterpret_cast<T*>(shared_workspace) : global + int64_t(blockIdx.x) * stride;
}

template <typename Args>
__global__ void __launch_bounds__(kBlockThreads) per_task_kernel(const Args a, bool shared) {
  run_task(BlockLanes{}, a, int(blockIdx.x), block_workspace(a.p.workspace, a.p.workspace_stride, shared));
}

constexpr size_t kDefaultSharedBytes = 48 * 1024;  // always allowed without opting in

// The dynamic shared memory `kernel` may use on the current device. The
// opt-in limit is raised once per device and kernel, never per launch: two
// host threads setting different limits could otherwise interleave with each
// other's launches, and the larger launch would fail.
inline size_t shared_memory_limit(const void* kernel) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, size_t> limits;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return kDefaultSharedBytes;
  }
  std::lock_guard<std::mutex> lock(mutex);
  auto [entry, first] = limits.try_emplace({kernel, device}, kDefaultSharedBytes);
  if (first) {
    int optin = 0;
    cudaFuncAttributes attributes{};
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess &&
        cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess &&
        size_t(optin) > attributes.sharedSizeBytes + kDefaultSharedBytes) {
      const int dynamic = optin - int(attributes.sharedSizeBytes);
      if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dynamic) == cudaSuccess) {
        entry->second = size_t(dynamic);
      }
    }
    (void)cudaGetLastError();  // our own failed query: the 48 KB default (or global memory) serves instead
  }
  return entry->second;
}

// Bytes of shared memory to use for a workspace of `bytes` (0: use global).
// An earlier pending error is reported, not swallowed, so that clearing our
// own failed attribute calls can only clear our own error.
template <typename Kernel>
size_t shared_bytes_for(Kernel kernel, size_t bytes, const char* what) {
  check_launch(what, "an earlier CUDA call failed");
  if (bytes <= kDefaultSharedBytes) return bytes;
  return bytes <= shared_memory_limit(reinterpret_cast<const void*>(kernel)) ? bytes : 0;
}

template <typename Args>
size_t per_task_shared_bytes(int64_t workspace_elems, const char* op) {
  using T = std::remove_pointer_t<decltype(std::declval<const Args&>().p.workspace)>;
  return shared_bytes_for(per_task_kernel<Args>, size_t(workspace_elems) * sizeof(T), op);
}

template <typename Args>
void launch_per_task(const Args& a, size_t smem, cudaStream_t stream, const char* op) {
  per_task_kernel<Args><<<a.p.tasks, kBlockThreads, smem, stream>>>(a, smem > 0);
  check_launch(op, "kernel launch failed");
}

}  // namespace metafast

// The GPU driver for one argument struct of an op (in its kernel.cu).
#define MF_INSTANTIATE_PER_TASK_KERNEL(ARGS)                                           \
  template size_t metafast::per_task_shared_bytes<ARGS>(int64_t, const char*);        \
  template void metafast::launch_per_task<ARGS>(const ARGS&, size_t, cudaStream_t, const char*);
