// Host-side API checks and setup shared by the CPU and CUDA implementations of
// metafast::mlp_adapt / mlp_adapt_backward (flash-attention style: a thin C++
// layer that validates shapes, dtypes and devices, then calls the kernel).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <string>

#include "kernels/mlp_adapt.h"

namespace metafast {

struct MlpAdaptConfig {
  MlpLayout layout;
  Activation act;
  Loss loss;
  int tasks, shots, steps;
};

inline Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::ReLU;
  if (name == "tanh") return Activation::Tanh;
  TORCH_CHECK(false, "metafast::mlp_adapt: unsupported activation '", name,
              "' (supported: 'relu', 'tanh')");
}

inline Loss parse_loss(const std::string& name) {
  if (name == "mse") return Loss::MSE;
  if (name == "cross_entropy") return Loss::CrossEntropy;
  TORCH_CHECK(false, "metafast::mlp_adapt: unsupported loss '", name,
              "' (supported: 'mse', 'cross_entropy')");
}

inline MlpLayout make_mlp_layout(c10::IntArrayRef sizes) {
  TORCH_CHECK(sizes.size() >= 2 && sizes.size() <= size_t(kMaxLayers) + 1,
              "metafast::mlp_adapt: sizes must list 2 to ", kMaxLayers + 1,
              " layer widths [d_in, ..., d_out], got ", sizes.size());
  MlpLayout m;
  m.num_layers = int(sizes.size()) - 1;
  int64_t p = 0, a = 0;
  for (const auto l : c10::irange(sizes.size())) {
    TORCH_CHECK(sizes[l] > 0 && sizes[l] < (1 << 20), "metafast::mlp_adapt: layer width ", l,
                " must be positive, got ", sizes[l]);
    m.sizes[l] = int(sizes[l]);
    if (l == 0) continue;
    m.weight_offset[l] = p;
    p += sizes[l] * sizes[l - 1];
    m.bias_offset[l] = p;
    p += sizes[l];
    m.act_offset[l] = a;
    a += sizes[l];
  }
  m.num_params = p;
  m.act_width = a;
  return m;
}

inline void check_same(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), "metafast::mlp_adapt: ", name, " is on ", t.device(),
              " but params is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "metafast::mlp_adapt: ", name, " has dtype ",
              t.scalar_type(), " but params has ", ref.scalar_type());
}

// Validates every input; returns the layout and problem sizes.
inline MlpAdaptConfig check_mlp_adapt_inputs(const at::Tensor& params,
                                             const std::optional<at::Tensor>& lrs,
                                             const at::Tensor& x, const at::Tensor& y,
                                             c10::IntArrayRef sizes, int64_t steps,
                                             const std::string& activation,
                                             const std::string& loss) {
  MlpAdaptConfig c;
  c.layout = make_mlp_layout(sizes);
  c.act = parse_activation(activation);
  c.loss = parse_loss(loss);
  TORCH_CHECK(params.scalar_type() == at::kFloat || params.scalar_type() == at::kDouble,
              "metafast::mlp_adapt: params must be float32 or float64, got ", params.scalar_type());
  TORCH_CHECK(params.dim() == 1 && params.numel() == c.layout.num_params,
              "metafast::mlp_adapt: params must be the flat vector [W1, b1, ...] of ",
              c.layout.num_params, " elements for sizes ", sizes, ", got shape ", params.sizes());
  if (lrs.has_value()) {
    check_same(*lrs, params, "lrs");
    TORCH_CHECK(lrs->sizes() == params.sizes(), "metafast::mlp_adapt: lrs must have the shape of params ",
                params.sizes(), ", got ", lrs->sizes());
  }
  check_same(x, params, "support_x");
  TORCH_CHECK(x.dim() == 3 && x.size(2) == sizes[0],
              "metafast::mlp_adapt: support_x must be [tasks, shots, ", sizes[0], "], got ", x.sizes());
  TORCH_CHECK(x.size(0) > 0 && x.size(1) > 0,
              "metafast::mlp_adapt: support_x has an empty task or support set: ", x.sizes());
  TORCH_CHECK(steps >= 1 && steps <= 1000, "metafast::mlp_adapt: steps must be in [1, 1000], got ", steps);
  c.tasks = int(x.size(0));
  c.shots = int(x.size(1));
  c.steps = int(steps);
  const int64_t d_out = sizes.back();
  TORCH_CHECK(y.device() == params.device(), "metafast::mlp_adapt: support_y is on ", y.device(),
              " but params is on ", params.device());
  if (c.loss == Loss::MSE) {
    TORCH_CHECK(y.scalar_type() == params.scalar_type(), "metafast::mlp_adapt: MSE targets must have dtype ",
                params.scalar_type(), ", got ", y.scalar_type());
    TORCH_CHECK(y.dim() == 3 && y.size(0) == c.tasks && y.size(1) == c.shots && y.size(2) == d_out,
                "metafast::mlp_adapt: MSE support_y must be [", c.tasks, ", ", c.shots, ", ", d_out,
                "], got ", y.sizes());
  } else {
    TORCH_CHECK(y.scalar_type() == at::kLong, "metafast::mlp_adapt: cross-entropy support_y must hold int64 class "
                "indices, got ", y.scalar_type());
    TORCH_CHECK(y.dim() == 2 && y.size(0) == c.tasks && y.size(1) == c.shots,
                "metafast::mlp_adapt: cross-entropy support_y must be [", c.tasks, ", ", c.shots, "], got ",
                y.sizes());
  }
  return c;
}

