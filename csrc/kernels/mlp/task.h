// The MAML inner loop of one task for an MLP (Linear layers, ReLU/tanh
// between them), and its exact reverse (first or second order). Written once
// for host and device: the CPU kernel runs it with SerialLanes, one task per
// thread; the CUDA kernel with BlockLanes, one thread block per task.
//
// Parameters of one task are one flat vector θ = [W1, b1, W2, b2, ...] with
// W_l row-major [d_l, d_{l-1}] (nn.Linear layout). Activations are stored per
// layer as [K, d_l] matrices in a per-task workspace.
//
// Index arithmetic: lane loops over a flattened range (K·d, d_out·d_in) use an
// int64_t index and bound, since the host allows such products up to 2^31 − 1
// and an int index would overflow on its last `+= count()`. Within the loop
// the index is below that bound, so int(idx) is exact for the row/column
// split; offsets into θ and the workspace are int64_t.
//
// NaN and bad labels: every activation, derivative and loss propagates NaN
// as PyTorch does (see maml_math.h); a class label outside [0, d_out) gives
// that example a NaN loss and NaN gradients and is never used as an index.
#pragma once
#include "kernels/core/maml_math.h"

namespace metafast {

constexpr int kMaxLayers = 8;

// Outputs per lane work item in the lanes decomposition (a register block).
constexpr int kBlock = 4;
MF_HD int num_blocks(int n) { return (n + kBlock - 1) / kBlock; }
// The last block of a row is clamped to the row's last element: it recomputes
// that element (never stored twice) instead of reading past the row.
MF_HD int clamp_to(int i, int n) { return i < n ? i : n - 1; }

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
// direction, six
// activation buffers (z, h, δ and their tangents), per-example losses, and the
// input gradient with its tangent.
MF_HD int64_t mlp_workspace_size(const MlpLayout& m, int shots) {
  return 3 * m.num_params + 6 * int64_t(shots) * m.act_width + shots + 2 * int64_t(shots) * m.sizes[0];
}

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
  T *grad, *hvp, *dir, *z, *h, *dz, *z_dot, *h_dot, *dz_dot, *point_loss, *dx, *dx_dot;
  MF_HD MlpWorkspace(T* base, const MlpLayout& m, int shots) {
    const int64_t a = int64_t(shots) * m.act_width;
    grad = base;
    hvp = grad + m.num_params;
    dir = hvp + m.num_params;
    z = dir + m.num_params;
    h = z + a;
    dz = h + a;
    z_dot = dz + a;
    h_dot = z_dot + a;
    dz_dot = h_dot + a;
    point_loss = dz_dot + a;
    dx = point_loss + shots;
    dx_dot = dx + int64_t(shots) * m.sizes[0];
  }
};


