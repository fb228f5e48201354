// Host-side API checks and setup shared by the CPU and CUDA implementations of
// metafast::mlp_adapt / mlp_adapt_backward (flash-attention style: a thin C++
// layer that validates shapes, dtypes and devices, then calls the kernel).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <string>

#include <ATen/ops/aminmax.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>

#include "kernels/mlp_adapt.h"

namespace metafast {

struct MlpAdaptConfig {
  MlpLayout layout;
  Activation act;
  Loss loss;
  int tasks, shots, steps;
  int queries = 0;  // 0: no query set
  int64_t workspace_per_task() const { return mlp_workspace_size(layout, shots > queries ? shots : queries); }
};

// The tensors of one call, made contiguous (undefined where absent).
struct MlpAdaptTensors {
  at::Tensor init, lrs, x, y, qx, qy;
};

// Upstream gradients and saved outputs of a backward call (contiguous).
struct MlpAdaptGrads {
  at::Tensor grad_adapted, grad_losses, grad_query_output, grad_query_losses, adapted, trajectory;
};

inline Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::ReLU;
  if (name == "tanh") return Activation::Tanh;
  TORCH_CHECK_VALUE(false, "metafast::mlp_adapt: unsupported activation '", name,
              "' (supported: 'relu', 'tanh')");
}

inline Loss parse_loss(const std::string& name) {
  if (name == "mse") return Loss::MSE;
  if (name == "cross_entropy") return Loss::CrossEntropy;
  TORCH_CHECK_VALUE(false, "metafast::mlp_adapt: unsupported loss '", name,
              "' (supported: 'mse', 'cross_entropy')");
}

