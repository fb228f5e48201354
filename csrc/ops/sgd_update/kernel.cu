// CUDA kernel of metafast::sgd_update: multi-tensor apply, one launch for a
// whole list (grid.y = entry, grid.x strides over that entry's elements).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/cuda_check.h"
#include "ops/sgd_update/launch.h"
#include "kernels/core/maml_math.h"

namespace metafast {
namespace {

template <typename S> struct OpMath { using type = S; };
template <> struct OpMath<__half> { using type = float; };
template <> struct OpMath<__nv_bfloat16> { using type = float; };

template <typename O> __device__ __forceinline__ O load(const float* p) { return *p; }
template <typename O> __device__ __forceinline__ O load(const double* p) { return *p; }
template <typename O> __device__ __forceinline__ O load(const __half* p) { return __half2float(*p); }
template <typename O> __device__ __forceinline__ O load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <typename S>
__global__ void sgd_update_kernel(const SgdUpdateBatch batch) {
  using O = typename OpMath<S>::type;
  const int e = blockIdx.y;
  const int64_t n = batch.out_numel[e];
  const S* param = static_cast<const S*>(batch.param[e]);
  const S* grad = static_cast<const S*>(batch.grad[e]);
  const S* rate = static_cast<const S*>(batch.lr_tensor[e]);
  S* out = static_cast<S*>(batch.out[e]);
  const O lr = O(batch.lr);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const O r = rate ? load<O>(rate + i % batch.lr_numel[e]) : lr;
    store(out + i, sgd_step<O>(load<O>(param + i % batch.param_numel[e]), r, load<O>(grad + i % batch.grad_numel[e])));
  }
}

}  // namespace

void launch_sgd_update(StorageType type, const SgdUpdateBatch& batch, int64_t max_numel, cudaStream_t stream) {
  if (batch.count == 0 || max_numel == 0) return;
  check_launch("metafast::sgd_update", "an earlier CUDA call failed");
  constexpr int kThreads = 256;
  const int64_t blocks = (max_numel + kThreads - 1) / kThreads;
  const dim3 grid(unsigned(blocks < 1024 ? blocks : 1024), unsigned(batch.count));
  switch (type) {
    case StorageType::Float: sgd_update_kernel<float><<<grid, kThreads, 0, stream>>>(batch); break;
    case StorageType::Double: sgd_update_kernel<double><<<grid, kThreads, 0, stream>>>(batch); break;
    case StorageType::Half: sgd_update_kernel<__half><<<grid, kThreads, 0, stream>>>(batch); break;
    case StorageType::BFloat16: sgd_update_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(batch); break;
  }
  check_launch("metafast::sgd_update", "kernel launch failed");
}


}  // namespace metafast
