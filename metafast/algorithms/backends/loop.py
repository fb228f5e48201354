"""The "loop" backend: the plain per-task loop, for any model.

Each task runs the model's own forward with its parameters substituted (in a
copy of the module tree that has its own registries and shares every tensor:
the user's model is never modified, and a module or parameter used twice is
substituted everywhere). It serves what vmap cannot: batch norm updating
running statistics (task after task, in place, as learn2learn's clones do),
and a module registered under two names. On the CPU it is also the fastest
way to run conv nets (grouped convolutions under vmap are slower than one
convolution per task; see benchmarks/README.md).
"""
from __future__ import annotations

import torch

from metafast.algorithms.backends.base import Backend
from metafast.maml import _parameter_slots, clone_module


class _Substitution:
    """A module tree whose adapted parameters can be replaced per task."""

    def __init__(self, model, names):
        self.tree = clone_module(model, clone_tensors=False)
        params, slots = _parameter_slots(self.tree)
        by_id = {id(p): registries for p, registries in zip(params, slots)}
        named = dict(model.named_parameters())
        self.slots = [by_id[id(named[n])] for n in names]

    def set(self, tensors):
        for registries, t in zip(self.slots, tensors):
            for registry, name in registries:
                registry[name] = t

    def __call__(self, tensors, x):
        self.set(tensors)
        return self.tree(x)


class LoopBackend(Backend):
    name = "loop"

    def _adapt_task(self, meta, sub, names, rates, x, y, w, steps, create_graph):
        named = dict(meta.model.named_parameters())
        params = [named[n] for n in names]
        losses = []
        for _ in range(steps):
            loss = meta.support_loss(sub(params, x), y, w)
            losses.append(loss)
            grads = torch.autograd.grad(loss, params, create_graph=create_graph, retain_graph=True,
                                        allow_unused=True)
            used = meta.used_gradients(names, grads)
            params = [params[i] if i not in used else
                      params[i] + (-meta.inner_lr) * grads[i] if rates is None else params[i] - rates[i] * grads[i]
                      for i in range(len(params))]
        return params, torch.stack(losses)

    def _tasks(self, meta, support_x, support_y, steps, weights):
        """Per task: (adapted parameters, support losses), and the substitution tree."""
        names, rates = meta.adapt_names, meta.rates(meta.adapt_names)
        sub = _Substitution(meta.model, names)
        grad_wanted = torch.is_grad_enabled()
        out = []
        with torch.enable_grad():
            for t in range(support_x.shape[0]):
                out.append(self._adapt_task(meta, sub, names, rates, support_x[t], support_y[t],
                                            None if weights is None else weights[t], steps,
                                            grad_wanted and not meta.first_order))
        if not grad_wanted:
            out = [([p.detach() for p in params], losses.detach()) for params, losses in out]
        return names, sub, out

    def adapt(self, meta, support_x, support_y, steps, weights=None):
        names, _, out = self._tasks(meta, support_x, support_y, steps, weights)
        params = {n: torch.stack([task[0][i] for task in out]) for i, n in enumerate(names)}
        return params, torch.stack([task[1] for task in out])

    def predict(self, meta, params, x):
        names = list(params)
        sub = _Substitution(meta.model, names)
        return torch.stack([sub([params[n][t] for n in names], x[t]) for t in range(x.shape[0])])

    def run(self, meta, support_x, support_y, query_x, query_y, weights=None):
        names, sub, out = self._tasks(meta, support_x, support_y, meta.inner_steps, weights)
        outputs = [sub(params, query_x[t]) for t, (params, _) in enumerate(out)]
        loss = sum(meta.loss_fn(o, query_y[t]) for t, o in enumerate(outputs)) / len(outputs)
        query_output = torch.stack(outputs)
        if not torch.is_grad_enabled():
            query_output, loss = query_output.detach(), loss.detach()
        return torch.stack([losses for _, losses in out]), query_output, loss
