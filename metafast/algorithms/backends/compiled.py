"""The "compile" backend: torch.compile over the torch.func meta-gradient.

torch.compile cannot compile a double backward (autograd.grad with
create_graph=True, pytorch/pytorch#91469), but the whole second-order
meta-gradient written with torch.func transforms (grad of vmap of an inner
loop of grad) compiles into one graph in torch 2.14: loss and meta-gradient
come out of one compiled call. BatchedMAML's ``out.loss`` then carries that
gradient into autograd (``_PrecomputedGrad``), so ``out.loss.backward()``
works as on every backend; ``query_output`` and ``support_losses`` are
returned detached (differentiate ``out.loss`` only).

Compiled once per configuration (model, steps, order, loss, shapes); the
first call's compile time is reported once (``meta.compile_seconds``). If
compilation fails, the call falls back to the torch backend with the reason,
once. ``adapt`` / ``predict`` run on the torch backend, uncompiled. On CUDA
the mode is "reduce-overhead" (CUDA graphs) where the model allows it.
"""
from __future__ import annotations

import os
import time
import warnings

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap
from torch.overrides import TorchFunctionMode

from metafast.algorithms.backends.base import Backend
from metafast.algorithms.backends.vmap import VmapBackend
from metafast.functional import sgd_step
from metafast.nn.per_step import inner_step


class CompileWarning(UserWarning):
    """The one-time compile cost, or why the compiled path fell back."""


class _PrecomputedGrad(torch.autograd.Function):
    """loss, with d loss / d inputs already computed (by the compiled call)."""

    @staticmethod
    def forward(ctx, loss, grads, *inputs):
        ctx.grads = grads
        return loss.detach().clone()

    @staticmethod
    def backward(ctx, grad_loss):
        return (None, None, *[None if g is None else grad_loss * g for g in ctx.grads])


