"""The "loop" backend: the plain per-task loop, for any model.

Each task runs the model's own forward with its parameters substituted (in a
copy of the module tree that has its own registries and shares every tensor:
the user's model is never modified, and a module or parameter used twice is
substituted everywhere). It serves what vmap cannot: batch norm updating
running statistics (task after task, in place, as learn2learn's clones do),
and a module registered under two names. On the CPU it is also the fastest
way to run conv nets with large activations per task (there, grouped
convolutions under vmap are slower than one convolution per task; see
batched.CPU_LOOP_MIN_CONV_OUTPUTS and benchmarks/README.md).
"""
from __future__ import annotations

import torch

from metafast.algorithms.backends.base import Backend
from metafast.functional import sgd_step
from metafast.maml import _parameter_slots, clone_module
from metafast.nn.per_step import inner_step


class _Substitution:
    """A module tree whose adapted parameters can be replaced per task."""

    def __init__(self, model, names):
        self.tree = clone_module(model, clone_tensors=False)
        params, slots = _parameter_slots(self.tree)
        by_id = {id(p): registries for p, registries in zip(params, slots)}
        named = dict(model.named_parameters())
        self.slots = [by_id[id(named[n])] for n in names]

    def __call__(self, tensors, x, step):
        for registries, t in zip(self.slots, tensors):
            for registry, name in registries:
                registry[name] = t
        with inner_step(step):
            return self.tree(x)


class LoopBackend(Backend):
    name = "loop"

    def _task(self, meta, sub, names, params, rates, x, y, w, steps, create_graph, query=None):
        """One task from the initial ``params``, with ``rates[step]`` per step: (adapted
        parameters, support losses [steps], last query output, query loss: the last
        step's, or MAML++'s weighted sum over steps)."""
        losses, query_output, query_loss = [], None, 0.0
        for step in range(steps):
            loss = meta.support_loss(sub(params, x, step), y, w)
            losses.append(loss)
            grads = torch.autograd.grad(loss, params, create_graph=create_graph, retain_graph=True,
                                        allow_unused=True)
            used, rate = set(meta.used_gradients(names, grads)), rates[step]
            params = [sgd_step(p, grads[i], meta.inner_lr if rate is None else rate[i]) if i in used else p
                      for i, p in enumerate(params)]
            weights = meta.step_weights
            if query is not None and (weights is not None or step == steps - 1):
                query_output = sub(params, query[0], step)
                task_loss = meta.loss_fn(query_output, query[1])
                query_loss = query_loss + (task_loss if weights is None else weights[step] * task_loss)
        return params, torch.stack(losses), query_output, query_loss

    def _tasks(self, meta, support_x, support_y, steps, weights, query_x=None, query_y=None):
        names = meta.adapt_names
        sub = _Substitution(meta.model, names)
        named = dict(meta.model.named_parameters())
        initial = [named[n] for n in names]
        rates = [meta.rates(names, step) for step in range(steps)]  # once per call, not per task
        grad_wanted = torch.is_grad_enabled()
        with torch.enable_grad():
            out = [self._task(meta, sub, names, initial, rates, support_x[t], support_y[t],
                              None if weights is None else weights[t],
                              steps, grad_wanted and not meta.first_order,
                              None if query_x is None else (query_x[t], query_y[t]))
                   for t in range(support_x.shape[0])]
        if not grad_wanted:
            out = [tuple(v.detach() if isinstance(v, torch.Tensor) else [p.detach() for p in v]
                         if isinstance(v, list) else v for v in task) for task in out]
        return names, out

    def adapt(self, meta, support_x, support_y, steps, weights=None):
        names, out = self._tasks(meta, support_x, support_y, steps, weights)
        params = {n: torch.stack([task[0][i] for task in out]) for i, n in enumerate(names)}
        return params, torch.stack([task[1] for task in out])

    def predict(self, meta, params, x):
        names = list(params)
        sub = _Substitution(meta.model, names)
        last = meta.inner_steps - 1  # per-step layers: the query forward after the last step
        return torch.stack([sub([params[n][t] for n in names], x[t], last) for t in range(x.shape[0])])

    def run(self, meta, support_x, support_y, query_x, query_y, weights=None):
        _, out = self._tasks(meta, support_x, support_y, meta.inner_steps, weights, query_x, query_y)
        loss = sum(task[3] for task in out) / len(out)
        return torch.stack([task[1] for task in out]), torch.stack([task[2] for task in out]), loss
