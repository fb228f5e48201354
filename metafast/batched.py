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
from torch.func import functional_call, vmap

from metafast.losses import resolve_loss
from metafast.nn.mlp import mlp_spec
from metafast.ops import mlp_adapt, sgd_update
from metafast.ops.mlp_adapt import task_losses
from metafast.ops._dispatch import kernel_available

BACKENDS = ("auto", "fused", "torch")
# On the CPU the fused kernel (vectorized loops, one task per thread) beats
# batched BLAS only while the per-task work is small; above this many
# parameter·example products per task, "auto" prefers the torch backend.
CPU_FUSED_MAX_WORK = 1_000_000


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
        if int(inner_steps) != inner_steps or int(inner_steps) < 1:
            raise ValueError(f"BatchedMAML: inner_steps must be >= 1, got {inner_steps}")
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
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
        self.backend_used: str | None = None

    # ------------------------------------------------------------------ checks
    def _model_tensor(self) -> torch.Tensor:
        return next(self.model.parameters())

    def _check(self, support_x, support_y, query_x=None, query_y=None) -> None:
        pairs = [("support_x", support_x), ("support_y", support_y)]
        if query_x is not None:
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
        if support_x.shape[1] == 0:
            raise ValueError("BatchedMAML: empty support set (support_x has 0 examples per task)")
        if query_x is not None:
            if query_x.shape[1] == 0:
                raise ValueError("BatchedMAML: empty query set (query_x has 0 examples per task)")
            if query_x.shape[2:] != support_x.shape[2:]:
                raise ValueError(f"BatchedMAML: query examples have shape {tuple(query_x.shape[2:])} but support "
                                 f"examples {tuple(support_x.shape[2:])}")
        for xn, x, yn, y in (("support_x", support_x, "support_y", support_y),
                             ("query_x", query_x, "query_y", query_y)):
            if x is None:
                continue
            if y.shape[1] != x.shape[1]:
                raise ValueError(f"BatchedMAML: {yn} has {y.shape[1]} examples per task but {xn} has {x.shape[1]}")
        if not self.check_inputs:
            return
        ref = self._model_tensor()
        for name, x in (("support_x", support_x), ("query_x", query_x)):
            if x is None:
                continue
            if not x.dtype.is_floating_point:
                raise TypeError(f"BatchedMAML: {name} must be floating point, got {x.dtype} (integer features? "
                                f"convert with .to({ref.dtype}))")
            if x.dtype != ref.dtype:
                raise TypeError(f"BatchedMAML: {name} has dtype {x.dtype} but the model's parameters are {ref.dtype}")
        for name, t in pairs:
            if t.device != ref.device:
                raise ValueError(f"BatchedMAML: {name} is on {t.device} but the model is on {ref.device}")
        if self.loss_name == "cross_entropy":
            for name, y in (("support_y", support_y), ("query_y", query_y)):
                if y is not None and y.dtype != torch.int64:
                    raise TypeError(f"BatchedMAML: cross-entropy {name} must hold int64 class indices, got {y.dtype}")
        elif self.loss_name == "mse":
            for name, y in (("support_y", support_y), ("query_y", query_y)):
                if y is not None and y.dtype != ref.dtype:
                    raise TypeError(f"BatchedMAML: MSE {name} has dtype {y.dtype} but the model's parameters are "
                                    f"{ref.dtype}")
        # Value checks, gathered so that a GPU is synchronised once per call.
        head = _last_linear(self.model)
        classes = head[1].out_features if head is not None else None
        checks = []
        for name, t in pairs:
            if t.dtype.is_floating_point:
                checks.append((name, "finite", torch.isfinite(t).all()))
            elif self.loss_name == "cross_entropy":
                in_range = t.min() >= 0
                if classes is not None:
                    in_range = in_range & (t.max() < classes)
                checks.append((name, "labels", in_range))
        if not checks:
            return
        for (name, kind, _), good in zip(checks, torch.stack([c for _, _, c in checks]).tolist()):
            if good:
                continue
            t = dict(pairs)[name]
            if kind == "finite":
                raise ValueError(f"BatchedMAML: {name} contains NaN or inf")
            raise ValueError(f"BatchedMAML: {name} has class labels in [{int(t.min())}, {int(t.max())}] but the "
                             f"model has {classes if classes is not None else '?'} outputs")

    # --------------------------------------------------------------- backends
    def _fused_reason(self, support_x) -> str | None:
        """Why the fused kernel cannot serve this call (None if it can)."""
        if self.loss_name is None:
            return "a custom loss callable (the fused kernel computes 'mse' and 'cross_entropy')"
        if not kernel_available(support_x.device):
            from metafast import _extension
            return _extension.UNAVAILABLE_REASON or f"no compiled kernel for device {support_x.device}"
        if self._model_tensor().dtype not in (torch.float32, torch.float64):
            return f"dtype {self._model_tensor().dtype} (the fused kernel serves float32 and float64)"
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

    def _select_backend(self, support_x) -> str:
        if self.backend == "torch":
            return "torch"
        reason = self._fused_reason(support_x)
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
    def _adapt_torch(self, support_x, support_y, steps):
        named = dict(self.model.named_parameters())
        fixed = {**{n: p for n, p in named.items() if n not in self.adapt_names}, **dict(self.model.named_buffers())}
        names = self.adapt_names
        tasks = support_x.shape[0]
        grad_wanted = torch.is_grad_enabled()
        loss_fn = self.loss_fn

        def task_loss(params, x, y):
            return loss_fn(functional_call(self.model, {**fixed, **dict(zip(names, params))}, (x,)), y)

        batched_loss = vmap(task_loss)
        losses = []
        with torch.enable_grad():
            params = [named[n].expand(tasks, *named[n].shape) for n in names]
            params = [p if p.requires_grad else p.detach().requires_grad_() for p in params]
            for _ in range(steps):
                step_losses = batched_loss(params, support_x, support_y)
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

    # ---------------------------------------------------------------- fused
    def _flat(self, tensors):
        return torch.cat([t.reshape(-1) for t in tensors])

    def _adapt_fused(self, support_x, support_y, steps, query_x=None, query_y=None):
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
                         first_order=self.first_order, query_x=query_x, query_y=query_y)

    def _unflatten(self, flat):
        named = dict(self.model.named_parameters())
        out, offset = {}, 0
        for n in self.adapt_names:
            shape = named[n].shape
            out[n] = flat[:, offset: offset + named[n].numel()].reshape(flat.shape[0], *shape)
            offset += named[n].numel()
        return out

    # ------------------------------------------------------------------- API
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> dict:
        """Adapted parameters, batched over tasks: {name: [T, *shape]} (adapted ones only)."""
        self._check(support_x, support_y)
        if steps is not None and (int(steps) != steps or steps < 1):
            raise ValueError(f"BatchedMAML.adapt: steps must be a positive integer, got {steps}")
        steps = self.inner_steps if steps is None else int(steps)
        backend = self.backend_used = self._select_backend(support_x)
        if backend == "fused":
            flat, _ = self._adapt_fused(support_x, support_y, steps)
            return self._unflatten(flat)
        return self._adapt_torch(support_x, support_y, steps)[0]

    def predict(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """Apply per-task parameters (from ``adapt``) to inputs x [T, N, ...]."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError("BatchedMAML.predict: x must be a tensor [tasks, examples, ...]")
        ref = self._model_tensor()
        if x.dtype != ref.dtype or x.device != ref.device:
            raise TypeError(f"BatchedMAML.predict: x is {x.dtype} on {x.device} but the model is {ref.dtype} on "
                            f"{ref.device}")
        if x.shape[0] != next(iter(params.values())).shape[0]:
            raise ValueError(f"BatchedMAML.predict: x has {x.shape[0]} tasks but params have "
                             f"{next(iter(params.values())).shape[0]}")
        named = dict(self.model.named_parameters())
        fixed = {**{n: p for n, p in named.items() if n not in params}, **dict(self.model.named_buffers())}
        return vmap(lambda p, xt: functional_call(self.model, {**fixed, **p}, (xt,)))(params, x)

    def forward(self, support_x, support_y, query_x, query_y) -> MetaOutput:
        self._check(support_x, support_y, query_x, query_y)
        backend = self.backend_used = self._select_backend(support_x)
        if backend == "fused":
            _, support_losses, query_output, query_losses = self._adapt_fused(
                support_x, support_y, self.inner_steps, query_x, query_y)
            loss = query_losses.mean()
        else:
            params, support_losses = self._adapt_torch(support_x, support_y, self.inner_steps)
            query_output = self.predict(params, query_x)
            if self.loss_name is not None and query_output.dim() == 3:
                loss = task_losses(query_output, query_y, self.loss_name).mean()  # no vmap overhead
            else:
                loss = vmap(self.loss_fn)(query_output, query_y).mean()
        accuracy = None
        if self.loss_name == "cross_entropy":
            accuracy = (query_output.detach().argmax(-1) == query_y).float().mean()
        return MetaOutput(loss, query_output, support_losses, accuracy)
