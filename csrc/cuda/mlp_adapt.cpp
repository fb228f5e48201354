// CUDA dispatch of metafast::mlp_adapt / mlp_adapt_backward: checks, device
// guard, current stream, one kernel launch each.
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/launchers.h"
#include "mlp_adapt_host.h"

namespace metafast {
namespace {

void check_cuda_inputs(const at::Tensor& params, const at::Tensor& /*y*/) {
  TORCH_CHECK(params.is_cuda(), "metafast::mlp_adapt (CUDA): params must be on a CUDA device");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_adapt_cuda(
    const at::Tensor& params, const std::optional<at::Tensor>& lrs, double lr,
    const at::Tensor& support_x, const at::Tensor& support_y, c10::IntArrayRef sizes, int64_t steps,
    c10::string_view activation, c10::string_view loss, bool first_order) {
  const MlpAdaptConfig c = check_mlp_adapt_inputs(params, lrs, support_x, support_y, sizes, steps,
                                                  std::string(activation), std::string(loss));
  check_cuda_inputs(params, support_y);
  const c10::cuda::CUDAGuard guard(params.device());
  const at::Tensor init = params.contiguous(), x = support_x.contiguous(), y = support_y.contiguous();
  const at::Tensor lrs_c = lrs.has_value() ? lrs->contiguous() : at::Tensor();
  if (c.loss == Loss::CrossEntropy) {  // one small sync: out-of-range labels must not reach the kernel
    const auto [lo, hi] = at::aminmax(y);
    check_label_range(lo.item<int64_t>(), hi.item<int64_t>(), c.layout.sizes[c.layout.num_layers]);
  }
  const int64_t P = c.layout.num_params;
  at::Tensor adapted = at::empty({c.tasks, P}, params.options());
  at::Tensor losses = at::empty({c.tasks, c.steps}, params.options());
  at::Tensor trajectory = at::empty({c.tasks, c.steps, P}, params.options());
  at::Tensor workspace = at::empty({c.tasks, mlp_workspace_size(c.layout, c.shots)}, params.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const at::Tensor* lrs_p = lrs.has_value() ? &lrs_c : nullptr;
  if (params.scalar_type() == at::kFloat)
    launch_mlp_adapt_forward(forward_args<float>(c, lr, init, lrs_p, x, y, adapted, losses, trajectory, workspace), stream);
  else
    launch_mlp_adapt_forward(forward_args<double>(c, lr, init, lrs_p, x, y, adapted, losses, trajectory, workspace), stream);
  return {adapted, losses, trajectory};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_adapt_backward_cuda(
    const at::Tensor& grad_adapted, const at::Tensor& grad_losses, const at::Tensor& trajectory,
    const at::Tensor& params, const std::optional<at::Tensor>& lrs, double lr, const at::Tensor& support_x,
    const at::Tensor& support_y, c10::IntArrayRef sizes, c10::string_view activation, c10::string_view loss,
    bool first_order, bool lrs_grad, bool x_grad) {
  const MlpAdaptConfig c = check_mlp_adapt_inputs(params, lrs, support_x, support_y, sizes,
                                                  trajectory.dim() == 3 ? trajectory.size(1) : 0,
                                                  std::string(activation), std::string(loss));
  check_backward_inputs(c, grad_adapted, grad_losses, trajectory, support_x);
  TORCH_CHECK(!lrs_grad || lrs.has_value(), "metafast::mlp_adapt_backward: lrs_grad needs lrs");
  check_cuda_inputs(params, support_y);
  const c10::cuda::CUDAGuard guard(params.device());
  const at::Tensor ga = grad_adapted.contiguous(), gl = grad_losses.contiguous(), tr = trajectory.contiguous();
  const at::Tensor x = support_x.contiguous(), y = support_y.contiguous();
  const at::Tensor lrs_c = lrs.has_value() ? lrs->contiguous() : at::Tensor();
  const int64_t P = c.layout.num_params;
  at::Tensor grad_init = at::empty({c.tasks, P}, params.options());
  at::Tensor grad_lrs = at::empty({lrs_grad ? c.tasks : 0, lrs_grad ? P : 0}, params.options());
  at::Tensor grad_x = at::empty({x_grad ? c.tasks : 0, x_grad ? c.shots : 0, x_grad ? c.layout.sizes[0] : 0},
                                params.options());
  at::Tensor* grad_x_p = x_grad ? &grad_x : nullptr;
  at::Tensor workspace = at::empty({c.tasks, mlp_workspace_size(c.layout, c.shots)}, params.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const at::Tensor* lrs_p = lrs.has_value() ? &lrs_c : nullptr;
  at::Tensor* grad_lrs_p = lrs_grad ? &grad_lrs : nullptr;
  if (params.scalar_type() == at::kFloat)
    launch_mlp_adapt_backward(backward_args<float>(c, lr, first_order, lrs_p, ga, gl, tr, x, y, grad_init, grad_lrs_p, grad_x_p, workspace), stream);
  else
    launch_mlp_adapt_backward(backward_args<double>(c, lr, first_order, lrs_p, ga, gl, tr, x, y, grad_init, grad_lrs_p, grad_x_p, workspace), stream);
  return {grad_init, grad_lrs, grad_x};
}

}  // namespace

TORCH_LIBRARY_IMPL(metafast, CUDA, m) {
  m.impl("mlp_adapt", &mlp_adapt_cuda);
  m.impl("mlp_adapt_backward", &mlp_adapt_backward_cuda);
}

}  // namespace metafast
