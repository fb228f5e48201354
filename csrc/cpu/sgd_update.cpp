// CPU kernel of metafast::sgd_update: θ' = θ − α·g for every entry of a list.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "kernels/maml_math.h"
#include "sgd_update_host.h"

namespace metafast {
namespace {

std::vector<at::Tensor> sgd_update_cpu(at::TensorList params, at::TensorList grads, double lr,
                                       std::optional<at::TensorList> lrs) {
  auto entries = check_sgd_update_inputs(params, grads, lrs);
  std::vector<at::Tensor> out;
  out.reserve(entries.size());
  for (auto& e : entries) {
    TORCH_CHECK(e.param.device().is_cpu(), "metafast::sgd_update (CPU): tensors must be on the CPU");
    const at::Tensor p = e.param.contiguous(), g = e.grad.contiguous();
    const at::Tensor r = e.lr.defined() ? e.lr.contiguous() : at::Tensor();
    at::Tensor o = at::empty(e.out_shape, e.param.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, o.scalar_type(), "metafast::sgd_update_cpu", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      const scalar_t* pp = p.data_ptr<scalar_t>();
      const scalar_t* gp = g.data_ptr<scalar_t>();
      const scalar_t* rp = r.defined() ? r.data_ptr<scalar_t>() : nullptr;
      scalar_t* op = o.data_ptr<scalar_t>();
      // An operand without the task dimension repeats every `numel` elements.
      const int64_t pn = std::max<int64_t>(p.numel(), 1), gn = std::max<int64_t>(g.numel(), 1);
      const int64_t rn = r.defined() ? std::max<int64_t>(r.numel(), 1) : 1;
      const opmath_t lr_scalar = opmath_t(lr);
      at::parallel_for(0, o.numel(), 4096, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const opmath_t rate = rp ? opmath_t(rp[i % rn]) : lr_scalar;
          op[i] = scalar_t(sgd_step<opmath_t>(opmath_t(pp[i % pn]), rate, opmath_t(gp[i % gn])));
        }
      });
    });
    out.push_back(std::move(o));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(metafast, CPU, m) { m.impl("sgd_update", &sgd_update_cpu); }

}  // namespace metafast
