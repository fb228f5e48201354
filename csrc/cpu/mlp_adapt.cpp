// CPU kernels of metafast::mlp_adapt and mlp_adapt_backward: the per-task
// algorithm of kernels/mlp_adapt.h, one task per thread (at::parallel_for).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

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

#define MF_DEFINE_TASK_RUNNERS(T)                                                                  \
  MF_CPU_CLONES void run_forward_tasks(const MlpAdaptForwardArgs<T>& a, int64_t begin, int64_t end) { \
    for (int64_t t = begin; t < end; ++t) mlp_adapt_forward_task<T>(SerialLanes{}, a, int(t));      \
  }                                                                                                \
  MF_CPU_CLONES void run_backward_tasks(const MlpAdaptBackwardArgs<T>& a, int64_t begin, int64_t end) { \
    for (int64_t t = begin; t < end; ++t) mlp_adapt_backward_task<T>(SerialLanes{}, a, int(t));     \
  }
MF_DEFINE_TASK_RUNNERS(float)
MF_DEFINE_TASK_RUNNERS(double)

void check_labels_cpu(const MlpAdaptConfig& c, const at::Tensor& y) {
  if (c.loss != Loss::CrossEntropy) return;
  const int64_t* lab = y.data_ptr<int64_t>();
  int64_t lo = lab[0], hi = lab[0];
  for (int64_t i = 1; i < y.numel(); ++i) {
    lo = std::min(lo, lab[i]);
    hi = std::max(hi, lab[i]);
  }
  check_label_range(lo, hi, c.layout.sizes[c.layout.num_layers]);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_adapt_cpu(
    const at::Tensor& params, const std::optional<at::Tensor>& lrs, double lr,
    const at::Tensor& support_x, const at::Tensor& support_y, c10::IntArrayRef sizes, int64_t steps,
    c10::string_view activation, c10::string_view loss, bool first_order) {
  const MlpAdaptConfig c = check_mlp_adapt_inputs(params, lrs, support_x, support_y, sizes, steps,
                                                  std::string(activation), std::string(loss));
  TORCH_CHECK(params.device().is_cpu(), "metafast::mlp_adapt (CPU): params must be on the CPU");
  const at::Tensor init = params.contiguous(), x = support_x.contiguous(), y = support_y.contiguous();
  const at::Tensor lrs_c = lrs.has_value() ? lrs->contiguous() : at::Tensor();
  check_labels_cpu(c, y);
  const int64_t P = c.layout.num_params;
  at::Tensor adapted = at::empty({c.tasks, P}, params.options());
  at::Tensor losses = at::empty({c.tasks, c.steps}, params.options());
  at::Tensor trajectory = at::empty({c.tasks, c.steps, P}, params.options());
  at::Tensor workspace = at::empty({c.tasks, mlp_workspace_size(c.layout, c.shots)}, params.options());
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "metafast::mlp_adapt_cpu", [&] {
    const auto a = forward_args<scalar_t>(c, lr, init, lrs.has_value() ? &lrs_c : nullptr, x, y, adapted,
                                          losses, trajectory, workspace);
    at::parallel_for(0, c.tasks, 1, [&](int64_t begin, int64_t end) { run_forward_tasks(a, begin, end); });
  });
  return {adapted, losses, trajectory};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_adapt_backward_cpu(
    const at::Tensor& grad_adapted, const at::Tensor& grad_losses, const at::Tensor& trajectory,
    const at::Tensor& params, const std::optional<at::Tensor>& lrs, double lr, const at::Tensor& support_x,
    const at::Tensor& support_y, c10::IntArrayRef sizes, c10::string_view activation, c10::string_view loss,
    bool first_order, bool lrs_grad, bool x_grad) {
  const MlpAdaptConfig c = check_mlp_adapt_inputs(params, lrs, support_x, support_y, sizes,
                                                  trajectory.dim() == 3 ? trajectory.size(1) : 0,
                                                  std::string(activation), std::string(loss));
  check_backward_inputs(c, grad_adapted, grad_losses, trajectory, support_x);
  TORCH_CHECK(!lrs_grad || lrs.has_value(), "metafast::mlp_adapt_backward: lrs_grad needs lrs");
  const at::Tensor ga = grad_adapted.contiguous(), gl = grad_losses.contiguous(), tr = trajectory.contiguous();
  const at::Tensor x = support_x.contiguous(), y = support_y.contiguous();
  const at::Tensor lrs_c = lrs.has_value() ? lrs->contiguous() : at::Tensor();
  const int64_t P = c.layout.num_params;
  at::Tensor grad_init = at::empty({c.tasks, P}, params.options());
  at::Tensor grad_lrs = at::empty({lrs_grad ? c.tasks : 0, lrs_grad ? P : 0}, params.options());
  at::Tensor grad_x = at::empty({x_grad ? c.tasks : 0, x_grad ? c.shots : 0, x_grad ? c.layout.sizes[0] : 0},
                                params.options());
  at::Tensor workspace = at::empty({c.tasks, mlp_workspace_size(c.layout, c.shots)}, params.options());
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "metafast::mlp_adapt_backward_cpu", [&] {
    const auto a = backward_args<scalar_t>(c, lr, first_order, lrs.has_value() ? &lrs_c : nullptr, ga, gl, tr,
                                           x, y, grad_init, lrs_grad ? &grad_lrs : nullptr,
                                           x_grad ? &grad_x : nullptr, workspace);
    at::parallel_for(0, c.tasks, 1, [&](int64_t begin, int64_t end) { run_backward_tasks(a, begin, end); });
  });
  return {grad_init, grad_lrs, grad_x};
}

}  // namespace

TORCH_LIBRARY_IMPL(metafast, CPU, m) {
  m.impl("mlp_adapt", &mlp_adapt_cpu);
  m.impl("mlp_adapt_backward", &mlp_adapt_backward_cpu);
}

}  // namespace metafast
