"""The input rules BatchedMAML adds to the ops' own checks, for every backend.

Each function takes the BatchedMAML (for its model, loss and options) and
raises a one-line error naming the argument at fault.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from metafast.algorithms import model_facts


def _on_meta(meta, x: torch.Tensor):
    """The model's output for one task of ``x`` ([examples, ...]) run on the meta device
    (no compute), or None when that cannot be done safely: data-dependent code, or a
    module registered twice, which functional_call cannot run."""
    if model_facts.shared_module_paths(meta.model) is not None:
        return None
    on_meta = {n: torch.empty_like(t, device="meta")
               for n, t in [*meta.model.named_parameters(), *meta.model.named_buffers()]}
    try:
        with torch.no_grad():
            return functional_call(meta.model, on_meta, (torch.empty(x.shape[1:], dtype=x.dtype, device="meta"),))
    except Exception:  # noqa: BLE001 - unknown; the backends' own checks still apply
        return None


def _cached(meta, key, compute):
    cache = meta._output_shapes
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def output_shape(meta, x: torch.Tensor) -> torch.Size | None:
    """The model's output shape for one task of ``x`` (cached per input shape), or None
    when unknown (see _on_meta, or a non-tensor output)."""
    def compute():
        out = _on_meta(meta, x)
        return out.shape if isinstance(out, torch.Tensor) else None

    return _cached(meta, (tuple(x.shape[1:]), x.dtype), compute)


def conv_outputs(meta, x: torch.Tensor) -> int | None:
    """Elements the model's convolutions output for one task's examples ``x[0]``
    (cached per input shape), or None if unknown."""
    def compute():
        total = []
        hooks = [m.register_forward_hook(lambda m, i, o: total.append(o.numel()))
                 for m in meta.model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        try:
            return None if _on_meta(meta, x) is None else sum(total)
        finally:
            for h in hooks:
                h.remove()

    return _cached(meta, ("conv", tuple(x.shape[1:]), x.dtype), compute)


def check_features(name: str, x: torch.Tensor, model: nn.Module) -> None:
    """Examples must fit the first layer of a Sequential model or of a model's
    Sequential ``features`` body (Conv4, ResNet12): the torch backend's own error,
    from inside vmap, would not say which argument is wrong."""
    body = model._modules.get("features")  # a Sequential body is a registered submodule
    first = body if isinstance(body, nn.Sequential) else model
    while isinstance(first, nn.Sequential) and type(first).forward is nn.Sequential.forward and len(first):
        first = first[0]
    if isinstance(first, nn.Linear) and x.shape[-1] != first.in_features:
        raise ValueError(f"BatchedMAML: {name} has {x.shape[-1]} features per example but the model's first "
                         f"layer {first} takes {first.in_features}")
    if isinstance(first, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        dims = len(first.kernel_size)
        if x.dim() != dims + 3 or x.shape[2] != first.in_channels:
            raise ValueError(f"BatchedMAML: {name} must be [tasks, examples, {first.in_channels} channels, "
                             f"{dims} spatial dims] for the model's first layer {first}, got shape "
                             f"{tuple(x.shape)}")


def check_target(meta, name: str, y: torch.Tensor, shape) -> None:
    """A target must have exactly the shape the loss needs (no broadcasting)."""
    tasks = y.shape[0]
    want = (tasks, *shape) if meta.loss_name == "mse" else (tasks, *shape[:-1])
    if tuple(y.shape) != want:
        x_name = name[:-1] + "x"
        why = ("the model's output shape on " + x_name + "; MSE targets are not broadcast" if meta.loss_name == "mse"
               else "one class index per example of " + x_name)
        raise ValueError(f"BatchedMAML: {name} must have shape {want} ({why}), got {tuple(y.shape)}")


def check_x(meta, name: str, x: torch.Tensor, ref: torch.Tensor) -> None:
    """Examples ``x``: floating point of the model's dtype (``ref``: a model parameter), fitting its first layer."""
    if not x.dtype.is_floating_point:
        raise TypeError(f"BatchedMAML: {name} must be floating point, got {x.dtype} (integer features? "
                        f"convert with .to({ref.dtype}))")
    if x.dtype != ref.dtype:
        raise TypeError(f"BatchedMAML: {name} has dtype {x.dtype} but the model's parameters are {ref.dtype}")
    check_features(name, x, meta.model)


