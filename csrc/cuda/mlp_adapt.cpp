// CUDA dispatch of metafast::mlp_adapt / mlp_adapt_backward: the shared host
// checks, device guard, current stream, one kernel launch each.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/launchers.h"
#include "mlp_adapt_host.h"

namespace metafast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_adapt_cuda(
    const at::Tensor& params, const std::optional<at::Tensor>& lrs, double lr, const at::Tensor& support_x,
    const at::Tensor& support_y, const std::optional<at::Tensor>& query_x, const std::optional<at::Tensor>& query_y,
    c10::IntArrayRef sizes, int64_t steps, c10::string_view activation, c10::string_view loss, bool first_order) {
  TORCH_CHECK(params.is_cuda(), "metafast::mlp_adapt (CUDA): params must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(params.device());
  auto f = prepare_forward(params, lrs, support_x, support_y, query_x, query_y, sizes, steps, activation, loss);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  if (params.scalar_type() == at::kFloat)
    launch_mlp_adapt_forward(forward_args<float>(f.c, lr, f.in, f.adapted, f.losses, f.query_output, f.query_losses,
                                                 f.trajectory, f.workspace), stream);
  else
    launch_mlp_adapt_forward(forward_args<double>(f.c, lr, f.in, f.adapted, f.losses, f.query_output,
                                                  f.query_losses, f.trajectory, f.workspace), stream);
  return {f.adapted, f.losses, f.query_output, f.query_losses, f.trajectory};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_adapt_backward_cuda(
    const at::Tensor& grad_adapted, const at::Tensor& grad_losses, const std::optional<at::Tensor>& grad_query_output,
    const std::optional<at::Tensor>& grad_query_losses, const at::Tensor& adapted, const at::Tensor& trajectory,
    const at::Tensor& params, const std::optional<at::Tensor>& lrs, double lr, const at::Tensor& support_x,
    const at::Tensor& support_y, const std::optional<at::Tensor>& query_x, const std::optional<at::Tensor>& query_y,
    c10::IntArrayRef sizes, c10::string_view activation, c10::string_view loss, bool first_order, bool lrs_grad,
    bool x_grad, bool query_x_grad) {
  TORCH_CHECK(params.is_cuda(), "metafast::mlp_adapt_backward (CUDA): params must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(params.device());
  auto b = prepare_backward(grad_adapted, grad_losses, grad_query_output, grad_query_losses, adapted, trajectory,
                            params, lrs, support_x, support_y, query_x, query_y, sizes, activation, loss, lrs_grad,
                            x_grad, query_x_grad);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  if (params.scalar_type() == at::kFloat)
    launch_mlp_adapt_backward(backward_args<float>(b.c, lr, first_order, b.in, b.g, b.grad_init, b.grad_lrs, b.grad_x,
                                                   b.grad_qx, b.workspace), stream);
  else
    launch_mlp_adapt_backward(backward_args<double>(b.c, lr, first_order, b.in, b.g, b.grad_init, b.grad_lrs,
                                                    b.grad_x, b.grad_qx, b.workspace), stream);
  return {b.grad_init, b.grad_lrs, b.grad_x, b.grad_qx};
}

}  // namespace

TORCH_LIBRARY_IMPL(metafast, CUDA, m) {
  m.impl("mlp_adapt", &mlp_adapt_cuda);
  m.impl("mlp_adapt_backward", &mlp_adapt_backward_cuda);
}

}  // namespace metafast
