// Task packs: the CPU's way to fill its vector units with small MAML nets.
//
// A TaskPack<S, W> holds one scalar of each of W tasks (one task per SIMD
// lane). Every task of a meta-batch runs the same shapes and the same
// instruction stream, so the per-task algorithm of kernels/mlp/task.h, run
// with T = TaskPack (and PackLanes, below), adapts W tasks at once, each vector
// instruction doing one scalar step of every task: no horizontal sums, no
// shuffles, and full vectors whatever the layer widths (1-40-40-1 included).
// The GPU splits the same code across a block's threads (BlockLanes); the CPU
// splits it across vector lanes (here) and packs across threads.
//
// Data-dependent choices (ReLU, NaN-aware max, labels) are lane-wise
// selects (mf_select / mf_any / label_is, overloaded here), so each lane
// computes exactly what the scalar code computes for its task. The math is
// unchanged; only a SIMD sum's association may differ from the scalar CPU
// kernel (which vectorizes its inner loops), so results agree to rounding.
//
// PackedMlpAdapt gathers W tasks' inputs into pack layout ([..., W]),
// runs the per-task algorithm on them and scatters the results back; a
// partial last pack repeats its first task in the unused lanes (valid data,
// results discarded).
//
// GCC/Clang vector extensions; host only. The CPU kernel makes a pack one
// vector register of the ISA level it runs (csrc/ops/mlp_adapt/cpu.cpp).
#pragma once
#include "kernels/mlp/task.h"

namespace metafast {

template <typename S>
struct PackInt;
template <>
struct PackInt<float> {
  using type = int32_t;
};
template <>
struct PackInt<double> {
  using type = int64_t;
};

// A lane mask (all bits set where true), as vector comparisons give it.
template <typename S, int W>
struct PackMask {
  typedef typename PackInt<S>::type Int;
  typedef Int Vec __attribute__((vector_size(sizeof(Int) * W)));
  Vec m;
};

template <typename S, int W>
struct TaskPack {
  typedef S Vec __attribute__((vector_size(sizeof(S) * W)));
  using Mask = PackMask<S, W>;
  Vec v;

  TaskPack() = default;
  TaskPack(S s) : v(Vec{} + s) {}  // broadcast (implicit: T(0), T(1), lr·g with a scalar lr)
  static TaskPack of(Vec x) {
    TaskPack p;
    p.v = x;
    return p;
  }