// ---------------------------------------------------------------------------
// One layer of the backward pass (and its tangent):
//   dW[j,i] = Σ_k δ[k,j]·in[k,i]            ḋW = Σ_k δ̇·in + δ·ḣ_in
//   db[j]   = Σ_k δ[k,j]                    ḋb = Σ_k δ̇
//   δ_{l-1} = σ'(z)·(δ W)                   δ̇_{l-1} = σ'·(δ̇ W + δ u_W) + σ''·ż·(δ W)
//   at the input: ∂L/∂x = δ_1 W_1, with tangent δ̇_1 W_1 + δ_1 u_W1.
// Two decompositions of the same sums: with lanes (GPU threads, CPU task
// packs) each lane reduces a register block of kBlock outputs that share their
// loads; the CPU's per-task path accumulates outer products row by row so its
// inner loops are contiguous and vectorize.
// ---------------------------------------------------------------------------
template <typename T, typename Lanes>
MF_HD void parallel_backward_layer(const Lanes& lanes, const MlpLayout& m, Activation act, int l, int K,
                                   const T* W, const T* in, const T* in_dot, const T* dz, const T* dz_dot,
                                   MlpWorkspace<T>& ws, const T* dir, bool input_grad) {
  const int din = m.sizes[l - 1], dout = m.sizes[l];
  const int ib = num_blocks(din);
  // Weight gradients: a lane sums over the K examples for unit j and a block of inputs i0.. .
  for (int64_t idx = lanes.lane(); idx < int64_t(dout) * ib; idx += lanes.count()) {
    const int j = int(idx) / ib, i0 = (int(idx) % ib) * kBlock;  // idx < dout·din < 2^31
    int col[kBlock];
    T g[kBlock], gd[kBlock];
    for (int r = 0; r < kBlock; ++r) {
      col[r] = clamp_to(i0 + r, din);
      g[r] = T(0);
      gd[r] = T(0);
    }
    for (int k = 0; k < K; ++k) {
      const T c = dz[int64_t(k) * dout + j];
      const T* in_k = in + int64_t(k) * din;
      for (int r = 0; r < kBlock; ++r) g[r] += c * in_k[col[r]];
      if (dir) {
        const T cd = dz_dot[int64_t(k) * dout + j];
        for (int r = 0; r < kBlock; ++r) gd[r] += cd * in_k[col[r]];
        if (in_dot) {
          const T* ind_k = in_dot + int64_t(k) * din;
          for (int r = 0; r < kBlock; ++r) gd[r] += c * ind_k[col[r]];
        }
      }
    }
    const int64_t o = m.weight_offset[l] + int64_t(j) * din + i0;
    for (int r = 0; r < kBlock && i0 + r < din; ++r) {
      ws.grad[o + r] = g[r];
      if (dir) ws.hvp[o + r] = gd[r];
    }
  }
  for (int64_t j = lanes.lane(); j < dout; j += lanes.count()) {
    T g = T(0), gd = T(0);
    for (int k = 0; k < K; ++k) {
      g += dz[int64_t(k) * dout + j];
      if (dir) gd += dz_dot[int64_t(k) * dout + j];
    }
    ws.grad[m.bias_offset[l] + j] = g;
    if (dir) ws.hvp[m.bias_offset[l] + j] = gd;
  }
  if (l == 1 && !input_grad) return;
  // δ_{l-1}: a lane sums over the dout units for example k and a block of inputs i0.. .
  const int64_t prev = l > 1 ? int64_t(K) * m.act_offset[l - 1] : 0;
  for (int64_t idx = lanes.lane(); idx < int64_t(K) * ib; idx += lanes.count()) {
    const int k = int(idx) / ib, i0 = (int(idx) % ib) * kBlock;  // idx < K·din < 2^31
    int col[kBlock];
    T s[kBlock], sd[kBlock];
    for (int r = 0; r < kBlock; ++r) {
      col[r] = clamp_to(i0 + r, din);
      s[r] = T(0);
      sd[r] = T(0);
    }
    for (int j = 0; j < dout; ++j) {
      const T c = dz[int64_t(k) * dout + j];
      const T* w_row = W + int64_t(j) * din;
      for (int r = 0; r < kBlock; ++r) s[r] += c * w_row[col[r]];
      if (dir) {
        const T cd = dz_dot[int64_t(k) * dout + j];
        const T* u_row = dir + m.weight_offset[l] + int64_t(j) * din;
        for (int r = 0; r < kBlock; ++r) sd[r] += cd * w_row[col[r]] + c * u_row[col[r]];
      }
    }
    for (int r = 0; r < kBlock && i0 + r < din; ++r) {
      const int64_t e = int64_t(k) * din + i0 + r;
      if (l == 1) {
        ws.dx[e] = s[r];
        if (dir) ws.dx_dot[e] = sd[r];
      } else {
        const T h = ws.h[prev + e];
        ws.dz[prev + e] = activation_backward(act, h, s[r]);
        if (dir) ws.dz_dot[prev + e] = activation_backward_tangent(act, h, ws.z_dot[prev + e], s[r], sd[r]);
      }
    }
  }
}

