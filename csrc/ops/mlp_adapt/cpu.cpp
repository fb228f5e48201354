// CPU kernels of metafast::mlp_adapt and mlp_adapt_backward: the op body of
// ops/mlp_adapt/host.h with the CPU driver (common/cpu_driver.h: task packs
// for small nets, one task per thread for larger ones) running the per-task
// algorithm of kernels/mlp/task.h.
#include <torch/csrc/stable/library.h>

#include "common/cpu_driver.h"
#include "kernels/mlp/pack.h"
#include "ops/mlp_adapt/host.h"

namespace metafast {
namespace {

// The CPU backend of the op body (run_mlp_adapt, ops/mlp_adapt/host.h), for
// the forward or the backward call `call`. The per-task path's workspace
// [T, W] is allocated only when it runs.
struct MlpAdaptCpu {
  using Device = CpuDevice;
  template <typename T, typename Call>
  static void run(Call& call) {
    check_labels_on_host(call.c, call.in.y, call.in.qy);
    Tensor workspace = task_workspace(call.c, call.in.init, false);
    auto a = call.template args<T>(workspace);
    run_on_cpu<PackedMlpAdapt, T>(a, [&] {
      workspace = task_workspace(call.c, call.in.init, true);
      return workspace.mutable_data_ptr<T>();
    });
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(metafast, CPU, m) {
  m.impl("mlp_adapt", TORCH_BOX(&mlp_adapt_op<MlpAdaptCpu>));
  m.impl("mlp_adapt_backward", TORCH_BOX(&mlp_adapt_backward_op<MlpAdaptCpu>));
  m.impl("mlp_meta_grad", TORCH_BOX(&mlp_meta_grad_op<MlpAdaptCpu>));
}

}  // namespace metafast
