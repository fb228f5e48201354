// CUDA kernels of metafast::mlp_adapt: one thread block per task runs the
// per-task algorithm of kernels/mlp_adapt.h (the code the CPU kernel runs),
// its lanes being the block's threads. One launch for the whole meta-batch and
// all inner steps; no host synchronisation inside.
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
__global__ void __launch_bounds__(kThreads) mlp_adapt_forward_kernel(const MlpAdaptForwardArgs<T> a) {
  mlp_adapt_forward_task<T>(BlockLanes{}, a, int(blockIdx.x));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) mlp_adapt_backward_kernel(const MlpAdaptBackwardArgs<T> a) {
  mlp_adapt_backward_task<T>(BlockLanes{}, a, int(blockIdx.x));
}

}  // namespace

void launch_mlp_adapt_forward(const MlpAdaptForwardArgs<float>& a, cudaStream_t s) {
  mlp_adapt_forward_kernel<float><<<a.tasks, kThreads, 0, s>>>(a);
  check_launch("metafast::mlp_adapt");
}
void launch_mlp_adapt_forward(const MlpAdaptForwardArgs<double>& a, cudaStream_t s) {
  mlp_adapt_forward_kernel<double><<<a.tasks, kThreads, 0, s>>>(a);
  check_launch("metafast::mlp_adapt");
}
void launch_mlp_adapt_backward(const MlpAdaptBackwardArgs<float>& a, cudaStream_t s) {
  mlp_adapt_backward_kernel<float><<<a.tasks, kThreads, 0, s>>>(a);
  check_launch("metafast::mlp_adapt_backward");
}
void launch_mlp_adapt_backward(const MlpAdaptBackwardArgs<double>& a, cudaStream_t s) {
  mlp_adapt_backward_kernel<double><<<a.tasks, kThreads, 0, s>>>(a);
  check_launch("metafast::mlp_adapt_backward");
}

}  // namespace metafast