template <typename T>
MF_HD void serial_backward_layer(const MlpLayout& m, Activation act, int l, int K, const T* W, const T* in,
                                 const T* in_dot, const T* dz, const T* dz_dot, MlpWorkspace<T>& ws,
                                 const T* dir, bool input_grad) {
  const int din = m.sizes[l - 1], dout = m.sizes[l];
  T* gW = ws.grad + m.weight_offset[l];
  T* hW = ws.hvp + m.weight_offset[l];
  T* gb = ws.grad + m.bias_offset[l];
  T* hb = ws.hvp + m.bias_offset[l];
  for (int64_t p = 0; p < int64_t(dout) * din; ++p) gW[p] = T(0);
  for (int j = 0; j < dout; ++j) gb[j] = T(0);
  if (dir) {
    for (int64_t p = 0; p < int64_t(dout) * din; ++p) hW[p] = T(0);
    for (int j = 0; j < dout; ++j) hb[j] = T(0);
  }
  for (int k = 0; k < K; ++k) {
    const T* in_k = in + int64_t(k) * din;
    const T* ind_k = in_dot ? in_dot + int64_t(k) * din : nullptr;
    for (int j = 0; j < dout; ++j) {
      const T c = dz[int64_t(k) * dout + j];
      T* g_row = gW + int64_t(j) * din;
      MF_SIMD
      for (int i = 0; i < din; ++i) g_row[i] += c * in_k[i];
      gb[j] += c;
      if (dir) {
        const T cd = dz_dot[int64_t(k) * dout + j];
        T* h_row = hW + int64_t(j) * din;
        MF_SIMD
        for (int i = 0; i < din; ++i) h_row[i] += cd * in_k[i];
        if (ind_k) {
          MF_SIMD
          for (int i = 0; i < din; ++i) h_row[i] += c * ind_k[i];
        }
        hb[j] += cd;
      }
    }
  }
  if (l == 1 && !input_grad) return;
  // s = δ W and ṡ = δ̇ W + δ u_W, accumulated row by row into the outputs.
  const int64_t prev = l > 1 ? int64_t(K) * m.act_offset[l - 1] : 0;
  T* s_out = l > 1 ? ws.dz + prev : ws.dx;
  T* sd_out = l > 1 ? ws.dz_dot + prev : ws.dx_dot;
  for (int64_t p = 0; p < int64_t(K) * din; ++p) s_out[p] = T(0);
  if (dir)
    for (int64_t p = 0; p < int64_t(K) * din; ++p) sd_out[p] = T(0);
  for (int k = 0; k < K; ++k) {
    T* s_k = s_out + int64_t(k) * din;
    T* sd_k = sd_out + int64_t(k) * din;
    for (int j = 0; j < dout; ++j) {
      const T c = dz[int64_t(k) * dout + j];
      const T* w_row = W + int64_t(j) * din;
      MF_SIMD
      for (int i = 0; i < din; ++i) s_k[i] += c * w_row[i];
      if (dir) {
        const T cd = dz_dot[int64_t(k) * dout + j];
        const T* u_row = dir + m.weight_offset[l] + int64_t(j) * din;
        MF_SIMD
        for (int i = 0; i < din; ++i) sd_k[i] += cd * w_row[i];
        MF_SIMD
        for (int i = 0; i < din; ++i) sd_k[i] += c * u_row[i];
      }
    }
  }
  if (l == 1) return;
  for (int64_t p = 0; p < int64_t(K) * din; ++p) {
    const T h = ws.h[prev + p];
    if (dir) sd_out[p] = activation_backward_tangent(act, h, ws.z_dot[prev + p], s_out[p], sd_out[p]);
    s_out[p] = activation_backward(act, h, s_out[p]);
  }
}

// ---------------------------------------------------------------------------
// One layer of the forward pass (and its tangent), for every example k:
//   z[k,j] = b[j] + Σ_i W[j,i]·in[k,i]          h = σ(z) (identity at the output)
//   ż[k,j] = u_b[j] + Σ_i u_W[j,i]·in[k,i] + Σ_i W[j,i]·ḣ_in[k,i]     ḣ = σ'(z)·ż
// Two decompositions of the same sums: with lanes (GPU threads, CPU task
// packs) each lane computes a register block of kBlock units j of one example,
// so every input element it loads feeds kBlock FMAs, and kBlock independent
// sums keep the FMA pipeline full; the CPU's per-task path takes a SIMD
// reduction along each row instead.
// ---------------------------------------------------------------------------
template <typename T>
MF_HD void store_forward(const MlpLayout& m, Activation act, int l, int64_t o, T z, const T* dir, T z_dot,
                         MlpWorkspace<T>& ws) {
  const bool hidden = l < m.num_layers;
  const T h = hidden ? activate(act, z) : z;
  ws.z[o] = z;
  ws.h[o] = h;
  if (dir) {
    ws.z_dot[o] = z_dot;
    ws.h_dot[o] = hidden ? activation_backward(act, h, z_dot) : z_dot;
  }
}

