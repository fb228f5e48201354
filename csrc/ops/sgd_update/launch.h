// The interface between ops/sgd_update/cuda.cpp (which sees torch) and
// ops/sgd_update/kernel.cu (which sees no torch header, so nvcc stays fast).
#pragma once
#include <cuda_runtime_api.h>
#include <stdint.h>

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

}  // namespace metafast
