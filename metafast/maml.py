"""learn2learn-compatible MAML and MetaSGD wrappers (clone / adapt).

Switch with one import: ``from metafast import MAML, MetaSGD``. Parameter
updates go through the fused multi-tensor op ``metafast::sgd_update``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from metafast._validate import check_rate
from metafast.functional import sgd_step
from metafast.ops import sgd_update


def clone_module(module: nn.Module, memo: dict | None = None, clone_tensors: bool = True) -> nn.Module:
    """A copy of ``module`` whose parameters are differentiable clones of the
    originals (gradients flow back to them) and whose buffers are copies, so
    the clone shares nothing mutable with its parent. Shared parameters and
    submodules stay shared within the clone. ``clone_tensors=False``: the copy
    has its own registries but holds the very same tensors (what a caller
    that substitutes parameters needs, without touching the original's)."""
    memo = {} if memo is None else memo
    if id(module) in memo:
        return memo[id(module)]
    # Every registry (parameters, buffers, submodules, hooks, name sets) is the
    # clone's own copy; built directly, as copy.copy and Module.__setattr__ cost
    # more than the rest of a clone.
    state = {key: value.copy() if key.startswith("_") and isinstance(value, (dict, set)) else value
             for key, value in module.__dict__.items()}
    clone = module.__new__(type(module))
    object.__setattr__(clone, "__dict__", state)
    memo[id(module)] = clone
    for registry in ("_parameters", "_buffers"):
        own = state[registry]
        for name, t in own.items():
            if t is not None and id(t) not in memo:
                memo[id(t)] = t.clone() if clone_tensors else t
            own[name] = None if t is None else memo[id(t)]
    modules = state["_modules"]
    for name, sub in modules.items():
        modules[name] = None if sub is None else clone_module(sub, memo, clone_tensors)
    return clone


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object with the same attributes and its own registries
    (_parameters, _modules, ...), sharing every tensor and submodule."""
    copy = module.__new__(type(module))
    object.__setattr__(copy, "__dict__", {key: value.copy() if key.startswith("_") and isinstance(value, (dict, set))
                                          else value for key, value in module.__dict__.items()})
    return copy


def _submodules(module: nn.Module) -> list[nn.Module]:
    """``module.modules()`` (each module once), without its generator machinery: this
    runs twice per adapt() step."""
    out, seen, stack = [], set(), [module]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        out.append(m)
        stack.extend(sub for sub in reversed(m._modules.values()) if sub is not None)
    return out


def _unique_parameters(module: nn.Module, modules: list[nn.Module] | None = None) -> list[torch.Tensor]:
    seen, out = set(), []
    for m in modules if modules is not None else _submodules(module):
        for p in m._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _parameter_slots(module: nn.Module) -> tuple[list[torch.Tensor], list[list[tuple[dict, str]]]]:
    """The unique parameters of ``module`` in ``parameters()`` order, and for each
    the registries (module._parameters, name) that hold it: what an inner step
    reads and then replaces, found in one walk."""
    index: dict[int, int] = {}
    params: list[torch.Tensor] = []
    slots: list[list[tuple[dict, str]]] = []
    for m in _submodules(module):
        registry = m._parameters
        for name, p in registry.items():
            if p is None:
                continue
            i = index.get(id(p))
            if i is None:
                i = index[id(p)] = len(params)
                params.append(p)
                slots.append([])
            slots[i].append((registry, name))
    return params, slots


def update_module(module: nn.Module, params: Sequence[torch.Tensor], new_params: Sequence[torch.Tensor],
                  modules: list[nn.Module] | None = None) -> nn.Module:
    """Replace ``params[i]`` by ``new_params[i]`` wherever it appears in ``module``
    (in place; ``modules``: its submodules, when the caller has them)."""
    mapping = {id(p): q for p, q in zip(params, new_params)}
    for m in modules if modules is not None else _submodules(module):
        own = m._parameters
        for name, p in own.items():
            if p is not None and id(p) in mapping:
                own[name] = mapping[id(p)]
    return module


def _gradients(loss, params, create_graph, allow_unused, allow_nograd,
               hint="pass allow_nograd=True and/or allow_unused=True"):
    """One gradient per parameter (None for those without one); ``hint``: what the
    caller's user can change when autograd refuses."""
    wanted = [p for p in params if p.requires_grad] if allow_nograd else params
    try:
        grads = torch.autograd.grad(loss, wanted, retain_graph=create_graph, create_graph=create_graph,
                                    allow_unused=allow_unused)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\nmetafast: if some parameters do not require grad or are unused by the loss, "
                           f"{hint}") from exc
    if wanted is params:
        return list(grads)
    by_id = {id(p): g for p, g in zip(wanted, grads)}
    return [by_id.get(id(p)) for p in params]


