// CUDA kernels of metafast::mlp_adapt: one thread block per task runs the
// per-task algorithm of kernels/mlp/task.h (the code the CPU kernel runs),
// its lanes being the block's threads. One launch for the whole meta-batch and
// all inner steps; no host synchronisation inside. A task's scratch (gradient,
// HVP, activations) lives in shared memory when it fits (the sinusoid MLP in
// float32 needs 40 KB), else in a global buffer.
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

#include "common/cuda_check.h"
#include "ops/mlp_adapt/launch.h"
#include "kernels/mlp/task.h"

namespace metafast {
namespace {

struct BlockLanes {
  static constexpr bool kSerial = false;
  __device__ __forceinline__ int lane() const { return threadIdx.x; }
  __device__ __forceinline__ int count() const { return blockDim.x; }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  __device__ __forceinline__ bool leader() const { return threadIdx.x == 0; }
};

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ T* task_workspace(T* global, int64_t stride, bool shared) {
  extern __shared__ __align__(16) unsigned char shared_workspace[];
  return shared ? reinterpret_cast<T*>(shared_workspace) : global + int64_t(blockIdx.x) * stride;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) mlp_adapt_forward_kernel(const MlpAdaptForwardArgs<T> a, bool shared) {
  mlp_adapt_forward_task<T>(BlockLanes{}, a, int(blockIdx.x), task_workspace(a.p.workspace, a.p.workspace_stride, shared));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) mlp_adapt_backward_kernel(const MlpAdaptBackwardArgs<T> a, bool shared) {
  mlp_adapt_backward_task<T>(BlockLanes{}, a, int(blockIdx.x), task_workspace(a.p.workspace, a.p.workspace_stride, shared));
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

template <typename Args, typename Kernel>
void launch(Kernel kernel, const Args& a, size_t smem, cudaStream_t s, const char* what) {
  kernel<<<a.p.tasks, kThreads, smem, s>>>(a, smem > 0);
  check_launch(what, "kernel launch failed");
}

}  // namespace

// The kernel of a call, by its argument type.
template <typename T>
auto kernel_of(const MlpAdaptForwardArgs<T>*) { return mlp_adapt_forward_kernel<T>; }
template <typename T>
auto kernel_of(const MlpAdaptBackwardArgs<T>*) { return mlp_adapt_backward_kernel<T>; }
template <typename T>
const char* op_name(const MlpAdaptForwardArgs<T>*) { return "metafast::mlp_adapt"; }
template <typename T>
const char* op_name(const MlpAdaptBackwardArgs<T>*) { return "metafast::mlp_adapt_backward"; }

template <typename Args>
size_t mlp_adapt_shared_bytes(int64_t workspace_elems) {
  using T = std::remove_const_t<std::remove_pointer_t<decltype(Args{}.p.x)>>;
  return shared_bytes_for(kernel_of(static_cast<const Args*>(nullptr)), size_t(workspace_elems) * sizeof(T),
                          op_name(static_cast<const Args*>(nullptr)));
}
template <typename Args>
void launch_mlp_adapt(const Args& a, size_t smem, cudaStream_t s) {
  launch(kernel_of(&a), a, smem, s, op_name(&a));
}

#define MF_INSTANTIATE(ARGS)                                     \
  template size_t mlp_adapt_shared_bytes<ARGS>(int64_t);        \
  template void launch_mlp_adapt<ARGS>(const ARGS&, size_t, cudaStream_t);
MF_INSTANTIATE(MlpAdaptForwardArgs<float>)
MF_INSTANTIATE(MlpAdaptForwardArgs<double>)
MF_INSTANTIATE(MlpAdaptBackwardArgs<float>)
MF_INSTANTIATE(MlpAdaptBackwardArgs<double>)
#undef MF_INSTANTIATE

}  // namespace metafast
