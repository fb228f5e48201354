// CUDA backend of metafast::sgd_update (the op body: ops/sgd_update/host.h):
// one multi-tensor launch per dtype and per kSgdMaxTensors entries.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include "ops/sgd_update/launch.h"
#include "common/cuda_device.h"
#include "ops/sgd_update/host.h"

namespace metafast {
namespace {

StorageType storage_type(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return StorageType::Float;
    case ScalarType::Double: return StorageType::Double;
    case ScalarType::Half: return StorageType::Half;
    case ScalarType::BFloat16: return StorageType::BFloat16;
    default: throw_value_error("metafast::sgd_update (CUDA): unsupported dtype ", t);
  }
}

struct SgdUpdateCuda {
  using Device = CudaDevice;
  static std::vector<Tensor> run(std::vector<SgdUpdateEntry>& entries, double lr);
};

std::vector<Tensor> SgdUpdateCuda::run(std::vector<SgdUpdateEntry>& entries, double lr) {
  const cudaStream_t stream = CudaDevice::stream(entries[0].param);
  std::vector<Tensor> out;
  for (auto& e : entries) {  // contiguous copies stay alive in `entries` until launched
    e.param = torch::stable::contiguous(e.param);
    e.grad = torch::stable::contiguous(e.grad);
    if (e.lr) e.lr = torch::stable::contiguous(*e.lr);
    out.push_back(torch::stable::new_empty(e.param, e.out_shape));
  }
  // Group entries by dtype; each group is launched in batches.
  for (const ScalarType dtype : {ScalarType::Float, ScalarType::Double, ScalarType::Half, ScalarType::BFloat16}) {
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
      if (e.param.scalar_type() != dtype || out[i].numel() == 0) continue;
      const int k = batch.count++;
      batch.param[k] = e.param.const_data_ptr();
      batch.grad[k] = e.grad.const_data_ptr();
      batch.lr_tensor[k] = e.lr ? e.lr->const_data_ptr() : nullptr;
      batch.out[k] = out[i].mutable_data_ptr();
      batch.out_numel[k] = out[i].numel();
      batch.param_numel[k] = std::max<int64_t>(e.param.numel(), 1);
      batch.grad_numel[k] = std::max<int64_t>(e.grad.numel(), 1);
      batch.lr_numel[k] = e.lr ? std::max<int64_t>(e.lr->numel(), 1) : 1;
      max_numel = std::max(max_numel, out[i].numel());
      if (batch.count == kSgdMaxTensors) flush();
    }
    if (batch.count > 0) flush();
  }
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(metafast, CUDA, m) { m.impl("sgd_update", TORCH_BOX(&sgd_update_op<SgdUpdateCuda>)); }

}  // namespace metafast
