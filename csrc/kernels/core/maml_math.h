// The math every metafast kernel shares, written once for host and device:
// activations and their first/second derivatives, per-example loss gradients
// and their directional derivatives (Hessian-vector pieces), the update rule.
#pragma once
#include "kernels/core/portability.h"

namespace metafast {

enum class Activation : int { ReLU = 0, Tanh = 1 };
enum class Loss : int { MSE = 0, CrossEntropy = 1 };

// --- update rule -----------------------------------------------------------
// θ' = θ − α·g. `opmath` is float for half/bfloat16 storage.
template <typename T>
MF_HD T sgd_step(T theta, T lr, T grad) { return theta - lr * grad; }

// acc + Σ_i a_i·b_i (a vectorized reduction on the host: SIMD partial sums).
template <typename T>
MF_HD T dot_add(T acc, const T* a, const T* b, int n) {
  MF_SIMD_SUM(acc)
  for (int i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// --- activations -----------------------------------------------------------
// NaN propagates exactly as in PyTorch (float64 eager), so that a NaN weight
// or input is never turned into a finite loss:
//   relu(z) = z < 0 ? 0 : z            (torch.relu: NaN -> NaN, -0.0 -> -0.0)
//   relu backward = h <= 0 ? 0 : g     (threshold_backward(g, result, 0): a
//                                       select, so NaN h passes g through and a
//                                       NaN g at an inactive unit gives 0)
//   tanh backward = g·(1 − h²)         (tanh_backward: NaN in h or g -> NaN)
template <typename T>
MF_HD T activate(Activation a, T z) {
  return a == Activation::ReLU ? mf_select(z < T(0), T(0), z) : mf_tanh(z);
}
// g·σ'(z), written in terms of h = σ(z) as PyTorch's relu/tanh backward are.
template <typename T>
MF_HD T activation_backward(Activation a, T h, T g) {
  return a == Activation::ReLU ? mf_select(h <= T(0), T(0), g) : g * (T(1) - h * h);
}
// Directional derivative of activation_backward(h(z), g) along (ż, ġ):
// σ'(z)·ġ + σ''(z)·ż·g. For ReLU σ'' is zero and, as in PyTorch's double
// backward of threshold_backward (zeros for the `self` input), no ż·g term
// is formed at all; tanh: σ'' = −2h(1 − h²).
template <typename T>
MF_HD T activation_backward_tangent(Activation a, T h, T z_dot, T g, T g_dot) {
  if (a == Activation::ReLU) return mf_select(h <= T(0), T(0), g_dot);
  const T d1 = T(1) - h * h;
  return d1 * g_dot + T(-2) * h * d1 * z_dot * g;
}

// --- losses (one example; `scale` = 1/(number of averaged terms)) -----------
// Mean squared error over the example's outputs: returns Σ_c (y_c − t_c)²·scale
// and writes dL/dy_c = 2(y_c − t_c)·scale. (NaN in y or t propagates.)
template <typename T>
MF_HD T mse_loss_grad(const T* y, const T* target, int n, T scale, T* dy) {
  T sum = T(0);
  for (int c = 0; c < n; ++c) {
    const T diff = y[c] - target[c];
    sum += diff * diff;
    dy[c] = T(2) * diff * scale;
  }
  return sum * scale;
}
// Directional derivative of the MSE gradient along ẏ: d(dL/dy) = 2·ẏ·scale
// (independent of the target, as in PyTorch's double backward).
template <typename T>
MF_HD void mse_grad_tangent(const T* y_dot, int n, T scale, T* dy_dot) {
  for (int c = 0; c < n; ++c) dy_dot[c] = T(2) * y_dot[c] * scale;
}

// A class label the n logits can be indexed with. The host checks labels
// where that costs no device sync; the kernels never index with a bad one:
// its example gets a NaN loss and NaN gradients instead. (Logits are selected
// with label_is, never indexed, so a pack of tasks with different labels
// runs the same code.)
MF_HD bool valid_label(int64_t label, int n) { return label >= 0 && label < int64_t(n); }

// logsumexp(y), NaN if any y_c is NaN (a plain `y > m ? y : m` max would skip
// a NaN that is not first, giving a finite loss).
template <typename T>
MF_HD T log_sum_exp(const T* y, int n) {
  T m = y[0];
  for (int c = 1; c < n; ++c) m = mf_select(mf_or(y[c] > m, mf_isnan(y[c])), y[c], m);
  T z = T(0);
  for (int c = 0; c < n; ++c) z += mf_exp(y[c] - m);
  return m + mf_log(z);
}

// Softmax cross-entropy: returns (logsumexp(y) − y_label)·scale and writes
// dL/dy = (softmax(y) − onehot(label))·scale; NaN for a label outside [0, n).
template <typename T, typename Label>
MF_HD T cross_entropy_loss_grad(const T* y, Label label, int n, T scale, T* dy) {
  const auto valid = valid_label(label, n);
  if (!mf_any(valid)) {
    for (int c = 0; c < n; ++c) dy[c] = mf_nan<T>();
    return mf_nan<T>();
  }
  const T lse = log_sum_exp(y, n);
  T y_label = T(0);
  for (int c = 0; c < n; ++c) {
    const auto is = label_is(label, c);
    dy[c] = mf_select(valid, (mf_exp(y[c] - lse) - mf_select(is, T(1), T(0))) * scale, mf_nan<T>());
    y_label = mf_select(is, y[c], y_label);
  }
  return mf_select(valid, (lse - y_label) * scale, mf_nan<T>());
}
// Directional derivative of the cross-entropy gradient along ẏ:
// (diag(p) − p pᵀ)·ẏ·scale with p = softmax(y); NaN for a label outside [0, n).
template <typename T, typename Label>
MF_HD void cross_entropy_grad_tangent(const T* y, const T* y_dot, Label label, int n, T scale, T* dy_dot) {
  const auto valid = valid_label(label, n);
  if (!mf_any(valid)) {
    for (int c = 0; c < n; ++c) dy_dot[c] = mf_nan<T>();
    return;
  }
  const T lse = log_sum_exp(y, n);
  T p_dot_ydot = T(0);
  for (int c = 0; c < n; ++c) p_dot_ydot += mf_exp(y[c] - lse) * y_dot[c];
  for (int c = 0; c < n; ++c)
    dy_dot[c] = mf_select(valid, mf_exp(y[c] - lse) * (y_dot[c] - p_dot_ydot) * scale, mf_nan<T>());
}

}  // namespace metafast