  friend TaskPack operator+(TaskPack a, TaskPack b) { return of(a.v + b.v); }
  friend TaskPack operator-(TaskPack a, TaskPack b) { return of(a.v - b.v); }
  friend TaskPack operator*(TaskPack a, TaskPack b) { return of(a.v * b.v); }
  friend TaskPack operator/(TaskPack a, TaskPack b) { return of(a.v / b.v); }
  friend TaskPack operator-(TaskPack a) { return of(-a.v); }
  TaskPack& operator+=(TaskPack b) { v += b.v; return *this; }
  TaskPack& operator-=(TaskPack b) { v -= b.v; return *this; }
  // Comparisons lane by lane (the compiler vectorizes them): GCC 12 crashes
  // (ICE in do_store_flag) on a vector `a.v <= b.v` kept as a mask under AVX-512.
  template <typename Cmp>
  static Mask compare(TaskPack a, TaskPack b, Cmp cmp) {
    Mask m;
    for (int i = 0; i < W; ++i) m.m[i] = cmp(a.v[i], b.v[i]) ? -1 : 0;
    return m;
  }
  friend Mask operator<(TaskPack a, TaskPack b) { return compare(a, b, [](S x, S y) { return x < y; }); }
  friend Mask operator<=(TaskPack a, TaskPack b) { return compare(a, b, [](S x, S y) { return x <= y; }); }
  friend Mask operator>(TaskPack a, TaskPack b) { return compare(a, b, [](S x, S y) { return x > y; }); }
  friend Mask operator!=(TaskPack a, TaskPack b) {  // NaN != NaN: true
    return compare(a, b, [](S x, S y) { return x != y; });
  }
};

// One int64 class label per lane.
template <typename S, int W>
struct LabelPack {
  typedef int64_t Vec __attribute__((vector_size(sizeof(int64_t) * W)));
  Vec v;
};

template <typename S, int W>
struct LabelType<TaskPack<S, W>> {
  using type = LabelPack<S, W>;
};

template <typename S, int W>
inline TaskPack<S, W> mf_select(PackMask<S, W> c, TaskPack<S, W> a, TaskPack<S, W> b) {
  return TaskPack<S, W>::of(c.m ? a.v : b.v);
}
template <typename S, int W>
inline bool mf_any(PackMask<S, W> c) {
  for (int i = 0; i < W; ++i)
    if (c.m[i]) return true;
  return false;
}
template <typename S, int W>
inline PackMask<S, W> mf_or(PackMask<S, W> a, PackMask<S, W> b) { return PackMask<S, W>{a.m | b.m}; }

// Label masks, narrowed to the pack's lane width (int32 lanes for float).
template <typename S, int W>
inline PackMask<S, W> label_mask(typename LabelPack<S, W>::Vec wide) {
  return PackMask<S, W>{__builtin_convertvector(wide, typename PackMask<S, W>::Vec)};
}
template <typename S, int W>
inline PackMask<S, W> valid_label(LabelPack<S, W> label, int n) {
  return label_mask<S, W>((label.v >= 0) & (label.v < int64_t(n)));
}
template <typename S, int W>
inline PackMask<S, W> label_is(LabelPack<S, W> label, int64_t c) { return label_mask<S, W>(label.v == c); }

// Transcendentals lane by lane, with the scalar kernel's own functions.
#define MF_PACK_UNARY(name)                               \
  template <typename S, int W>                            \
  inline TaskPack<S, W> name(TaskPack<S, W> x) {          \
    TaskPack<S, W> r;                                     \
    for (int i = 0; i < W; ++i) r.v[i] = name(S(x.v[i])); \
    return r;                                             \
  }
MF_PACK_UNARY(mf_exp)
MF_PACK_UNARY(mf_log)
MF_PACK_UNARY(mf_tanh)
#undef MF_PACK_UNARY

// The lanes a pack runs with: one, taking the GPU's decomposition of each
// layer (parallel_forward_layer / parallel_backward_layer: register blocks of
// kBlock outputs, each summed in a register) rather than SerialLanes'
// row-by-row outer products, which load and store every gradient element once
// per example. For a pack each register is a full vector and nothing is
// stored until the sum is done.
struct PackLanes {
  static constexpr bool kSerial = false;
  int lane() const { return 0; }
  int count() const { return 1; }
  void sync() const {}
  bool leader() const { return true; }
};

// ---------------------------------------------------------------------------
// Gather / scatter between task-major arrays [T, len] and a pack [len] of W
// tasks starting at `first` (`n` of them real).
// ---------------------------------------------------------------------------
// (Element-major loops: W sequential read streams and whole-vector writes.)
template <typename S, int W>
inline void gather_pack(TaskPack<S, W>* dst, const S* src, int64_t len, int64_t first, int n) {
  const S* rows[W];
  for (int w = 0; w < W; ++w) rows[w] = src + (first + (w < n ? w : 0)) * len;
  for (int64_t e = 0; e < len; ++e) {
    TaskPack<S, W> p;
    for (int w = 0; w < W; ++w) p.v[w] = rows[w][e];
    dst[e] = p;
  }
}
template <typename S, int W>
inline void gather_labels(LabelPack<S, W>* dst, const int64_t* src, int64_t len, int64_t first, int n) {
  for (int w = 0; w < W; ++w) {
    const int64_t* s = src + (first + (w < n ? w : 0)) * len;
    for (int64_t e = 0; e < len; ++e) dst[e].v[w] = s[e];
  }
}
template <typename S, int W>
inline void broadcast_pack(TaskPack<S, W>* dst, const S* src, int64_t len) {
  for (int64_t e = 0; e < len; ++e) dst[e] = TaskPack<S, W>(src[e]);
}
template <typename S, int W>
inline void scatter_pack(S* dst, const TaskPack<S, W>* src, int64_t len, int64_t first, int n) {
  S* rows[W];
  for (int w = 0; w < W; ++w) rows[w] = dst + (first + (w < n ? w : 0)) * len;
  if (n == W) {
    for (int64_t e = 0; e < len; ++e) {
      const TaskPack<S, W> p = src[e];
      for (int w = 0; w < W; ++w) rows[w][e] = p.v[w];
    }
    return;
  }
  for (int w = 0; w < n; ++w)
    for (int64_t e = 0; e < len; ++e) rows[w][e] = src[e].v[w];
}

// Carves typed, 64-byte-aligned arrays out of one scratch buffer; with a null
// base it only counts the bytes.
struct ScratchCarver {
  unsigned char* base;
  size_t used = 0;
  template <typename U>
  U* take(int64_t n) {
    const size_t at = (used + 63) & ~size_t(63);
    used = at + size_t(n) * sizeof(U);
    return base ? reinterpret_cast<U*>(base + at) : nullptr;
  }
};

// ---------------------------------------------------------------------------
// The forward and backward of kernels/mlp/task.h on packs of W tasks.
// `scratch`: scratch_bytes() bytes, 64-byte aligned, per concurrent pack.
// ---------------------------------------------------------------------------
template <typename S, int W>
struct PackedMlpAdapt {
  using Pack = TaskPack<S, W>;
  using Labels = LabelPack<S, W>;

