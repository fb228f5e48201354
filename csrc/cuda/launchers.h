// The interface between the CUDA dispatch files (*.cpp, which see torch) and
// the kernels (*_kernel.cu, which see no torch header, so nvcc stays fast).
#pragma once
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "kernels/mlp_adapt.h"

namespace metafast {

// ---- sgd_update: multi-tensor apply --------------------------------------
enum class StorageType : int { Float = 0, Double = 1, Half = 2, BFloat16 = 3 };

// One launch updates up to kSgdMaxTensors entries; an operand without the
// task dimension repeats every `*_numel` elements of the output.
constexpr int kSgdMaxTensors = 32;
struct SgdUpdateBatch {
  int count = 0;
  double lr = 0;
  const void* param[kSgdMaxTensors];
  const void* grad[kSgdMaxTensors];
  const void* lr_tensor[kSgdMaxTensors];  // nullptr: scalar lr
  void* out[kSgdMaxTensors];
  int64_t out_numel[kSgdMaxTensors];
  int64_t param_numel[kSgdMaxTensors];
  int64_t grad_numel[kSgdMaxTensors];
  int64_t lr_numel[kSgdMaxTensors];
};
void launch_sgd_update(StorageType type, const SgdUpdateBatch& batch, int64_t max_numel, cudaStream_t stream);

// ---- mlp_adapt: one thread block per task --------------------------------
// Shared-memory bytes per block for a task's workspace, or 0 when it does not
// fit (then p.workspace must point to a global [T, W] buffer)
// (`workspace_elems`: elements of T per task; instantiated for float and double.)
template <typename T> size_t mlp_adapt_forward_shared_bytes(int64_t workspace_elems);
template <typename T> size_t mlp_adapt_backward_shared_bytes(int64_t workspace_elems);
void launch_mlp_adapt_forward(const MlpAdaptForwardArgs<float>& a, size_t shared_bytes, cudaStream_t stream);
void launch_mlp_adapt_forward(const MlpAdaptForwardArgs<double>& a, size_t shared_bytes, cudaStream_t stream);
void launch_mlp_adapt_backward(const MlpAdaptBackwardArgs<float>& a, size_t shared_bytes, cudaStream_t stream);
void launch_mlp_adapt_backward(const MlpAdaptBackwardArgs<double>& a, size_t shared_bytes, cudaStream_t stream);

// Throws std::runtime_error("<what>: <context>: <CUDA error>") if this
// library's CUDA runtime has an error pending (cudaGetLastError).
void check_launch(const char* what, const char* context);

}  // namespace metafast
