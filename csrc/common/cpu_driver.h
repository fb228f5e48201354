// The CPU driver of a per-task op (run_on_cpu): tasks or task packs spread
// over torch's threads, in one of two decompositions:
//  - task packs (kernels/core/task_pack.h): one vector register of tasks (16
//    float32 or 8 float64 with AVX-512) run together, one task per SIMD lane,
//    packs spread over the threads. Full vectors whatever the layer widths:
//    small nets.
//  - per task: one task at a time per thread, the inner loops vectorized over
//    a layer's width: larger nets (see kMaxPackScratch).
// METAFAST_CPU_KERNEL=packed|per-task forces one, METAFAST_CPU_ISA=baseline|avx2
// lowers the x86 level (tests, benchmarks). The loops themselves:
// kernels/core/drivers.h.
#pragma once
#include <torch/csrc/stable/ops.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "kernels/core/drivers.h"

namespace metafast {

// The loops over tasks and packs (kernels/core/drivers.h), compiled for three
// x86 levels (a struct each); flatten inlines the whole per-task algorithm
// into each loop, so all of it gets that level's ISA. A pack is one vector
// register of tasks there.
#define MF_DEFINE_KERNELS(NAME, ISA_ATTRIBUTES, PACK_BYTES)                                        \
  struct NAME {                                                                                   \
    /* tasks of T per pack: one vector register */                                                \
    template <typename T>                                                                         \
    static constexpr int pack() { return int(PACK_BYTES / sizeof(T)); }                           \
    /* tasks [begin, end), one at a time */                                                       \
    template <typename Args>                                                                      \
    ISA_ATTRIBUTES static void tasks(const Args& a, int64_t begin, int64_t end) {                 \
      run_tasks(SerialLanes{}, a, begin, end);                                                    \
    }                                                                                             \
    /* packs [begin, end) */                                                                      \
    template <typename Packed, typename Args>                                                     \
    ISA_ATTRIBUTES static void packs(const Args& a, int64_t begin, int64_t end, unsigned char* s) { \
      run_packs<Packed>(a, begin, end, s);                                                        \
    }                                                                                             \
  };

// (Not target_clones("arch=haswell", ...): GCC dispatches those on the CPU
// *model*, so any other CPU, newer ones included, ran the SSE2 copy.)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MF_HAS_ISA_LEVELS 1
MF_DEFINE_KERNELS(BaselineKernels, __attribute__((flatten)), 16)
MF_DEFINE_KERNELS(Avx2Kernels, __attribute__((flatten, target("avx2,fma"))), 32)
MF_DEFINE_KERNELS(Avx512Kernels, __attribute__((flatten, target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma"))), 64)
#else
#define MF_HAS_ISA_LEVELS 0
MF_DEFINE_KERNELS(BaselineKernels, , 16)
#endif
#undef MF_DEFINE_KERNELS

enum class Isa { Baseline = 0, Avx2 = 1, Avx512 = 2 };

// The best level this CPU supports, lowered by METAFAST_CPU_ISA=baseline|avx2
// (read at every call, to test or time the other copies).
inline Isa cpu_isa() {
#if MF_HAS_ISA_LEVELS
  static const Isa best = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return Isa::Baseline;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
      return Isa::Avx512;
    return Isa::Avx2;
  }();
  const char* want = std::getenv("METAFAST_CPU_ISA");
  if (want && !std::strcmp(want, "baseline")) return Isa::Baseline;
  if (want && !std::strcmp(want, "avx2") && best != Isa::Baseline) return Isa::Avx2;
  return best;
#else
  return Isa::Baseline;
#endif
}

// f(Kernels{}) with the kernels of this CPU's level.
template <typename F>
void with_cpu_kernels(F&& f) {
#if MF_HAS_ISA_LEVELS
  switch (cpu_isa()) {
    case Isa::Avx512: return f(Avx512Kernels{});
    case Isa::Avx2: return f(Avx2Kernels{});
    default: break;
  }
#endif
  f(BaselineKernels{});
}

// A pack's scratch larger than this runs per task instead: measured on a
// 2-core AVX-512 Xeon (benchmarks/bench_cpu_rules.py, T = 32), packs were
// 1.2-2.3x faster up to about 20,000 parameters and per task 1.5-1.8x faster
// from about 55,000, where a pack's working set (16 copies of everything) no
// longer stays in cache.
constexpr size_t kMaxPackScratch = size_t(16) << 20;

inline bool use_task_packs(size_t pack_scratch_bytes) {
  if (const char* force = std::getenv("METAFAST_CPU_KERNEL")) {
    if (!std::strcmp(force, "packed")) return true;
    if (!std::strcmp(force, "per-task")) return false;
  }
  return pack_scratch_bytes <= kMaxPackScratch;
}

// 64-byte-aligned scratch for the packs one thread runs. Up to kMaxPackScratch
// it is kept per thread between calls: a fresh allocation of a megabyte or more
// per call was paid again in page faults (4% of a T = 200 iteration). Larger
// ones (METAFAST_CPU_KERNEL=packed on a large net) are freed after the call.
struct PackScratch {
  std::unique_ptr<unsigned char[]> own;
  unsigned char* data;
  explicit PackScratch(size_t bytes) {
    thread_local std::unique_ptr<unsigned char[]> cached;
    thread_local size_t capacity = 0;
    unsigned char* base;
    if (bytes <= kMaxPackScratch) {
      if (capacity < bytes + 64) {
        cached.reset(new unsigned char[bytes + 64]);
        capacity = bytes + 64;
      }
      base = cached.get();
    } else {
      own.reset(new unsigned char[bytes + 64]);
      base = own.get();
    }
    data = base + (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
  }
};

// The CPU driver of a per-task op: every task of `a` on torch's threads, at
// the best x86 level of this CPU, in task packs Packed<T, W> (W tasks: one
// vector register) while one pack's scratch is at most kMaxPackScratch
// bytes, else one task at a time with the global [T, W] workspace that
// `global_workspace()` allocates (and keeps alive) and returns.
template <template <typename, int> class Packed, typename T, typename Args, typename GlobalWorkspace>
void run_on_cpu(Args& a, GlobalWorkspace&& global_workspace) {
  with_cpu_kernels([&](auto kernels) {
    using K = decltype(kernels);
    using P = Packed<T, K::template pack<T>()>;
    const size_t bytes = P::scratch_bytes(a);
    if (use_task_packs(bytes)) {
      torch::stable::parallel_for(0, num_packs<P>(a.p.tasks), 1, [&](int64_t b, int64_t e) {
        PackScratch scratch(bytes);
        K::template packs<P>(a, b, e, scratch.data);
      });
    } else {
      a.p.workspace = global_workspace();
      torch::stable::parallel_for(0, a.p.tasks, 1, [&](int64_t b, int64_t e) { K::tasks(a, b, e); });
    }
  });
}

}  // namespace metafast
