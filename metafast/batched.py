"""BatchedMAML: adapt a whole meta-batch of tasks at once.

Backends:
  "fused": the metafast::mlp_adapt op (one kernel launch for all tasks and
           inner steps) for MLPs of Linear + ReLU/Tanh layers, and for the head
           of any model in ANIL mode (adapt="head").
  "torch": any nn.Module; torch.func.functional_call vmapped over tasks, with
           autograd.grad on the batched parameters (vmap turns per-task
           convolution weights into grouped convolutions).
  "auto":  "fused" when it can serve the model, loss and device, else "torch".
Losses are means over each task's examples; `out.loss` is the mean over tasks.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from metafast.losses import resolve_loss, weighted_loss
from metafast.maml import check_rate, positive_int
from metafast.nn.conv4 import Conv4
from metafast.nn.mlp import mlp_spec
from metafast.ops import mlp_adapt, sgd_update
from metafast.ops.mlp_adapt import task_losses
from metafast.ops._dispatch import kernel_unavailable_reason

BACKENDS = ("auto", "fused", "torch")
# On the CPU the fused kernel (task packs, or one task per thread for larger
# nets) beats batched BLAS while the per-task work is small; above this many
# parameter·example products per task "auto" prefers the torch backend.
# Measured (benchmarks/README.md, "auto"): fused 5.5x at 17,610 (sinusoid),
# 1.06x at 323,280, 1.18x at 273,625, 0.96x at 850,020, 0.74x at 1.2 million.
CPU_FUSED_MAX_WORK = 800_000
# metafast::mlp_adapt runs 1 to 1000 inner steps; "auto" uses the torch backend for more.
FUSED_MAX_STEPS = 1000


@dataclass
class MetaOutput:
    loss: torch.Tensor                   # scalar: mean query loss over tasks
    query_output: torch.Tensor           # [T, Q, ...] model output on the query set
    support_losses: torch.Tensor         # [T, inner_steps]: support loss before each step
    accuracy: torch.Tensor | None = None  # scalar mean query accuracy (cross-entropy only)


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    return last


class BatchedMAML(nn.Module):
    """MAML / Meta-SGD / ANIL over a meta-batch in one call.

    >>> meta = BatchedMAML(metafast.nn.MLP([1, 40, 40, 1]), inner_lr=0.01, inner_steps=1)
    >>> out = meta(support_x, support_y, query_x, query_y)   # first dimension: task
    >>> out.loss.backward()

    Every call checks its inputs (shapes against the model's input and output, dtypes,
    devices); ``check_inputs`` also checks values (NaN/inf, label range), which reads them
    back: one device sync per call, skipped while a CUDA graph is being captured.
    """

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, inner_steps: int = 1, first_order: bool = False,
                 meta_sgd: bool = False, loss="mse", backend: str = "auto", adapt: str = "all",
                 check_inputs: bool = True):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"BatchedMAML: model must be an nn.Module, got {type(model).__name__}")
        if not list(model.parameters()):
            raise ValueError("BatchedMAML: the model has no parameters to adapt")
        if backend not in BACKENDS:
            raise ValueError(f"BatchedMAML: unknown backend {backend!r} (expected one of {BACKENDS})")
        if adapt not in ("all", "head"):
            raise ValueError(f"BatchedMAML: adapt must be 'all' or 'head' (ANIL), got {adapt!r}")
        inner_lr = check_rate(inner_lr, "BatchedMAML: inner_lr")
        if isinstance(inner_lr, torch.Tensor) and inner_lr.requires_grad:
            raise ValueError("BatchedMAML: inner_lr is a tensor that requires grad, but the inner rate is a "
                             "constant here; pass meta_sgd=True to learn the inner rates")
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = positive_int(inner_steps, "BatchedMAML: inner_steps")
        self.first_order = bool(first_order)
        self.loss_name, self.loss_fn = resolve_loss(loss)
        self.backend = backend
        self.adapt_mode = adapt
        self.check_inputs = check_inputs
        named = dict(model.named_parameters())
        if adapt == "head":
            last = _last_linear(model)
            if last is None:
                raise ValueError("BatchedMAML: adapt='head' needs an nn.Linear head in the model")
            prefix = last[0] + "." if last[0] else ""
            self.adapt_names = [prefix + n for n, _ in last[1].named_parameters()]
            self._head = last[1]
        else:
            self.adapt_names = list(named)
            self._head = None
        self.meta_sgd = bool(meta_sgd)
        self.inner_lrs = (
            nn.ParameterList([nn.Parameter(torch.full_like(named[n].detach(), self.inner_lr)) for n in self.adapt_names])
            if meta_sgd else None
        )
        self._warned = False
        self._output_shapes: dict = {}
        self.backend_used: str | None = None

    # ------------------------------------------------------------------ checks
    def _model_tensor(self) -> torch.Tensor:
        """A parameter of the model (its dtype and device stand for all)."""
        for m in (self.model, *self.model.children()):  # the direct look-ups first: no generator machinery
            for p in m._parameters.values():
                if p is not None:
                    return p
        return next(self.model.parameters())

    def _output_shape(self, x: torch.Tensor) -> torch.Size | None:
        """The model's output shape for one task of ``x`` ([examples, ...]), found by
        running it on the meta device (no compute; cached per input shape), or None
        when the model cannot run there (data-dependent code)."""
        key = (tuple(x.shape[1:]), x.dtype)
        if key not in self._output_shapes:
            on_meta = {n: torch.empty_like(t, device="meta")
                       for n, t in [*self.model.named_parameters(), *self.model.named_buffers()]}
            example = torch.empty(x.shape[1:], dtype=x.dtype, device="meta")
            try:
                with torch.no_grad():
                    out = functional_call(self.model, on_meta, (example,))
                self._output_shapes[key] = out.shape if isinstance(out, torch.Tensor) else None
            except Exception:  # noqa: BLE001 - an unknown shape; the backends' own checks still apply
                self._output_shapes[key] = None
        return self._output_shapes[key]

    def _check_features(self, name: str, x: torch.Tensor) -> None:
        """Examples must fit the first layer of a Sequential model (the torch backend's own
        error, from inside vmap, would not say which argument is wrong)."""
        first = self.model.features if isinstance(self.model, Conv4) else self.model
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

    def _check_target(self, name: str, y: torch.Tensor, output_shape) -> None:
        """A target must have exactly the shape the loss needs (no broadcasting)."""
        tasks = y.shape[0]
        want = (tasks, *output_shape) if self.loss_name == "mse" else (tasks, *output_shape[:-1])
        if tuple(y.shape) != want:
            x_name = name[:-1] + "x"
            why = ("the model's output shape on " + x_name + "; MSE targets are not broadcast" if self.loss_name == "mse"
                   else "one class index per example of " + x_name)
            raise ValueError(f"BatchedMAML: {name} must have shape {want} ({why}), got {tuple(y.shape)}")

    def _check(self, support_x, support_y, query_x=None, query_y=None, support_weights=None) -> None:
        """Every rule BatchedMAML adds to the ops' own checks, for every backend."""
        pairs = [("support_x", support_x), ("support_y", support_y)]
        if query_x is not None or query_y is not None:
            pairs += [("query_x", query_x), ("query_y", query_y)]
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
        sets = [("support", support_x, support_y)] + ([("query", query_x, query_y)] if len(pairs) > 2 else [])
        for kind, x, y in sets:
            if x.shape[1] == 0:
                raise ValueError(f"BatchedMAML: empty {kind} set ({kind}_x has 0 examples per task)")
            if y.shape[1] != x.shape[1]:
                raise ValueError(f"BatchedMAML: {kind}_y has {y.shape[1]} examples per task but {kind}_x has "
                                 f"{x.shape[1]}")
        if query_x is not None and query_x.shape[2:] != support_x.shape[2:]:
            raise ValueError(f"BatchedMAML: query examples have shape {tuple(query_x.shape[2:])} but support "
                             f"examples {tuple(support_x.shape[2:])}")
        ref = self._model_tensor()
        if support_weights is not None:
            self._check_weights(support_weights, support_x, ref)
            pairs.append(("support_weights", support_weights))  # device and finite checks below
        for name, t in pairs:
            if t.device != ref.device:
                raise ValueError(f"BatchedMAML: {name} is on {t.device} but the model is on {ref.device}")
        for kind, x, y in sets:
            self._check_x(f"{kind}_x", x)
            if self.loss_name == "cross_entropy" and y.dtype != torch.int64:
                raise TypeError(f"BatchedMAML: cross-entropy {kind}_y must hold int64 class indices, got {y.dtype}")
            if self.loss_name == "mse" and y.dtype != ref.dtype:
                raise TypeError(f"BatchedMAML: MSE {kind}_y has dtype {y.dtype} but the model's parameters are "
                                f"{ref.dtype}")
        if self.loss_name is not None:  # a custom loss defines its own target shapes
            for kind, x, y in sets:
                output = self._output_shape(x)
                if output is not None:
                    self._check_target(f"{kind}_y", y, output)
        if not self.check_inputs or (support_x.is_cuda and torch.cuda.is_current_stream_capturing()):
            return  # the value checks below read the data: one device sync, impossible in a CUDA graph
        output = self._output_shape(support_x) if self.loss_name == "cross_entropy" else None
        classes = output[-1] if output is not None else None
        checks = []
        for name, t in pairs:
            if t.dtype.is_floating_point:
                checks.append((name, "finite", torch.isfinite(t).all()))
            elif self.loss_name == "cross_entropy":
                in_range = t.min() >= 0 if classes is None else (t.min() >= 0) & (t.max() < classes)
                checks.append((name, "labels", in_range))
        if self.inner_lrs is not None:
            checks.append(("inner_lrs", "finite", torch.stack([torch.isfinite(r).all() for r in self.inner_lrs]).all()))
        for (name, kind, _), good in zip(checks, torch.stack([c for _, _, c in checks]).tolist()):
            if good:
                continue
            if kind == "finite":
                raise ValueError(f"BatchedMAML: {name} contains NaN or inf")
            t = dict(pairs)[name]
            raise ValueError(f"BatchedMAML: {name} has class labels in [{int(t.min())}, {int(t.max())}] but the "
                             f"model has {classes if classes is not None else '?'} outputs")

    def _check_weights(self, w, support_x, ref) -> None:
        """support_weights: one weight per support example, the model's dtype, data."""
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"BatchedMAML: support_weights must be a tensor, got {type(w).__name__}")
        if self.loss_name is None:
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

    def _check_x(self, name: str, x: torch.Tensor) -> None:
        ref = self._model_tensor()
        if not x.dtype.is_floating_point:
            raise TypeError(f"BatchedMAML: {name} must be floating point, got {x.dtype} (integer features? "
                            f"convert with .to({ref.dtype}))")
        if x.dtype != ref.dtype:
            raise TypeError(f"BatchedMAML: {name} has dtype {x.dtype} but the model's parameters are {ref.dtype}")
        self._check_features(name, x)

    # --------------------------------------------------------------- backends
    def _fused_reason(self, support_x, steps: int) -> str | None:
        """Why the fused kernel cannot serve this call (None if it can)."""
        if self.loss_name is None:
            return "a custom loss callable (the fused kernel computes 'mse' and 'cross_entropy')"
        if steps > FUSED_MAX_STEPS:
            return f"{steps} inner steps (the fused kernel runs at most {FUSED_MAX_STEPS})"
        unavailable = kernel_unavailable_reason(support_x.device)
        if unavailable is not None:
            return unavailable
        dtype = self._model_tensor().dtype
        if dtype not in (torch.float32, torch.float64):
            return f"dtype {dtype} (the fused kernel serves float32 and float64)"
        if self.adapt_mode == "head":
            if self._features is None:
                return "adapt='head' needs a model that is an nn.Sequential ending in nn.Linear or has .features(x) and .head"
            if self._head.bias is None:
                return "the head has no bias"
            return None
        spec = mlp_spec(self.model)
        if isinstance(spec, str):
            return spec
        if support_x.dim() != 3:
            return f"support_x of shape {tuple(support_x.shape)} (the fused MLP takes [tasks, shots, features])"
        return None

    @property
    def _features(self):
        """The body of an ANIL model: a function x -> head input, or None."""
        if self.adapt_mode != "head":
            return None
        if hasattr(self.model, "features") and getattr(self.model, "head", None) is self._head:
            return self.model.features
        if isinstance(self.model, nn.Sequential) and list(self.model)[-1] is self._head:
            body = nn.Sequential(*list(self.model)[:-1])
            return body
        return None

    def _select_backend(self, support_x, steps: int) -> str:
        if self.backend == "torch":
            return "torch"
        reason = self._fused_reason(support_x, steps)
        if reason is None and self.backend == "auto" and support_x.device.type == "cpu":
            work = sum(dict(self.model.named_parameters())[n].numel() for n in self.adapt_names) * support_x.shape[1]
            if work > CPU_FUSED_MAX_WORK:
                reason = (f"on the CPU, batched BLAS is faster for this model size ({work:,} parameter-examples per "
                          f"task > {CPU_FUSED_MAX_WORK:,}); pass backend='fused' to force the kernel")
        if self.backend == "fused" and reason is not None:
            raise ValueError(f"BatchedMAML(backend='fused') cannot serve this call: {reason}")
        if reason is not None:
            if not self._warned:
                warnings.warn(f"BatchedMAML: using the torch backend: {reason}", RuntimeWarning, stacklevel=3)
                self._warned = True
            return "torch"
        return "fused"

    # ---------------------------------------------------------------- torch
    def _support_loss(self, fixed, names):
        """loss(params, x, y, w) of one task: the plain mean, or weighted by w [K]."""
        loss_fn, name = self.loss_fn, self.loss_name

        def task_loss(params, x, y, w):
            out = functional_call(self.model, {**fixed, **dict(zip(names, params))}, (x,))
            return loss_fn(out, y) if w is None else weighted_loss(name, out, y, w)

        return task_loss

    def _adapt_torch(self, support_x, support_y, steps, weights=None):
        if not support_x.is_cuda and self.adapt_mode == "all" and not isinstance(mlp_spec(self.model), str):
            return self._adapt_func(support_x, support_y, steps, weights)
        named = dict(self.model.named_parameters())
        fixed = {**{n: p for n, p in named.items() if n not in self.adapt_names}, **dict(self.model.named_buffers())}
        names = self.adapt_names
        tasks = support_x.shape[0]
        grad_wanted = torch.is_grad_enabled()
        batched_loss = vmap(self._support_loss(fixed, names), in_dims=(0, 0, 0, None if weights is None else 0))
        losses = []
        with torch.enable_grad():
            params = [named[n].expand(tasks, *named[n].shape) for n in names]
            params = [p if p.requires_grad else p.detach().requires_grad_() for p in params]
            for _ in range(steps):
                step_losses = batched_loss(params, support_x, support_y, weights)
                losses.append(step_losses)
                grads = torch.autograd.grad(step_losses.sum(), params, retain_graph=True,
                                            create_graph=grad_wanted and not self.first_order)
                # One multi-tensor launch on the GPU; plain arithmetic on the CPU.
                params = sgd_update(params, grads, self.inner_lr,
                                    None if self.inner_lrs is None else list(self.inner_lrs),
                                    use_kernel=None if support_x.is_cuda else False)
        support_losses = torch.stack(losses, 1)
        if not grad_wanted:
            params, support_losses = [p.detach() for p in params], support_losses.detach()
        return dict(zip(names, params)), support_losses

    def _adapt_func(self, support_x, support_y, steps, weights=None):
        """The torch backend for plain MLPs on the CPU: torch.func's vmap over
        tasks of an inner loop of grad (measured 10-25% faster there than the
        batched autograd.grad loop on the Omniglot MLP). Only for Linear +
        ReLU/Tanh stacks, whose second-order vmap(grad) the tests check against
        the eager loop: through LayerNorm it is wrong in torch 2.14 (meta-gradient
        errors of 1e-2 measured), so every other model keeps the autograd.grad loop."""
        named = dict(self.model.named_parameters())
        fixed = {**{n: p for n, p in named.items() if n not in self.adapt_names}, **dict(self.model.named_buffers())}
        names, first_order = self.adapt_names, self.first_order
        lr, lrs = self.inner_lr, None if self.inner_lrs is None else list(self.inner_lrs)
        task_loss = self._support_loss(fixed, names)

        def adapt_task(params, x, y, w):
            losses = []
            for _ in range(steps):
                grads, loss = grad_and_value(task_loss)(params, x, y, w)
                if first_order:
                    grads = [g.detach() for g in grads]
                if lrs is None:  # p + (−lr)·g: bit-identical to p − lr·g, one backward node fewer
                    params = [p + (-lr) * g for p, g in zip(params, grads)]
                else:
                    params = [p - r * g for p, r, g in zip(params, lrs, grads)]
                losses.append(loss)
            return params, torch.stack(losses)

        params, support_losses = vmap(adapt_task, in_dims=(None, 0, 0, None if weights is None else 0))(
            [named[n] for n in names], support_x, support_y, weights)
        if not torch.is_grad_enabled():
            params, support_losses = [p.detach() for p in params], support_losses.detach()
        return dict(zip(names, params)), support_losses

    # ---------------------------------------------------------------- fused
    def _flat(self, tensors):
        return torch.cat([t.reshape(-1) for t in tensors])

    def _adapt_fused(self, support_x, support_y, steps, query_x=None, query_y=None, weights=None):
        """mlp_adapt on the flat adapted parameters; with a query set the query
        forward and loss run in the same kernel launch."""
        named = dict(self.model.named_parameters())
        lrs = None if self.inner_lrs is None else self._flat(self.inner_lrs)
        if self.adapt_mode == "head":
            support_x = vmap(self._features)(support_x)
            query_x = None if query_x is None else vmap(self._features)(query_x)
            sizes, activation = [self._head.in_features, self._head.out_features], "relu"
        else:
            sizes, activation = mlp_spec(self.model)
        return mlp_adapt(self._flat([named[n] for n in self.adapt_names]), support_x, support_y, sizes, steps,
                         lr=self.inner_lr, lrs=lrs, activation=activation, loss=self.loss_name,
                         first_order=self.first_order, query_x=query_x, query_y=query_y, support_weights=weights,
                         check_labels=False)  # _check read them already (or check_inputs=False said not to)

    def _unflatten(self, flat):
        named = dict(self.model.named_parameters())
        out, offset = {}, 0
        for n in self.adapt_names:
            shape = named[n].shape
            out[n] = flat[:, offset: offset + named[n].numel()].reshape(flat.shape[0], *shape)
            offset += named[n].numel()
        return out

    # ------------------------------------------------------------------- API
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None,
              support_weights: torch.Tensor | None = None) -> dict:
        """Adapted parameters, batched over tasks: {name: [T, *shape]} (adapted ones only).
        ``support_weights`` [T, K]: as in ``forward``."""
        steps = self.inner_steps if steps is None else positive_int(steps, "BatchedMAML.adapt: steps")
        self._check(support_x, support_y, support_weights=support_weights)
        backend = self.backend_used = self._select_backend(support_x, steps)
        if backend == "fused":
            flat, _ = self._adapt_fused(support_x, support_y, steps, weights=support_weights)
            return self._unflatten(flat)
        return self._adapt_torch(support_x, support_y, steps, support_weights)[0]

    def predict(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """Apply per-task parameters (from ``adapt``) to inputs x [T, N, ...]."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError("BatchedMAML.predict: x must be a tensor [tasks, examples, ...]")
        ref = self._model_tensor()
        if x.dtype != ref.dtype or x.device != ref.device:
            raise TypeError(f"BatchedMAML.predict: x is {x.dtype} on {x.device} but the model is {ref.dtype} on "
                            f"{ref.device}")
        self._check_features("x", x)
        if x.shape[0] != next(iter(params.values())).shape[0]:
            raise ValueError(f"BatchedMAML.predict: x has {x.shape[0]} tasks but params have "
                             f"{next(iter(params.values())).shape[0]}")
        named = dict(self.model.named_parameters())
        fixed = {**{n: p for n, p in named.items() if n not in params}, **dict(self.model.named_buffers())}
        return vmap(lambda p, xt: functional_call(self.model, {**fixed, **p}, (xt,)))(params, x)

    def forward(self, support_x, support_y, query_x, query_y, support_weights=None) -> MetaOutput:
        """The meta-batch's query loss after adaptation. ``support_weights``
        [T, K] (optional) weighs each support example's inner loss: a task's
        support loss is Σ_k w_k·ℓ_k / K (all ones: the plain mean; 0 masks a
        padded example; negative allowed). Data, not differentiated."""
        self._check(support_x, support_y, query_x, query_y, support_weights)
        backend = self.backend_used = self._select_backend(support_x, self.inner_steps)
        if backend == "fused":
            _, support_losses, query_output, query_losses = self._adapt_fused(
                support_x, support_y, self.inner_steps, query_x, query_y, support_weights)
            loss = query_losses.mean()
        else:
            params, support_losses = self._adapt_torch(support_x, support_y, self.inner_steps, support_weights)
            query_output = self.predict(params, query_x)
            if self.loss_name is not None and self._output_shape(query_x) is None:
                self._check_target("query_y", query_y, query_output.shape[1:])  # not checked before the run
            if self.loss_name is not None and query_output.dim() == 3:
                loss = task_losses(query_output, query_y, self.loss_name).mean()  # no vmap overhead
            else:
                loss = vmap(self.loss_fn)(query_output, query_y).mean()
        accuracy = None
        if self.loss_name == "cross_entropy":
            accuracy = (query_output.detach().argmax(-1) == query_y).float().mean()
        return MetaOutput(loss, query_output, support_losses, accuracy)
