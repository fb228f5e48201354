// CPU kernels of metafast::mlp_adapt and mlp_adapt_backward: the per-task
// algorithm of kernels/mlp_adapt.h, one task per thread (at::parallel_for).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
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

#define MF_DEFINE_TASK_RUNNERS(T)                                                                       \
  MF_CPU_CLONES void run_forward_tasks(const MlpAdaptForwardArgs<T>& a, int64_t begin, int64_t end) {   \
    for (int64_t t = begin; t < end; ++t) mlp_adapt_forward_task<T>(SerialLanes{}, a, int(t), a.p.workspace + t * a.p.workspace_stride);          \
  }                                                                                                     \
  MF_CPU_CLONES void run_backward_tasks(const MlpAdaptBackwardArgs<T>& a, int64_t begin, int64_t end) { \
    for (int64_t t = begin; t < end; ++t) mlp_adapt_backward_task<T>(SerialLanes{}, a, int(t), a.p.workspace + t * a.p.workspace_stride);         \
  }
MF_DEFINE_TASK_RUNNERS(float)
MF_DEFINE_TASK_RUNNERS(double)

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_adapt_cpu(
    const at::Tensor& params, const std::optional<at::Tensor>& lrs, double lr, const at::Tensor& support_x,
    const at::Tensor& support_y, const std::optional<at::Tensor>& query_x, const std::optional<at::Tensor>& query_y,
    c10::IntArrayRef sizes, int64_t steps, c10::string_view activation, c10::string_view loss, bool first_order) {
  TORCH_CHECK(params.device().is_cpu(), "metafast::mlp_adapt (CPU): params must be on the CPU");
  auto f = prepare_forward(params, lrs, support_x, support_y, query_x, query_y, sizes, steps, activation, loss);
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "metafast::mlp_adapt_cpu", [&] {
    const auto a = forward_args<scalar_t>(f.c, lr, f.in, f.adapted, f.losses, f.query_output, f.query_losses,
                                          f.trajectory, f.workspace);
    at::parallel_for(0, f.c.tasks, 1, [&](int64_t begin, int64_t end) { run_forward_tasks(a, begin, end); });
  });
  return {f.adapted, f.losses, f.query_output, f.query_losses, f.trajectory};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_adapt_backward_cpu(
    const at::Tensor& grad_adapted, const at::Tensor& grad_losses, const std::optional<at::Tensor>& grad_query_output,
    const std::optional<at::Tensor>& grad_query_losses, const at::Tensor& adapted, const at::Tensor& trajectory,
    const at::Tensor& params, const std::optional<at::Tensor>& lrs, double lr, const at::Tensor& support_x,
    const at::Tensor& support_y, const std::optional<at::Tensor>& query_x, const std::optional<at::Tensor>& query_y,
    c10::IntArrayRef sizes, c10::string_view activation, c10::string_view loss, bool first_order, bool lrs_grad,
    bool x_grad, bool query_x_grad) {
  TORCH_CHECK(params.device().is_cpu(), "metafast::mlp_adapt_backward (CPU): params must be on the CPU");
  auto b = prepare_backward(grad_adapted, grad_losses, grad_query_output, grad_query_losses, adapted, trajectory,
                            params, lrs, support_x, support_y, query_x, query_y, sizes, activation, loss, lrs_grad,
                            x_grad, query_x_grad);
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "metafast::mlp_adapt_backward_cpu", [&] {
    const auto a = backward_args<scalar_t>(b.c, lr, first_order, b.in, b.g, b.grad_init, b.grad_lrs, b.grad_x,
                                           b.grad_qx, b.workspace);
    at::parallel_for(0, b.c.tasks, 1, [&](int64_t begin, int64_t end) { run_backward_tasks(a, begin, end); });
  });
  return {b.grad_init, b.grad_lrs, b.grad_x, b.grad_qx};
}

}  // namespace

TORCH_LIBRARY_IMPL(metafast, CPU, m) {
  m.impl("mlp_adapt", &mlp_adapt_cpu);
  m.impl("mlp_adapt_backward", &mlp_adapt_backward_cpu);
}

}  // namespace metafast
