// CompositeExplicitAutograd kernel of metafast::sgd_update: what runs when no
// backend kernel applies. With empty lists there is no tensor to dispatch on
// (torch would raise NotImplementedError): the update of nothing is nothing.
// Tensors on a device without a metafast kernel get an error naming it.
#include <torch/csrc/stable/library.h>

#include "ops/sgd_update/host.h"

namespace metafast {
namespace {

std::vector<Tensor> sgd_update_no_kernel(std::vector<Tensor> params, std::vector<Tensor> grads, double lr,
                                         std::optional<std::vector<Tensor>> lrs) {
  const auto entries = check_sgd_update_inputs({std::move(params), std::move(grads), lr, std::move(lrs)});
  if (!entries.empty())
    throw_value_error("metafast::sgd_update: no kernel for tensors on ", entries[0].param.device(),
                      " (metafast has CPU and CUDA kernels)");
  return {};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(metafast, CompositeExplicitAutograd, m) {
  m.impl("sgd_update", TORCH_BOX(&sgd_update_no_kernel));
}

}  // namespace metafast
