// metafast::mlp_adapt in task packs: the CPU's path for small nets, W tasks
// per vector register, one per SIMD lane (kernels/core/task_pack.h). Host only.
#pragma once
#include "kernels/core/lanes.h"
#include "kernels/core/task_pack.h"
#include "kernels/mlp/task.h"

namespace metafast {

// ---------------------------------------------------------------------------
// The forward and backward of kernels/mlp/task.h on packs of W tasks, for
// run_pack / run_packs (kernels/core/drivers.h). `scratch`: scratch_bytes()
// bytes, 64-byte aligned, per concurrent pack.
// ---------------------------------------------------------------------------
template <typename S, int W>
struct PackedMlpAdapt {
  static constexpr int kWidth = W;
  using Pack = TaskPack<S, W>;
  using Labels = LabelPack<S, W>;

  // One set of examples in pack layout, carved from `sc` and, when it has a
  // base, gathered from tasks [first, first + n).
  static MlpExamples<Pack> pack_examples(const MlpExamples<S>& e, int64_t rows, int64_t d0, int64_t dL, int64_t first,
                                         int n, ScratchCarver& sc) {
    Pack* x = sc.take<Pack>(rows * d0);
    Pack* y = e.y_float ? sc.take<Pack>(rows * dL) : nullptr;
    Labels* yc = e.y_class ? sc.take<Labels>(rows) : nullptr;
    Pack* w = e.weights ? sc.take<Pack>(rows) : nullptr;
    if (sc.base) {
      gather_pack(x, e.x, rows * d0, first, n);
      if (y) gather_pack(y, e.y_float, rows * dL, first, n);
      if (yc) gather_labels(yc, e.y_class, rows, first, n);
      if (w) gather_pack(w, e.weights, rows, first, n);
    }
    MlpExamples<Pack> packed;
    packed.x = x;
    packed.y_float = y;
    packed.y_class = yc;
    packed.weights = w;
    return packed;
  }

  // The problem of one pack (tasks = 1), its inputs gathered into `sc`.
  static MlpProblem<Pack> pack_problem(const MlpProblem<S>& pr, int64_t first, int n, ScratchCarver& sc) {
    const int64_t d0 = pr.layout.sizes[0], dL = pr.classes();
    MlpShape shape = pr;
    shape.tasks = 1;
    Pack* lrs = pr.lrs ? sc.take<Pack>(pr.rate_count()) : nullptr;
    if (lrs && sc.base) broadcast_pack(lrs, pr.lrs, pr.rate_count());
    const MlpExamples<Pack> support = pack_examples(pr.support, pr.shots, d0, dL, first, n, sc);
    const MlpExamples<Pack> query =
        pr.queries ? pack_examples(pr.query, pr.queries, d0, dL, first, n, sc) : MlpExamples<Pack>{};
    Pack* workspace = sc.take<Pack>(shape.workspace_per_task());
    return mlp_problem<Pack>(shape, Pack(pr.lr), lrs, support, query, workspace);
  }

  // The forward's arguments for a pack: its problem, inputs and outputs in
  // `sc`; the initial parameters broadcast to every lane when `sc` has a base.
  static MlpAdaptForwardArgs<Pack> pack_forward(const MlpProblem<S>& pr, const S* init, int64_t first, int n,
                                                ScratchCarver& sc) {
    const int64_t P = pr.layout.num_params, S_ = pr.steps, Q = pr.queries, dL = pr.layout.sizes[pr.layout.num_layers];
    MlpAdaptForwardArgs<Pack> f;
    f.p = pack_problem(pr, first, n, sc);
    Pack* packed_init = sc.take<Pack>(P);
    f.init = packed_init;
    f.adapted = sc.take<Pack>(P);
    f.losses = sc.take<Pack>(S_);
    f.query_output = Q ? sc.take<Pack>(Q * dL) : nullptr;
    f.query_losses = Q ? sc.take<Pack>(pr.query_loss_count()) : nullptr;
    f.trajectory = sc.take<Pack>(S_ * P);
    if (sc.base) broadcast_pack(packed_init, init, P);
    return f;
  }