class _DecomposedNorms(TorchFunctionMode):
    """Batch norm on batch statistics and layer norm as explicit means and
    variances. torch.func's second derivatives of the fused norm kernels are
    wrong in torch 2.14 (meta-gradient errors of 7e-3 through nn.BatchNorm2d and
    1e-2 through nn.LayerNorm, measured against the eager loop); of the
    explicit formula they are exact."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            return _batch_norm(*args, **kwargs)
        if func is F.layer_norm:
            return _layer_norm(*args, **kwargs)
        return func(*args, **kwargs)


def _batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    if not training and running_mean is not None:  # running statistics: an affine map, no fused-kernel issue
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)  # mode is off here
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = x.mean(dims, keepdim=True)
    y = (x - mean) * torch.rsqrt((x - mean).square().mean(dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.reshape(shape)
    return y if bias is None else y + bias.reshape(shape)


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = list(range(x.dim() - len(normalized_shape), x.dim()))
    mean = x.mean(dims, keepdim=True)
    y = (x - mean) * torch.rsqrt((x - mean).square().mean(dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


def _meta_function(meta, adapt_names, trainable_names, steps, weighted, per_step, multi_step):
    """f(trainable, rates, constant, sx, sy, qx, qy, w, step_weights) -> mean query
    loss, per-task query outputs and support losses; pure, for torch.func and
    torch.compile. ``rates``: None, {name: per-element rates} (Meta-SGD) or,
    with ``per_step``, {name: [steps]} (MAML++'s LSLR); ``multi_step``: the query
    loss after every step weighted by step_weights (MSL)."""
    model, first_order, lr = meta.model, meta.first_order, meta.inner_lr
    loss_fn = meta.loss_fn

    def support_loss(params, x, y, w):
        out = functional_call(model, params, (x,))
        return meta.support_loss(out, y, w if weighted else None)

    def rate(rates, name, step):
        if rates is None:
            return None
        return rates[name][step] if per_step else rates[name]

    def task(trainable, rates, constant, sx, sy, qx, qy, w, step_weights):
        fixed = {**constant, **{n: t for n, t in trainable.items() if n not in adapt_names}}
        adapted = {n: trainable[n] for n in adapt_names}
        losses, query_loss = [], 0.0
        for step in range(steps):
            with inner_step(step):
                grads, loss = grad_and_value(lambda p: support_loss({**fixed, **p}, sx, sy, w))(adapted)
            if first_order:
                grads = {n: g.detach() for n, g in grads.items()}
            adapted = {n: sgd_step(p, grads[n], lr if rates is None else rate(rates, n, step))
                       for n, p in adapted.items()}
            losses.append(loss)
            if multi_step or step == steps - 1:
                with inner_step(step):
                    query_output = functional_call(model, {**fixed, **adapted}, (qx,))
                meta._require_tensor_output(query_output)
                step_loss = loss_fn(query_output, qy)
                query_loss = query_loss + (step_weights[step] * step_loss if multi_step else step_loss)
        return query_loss, (query_output, torch.stack(losses))

    def mean_loss(trainable, rates, constant, sx, sy, qx, qy, w, step_weights):
        in_dims = (None, None, None, 0, 0, 0, 0, 0 if weighted else None, None)
        with _DecomposedNorms():
            losses, aux = vmap(task, in_dims=in_dims, randomness="different")(trainable, rates, constant, sx, sy,
                                                                               qx, qy, w, step_weights)
        return losses.mean(), aux

    return mean_loss


class CompiledBackend(Backend):
    name = "compile"

    def __init__(self):
        self._vmap = VmapBackend()

    def unavailable(self, meta, support_x, steps):
        reason = self._vmap.unavailable(meta, support_x, steps)
        if reason is None and getattr(meta, "_compile_failed", None):
            reason = f"torch.compile failed earlier ({meta._compile_failed})"
        return reason

    def adapt(self, meta, support_x, support_y, steps, weights=None):
        return self._vmap.adapt(meta, support_x, support_y, steps, weights)

    def predict(self, meta, params, x):
        return self._vmap.predict(meta, params, x)

    def _compiled(self, meta, key, build):
        """(the compiled function for ``key``, whether this is its first call)."""
        cache = meta.__dict__.setdefault("_compiled_functions", {})
        first = key not in cache
        if first:
            mode = "reduce-overhead" if key[-1] == "cuda" else None
            compiler = os.environ.get("METAFAST_COMPILE_BACKEND", "inductor")  # "aot_eager": trace, no codegen
            cache[key] = torch.compile(build(), backend=compiler, mode=None if compiler != "inductor" else mode,
                                       dynamic=False)
        return cache[key], first

    def run(self, meta, support_x, support_y, query_x, query_y, weights=None):
        try:
            return self._run(meta, support_x, support_y, query_x, query_y, weights)
        except (ValueError, TypeError):
            raise  # the user's mistake, not the compiler's
        except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back, saying why once
            meta._compile_failed = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            warnings.warn(f"BatchedMAML(backend='compile'): torch.compile failed ({meta._compile_failed}); using the "
                          "torch backend", CompileWarning, stacklevel=4)
            meta.backend_used = self._vmap.name
            return self._vmap.run(meta, support_x, support_y, query_x, query_y, weights)

    def _run(self, meta, support_x, support_y, query_x, query_y, weights):
        named = dict(meta.model.named_parameters())
        adapt_names = meta.adapt_names
        want_grad = torch.is_grad_enabled()
        trainable = {n: p for n, p in named.items() if p.requires_grad and want_grad}
        constant = {**{n: p.detach() for n, p in named.items() if n not in trainable},
                    **dict(meta.model.named_buffers())}
        trainable = {n: p.detach() for n, p in trainable.items()}
        for n in adapt_names:  # adapted but not differentiated (no_grad): a constant starting point
            if n not in trainable:
                trainable[n] = constant.pop(n)
        per_step = meta.step_lrs is not None
        if per_step:
            rate_list = [dict(zip(meta._adaptable, meta.step_lrs))[n] for n in adapt_names]
        else:
            rate_list = meta.rates(adapt_names)
        rates = None if rate_list is None else {n: r.detach() for n, r in zip(adapt_names, rate_list)}
        weighted, multi_step = weights is not None, meta.step_weights is not None
        key = (tuple(adapt_names), tuple(sorted(trainable)), meta.inner_steps, weighted, rates is None, per_step,
               multi_step, meta.first_order, meta.inner_lr, want_grad, support_x.device.type)
        differentiate = [n for n in trainable if named[n].requires_grad] if want_grad else []
        diff_rates = want_grad and rates is not None

        def build():  # only on a configuration's first call
            f = _meta_function(meta, adapt_names, list(trainable), meta.inner_steps, weighted, per_step, multi_step)
            if not want_grad:
                return lambda *args: f(*args)
            argnums = (0, 1) if diff_rates else 0
            return grad_and_value(f, argnums=argnums, has_aux=True)

        compiled, first = self._compiled(meta, key, build)
        start = time.perf_counter()
        result = compiled(trainable, rates, constant, support_x, support_y, query_x, query_y, weights,
                          meta.step_weights)
        if first:
            meta.compile_seconds = time.perf_counter() - start
            warnings.warn(f"BatchedMAML(backend='compile'): compiled in {meta.compile_seconds:.1f} s (once per "
                          "configuration)", CompileWarning, stacklevel=4)
        clone = (lambda t: t.clone()) if support_x.is_cuda else (lambda t: t)  # CUDA-graph outputs are reused
        if not want_grad:
            loss, (query_output, support_losses) = result
            return clone(support_losses), clone(query_output), clone(loss)
        grads, (loss, (query_output, support_losses)) = result
        param_grads, rate_grads = grads if diff_rates else (grads, None)
        inputs = [named[n] for n in differentiate]
        flat = [clone(param_grads[n]) for n in differentiate]
        if diff_rates:
            inputs += list(rate_list)
            flat += [clone(rate_grads[n]) for n in adapt_names]
        loss = _PrecomputedGrad.apply(clone(loss), flat, *inputs)
        return clone(support_losses).detach(), clone(query_output).detach(), loss
