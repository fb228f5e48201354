// The problem of one mlp_adapt call as the per-task algorithm reads it: the
// shape the host checked (MlpShape), the update rule, the examples of every
// task (MlpExamples: support and query sets) and the scratch. Every
// MlpProblem is made by mlp_problem(), the one place its fields are filled
// (by the host, ops/mlp_adapt/host.h; by the task packs, kernels/mlp/pack.h;
// by the tests, tests/cpp/).
#pragma once
#include "kernels/mlp/layout.h"

namespace metafast {

// The network and the problem sizes of one call.
struct MlpShape : MlpNet {
  int tasks = 0, shots = 0, queries = 0, steps = 0;  // T, K, Q (0: no query set), S
  // MAML++: lrs holds a rate per step ([S, P], LSLR) rather than one set ([P],
  // Meta-SGD); the query loss is taken after every step (MSL: query_losses
  // [T, S]) rather than after the last only ([T]).
  bool step_rates = false, query_every_step = false;

  MF_HD int query_loss_count() const { return query_every_step ? steps : 1; }  // per task
  MF_HD int64_t rate_count() const { return (step_rates ? steps : 1) * layout.num_params; }  // lrs' elements
  // Examples the workspace holds at a time (the support or the query set).
  MF_HD int rows() const { return shots > queries ? shots : queries; }
  MF_HD int classes() const { return layout.sizes[layout.num_layers]; }  // d_L
  // W: the per-task workspace's elements.
  MF_HD int64_t workspace_per_task() const { return mlp_workspace_size(layout, rows()); }
};

// One set of examples of every task (the support or the query set), n per task.
template <typename T>
struct MlpExamples {
  const T* x = nullptr;                 // [T, n, d_0]
  const T* y_float = nullptr;           // [T, n, d_L] (MSE) or nullptr
  const label_t<T>* y_class = nullptr;  // [T, n] (cross-entropy) or nullptr
  const T* weights = nullptr;           // [T, n] per-example loss weights, or nullptr: all 1 (queries: always)
};

// What the forward and the backward of one call share.
template <typename T>
struct MlpProblem : MlpShape {
  T lr;
  const T* lrs;                   // [P] per-parameter rates (Meta-SGD), [S, P] (step_rates), or nullptr: lr
  MlpExamples<T> support, query;  // query: all nullptr without a query set
  T* workspace;                   // [T, W] global scratch, or nullptr where the GPU's shared memory serves
  int64_t workspace_stride;       // W

  // The rates of inner step s: a [P] vector, or nullptr (the scalar lr).
  MF_HD const T* step_lrs(int s) const { return lrs && step_rates ? lrs + int64_t(s) * layout.num_params : lrs; }
  MF_HD static T rate(const T* rates, const T& lr, int64_t p) { return rates ? rates[p] : lr; }
  // One task's support or query examples.
  MF_HD MlpTaskData<T> task_data(int task, bool is_query) const {
    const int n = is_query ? queries : shots;
    const MlpExamples<T>& e = is_query ? query : support;
    MlpTaskData<T> d;
    d.shots = n;
    d.x = e.x + int64_t(task) * n * layout.sizes[0];
    d.y_float = e.y_float ? e.y_float + int64_t(task) * n * classes() : nullptr;
    d.y_class = e.y_class ? e.y_class + int64_t(task) * n : nullptr;
    d.weights = e.weights ? e.weights + int64_t(task) * n : nullptr;
    return d;
  }
};

template <typename T>
MF_HD MlpProblem<T> mlp_problem(const MlpShape& shape, const T& lr, const T* lrs, const MlpExamples<T>& support,
                                const MlpExamples<T>& query, T* workspace) {
  MlpProblem<T> p;
  static_cast<MlpShape&>(p) = shape;
  p.lr = lr;
  p.lrs = lrs;
  p.support = support;
  p.query = query;
  p.workspace = workspace;
  p.workspace_stride = shape.workspace_per_task();
  return p;
}

}  // namespace metafast