  static int64_t num_packs(int tasks) { return (int64_t(tasks) + W - 1) / W; }

  // The problem of one pack (tasks = 1), its inputs gathered into `sc`.
  static MlpProblem<Pack> pack_problem(const MlpProblem<S>& pr, int64_t first, int n, ScratchCarver& sc) {
    const MlpLayout& m = pr.layout;
    const int64_t P = m.num_params, K = pr.shots, Q = pr.queries, d0 = m.sizes[0], dL = m.sizes[m.num_layers];
    MlpProblem<Pack> q;
    q.layout = m;
    q.act = pr.act;
    q.loss = pr.loss;
    q.tasks = 1;
    q.shots = pr.shots;
    q.queries = pr.queries;
    q.steps = pr.steps;
    q.lr = Pack(pr.lr);
    Pack* lrs = pr.lrs ? sc.take<Pack>(P) : nullptr;
    Pack* x = sc.take<Pack>(K * d0);
    Pack* y = pr.y_float ? sc.take<Pack>(K * dL) : nullptr;
    Labels* yc = pr.y_class ? sc.take<Labels>(K) : nullptr;
    Pack* sw = pr.support_weights ? sc.take<Pack>(K) : nullptr;
    Pack* qx = Q ? sc.take<Pack>(Q * d0) : nullptr;
    Pack* qy = Q && pr.qy_float ? sc.take<Pack>(Q * dL) : nullptr;
    Labels* qyc = Q && pr.qy_class ? sc.take<Labels>(Q) : nullptr;
    q.workspace_stride = mlp_workspace_size(m, pr.rows());
    q.workspace = sc.take<Pack>(q.workspace_stride);
    q.lrs = lrs;
    q.x = x;
    q.y_float = y;
    q.y_class = yc;
    q.support_weights = sw;
    q.qx = qx;
    q.qy_float = qy;
    q.qy_class = qyc;
    if (!sc.base) return q;
    if (lrs) broadcast_pack(lrs, pr.lrs, P);
    gather_pack(x, pr.x, K * d0, first, n);
    if (y) gather_pack(y, pr.y_float, K * dL, first, n);
    if (yc) gather_labels(yc, pr.y_class, K, first, n);
    if (sw) gather_pack(sw, pr.support_weights, K, first, n);
    if (qx) gather_pack(qx, pr.qx, Q * d0, first, n);
    if (qy) gather_pack(qy, pr.qy_float, Q * dL, first, n);
    if (qyc) gather_labels(qyc, pr.qy_class, Q, first, n);
    return q;
  }

