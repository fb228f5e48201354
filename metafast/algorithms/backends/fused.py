"""The "fused" backend: the metafast::mlp_adapt op (the whole inner loop of every
task in one kernel launch) for plain Linear + ReLU/Tanh stacks, and for the
Linear head of ANIL (adapt="head").

A training call (gradients wanted) runs metafast::mlp_meta_grad: the inner
loop, the query set and the meta-loss's gradient in one op call, carried into
autograd by _MetaGradOutputs; evaluation and ``adapt`` run mlp_adapt.

It serves a model only when the model's forward provably is the MLP the kernel
computes (model_facts.fused_mlp_reason / fused_head_reason); ``backend="auto"``
also asks the measured size rules below.
"""
from __future__ import annotations

import torch
from torch.func import vmap

from metafast.algorithms import model_facts
from metafast.algorithms.backends.base import Backend
from metafast.functional import flat
from metafast.nn.mlp import mlp_spec
from metafast.nn.per_step import has_per_step_layers
from metafast.ops import mlp_adapt, mlp_meta_grad
from metafast.ops._dispatch import kernel_unavailable_reason
from metafast.ops.mlp_adapt import MAX_STEPS, within

# On the CPU the fused kernel (task packs, or one task per thread for larger
# nets) beats batched BLAS while the per-task work is small; above this many
# parameter·example products per task "auto" prefers the torch backend.
# Measured (benchmarks/README.md, "auto"): fused 5.5x at 17,610 (sinusoid),
# 1.06x at 323,280, 1.18x at 273,625, 0.96x at 850,020, 0.74x at 1.2 million.
CPU_FUSED_MAX_WORK = 800_000
# On CUDA one thread block runs one task, so a task's work is bounded by one
# SM's throughput while vmap's batched GEMMs use every SM: the fused kernel
# can only win while a task's work is small enough for launch overhead (which
# it removes) to dominate. Not measured yet (no GPU run): a conservative
# bound from that model, 8x below the CPU's, which keeps the sinusoid (17,610)
# fused and sends the Omniglot MLP (1.2 million) to vmap. benchmarks/README.md.
CUDA_FUSED_MAX_WORK = 100_000
# Under no_grad the op's [T, steps, P] trajectory (kept for a backward) is
# not needed: tasks run in chunks whose trajectory fits this many bytes.
NO_GRAD_TRAJECTORY_BYTES = 64 << 20


