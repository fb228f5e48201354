"""Python wrappers of the metafast torch ops (schemas: csrc/library.cpp).

Each wrapper validates its inputs, registers the op's fake kernel and
autograd formula, and falls back to pure PyTorch when the compiled kernel for
the inputs' device is not available.
"""
from metafast.ops.sgd_update import sgd_update
from metafast.ops.mlp_adapt import mlp_adapt, mlp_adapt_torch, mlp_forward, mlp_meta_grad, mlp_num_params

__all__ = ["sgd_update", "mlp_adapt", "mlp_adapt_torch", "mlp_forward", "mlp_meta_grad", "mlp_num_params"]
