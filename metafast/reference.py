"""The oracle: textbook MAML as a plain per-task eager loop.

For every task: θ' = θ − α·∇L_support(θ) for `inner_steps` steps, with
``torch.autograd.grad(..., create_graph=not first_order)``; then the query
loss at θ'; the meta-loss is the mean over tasks. Every fast path of metafast
is tested against this in float64.

The model's own forward runs (hooks, parametrizations, tied and shared
layers): parameters are substituted in the model's registries by identity for
the duration of each call, so a parameter used twice is substituted
everywhere. Frozen parameters (``requires_grad=False``) are not adapted, and
a parameter the loss does not use keeps its value (learn2learn's
``allow_nograd`` / ``allow_unused``).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from metafast.losses import resolve_loss, weighted_loss
from metafast.nn.per_step import inner_step


@contextlib.contextmanager
def substituted(model: nn.Module, values: dict[int, torch.Tensor]):
    """Inside the block, every registry entry of ``model`` holding the parameter
    with id ``k`` holds ``values[k]`` instead; restored on exit (also on error)."""
    swapped = []
    try:
        for m in model.modules():
            for name, p in m._parameters.items():
                if p is not None and id(p) in values:
                    swapped.append((m._parameters, name, p))
                    m._parameters[name] = values[id(p)]
        yield
    finally:
        for registry, name, p in reversed(swapped):
            registry[name] = p


def call_with(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with the named parameters replaced by ``params``."""
    named = dict(model.named_parameters())
    with substituted(model, {id(named[n]): t for n, t in params.items()}):
        return model(x)


def default_adapt_names(model: nn.Module) -> list[str]:
    """What MAML adapts by default: every parameter that requires grad."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _rate(inner_lr, lrs, step_lrs, name, step):
    if step_lrs is not None:
        return step_lrs[name][step]
    return inner_lr if lrs is None else lrs[name]


def adapt_task(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
               inner_lr: float, inner_steps: int, first_order: bool = False, loss="mse",
               lrs: dict[str, torch.Tensor] | None = None, weights: torch.Tensor | None = None,
               step_lrs: dict[str, torch.Tensor] | None = None, after_step=None):
    """Adapt ``params`` (a subset of the model's parameters, by name) to one task.
    ``weights`` [K]: per-example support loss weights (Σ_k w_k·ℓ_k / K).
    ``step_lrs``: MAML++'s rates per parameter tensor and step ({name: [steps]}).
    ``after_step(step, params)``: called after each update (MAML++'s multi-step loss).
    Returns (adapted params, list of support losses)."""
    name, loss_fn = resolve_loss(loss)
    losses = []
    for step in range(inner_steps):
        with inner_step(step):
            output = call_with(model, params, x)
        support_loss = loss_fn(output, y) if weights is None else weighted_loss(name, output, y, weights)
        losses.append(support_loss)
        grads = torch.autograd.grad(support_loss, list(params.values()), create_graph=not first_order,
                                    retain_graph=True, allow_unused=True)
        params = {
            n: p if g is None else p - _rate(inner_lr, lrs, step_lrs, n, step) * g
            for (n, p), g in zip(params.items(), grads)
        }
        if after_step is not None:
            after_step(step, params)
    return params, losses


def meta_loss(model: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
              query_y: torch.Tensor, inner_lr: float = 0.01, inner_steps: int = 1, first_order: bool = False,
              loss="mse", lrs: Sequence[torch.Tensor] | dict[str, torch.Tensor] | None = None,
              adapt_names: Sequence[str] | None = None,
              support_weights: torch.Tensor | None = None,
              step_lrs: dict[str, torch.Tensor] | None = None,
              step_weights: Sequence | torch.Tensor | None = None) -> torch.Tensor:
    """Mean query loss over tasks after adapting to each task's support set.

    ``lrs``: Meta-SGD per-parameter rates, a list in the order of the adapted
    parameters or a dict by name. ``adapt_names``: adapt only these parameters
    (ANIL adapts only the head); by default every one that requires grad.
    ``support_weights`` [T, K]: per-example support loss weights.
    MAML++: ``step_lrs`` {name: [steps]} per-layer per-step rates (LSLR);
    ``step_weights`` [steps]: the query loss after every step, weighted (MSL;
    None: after the last step only). Forwards of step s run in inner_step(s),
    the query after step s too (per-step batch norm).
    """
    _, loss_fn = resolve_loss(loss)
    named = dict(model.named_parameters())
    names = list(adapt_names) if adapt_names is not None else default_adapt_names(model)
    if lrs is not None and not isinstance(lrs, dict):
        lrs = dict(zip(names, lrs))
    total = 0.0
    for t in range(support_x.shape[0]):
        params = {n: named[n] for n in names}
        query_losses = []

        def query_loss(step, adapted, t=t):
            if step_weights is not None or step == inner_steps - 1:
                with inner_step(step):
                    query_losses.append(loss_fn(call_with(model, adapted, query_x[t]), query_y[t]))

        adapt_task(model, params, support_x[t], support_y[t], inner_lr, inner_steps, first_order, loss, lrs,
                   None if support_weights is None else support_weights[t], step_lrs, query_loss)
        if step_weights is None:
            total = total + query_losses[-1]
        else:
            total = total + sum(w * q for w, q in zip(step_weights, query_losses))
    return total / support_x.shape[0]
