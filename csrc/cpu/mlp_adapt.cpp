// CPU kernels of metafast::mlp_adapt and mlp_adapt_backward: the per-task
// algorithm of kernels/mlp_adapt.h on torch's threads, in one of two
// decompositions:
//  - task packs (kernels/task_pack.h): 64 bytes of tasks (16 float32 or 8
//    float64) run together, one task per SIMD lane, packs spread over the
//    threads. Full vectors whatever the layer widths: small nets.
//  - per task: one task at a time per thread, the inner loops vectorized over
//    a layer's width. Used when a pack's scratch would not stay in cache
//    (large nets), or METAFAST_CPU_KERNEL=per-task.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <cstdlib>
#include <cstring>
#include <memory>

#include "kernels/task_pack.h"
#include "mlp_adapt_host.h"

namespace metafast {
namespace {

// The per-task loops are compiled for several x86 levels (SSE2, AVX2+FMA,
// AVX-512) and the best one the CPU supports is picked at load time; flatten
// inlines the whole shared algorithm into each clone.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MF_CPU_CLONES __attribute__((flatten, target_clones("default", "arch=haswell", "arch=skylake-avx512")))
#else
#define MF_CPU_CLONES
#endif

#define MF_DEFINE_TASK_RUNNERS(T)                                                                       \
  MF_CPU_CLONES void run_forward_tasks(const MlpAdaptForwardArgs<T>& a, int64_t begin, int64_t end) {   \
    for (int64_t t = begin; t < end; ++t)                                                               \
      mlp_adapt_forward_task<T>(SerialLanes{}, a, int(t), a.p.workspace + t * a.p.workspace_stride);    \
  }                                                                                                     \
  MF_CPU_CLONES void run_backward_tasks(const MlpAdaptBackwardArgs<T>& a, int64_t begin, int64_t end) { \
    for (int64_t t = begin; t < end; ++t)                                                               \
      mlp_adapt_backward_task<T>(SerialLanes{}, a, int(t), a.p.workspace + t * a.p.workspace_stride);   \
  }                                                                                                     \
  MF_CPU_CLONES void run_forward_packs(const MlpAdaptForwardArgs<T>& a, int64_t begin, int64_t end,     \
                                       unsigned char* scratch) {                                        \
    using Packed = PackedMlpAdapt<T, kPackBytes / sizeof(T)>;                                           \
    for (int64_t g = begin; g < end; ++g) Packed::forward(a, g * kPack<T>, pack_size<T>(a.p, g), scratch); \
  }                                                                                                     \
  MF_CPU_CLONES void run_backward_packs(const MlpAdaptBackwardArgs<T>& a, int64_t begin, int64_t end,   \
                                        unsigned char* scratch) {                                       \
    using Packed = PackedMlpAdapt<T, kPackBytes / sizeof(T)>;                                           \
    for (int64_t g = begin; g < end; ++g) Packed::backward(a, g * kPack<T>, pack_size<T>(a.p, g), scratch); \
  }

// One AVX-512 register of tasks (two AVX2 or four SSE registers elsewhere).
constexpr size_t kPackBytes = 64;
template <typename T>
constexpr int kPack = int(kPackBytes / sizeof(T));
template <typename T>
int pack_size(const MlpProblem<T>& p, int64_t g) { return int(std::min<int64_t>(kPack<T>, p.tasks - g * kPack<T>)); }

MF_DEFINE_TASK_RUNNERS(float)
MF_DEFINE_TASK_RUNNERS(double)

// A pack's scratch larger than this (about a core's L2) runs per task instead:
// the per-task loops then stream far less memory.
constexpr size_t kMaxPackScratch = size_t(4) << 20;

bool use_task_packs(size_t pack_scratch_bytes) {
  if (const char* force = std::getenv("METAFAST_CPU_KERNEL")) {
    if (!std::strcmp(force, "packed")) return true;
    if (!std::strcmp(force, "per-task")) return false;
  }
  return pack_scratch_bytes <= kMaxPackScratch;
}

// 64-byte-aligned scratch for the packs one thread runs.
struct PackScratch {
  std::unique_ptr<unsigned char[]> owner;
  unsigned char* data;
  explicit PackScratch(size_t bytes) : owner(new unsigned char[bytes + 64]) {
    data = owner.get() + (64 - reinterpret_cast<uintptr_t>(owner.get()) % 64) % 64;
  }
};

// Packs (or tasks) spread over torch's threads, one at a time per thread.
// The per-task path's workspace [T, W] is allocated only when it runs.
template <typename T, typename Call>
void run_forward(Call& f, double lr, const Tensor& params) {
  Tensor workspace = task_workspace(f.c, params, false);
  MlpAdaptForwardArgs<T> a = f.template args<T>(lr, workspace);
  const size_t bytes = PackedMlpAdapt<T, kPack<T>>::forward_scratch_bytes(a);
  if (use_task_packs(bytes)) {
    torch::stable::parallel_for(0, PackedMlpAdapt<T, kPack<T>>::num_packs(a.p.tasks), 1, [&](int64_t b, int64_t e) {
      PackScratch scratch(bytes);
      run_forward_packs(a, b, e, scratch.data);
    });
  } else {
    workspace = task_workspace(f.c, params, true);
    a.p.workspace = workspace.mutable_data_ptr<T>();
    torch::stable::parallel_for(0, a.p.tasks, 1, [&](int64_t b, int64_t e) { run_forward_tasks(a, b, e); });
  }
}
template <typename T, typename Call>
void run_backward(Call& c, double lr, const Tensor& params) {
  Tensor workspace = task_workspace(c.c, params, false);
  MlpAdaptBackwardArgs<T> a = c.template args<T>(lr, workspace);
  const size_t bytes = PackedMlpAdapt<T, kPack<T>>::backward_scratch_bytes(a);
  if (use_task_packs(bytes)) {
    torch::stable::parallel_for(0, PackedMlpAdapt<T, kPack<T>>::num_packs(a.p.tasks), 1, [&](int64_t b, int64_t e) {
      PackScratch scratch(bytes);
      run_backward_packs(a, b, e, scratch.data);
    });
  } else {
    workspace = task_workspace(c.c, params, true);
    a.p.workspace = workspace.mutable_data_ptr<T>();
    torch::stable::parallel_for(0, a.p.tasks, 1, [&](int64_t b, int64_t e) { run_backward_tasks(a, b, e); });
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> mlp_adapt_cpu(
    Tensor params, OptTensor lrs, double lr, Tensor support_x, Tensor support_y, OptTensor query_x,
    OptTensor query_y, std::vector<int64_t> sizes, int64_t steps, std::string activation, std::string loss,
    bool first_order) {
  MF_CHECK(params.is_cpu(), "metafast::mlp_adapt (CPU): params must be on the CPU");
  auto f = prepare_forward(params, lrs, lr, support_x, support_y, query_x, query_y, sizes, steps, activation, loss);
  check_labels_on_host(f.c, f.in.y, f.in.qy);
  if (params.scalar_type() == ScalarType::Float)
    run_forward<float>(f, lr, params);
  else
    run_forward<double>(f, lr, params);
  return {f.adapted, f.losses, f.query_output, f.query_losses, f.trajectory};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> mlp_adapt_backward_cpu(
    Tensor grad_adapted, OptTensor grad_losses, OptTensor grad_query_output, OptTensor grad_query_losses,
    Tensor adapted, Tensor trajectory, Tensor params, OptTensor lrs, double lr, Tensor support_x, Tensor support_y,
    OptTensor query_x, OptTensor query_y, std::vector<int64_t> sizes, std::string activation, std::string loss,
    bool first_order, bool lrs_grad, bool x_grad, bool query_x_grad) {
  MF_CHECK(params.is_cpu(), "metafast::mlp_adapt_backward (CPU): params must be on the CPU");
  auto b = prepare_backward(grad_adapted, grad_losses, grad_query_output, grad_query_losses, adapted, trajectory,
                            params, lrs, lr, support_x, support_y, query_x, query_y, sizes, activation, loss,
                            first_order, lrs_grad, x_grad, query_x_grad);
  check_labels_on_host(b.c, b.in.y, b.in.qy);
  if (params.scalar_type() == ScalarType::Float)
    run_backward<float>(b, lr, params);
  else
    run_backward<double>(b, lr, params);
  return {b.grad_init, b.grad_lrs, b.grad_x, b.grad_qx};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(metafast, CPU, m) {
  m.impl("mlp_adapt", TORCH_BOX(&mlp_adapt_cpu));
  m.impl("mlp_adapt_backward", TORCH_BOX(&mlp_adapt_backward_cpu));
}

}  // namespace metafast
