// Host-side checks shared by the CPU and CUDA implementations of
// metafast::sgd_update. Shape rule (no general broadcasting): the output has
// the shape of grads[i]; params[i] and lrs[i] have that shape or that shape
// without its leading task dimension (shared by every task).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <vector>

namespace metafast {

struct SgdUpdateEntry {
  at::Tensor param, grad, lr;  // lr undefined for a scalar rate
  std::vector<int64_t> out_shape;
};

inline bool is_task_slice(const at::Tensor& t, c10::IntArrayRef full) {
  return t.sizes() == full || (!full.empty() && t.sizes() == full.slice(1));
}

inline std::vector<SgdUpdateEntry> check_sgd_update_inputs(at::TensorList params, at::TensorList grads,
                                                           const std::optional<at::TensorList>& lrs) {
  TORCH_CHECK_VALUE(params.size() == grads.size(), "metafast::sgd_update: got ", params.size(), " params but ",
              grads.size(), " grads");
  if (lrs.has_value())
    TORCH_CHECK_VALUE(lrs->size() == params.size(), "metafast::sgd_update: got ", params.size(), " params but ",
                lrs->size(), " lrs");
  std::vector<SgdUpdateEntry> entries;
  entries.reserve(params.size());
  for (const auto i : c10::irange(params.size())) {
    SgdUpdateEntry e{params[i], grads[i], lrs.has_value() ? (*lrs)[i] : at::Tensor(), {}};
    TORCH_CHECK_VALUE(e.param.defined() && e.grad.defined() && (!lrs.has_value() || e.lr.defined()),
                "metafast::sgd_update: entry ", i, " holds an undefined tensor");
    for (const at::Tensor* t : {&e.grad, &e.lr}) {
      if (!t->defined()) continue;
      TORCH_CHECK_VALUE(t->device() == e.param.device(), "metafast::sgd_update: entry ", i, " mixes devices ",
                  e.param.device(), " and ", t->device());
      TORCH_CHECK_VALUE(t->scalar_type() == e.param.scalar_type(), "metafast::sgd_update: entry ", i,
                  " mixes dtypes ", e.param.scalar_type(), " and ", t->scalar_type());
    }
    TORCH_CHECK_VALUE(at::isFloatingType(e.param.scalar_type()), "metafast::sgd_update: entry ", i,
                " must be floating point, got ", e.param.scalar_type());
    const c10::IntArrayRef full = e.grad.sizes();
    for (const at::Tensor* t : {&e.param, &e.grad, &e.lr}) {
      if (!t->defined()) continue;
      TORCH_CHECK_VALUE(is_task_slice(*t, full), "metafast::sgd_update: entry ", i, " has shapes param ",
                  e.param.sizes(), ", grad ", e.grad.sizes(), e.lr.defined() ? ", lr " : "",
                  e.lr.defined() ? e.lr.sizes() : c10::IntArrayRef{},
                  "; each must be the grad's shape or the grad's shape without its leading task dimension");
    }
    e.out_shape = full.vec();
    entries.push_back(std::move(e));
  }
  if (!entries.empty()) {
    for (const auto& e : entries)
      TORCH_CHECK_VALUE(e.param.device() == entries[0].param.device(), "metafast::sgd_update: tensors on ",
                  entries[0].param.device(), " and ", e.param.device(), " in one call");
  }
  return entries;
}

}  // namespace metafast