// Labels must index the d_out classes (checked on the host, once per call).
inline void check_label_range(int64_t lo, int64_t hi, int64_t classes) {
  TORCH_CHECK(lo >= 0 && hi < classes, "metafast::mlp_adapt: class labels must be in [0, ", classes,
              "), got values in [", lo, ", ", hi, "]");
}

inline void check_backward_inputs(const MlpAdaptConfig& c, const at::Tensor& grad_adapted,
                                  const at::Tensor& grad_losses, const at::Tensor& trajectory,
                                  const at::Tensor& x) {
  const int64_t P = c.layout.num_params;
  TORCH_CHECK(grad_adapted.sizes() == c10::IntArrayRef({c.tasks, P}),
              "metafast::mlp_adapt_backward: grad_adapted must be [", c.tasks, ", ", P, "], got ",
              grad_adapted.sizes());
  TORCH_CHECK(grad_losses.sizes() == c10::IntArrayRef({c.tasks, c.steps}),
              "metafast::mlp_adapt_backward: grad_losses must be [", c.tasks, ", ", c.steps, "], got ",
              grad_losses.sizes());
  TORCH_CHECK(trajectory.sizes() == c10::IntArrayRef({c.tasks, c.steps, P}),
              "metafast::mlp_adapt_backward: trajectory must be [", c.tasks, ", ", c.steps, ", ", P,
              "], got ", trajectory.sizes());
  for (const at::Tensor* t : {&grad_adapted, &grad_losses, &trajectory}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(),
                "metafast::mlp_adapt_backward: gradients and trajectory must match support_x's dtype and device");
  }
}

template <typename T>
MlpAdaptForwardArgs<T> forward_args(const MlpAdaptConfig& c, double lr, const at::Tensor& init,
                                    const at::Tensor* lrs, const at::Tensor& x, const at::Tensor& y,
                                    at::Tensor& adapted, at::Tensor& losses, at::Tensor& trajectory,
                                    at::Tensor& workspace) {
  MlpAdaptForwardArgs<T> a;
  a.layout = c.layout;
  a.act = c.act;
  a.loss = c.loss;
  a.tasks = c.tasks;
  a.shots = c.shots;
  a.steps = c.steps;
  a.lr = T(lr);
  a.lrs = lrs ? lrs->data_ptr<T>() : nullptr;
  a.init = init.data_ptr<T>();
  a.x = x.data_ptr<T>();
  a.y_float = c.loss == Loss::MSE ? y.data_ptr<T>() : nullptr;
  a.y_class = c.loss == Loss::CrossEntropy ? y.data_ptr<int64_t>() : nullptr;
  a.adapted = adapted.data_ptr<T>();
  a.losses = losses.data_ptr<T>();
  a.trajectory = trajectory.data_ptr<T>();
  a.workspace = workspace.data_ptr<T>();
  return a;
}

template <typename T>
MlpAdaptBackwardArgs<T> backward_args(const MlpAdaptConfig& c, double lr, bool first_order,
                                      const at::Tensor* lrs, const at::Tensor& grad_adapted,
                                      const at::Tensor& grad_losses, const at::Tensor& trajectory,
                                      const at::Tensor& x, const at::Tensor& y, at::Tensor& grad_init,
                                      at::Tensor* grad_lrs, at::Tensor* grad_x, at::Tensor& workspace) {
  MlpAdaptBackwardArgs<T> a;
  a.layout = c.layout;
  a.act = c.act;
  a.loss = c.loss;
  a.tasks = c.tasks;
  a.shots = c.shots;
  a.steps = c.steps;
  a.second_order = !first_order;
  a.lr = T(lr);
  a.lrs = lrs ? lrs->data_ptr<T>() : nullptr;
  a.grad_adapted = grad_adapted.data_ptr<T>();
  a.grad_losses = grad_losses.data_ptr<T>();
  a.trajectory = trajectory.data_ptr<T>();
  a.x = x.data_ptr<T>();
  a.y_float = c.loss == Loss::MSE ? y.data_ptr<T>() : nullptr;
  a.y_class = c.loss == Loss::CrossEntropy ? y.data_ptr<int64_t>() : nullptr;
  a.grad_init = grad_init.data_ptr<T>();
  a.grad_lrs = grad_lrs ? grad_lrs->data_ptr<T>() : nullptr;
  a.grad_x = grad_x ? grad_x->data_ptr<T>() : nullptr;
  a.workspace = workspace.data_ptr<T>();
  return a;
}

}  // namespace metafast
