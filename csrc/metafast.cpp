// Every metafast op schema, declared once, and the pybind11 module metafast._C
// whose import registers them (kernels: csrc/cpu/*, csrc/cuda/*; autograd and
// fake kernels: metafast/ops/*.py).
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(metafast, m) {
  // θ' = θ − lr·g (or θ − lrs⊙g, Meta-SGD) for each entry of a list; operands
  // may carry a leading task dimension.
  m.def("sgd_update(Tensor[] params, Tensor[] grads, float lr, Tensor[]? lrs) -> Tensor[]");
  // The whole MAML inner loop of an MLP for every task of a meta-batch, and
  // (with a query set) the query forward at the adapted parameters. Returns
  // (adapted [T, P], support_losses [T, steps], query_output [T, Q, d_out],
  //  query_losses [T], trajectory [T, steps, P]); query outputs are empty
  // without a query set.
  m.def(
      "mlp_adapt(Tensor params, Tensor? lrs, float lr, Tensor support_x, Tensor support_y, Tensor? query_x, "
      "Tensor? query_y, int[] sizes, int steps, str activation, str loss, bool first_order) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Exact reverse of mlp_adapt; returns per-task (grad_params [T, P], grad_lrs
  // [T, P], grad_support_x [T, K, d_in], grad_query_x [T, Q, d_in]), each empty
  // unless asked for (params always).
  m.def(
      "mlp_adapt_backward(Tensor grad_adapted, Tensor grad_losses, Tensor? grad_query_output, "
      "Tensor? grad_query_losses, Tensor adapted, Tensor trajectory, Tensor params, Tensor? lrs, float lr, "
      "Tensor support_x, Tensor support_y, Tensor? query_x, Tensor? query_y, int[] sizes, str activation, "
      "str loss, bool first_order, bool lrs_grad, bool x_grad, bool query_x_grad) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "metafast C++/CUDA kernels (importing this module registers the torch.ops.metafast ops)";
  m.def("build_info", [] {
    py::dict d;
    d["torch_version"] = METAFAST_TORCH_VERSION;
#ifdef METAFAST_WITH_CUDA
    d["cuda"] = true;
    d["cuda_version"] = METAFAST_CUDA_VERSION;
    d["cuda_archs"] = METAFAST_CUDA_ARCHS;
#else
    d["cuda"] = false;
    d["cuda_version"] = py::none();
    d["cuda_archs"] = py::none();
#endif
    return d;
  });
}