class FusedBackend(Backend):
    name = "fused"

    def unavailable(self, meta, support_x, steps):
        if meta.loss_name is None:
            return "a custom loss callable (the fused kernel computes 'mse' and 'cross_entropy')"
        if not within(steps, MAX_STEPS):
            return f"{steps} inner steps (the fused kernel runs at most {MAX_STEPS})"
        if has_per_step_layers(meta.model):
            return "per-step layers (MAML++'s per-step batch norm)"
        reason = kernel_unavailable_reason(support_x.device)
        if reason is not None:
            return reason
        dtype = meta.model_tensor().dtype
        if dtype not in (torch.float32, torch.float64):
            return f"dtype {dtype} (the fused kernel serves float32 and float64)"
        if meta.adapt_mode == "head":
            return model_facts.fused_head_reason(meta.model, meta.head_name, meta.head, meta.adapt_names)
        spec = mlp_spec(meta.model)
        if isinstance(spec, str):
            return spec
        reason = model_facts.fused_mlp_reason(meta.model, meta.adapt_names)
        if reason is None and support_x.dim() != 3:
            reason = f"support_x of shape {tuple(support_x.shape)} (the fused MLP takes [tasks, shots, features])"
        return reason

    def slower_reason(self, meta, support_x) -> str | None:
        """Why "auto" expects another backend to be faster here (None: fused is)."""
        work = sum(p.numel() for p in self._adapted(meta)) * support_x.shape[1]
        limit = CUDA_FUSED_MAX_WORK if support_x.is_cuda else CPU_FUSED_MAX_WORK
        if work > limit:
            return (f"on {support_x.device.type.upper()}, batched BLAS is expected to be faster for this model size "
                    f"({work:,} parameter-examples per task > {limit:,}); pass backend='fused' to force the kernel")
        return None

    def _adapted(self, meta):
        """The parameters that adapt now (meta.adapt_names)."""
        return meta.adapted_parameters()[1]

    def _features(self, meta):
        """The body of an ANIL model: x -> the head's input. For a plain
        nn.Sequential (fused_head_reason proved it one) its layers but the last,
        run as Sequential.forward runs them (no new module per call)."""
        if isinstance(meta.model, torch.nn.Sequential):
            body = list(meta.model)[:-1]

            def features(x):
                for layer in body:
                    x = layer(x)
                return x
            return features
        return meta.model.features

    def _rates(self, meta, steps, adapted):
        """The op's lrs: None (the scalar inner_lr), Meta-SGD's [P], or MAML++'s
        per-tensor per-step rates expanded to one row per step [steps, P]
        (their gradients sum back through the expand). ``adapted``: _adapted(meta)."""
        if meta.step_lrs is None and meta.inner_lrs is None:
            return None
        names = meta.adapt_names
        if meta.step_lrs is None:
            return flat(meta.rates(names))
        return torch.stack([flat(r.expand_as(p) for r, p in zip(meta.rates(names, s), adapted))
                            for s in range(steps)])

    def _inputs(self, meta, support_x, query_x, steps, adapted):
        """(support_x, query_x, the op's other arguments): the head's inputs are
        the body's features in ANIL. ``adapted``: _adapted(meta)."""
        every_step = query_x is not None and meta.step_weights is not None  # MAML++'s multi-step loss
        if meta.adapt_mode == "head":
            features = self._features(meta)
            support_x = vmap(features, randomness="different")(support_x)
            query_x = None if query_x is None else vmap(features, randomness="different")(query_x)
            sizes, activation = [meta.head.in_features, meta.head.out_features], "relu"
        else:
            sizes, activation = mlp_spec(meta.model)
        args = dict(sizes=sizes, steps=steps, lr=meta.inner_lr, lrs=self._rates(meta, steps, adapted),
                    activation=activation,
                    loss=meta.loss_name, first_order=meta.first_order, query_every_step=every_step,
                    check_labels=False)  # BatchedMAML checked them (or was told not to)
        return support_x, query_x, args

    def _call(self, params, support_x, support_y, query_x, query_y, weights, args):
        """mlp_adapt on prepared inputs (``_inputs``); under no_grad in chunks of tasks."""
        if torch.is_grad_enabled():
            return mlp_adapt(params, support_x, support_y, query_x=query_x, query_y=query_y, support_weights=weights,
                             **args)
        chunk = max(1, NO_GRAD_TRAJECTORY_BYTES // (args["steps"] * params.numel() * params.element_size()))
        pieces = [mlp_adapt(params, support_x[i:i + chunk], support_y[i:i + chunk],
                            query_x=None if query_x is None else query_x[i:i + chunk],
                            query_y=None if query_y is None else query_y[i:i + chunk],
                            support_weights=None if weights is None else weights[i:i + chunk], **args)
                  for i in range(0, support_x.shape[0], chunk)]
        return tuple(torch.cat(parts) for parts in zip(*pieces))

    def _unflatten(self, meta, adapted):
        out, offset = {}, 0
        for n, p in zip(meta.adapt_names, self._adapted(meta)):
            out[n] = adapted[:, offset: offset + p.numel()].reshape(adapted.shape[0], *p.shape)
            offset += p.numel()
        return out

    def adapt(self, meta, support_x, support_y, steps, weights=None):
        initial = self._adapted(meta)
        support_x, _, args = self._inputs(meta, support_x, None, steps, initial)
        adapted, support_losses = self._call(flat(initial), support_x, support_y, None, None, weights, args)
        return self._unflatten(meta, adapted), support_losses

    def predict(self, meta, params, x):
        from metafast.algorithms.backends.vmap import VmapBackend
        return VmapBackend().predict(meta, params, x)

    def run(self, meta, support_x, support_y, query_x, query_y, weights=None):
        adapted = self._adapted(meta)
        sx, qx, args = self._inputs(meta, support_x, query_x, meta.inner_steps, adapted)
        differentiated = [any(p.requires_grad for p in adapted), args["lrs"] is not None and args["lrs"].requires_grad]
        if torch.is_grad_enabled() and any(differentiated) and not (sx.requires_grad or qx.requires_grad):
            call = _MetaGradCall(meta, sx, support_y, qx, query_y, weights, args, differentiated)
            return _MetaGradOutputs.apply(call, args["lrs"], *adapted)
        _, support_losses, query_output, query_losses = self._call(flat(adapted), sx, support_y, qx, query_y,
                                                                   weights, args)
        return support_losses, query_output, meta_loss(query_losses, meta.step_weights)


def meta_loss(query_losses, step_weights):
    """The mean query loss, or with MAML++'s multi-step loss ([T, steps])
    Σ_s w_s · (the mean query loss after step s)."""
    if step_weights is None:
        return query_losses.mean()
    return (query_losses.mean(0) * step_weights).sum()


class _MetaGradCall:
    """One meta-iteration on the kernel: ``run`` (mlp_meta_grad: forward and
    meta-gradient in one call) and ``recompute`` (the differentiable mlp_adapt,
    for what ``run``'s precomputed gradient does not cover)."""

    def __init__(self, meta, support_x, support_y, query_x, query_y, weights, args, differentiated):
        self.data = dict(support_x=support_x, support_y=support_y, query_x=query_x, query_y=query_y,
                         support_weights=weights)
        self.args, self.step_weights, self.differentiated = args, meta.step_weights, differentiated

    def run(self, params, lrs):
        args, w = {**self.args, "lrs": lrs}, self.step_weights
        t = self.data["support_x"].shape[0]
        # What autograd would pass back from meta_loss: 1/T each, or w_s/T per step.
        weights = None if w is None else (w / t).expand(t, -1)
        support_losses, query_output, query_losses, grad_params, grad_lrs = mlp_meta_grad(
            params, **self.data, grad_query_losses=weights, lrs_grad=self.differentiated[1], **args)
        grads = (grad_params if self.differentiated[0] else None, grad_lrs)
        return support_losses, query_output, meta_loss(query_losses, w), grads

    def recompute(self, params, lrs):
        d = self.data
        _, support_losses, query_output, query_losses = mlp_adapt(
            params, d["support_x"], d["support_y"], query_x=d["query_x"], query_y=d["query_y"],
            support_weights=d["support_weights"], **{**self.args, "lrs": lrs})
        return support_losses, query_output, meta_loss(query_losses, self.step_weights)


class _MetaGradOutputs(torch.autograd.Function):
    """(support losses, query output, meta-loss) of a _MetaGradCall, with the
    meta-loss's gradient w.r.t. the adapted parameters and the rates
    precomputed by the kernel; the parameters are inputs one by one, so their
    gradients are views of the flat one (no cat in the graph). A gradient of
    the support losses or the query output, or of the gradient itself
    (create_graph=True), re-runs the differentiable mlp_adapt instead: exact in
    every case, as on the two-op path."""

    @staticmethod
    def forward(ctx, call, lrs, *params):
        support_losses, query_output, loss, grads = call.run(flat(params), lrs)
        ctx.call, ctx.grads = call, grads
        ctx.save_for_backward(lrs, *params)
        ctx.set_materialize_grads(False)
        return support_losses, query_output, loss

    @staticmethod
    def backward(ctx, grad_support, grad_output, grad_loss):
        lrs, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad[1:]  # lrs, then each parameter
        if grad_support is None and grad_output is None and not torch.is_grad_enabled():
            if grad_loss is None:
                return (None,) * (2 + len(params))
            g_params, g_lrs = ctx.grads
            g_lrs = grad_loss * g_lrs if needs[0] else None
            g_flat = grad_loss * g_params if any(needs[1:]) else None
            views, offset = [], 0
            for p, need in zip(params, needs[1:]):
                views.append(g_flat[offset: offset + p.numel()].view_as(p) if need else None)
                offset += p.numel()
            return (None, g_lrs, *views)
        wanted = [t for t, need in zip([lrs] + params, needs) if need]
        with torch.enable_grad():
            outputs = ctx.call.recompute(flat(params), lrs)
            pairs = [(o, g) for o, g in zip(outputs, (grad_support, grad_output, grad_loss)) if g is not None]
            grads = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                             create_graph=torch.is_grad_enabled(), allow_unused=True))
        return (None, *[next(grads) if need else None for need in needs])
