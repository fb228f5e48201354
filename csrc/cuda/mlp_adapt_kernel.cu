// CUDA kernels of metafast::mlp_adapt: one thread block per task runs the
// per-task algorithm of kernels/mlp_adapt.h (the code the CPU kernel runs),
// its lanes being the block's threads. One launch for the whole meta-batch and
// all inner steps; no host synchronisation inside. A task's scratch (gradient,
// HVP, activations) lives in shared memory when it fits (the sinusoid MLP in
// float32 needs 40 KB), else in a global buffer.
#include "cuda/launchers.h"
#include "kernels/mlp_adapt.h"

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

// Bytes of shared memory to use for a workspace of `bytes` (0: use global).
// An earlier pending error is reported, not swallowed, so that clearing our
// own failed attribute call below can only clear our own error.
template <typename Kernel>
size_t shared_bytes_for(Kernel kernel, size_t bytes, const char* what) {
  check_launch(what, "an earlier CUDA call failed");
  if (bytes <= 48 * 1024) return bytes;  // always allowed
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
      bytes > size_t(optin) ||
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)) != cudaSuccess) {
    (void)cudaGetLastError();  // our own failed query: the global workspace serves instead
    return 0;
  }
  return bytes;
}

template <typename Args, typename Kernel>
void launch(Kernel kernel, const Args& a, size_t smem, cudaStream_t s, const char* what) {
  kernel<<<a.p.tasks, kThreads, smem, s>>>(a, smem > 0);
  check_launch(what, "kernel launch failed");
}

}  // namespace

template <typename T>
size_t mlp_adapt_forward_shared_bytes(int64_t workspace_elems) {
  return shared_bytes_for(mlp_adapt_forward_kernel<T>, size_t(workspace_elems) * sizeof(T), "metafast::mlp_adapt");
}
template <typename T>
size_t mlp_adapt_backward_shared_bytes(int64_t workspace_elems) {
  return shared_bytes_for(mlp_adapt_backward_kernel<T>, size_t(workspace_elems) * sizeof(T),
                          "metafast::mlp_adapt_backward");
}
template size_t mlp_adapt_forward_shared_bytes<float>(int64_t);
template size_t mlp_adapt_forward_shared_bytes<double>(int64_t);
template size_t mlp_adapt_backward_shared_bytes<float>(int64_t);
template size_t mlp_adapt_backward_shared_bytes<double>(int64_t);

void launch_mlp_adapt_forward(const MlpAdaptForwardArgs<float>& a, size_t smem, cudaStream_t s) {
  launch(mlp_adapt_forward_kernel<float>, a, smem, s, "metafast::mlp_adapt");
}
void launch_mlp_adapt_forward(const MlpAdaptForwardArgs<double>& a, size_t smem, cudaStream_t s) {
  launch(mlp_adapt_forward_kernel<double>, a, smem, s, "metafast::mlp_adapt");
}
void launch_mlp_adapt_backward(const MlpAdaptBackwardArgs<float>& a, size_t smem, cudaStream_t s) {
  launch(mlp_adapt_backward_kernel<float>, a, smem, s, "metafast::mlp_adapt_backward");
}
void launch_mlp_adapt_backward(const MlpAdaptBackwardArgs<double>& a, size_t smem, cudaStream_t s) {
  launch(mlp_adapt_backward_kernel<double>, a, smem, s, "metafast::mlp_adapt_backward");
}

}  // namespace metafast
