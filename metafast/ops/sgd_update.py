"""metafast::sgd_update: θ' = θ − lr·g (or θ − lrs⊙g) for a whole list of tensors.

Schema: csrc/library.cpp. Kernels: csrc/ops/sgd_update/{cpu.cpp,cuda.cpp,kernel.cu};
their checks: csrc/ops/sgd_update/host.h.
Shape rule (no silent broadcasting): the result has the shape of grads[i];
params[i] and lrs[i] have that shape, or that shape without its leading task
dimension (an initialisation or rate shared by every task).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from metafast import _extension
from metafast.functional import sgd_step
from metafast.ops._dispatch import kernel_available

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _require_tensors(params, grads, lrs) -> None:
    """A Python-level mistake (None, a number) gets a TypeError naming the entry, before dispatch."""
    for i, (p, g) in enumerate(zip(params, grads)):
        named = [("param", p), ("grad", g)] + ([("lr", lrs[i])] if lrs is not None and i < len(lrs) else [])
        for name, t in named:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"metafast::sgd_update: entry {i}: {name} is a {type(t).__name__}, expected a tensor")


def check_sgd_update_args(params, grads, lr, lrs) -> list[torch.Size]:
    """The checks of csrc/ops/sgd_update/host.h, for the fake kernel and the
    pure-PyTorch fallback; returns the output shapes."""
    torch._check_value(len(params) == len(grads), lambda: f"metafast::sgd_update: got {len(params)} params but "
                                                          f"{len(grads)} grads")
    if lrs is not None:
        torch._check_value(len(lrs) == len(params), lambda: f"metafast::sgd_update: got {len(params)} params but "
                                                            f"{len(lrs)} lrs")
    else:
        torch._check_value(math.isfinite(lr), lambda: f"metafast::sgd_update: lr must be finite, got {lr}")
    _require_tensors(params, grads, lrs)
    shapes = []
    for i, (p, g) in enumerate(zip(params, grads)):
        r = None if lrs is None else lrs[i]
        operands = [("param", p), ("grad", g)] + ([("lr", r)] if lrs is not None else [])
        torch._check_value(p.dtype in SUPPORTED_DTYPES, lambda: f"metafast::sgd_update: entry {i} must be float32, "
                                                                f"float64, float16 or bfloat16, got {p.dtype}")
        for _, t in operands[1:]:
            torch._check_value(t.device == p.device, lambda: f"metafast::sgd_update: entry {i} mixes devices "
                                                             f"{p.device} and {t.device}")
            torch._check_value(t.dtype == p.dtype, lambda: f"metafast::sgd_update: entry {i} mixes dtypes "
                                                           f"{p.dtype} and {t.dtype}")
        full = g.shape
        for _, t in operands:
            ok = t.shape == full or (len(full) > 0 and t.shape == full[1:])
            torch._check_value(ok, lambda: f"metafast::sgd_update: entry {i} has shapes "
                               + ", ".join(f"{n} {list(x.shape)}" for n, x in operands)
                               + "; each must be the grad's shape or the grad's shape without its leading task "
                                 "dimension")
        torch._check_value(p.device == params[0].device, lambda: f"metafast::sgd_update: tensors on "
                                                                 f"{params[0].device} and {p.device} in one call")
        shapes.append(full)
    return shapes


def _reduce_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a gradient over the task dimension its operand did not have."""
    return t if t.shape == shape else t.sum(0)


def _torch_sgd_update(params, grads, lr, lrs):
    """Pure-PyTorch formula (the same rule, differentiable by autograd, also
    with respect to a tensor lr)."""
    return [sgd_step(p, g, lr if lrs is None else lrs[i]) for i, (p, g) in enumerate(zip(params, grads))]


def sgd_update(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    lr: float | torch.Tensor = 0.0,
    lrs: Sequence[torch.Tensor] | None = None,
    use_kernel: bool | None = None,
) -> list[torch.Tensor]:
    """Functional SGD step for every tensor of a list in one call.

    ``out[i] = params[i] - lr * grads[i]``, or ``params[i] - lrs[i] * grads[i]``
    (Meta-SGD) when ``lrs`` is given. Any operand may carry a leading task
    dimension the others lack. Differentiable to any order, with respect to
    params, grads, lrs and a tensor ``lr``. ``use_kernel``: None uses the
    compiled kernel when there is one for the device; False uses plain torch
    arithmetic (cheaper on the CPU, where a launch is free).
    """
    params, grads = list(params), list(grads)
    lrs = None if lrs is None else list(lrs)
    if not params and not grads and not lrs:
        return []
    if isinstance(lr, torch.Tensor):
        torch._check_value(lr.numel() == 1, lambda: f"metafast::sgd_update: a tensor lr must hold one value, got "
                                                     f"shape {list(lr.shape)}")
        if lr.requires_grad and lrs is None:  # the rate itself is differentiated: plain torch arithmetic
            check_sgd_update_args(params, grads, float(lr.detach()), lrs)
            return _torch_sgd_update(params, grads, lr, None)
        lr = float(lr.detach())
    lr = float(lr)
    _require_tensors(params, grads, lrs)
    if use_kernel is not False and params and kernel_available(params[0].device):
        return list(torch.ops.metafast.sgd_update(params, grads, lr, lrs))  # checked by the C++ host code
    check_sgd_update_args(params, grads, lr, lrs)
    return _torch_sgd_update(params, grads, lr, lrs)


if _extension.available():

    @torch.library.register_fake("metafast::sgd_update")
    def _(params, grads, lr, lrs):
        shapes = check_sgd_update_args(params, grads, lr, lrs)
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
