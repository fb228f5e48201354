// CUDA dispatch of metafast::sgd_update: checks, device guard, current stream,
// then one multi-tensor launch per dtype and per kSgdMaxTensors entries.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/launchers.h"
#include "sgd_update_host.h"

namespace metafast {
namespace {

StorageType storage_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return StorageType::Float;
    case at::kDouble: return StorageType::Double;
    case at::kHalf: return StorageType::Half;
    case at::kBFloat16: return StorageType::BFloat16;
    default: TORCH_CHECK(false, "metafast::sgd_update (CUDA): unsupported dtype ", t);
  }
}

std::vector<at::Tensor> sgd_update_cuda(at::TensorList params, at::TensorList grads, double lr,
                                        std::optional<at::TensorList> lrs) {
  auto entries = check_sgd_update_inputs(params, grads, lrs);
  std::vector<at::Tensor> out;
  if (entries.empty()) return out;
  TORCH_CHECK(entries[0].param.is_cuda(), "metafast::sgd_update (CUDA): tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(entries[0].param.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  for (auto& e : entries) {  // contiguous copies stay alive in `entries` until launched
    e.param = e.param.contiguous();
    e.grad = e.grad.contiguous();
    if (e.lr.defined()) e.lr = e.lr.contiguous();
    out.push_back(at::empty(e.out_shape, e.param.options()));
  }
  // Group entries by dtype; each group is launched in batches.
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    SgdUpdateBatch batch;
    batch.lr = lr;
    int64_t max_numel = 0;
    auto flush = [&] {
      launch_sgd_update(storage_type(dtype), batch, max_numel, stream);
      batch.count = 0;
      max_numel = 0;
    };
    for (size_t i = 0; i < entries.size(); ++i) {
      const auto& e = entries[i];
      if (e.param.scalar_type() != dtype) continue;
      if (out[i].numel() == 0) continue;
      const int k = batch.count++;
      batch.param[k] = e.param.data_ptr();
      batch.grad[k] = e.grad.data_ptr();
      batch.lr_tensor[k] = e.lr.defined() ? e.lr.data_ptr() : nullptr;
      batch.out[k] = out[i].data_ptr();
      batch.out_numel[k] = out[i].numel();
      batch.param_numel[k] = std::max<int64_t>(e.param.numel(), 1);
      batch.grad_numel[k] = std::max<int64_t>(e.grad.numel(), 1);
      batch.lr_numel[k] = e.lr.defined() ? std::max<int64_t>(e.lr.numel(), 1) : 1;
      max_numel = std::max(max_numel, out[i].numel());
      if (batch.count == kSgdMaxTensors) flush();
    }
    if (batch.count > 0) flush();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(metafast, CUDA, m) { m.impl("sgd_update", &sgd_update_cuda); }

}  // namespace metafast
