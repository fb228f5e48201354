// metafast::mlp_adapt / mlp_adapt_backward on the host, shared by the CPU and
// CUDA kernels (ops/mlp_adapt/cpu.cpp, cuda.cpp), flash-attention style: the
// entry point turns the schema's arguments into one params struct
// (MlpAdaptParams, MlpAdaptBackwardParams), once; from it the checks validate
// shapes, dtypes and devices and the call (MlpAdaptForward, MlpAdaptBackward)
// makes the inputs contiguous, allocates the outputs and fills the kernel's
// argument struct; one op body (run_mlp_adapt) does device check, guard and
// dtype dispatch for both ops on every device. These checks are the truth for
// the ops; the fake kernels (metafast/ops/mlp_adapt.py) mirror them.
#pragma once
#include <torch/csrc/stable/ops.h>

#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/device.h"
#include "common/dispatch.h"
#include "kernels/mlp/task.h"

namespace metafast {

using OptTensor = std::optional<Tensor>;

// The arguments of metafast::mlp_adapt, as its schema (library.cpp) names them.
struct MlpAdaptParams {
  Tensor params;
  OptTensor lrs;
  double lr;
  Tensor support_x, support_y;
  OptTensor query_x, query_y;
  std::vector<int64_t> sizes;
  int64_t steps;
  std::string activation, loss;
  bool first_order;
  OptTensor support_weights;
  bool query_every_step;  // MAML++'s multi-step loss: query_losses [T, S]
  // The tensor whose device and dtype pick the kernel.
  const Tensor& key() const { return params; }
};

// The arguments of metafast::mlp_adapt_backward: the upstream gradients, the
// forward's saved outputs, the forward's own arguments (steps: the
// trajectory's) and which gradients to compute.
struct MlpAdaptBackwardParams {
  Tensor grad_adapted;
  OptTensor grad_losses, grad_query_output, grad_query_losses;  // absent: no such term
  Tensor adapted, trajectory;
  MlpAdaptParams forward;
  bool lrs_grad, x_grad, query_x_grad;
  const Tensor& key() const { return forward.params; }
};

// The inputs of one call, made contiguous.
struct MlpAdaptInputs {
  Tensor init, x, y;
  OptTensor lrs, qx, qy, weights;
  double lr;
};

// Upstream gradients and saved outputs of a backward call (contiguous).
struct MlpAdaptGrads {
  Tensor grad_adapted, adapted, trajectory;
  OptTensor grad_losses, grad_query_output, grad_query_losses;  // absent: no such term
};

inline Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::ReLU;
  if (name == "tanh") return Activation::Tanh;
  throw_value_error("metafast::mlp_adapt: unsupported activation '", name, "' (supported: 'relu', 'tanh')");
}

inline Loss parse_loss(const std::string& name) {
  if (name == "mse") return Loss::MSE;
  if (name == "cross_entropy") return Loss::CrossEntropy;
  throw_value_error("metafast::mlp_adapt: unsupported loss '", name, "' (supported: 'mse', 'cross_entropy')");
}

inline MlpLayout make_mlp_layout(const std::vector<int64_t>& sizes) {
  MF_CHECK(sizes.size() >= 2 && sizes.size() <= size_t(kMaxLayers) + 1, "metafast::mlp_adapt: sizes must list 2 to ",
           kMaxLayers + 1, " layer widths [d_in, ..., d_out], got ", sizes.size());
  for (size_t l = 0; l < sizes.size(); ++l) {
    MF_CHECK(sizes[l] > 0 && sizes[l] <= kMaxWidth, "metafast::mlp_adapt: layer width ", l, " must be in [1, ",
             kMaxWidth, "], got ", sizes[l]);
    // The kernels index one layer's weights with 32-bit ints.
    MF_CHECK(l == 0 || sizes[l] * sizes[l - 1] < kIndexLimit, "metafast::mlp_adapt: layer ", l,
             " has too many weights (", sizes[l] * sizes[l - 1], ") for the fused kernel");
  }
  return mlp_layout(sizes.data(), int(sizes.size()));
}

inline void check_same(const Tensor& t, const Tensor& ref, const char* name) {
  MF_CHECK(same_device(t, ref), "metafast::mlp_adapt: ", name, " is on ", t.device(), " but params is on ",
           ref.device());
  MF_CHECK(t.scalar_type() == ref.scalar_type(), "metafast::mlp_adapt: ", name, " has dtype ", t.scalar_type(),
           " but params has ", ref.scalar_type());
}

