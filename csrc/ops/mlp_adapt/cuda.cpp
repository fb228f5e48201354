// CUDA dispatch of metafast::mlp_adapt / mlp_adapt_backward: the shared host
// checks, device guard, current stream, one kernel launch each. No host
// synchronisation, so a whole meta-iteration can be captured in a CUDA graph.
#include <torch/csrc/stable/library.h>

#include "ops/mlp_adapt/launch.h"
#include "common/cuda_stream.h"
#include "ops/mlp_adapt/host.h"

namespace metafast {
namespace {

// The per-task workspace lives in shared memory when it fits; the global
// buffer is allocated only when it does not.
template <typename T, typename Call>
void launch_forward(Call& f, double lr, const Tensor& params, cudaStream_t stream) {
  const size_t smem = mlp_adapt_forward_shared_bytes<T>(f.c.workspace_per_task());
  Tensor workspace = task_workspace(f.c, params, smem == 0);
  launch_mlp_adapt_forward(f.template args<T>(lr, workspace), smem, stream);
}

template <typename T, typename Call>
void launch_backward(Call& b, double lr, const Tensor& params, cudaStream_t stream) {
  const size_t smem = mlp_adapt_backward_shared_bytes<T>(b.c.workspace_per_task());
  Tensor workspace = task_workspace(b.c, params, smem == 0);
  launch_mlp_adapt_backward(b.template args<T>(lr, workspace), smem, stream);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> mlp_adapt_cuda(
    Tensor params, OptTensor lrs, double lr, Tensor support_x, Tensor support_y, OptTensor query_x,
    OptTensor query_y, std::vector<int64_t> sizes, int64_t steps, std::string activation, std::string loss,
    bool first_order, OptTensor support_weights) {
  MF_CHECK(params.is_cuda(), "metafast::mlp_adapt (CUDA): params must be on a CUDA device");
  const torch::stable::accelerator::DeviceGuard guard(params.get_device_index());
  auto f = prepare_forward(params, lrs, lr, support_x, support_y, query_x, query_y, sizes, steps, activation, loss,
                           support_weights);
  const cudaStream_t stream = current_cuda_stream(params.get_device_index());
  if (params.scalar_type() == ScalarType::Float)
    launch_forward<float>(f, lr, params, stream);
  else
    launch_forward<double>(f, lr, params, stream);
  return {f.adapted, f.losses, f.query_output, f.query_losses, f.trajectory};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> mlp_adapt_backward_cuda(
    Tensor grad_adapted, OptTensor grad_losses, OptTensor grad_query_output, OptTensor grad_query_losses,
    Tensor adapted, Tensor trajectory, Tensor params, OptTensor lrs, double lr, Tensor support_x, Tensor support_y,
    OptTensor query_x, OptTensor query_y, std::vector<int64_t> sizes, std::string activation, std::string loss,
    bool first_order, bool lrs_grad, bool x_grad, bool query_x_grad, OptTensor support_weights) {
  MF_CHECK(params.is_cuda(), "metafast::mlp_adapt_backward (CUDA): params must be on a CUDA device");
  const torch::stable::accelerator::DeviceGuard guard(params.get_device_index());
  auto b = prepare_backward(grad_adapted, grad_losses, grad_query_output, grad_query_losses, adapted, trajectory,
                            params, lrs, lr, support_x, support_y, query_x, query_y, sizes, activation, loss,
                            first_order, lrs_grad, x_grad, query_x_grad, support_weights);
  const cudaStream_t stream = current_cuda_stream(params.get_device_index());
  if (params.scalar_type() == ScalarType::Float)
    launch_backward<float>(b, lr, params, stream);
  else
    launch_backward<double>(b, lr, params, stream);
  return {b.grad_init, b.grad_lrs, b.grad_x, b.grad_qx};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(metafast, CUDA, m) {
  m.impl("mlp_adapt", TORCH_BOX(&mlp_adapt_cuda));
  m.impl("mlp_adapt_backward", TORCH_BOX(&mlp_adapt_backward_cuda));
}

}  // namespace metafast
