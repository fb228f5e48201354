// CPU kernel of metafast::sgd_update: θ' = θ − α·g for every entry of a list.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include "common/dispatch.h"
#include "kernels/core/maml_math.h"
#include "ops/sgd_update/host.h"

namespace metafast {
namespace {

// float arithmetic for the 16-bit storage types, as torch's opmath_type.
template <typename S> struct OpMath { using type = S; };
template <> struct OpMath<c10::Half> { using type = float; };
template <> struct OpMath<c10::BFloat16> { using type = float; };

template <typename S>
void update_entry(const Tensor& p, const Tensor& g, const std::optional<Tensor>& r, Tensor& o, double lr) {
  using O = typename OpMath<S>::type;
  const S* pp = p.const_data_ptr<S>();
  const S* gp = g.const_data_ptr<S>();
  const S* rp = r ? r->const_data_ptr<S>() : nullptr;
  S* op = o.mutable_data_ptr<S>();
  // An operand without the task dimension repeats every `numel` elements.
  const int64_t pn = std::max<int64_t>(p.numel(), 1), gn = std::max<int64_t>(g.numel(), 1);
  const int64_t rn = r ? std::max<int64_t>(r->numel(), 1) : 1;
  const O lr_scalar = O(lr);
  torch::stable::parallel_for(0, o.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const O rate = rp ? O(rp[i % rn]) : lr_scalar;
      op[i] = S(sgd_step<O>(O(pp[i % pn]), rate, O(gp[i % gn])));
    }
  });
}

struct SgdUpdateCpu {
  using Device = CpuDevice;
  static std::vector<Tensor> run(const std::vector<SgdUpdateEntry>& entries, double lr) {
    std::vector<Tensor> out;
    out.reserve(entries.size());
    for (const auto& e : entries) {
      const Tensor p = torch::stable::contiguous(e.param), g = torch::stable::contiguous(e.grad);
      const std::optional<Tensor> r = e.lr ? std::optional<Tensor>(torch::stable::contiguous(*e.lr)) : std::nullopt;
      Tensor o = torch::stable::new_empty(e.param, e.out_shape);
      dispatch_float_and_16bit(e.param.scalar_type(), "metafast::sgd_update",
                               [&](auto s) { update_entry<decltype(s)>(p, g, r, o, lr); });
      out.push_back(std::move(o));
    }
    return out;
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(metafast, CPU, m) { m.impl("sgd_update", TORCH_BOX(&sgd_update_op<SgdUpdateCpu>)); }

}  // namespace metafast