  // Tasks [first, first + n) of the forward, n <= W. Returns the scratch bytes
  // used (all it does without scratch).
  static size_t forward(const MlpAdaptForwardArgs<S>& a, int64_t first, int n, unsigned char* scratch) {
    const MlpProblem<S>& pr = a.p;
    const int64_t P = pr.layout.num_params, S_ = pr.steps, Q = pr.queries, dL = pr.layout.sizes[pr.layout.num_layers];
    ScratchCarver sc{scratch};
    MlpAdaptForwardArgs<Pack> b;
    b.p = pack_problem(pr, first, n, sc);
    Pack* init = sc.take<Pack>(P);
    b.init = init;
    b.adapted = sc.take<Pack>(P);
    b.losses = sc.take<Pack>(S_);
    b.query_output = Q ? sc.take<Pack>(Q * dL) : nullptr;
    b.query_losses = Q ? sc.take<Pack>(1) : nullptr;
    b.trajectory = sc.take<Pack>(S_ * P);
    if (!scratch) return sc.used;
    broadcast_pack(init, a.init, P);
    mlp_adapt_forward_task<Pack>(PackLanes{}, b, 0, b.p.workspace);
    scatter_pack(a.adapted, b.adapted, P, first, n);
    scatter_pack(a.losses, b.losses, S_, first, n);
    if (Q) {
      scatter_pack(a.query_output, b.query_output, Q * dL, first, n);
      scatter_pack(a.query_losses, b.query_losses, 1, first, n);
    }
    scatter_pack(a.trajectory, b.trajectory, S_ * P, first, n);
    return sc.used;
  }

  static size_t backward(const MlpAdaptBackwardArgs<S>& a, int64_t first, int n, unsigned char* scratch) {
    const MlpProblem<S>& pr = a.p;
    const MlpLayout& m = pr.layout;
    const int64_t P = m.num_params, S_ = pr.steps, K = pr.shots, Q = pr.queries, d0 = m.sizes[0],
                  dL = m.sizes[m.num_layers];
    ScratchCarver sc{scratch};
    MlpAdaptBackwardArgs<Pack> b;
    b.p = pack_problem(pr, first, n, sc);
    b.second_order = a.second_order;
    Pack* g_adapted = sc.take<Pack>(P);
    Pack* g_losses = a.grad_losses ? sc.take<Pack>(S_) : nullptr;
    Pack* g_qout = a.grad_query_output ? sc.take<Pack>(Q * dL) : nullptr;
    Pack* g_qloss = a.grad_query_losses ? sc.take<Pack>(1) : nullptr;
    Pack* adapted = a.adapted ? sc.take<Pack>(P) : nullptr;
    Pack* trajectory = sc.take<Pack>(S_ * P);
    b.grad_adapted = g_adapted;
    b.grad_losses = g_losses;
    b.grad_query_output = g_qout;
    b.grad_query_losses = g_qloss;
    b.adapted = adapted;
    b.trajectory = trajectory;
    b.grad_init = sc.take<Pack>(P);
    b.grad_lrs = a.grad_lrs ? sc.take<Pack>(P) : nullptr;
    b.grad_x = a.grad_x ? sc.take<Pack>(K * d0) : nullptr;
    b.grad_qx = a.grad_qx ? sc.take<Pack>(Q * d0) : nullptr;
    if (!scratch) return sc.used;
    gather_pack(g_adapted, a.grad_adapted, P, first, n);
    if (g_losses) gather_pack(g_losses, a.grad_losses, S_, first, n);
    if (g_qout) gather_pack(g_qout, a.grad_query_output, Q * dL, first, n);
    if (g_qloss) gather_pack(g_qloss, a.grad_query_losses, 1, first, n);
    if (adapted) gather_pack(adapted, a.adapted, P, first, n);
    gather_pack(trajectory, a.trajectory, S_ * P, first, n);
    mlp_adapt_backward_task<Pack>(PackLanes{}, b, 0, b.p.workspace);
    scatter_pack(a.grad_init, b.grad_init, P, first, n);
    if (a.grad_lrs) scatter_pack(a.grad_lrs, b.grad_lrs, P, first, n);
    if (a.grad_x) scatter_pack(a.grad_x, b.grad_x, K * d0, first, n);
    if (a.grad_qx) scatter_pack(a.grad_qx, b.grad_qx, Q * d0, first, n);
    return sc.used;
  }

  // The forward or the backward, by argument type.
  static size_t run(const MlpAdaptForwardArgs<S>& a, int64_t first, int n, unsigned char* scratch) {
    return forward(a, first, n, scratch);
  }
  static size_t run(const MlpAdaptBackwardArgs<S>& a, int64_t first, int n, unsigned char* scratch) {
    return backward(a, first, n, scratch);
  }
  // Bytes of scratch one pack needs: the same calls with no scratch only count.
  template <typename Args>
  static size_t scratch_bytes(const Args& a) { return run(a, 0, 0, nullptr); }
};

}  // namespace metafast
