// A C entry point to the float64 per-task algorithms of csrc/kernels/mlp/task.h
// run with SerialLanes (the CPU's per-task path) or in task packs of 2 or 8
// (kernels/mlp/pack.h, the CPU's path for small nets; mf_test_set_pack_width),
// built by tests/test_lanes.py
// as a shared library and called through ctypes, so that the kernels'
// NaN semantics can be compared with PyTorch's eager autograd without
// building the extension. Arrays are contiguous float64 / int64 with the
// shapes of metafast::mlp_adapt and mlp_adapt_backward (support weights
// [T, K] after the rates); optional ones are NULL. The structs of
// kernels/mlp (examples, arguments) are filled by aggregate initialisation, in
// the order of their fields.
#include <stdint.h>

#include <algorithm>
#include <vector>

#include "kernels/core/drivers.h"
#include "kernels/mlp/pack.h"
#include "kernels/mlp/task.h"

using namespace metafast;

namespace {

MlpProblem<double> problem(const int64_t* sizes, int n, int act, int loss, int tasks, int shots, int queries,
                           int steps, double lr, const double* lrs, const double* weights, const double* x,
                           const double* y_float, const int64_t* y_class, const double* qx, const double* qy_float,
                           const int64_t* qy_class, std::vector<double>& workspace) {
  MlpShape shape;
  shape.layout = mlp_layout(sizes, n);
  shape.act = Activation(act);
  shape.loss = Loss(loss);
  shape.tasks = tasks;
  shape.shots = shots;
  shape.queries = queries;
  shape.steps = steps;
  MlpExamples<double> support{x, y_float, y_class, weights}, query{qx, qy_float, qy_class};
  workspace.assign(size_t(tasks * shape.workspace_per_task()), __builtin_nan(""));
  return mlp_problem<double>(shape, lr, lrs, support, query, workspace.data());
}

int pack_width = 0;  // 0: SerialLanes, one task at a time

template <int W, typename Args>
void in_packs(const Args& a) {
  using Packed = PackedMlpAdapt<double, W>;
  std::vector<TaskPack<double, W>> scratch(Packed::scratch_bytes(a) / sizeof(TaskPack<double, W>) + 1);
  run_packs<Packed>(a, 0, num_packs<Packed>(a.p.tasks), reinterpret_cast<unsigned char*>(scratch.data()));
}

// Every task, in packs of pack_width or one at a time (SerialLanes).
template <typename Args>
void run(const Args& a) {
  if (pack_width == 2) return in_packs<2>(a);
  if (pack_width == 8) return in_packs<8>(a);
  run_tasks(SerialLanes{}, a, 0, a.p.tasks);
}

}  // namespace

extern "C" {

// 0 (SerialLanes), 2 or 8 (task packs of that many tasks).
int mf_test_set_pack_width(int w) {
  if (w != 0 && w != 2 && w != 8) return -1;
  pack_width = w;
  return 0;
}

int mf_test_num_params(const int64_t* sizes, int n) { return int(mlp_layout(sizes, n).num_params); }

void mf_test_mlp_adapt(const int64_t* sizes, int n, int act, int loss, int tasks, int shots, int queries, int steps,
                       double lr, const double* lrs, const double* weights, const double* init, const double* x,
                       const double* y_float,
                       const int64_t* y_class, const double* qx, const double* qy_float, const int64_t* qy_class,
                       double* adapted, double* losses, double* query_output, double* query_losses,
                       double* trajectory) {
  std::vector<double> ws;
  run(MlpAdaptForwardArgs<double>{problem(sizes, n, act, loss, tasks, shots, queries, steps, lr, lrs, weights, x,
                                          y_float, y_class, qx, qy_float, qy_class, ws),
                                  init, adapted, losses, query_output, query_losses, trajectory});
}

void mf_test_mlp_adapt_backward(const int64_t* sizes, int n, int act, int loss, int tasks, int shots, int queries,
                                int steps, double lr, const double* lrs, const double* weights, const double* x,
                                const double* y_float,
                                const int64_t* y_class, const double* qx, const double* qy_float,
                                const int64_t* qy_class, int second_order, const double* grad_adapted,
                                const double* grad_losses, const double* grad_query_output,
                                const double* grad_query_losses, const double* adapted, const double* trajectory,
                                double* grad_init, double* grad_lrs, double* grad_x, double* grad_qx) {
  std::vector<double> ws;
  run(MlpAdaptBackwardArgs<double>{problem(sizes, n, act, loss, tasks, shots, queries, steps, lr, lrs, weights, x,
                                           y_float, y_class, qx, qy_float, qy_class, ws),
                                   second_order != 0, grad_adapted, grad_losses, grad_query_output,
                                   grad_query_losses, adapted, trajectory, grad_init, grad_lrs, grad_x, grad_qx});
}

}  // extern "C"