template <typename T, typename Lanes>
MF_HD void parallel_forward_layer(const Lanes& lanes, const MlpLayout& m, Activation act, int l, int K,
                                  const T* theta, const T* in, const T* in_dot, const T* dir, MlpWorkspace<T>& ws) {
  const int din = m.sizes[l - 1], dout = m.sizes[l];
  const int nb = num_blocks(dout);
  const T* W = theta + m.weight_offset[l];
  const T* b = theta + m.bias_offset[l];
  for (int64_t idx = lanes.lane(); idx < int64_t(K) * nb; idx += lanes.count()) {
    const int k = int(idx) / nb, j0 = (int(idx) % nb) * kBlock;  // idx < K·dout < 2^31
    const T* x_row = in + int64_t(k) * din;
    const T* xd_row = in_dot ? in_dot + int64_t(k) * din : nullptr;
    const T* w[kBlock];
    const T* u[kBlock];
    T acc[kBlock], t[kBlock];
    for (int r = 0; r < kBlock; ++r) {
      const int j = clamp_to(j0 + r, dout);
      w[r] = W + int64_t(j) * din;
      acc[r] = b[j];
      u[r] = dir ? dir + m.weight_offset[l] + int64_t(j) * din : nullptr;
      t[r] = dir ? dir[m.bias_offset[l] + j] : T(0);
    }
    if (!dir) {
      for (int i = 0; i < din; ++i) {
        const T xi = x_row[i];
        for (int r = 0; r < kBlock; ++r) acc[r] += w[r][i] * xi;
      }
    } else if (!xd_row) {
      for (int i = 0; i < din; ++i) {
        const T xi = x_row[i];
        for (int r = 0; r < kBlock; ++r) {
          acc[r] += w[r][i] * xi;
          t[r] += u[r][i] * xi;
        }
      }
    } else {
      for (int i = 0; i < din; ++i) {
        const T xi = x_row[i], xdi = xd_row[i];
        for (int r = 0; r < kBlock; ++r) {
          acc[r] += w[r][i] * xi;
          t[r] += u[r][i] * xi + w[r][i] * xdi;
        }
      }
    }
    const int64_t row = int64_t(K) * m.act_offset[l] + int64_t(k) * dout;
    for (int r = 0; r < kBlock && j0 + r < dout; ++r) store_forward(m, act, l, row + j0 + r, acc[r], dir, t[r], ws);
  }
}

template <typename T>
MF_HD void serial_forward_layer(const MlpLayout& m, Activation act, int l, int K, const T* theta, const T* in,
                                const T* in_dot, const T* dir, MlpWorkspace<T>& ws) {
  const int din = m.sizes[l - 1], dout = m.sizes[l];
  const T* W = theta + m.weight_offset[l];
  const T* b = theta + m.bias_offset[l];
  for (int k = 0; k < K; ++k) {
    const T* x_row = in + int64_t(k) * din;
    for (int j = 0; j < dout; ++j) {
      const T* w_row = W + int64_t(j) * din;
      T t = T(0);
      if (dir) {
        t = dot_add(dir[m.bias_offset[l] + j], dir + m.weight_offset[l] + int64_t(j) * din, x_row, din);
        if (in_dot) t = dot_add(t, w_row, in_dot + int64_t(k) * din, din);
      }
      store_forward(m, act, l, int64_t(K) * m.act_offset[l] + int64_t(k) * dout + j, dot_add(b[j], w_row, x_row, din),
                    dir, t, ws);
    }
  }
}

