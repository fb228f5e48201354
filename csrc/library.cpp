// Every metafast op schema, declared once, and the Python module metafast._C
// whose import registers them (kernels: csrc/ops/<op>/; autograd and
// fake kernels: metafast/ops/*.py). Built on the LibTorch stable ABI and the
// Python limited API, so one binary serves every torch >= 2.11 and Python >= 3.10.
#include <Python.h>
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(metafast, m) {
  // θ' = θ − lr·g (or θ − lrs⊙g, Meta-SGD) for each entry of a list; operands
  // may carry a leading task dimension.
  m.def("sgd_update(Tensor[] params, Tensor[] grads, float lr, Tensor[]? lrs) -> Tensor[]");
  // The whole MAML inner loop of an MLP for every task of a meta-batch, and
  // (with a query set) the query forward at the adapted parameters. Returns
  // (adapted [T, P], support_losses [T, steps], query_output [T, Q, d_out],
  //  query_losses [T], trajectory [T, steps, P]); query outputs are empty
  // without a query set. lrs: [P] (Meta-SGD) or [steps, P] (a row per step,
  // MAML++'s LSLR); query_every_step: query_losses [T, steps], the query loss
  // after every step (MAML++'s multi-step loss). support_weights [T, K] weighs each support example's
  // loss (a task's support loss is Σ_k w_k·ℓ_k / K; absent: all 1); they are
  // data, not differentiated.
  m.def(
      "mlp_adapt(Tensor params, Tensor? lrs, float lr, Tensor support_x, Tensor support_y, Tensor? query_x, "
      "Tensor? query_y, int[] sizes, int steps, str activation, str loss, bool first_order, "
      "Tensor? support_weights=None, bool query_every_step=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Exact reverse of mlp_adapt (an absent upstream gradient contributes
  // nothing, not zero times a possibly-NaN term); returns per-task (grad_params [T, P], grad_lrs
  // [T, P] or [T, steps, P], grad_support_x [T, K, d_in], grad_query_x [T, Q, d_in]), each empty
  // unless asked for (params always).
  m.def(
      "mlp_adapt_backward(Tensor grad_adapted, Tensor? grad_losses, Tensor? grad_query_output, "
      "Tensor? grad_query_losses, Tensor adapted, Tensor trajectory, Tensor params, Tensor? lrs, float lr, "
      "Tensor support_x, Tensor support_y, Tensor? query_x, Tensor? query_y, int[] sizes, str activation, "
      "str loss, bool first_order, bool lrs_grad, bool x_grad, bool query_x_grad, Tensor? support_weights=None, "
      "bool query_every_step=False) -> (Tensor, Tensor, Tensor, Tensor)");
  // One meta-iteration in one call: mlp_adapt with its query set, then its
  // backward with grad_query_losses (the meta-loss's weight of each query loss,
  // [T] or [T, steps]) as the only upstream gradient. Returns (support_losses
  // [T, steps], query_output [T, Q, d_out], query_losses, grad_params [P],
  // grad_lrs [P] or [steps, P], empty unless lrs_grad): the gradients of
  // Σ grad_query_losses·query_losses, summed over the tasks. Not differentiable.
  m.def(
      "mlp_meta_grad(Tensor params, Tensor? lrs, float lr, Tensor support_x, Tensor support_y, Tensor query_x, "
      "Tensor query_y, int[] sizes, int steps, str activation, str loss, bool first_order, "
      "Tensor grad_query_losses, bool lrs_grad, Tensor? support_weights=None, bool query_every_step=False) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// An empty module: importing it runs the registrations above.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "metafast C++ kernels (torch.ops.metafast)", -1,
                                   nullptr};
  return PyModule_Create(&module_def);
}
