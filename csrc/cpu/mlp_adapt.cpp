// CPU kernels of metafast::mlp_adapt and mlp_adapt_backward: the per-task
// algorithm of kernels/mlp_adapt.h, one task per thread (torch's threads).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include "mlp_adapt_host.h"

namespace metafast {
namespace {

// The per-task loops are compiled for several x86 levels (SSE2, AVX2+FMA,
// AVX-512) and the best one the CPU supports is picked at load time; flatten
// inlines the whole shared algorithm into each clone.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MF_CPU_CLONES __attribute__((flatten, target_clones("default", "arch=haswell", "arch=skylake-avx512")))
#else
#define MF_CPU_CLONES
#endif

#define MF_DEFINE_TASK_RUNNERS(T)                                                                       \
  MF_CPU_CLONES void run_forward_tasks(const MlpAdaptForwardArgs<T>& a, int64_t begin, int64_t end) {   \
    for (int64_t t = begin; t < end; ++t)                                                               \
      mlp_adapt_forward_task<T>(SerialLanes{}, a, int(t), a.p.workspace + t * a.p.workspace_stride);    \
  }                                                                                                     \
  MF_CPU_CLONES void run_backward_tasks(const MlpAdaptBackwardArgs<T>& a, int64_t begin, int64_t end) { \
    for (int64_t t = begin; t < end; ++t)                                                               \
      mlp_adapt_backward_task<T>(SerialLanes{}, a, int(t), a.p.workspace + t * a.p.workspace_stride);   \
  }
MF_DEFINE_TASK_RUNNERS(float)
MF_DEFINE_TASK_RUNNERS(double)

// One task per torch thread.
template <typename Args>
void run_forward(const Args& a) {
  torch::stable::parallel_for(0, a.p.tasks, 1, [&](int64_t begin, int64_t end) { run_forward_tasks(a, begin, end); });
}
template <typename Args>
void run_backward(const Args& a) {
  torch::stable::parallel_for(0, a.p.tasks, 1, [&](int64_t begin, int64_t end) { run_backward_tasks(a, begin, end); });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> mlp_adapt_cpu(
    Tensor params, OptTensor lrs, double lr, Tensor support_x, Tensor support_y, OptTensor query_x,
    OptTensor query_y, std::vector<int64_t> sizes, int64_t steps, std::string activation, std::string loss,
    bool first_order) {
  MF_CHECK(params.is_cpu(), "metafast::mlp_adapt (CPU): params must be on the CPU");
  auto f = prepare_forward(params, lrs, lr, support_x, support_y, query_x, query_y, sizes, steps, activation, loss);
  check_labels_on_host(f.c, f.in.y, f.in.qy);
  Tensor workspace = task_workspace(f.c, params, true);
  if (params.scalar_type() == ScalarType::Float)
    run_forward(f.args<float>(lr, workspace));
  else
    run_forward(f.args<double>(lr, workspace));
  return {f.adapted, f.losses, f.query_output, f.query_losses, f.trajectory};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> mlp_adapt_backward_cpu(
    Tensor grad_adapted, OptTensor grad_losses, OptTensor grad_query_output, OptTensor grad_query_losses,
    Tensor adapted, Tensor trajectory, Tensor params, OptTensor lrs, double lr, Tensor support_x, Tensor support_y,
    OptTensor query_x, OptTensor query_y, std::vector<int64_t> sizes, std::string activation, std::string loss,
    bool first_order, bool lrs_grad, bool x_grad, bool query_x_grad) {
  MF_CHECK(params.is_cpu(), "metafast::mlp_adapt_backward (CPU): params must be on the CPU");
  auto b = prepare_backward(grad_adapted, grad_losses, grad_query_output, grad_query_losses, adapted, trajectory,
                            params, lrs, lr, support_x, support_y, query_x, query_y, sizes, activation, loss,
                            first_order, lrs_grad, x_grad, query_x_grad);
  check_labels_on_host(b.c, b.in.y, b.in.qy);
  Tensor workspace = task_workspace(b.c, params, true);
  if (params.scalar_type() == ScalarType::Float)
    run_backward(b.args<float>(lr, workspace));
  else
    run_backward(b.args<double>(lr, workspace));
  return {b.grad_init, b.grad_lrs, b.grad_x, b.grad_qx};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(metafast, CPU, m) {
  m.impl("mlp_adapt", TORCH_BOX(&mlp_adapt_cpu));
  m.impl("mlp_adapt_backward", TORCH_BOX(&mlp_adapt_backward_cpu));
}

}  // namespace metafast
