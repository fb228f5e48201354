// CPU kernels of metafast::mlp_adapt and mlp_adapt_backward: the per-task
// algorithm of kernels/mlp/task.h on torch's threads, in one of two
// decompositions:
//  - task packs (kernels/core/task_pack.h): one vector register of tasks (16
//    float32 or 8 float64 with AVX-512) run together, one task per SIMD lane,
//    packs spread over the threads. Full vectors whatever the layer widths:
//    small nets.
//  - per task: one task at a time per thread, the inner loops vectorized over
//    a layer's width: larger nets (see kMaxPackScratch).
// METAFAST_CPU_KERNEL=packed|per-task forces one (tests, benchmarks).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>

#include "kernels/core/task_pack.h"
#include "ops/mlp_adapt/host.h"

namespace metafast {
namespace {

// The loops over tasks and packs, compiled for three x86 levels (a struct
// each); flatten inlines the whole shared algorithm into each loop, so all of
// it gets that level's ISA. A pack is one vector register of tasks there.
#define MF_DEFINE_KERNELS(NAME, ISA_ATTRIBUTES, PACK_BYTES)                                                   \
  struct NAME {                                                                                              \
    template <typename T>                                                                                    \
    using Packed = PackedMlpAdapt<T, int(PACK_BYTES / sizeof(T))>;                                           \
    template <typename T>                                                                                    \
    static constexpr int pack() { return int(PACK_BYTES / sizeof(T)); }                                      \
    /* tasks [begin, end), one at a time */                                                                  \
    template <typename T>                                                                                    \
    ISA_ATTRIBUTES static void tasks(const MlpAdaptForwardArgs<T>& a, int64_t begin, int64_t end) {          \
      for (int64_t t = begin; t < end; ++t)                                                                  \
        mlp_adapt_forward_task<T>(SerialLanes{}, a, int(t), a.p.workspace + t * a.p.workspace_stride);       \
    }                                                                                                        \
    template <typename T>                                                                                    \
    ISA_ATTRIBUTES static void tasks(const MlpAdaptBackwardArgs<T>& a, int64_t begin, int64_t end) {         \
      for (int64_t t = begin; t < end; ++t)                                                                  \
        mlp_adapt_backward_task<T>(SerialLanes{}, a, int(t), a.p.workspace + t * a.p.workspace_stride);      \
    }                                                                                                        \
    /* packs [begin, end), the forward or the backward by argument type */                                  \
    template <typename Args>                                                                                 \
    ISA_ATTRIBUTES static void packs(const Args& a, int64_t begin, int64_t end, unsigned char* scratch) {    \
      using T = std::remove_const_t<std::remove_pointer_t<decltype(a.p.x)>>;                                 \
      for (int64_t g = begin; g < end; ++g)                                                                  \
        Packed<T>::run(a, g * pack<T>(), int(std::min<int64_t>(pack<T>(), a.p.tasks - g * pack<T>())), scratch); \
    }                                                                                                        \
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
Isa cpu_isa() {
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

bool use_task_packs(size_t pack_scratch_bytes) {
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

// The CPU backend of the op body (run_mlp_adapt, ops/mlp_adapt/host.h): packs
// (or tasks) spread over torch's threads, one at a time per thread, for the
// forward or the backward call `call`. The per-task path's workspace [T, W] is
// allocated only when it runs.
struct MlpAdaptCpu {
  using Device = CpuDevice;
  template <typename T, typename Call>
  static void run(Call& call) {
    check_labels_on_host(call.c, call.in.y, call.in.qy);
    Tensor workspace = task_workspace(call.c, call.in.init, false);
    auto a = call.template args<T>(workspace);
    with_cpu_kernels([&](auto kernels) {
      using K = decltype(kernels);
      const size_t bytes = K::template Packed<T>::scratch_bytes(a);
      if (use_task_packs(bytes)) {
        const int64_t packs = (a.p.tasks + K::template pack<T>() - 1) / K::template pack<T>();
        torch::stable::parallel_for(0, packs, 1, [&](int64_t b, int64_t e) {
          PackScratch scratch(bytes);
          K::packs(a, b, e, scratch.data);
        });
      } else {
        workspace = task_workspace(call.c, call.in.init, true);
        a.p.workspace = workspace.mutable_data_ptr<T>();
        torch::stable::parallel_for(0, a.p.tasks, 1, [&](int64_t b, int64_t e) { K::tasks(a, b, e); });
      }
    });
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(metafast, CPU, m) {
  m.impl("mlp_adapt", TORCH_BOX(&mlp_adapt_op<MlpAdaptCpu>));
  m.impl("mlp_adapt_backward", TORCH_BOX(&mlp_adapt_backward_op<MlpAdaptCpu>));
}

}  // namespace metafast