def check_weights(meta, w, support_x, ref) -> None:
    """support_weights: one weight per support example, the model's dtype, data."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"BatchedMAML: support_weights must be a tensor, got {type(w).__name__}")
    if meta.loss_name is None:
        raise ValueError("BatchedMAML: support_weights need a named loss ('mse' or 'cross_entropy'); a loss "
                         "callable returns one value per task, not one per example")
    if tuple(w.shape) != tuple(support_x.shape[:2]):
        raise ValueError(f"BatchedMAML: support_weights must be [tasks, support examples] = "
                         f"{list(support_x.shape[:2])}, got {list(w.shape)}")
    if w.dtype != ref.dtype:
        raise TypeError(f"BatchedMAML: support_weights has dtype {w.dtype} but the model's parameters are "
                        f"{ref.dtype}")
    if w.requires_grad and torch.is_grad_enabled():
        raise ValueError("BatchedMAML: gradients with respect to support_weights are not supported; detach them")


def _check_shapes(pairs, support_x, query_x) -> list:
    for name, t in pairs:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"BatchedMAML: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"BatchedMAML: {name} must be [tasks, examples, ...], got shape {tuple(t.shape)}")
    tasks = support_x.shape[0]
    for name, t in pairs[1:]:
        if t.shape[0] != tasks:
            raise ValueError(f"BatchedMAML: task dimensions disagree: support_x has {tasks} tasks but {name} "
                             f"has {t.shape[0]}")
    if tasks == 0:
        raise ValueError("BatchedMAML: the meta-batch has no tasks")
    sets = [("support", pairs[0][1], pairs[1][1])] + ([("query", pairs[2][1], pairs[3][1])] if len(pairs) > 2 else [])
    for kind, x, y in sets:
        if x.shape[1] == 0:
            raise ValueError(f"BatchedMAML: empty {kind} set ({kind}_x has 0 examples per task)")
        if y.shape[1] != x.shape[1]:
            raise ValueError(f"BatchedMAML: {kind}_y has {y.shape[1]} examples per task but {kind}_x has "
                             f"{x.shape[1]}")
    if query_x is not None and query_x.shape[2:] != support_x.shape[2:]:
        raise ValueError(f"BatchedMAML: query examples have shape {tuple(query_x.shape[2:])} but support "
                         f"examples {tuple(support_x.shape[2:])}")
    return sets


def check_call(meta, support_x, support_y, query_x=None, query_y=None, support_weights=None) -> None:
    """Every rule for one call: types, shapes, dtypes, devices, then values (see read_values)."""
    pairs = [("support_x", support_x), ("support_y", support_y)]
    if query_x is not None or query_y is not None:
        pairs += [("query_x", query_x), ("query_y", query_y)]
    sets = _check_shapes(pairs, support_x, query_x)
    ref = meta.model_tensor()
    if support_weights is not None:
        check_weights(meta, support_weights, support_x, ref)
        pairs.append(("support_weights", support_weights))  # device and finite checks below
    for name, t in pairs:
        if t.device != ref.device:
            raise ValueError(f"BatchedMAML: {name} is on {t.device} but the model is on {ref.device}")
    for kind, x, y in sets:
        check_x(meta, f"{kind}_x", x, ref)
        if meta.loss_name == "cross_entropy" and y.dtype != torch.int64:
            raise TypeError(f"BatchedMAML: cross-entropy {kind}_y must hold int64 class indices, got {y.dtype}")
        if meta.loss_name == "mse" and y.dtype != ref.dtype:
            raise TypeError(f"BatchedMAML: MSE {kind}_y has dtype {y.dtype} but the model's parameters are "
                            f"{ref.dtype}")
    if meta.loss_name is not None:  # a custom loss defines its own target shapes
        for kind, x, y in sets:
            shape = output_shape(meta, x)
            if shape is not None:
                check_target(meta, f"{kind}_y", y, shape)
    if read_values(meta, support_x):
        check_values(meta, pairs, support_x)


def read_values(meta, support_x) -> bool:
    """Whether this call reads its inputs' values back. On the CPU that is free;
    on CUDA it is one device synchronisation, so check_inputs=None reads them on
    the first call only (and never while a CUDA graph is being captured)."""
    if meta.check_inputs is False:
        return False
    if not support_x.is_cuda:
        return True
    if torch.cuda.is_current_stream_capturing():
        return False
    first = not meta._values_checked_on_cuda
    meta._values_checked_on_cuda = True
    return meta.check_inputs is True or first


def check_values(meta, pairs, support_x) -> None:
    """NaN/inf in floating inputs and rates, class labels out of range: one read-back."""
    if meta.loss_name != "cross_entropy" and meta.inner_lrs is None and _all_finite([t for _, t in pairs]):
        return  # the common case in one reduction; otherwise find the culprit below
    shape = output_shape(meta, support_x) if meta.loss_name == "cross_entropy" else None
    classes = shape[-1] if shape is not None else None
    checks = []
    for name, t in pairs:
        if t.dtype.is_floating_point:
            checks.append((name, "finite", torch.isfinite(t).all()))
        elif meta.loss_name == "cross_entropy":
            in_range = t.min() >= 0 if classes is None else (t.min() >= 0) & (t.max() < classes)
            checks.append((name, "labels", in_range))
    if meta.inner_lrs is not None:
        checks.append(("inner_lrs", "finite", torch.stack([torch.isfinite(r).all() for r in meta.inner_lrs]).all()))
    for (name, kind, _), good in zip(checks, torch.stack([c for _, _, c in checks]).tolist()):
        if good:
            continue
        if kind == "finite":
            raise ValueError(f"BatchedMAML: {name} contains NaN or inf")
        t = dict(pairs)[name]
        raise ValueError(f"BatchedMAML: {name} has class labels in [{int(t.min())}, {int(t.max())}] but the "
                         f"model has {classes if classes is not None else '?'} outputs")


def _all_finite(tensors) -> bool:
    """No NaN or inf in any floating tensor: 0·x is 0 for every finite x and NaN
    for NaN and ±inf, so one sum of zeros tells (it cannot overflow, as a plain
    sum could)."""
    floats = [t.reshape(-1) for t in tensors if t.dtype.is_floating_point]
    if not floats or len({t.dtype for t in floats}) > 1:
        return False
    return not bool(torch.cat(floats).mul_(0).sum().isnan())


def check_params(meta, params, x) -> None:
    """predict(params, x): params must name adapted-able parameters of the model, batched over x's tasks."""
    if not isinstance(params, dict) or not params:
        raise ValueError("BatchedMAML.predict: params must be a non-empty dict {parameter name: [tasks, *shape]} "
                         "(what adapt() returns)")
    named = dict(meta.model.named_parameters())
    for n, t in params.items():
        if n not in named:
            raise ValueError(f"BatchedMAML.predict: {n!r} is not a parameter of the model (parameters: "
                             f"{list(named)[:8]})")
        if not isinstance(t, torch.Tensor) or tuple(t.shape[1:]) != tuple(named[n].shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"BatchedMAML.predict: params[{n!r}] must be [tasks, {', '.join(map(str, named[n].shape))}]"
                             f", got {got}")
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"BatchedMAML.predict: x has {x.shape[0]} tasks but params[{n!r}] has {t.shape[0]}")