inline void check_targets(const MlpShape& c, const Tensor& params, const Tensor& y, int64_t rows,
                          const char* name) {
  MF_CHECK(same_device(y, params), "metafast::mlp_adapt: ", name, " is on ", y.device(), " but params is on ",
           params.device());
  if (c.loss == Loss::MSE) {
    MF_CHECK(y.scalar_type() == params.scalar_type(), "metafast::mlp_adapt: MSE ", name, " must have dtype ",
             params.scalar_type(), ", got ", y.scalar_type());
    MF_CHECK(has_sizes(y, {c.tasks, rows, c.classes()}), "metafast::mlp_adapt: MSE ", name, " must be [", c.tasks,
             ", ", rows, ", ", c.classes(), "], got ", y.sizes());
  } else {
    MF_CHECK(y.scalar_type() == ScalarType::Long, "metafast::mlp_adapt: cross-entropy ", name,
             " must hold int64 class indices, got ", y.scalar_type());
    MF_CHECK(has_sizes(y, {c.tasks, rows}), "metafast::mlp_adapt: cross-entropy ", name, " must be [", c.tasks, ", ",
             rows, "], got ", y.sizes());
  }
}

inline int64_t widest(const std::vector<int64_t>& sizes) {
  int64_t w = 0;
  for (const auto s : sizes) w = std::max(w, s);
  return w;
}

// Validates every input; returns the layout and problem sizes.
inline MlpShape check_mlp_adapt_inputs(const MlpAdaptParams& p) {
  const Tensor &params = p.params, &x = p.support_x, &y = p.support_y;
  const OptTensor& lrs = p.lrs;
  const double lr = p.lr;
  const std::vector<int64_t>& sizes = p.sizes;
  const int64_t steps = p.steps;
  const std::string &activation = p.activation, &loss = p.loss;
  MlpShape c;
  c.layout = make_mlp_layout(sizes);
  c.act = parse_activation(activation);
  c.loss = parse_loss(loss);
  MF_CHECK(params.scalar_type() == ScalarType::Float || params.scalar_type() == ScalarType::Double,
           "metafast::mlp_adapt: params must be float32 or float64, got ", params.scalar_type());
  MF_CHECK(params.dim() == 1 && params.numel() == c.layout.num_params,
           "metafast::mlp_adapt: params must be the flat vector [W1, b1, ...] of ", c.layout.num_params,
           " elements for sizes ", IntArrayRef(sizes), ", got shape ", params.sizes());
  MF_CHECK(steps >= 1 && steps <= kMaxSteps, "metafast::mlp_adapt: steps must be in [1, ", kMaxSteps, "], got ",
           steps);
  if (lrs.has_value()) {
    check_same(*lrs, params, "lrs");
    c.step_rates = lrs->dim() == 2;
    MF_CHECK(same_sizes(lrs->sizes(), params.sizes()) || has_sizes(*lrs, {steps, c.layout.num_params}),
             "metafast::mlp_adapt: lrs must have the shape of params ", params.sizes(), " or be one row per step [",
             steps, ", ", c.layout.num_params, "], got ", lrs->sizes());
  } else {
    MF_CHECK(std::isfinite(lr), "metafast::mlp_adapt: lr must be finite, got ", lr);
  }
  check_same(x, params, "support_x");
  MF_CHECK(x.dim() == 3 && x.size(2) == sizes[0], "metafast::mlp_adapt: support_x must be [tasks, shots, ", sizes[0],
           "], got ", x.sizes());
  MF_CHECK(x.size(0) > 0 && x.size(1) > 0, "metafast::mlp_adapt: support_x has an empty task or support set: ",
           x.sizes());
  MF_CHECK(x.size(1) * widest(sizes) < kIndexLimit && x.size(0) < kIndexLimit,
           "metafast::mlp_adapt: too many examples per task (", x.size(1), ") for layers ", widest(sizes),
           " wide in the fused kernel");
  c.tasks = int(x.size(0));
  c.shots = int(x.size(1));
  c.steps = int(steps);
  check_targets(c, params, y, c.shots, "support_y");
  return c;
}

