"""The "torch" backend: any model torch.func.functional_call can run, vmapped over tasks.

Per-task parameters are batched tensors [T, *shape]; vmap turns per-task
convolution weights into grouped convolutions. Dropout draws per-task masks
(``randomness="different"``). Two formulations: for plain Linear + ReLU/Tanh
stacks on the CPU, vmap over an inner loop of torch.func.grad (measured 10-25%
faster there than the batched autograd.grad loop on the Omniglot MLP); every
other model keeps the autograd.grad loop, because second-order vmap(grad) is
wrong through nn.LayerNorm in torch 2.14 (meta-gradient errors of 1e-2).
"""
from __future__ import annotations

import torch
from torch.func import functional_call, grad_and_value, vmap

from metafast.algorithms import model_facts
from metafast.algorithms.backends.base import Backend
from metafast.functional import sgd_step
from metafast.nn.mlp import mlp_spec
from metafast.nn.per_step import inner_step
from metafast.ops import sgd_update


class VmapBackend(Backend):
    name = "torch"

    def unavailable(self, meta, support_x, steps):
        shared = model_facts.shared_module_paths(meta.model)
        if shared is not None:
            return ("the model registers one module under two names (%s and %s), which torch.func.functional_call "
                    "cannot run; use backend='loop', or register the module once and call it twice" % shared)
        stats = model_facts.running_stats_reason(meta.model)
        if stats is not None:
            return (f"{stats}, which vmap cannot do per task; use backend='loop' (running statistics updated task "
                    "after task, as learn2learn does), or track_running_stats=False, or model.eval()")
        return None

    def _fixed(self, meta, names):
        named = dict(meta.model.named_parameters())
        return {**{n: p for n, p in named.items() if n not in names}, **dict(meta.model.named_buffers())}

    def _task_loss(self, meta, names):
        fixed = self._fixed(meta, names)

        def task_loss(params, x, y, w):
            return meta.support_loss(functional_call(meta.model, {**fixed, **dict(zip(names, params))}, (x,)), y, w)

        return task_loss

    def adapt(self, meta, support_x, support_y, steps, weights=None):
        names = meta.adapt_names
        if self._plain_mlp(meta, support_x):
            params, losses = self._adapt_func(meta, names, support_x, support_y, steps, weights)
        else:
            params, losses, _ = self._adapt_autograd(meta, names, support_x, support_y, steps, weights)
        if not torch.is_grad_enabled():
            params, losses = [p.detach() for p in params], losses.detach()
        return dict(zip(names, params)), losses

    @staticmethod
    def _plain_mlp(meta, support_x) -> bool:
        """The torch.func.grad formulation: plain MLPs on the CPU with one rate rule for every step."""
        return (not support_x.is_cuda and meta.adapt_mode == "all" and meta.step_lrs is None
                and not isinstance(mlp_spec(meta.model), str)
                and model_facts.fused_mlp_reason(meta.model, meta.adapt_names) is None)

    def run(self, meta, support_x, support_y, query_x, query_y, weights=None):
        if meta.step_weights is None:
            return super().run(meta, support_x, support_y, query_x, query_y, weights)
        # MAML++'s multi-step loss: the query loss after every step.
        params, support_losses, query = self._adapt_autograd(meta, meta.adapt_names, support_x, support_y,
                                                             meta.inner_steps, weights, (query_x, query_y))
        query_output, loss = query
        if not torch.is_grad_enabled():
            support_losses, query_output, loss = support_losses.detach(), query_output.detach(), loss.detach()
        return support_losses, query_output, loss

    def _adapt_autograd(self, meta, names, support_x, support_y, steps, weights, query=None):
        named = dict(meta.model.named_parameters())
        tasks = support_x.shape[0]
        grad_wanted = torch.is_grad_enabled()
        batched_loss = vmap(self._task_loss(meta, names), in_dims=(0, 0, 0, None if weights is None else 0),
                            randomness="different")
        losses, query_output, query_loss = [], None, 0.0
        with torch.enable_grad():
            params = [named[n].expand(tasks, *named[n].shape) for n in names]
            params = [p if p.requires_grad else p.detach().requires_grad_() for p in params]
            for step in range(steps):
                with inner_step(step):
                    step_losses = batched_loss(params, support_x, support_y, weights)
                losses.append(step_losses)
                grads = torch.autograd.grad(step_losses.sum(), params, retain_graph=True, allow_unused=True,
                                            create_graph=grad_wanted and not meta.first_order)
                params = self._step(meta, names, params, grads, meta.rates(names, step), support_x.is_cuda)
                if query is not None:
                    query_output = self._predict_at(meta, dict(zip(names, params)), query[0], step)
                    query_loss = query_loss + meta.step_weights[step] * meta.mean_query_loss(query_output, query[1])
        return params, torch.stack(losses, 1), (query_output, query_loss)

    @staticmethod
    def _step(meta, names, params, grads, rates, on_cuda):
        """One inner update; an unused parameter (no gradient) keeps its value."""
        used = meta.used_gradients(names, grads)
        new = list(params)
        if used:
            ps, gs = [params[i] for i in used], [grads[i] for i in used]
            if rates is not None and meta.step_lrs is not None:  # MAML++: one scalar rate per tensor and step
                updated = [sgd_step(p, g, rates[i]) for i, p, g in zip(used, ps, gs)]
            else:  # one multi-tensor launch on the GPU; plain arithmetic on the CPU
                updated = sgd_update(ps, gs, meta.inner_lr, None if rates is None else [rates[i] for i in used],
                                     use_kernel=None if on_cuda else False)
            for i, q in zip(used, updated):
                new[i] = q
        return new

    def _adapt_func(self, meta, names, support_x, support_y, steps, weights):
        named = dict(meta.model.named_parameters())
        first_order, lr, rates = meta.first_order, meta.inner_lr, meta.rates(names)  # one rule for every step
        task_loss = self._task_loss(meta, names)

        def adapt_task(params, x, y, w):
            losses = []
            for _ in range(steps):
                grads, loss = grad_and_value(task_loss)(params, x, y, w)
                if first_order:
                    grads = [g.detach() for g in grads]
                params = [sgd_step(p, g, lr if rates is None else r)
                          for p, g, r in zip(params, grads, rates or [None] * len(params))]
                losses.append(loss)
            return params, torch.stack(losses)

        return vmap(adapt_task, in_dims=(None, 0, 0, None if weights is None else 0))(
            [named[n] for n in names], support_x, support_y, weights)

    def predict(self, meta, params, x):
        return self._predict_at(meta, params, x, meta.inner_steps - 1)  # after the last step

    def _predict_at(self, meta, params, x, step):
        fixed = self._fixed(meta, params)
        with inner_step(step):
            return vmap(lambda p, xt: functional_call(meta.model, {**fixed, **p}, (xt,)), randomness="different")(
                params, x)
