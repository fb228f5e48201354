// Task packs: the CPU's way to fill its vector units with small MAML nets.
//
// A TaskPack<S, W> holds one scalar of each of W tasks (one task per SIMD
// lane). Every task of a meta-batch runs the same shapes and the same
// instruction stream, so a per-task algorithm (kernels/mlp/task.h), run with
// T = TaskPack (and PackLanes, kernels/core/lanes.h), adapts W tasks at once,
// each vector instruction doing one scalar step of every task: no horizontal
// sums, no
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
// An op's Packed class (kernels/mlp/pack.h: PackedMlpAdapt) gathers W tasks'
// inputs into pack layout ([..., W]) with the helpers below, runs the per-task
// algorithm on them and scatters the results back; a partial last pack
// repeats its first task in the unused lanes (valid data, results discarded).
// The loop over packs: run_packs (kernels/core/drivers.h).
//
// GCC/Clang vector extensions; host only. The CPU kernel makes a pack one
// vector register of the ISA level it runs (common/cpu_driver.h).
#pragma once
#include "kernels/core/portability.h"

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

}  // namespace metafast