// Adds the optional query set (both tensors or neither) to the checks.
inline void check_query_inputs(MlpShape& c, const MlpAdaptParams& p) {
  const Tensor& params = p.params;
  const OptTensor &qx = p.query_x, &qy = p.query_y;
  const std::vector<int64_t>& sizes = p.sizes;
  MF_CHECK(qx.has_value() == qy.has_value(), "metafast::mlp_adapt: give both query_x and query_y, or neither");
  MF_CHECK(qx.has_value() || !p.query_every_step, "metafast::mlp_adapt: query_every_step needs a query set");
  c.query_every_step = p.query_every_step;
  if (!qx.has_value()) return;
  check_same(*qx, params, "query_x");
  MF_CHECK(qx->dim() == 3 && qx->size(0) == c.tasks && qx->size(2) == sizes[0], "metafast::mlp_adapt: query_x must be [",
           c.tasks, ", queries, ", sizes[0], "], got ", qx->sizes());
  MF_CHECK(qx->size(1) > 0, "metafast::mlp_adapt: query_x has an empty query set");
  MF_CHECK(qx->size(1) * widest(sizes) < kIndexLimit, "metafast::mlp_adapt: too many query examples per task");
  c.queries = int(qx->size(1));
  check_targets(c, params, *qy, c.queries, "query_y");
}

// Per-example support loss weights: [T, K], params' dtype and device.
inline void check_support_weights(const MlpShape& c, const MlpAdaptParams& p) {
  const Tensor& params = p.params;
  const OptTensor& w = p.support_weights;
  if (!w) return;
  check_same(*w, params, "support_weights");
  MF_CHECK(has_sizes(*w, {c.tasks, c.shots}), "metafast::mlp_adapt: support_weights must be [", c.tasks, ", ",
           c.shots, "] (one weight per support example), got ", w->sizes());
}

inline void check_backward_inputs(const MlpShape& c, const MlpAdaptGrads& g, const Tensor& params) {
  const int64_t P = c.layout.num_params;
  MF_CHECK(has_sizes(g.grad_adapted, {c.tasks, P}), "metafast::mlp_adapt_backward: grad_adapted must be [", c.tasks,
           ", ", P, "], got ", g.grad_adapted.sizes());
  if (g.grad_losses)
    MF_CHECK(has_sizes(*g.grad_losses, {c.tasks, c.steps}), "metafast::mlp_adapt_backward: grad_losses must be [",
             c.tasks, ", ", c.steps, "], got ", g.grad_losses->sizes());
  MF_CHECK(has_sizes(g.trajectory, {c.tasks, c.steps, P}), "metafast::mlp_adapt_backward: trajectory must be [",
           c.tasks, ", ", c.steps, ", ", P, "], got ", g.trajectory.sizes());
  MF_CHECK(c.queries == 0 || has_sizes(g.adapted, {c.tasks, P}),
           "metafast::mlp_adapt_backward: the query terms need adapted [", c.tasks, ", ", P, "], got ",
           g.adapted.sizes());
  if (g.grad_query_output)
    MF_CHECK(c.queries > 0 && has_sizes(*g.grad_query_output, {c.tasks, c.queries, c.classes()}),
             "metafast::mlp_adapt_backward: grad_query_output must be [", c.tasks, ", ", c.queries, ", ", c.classes(),
             "] with a query set, got ", g.grad_query_output->sizes());
  if (g.grad_query_losses)
    MF_CHECK(c.queries > 0 && (c.query_every_step ? has_sizes(*g.grad_query_losses, {c.tasks, c.steps})
                                                  : has_sizes(*g.grad_query_losses, {c.tasks})),
             "metafast::mlp_adapt_backward: grad_query_losses must be the query losses' shape [", c.tasks,
             c.query_every_step ? ", " + std::to_string(c.steps) : std::string(), "] with a query set, got ", g.grad_query_losses->sizes());
  for (const Tensor* t : {&g.grad_adapted, &g.trajectory, &g.adapted, g.grad_losses ? &*g.grad_losses : nullptr,
                          g.grad_query_output ? &*g.grad_query_output : nullptr,
                          g.grad_query_losses ? &*g.grad_query_losses : nullptr})
    MF_CHECK(!t || (t->scalar_type() == params.scalar_type() && same_device(*t, params)),
             "metafast::mlp_adapt_backward: gradients and saved outputs must have params' dtype and device");
}

