// metafast::sgd_update on the host: its arguments as one struct, the checks
// and the op body shared by the CPU and CUDA kernels (ops/sgd_update/cpu.cpp,
// cuda.cpp) and the composite one (composite.cpp). Shape rule (no general
// broadcasting): the output has the shape of grads[i]; params[i] and lrs[i]
// have that shape or that shape without its leading task dimension (shared by
// every task).
#pragma once
#include <cmath>
#include <optional>
#include <vector>

#include "common/checks.h"
#include "common/device.h"

namespace metafast {

// The arguments of metafast::sgd_update, as its schema (library.cpp) names them.
struct SgdUpdateParams {
  std::vector<Tensor> params, grads;
  double lr;
  std::optional<std::vector<Tensor>> lrs;
};

struct SgdUpdateEntry {
  Tensor param, grad;
  std::optional<Tensor> lr;  // absent: the scalar rate
  std::vector<int64_t> out_shape;
};

// The storage types every device implements (float math for the 16-bit ones).
inline bool sgd_update_supports(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half || t == ScalarType::BFloat16;
}

inline bool is_task_slice(IntArrayRef t, IntArrayRef full) {
  return same_sizes(t, full) || (full.size() > 0 && same_sizes(t, IntArrayRef(full.data() + 1, full.size() - 1)));
}

inline std::vector<SgdUpdateEntry> check_sgd_update_inputs(const SgdUpdateParams& p) {
  const auto& params = p.params;
  const auto& grads = p.grads;
  const auto& lrs = p.lrs;
  const double lr = p.lr;
  MF_CHECK(params.size() == grads.size(), "metafast::sgd_update: got ", params.size(), " params but ", grads.size(),
           " grads");
  if (lrs.has_value())
    MF_CHECK(lrs->size() == params.size(), "metafast::sgd_update: got ", params.size(), " params but ", lrs->size(),
             " lrs");
  else
    MF_CHECK(std::isfinite(lr), "metafast::sgd_update: lr must be finite, got ", lr);
  std::vector<SgdUpdateEntry> entries;
  entries.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    SgdUpdateEntry e{params[i], grads[i], std::nullopt, {}};
    if (lrs.has_value()) e.lr = (*lrs)[i];
    MF_CHECK(e.param.defined() && e.grad.defined() && (!e.lr || e.lr->defined()), "metafast::sgd_update: entry ", i,
             " holds an undefined tensor");
    MF_CHECK(sgd_update_supports(e.param.scalar_type()), "metafast::sgd_update: entry ", i,
             " must be float32, float64, float16 or bfloat16, got ", e.param.scalar_type());
    for (const Tensor* t : {&e.grad, e.lr ? &*e.lr : nullptr}) {
      if (!t) continue;
      MF_CHECK(same_device(*t, e.param), "metafast::sgd_update: entry ", i, " mixes devices ", e.param.device(),
               " and ", t->device());
      MF_CHECK(t->scalar_type() == e.param.scalar_type(), "metafast::sgd_update: entry ", i, " mixes dtypes ",
               e.param.scalar_type(), " and ", t->scalar_type());
    }
    const IntArrayRef full = e.grad.sizes();
    const bool ok = is_task_slice(e.param.sizes(), full) && (!e.lr || is_task_slice(e.lr->sizes(), full));
    if (!ok) {
      std::ostringstream shapes;
      shapes << "param " << e.param.sizes() << ", grad " << full;
      if (e.lr) shapes << ", lr " << e.lr->sizes();
      throw_value_error("metafast::sgd_update: entry ", i, " has shapes ", shapes.str(),
                        "; each must be the grad's shape or the grad's shape without its leading task dimension");
    }
    e.out_shape.assign(full.begin(), full.end());
    MF_CHECK(same_device(e.param, params[0]), "metafast::sgd_update: tensors on ", params[0].device(), " and ",
             e.param.device(), " in one call");
    entries.push_back(std::move(e));
  }
  return entries;
}

// The op on a device: the checks, then Backend::run(entries, lr) (the
// outputs) under Backend::Device's guard. The schema's arguments become one
// SgdUpdateParams here, once.
template <typename Backend>
std::vector<Tensor> sgd_update_op(std::vector<Tensor> params, std::vector<Tensor> grads, double lr,
                                  std::optional<std::vector<Tensor>> lrs) {
  const SgdUpdateParams p{std::move(params), std::move(grads), lr, std::move(lrs)};
  std::vector<SgdUpdateEntry> entries = check_sgd_update_inputs(p);
  if (entries.empty()) return {};
  check_device<typename Backend::Device>(entries[0].param, "metafast::sgd_update", "tensors");
  const typename Backend::Device::Guard guard(entries[0].param);
  return Backend::run(entries, p.lr);
}

}  // namespace metafast
