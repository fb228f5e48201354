// The network pass of the per-task algorithm: the loss of one task's examples
// at θ, its gradient and, when asked, its Hessian-vector product and input
// gradient (forward, loss, backward, each with its tangent), layer by layer
// in the decomposition the lanes take (kernels/mlp/layers.h).
//
// NaN and bad labels: every activation, derivative and loss propagates NaN
// as PyTorch does (see kernels/core/maml_math.h); a class label outside
// [0, d_out) gives that example a NaN loss and NaN gradients and is never
// used as an index.
#pragma once
#include "kernels/mlp/layers.h"

namespace metafast {

// What mlp_loss_grad_hvp computes besides the loss; the defaults: the loss
// and its gradient, nothing else.
template <typename T>
struct LossGradOptions {
  // The direction u = α⊙v [P]: also the Hessian-vector product H·u into ws.hvp
  // (forward-over-reverse through the MLP: a tangent pass alongside the
  // forward pass and alongside the backward).
  const T* dir = nullptr;
  bool input_grad = false;  // also ∂L/∂x into ws.dx (and its tangent into ws.dx_dot)
  bool want_grad = true;    // false: stop after the loss (outputs are in ws.h)
  // The output gradient back-propagated is loss_scale·dL/dy + extra_dy (the
  // latter [K, d_L] for a caller's gradient of the outputs themselves; no
  // tangent); without `loss_term` just extra_dy: an absent loss gradient adds
  // nothing, not 0·dL/dy, which is NaN where the loss is (as in autograd,
  // where an unused output contributes nothing).
  T loss_scale = T(1);
  const T* extra_dy = nullptr;
  bool loss_term = true;
  // The pass's primal values (mlp_primal_size): `record` stores them; `replay`
  // holds them from an earlier pass at the same θ on the same examples, so
  // that the forward and the backward sums are not computed again, only their
  // tangents and, with primal_grad, the gradient.
  T* record = nullptr;
  const T* replay = nullptr;
  bool primal_grad = true;  // false: ws.grad is not wanted (only ws.hvp, ws.dx)
};

// The loss of one task's examples `d` at θ (mean over the examples), its
// gradient into ws.grad and whatever `o` asks for besides. Ends with a sync;
// the returned loss is valid on the leader lane.
template <typename T, typename Lanes>
MF_HD T mlp_loss_grad_hvp(const Lanes& lanes, const MlpNet& net, const T* theta, const MlpTaskData<T>& d,
                          MlpWorkspace<T>& ws_in, const LossGradOptions<T>& o = {}) {
  const MlpLayout& m = net.layout;
  // A recording pass writes its activations h straight into the record; a
  // replaying pass reads them from it and writes none.
  MlpWorkspace<T> ws = ws_in;
  if (o.record) ws.h = o.record;
  if (o.replay) ws.h = const_cast<T*>(o.replay);
  const bool primal = !o.replay;
  const T* dsum_replay = o.replay ? o.replay + int64_t(d.shots) * net.layout.act_width : nullptr;
  T* dsum_record = o.record ? o.record + int64_t(d.shots) * net.layout.act_width : nullptr;
  const Activation act = net.act;
  const Loss loss = net.loss;
  const T* dir = o.dir;
  const bool input_grad = o.input_grad;
  const T loss_scale = o.loss_scale;
  const T* extra_dy = o.extra_dy;
  const bool loss_term = o.loss_term;
  const int K = d.shots;
  const int L = m.num_layers;
  // ---- forward (and tangent forward): z_l = h_{l-1} W_lᵀ + b_l ----
  for (int l = 1; l <= L && (primal || dir); ++l) {
    const T* in = l == 1 ? d.x : ws.h + (int64_t(K) * m.act_offset[l - 1]);
    const T* in_dot = l == 1 ? nullptr : ws.h_dot + (int64_t(K) * m.act_offset[l - 1]);
    if constexpr (Lanes::kSerial) {
      serial_forward_layer(m, act, l, K, theta, in, in_dot, dir, primal, ws);
    } else {
      parallel_forward_layer(lanes, m, act, l, K, theta, in, in_dot, dir, primal, ws);
    }
    lanes.sync();
  }
  // ---- loss and dL/dy per example (mean over the support set) ----
  const int dL = m.sizes[L];
  const int64_t out = (int64_t(K) * m.act_offset[L]);
  for (int64_t k = lanes.lane(); k < K; k += lanes.count()) {
    const T* y = ws.h + out + k * dL;  // the output layer's h is its z
    T* dy = ws.dz + out + k * dL;
    T* dy_dot = ws.dz_dot + out + k * dL;
    const T* y_dot = ws.z_dot + out + k * dL;
    // A weighted example (support_weights): its loss, gradient and tangent scaled by w_k.
    const T weight = d.weights ? d.weights[k] : T(1);
    if (loss == Loss::MSE) {
      const T scale = T(1) / T(int64_t(K) * dL) * weight;
      ws.point_loss[k] = mse_loss_grad(y, d.y_float + k * dL, dL, scale, dy);
      if (dir) mse_grad_tangent(y_dot, dL, scale, dy_dot);
    } else {  // a label outside [0, dL) gives NaN here, and is never used as an index
      const T scale = T(1) / T(K) * weight;
      ws.point_loss[k] = cross_entropy_loss_grad(y, d.y_class[k], dL, scale, dy);
      if (dir) cross_entropy_grad_tangent(y, y_dot, d.y_class[k], dL, scale, dy_dot);
    }
    if (extra_dy || mf_any(loss_scale != T(1)) || !loss_term)
      for (int c = 0; c < dL; ++c)
        dy[c] = (loss_term ? loss_scale * dy[c] : T(0)) + (extra_dy ? extra_dy[k * dL + c] : T(0));
  }
  lanes.sync();
  T total = T(0);
  if (lanes.leader())
    for (int k = 0; k < K; ++k) total += ws.point_loss[k];  // fixed order: deterministic
  if (!o.want_grad) return total;
  // ---- backward (and tangent backward), layer by layer ----
  for (int l = L; l >= 1; --l) {
    const T* W = theta + m.weight_offset[l];
    const T* in = l == 1 ? d.x : ws.h + (int64_t(K) * m.act_offset[l - 1]);
    const T* in_dot = l == 1 ? nullptr : ws.h_dot + (int64_t(K) * m.act_offset[l - 1]);
    const T* dz = ws.dz + (int64_t(K) * m.act_offset[l]);
    const T* dz_dot = ws.dz_dot + (int64_t(K) * m.act_offset[l]);
    const BackwardPrimal<T> bp{o.primal_grad, dsum_replay, dsum_record};
    if constexpr (Lanes::kSerial) {
      serial_backward_layer(m, act, l, K, W, in, in_dot, dz, dz_dot, ws, dir, input_grad, bp);
    } else {
      parallel_backward_layer(lanes, m, act, l, K, W, in, in_dot, dz, dz_dot, ws, dir, input_grad, bp);
    }
    lanes.sync();
  }
  return total;
}

}  // namespace metafast