  // Tasks [first, first + n) of the forward, n <= W. Returns the scratch bytes
  // used (all it does without scratch).
  static size_t forward(const MlpAdaptForwardArgs<S>& a, int64_t first, int n, unsigned char* scratch) {
    const MlpProblem<S>& pr = a.p;
    const int64_t P = pr.layout.num_params, S_ = pr.steps, Q = pr.queries, dL = pr.layout.sizes[pr.layout.num_layers];
    ScratchCarver sc{scratch};
    const MlpAdaptForwardArgs<Pack> b = pack_forward(pr, a.init, first, n, sc);
    if (!scratch) return sc.used;
    run_task(PackLanes{}, b, 0, b.p.workspace);
    scatter_pack(a.adapted, b.adapted, P, first, n);
    scatter_pack(a.losses, b.losses, S_, first, n);
    if (Q) {
      scatter_pack(a.query_output, b.query_output, Q * dL, first, n);
      scatter_pack(a.query_losses, b.query_losses, pr.query_loss_count(), first, n);
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
    Pack* g_adapted = a.grad_adapted ? sc.take<Pack>(P) : nullptr;
    Pack* g_losses = a.grad_losses ? sc.take<Pack>(S_) : nullptr;
    Pack* g_qout = a.grad_query_output ? sc.take<Pack>(Q * dL) : nullptr;
    Pack* g_qloss = a.grad_query_losses ? sc.take<Pack>(pr.query_loss_count()) : nullptr;
    Pack* adapted = a.adapted ? sc.take<Pack>(P) : nullptr;
    Pack* trajectory = sc.take<Pack>(S_ * P);
    b.grad_adapted = g_adapted;
    b.grad_losses = g_losses;
    b.grad_query_output = g_qout;
    b.grad_query_losses = g_qloss;
    b.adapted = adapted;
    b.trajectory = trajectory;
    b.grad_init = sc.take<Pack>(P);
    b.grad_lrs = a.grad_lrs ? sc.take<Pack>(pr.rate_count()) : nullptr;
    b.grad_x = a.grad_x ? sc.take<Pack>(K * d0) : nullptr;
    b.grad_qx = a.grad_qx ? sc.take<Pack>(Q * d0) : nullptr;
    if (!scratch) return sc.used;
    if (g_adapted) gather_pack(g_adapted, a.grad_adapted, P, first, n);
    if (g_losses) gather_pack(g_losses, a.grad_losses, S_, first, n);
    if (g_qout) gather_pack(g_qout, a.grad_query_output, Q * dL, first, n);
    if (g_qloss) gather_pack(g_qloss, a.grad_query_losses, pr.query_loss_count(), first, n);
    if (adapted) gather_pack(adapted, a.adapted, P, first, n);
    gather_pack(trajectory, a.trajectory, S_ * P, first, n);
    run_task(PackLanes{}, b, 0, b.p.workspace);
    scatter_pack(a.grad_init, b.grad_init, P, first, n);
    if (a.grad_lrs) scatter_pack(a.grad_lrs, b.grad_lrs, pr.rate_count(), first, n);
    if (a.grad_x) scatter_pack(a.grad_x, b.grad_x, K * d0, first, n);
    if (a.grad_qx) scatter_pack(a.grad_qx, b.grad_qx, Q * d0, first, n);
    return sc.used;
  }

  // One meta-iteration on a pack: the forward, then the backward from its
  // adapted parameters, trajectory and primal record, which stay in the pack's
  // scratch (no scatter to [T, S, P] and gather back); only the support losses,
  // the query outputs and losses and the gradients are scattered.
  static size_t meta_grad(const MlpMetaGradArgs<S>& a, int64_t first, int n, unsigned char* scratch) {
    const MlpProblem<S>& pr = a.p;
    const int64_t P = pr.layout.num_params, S_ = pr.steps, Q = pr.queries, dL = pr.layout.sizes[pr.layout.num_layers];
    ScratchCarver sc{scratch};
    MlpAdaptForwardArgs<Pack> f = pack_forward(pr, a.forward.init, first, n, sc);  // Q > 0: the host checked
    MlpAdaptBackwardArgs<Pack> b;
    b.p = f.p;
    b.second_order = a.backward.second_order;
    b.grad_adapted = nullptr;
    b.grad_losses = nullptr;
    b.grad_query_output = nullptr;
    Pack* g_qloss = sc.take<Pack>(pr.query_loss_count());
    b.grad_query_losses = g_qloss;
    b.adapted = f.adapted;
    b.trajectory = f.trajectory;
    b.grad_init = sc.take<Pack>(P);
    b.grad_lrs = a.backward.grad_lrs ? sc.take<Pack>(pr.rate_count()) : nullptr;
    b.grad_x = nullptr;
    b.grad_qx = nullptr;
    Pack* primal = sc.take<Pack>(S_ * mlp_primal_size(pr.layout, pr.shots));
    f.primal = primal;
    b.primal = primal;
    if (!scratch) return sc.used;
    run_task(PackLanes{}, f, 0, f.p.workspace);
    scatter_pack(a.forward.losses, f.losses, S_, first, n);
    scatter_pack(a.forward.query_output, f.query_output, Q * dL, first, n);
    scatter_pack(a.forward.query_losses, f.query_losses, pr.query_loss_count(), first, n);
    gather_pack(g_qloss, a.backward.grad_query_losses, pr.query_loss_count(), first, n);
    run_task(PackLanes{}, b, 0, b.p.workspace);
    scatter_pack(a.backward.grad_init, b.grad_init, P, first, n);
    if (b.grad_lrs) scatter_pack(a.backward.grad_lrs, b.grad_lrs, pr.rate_count(), first, n);
    return sc.used;
  }

  // The forward, the backward or both, by argument type.
  static size_t run(const MlpAdaptForwardArgs<S>& a, int64_t first, int n, unsigned char* scratch) {
    return forward(a, first, n, scratch);
  }
  static size_t run(const MlpAdaptBackwardArgs<S>& a, int64_t first, int n, unsigned char* scratch) {
    return backward(a, first, n, scratch);
  }
  static size_t run(const MlpMetaGradArgs<S>& a, int64_t first, int n, unsigned char* scratch) {
    return meta_grad(a, first, n, scratch);
  }
  // Bytes of scratch one pack needs: the same calls with no scratch only count.
  template <typename Args>
  static size_t scratch_bytes(const Args& a) { return run(a, 0, 0, nullptr); }
};

}  // namespace metafast
