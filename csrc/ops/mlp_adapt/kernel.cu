// CUDA kernels of metafast::mlp_adapt / mlp_adapt_backward / mlp_meta_grad: the GPU driver
// (kernels/core/cuda_driver.cuh) for the per-task algorithm of
// kernels/mlp/task.h (the code the CPU kernel runs): one thread block per
// task, its lanes the block's threads; one launch for the whole meta-batch
// and all inner steps. A task's scratch (gradient, HVP, activations) lives in
// shared memory when it fits (the sinusoid MLP in float32 needs 37 KB), else
// in a global buffer.
#include "kernels/mlp/task.h"

#include "kernels/core/cuda_driver.cuh"

MF_INSTANTIATE_PER_TASK_KERNEL(metafast::MlpAdaptForwardArgs<float>)
MF_INSTANTIATE_PER_TASK_KERNEL(metafast::MlpAdaptForwardArgs<double>)
MF_INSTANTIATE_PER_TASK_KERNEL(metafast::MlpAdaptBackwardArgs<float>)
MF_INSTANTIATE_PER_TASK_KERNEL(metafast::MlpAdaptBackwardArgs<double>)
MF_INSTANTIATE_PER_TASK_KERNEL(metafast::MlpMetaGradArgs<float>)
MF_INSTANTIATE_PER_TASK_KERNEL(metafast::MlpMetaGradArgs<double>)