// Support loss at θ, its gradient into ws.grad and — when the direction
// `dir` = u = α⊙v [P] is given — the Hessian-vector product H·u into ws.hvp (forward-over-reverse through the
// MLP: a tangent pass alongside the forward pass and alongside the backward).
// With `input_grad`, also ∂L/∂x into ws.dx (and its tangent into ws.dx_dot).
// The output gradient back-propagated is loss_scale·dL/dy + extra_dy (the
// latter for a caller's gradient of the outputs themselves; no tangent);
// without `loss_term` just extra_dy: an absent loss gradient adds nothing,
// not 0·dL/dy, which is NaN where the loss is (as in autograd, where an
// unused output contributes nothing).
// Without `want_grad` it stops after the loss (outputs are in ws.z).
// Ends with a sync; the returned loss is valid on the leader lane.
template <typename T, typename Lanes>
MF_HD T mlp_loss_grad_hvp(const Lanes& lanes, const MlpLayout& m, Activation act, Loss loss,
                          const T* theta, const MlpTaskData<T>& d, MlpWorkspace<T>& ws,
                          const T* dir, bool input_grad = false, bool want_grad = true,
                          T loss_scale = T(1), const T* extra_dy = nullptr, bool loss_term = true) {
  const int K = d.shots;
  const int L = m.num_layers;
  // ---- forward (and tangent forward): z_l = h_{l-1} W_lᵀ + b_l ----
  for (int l = 1; l <= L; ++l) {
    const T* in = l == 1 ? d.x : ws.h + (int64_t(K) * m.act_offset[l - 1]);
    const T* in_dot = l == 1 ? nullptr : ws.h_dot + (int64_t(K) * m.act_offset[l - 1]);
    if constexpr (Lanes::kSerial) {
      serial_forward_layer(m, act, l, K, theta, in, in_dot, dir, ws);
    } else {
      parallel_forward_layer(lanes, m, act, l, K, theta, in, in_dot, dir, ws);
    }
    lanes.sync();
  }
  // ---- loss and dL/dy per example (mean over the support set) ----
  const int dL = m.sizes[L];
  const int64_t out = (int64_t(K) * m.act_offset[L]);
  for (int64_t k = lanes.lane(); k < K; k += lanes.count()) {
    const T* y = ws.z + out + k * dL;
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
  if (!want_grad) return total;
  // ---- backward (and tangent backward), layer by layer ----
  for (int l = L; l >= 1; --l) {
    const T* W = theta + m.weight_offset[l];
    const T* in = l == 1 ? d.x : ws.h + (int64_t(K) * m.act_offset[l - 1]);
    const T* in_dot = l == 1 ? nullptr : ws.h_dot + (int64_t(K) * m.act_offset[l - 1]);
    const T* dz = ws.dz + (int64_t(K) * m.act_offset[l]);
    const T* dz_dot = ws.dz_dot + (int64_t(K) * m.act_offset[l]);
    if constexpr (Lanes::kSerial) {
      serial_backward_layer(m, act, l, K, W, in, in_dot, dz, dz_dot, ws, dir, input_grad);
    } else {
      parallel_backward_layer(lanes, m, act, l, K, W, in, in_dot, dz, dz_dot, ws, dir, input_grad);
    }
    lanes.sync();
  }
  return total;
}

// ---------------------------------------------------------------------------
// What the forward and the backward of one call share: the network, the
// update rule, the data of every task and the scratch.
// ---------------------------------------------------------------------------
template <typename T>
struct MlpProblem {
  MlpLayout layout;
  Activation act;
  Loss loss;
  int tasks, shots, queries, steps;  // T, K, Q (0: no query set), S
  T lr;
  const T* lrs;                      // [P] per-parameter rates (Meta-SGD), or nullptr: lr
  const T* x;                        // [T, K, d_0]
  const T* y_float;                  // [T, K, d_L] (MSE) or nullptr
  const label_t<T>* y_class;         // [T, K] (cross-entropy) or nullptr
  const T* support_weights = nullptr;  // [T, K] per-example support loss weights, or nullptr (all 1)
  const T* qx;                       // [T, Q, d_0] or nullptr
  const T* qy_float;
  const label_t<T>* qy_class;
  T* workspace;                      // [T, W] global scratch
  int64_t workspace_stride;          // W = mlp_workspace_size(layout, rows())

  MF_HD T rate(int64_t p) const { return lrs ? lrs[p] : lr; }
  MF_HD int rows() const { return shots > queries ? shots : queries; }
  MF_HD MlpTaskData<T> task_data(int task, bool query) const {
    const int n = query ? queries : shots;
    const T* xs = query ? qx : x;
    const T* yf = query ? qy_float : y_float;
    const label_t<T>* yc = query ? qy_class : y_class;
    MlpTaskData<T> d;
    d.shots = n;
    d.x = xs + int64_t(task) * n * layout.sizes[0];
    d.y_float = yf ? yf + int64_t(task) * n * layout.sizes[layout.num_layers] : nullptr;
    d.y_class = yc ? yc + int64_t(task) * n : nullptr;
    d.weights = !query && support_weights ? support_weights + int64_t(task) * n : nullptr;  // queries: unweighted
    return d;
  }
};

// ---------------------------------------------------------------------------
// Forward: θ_0 = init; for s < S: record θ_s, loss_s = L(θ_s),
// θ_{s+1} = θ_s − α⊙∇L(θ_s); then, with a query set, the query forward at θ_S.
// ---------------------------------------------------------------------------
template <typename T>
struct MlpAdaptForwardArgs {
  MlpProblem<T> p;
  const T* init;         // [P]
  T* adapted;            // [T, P]
  T* losses;             // [T, S]
  T* query_output;       // [T, Q, d_L] model output at θ_S, or nullptr
  T* query_losses;       // [T] query loss at θ_S, or nullptr
  T* trajectory;         // [T, S, P]: θ_0 ... θ_{S-1}
};

// `workspace`: this task's scratch (mlp_workspace_size elements): a slice of
// p.workspace, or on the GPU the block's shared memory when it fits.
template <typename T, typename Lanes>
MF_HD void mlp_adapt_forward_task(const Lanes& lanes, const MlpAdaptForwardArgs<T>& a, int task, T* workspace) {
  const MlpProblem<T>& pr = a.p;
  const MlpLayout& m = pr.layout;
  const int64_t P = m.num_params;
  const MlpTaskData<T> d = pr.task_data(task, false);
  MlpWorkspace<T> ws(workspace, m, pr.rows());
  T* theta = a.adapted + int64_t(task) * P;
  for (int64_t p = lanes.lane(); p < P; p += lanes.count()) theta[p] = a.init[p];
  lanes.sync();
  for (int s = 0; s < pr.steps; ++s) {
    T* record = a.trajectory + (int64_t(task) * pr.steps + s) * P;
    for (int64_t p = lanes.lane(); p < P; p += lanes.count()) record[p] = theta[p];
    const T loss = mlp_loss_grad_hvp<T>(lanes, m, pr.act, pr.loss, theta, d, ws, nullptr);
    if (lanes.leader()) a.losses[int64_t(task) * pr.steps + s] = loss;
    for (int64_t p = lanes.lane(); p < P; p += lanes.count()) theta[p] = sgd_step(theta[p], pr.rate(p), ws.grad[p]);
    lanes.sync();
  }
  if (pr.queries > 0) {  // the query forward at θ_S, fused in the same launch
    const T loss = mlp_loss_grad_hvp<T>(lanes, m, pr.act, pr.loss, theta, pr.task_data(task, true), ws, nullptr,
                                        false, false);
    const int dL = m.sizes[m.num_layers];
    const T* y = ws.z + int64_t(pr.queries) * m.act_offset[m.num_layers];
    T* dst = a.query_output + int64_t(task) * pr.queries * dL;
    for (int64_t i = lanes.lane(); i < int64_t(pr.queries) * dL; i += lanes.count()) dst[i] = y[i];
    if (lanes.leader()) a.query_losses[task] = loss;
  }
}

// ---------------------------------------------------------------------------
// Backward: v = ∂Q/∂θ_S (plus the query terms); for s = S−1 … 0 (g_s = ∇L(θ_s),
// H_s its Hessian):
//   ᾱ += −g_s ⊙ v;   v ← v − H_s(α ⊙ v)  [second order only];   v += l̄_s·g_s
//   x̄ += l̄_s·∂L/∂x − ∂/∂x[(α⊙v)ᵀ g_s]  [the second term second order only]
// giving v = ∂/∂θ_0, ᾱ = ∂/∂α and x̄ = ∂/∂x of the task's share of the meta-loss.
// ---------------------------------------------------------------------------
template <typename T>
struct MlpAdaptBackwardArgs {
  MlpProblem<T> p;
  bool second_order;
  const T* grad_adapted;       // [T, P]
  const T* grad_losses;        // [T, S], or nullptr: the support losses are unused (no term at all, so
                               // that a NaN support gradient is not turned into NaN by 0·NaN)
  const T* grad_query_output;  // [T, Q, d_L] or nullptr
  const T* grad_query_losses;  // [T] or nullptr
  const T* adapted;            // [T, P] θ_S (for the query terms)
  const T* trajectory;         // [T, S, P]
  T* grad_init;                // [T, P] per-task ∂/∂θ_0
  T* grad_lrs;                 // [T, P] per-task ∂/∂α, or nullptr
  T* grad_x;                   // [T, K, d_0] ∂/∂support_x, or nullptr
  T* grad_qx;                  // [T, Q, d_0] ∂/∂query_x, or nullptr
};

template <typename T, typename Lanes>
MF_HD void mlp_adapt_backward_task(const Lanes& lanes, const MlpAdaptBackwardArgs<T>& a, int task, T* workspace) {
  const MlpProblem<T>& pr = a.p;
  const MlpLayout& m = pr.layout;
  const int64_t P = m.num_params;
  const MlpTaskData<T> d = pr.task_data(task, false);
  MlpWorkspace<T> ws(workspace, m, pr.rows());
  T* v = a.grad_init + int64_t(task) * P;
  T* lr_bar = a.grad_lrs ? a.grad_lrs + int64_t(task) * P : nullptr;
  const int64_t nx = int64_t(pr.shots) * m.sizes[0];
  T* x_bar = a.grad_x ? a.grad_x + int64_t(task) * nx : nullptr;
  for (int64_t p = lanes.lane(); p < P; p += lanes.count()) {
    v[p] = a.grad_adapted[int64_t(task) * P + p];
    if (lr_bar) lr_bar[p] = T(0);
  }
  if (x_bar)
    for (int64_t i = lanes.lane(); i < nx; i += lanes.count()) x_bar[i] = T(0);
  lanes.sync();
  if (pr.queries > 0) {  // v += ∂/∂θ_S of the query terms (loss and outputs)
    const int dL = m.sizes[m.num_layers];
    const int64_t nq = int64_t(pr.queries) * m.sizes[0];
    T* qx_bar = a.grad_qx ? a.grad_qx + int64_t(task) * nq : nullptr;
    // An absent upstream gradient contributes nothing (not 0·NaN).
    if (a.grad_query_losses || a.grad_query_output) {
      const T scale = a.grad_query_losses ? a.grad_query_losses[task] : T(0);
      const T* extra = a.grad_query_output ? a.grad_query_output + int64_t(task) * pr.queries * dL : nullptr;
      mlp_loss_grad_hvp<T>(lanes, m, pr.act, pr.loss, a.adapted + int64_t(task) * P, pr.task_data(task, true), ws,
                           nullptr, qx_bar != nullptr, true, scale, extra, a.grad_query_losses != nullptr);
      for (int64_t p = lanes.lane(); p < P; p += lanes.count()) v[p] += ws.grad[p];
      if (qx_bar)
        for (int64_t i = lanes.lane(); i < nq; i += lanes.count()) qx_bar[i] = ws.dx[i];
    } else if (qx_bar) {
      for (int64_t i = lanes.lane(); i < nq; i += lanes.count()) qx_bar[i] = T(0);
    }
    lanes.sync();
  }
  for (int s = pr.steps - 1; s >= 0; --s) {
    const T* theta = a.trajectory + (int64_t(task) * pr.steps + s) * P;
    if (a.second_order) {
      for (int64_t p = lanes.lane(); p < P; p += lanes.count()) ws.dir[p] = pr.rate(p) * v[p];
      lanes.sync();
    }
    mlp_loss_grad_hvp<T>(lanes, m, pr.act, pr.loss, theta, d, ws, a.second_order ? ws.dir : nullptr,
                         x_bar != nullptr);
    const bool has_loss_bar = a.grad_losses != nullptr;
    const T loss_bar = has_loss_bar ? a.grad_losses[int64_t(task) * pr.steps + s] : T(0);
    if (x_bar)
      for (int64_t i = lanes.lane(); i < nx; i += lanes.count()) {
        const T dx_dot = a.second_order ? ws.dx_dot[i] : T(0);
        x_bar[i] += has_loss_bar ? loss_bar * ws.dx[i] - dx_dot : -dx_dot;
      }
    for (int64_t p = lanes.lane(); p < P; p += lanes.count()) {
      const T g = ws.grad[p];
      if (lr_bar) lr_bar[p] -= g * v[p];
      T vp = v[p];
      if (a.second_order) vp -= ws.hvp[p];
      v[p] = has_loss_bar ? vp + loss_bar * g : vp;
    }
    lanes.sync();
  }
}

}  // namespace metafast
