"""What a model's forward provably computes: the facts every backend choice rests on.

A fast path may serve a model only when it computes exactly what the model's
own forward computes. These checks are conservative: anything the fused MLP
kernel cannot prove (an overridden forward, a hook, a parametrization, a tied
or frozen parameter) sends the model to a backend that runs its forward.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module_globals
from torch.nn.utils import parametrize

from metafast.nn.conv4 import Conv4

_HOOK_REGISTRIES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def hook_reason(module: nn.Module) -> str | None:
    """Why ``module``'s call may do more than its forward (a hook on it or a global one), or None."""
    return own_hook_reason(module) or global_hook_reason()


def global_hook_reason() -> str | None:
    """A global module hook, which runs around every module's forward, or None."""
    for registry in _GLOBAL_HOOKS:
        if getattr(_module_globals, registry, None):
            return f"a global module {registry[len('_global_'):].replace('_', ' ')[:-1]} is registered"
    return None


def own_hook_reason(module: nn.Module) -> str | None:
    """A hook registered on ``module`` itself, or None."""
    for registry in _HOOK_REGISTRIES:
        if getattr(module, registry, None):
            return f"{type(module).__name__} has a {registry.strip('_').replace('_', ' ')[:-1]}"
    return None


def plain_forward(module: nn.Module, cls: type) -> bool:
    """``module`` runs exactly ``cls.forward``: an instance of ``cls`` (a subclass
    counts only if it overrides neither forward nor the call), without a
    parametrization."""
    kind = type(module)
    return (isinstance(module, cls) and kind.forward is cls.forward and kind.__call__ is nn.Module.__call__
            and kind._call_impl is nn.Module._call_impl and not parametrize.is_parametrized(module))


def shared_module_paths(model: nn.Module) -> tuple[str, str] | None:
    """Two names of one submodule registered twice, or None. torch.func.functional_call
    cannot run such a model (it swaps tensors per name, and the second swap of
    the shared module undoes the first: a different function, and the module is
    left holding the swapped tensors)."""
    seen: dict[int, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if id(m) in seen and seen[id(m)] != name:
            return seen[id(m)], name
        seen.setdefault(id(m), name)
    return None


def tied_parameter(model: nn.Module) -> tuple[str, str] | None:
    """Two names of one parameter (tied weights), or None."""
    seen: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            return seen[id(p)], name
        seen[id(p)] = name
    return None


def running_stats_reason(model: nn.Module) -> str | None:
    """A batch norm in training mode that updates running statistics (an in-place
    write into a buffer shared by every task, which vmap refuses), or None."""
    for name, m in model.named_modules():
        if m.training and getattr(m, "track_running_stats", False) is True:
            return f"{name or type(m).__name__} ({type(m).__name__}) updates running statistics in training mode"
    return None


def has_convolution(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def resolve_head(model: nn.Module, head: str | None) -> tuple[str, nn.Module]:
    """The ANIL head: the module named ``head``; else ``model.head``; else the last
    layer of a plain nn.Sequential. Anything else is ambiguous (the last
    registered layer need not be the one that produces the output) and refused."""
    modules = dict(model.named_modules())
    if head is not None:
        if not isinstance(head, str) or head not in modules or head == "":
            raise ValueError(f"BatchedMAML: head={head!r} is not a submodule of the model (submodules: "
                             f"{[n for n in modules if n][:12]})")
        found = (head, modules[head])
    elif isinstance(getattr(model, "head", None), nn.Module):
        found = ("head", model.head)
    elif plain_forward(model, nn.Sequential) and len(model):
        found = (str(len(model) - 1), model[-1])
    else:
        raise ValueError(f"BatchedMAML: adapt='head' cannot tell which layer of {type(model).__name__} produces "
                         "its output; name it, e.g. BatchedMAML(model, adapt='head', head='out')")
    if not list(found[1].parameters()):
        raise ValueError(f"BatchedMAML: the head {found[0]!r} ({type(found[1]).__name__}) has no parameters to adapt")
    return found


def _fusable_linear(name: str, layer: nn.Module) -> str | None:
    """Why ``layer`` is not a plain nn.Linear with a bias and no hook of its own (global hooks: the caller)."""
    if not plain_forward(layer, nn.Linear):
        return f"layer {name} ({type(layer).__name__}) is not a plain nn.Linear (its own forward or a parametrization)"
    if layer.bias is None:
        return f"layer {name} has no bias"
    return own_hook_reason(layer)


def _fused_layer_reason(name: str, layer: nn.Module) -> str | None:
    if isinstance(layer, nn.Linear):
        return _fusable_linear(name, layer)
    if not (plain_forward(layer, nn.ReLU) or plain_forward(layer, nn.Tanh)):
        return f"layer {name} ({type(layer).__name__}) is not nn.Linear, nn.ReLU or nn.Tanh"
    return own_hook_reason(layer)


def fused_mlp_reason(model: nn.Module, adapt_names) -> str | None:
    """Why the fused MLP kernel might compute another function than ``model``'s forward
    with every parameter adapted (None: it provably computes the same). Runs on every
    call (hooks and frozen parameters may change between calls), so it reads each
    layer once."""
    if not plain_forward(model, nn.Sequential):
        return f"{type(model).__name__} is not a plain nn.Sequential of Linear and ReLU/Tanh layers (its own forward)"
    reason = hook_reason(model)
    for name, layer in model._modules.items():  # Sequential runs exactly these, in this order
        if reason is not None:
            return reason
        reason = _fused_layer_reason(name, layer)
    return reason or _all_parameters_adapted(model, adapt_names)


def fused_head_reason(model: nn.Module, head_name: str, head: nn.Module, adapt_names) -> str | None:
    """Why the model's output might not be ``head(body(x))`` with a plain Linear head
    whose parameters all adapt (None: it provably is)."""
    sequential_head = plain_forward(model, nn.Sequential) and len(model) and model[-1] is head
    if not (sequential_head or (plain_forward(model, Conv4) and head is model.head)):
        return (f"the output of {type(model).__name__} is not provably head(features(x)) (the fused head serves a "
                "plain nn.Sequential ending in its head, or metafast.nn.Conv4)")
    reason = hook_reason(model) or _fusable_linear(head_name, head)
    if reason is None and tied_parameter(model) is not None:
        reason = "the model ties parameters (%s and %s)" % tied_parameter(model)
    return reason or _all_parameters_adapted(head, [n.rsplit(".", 1)[-1] for n in adapt_names])


def _all_parameters_adapted(module: nn.Module, adapt_names) -> str | None:
    """Why not every parameter of ``module`` adapts as its own tensor (tied or fixed ones), or None."""
    seen: dict[int, str] = {}
    frozen = []
    adapted = set(adapt_names)
    for name, p in module.named_parameters(remove_duplicate=False):  # one walk: tied and fixed
        if id(p) in seen:
            return "the model ties parameters (%s and %s)" % (seen[id(p)], name)
        seen[id(p)] = name
        if name not in adapted:
            frozen.append(name)
    if frozen:
        return (f"parameters that stay fixed in the inner loop ({', '.join(frozen[:3])}: frozen, or not listed in "
                "adapt), which the fused kernel does not model")
    return None


def first_floating(model: nn.Module) -> torch.Tensor:
    """A parameter of the model (its dtype and device stand for all)."""
    for m in (model, *model.children()):  # the direct look-ups first: no generator machinery
        for p in m._parameters.values():
            if p is not None:
                return p
    return next(model.parameters())