def _apply_update(slots, params, grads, lr, lrs=None) -> None:
    """θ ← θ − lr·g (or lrs⊙g) for every parameter with a gradient, written into
    the registries that hold it (``slots``, from _parameter_slots)."""
    idx = [i for i, g in enumerate(grads) if g is not None]
    if not idx:
        return
    ps, gs = [params[i] for i in idx], [grads[i] for i in idx]
    if lrs is None:
        rate = lr.reshape(()) if isinstance(lr, torch.Tensor) else lr  # a one-element tensor of any shape
        rates = [rate] * len(idx)
    else:
        rates = [lrs[i] for i in idx]
    if isinstance(lr, torch.Tensor) or ps[0].device.type == "cpu":
        # Plain arithmetic: it differentiates a tensor rate, and on the CPU (where a
        # launch costs nothing) its autograd nodes are cheaper than the custom op's.
        new = [sgd_step(p, g, r) for p, g, r in zip(ps, gs, rates)]
    else:  # one multi-tensor launch for every parameter
        new = sgd_update(ps, gs, lr, None if lrs is None else rates)
    for i, q in zip(idx, new):
        for registry, name in slots[i]:
            registry[name] = q


class MAML(nn.Module):
    """MAML (Finn et al., 2017), API-compatible with ``learn2learn.algorithms.MAML``.

    >>> maml = MAML(model, lr=0.01)
    >>> learner = maml.clone()
    >>> learner.adapt(loss_fn(learner(x_support), y_support))
    >>> loss_fn(learner(x_query), y_query).backward()   # second-order meta-gradient
    """

    def __init__(self, model: nn.Module, lr: float | torch.Tensor, first_order: bool = False, allow_unused: bool | None = None,
                 allow_nograd: bool = False):
        super().__init__()
        self.module = model
        self.lr = check_rate(lr, "MAML: lr")
        self.first_order = first_order
        self.allow_nograd = allow_nograd
        self.allow_unused = allow_nograd if allow_unused is None else allow_unused

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        # The wrapper adds nothing to the model's call: skip nn.Module's call
        # machinery for it (a learner is called once per inner step and query)
        # unless hooks were registered on the wrapper itself.
        if self._forward_hooks or self._forward_pre_hooks or self._backward_hooks or self._backward_pre_hooks:
            return super().__call__(*args, **kwargs)
        return self.module(*args, **kwargs)

    def adapt(self, loss: torch.Tensor, first_order: bool | None = None, allow_unused: bool | None = None,
              allow_nograd: bool | None = None) -> None:
        """One gradient step on ``loss``: θ ← θ − lr·∇θ loss, differentiably."""
        first_order = self.first_order if first_order is None else first_order
        allow_unused = self.allow_unused if allow_unused is None else allow_unused
        allow_nograd = self.allow_nograd if allow_nograd is None else allow_nograd
        params, slots = _parameter_slots(self.module)
        grads = _gradients(loss, params, not first_order, allow_unused, allow_nograd)
        _apply_update(slots, params, grads, self.lr)  # in place: the module object stays

    def clone(self, first_order: bool | None = None, allow_unused: bool | None = None,
              allow_nograd: bool | None = None) -> "MAML":
        """A learner whose parameters are differentiable copies of these."""
        # A shallow copy of this wrapper (nn.Module.__init__ costs more than the
        # whole clone of a small model) holding a clone of the model.
        learner = _shallow_copy(self)
        learner._modules["module"] = clone_module(self.module)
        if first_order is not None:
            learner.first_order = first_order
        if allow_nograd is not None:
            learner.allow_nograd = allow_nograd
        if allow_unused is not None:
            learner.allow_unused = allow_unused
        return learner


class MetaSGD(nn.Module):
    """Meta-SGD (Li et al., 2017): MAML with learnable per-parameter inner rates,
    API-compatible with ``learn2learn.algorithms.MetaSGD``."""

    def __init__(self, model: nn.Module, lr: float | torch.Tensor = 1.0, first_order: bool = False,
                 lrs: Sequence[torch.Tensor] | None = None):
        super().__init__()
        self.module = model
        if lrs is None:
            lr = float(check_rate(lr, "MetaSGD: lr"))  # only the initial value of the learned rates
            lrs = nn.ParameterList([nn.Parameter(torch.full_like(p, lr)) for p in _unique_parameters(model)])
        self.lrs = lrs
        self.first_order = first_order

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def adapt(self, loss: torch.Tensor, first_order: bool | None = None) -> None:
        """θ ← θ − lrs⊙∇θ loss, differentiable with respect to θ and the rates."""
        first_order = self.first_order if first_order is None else first_order
        params, slots = _parameter_slots(self.module)
        lrs = list(self.lrs)
        if len(lrs) != len(params):
            raise ValueError(f"MetaSGD: {len(lrs)} learning rates for {len(params)} parameters")
        grads = _gradients(loss, params, not first_order, False, False,
                           hint="every parameter must require grad and be used by the loss in MetaSGD (freeze a "
                                "parameter by leaving it out of the module, or use metafast.MAML(allow_nograd=True, "
                                "allow_unused=True))")
        _apply_update(slots, params, grads, 0.0, lrs)

    def clone(self) -> "MetaSGD":
        return MetaSGD(clone_module(self.module), lrs=[lr.clone() for lr in self.lrs], first_order=self.first_order)