inline MlpLayout make_mlp_layout(c10::IntArrayRef sizes) {
  TORCH_CHECK_VALUE(sizes.size() >= 2 && sizes.size() <= size_t(kMaxLayers) + 1,
              "metafast::mlp_adapt: sizes must list 2 to ", kMaxLayers + 1,
              " layer widths [d_in, ..., d_out], got ", sizes.size());
  MlpLayout m;
  m.num_layers = int(sizes.size()) - 1;
  int64_t p = 0, a = 0;
  for (const auto l : c10::irange(sizes.size())) {
    TORCH_CHECK_VALUE(sizes[l] > 0 && sizes[l] <= 65536, "metafast::mlp_adapt: layer width ", l,
                " must be in [1, 65536], got ", sizes[l]);
    // The kernels index one layer's weights and activations with 32-bit ints.
    TORCH_CHECK_VALUE(l == 0 || sizes[l] * sizes[l - 1] < (int64_t(1) << 31), "metafast::mlp_adapt: layer ", l,
                " has too many weights (", sizes[l] * sizes[l - 1], ") for the fused kernel");
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
  TORCH_CHECK_VALUE(t.device() == ref.device(), "metafast::mlp_adapt: ", name, " is on ", t.device(),
              " but params is on ", ref.device());
  TORCH_CHECK_VALUE(t.scalar_type() == ref.scalar_type(), "metafast::mlp_adapt: ", name, " has dtype ",
              t.scalar_type(), " but params has ", ref.scalar_type());
}

inline void check_targets(const MlpAdaptConfig& c, const at::Tensor& params, const at::Tensor& y, int64_t rows,
                          int64_t d_out, const char* name) {
  TORCH_CHECK_VALUE(y.device() == params.device(), "metafast::mlp_adapt: ", name, " is on ", y.device(),
              " but params is on ", params.device());
  if (c.loss == Loss::MSE) {
    TORCH_CHECK_VALUE(y.scalar_type() == params.scalar_type(), "metafast::mlp_adapt: MSE ", name, " must have dtype ",
                params.scalar_type(), ", got ", y.scalar_type());
    TORCH_CHECK_VALUE(y.dim() == 3 && y.size(0) == c.tasks && y.size(1) == rows && y.size(2) == d_out,
                "metafast::mlp_adapt: MSE ", name, " must be [", c.tasks, ", ", rows, ", ", d_out, "], got ",
                y.sizes());
  } else {
    TORCH_CHECK_VALUE(y.scalar_type() == at::kLong, "metafast::mlp_adapt: cross-entropy ", name,
                " must hold int64 class indices, got ", y.scalar_type());
    TORCH_CHECK_VALUE(y.dim() == 2 && y.size(0) == c.tasks && y.size(1) == rows, "metafast::mlp_adapt: cross-entropy ",
                name, " must be [", c.tasks, ", ", rows, "], got ", y.sizes());
  }
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
  TORCH_CHECK_VALUE(params.scalar_type() == at::kFloat || params.scalar_type() == at::kDouble,
              "metafast::mlp_adapt: params must be float32 or float64, got ", params.scalar_type());
  TORCH_CHECK_VALUE(params.dim() == 1 && params.numel() == c.layout.num_params,
              "metafast::mlp_adapt: params must be the flat vector [W1, b1, ...] of ",
              c.layout.num_params, " elements for sizes ", sizes, ", got shape ", params.sizes());
  if (lrs.has_value()) {
    check_same(*lrs, params, "lrs");
    TORCH_CHECK_VALUE(lrs->sizes() == params.sizes(), "metafast::mlp_adapt: lrs must have the shape of params ",
                params.sizes(), ", got ", lrs->sizes());
  }
  check_same(x, params, "support_x");
  TORCH_CHECK_VALUE(x.dim() == 3 && x.size(2) == sizes[0],
              "metafast::mlp_adapt: support_x must be [tasks, shots, ", sizes[0], "], got ", x.sizes());
  TORCH_CHECK_VALUE(x.size(0) > 0 && x.size(1) > 0,
              "metafast::mlp_adapt: support_x has an empty task or support set: ", x.sizes());
  TORCH_CHECK_VALUE(steps >= 1 && steps <= 1000, "metafast::mlp_adapt: steps must be in [1, 1000], got ", steps);
  int64_t widest = 0;
  for (const auto w : sizes) widest = std::max<int64_t>(widest, w);
  TORCH_CHECK_VALUE(x.size(1) * widest < (int64_t(1) << 31) && x.size(0) < (int64_t(1) << 31),
              "metafast::mlp_adapt: too many examples per task (", x.size(1), ") for layers ", widest,
              " wide in the fused kernel");
  c.tasks = int(x.size(0));
  c.shots = int(x.size(1));
  c.steps = int(steps);
  check_targets(c, params, y, c.shots, sizes.back(), "support_y");
  return c;
}

// Adds the optional query set (both tensors or neither) to the checks.
inline void check_query_inputs(MlpAdaptConfig& c, const at::Tensor& params, const std::optional<at::Tensor>& qx,
                               const std::optional<at::Tensor>& qy, c10::IntArrayRef sizes) {
  TORCH_CHECK_VALUE(qx.has_value() == qy.has_value(), "metafast::mlp_adapt: give both query_x and query_y, or neither");
  if (!qx.has_value()) return;
  check_same(*qx, params, "query_x");
  TORCH_CHECK_VALUE(qx->dim() == 3 && qx->size(0) == c.tasks && qx->size(2) == sizes[0],
              "metafast::mlp_adapt: query_x must be [", c.tasks, ", queries, ", sizes[0], "], got ", qx->sizes());
  TORCH_CHECK_VALUE(qx->size(1) > 0, "metafast::mlp_adapt: query_x has an empty query set");
  int64_t widest = 0;
  for (const auto w : sizes) widest = std::max<int64_t>(widest, w);
  TORCH_CHECK_VALUE(qx->size(1) * widest < (int64_t(1) << 31), "metafast::mlp_adapt: too many query examples per task");
  c.queries = int(qx->size(1));
  check_targets(c, params, *qy, c.queries, sizes.back(), "query_y");
}

// Labels must index the d_out classes (checked on the host, once per call).
inline void check_label_range(int64_t lo, int64_t hi, int64_t classes) {
  TORCH_CHECK_VALUE(lo >= 0 && hi < classes, "metafast::mlp_adapt: class labels must be in [0, ", classes,
              "), got values in [", lo, ", ", hi, "]");
}

inline void check_backward_inputs(const MlpAdaptConfig& c, const MlpAdaptGrads& g, const at::Tensor& x) {
  const int64_t P = c.layout.num_params, dL = c.layout.sizes[c.layout.num_layers];
  TORCH_CHECK_VALUE(g.grad_adapted.sizes() == c10::IntArrayRef({c.tasks, P}),
                    "metafast::mlp_adapt_backward: grad_adapted must be [", c.tasks, ", ", P, "], got ",
                    g.grad_adapted.sizes());
  TORCH_CHECK_VALUE(g.grad_losses.sizes() == c10::IntArrayRef({c.tasks, c.steps}),
                    "metafast::mlp_adapt_backward: grad_losses must be [", c.tasks, ", ", c.steps, "], got ",
                    g.grad_losses.sizes());
  TORCH_CHECK_VALUE(g.trajectory.sizes() == c10::IntArrayRef({c.tasks, c.steps, P}),
                    "metafast::mlp_adapt_backward: trajectory must be [", c.tasks, ", ", c.steps, ", ", P,
                    "], got ", g.trajectory.sizes());
  if (c.queries > 0) {
    TORCH_CHECK_VALUE(g.adapted.defined() && g.adapted.sizes() == c10::IntArrayRef({c.tasks, P}),
                      "metafast::mlp_adapt_backward: the query terms need adapted [", c.tasks, ", ", P, "]");
    if (g.grad_query_output.defined())
      TORCH_CHECK_VALUE(g.grad_query_output.sizes() == c10::IntArrayRef({c.tasks, c.queries, dL}),
                        "metafast::mlp_adapt_backward: grad_query_output must be [", c.tasks, ", ", c.queries,
                        ", ", dL, "], got ", g.grad_query_output.sizes());
    if (g.grad_query_losses.defined())
      TORCH_CHECK_VALUE(g.grad_query_losses.sizes() == c10::IntArrayRef({c.tasks}),
                        "metafast::mlp_adapt_backward: grad_query_losses must be [", c.tasks, "], got ",
                        g.grad_query_losses.sizes());
  }
  for (const at::Tensor* t : {&g.grad_adapted, &g.grad_losses, &g.trajectory, &g.adapted, &g.grad_query_output,
                              &g.grad_query_losses})
    TORCH_CHECK_VALUE(!t->defined() || (t->scalar_type() == x.scalar_type() && t->device() == x.device()),
                      "metafast::mlp_adapt_backward: gradients and saved outputs must match support_x's dtype and "
                      "device");
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }
template <typename T>
T* mut_ptr_or_null(at::Tensor& t) { return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr; }

template <typename T>
MlpProblem<T> problem(const MlpAdaptConfig& c, double lr, const MlpAdaptTensors& in, at::Tensor& workspace) {
  MlpProblem<T> p;
  p.layout = c.layout;
  p.act = c.act;
  p.loss = c.loss;
  p.tasks = c.tasks;
  p.shots = c.shots;
  p.queries = c.queries;
  p.steps = c.steps;
  p.lr = T(lr);
  p.lrs = ptr_or_null<T>(in.lrs);
  p.x = in.x.data_ptr<T>();
  const bool mse = c.loss == Loss::MSE;
  p.y_float = mse ? in.y.data_ptr<T>() : nullptr;
  p.y_class = mse ? nullptr : in.y.data_ptr<int64_t>();
  p.qx = c.queries ? in.qx.data_ptr<T>() : nullptr;
  p.qy_float = c.queries && mse ? in.qy.data_ptr<T>() : nullptr;
  p.qy_class = c.queries && !mse ? in.qy.data_ptr<int64_t>() : nullptr;
  p.workspace = workspace.data_ptr<T>();
  p.workspace_stride = c.workspace_per_task();
  return p;
}

template <typename T>
MlpAdaptForwardArgs<T> forward_args(const MlpAdaptConfig& c, double lr, const MlpAdaptTensors& in,
                                    at::Tensor& adapted, at::Tensor& losses, at::Tensor& query_output,
                                    at::Tensor& query_losses, at::Tensor& trajectory, at::Tensor& workspace) {
  MlpAdaptForwardArgs<T> a;
  a.p = problem<T>(c, lr, in, workspace);
  a.init = in.init.data_ptr<T>();
  a.adapted = adapted.data_ptr<T>();
  a.losses = losses.data_ptr<T>();
  a.query_output = c.queries ? query_output.data_ptr<T>() : nullptr;
  a.query_losses = c.queries ? query_losses.data_ptr<T>() : nullptr;
  a.trajectory = trajectory.data_ptr<T>();
  return a;
}

template <typename T>
MlpAdaptBackwardArgs<T> backward_args(const MlpAdaptConfig& c, double lr, bool first_order,
                                      const MlpAdaptTensors& in, const MlpAdaptGrads& g, at::Tensor& grad_init,
                                      at::Tensor& grad_lrs, at::Tensor& grad_x, at::Tensor& grad_qx,
                                      at::Tensor& workspace) {
  MlpAdaptBackwardArgs<T> a;
  a.p = problem<T>(c, lr, in, workspace);
  a.second_order = !first_order;
  a.grad_adapted = g.grad_adapted.data_ptr<T>();
  a.grad_losses = g.grad_losses.data_ptr<T>();
  a.grad_query_output = ptr_or_null<T>(g.grad_query_output);
  a.grad_query_losses = ptr_or_null<T>(g.grad_query_losses);
  a.adapted = ptr_or_null<T>(g.adapted);
  a.trajectory = g.trajectory.data_ptr<T>();
  a.grad_init = grad_init.data_ptr<T>();
  a.grad_lrs = mut_ptr_or_null<T>(grad_lrs);
  a.grad_x = mut_ptr_or_null<T>(grad_x);
  a.grad_qx = mut_ptr_or_null<T>(grad_qx);
  return a;
}

// Labels must index the d_out classes: support and query labels are reduced
// together so that the GPU is synchronised once.
inline void check_labels(const MlpAdaptConfig& c, const at::Tensor& y, const at::Tensor& qy) {
  if (c.loss != Loss::CrossEntropy) return;
  const at::Tensor all = c.queries ? at::cat({y.reshape(-1), qy.reshape(-1)}) : y.reshape(-1);
  const auto [lo, hi] = at::aminmax(all);
  const at::Tensor bounds = at::stack({lo, hi}).cpu();
  check_label_range(bounds[0].item<int64_t>(), bounds[1].item<int64_t>(), c.layout.sizes[c.layout.num_layers]);
}

inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

// Everything a forward launch needs: validated config, inputs, outputs.
struct MlpAdaptForwardCall {
  MlpAdaptConfig c;
  MlpAdaptTensors in;
  at::Tensor adapted, losses, query_output, query_losses, trajectory, workspace;
};

inline MlpAdaptForwardCall prepare_forward(const at::Tensor& params, const std::optional<at::Tensor>& lrs,
                                           const at::Tensor& support_x, const at::Tensor& support_y,
                                           const std::optional<at::Tensor>& query_x,
                                           const std::optional<at::Tensor>& query_y, c10::IntArrayRef sizes,
                                           int64_t steps, c10::string_view activation, c10::string_view loss) {
  MlpAdaptForwardCall f;
  f.c = check_mlp_adapt_inputs(params, lrs, support_x, support_y, sizes, steps, std::string(activation),
                               std::string(loss));
  check_query_inputs(f.c, params, query_x, query_y, sizes);
  f.in = {params.contiguous(), contiguous_or_undefined(lrs), support_x.contiguous(), support_y.contiguous(),
          contiguous_or_undefined(query_x), contiguous_or_undefined(query_y)};
  check_labels(f.c, f.in.y, f.in.qy);
  const auto opt = params.options();
  const int64_t T = f.c.tasks, P = f.c.layout.num_params, Q = f.c.queries;
  f.adapted = at::empty({T, P}, opt);
  f.losses = at::empty({T, f.c.steps}, opt);
  f.query_output = at::empty(Q ? c10::IntArrayRef({T, Q, int64_t(sizes.back())}) : c10::IntArrayRef({0}), opt);
  f.query_losses = at::empty({Q ? T : 0}, opt);
  f.trajectory = at::empty({T, f.c.steps, P}, opt);
  f.workspace = at::empty({T, f.c.workspace_per_task()}, opt);
  return f;
}

// Everything a backward launch needs.
struct MlpAdaptBackwardCall {
  MlpAdaptConfig c;
  MlpAdaptTensors in;
  MlpAdaptGrads g;
  at::Tensor grad_init, grad_lrs, grad_x, grad_qx, workspace;
};

inline MlpAdaptBackwardCall prepare_backward(
    const at::Tensor& grad_adapted, const at::Tensor& grad_losses, const std::optional<at::Tensor>& grad_query_output,
    const std::optional<at::Tensor>& grad_query_losses, const at::Tensor& adapted, const at::Tensor& trajectory,
    const at::Tensor& params, const std::optional<at::Tensor>& lrs, const at::Tensor& support_x,
    const at::Tensor& support_y, const std::optional<at::Tensor>& query_x, const std::optional<at::Tensor>& query_y,
    c10::IntArrayRef sizes, c10::string_view activation, c10::string_view loss, bool lrs_grad, bool x_grad,
    bool query_x_grad) {
  MlpAdaptBackwardCall b;
  b.c = check_mlp_adapt_inputs(params, lrs, support_x, support_y, sizes,
                               trajectory.dim() == 3 ? trajectory.size(1) : 0, std::string(activation),
                               std::string(loss));
  check_query_inputs(b.c, params, query_x, query_y, sizes);
  b.g = {grad_adapted.contiguous(), grad_losses.contiguous(), contiguous_or_undefined(grad_query_output),
         contiguous_or_undefined(grad_query_losses), adapted.contiguous(), trajectory.contiguous()};
  check_backward_inputs(b.c, b.g, support_x);
  TORCH_CHECK_VALUE(!lrs_grad || lrs.has_value(), "metafast::mlp_adapt_backward: lrs_grad needs lrs");
  TORCH_CHECK_VALUE(!query_x_grad || b.c.queries > 0, "metafast::mlp_adapt_backward: query_x_grad needs a query set");
  b.in = {params.contiguous(), contiguous_or_undefined(lrs), support_x.contiguous(), support_y.contiguous(),
          contiguous_or_undefined(query_x), contiguous_or_undefined(query_y)};
  const auto opt = params.options();
  const int64_t T = b.c.tasks, P = b.c.layout.num_params, d0 = sizes[0];
  b.grad_init = at::empty({T, P}, opt);
  b.grad_lrs = at::empty({lrs_grad ? T : 0, lrs_grad ? P : 0}, opt);
  b.grad_x = at::empty({x_grad ? T : 0, x_grad ? b.c.shots : 0, x_grad ? d0 : 0}, opt);
  b.grad_qx = at::empty({query_x_grad ? T : 0, query_x_grad ? b.c.queries : 0, query_x_grad ? d0 : 0}, opt);
  b.workspace = at::empty({T, b.c.workspace_per_task()}, opt);
  return b;
}

}  // namespace metafast