// Labels must index the d_out classes. Read on the host, so only the CPU
// kernels call this: on a GPU it would synchronise every call and forbid
// CUDA-graph capture, and the kernel turns a bad label into NaN instead of
// reading out of bounds (BatchedMAML checks labels in Python when it may).
inline void check_labels_on_host(const MlpShape& c, const Tensor& y, const OptTensor& qy) {
  if (c.loss != Loss::CrossEntropy) return;
  for (const Tensor* t : {&y, qy ? &*qy : nullptr}) {
    if (!t) continue;
    const int64_t* v = t->const_data_ptr<int64_t>();
    for (int64_t i = 0; i < t->numel(); ++i)
      MF_CHECK(v[i] >= 0 && v[i] < c.classes(), "metafast::mlp_adapt: class labels must be in [0, ", c.classes(),
               "), got ", v[i]);
  }
}

template <typename T>
const T* ptr_or_null(const OptTensor& t) { return t ? t->const_data_ptr<T>() : nullptr; }
template <typename T>
T* mut_ptr_or_null(Tensor& t) { return t.numel() > 0 ? t.mutable_data_ptr<T>() : nullptr; }

// One set of examples (support or query) of a call: x [T, n, d_0], y (MSE:
// [T, n, d_L] of T; cross-entropy: [T, n] int64), weights [T, n] or none.
template <typename T>
MlpExamples<T> examples(Loss loss, const Tensor& x, const Tensor& y, const OptTensor& weights) {
  const bool mse = loss == Loss::MSE;
  MlpExamples<T> e;
  e.x = x.const_data_ptr<T>();
  e.y_float = mse ? y.const_data_ptr<T>() : nullptr;
  e.y_class = mse ? nullptr : y.const_data_ptr<int64_t>();
  e.weights = ptr_or_null<T>(weights);
  return e;
}

template <typename T>
MlpProblem<T> problem(const MlpShape& c, const MlpAdaptInputs& in, Tensor& workspace) {
  const MlpExamples<T> support = examples<T>(c.loss, in.x, in.y, in.weights);
  const MlpExamples<T> query = c.queries ? examples<T>(c.loss, *in.qx, *in.qy, std::nullopt) : MlpExamples<T>{};
  // workspace: nullptr where the GPU's shared memory serves
  return mlp_problem<T>(c, T(in.lr), ptr_or_null<T>(in.lrs), support, query, mut_ptr_or_null<T>(workspace));
}

inline OptTensor contiguous_or_none(const OptTensor& t) {
  return t ? OptTensor(torch::stable::contiguous(*t)) : std::nullopt;
}

// The validated shape and the contiguous inputs of either call.
inline MlpShape check_inputs(const MlpAdaptParams& p) {
  MlpShape c = check_mlp_adapt_inputs(p);
  check_query_inputs(c, p);
  check_support_weights(c, p);
  return c;
}
inline MlpAdaptInputs contiguous_inputs(const MlpAdaptParams& p) {
  return {torch::stable::contiguous(p.params),    torch::stable::contiguous(p.support_x),
          torch::stable::contiguous(p.support_y), contiguous_or_none(p.lrs),
          contiguous_or_none(p.query_x),          contiguous_or_none(p.query_y),
          contiguous_or_none(p.support_weights),  p.lr};
}

// The per-task workspace [T, W] in global memory, or an empty tensor when not needed.
inline Tensor task_workspace(const MlpShape& c, const Tensor& like, bool needed) {
  return torch::stable::new_empty(like, {needed ? int64_t(c.tasks) : 0, needed ? c.workspace_per_task() : 0});
}

// The types a call names for run_mlp_adapt: the op's params struct, its
// outputs and the kernel's argument struct.
template <typename ParamsT, typename OutputsT, template <typename> class ArgsT>
struct CallTypes {
  using Params = ParamsT;
  using Outputs = OutputsT;
  template <typename T>
  using Args = ArgsT<T>;
};
using FiveTensors = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// A forward call: validated shape, inputs and outputs, and the kernel's
// arguments from them. The per-task workspace is allocated by the device's
// backend (the GPU may not need it).
struct MlpAdaptForward : CallTypes<MlpAdaptParams, FiveTensors, MlpAdaptForwardArgs> {
  static constexpr const char* kOp = "metafast::mlp_adapt";

  MlpShape c;
  MlpAdaptInputs in;
  Tensor adapted, losses, query_output, query_losses, trajectory;

