// The layout of an MLP for the fused kernels: θ = [W1, b1, W2, b2, ...] with
// W_l row-major [d_l, d_{l-1}] (nn.Linear layout), the activations of K
// examples per layer as [K, d_l] matrices, and the per-task workspace that
// holds them (MlpWorkspace). Host and device.
#pragma once
#include "kernels/core/maml_math.h"
#include "kernels/mlp/limits.h"

namespace metafast {

struct MlpLayout {
  int num_layers = 0;                   // L (Linear layers)
  int sizes[kMaxLayers + 1] = {};       // d_0 ... d_L
  int64_t weight_offset[kMaxLayers + 1] = {};  // into θ, index l = 1..L
  int64_t bias_offset[kMaxLayers + 1] = {};
  int64_t act_offset[kMaxLayers + 1] = {};     // layer l starts at K·act_offset[l] of a [K·D] buffer
  int64_t num_params = 0;               // P
  int64_t act_width = 0;                // D = d_1 + ... + d_L
};

// The layout of θ = [W1, b1, W2, b2, ...] and of the activation buffers for
// widths sizes[0..n-1] (the host checks the widths before calling this).
inline MlpLayout mlp_layout(const int64_t* sizes, int n) {
  MlpLayout m;
  m.num_layers = n - 1;
  int64_t p = 0, a = 0;
  for (int l = 0; l < n; ++l) {
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

// Per-task workspace (elements): gradient, Hessian-vector product and its
// direction, five activation buffers (h, δ and the tangents ż, ḣ, δ̇; z itself
// is never read again: the derivatives are written in terms of h, and the
// output layer's h is its z), per-example losses, and the input gradient with
// its tangent.
MF_HD int64_t mlp_workspace_size(const MlpLayout& m, int shots) {
  return 3 * m.num_params + 5 * int64_t(shots) * m.act_width + shots + 2 * int64_t(shots) * m.sizes[0];
}

// The primal values of one network pass that a later pass at the same θ on
// the same examples replays instead of recomputing (LossGradOptions::record /
// replay): every layer's outputs h [K·D], then the backward sums δ_l W_l of
// the hidden layers before the activation's derivative [K·D], which tanh's
// second derivative needs. mlp_meta_grad's backward replays the forward's.
MF_HD int64_t mlp_primal_size(const MlpLayout& m, int shots) { return 2 * int64_t(shots) * m.act_width; }

// The network: what the per-task algorithm needs besides the data.
struct MlpNet {
  MlpLayout layout;
  Activation act;
  Loss loss;
};

// One task's examples (support or query set) as the network pass reads them.
template <typename T>
struct MlpTaskData {
  const T* x;           // [K, d_0]
  const T* y_float;     // [K, d_L] (MSE) or nullptr
  const label_t<T>* y_class;  // [K] (cross-entropy) or nullptr
  const T* weights;     // [K] per-example loss weights, or nullptr (all 1)
  int shots;            // K
};

template <typename T>
struct MlpWorkspace {
  T *grad, *hvp, *dir, *h, *dz, *z_dot, *h_dot, *dz_dot, *point_loss, *dx, *dx_dot;
  MF_HD MlpWorkspace(T* base, const MlpLayout& m, int shots) {
    const int64_t a = int64_t(shots) * m.act_width;
    grad = base;
    hvp = grad + m.num_params;
    dir = hvp + m.num_params;
    h = dir + m.num_params;
    dz = h + a;
    z_dot = dz + a;
    h_dot = z_dot + a;
    dz_dot = h_dot + a;
    point_loss = dz_dot + a;
    dx = point_loss + shots;
    dx_dot = dx + int64_t(shots) * m.sizes[0];
  }
};

}  // namespace metafast
