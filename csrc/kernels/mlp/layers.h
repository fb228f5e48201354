// One layer of an MLP's forward and backward pass (and their tangents, for
// Hessian-vector products), in two decompositions of the same sums:
//  - parallel_*: over lanes (GPU threads, CPU task packs: kernels/core/lanes.h),
//    each lane reducing a register block of kBlock outputs that share their loads;
//  - serial_*: one lane (the CPU's per-task path), row by row, so that the
//    inner loops are contiguous and vectorize.
// mlp_loss_grad_hvp (kernels/mlp/loss_grad_hvp.h) picks one by Lanes::kSerial.
//
// Index arithmetic: lane loops over a flattened range (K·d, d_out·d_in) use an
// int64_t index and bound, since the host allows such products up to 2^31 − 1
// (kIndexLimit) and an int index would overflow on its last `+= count()`.
// Within the loop the index is below that bound, so int(idx) is exact for the
// row/column split; offsets into θ and the workspace are int64_t.
#pragma once
#include "kernels/mlp/layout.h"

namespace metafast {

// Outputs per lane work item in the lanes decomposition (a register block).
constexpr int kBlock = 4;
MF_HD int num_blocks(int n) { return (n + kBlock - 1) / kBlock; }
// The last block of a row is clamped to the row's last element: it recomputes
// that element (never stored twice) instead of reading past the row.
MF_HD int clamp_to(int i, int n) { return i < n ? i : n - 1; }
// Rows per work item (Lanes::kRowBlock): R examples share each weight load in
// the forward and input-gradient sums, R weight rows each input load in the
// weight gradients. 1 on the GPU, whose threads want many small items; more
// in a CPU task pack, where a layer's weights outgrow the L1 cache. The last
// block is clamped like a row's.
template <int R>
MF_HD int num_row_blocks(int n) { return (n + R - 1) / R; }

// One work item of a backward sum: R rows from r0 × kBlock columns from c0
// (indices clamped to rows × cols), its sums and their tangents zeroed.
template <typename T, int R>
struct BackwardBlock {
  int row[R], col[kBlock];
  T sum[R][kBlock], tangent[R][kBlock];
  MF_HD BackwardBlock(int r0, int rows, int c0, int cols) {
    for (int r = 0; r < kBlock; ++r) col[r] = clamp_to(c0 + r, cols);
    for (int e = 0; e < R; ++e) {
      row[e] = clamp_to(r0 + e, rows);
      for (int r = 0; r < kBlock; ++r) {
        sum[e][r] = T(0);
        tangent[e][r] = T(0);
      }
    }
  }
};

// What a backward layer computes of its primal sums (LossGradOptions: record,
// replay): the weight gradient only with `grad`; the hidden layers' sums δ W
// read from `replay` instead (the input gradient's are always computed), and
// written to `record` when given.
template <typename T>
struct BackwardPrimal {
  bool grad;
  const T* replay;
  T* record;
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
                                   MlpWorkspace<T>& ws, const T* dir, bool input_grad, const BackwardPrimal<T>& bp) {
  const int din = m.sizes[l - 1], dout = m.sizes[l];
  const int ib = num_blocks(din);
  const bool grad = bp.grad || !dir;  // without a tangent the gradient is all there is
  // Weight gradients: a lane sums over the K examples for R units j0.. and a block of inputs i0.. .
  constexpr int R = Lanes::kRowBlock;
  const int jb = num_row_blocks<R>(dout);
  for (int64_t idx = lanes.lane(); idx < int64_t(jb) * ib; idx += lanes.count()) {
    const int j0 = (int(idx) / ib) * R, i0 = (int(idx) % ib) * kBlock;  // idx < dout·din < 2^31
    BackwardBlock<T, R> blk(j0, dout, i0, din);
    for (int k = 0; k < K; ++k) {
      const T* in_k = in + int64_t(k) * din;
      T xin[kBlock];
      for (int r = 0; r < kBlock; ++r) xin[r] = in_k[blk.col[r]];
      if (!dir) {
        for (int e = 0; e < R; ++e) {
          const T c = dz[int64_t(k) * dout + blk.row[e]];
          for (int r = 0; r < kBlock; ++r) blk.sum[e][r] += c * xin[r];
        }
        continue;
      }
      T xind[kBlock];
      if (in_dot)
        for (int r = 0; r < kBlock; ++r) xind[r] = in_dot[int64_t(k) * din + blk.col[r]];
      for (int e = 0; e < R; ++e) {
        const T c = dz[int64_t(k) * dout + blk.row[e]], cd = dz_dot[int64_t(k) * dout + blk.row[e]];
        if (grad)
          for (int r = 0; r < kBlock; ++r) blk.sum[e][r] += c * xin[r];
        for (int r = 0; r < kBlock; ++r) blk.tangent[e][r] += cd * xin[r];
        if (in_dot)
          for (int r = 0; r < kBlock; ++r) blk.tangent[e][r] += c * xind[r];
      }
    }
    for (int e = 0; e < R && j0 + e < dout; ++e) {
      const int64_t o = m.weight_offset[l] + int64_t(j0 + e) * din + i0;
      for (int r = 0; r < kBlock && i0 + r < din; ++r) {
        if (grad) ws.grad[o + r] = blk.sum[e][r];
        if (dir) ws.hvp[o + r] = blk.tangent[e][r];
      }
    }
  }
  for (int64_t j = lanes.lane(); j < dout; j += lanes.count()) {
    T g = T(0), gd = T(0);
    for (int k = 0; k < K; ++k) {
      g += dz[int64_t(k) * dout + j];
      if (dir) gd += dz_dot[int64_t(k) * dout + j];
    }
    if (grad) ws.grad[m.bias_offset[l] + j] = g;
    if (dir) ws.hvp[m.bias_offset[l] + j] = gd;
  }
  if (l == 1 && !input_grad) return;
  // δ_{l-1}: a lane sums over the dout units for R examples k0.. and a block of inputs i0.. .
  const int64_t prev = l > 1 ? int64_t(K) * m.act_offset[l - 1] : 0;
  const bool sums = l == 1 || !bp.replay;  // else replayed
  const int kb = num_row_blocks<R>(K);
  for (int64_t idx = lanes.lane(); idx < int64_t(kb) * ib; idx += lanes.count()) {
    const int k0 = (int(idx) / ib) * R, i0 = (int(idx) % ib) * kBlock;  // idx < K·din < 2^31
    BackwardBlock<T, R> blk(k0, K, i0, din);
    for (int j = 0; j < dout; ++j) {
      const T* w_row = W + int64_t(j) * din;
      T wv[kBlock];
      for (int r = 0; r < kBlock; ++r) wv[r] = w_row[blk.col[r]];
      if (dir) {
        const T* u_row = dir + m.weight_offset[l] + int64_t(j) * din;
        T uv[kBlock];
        for (int r = 0; r < kBlock; ++r) uv[r] = u_row[blk.col[r]];
        for (int e = 0; e < R; ++e) {
          const T c = dz[int64_t(blk.row[e]) * dout + j], cd = dz_dot[int64_t(blk.row[e]) * dout + j];
          if (sums)
            for (int r = 0; r < kBlock; ++r) blk.sum[e][r] += c * wv[r];
          for (int r = 0; r < kBlock; ++r) blk.tangent[e][r] += cd * wv[r] + c * uv[r];
        }
      } else if (sums) {
        for (int e = 0; e < R; ++e) {
          const T c = dz[int64_t(blk.row[e]) * dout + j];
          for (int r = 0; r < kBlock; ++r) blk.sum[e][r] += c * wv[r];
        }
      }
    }
    for (int e = 0; e < R && k0 + e < K; ++e)
      for (int r = 0; r < kBlock && i0 + r < din; ++r) {
        const int64_t x = int64_t(k0 + e) * din + i0 + r;
        if (l == 1) {
          ws.dx[x] = blk.sum[e][r];
          if (dir) ws.dx_dot[x] = blk.tangent[e][r];
        } else {
          const T h = ws.h[prev + x], g = sums ? blk.sum[e][r] : bp.replay[prev + x];
          if (bp.record) bp.record[prev + x] = g;
          ws.dz[prev + x] = activation_backward(act, h, g);
          if (dir) ws.dz_dot[prev + x] = activation_backward_tangent(act, h, ws.z_dot[prev + x], g, blk.tangent[e][r]);
        }
      }
  }
}

template <typename T>
MF_HD void serial_backward_layer(const MlpLayout& m, Activation act, int l, int K, const T* W, const T* in,
                                 const T* in_dot, const T* dz, const T* dz_dot, MlpWorkspace<T>& ws,
                                 const T* dir, bool input_grad, const BackwardPrimal<T>& bp) {
  const int din = m.sizes[l - 1], dout = m.sizes[l];
  const bool grad = bp.grad || !dir;  // without a tangent the gradient is all there is
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
      if (grad) {
        T* g_row = gW + int64_t(j) * din;
        MF_SIMD
        for (int i = 0; i < din; ++i) g_row[i] += c * in_k[i];
        gb[j] += c;
      }
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
  const bool sums = l == 1 || !bp.replay;  // else replayed
  for (int64_t p = 0; p < int64_t(K) * din; ++p) s_out[p] = T(0);
  if (dir)
    for (int64_t p = 0; p < int64_t(K) * din; ++p) sd_out[p] = T(0);
  for (int k = 0; k < K; ++k) {
    T* s_k = s_out + int64_t(k) * din;
    T* sd_k = sd_out + int64_t(k) * din;
    for (int j = 0; j < dout; ++j) {
      const T c = dz[int64_t(k) * dout + j];
      const T* w_row = W + int64_t(j) * din;
      if (sums) {
        MF_SIMD
        for (int i = 0; i < din; ++i) s_k[i] += c * w_row[i];
      }
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
    const T h = ws.h[prev + p], g = sums ? s_out[p] : bp.replay[prev + p];
    if (bp.record) bp.record[prev + p] = g;
    if (dir) sd_out[p] = activation_backward_tangent(act, h, ws.z_dot[prev + p], g, sd_out[p]);
    s_out[p] = activation_backward(act, h, g);
  }
}

// ---------------------------------------------------------------------------
// One layer of the forward pass (and its tangent), for every example k:
//   z[k,j] = b[j] + Σ_i W[j,i]·in[k,i]          h = σ(z) (identity at the output)
//   ż[k,j] = u_b[j] + Σ_i u_W[j,i]·in[k,i] + Σ_i W[j,i]·ḣ_in[k,i]     ḣ = σ'(z)·ż
// Two decompositions of the same sums: with lanes (GPU threads, CPU task
// packs) each lane computes a register block of kBlock units j of R examples
// (Lanes::kRowBlock), so every input element it loads feeds kBlock FMAs,
// every weight R, and R·kBlock independent sums keep the FMA pipeline full;
// the CPU's per-task path takes a SIMD reduction along each row instead.
// ---------------------------------------------------------------------------
// `primal` false: h is a replayed record (ws.h), only the tangents are stored.
template <typename T>
MF_HD void store_forward(const MlpLayout& m, Activation act, int l, int64_t o, T z, const T* dir, T z_dot,
                         bool primal, MlpWorkspace<T>& ws) {
  const bool hidden = l < m.num_layers;
  if (primal) ws.h[o] = hidden ? activate(act, z) : z;
  const T h = ws.h[o];
  if (dir) {
    ws.z_dot[o] = z_dot;
    ws.h_dot[o] = hidden ? activation_backward(act, h, z_dot) : z_dot;
  }
}

template <typename T, typename Lanes>
MF_HD void parallel_forward_layer(const Lanes& lanes, const MlpLayout& m, Activation act, int l, int K,
                                  const T* theta, const T* in, const T* in_dot, const T* dir, bool primal,
                                  MlpWorkspace<T>& ws) {
  constexpr int R = Lanes::kRowBlock;
  const int din = m.sizes[l - 1], dout = m.sizes[l];
  const int nb = num_blocks(dout), kb = num_row_blocks<R>(K);
  const T* W = theta + m.weight_offset[l];
  const T* b = theta + m.bias_offset[l];
  for (int64_t idx = lanes.lane(); idx < int64_t(kb) * nb; idx += lanes.count()) {
    const int k0 = (int(idx) / nb) * R, j0 = (int(idx) % nb) * kBlock;  // idx < K·dout < 2^31
    const T* x_row[R];
    const T* xd_row[R];
    for (int e = 0; e < R; ++e) {
      const int k = clamp_to(k0 + e, K);
      x_row[e] = in + int64_t(k) * din;
      xd_row[e] = in_dot ? in_dot + int64_t(k) * din : nullptr;
    }
    const T* w[kBlock];
    const T* u[kBlock];
    T acc[R][kBlock], t[R][kBlock];
    for (int r = 0; r < kBlock; ++r) {
      const int j = clamp_to(j0 + r, dout);
      w[r] = W + int64_t(j) * din;
      u[r] = dir ? dir + m.weight_offset[l] + int64_t(j) * din : nullptr;
      for (int e = 0; e < R; ++e) {
        acc[e][r] = b[j];
        t[e][r] = dir ? dir[m.bias_offset[l] + j] : T(0);
      }
    }
    if (!dir) {
      for (int i = 0; i < din; ++i) {
        T wi[kBlock];
        for (int r = 0; r < kBlock; ++r) wi[r] = w[r][i];
        for (int e = 0; e < R; ++e) {
          const T xi = x_row[e][i];
          for (int r = 0; r < kBlock; ++r) acc[e][r] += wi[r] * xi;
        }
      }
    } else if (!in_dot) {
      for (int i = 0; i < din; ++i) {
        T wi[kBlock], ui[kBlock];
        for (int r = 0; r < kBlock; ++r) {
          wi[r] = w[r][i];
          ui[r] = u[r][i];
        }
        for (int e = 0; e < R; ++e) {
          const T xi = x_row[e][i];
          if (primal)
            for (int r = 0; r < kBlock; ++r) acc[e][r] += wi[r] * xi;
          for (int r = 0; r < kBlock; ++r) t[e][r] += ui[r] * xi;
        }
      }
    } else {
      for (int i = 0; i < din; ++i) {
        T wi[kBlock], ui[kBlock];
        for (int r = 0; r < kBlock; ++r) {
          wi[r] = w[r][i];
          ui[r] = u[r][i];
        }
        for (int e = 0; e < R; ++e) {
          const T xi = x_row[e][i], xdi = xd_row[e][i];
          if (primal)
            for (int r = 0; r < kBlock; ++r) acc[e][r] += wi[r] * xi;
          for (int r = 0; r < kBlock; ++r) t[e][r] += ui[r] * xi + wi[r] * xdi;
        }
      }
    }
    for (int e = 0; e < R && k0 + e < K; ++e) {
      const int64_t row = int64_t(K) * m.act_offset[l] + int64_t(k0 + e) * dout;
      for (int r = 0; r < kBlock && j0 + r < dout; ++r)
        store_forward(m, act, l, row + j0 + r, acc[e][r], dir, t[e][r], primal, ws);
    }
  }
}

template <typename T>
MF_HD void serial_forward_layer(const MlpLayout& m, Activation act, int l, int K, const T* theta, const T* in,
                                const T* in_dot, const T* dir, bool primal, MlpWorkspace<T>& ws) {
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
      const T z = primal ? dot_add(b[j], w_row, x_row, din) : T(0);
      store_forward(m, act, l, int64_t(K) * m.act_offset[l] + int64_t(k) * dout + j, z, dir, t, primal, ws);
    }
  }
}

}  // namespace metafast