  explicit MlpAdaptForward(const MlpAdaptParams& p) : c(check_inputs(p)), in(contiguous_inputs(p)) {
    const Tensor& params = p.params;
    const int64_t T = c.tasks, P = c.layout.num_params, Q = c.queries;
    adapted = torch::stable::new_empty(params, {T, P});
    losses = torch::stable::new_empty(params, {T, c.steps});
    query_output = Q ? torch::stable::new_empty(params, {T, Q, p.sizes.back()}) : torch::stable::new_empty(params, {0});
    query_losses = c.query_every_step ? torch::stable::new_empty(params, {T, c.steps})
                                      : torch::stable::new_empty(params, {Q ? T : 0});
    trajectory = torch::stable::new_empty(params, {T, c.steps, P});
  }

  template <typename T>
  Args<T> args(Tensor& workspace) {
    Args<T> a;
    a.p = problem<T>(c, in, workspace);
    a.init = in.init.const_data_ptr<T>();
    a.adapted = adapted.mutable_data_ptr<T>();
    a.losses = losses.mutable_data_ptr<T>();
    a.query_output = c.queries ? query_output.mutable_data_ptr<T>() : nullptr;
    a.query_losses = c.queries ? query_losses.mutable_data_ptr<T>() : nullptr;
    a.trajectory = trajectory.mutable_data_ptr<T>();
    return a;
  }
  Outputs outputs() const { return {adapted, losses, query_output, query_losses, trajectory}; }
};

// A backward call, likewise.
struct MlpAdaptBackward : CallTypes<MlpAdaptBackwardParams, std::tuple<Tensor, Tensor, Tensor, Tensor>,
                                     MlpAdaptBackwardArgs> {
  static constexpr const char* kOp = "metafast::mlp_adapt_backward";

  MlpShape c;
  MlpAdaptInputs in;
  MlpAdaptGrads g;
  bool second_order;
  Tensor grad_init, grad_lrs, grad_x, grad_qx;

  explicit MlpAdaptBackward(const MlpAdaptBackwardParams& p) : c(check_inputs(p.forward)) {
    const MlpAdaptParams& f = p.forward;
    g = {torch::stable::contiguous(p.grad_adapted), torch::stable::contiguous(p.adapted),
         torch::stable::contiguous(p.trajectory),   contiguous_or_none(p.grad_losses),
         contiguous_or_none(p.grad_query_output),   contiguous_or_none(p.grad_query_losses)};
    check_backward_inputs(c, g, f.params);
    MF_CHECK(!p.lrs_grad || f.lrs.has_value(), "metafast::mlp_adapt_backward: lrs_grad needs lrs");
    MF_CHECK(!p.query_x_grad || c.queries > 0, "metafast::mlp_adapt_backward: query_x_grad needs a query set");
    second_order = !f.first_order;
    in = contiguous_inputs(f);
    const int64_t T = c.tasks, P = c.layout.num_params, d0 = f.sizes[0];
    const bool lg = p.lrs_grad, xg = p.x_grad, qg = p.query_x_grad;
    grad_init = torch::stable::new_empty(f.params, {T, P});
    grad_lrs = c.step_rates && lg ? torch::stable::new_empty(f.params, {T, c.steps, P})
                                  : torch::stable::new_empty(f.params, {lg ? T : 0, lg ? P : 0});
    grad_x = torch::stable::new_empty(f.params, {xg ? T : 0, xg ? c.shots : 0, xg ? d0 : 0});
    grad_qx = torch::stable::new_empty(f.params, {qg ? T : 0, qg ? c.queries : 0, qg ? d0 : 0});
  }

  template <typename T>
  Args<T> args(Tensor& workspace) {
    Args<T> a;
    a.p = problem<T>(c, in, workspace);
    a.second_order = second_order;
    a.grad_adapted = g.grad_adapted.const_data_ptr<T>();
    a.grad_losses = ptr_or_null<T>(g.grad_losses);
    a.grad_query_output = ptr_or_null<T>(g.grad_query_output);
    a.grad_query_losses = ptr_or_null<T>(g.grad_query_losses);
    a.adapted = g.adapted.numel() ? g.adapted.const_data_ptr<T>() : nullptr;
    a.trajectory = g.trajectory.const_data_ptr<T>();
    a.grad_init = grad_init.mutable_data_ptr<T>();
    a.grad_lrs = mut_ptr_or_null<T>(grad_lrs);
    a.grad_x = mut_ptr_or_null<T>(grad_x);
    a.grad_qx = mut_ptr_or_null<T>(grad_qx);
    return a;
  }
  Outputs outputs() const { return {grad_init, grad_lrs, grad_x, grad_qx}; }
};

