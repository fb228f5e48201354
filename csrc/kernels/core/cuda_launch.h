// The GPU driver of a per-task op as the host sees it (g++, no CUDA
// compiler): declared here, defined in kernels/core/cuda_driver.cuh and
// instantiated for an op's argument structs by its kernel.cu
// (MF_INSTANTIATE_PER_TASK_KERNEL). One thread block per task.
#pragma once
#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

namespace metafast {

// Shared-memory bytes per block for a task's workspace of `workspace_elems`
// elements, or 0 when it does not fit (then a.p.workspace must point to a
// global [T, W] buffer). `op` names the op in errors.
template <typename Args>
size_t per_task_shared_bytes(int64_t workspace_elems, const char* op);

// One launch for all a.p.tasks tasks on `stream`; `shared_bytes` from
// per_task_shared_bytes (0: the global workspace).
template <typename Args>
void launch_per_task(const Args& a, size_t shared_bytes, cudaStream_t stream, const char* op);

}  // namespace metafast
