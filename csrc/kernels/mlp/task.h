// The MAML inner loop of one task for an MLP (Linear layers, ReLU/tanh
// between them), and its exact reverse (first or second order): the per-task
// algorithm of metafast::mlp_adapt / mlp_adapt_backward. Written once for
// host and device over lanes (kernels/core/lanes.h): the CPU runs it with
// SerialLanes, one task per thread, or in task packs (kernels/mlp/pack.h);
// the GPU with BlockLanes, one thread block per task. The drivers that do so
// (kernels/core/drivers.h, cuda_driver.cuh) find it as run_task(), below.
//
// Parts: the layout of θ and of the workspace (kernels/mlp/layout.h), the
// layers in two decompositions (layers.h), the loss, gradient and
// Hessian-vector product of a task's examples (loss_grad_hvp.h), the problem
// of a call (problem.h), the limits (limits.h).
#pragma once
#include "kernels/mlp/loss_grad_hvp.h"
#include "kernels/mlp/problem.h"

namespace metafast {

// ---------------------------------------------------------------------------
// Forward: θ_0 = init; for s < S: record θ_s, loss_s = L(θ_s),
// θ_{s+1} = θ_s − α_s⊙∇L(θ_s) (α_s: lr, lrs, or step s's row of lrs); then,
// with a query set, the query forward at θ_S, and with query_every_step the
// query loss at every θ_{s+1} (MAML++'s multi-step loss).
// ---------------------------------------------------------------------------
template <typename T>
struct MlpAdaptForwardArgs {
  MlpProblem<T> p;
  const T* init;         // [P]
  T* adapted;            // [T, P]
  T* losses;             // [T, S]
  T* query_output;       // [T, Q, d_L] model output at θ_S, or nullptr
  T* query_losses;       // [T] query loss at θ_S ([T, S]: at θ_1 ... θ_S), or nullptr
  T* trajectory;         // [T, S, P]: θ_0 ... θ_{S-1}
  T* primal = nullptr;   // [T, S, C] each step's support pass (mlp_primal_size), for a backward to replay
};

// The query loss of one task at θ (no gradient); the outputs stay in ws.h.
template <typename T, typename Lanes>
MF_HD T mlp_query_loss(const Lanes& lanes, const MlpProblem<T>& pr, const T* theta, int task, MlpWorkspace<T>& ws) {
  LossGradOptions<T> loss_only;
  loss_only.want_grad = false;
  return mlp_loss_grad_hvp<T>(lanes, pr, theta, pr.task_data(task, true), ws, loss_only);
}

// `workspace`: this task's scratch (mlp_workspace_size elements): a slice of
// p.workspace, or on the GPU the block's shared memory when it fits.
template <typename T, typename Lanes>
MF_HD void mlp_adapt_forward_task(const Lanes& lanes, const MlpAdaptForwardArgs<T>& a, int task, T* workspace) {
  const MlpProblem<T>& pr = a.p;
  const MlpLayout& m = pr.layout;
  const int64_t P = m.num_params;
  const MlpTaskData<T> d = pr.task_data(task, false);
  MlpWorkspace<T> ws(workspace, m, pr.rows());
  // θ_s is the trajectory's row s, θ_S the adapted parameters: each update
  // writes the next row, so no step copies θ.
  T* const trajectory = a.trajectory + int64_t(task) * pr.steps * P;
  T* theta = trajectory;
  T* query_losses = pr.queries > 0 ? a.query_losses + int64_t(task) * pr.query_loss_count() : nullptr;
  for (int64_t p = lanes.lane(); p < P; p += lanes.count()) theta[p] = a.init[p];
  lanes.sync();
  const int64_t C = mlp_primal_size(m, pr.shots);
  for (int s = 0; s < pr.steps; ++s) {
    LossGradOptions<T> o;
    o.record = a.primal ? a.primal + (int64_t(task) * pr.steps + s) * C : nullptr;
    const T loss = mlp_loss_grad_hvp<T>(lanes, pr, theta, d, ws, o);
    if (lanes.leader()) a.losses[int64_t(task) * pr.steps + s] = loss;
    const T* rates = pr.step_lrs(s);
    T* next = s + 1 < pr.steps ? trajectory + int64_t(s + 1) * P : a.adapted + int64_t(task) * P;
    for (int64_t p = lanes.lane(); p < P; p += lanes.count())
      next[p] = sgd_step(theta[p], MlpProblem<T>::rate(rates, pr.lr, p), ws.grad[p]);
    lanes.sync();
    theta = next;
    if (pr.query_every_step && s + 1 < pr.steps) {  // θ_S's below, with the outputs
      const T q = mlp_query_loss<T>(lanes, pr, theta, task, ws);
      if (lanes.leader()) query_losses[s] = q;
    }
  }
  if (pr.queries > 0) {  // the query forward at θ_S, fused in the same launch
    const T loss = mlp_query_loss<T>(lanes, pr, theta, task, ws);
    const int dL = m.sizes[m.num_layers];
    const T* y = ws.h + int64_t(pr.queries) * m.act_offset[m.num_layers];
    T* dst = a.query_output + int64_t(task) * pr.queries * dL;
    for (int64_t i = lanes.lane(); i < int64_t(pr.queries) * dL; i += lanes.count()) dst[i] = y[i];
    if (lanes.leader()) query_losses[pr.query_loss_count() - 1] = loss;
  }
}

// ---------------------------------------------------------------------------
// Backward: v = ∂Q/∂θ_S (plus the query terms); for s = S−1 … 0 (g_s = ∇L(θ_s),
// H_s its Hessian, α_s step s's rates):
//   v += q̄_s·∇Q(θ_{s+1})  [query_every_step, s < S−1: the multi-step loss]
//   ᾱ_s += −g_s ⊙ v;   v ← v − H_s(α_s ⊙ v)  [second order only];   v += l̄_s·g_s
//   x̄ += l̄_s·∂L/∂x − ∂/∂x[(α_s⊙v)ᵀ g_s]  [the second term second order only]
// giving v = ∂/∂θ_0, ᾱ = ∂/∂α and x̄ = ∂/∂x of the task's share of the meta-loss
// (ᾱ summed over the steps unless step_rates).
// ---------------------------------------------------------------------------
template <typename T>
struct MlpAdaptBackwardArgs {
  MlpProblem<T> p;
  bool second_order;
  const T* grad_adapted;       // [T, P], or nullptr: zero (mlp_meta_grad: only the query losses are used)
  const T* grad_losses;        // [T, S], or nullptr: the support losses are unused (no term at all, so
                               // that a NaN support gradient is not turned into NaN by 0·NaN)
  const T* grad_query_output;  // [T, Q, d_L] or nullptr
  const T* grad_query_losses;  // [T] ([T, S] with query_every_step) or nullptr
  const T* adapted;            // [T, P] θ_S (for the query terms)
  const T* trajectory;         // [T, S, P]
  T* grad_init;                // [T, P] per-task ∂/∂θ_0
  T* grad_lrs;                 // [T, P] ([T, S, P] with step_rates) per-task ∂/∂α, or nullptr
  T* grad_x;                   // [T, K, d_0] ∂/∂support_x, or nullptr
  T* grad_qx;                  // [T, Q, d_0] ∂/∂query_x, or nullptr
  const T* primal = nullptr;   // [T, S, C] the forward's record of each step (replayed), or nullptr: recomputed
};

// v += ∂/∂θ of the query terms at θ (scale·query loss, plus the caller's
// gradient of the outputs `extra` when given); qx_bar += their ∂/∂query_x.
template <typename T, typename Lanes>
MF_HD void add_query_terms(const Lanes& lanes, const MlpProblem<T>& pr, const T* theta, int task, bool loss_term,
                           T scale, const T* extra, T* v, T* qx_bar, MlpWorkspace<T>& ws) {
  LossGradOptions<T> o;
  o.input_grad = qx_bar != nullptr;
  o.loss_scale = scale;
  o.extra_dy = extra;
  o.loss_term = loss_term;
  mlp_loss_grad_hvp<T>(lanes, pr, theta, pr.task_data(task, true), ws, o);
  for (int64_t p = lanes.lane(); p < pr.layout.num_params; p += lanes.count()) v[p] += ws.grad[p];
  if (qx_bar)
    for (int64_t i = lanes.lane(); i < int64_t(pr.queries) * pr.layout.sizes[0]; i += lanes.count())
      qx_bar[i] += ws.dx[i];
  lanes.sync();
}

template <typename T, typename Lanes>
MF_HD void mlp_adapt_backward_task(const Lanes& lanes, const MlpAdaptBackwardArgs<T>& a, int task, T* workspace) {
  const MlpProblem<T>& pr = a.p;
  const MlpLayout& m = pr.layout;
  const int64_t P = m.num_params;
  const MlpTaskData<T> d = pr.task_data(task, false);
  MlpWorkspace<T> ws(workspace, m, pr.rows());
  T* v = a.grad_init + int64_t(task) * P;
  T* lr_bar = a.grad_lrs ? a.grad_lrs + int64_t(task) * pr.rate_count() : nullptr;
  const int64_t nx = int64_t(pr.shots) * m.sizes[0], nq = int64_t(pr.queries) * m.sizes[0];
  T* x_bar = a.grad_x ? a.grad_x + int64_t(task) * nx : nullptr;
  T* qx_bar = a.grad_qx ? a.grad_qx + int64_t(task) * nq : nullptr;
  // q̄: this task's upstream gradients of its query losses (the last is θ_S's).
  const T* q_bar = a.grad_query_losses ? a.grad_query_losses + int64_t(task) * pr.query_loss_count() : nullptr;
  for (int64_t p = lanes.lane(); p < P; p += lanes.count())
    v[p] = a.grad_adapted ? a.grad_adapted[int64_t(task) * P + p] : T(0);
  if (lr_bar)
    for (int64_t i = lanes.lane(); i < pr.rate_count(); i += lanes.count()) lr_bar[i] = T(0);
  if (x_bar)
    for (int64_t i = lanes.lane(); i < nx; i += lanes.count()) x_bar[i] = T(0);
  if (qx_bar)
    for (int64_t i = lanes.lane(); i < nq; i += lanes.count()) qx_bar[i] = T(0);
  lanes.sync();
  // v += ∂/∂θ_S of the query terms (loss and outputs); an absent upstream
  // gradient contributes nothing (not 0·NaN).
  const T* extra = a.grad_query_output ? a.grad_query_output + int64_t(task) * pr.queries * m.sizes[m.num_layers]
                                       : nullptr;
  if (pr.queries > 0 && (q_bar || extra))
    add_query_terms<T>(lanes, pr, a.adapted + int64_t(task) * P, task, q_bar != nullptr,
                       q_bar ? q_bar[pr.query_loss_count() - 1] : T(0), extra, v, qx_bar, ws);
  const int64_t C = mlp_primal_size(m, pr.shots);
  const bool has_loss_bar = a.grad_losses != nullptr;
  for (int s = pr.steps - 1; s >= 0; --s) {
    if (pr.query_every_step && q_bar && s + 1 < pr.steps)  // the query loss at θ_{s+1}
      add_query_terms<T>(lanes, pr, a.trajectory + (int64_t(task) * pr.steps + s + 1) * P, task, true, q_bar[s],
                         static_cast<const T*>(nullptr), v, qx_bar, ws);
    T* step_lr_bar = lr_bar && pr.step_rates ? lr_bar + int64_t(s) * P : lr_bar;
    // g_s is used only by the rates' and the support loss's terms; first order
    // without them, v passes through the step unchanged.
    const bool want_grad = step_lr_bar || has_loss_bar;
    if (!a.second_order && !want_grad) continue;
    const T* theta = a.trajectory + (int64_t(task) * pr.steps + s) * P;
    const T* rates = pr.step_lrs(s);
    if (a.second_order) {
      for (int64_t p = lanes.lane(); p < P; p += lanes.count()) ws.dir[p] = MlpProblem<T>::rate(rates, pr.lr, p) * v[p];
      lanes.sync();
    }
    LossGradOptions<T> o;
    o.dir = a.second_order ? ws.dir : nullptr;
    o.input_grad = x_bar != nullptr;
    o.replay = a.primal ? a.primal + (int64_t(task) * pr.steps + s) * C : nullptr;
    o.primal_grad = want_grad;
    mlp_loss_grad_hvp<T>(lanes, pr, theta, d, ws, o);
    const T loss_bar = has_loss_bar ? a.grad_losses[int64_t(task) * pr.steps + s] : T(0);
    if (x_bar)
      for (int64_t i = lanes.lane(); i < nx; i += lanes.count()) {
        const T dx_dot = a.second_order ? ws.dx_dot[i] : T(0);
        x_bar[i] += has_loss_bar ? loss_bar * ws.dx[i] - dx_dot : -dx_dot;
      }
    for (int64_t p = lanes.lane(); p < P; p += lanes.count()) {
      const T g = want_grad ? ws.grad[p] : T(0);
      if (step_lr_bar) step_lr_bar[p] -= g * v[p];
      T vp = v[p];
      if (a.second_order) vp -= ws.hvp[p];
      v[p] = has_loss_bar ? vp + loss_bar * g : vp;
    }
    lanes.sync();
  }
}

// ---------------------------------------------------------------------------
// One meta-iteration (metafast::mlp_meta_grad): the forward, then the backward
// from its outputs, per task in one launch. `backward` reads `forward`'s
// adapted and trajectory (global [T, P], [T, S, P]; a task pack keeps its own
// in pack layout instead, kernels/mlp/pack.h); `p` is both's problem, for the
// drivers.
// ---------------------------------------------------------------------------
template <typename T>
struct MlpMetaGradArgs {
  MlpProblem<T> p;
  MlpAdaptForwardArgs<T> forward;
  MlpAdaptBackwardArgs<T> backward;
};

// The per-task algorithms by argument type, for the drivers.
template <typename T, typename Lanes>
MF_HD void run_task(const Lanes& lanes, const MlpAdaptForwardArgs<T>& a, int task, T* workspace) {
  mlp_adapt_forward_task<T>(lanes, a, task, workspace);
}
template <typename T, typename Lanes>
MF_HD void run_task(const Lanes& lanes, const MlpAdaptBackwardArgs<T>& a, int task, T* workspace) {
  mlp_adapt_backward_task<T>(lanes, a, task, workspace);
}
template <typename T, typename Lanes>
MF_HD void run_task(const Lanes& lanes, const MlpMetaGradArgs<T>& a, int task, T* workspace) {
  mlp_adapt_forward_task<T>(lanes, a.forward, task, workspace);
  lanes.sync();  // the backward reads what every lane of the forward wrote
  mlp_adapt_backward_task<T>(lanes, a.backward, task, workspace);
}

}  // namespace metafast
