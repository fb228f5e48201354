// CUDA backend of metafast::mlp_adapt / mlp_adapt_backward: the op body of
// ops/mlp_adapt/host.h (checks, device guard, dtype dispatch) with one launch
// of the GPU driver (kernels/core/cuda_launch.h, instantiated in kernel.cu)
// per call on the current stream. No host synchronisation, so a whole
// meta-iteration can be captured in a CUDA graph.
#include <torch/csrc/stable/library.h>

#include "common/cuda_device.h"
#include "ops/mlp_adapt/host.h"
#include "kernels/core/cuda_launch.h"

namespace metafast {
namespace {

// The per-task workspace lives in shared memory when it fits; the global
// buffer is allocated only when it does not.
struct MlpAdaptCuda {
  using Device = CudaDevice;
  template <typename T, typename Call>
  static void run(Call& call) {
    using Args = typename Call::template Args<T>;
    const size_t smem = per_task_shared_bytes<Args>(call.c.workspace_per_task(), Call::kOp);
    Tensor workspace = task_workspace(call.c, call.in.init, smem == 0);
    launch_per_task(call.template args<T>(workspace), smem, CudaDevice::stream(call.in.init), Call::kOp);
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(metafast, CUDA, m) {
  m.impl("mlp_adapt", TORCH_BOX(&mlp_adapt_op<MlpAdaptCuda>));
  m.impl("mlp_adapt_backward", TORCH_BOX(&mlp_adapt_backward_op<MlpAdaptCuda>));
  m.impl("mlp_meta_grad", TORCH_BOX(&mlp_meta_grad_op<MlpAdaptCuda>));
}

}  // namespace metafast