// The op body of both calls on every device: device check and guard, the
// checks, inputs and outputs (Call's constructor), then Backend::run<T>(call)
// in the params' dtype. Backend (ops/mlp_adapt/cpu.cpp, cuda.cpp): a Device
// (common/device.h) and run<T>, which allocates the workspace it needs and
// runs the kernel on call.args<T>(workspace).
template <typename Backend, typename Call>
typename Call::Outputs run_mlp_adapt(const typename Call::Params& p) {
  check_device<typename Backend::Device>(p.key(), Call::kOp, "params");
  const typename Backend::Device::Guard guard(p.key());
  Call call(p);
  dispatch_float(p.key().scalar_type(), Call::kOp, [&](auto t) { Backend::template run<decltype(t)>(call); });
  return call.outputs();
}

// metafast::mlp_meta_grad: one meta-iteration, the forward and then the
// backward from its outputs with the meta-loss's weights of the query losses as
// the only upstream gradient (what autograd passes after query_losses.mean()),
// per task in one launch (kernels/mlp/task.h: MlpMetaGradArgs): no autograd
// nodes, no second dispatch, and a task pack keeps its trajectory in its
// scratch. The per-task gradients are summed over the tasks here.
struct MlpMetaGradParams {
  MlpAdaptParams forward;
  Tensor grad_query_losses;
  bool lrs_grad;
  const Tensor& key() const { return forward.params; }
};

inline Tensor sum_over_tasks(const Tensor& per_task) {
  const std::vector<int64_t> tasks_dim{0};
  return torch::stable::sum(per_task, torch::headeronly::IntHeaderOnlyArrayRef(tasks_dim));
}

// The checks beyond the forward's (MlpAdaptForward's), on its validated shape.
inline void check_meta_grad_inputs(const MlpShape& c, const MlpMetaGradParams& p) {
  constexpr const char* kOp = "metafast::mlp_meta_grad";
  const Tensor &w = p.grad_query_losses, &params = p.forward.params;
  MF_CHECK(c.query_every_step ? has_sizes(w, {c.tasks, c.steps}) : has_sizes(w, {c.tasks}), kOp,
           ": grad_query_losses must have the query losses' shape [", c.tasks,
           c.query_every_step ? ", " + std::to_string(c.steps) : std::string(), "], got ", w.sizes());
  MF_CHECK(w.scalar_type() == params.scalar_type() && same_device(w, params), kOp,
           ": grad_query_losses must have params' dtype and device");
  MF_CHECK(!p.lrs_grad || p.forward.lrs.has_value(), kOp, ": lrs_grad needs lrs");
}

struct MlpMetaGrad : CallTypes<MlpMetaGradParams, FiveTensors, MlpMetaGradArgs> {
  static constexpr const char* kOp = "metafast::mlp_meta_grad";

  MlpAdaptForward forward;  // the forward call: checks, inputs, outputs (adapted and trajectory: for
                            // the per-task and GPU paths; a task pack keeps its own)
  const MlpShape& c;
  const MlpAdaptInputs& in;
  Tensor grad_query_losses;
  bool second_order, lrs_grad;
  Tensor grad_init, grad_lrs;
  Tensor primal;  // [T, S, C]: the forward's record of each step, replayed by the backward (not by a pack)

  explicit MlpMetaGrad(const MlpMetaGradParams& p)
      : forward(p.forward), c(forward.c), in(forward.in), second_order(!p.forward.first_order), lrs_grad(p.lrs_grad) {
    check_meta_grad_inputs(c, p);
    grad_query_losses = torch::stable::contiguous(p.grad_query_losses);
    const Tensor& params = p.forward.params;
    const int64_t T = c.tasks, P = c.layout.num_params;
    grad_init = torch::stable::new_empty(params, {T, P});
    grad_lrs = !lrs_grad      ? torch::stable::new_empty(params, {0})
               : c.step_rates ? torch::stable::new_empty(params, {T, c.steps, P})
                              : torch::stable::new_empty(params, {T, P});
    primal = torch::stable::new_empty(params, {T, c.steps, mlp_primal_size(c.layout, c.shots)});
  }

