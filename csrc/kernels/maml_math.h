// The math every metafast kernel shares, written once for host and device:
// activations and their first/second derivatives, per-example loss gradients
// and their directional derivatives (Hessian-vector pieces), the update rule.
#pragma once
#include "kernels/portability.h"

namespace metafast {

enum class Activation : int { ReLU = 0, Tanh = 1 };
enum class Loss : int { MSE = 0, CrossEntropy = 1 };

// --- update rule -----------------------------------------------------------
// θ' = θ − α·g. `opmath` is float for half/bfloat16 storage.
template <typename T>
MF_HD T sgd_step(T theta, T lr, T grad) { return theta - lr * grad; }

// --- activations -----------------------------------------------------------
template <typename T>
MF_HD T activate(Activation a, T z) {
  return a == Activation::ReLU ? (z > T(0) ? z : T(0)) : mf_tanh(z);
}
// σ'(z) written in terms of h = σ(z), as PyTorch's relu/tanh backward do.
template <typename T>
MF_HD T activation_grad(Activation a, T h) {
  return a == Activation::ReLU ? (h > T(0) ? T(1) : T(0)) : T(1) - h * h;
}
// σ''(z) in terms of h (zero almost everywhere for ReLU).
template <typename T>
MF_HD T activation_grad2(Activation a, T h) {
  return a == Activation::ReLU ? T(0) : T(-2) * h * (T(1) - h * h);
}

// --- losses (one example; `scale` = 1/(number of averaged terms)) -----------
// Mean squared error over the example's outputs: returns Σ_c (y_c − t_c)²·scale
// and writes dL/dy_c = 2(y_c − t_c)·scale.
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
// Directional derivative of the MSE gradient along ẏ: d(dL/dy) = 2·ẏ·scale.
template <typename T>
MF_HD void mse_grad_tangent(const T* y_dot, int n, T scale, T* dy_dot) {
  for (int c = 0; c < n; ++c) dy_dot[c] = T(2) * y_dot[c] * scale;
}

// Softmax cross-entropy: returns (logsumexp(y) − y_label)·scale and writes
// dL/dy = (softmax(y) − onehot(label))·scale.
template <typename T>
MF_HD T cross_entropy_loss_grad(const T* y, int64_t label, int n, T scale, T* dy) {
  T m = y[0];
  for (int c = 1; c < n; ++c) m = y[c] > m ? y[c] : m;
  T z = T(0);
  for (int c = 0; c < n; ++c) z += mf_exp(y[c] - m);
  const T lse = m + mf_log(z);
  for (int c = 0; c < n; ++c)
    dy[c] = (mf_exp(y[c] - lse) - (c == label ? T(1) : T(0))) * scale;
  return (lse - y[label]) * scale;
}
// Directional derivative of the cross-entropy gradient along ẏ:
// (diag(p) − p pᵀ)·ẏ·scale with p = softmax(y).
template <typename T>
MF_HD void cross_entropy_grad_tangent(const T* y, const T* y_dot, int n, T scale, T* dy_dot) {
  T m = y[0];
  for (int c = 1; c < n; ++c) m = y[c] > m ? y[c] : m;
  T z = T(0);
  for (int c = 0; c < n; ++c) z += mf_exp(y[c] - m);
  const T lse = m + mf_log(z);
  T p_dot_ydot = T(0);
  for (int c = 0; c < n; ++c) p_dot_ydot += mf_exp(y[c] - lse) * y_dot[c];
  for (int c = 0; c < n; ++c) dy_dot[c] = mf_exp(y[c] - lse) * (y_dot[c] - p_dot_ydot) * scale;
}

}  // namespace metafast
