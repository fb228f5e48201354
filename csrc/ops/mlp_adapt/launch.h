// The interface between ops/mlp_adapt/cuda.cpp (which sees torch) and
// ops/mlp_adapt/kernel.cu (which sees no torch header, so nvcc stays fast).
#pragma once
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "kernels/mlp/task.h"

namespace metafast {

// One thread block per task. Args: MlpAdaptForwardArgs<T> or
// MlpAdaptBackwardArgs<T>, T float or double (instantiated in kernel.cu).
// Shared-memory bytes per block for a task's workspace of `workspace_elems`
// elements of T, or 0 when it does not fit (then a.p.workspace must point to a
// global [T, W] buffer).
template <typename Args>
size_t mlp_adapt_shared_bytes(int64_t workspace_elems);
template <typename Args>
void launch_mlp_adapt(const Args& a, size_t shared_bytes, cudaStream_t stream);

}  // namespace metafast
