"""metafast::sgd_update: θ' = θ − lr·g (or θ − lrs⊙g) for a whole list of tensors.

Kernels: csrc/cpu/sgd_update.cpp, csrc/cuda/sgd_update{.cpp,_kernel.cu}.
Shape rule (no silent broadcasting): the result has the shape of grads[i];
params[i] and lrs[i] have that shape, or that shape without its leading task
dimension (an initialisation or rate shared by every task).
"""
from __future__ import annotations

from typing import Sequence

import torch

from metafast import _extension
from metafast.ops._dispatch import kernel_available


def _full_shape(i: int, param: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor | None, has_lrs: bool) -> torch.Size:
    named = [("param", param), ("grad", grad)] + ([("lr", lr)] if has_lrs else [])
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"sgd_update: entry {i}: {name} is a {type(t).__name__}, expected a tensor")
    operands = [t for _, t in named]
    for t in operands:
        if t.device != param.device:
            raise ValueError(f"sgd_update: entry {i} mixes devices {param.device} and {t.device}")
        if t.dtype != param.dtype:
            raise ValueError(f"sgd_update: entry {i} mixes dtypes {param.dtype} and {t.dtype}")
    if not param.dtype.is_floating_point:
        raise ValueError(f"sgd_update: entry {i} must be floating point, got {param.dtype}")
    full = grad.shape
    for t in operands:
        if t.shape != full and (len(full) == 0 or t.shape != full[1:]):
            shapes = f"param {tuple(param.shape)}, grad {tuple(grad.shape)}"
            if lr is not None:
                shapes += f", lr {tuple(lr.shape)}"
            raise ValueError(
                f"sgd_update: entry {i} has shapes {shapes}; each must be the same shape "
                "or the grad's shape without its leading task dimension"
            )
    return full


def _check(params, grads, lrs) -> list[torch.Size]:
    if len(params) != len(grads):
        raise ValueError(f"sgd_update: got {len(params)} params but {len(grads)} grads")
    if lrs is not None and len(lrs) != len(params):
        raise ValueError(f"sgd_update: got {len(params)} params but {len(lrs)} lrs")
    shapes = [_full_shape(i, p, g, None if lrs is None else lrs[i], lrs is not None)
              for i, (p, g) in enumerate(zip(params, grads))]
    if params and any(p.device != params[0].device for p in params):
        raise ValueError("sgd_update: all tensors of one call must be on one device")
    return shapes


def _reduce_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a gradient over the task dimension its operand did not have."""
    return t if t.shape == shape else t.sum(0)


def _torch_sgd_update(params, grads, lr, lrs):
    """Pure-PyTorch fallback (the same rule, differentiable by autograd)."""
    if lrs is None:
        return [p - lr * g for p, g in zip(params, grads)]
    return [p - r * g for p, g, r in zip(params, grads, lrs)]


def sgd_update(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    lr: float = 0.0,
    lrs: Sequence[torch.Tensor] | None = None,
    use_kernel: bool | None = None,
) -> list[torch.Tensor]:
    """Functional SGD step for every tensor of a list in one call.

    ``out[i] = params[i] - lr * grads[i]``, or ``params[i] - lrs[i] * grads[i]``
    (Meta-SGD) when ``lrs`` is given. Any operand may carry a leading task
    dimension the others lack. Differentiable to any order. ``use_kernel``:
    None uses the compiled kernel when there is one for the device; False
    uses plain torch arithmetic (cheaper on the CPU, where a launch is free).
    """
    params, grads = list(params), list(grads)
    lrs = None if lrs is None else list(lrs)
    _check(params, grads, lrs)
    if not params:
        return []
    if use_kernel is not False and kernel_available(params[0].device):
        return list(torch.ops.metafast.sgd_update(params, grads, float(lr), lrs))
    return _torch_sgd_update(params, grads, float(lr), lrs)


if _extension.available():

    @torch.library.register_fake("metafast::sgd_update")
    def _(params, grads, lr, lrs):
        shapes = _check(params, grads, lrs)
        return [p.new_empty(s) for p, s in zip(params, shapes)]

    def _setup_context(ctx, inputs, output):
        params, grads, lr, lrs = inputs
        ctx.lr = lr
        ctx.n = len(params)
        ctx.has_lrs = lrs is not None
        ctx.param_shapes = [p.shape for p in params]
        ctx.save_for_backward(*grads, *(lrs or []))

    def _backward(ctx, grad_outs):
        # Built from differentiable ops, so second-order MAML flows through.
        saved = ctx.saved_tensors
        grads, lrs = saved[: ctx.n], (saved[ctx.n :] if ctx.has_lrs else None)
        d_params, d_grads, d_lrs = [], [], []
        for i in range(ctx.n):
            go = grad_outs[i]
            if go is None:
                d_params.append(None)
                d_grads.append(None)
                d_lrs.append(None)
                continue
            rate = ctx.lr if lrs is None else lrs[i]
            d_params.append(_reduce_to(go, ctx.param_shapes[i]))
            d_grads.append(_reduce_to(-rate * go, grads[i].shape))
            d_lrs.append(None if lrs is None else _reduce_to(-grads[i] * go, lrs[i].shape))
        return d_params, d_grads, None, (d_lrs if ctx.has_lrs else None)

    torch.library.register_autograd("metafast::sgd_update", _backward, setup_context=_setup_context)