  template <typename T>
  Args<T> args(Tensor& workspace) {
    Args<T> a;
    a.forward = forward.args<T>(workspace);
    a.forward.primal = primal.mutable_data_ptr<T>();
    a.p = a.forward.p;
    MlpAdaptBackwardArgs<T>& b = a.backward;
    b.p = a.p;
    b.second_order = second_order;
    b.grad_adapted = nullptr;  // zero: the meta-loss uses the query losses only
    b.grad_losses = nullptr;
    b.grad_query_output = nullptr;
    b.grad_query_losses = grad_query_losses.const_data_ptr<T>();
    b.adapted = a.forward.adapted;
    b.trajectory = a.forward.trajectory;
    b.grad_init = grad_init.mutable_data_ptr<T>();
    b.grad_lrs = mut_ptr_or_null<T>(grad_lrs);
    b.grad_x = nullptr;
    b.grad_qx = nullptr;
    b.primal = a.forward.primal;
    return a;
  }
  Outputs outputs() const {
    Tensor summed_lrs = lrs_grad ? sum_over_tasks(grad_lrs) : grad_lrs;
    return {forward.losses, forward.query_output, forward.query_losses, sum_over_tasks(grad_init), summed_lrs};
  }
};

// The entry points the schemas bind (TORCH_BOX(&mlp_adapt_op<Backend>)): the
// schema's arguments become one params struct here, once.
template <typename Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> mlp_adapt_op(
    Tensor params, OptTensor lrs, double lr, Tensor support_x, Tensor support_y, OptTensor query_x,
    OptTensor query_y, std::vector<int64_t> sizes, int64_t steps, std::string activation, std::string loss,
    bool first_order, OptTensor support_weights, bool query_every_step) {
  const MlpAdaptParams p{std::move(params), std::move(lrs),       lr,    std::move(support_x),
                         std::move(support_y), std::move(query_x), std::move(query_y), std::move(sizes),
                         steps,                std::move(activation), std::move(loss), first_order,
                         std::move(support_weights), query_every_step};
  return run_mlp_adapt<Backend, MlpAdaptForward>(p);
}

template <typename Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor> mlp_adapt_backward_op(
    Tensor grad_adapted, OptTensor grad_losses, OptTensor grad_query_output, OptTensor grad_query_losses,
    Tensor adapted, Tensor trajectory, Tensor params, OptTensor lrs, double lr, Tensor support_x, Tensor support_y,
    OptTensor query_x, OptTensor query_y, std::vector<int64_t> sizes, std::string activation, std::string loss,
    bool first_order, bool lrs_grad, bool x_grad, bool query_x_grad, OptTensor support_weights,
    bool query_every_step) {
  const int64_t steps = trajectory.dim() == 3 ? trajectory.size(1) : 0;  // checked against [1, kMaxSteps]
  const MlpAdaptBackwardParams p{
      std::move(grad_adapted),
      std::move(grad_losses),
      std::move(grad_query_output),
      std::move(grad_query_losses),
      std::move(adapted),
      std::move(trajectory),
      {std::move(params), std::move(lrs), lr, std::move(support_x), std::move(support_y), std::move(query_x),
       std::move(query_y), std::move(sizes), steps, std::move(activation), std::move(loss), first_order,
       std::move(support_weights), query_every_step},
      lrs_grad,
      x_grad,
      query_x_grad};
  return run_mlp_adapt<Backend, MlpAdaptBackward>(p);
}

template <typename Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> mlp_meta_grad_op(
    Tensor params, OptTensor lrs, double lr, Tensor support_x, Tensor support_y, Tensor query_x, Tensor query_y,
    std::vector<int64_t> sizes, int64_t steps, std::string activation, std::string loss, bool first_order,
    Tensor grad_query_losses, bool lrs_grad, OptTensor support_weights, bool query_every_step) {
  const MlpMetaGradParams p{{std::move(params), std::move(lrs), lr, std::move(support_x), std::move(support_y),
                             std::move(query_x), std::move(query_y), std::move(sizes), steps, std::move(activation),
                             std::move(loss), first_order, std::move(support_weights), query_every_step},
                            std::move(grad_query_losses),
                            lrs_grad};
  return run_mlp_adapt<Backend, MlpMetaGrad>(p);
}

}  // namespace metafast
