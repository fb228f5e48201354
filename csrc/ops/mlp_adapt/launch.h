// The interface between ops/mlp_adapt/cuda.cpp (which sees torch) and
// ops/mlp_adapt/kernel.cu (which sees no torch header, so nvcc stays fast).
#pragma once
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "kernels/mlp/task.h"

namespace metafast {

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

}  // namespace metafast
