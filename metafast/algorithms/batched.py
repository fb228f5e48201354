"""BatchedMAML: adapt a whole meta-batch of tasks at once.

BatchedMAML holds the configuration (rates, steps, loss, what adapts),
validates each call (batched_checks) and hands it to a backend
(backends/: fused, torch, loop; one interface). ``backend="auto"`` picks the
first of AUTO_ORDER that serves the call exactly and is not expected to be
slower; ``backend_used`` names the one that ran. Losses are means over each
task's examples; ``out.loss`` is the mean over tasks.

What adapts: every parameter that requires grad (frozen ones stay fixed, as
in learn2learn), or with ``adapt="head"`` (ANIL) only the head's.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vmap

from metafast.algorithms import batched_checks, model_facts
from metafast.algorithms.backends import BACKENDS
from metafast.losses import resolve_loss, weighted_loss
from metafast._validate import check_rate, positive_int
from metafast.ops.mlp_adapt import task_losses

BACKEND_NAMES = ("auto", *BACKENDS)


@dataclass
class MetaOutput:
    loss: torch.Tensor                   # scalar: mean query loss over tasks
    query_output: torch.Tensor           # [T, Q, ...] model output on the query set
    support_losses: torch.Tensor         # [T, inner_steps]: support loss before each step
    accuracy: torch.Tensor | None = None  # scalar mean query accuracy (cross-entropy only)


# On the CPU, vmap's grouped convolutions beat one convolution per task while a
# task's convolution outputs are small, and lose once they are large (measured,
# 2 threads, second order, benchmarks/README.md "Backends on the CPU"): Conv-4
# 5-way 1-shot (84,800 output elements per task's support set): vmap 255 ms vs
# the loop 504 ms; functorch's MAML-Omniglot net 5-way 5-shot (1,289,600):
# vmap 31.8 s vs 8.5 s. The threshold lies between the two measured points.
CPU_LOOP_MIN_CONV_OUTPUTS = 300_000
# Where vmap serves a conv net on the CPU, torch.compile over the torch.func
# meta-gradient ("compile") beats it once its one-time compile is paid for:
# Conv-4 5-way 1-shot, 32 tasks, 1 step, 2 threads (benchmarks/README.md
# "Backends on the CPU"): 203.5 ms against 254.7 per iteration after a 60 s
# first call, paid back after about 1,200 iterations. (In the loop's regime,
# functorch's net, it lost: 14.0 s against 9.4.) "auto" takes it when the
# caller expects at least this many iterations (expected_iterations), a 4x
# margin over that break-even; it cannot know otherwise, so compile is never
# chosen by default.
CPU_COMPILE_MIN_ITERATIONS = 5_000


def auto_order(meta, support_x) -> tuple[str, ...]:
    """The backends "auto" tries, fastest expected first."""
    if not support_x.is_cuda and model_facts.has_convolution(meta.model):
        outputs = batched_checks.conv_outputs(meta, support_x)
        if outputs is None or outputs > CPU_LOOP_MIN_CONV_OUTPUTS:
            return ("fused", "loop", "torch")
        if (getattr(meta, "expected_iterations", None) or 0) >= CPU_COMPILE_MIN_ITERATIONS:
            return ("fused", "compile", "torch", "loop")
    return ("fused", "torch", "loop")


class BatchedMAML(nn.Module):
    """MAML / Meta-SGD / ANIL over a meta-batch in one call.

    >>> meta = BatchedMAML(metafast.nn.MLP([1, 40, 40, 1]), inner_lr=0.01, inner_steps=1)
    >>> out = meta(support_x, support_y, query_x, query_y)   # first dimension: task
    >>> out.loss.backward()

    Every call checks its inputs (shapes against the model's input and output,
    dtypes, devices) and their values (NaN/inf, label range), which reads them
    back: free on the CPU, one device sync on CUDA, so there
    ``check_inputs=None`` (the default) reads them on the first call only;
    True: every call, False: never.

    ``adapt="head"``: ANIL, only the head adapts: the submodule named ``head``,
    else ``model.head``, else the last layer of a plain nn.Sequential.
    ``allow_unused``: a parameter the support loss does not use keeps its
    value (else that is an error naming it), as learn2learn's flag.
    ``adapt`` may also list the parameter names that adapt (MAML++ adapts the
    weights but not the batch-norm parameters).

    ``expected_iterations``: how many training iterations the caller will run
    (None: unknown). With enough of them ``backend="auto"`` may pick the
    compiled backend, whose first call compiles for a minute or more
    (CPU_COMPILE_MIN_ITERATIONS); unknown, it never does.

    MAML++ (Antoniou et al., 2019), each part switchable: ``per_step_rates``
    (LSLR: a learned rate per parameter tensor and inner step, initialised to
    inner_lr); ``forward(..., step_weights=w)`` (MSL: the query loss after
    every step, weighted by w [inner_steps]); per-step batch norm
    (metafast.nn.PerStepBatchNorm2d: BNWB / BNRS); derivative-order annealing
    is setting ``first_order`` between iterations.
    """

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, inner_steps: int = 1, first_order: bool = False,
                 meta_sgd: bool = False, loss="mse", backend: str = "auto", adapt: str = "all",
                 check_inputs: bool | None = None, head: str | None = None, allow_unused: bool = False,
                 per_step_rates: bool = False, expected_iterations: int | None = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"BatchedMAML: model must be an nn.Module, got {type(model).__name__}")
        if not list(model.parameters()):
            raise ValueError("BatchedMAML: the model has no parameters to adapt")
        if backend not in BACKEND_NAMES:
            raise ValueError(f"BatchedMAML: unknown backend {backend!r} (expected one of {BACKEND_NAMES})")
        named = dict(model.named_parameters())
        if isinstance(adapt, (list, tuple)):
            unknown = [n for n in adapt if n not in named]
            if unknown or not adapt:
                raise ValueError(f"BatchedMAML: adapt lists {unknown or 'no'} parameters the model does not have "
                                 f"(parameters: {list(named)[:8]})")
        elif adapt not in ("all", "head"):
            raise ValueError(f"BatchedMAML: adapt must be 'all', 'head' (ANIL) or a list of parameter names, got "
                             f"{adapt!r}")
        if meta_sgd and per_step_rates:
            raise ValueError("BatchedMAML: meta_sgd (a rate per parameter element) and per_step_rates (a rate per "
                             "parameter tensor and step) are two different rules; choose one")
        if head is not None and adapt != "head":
            raise ValueError("BatchedMAML: head= names the layer that adapts with adapt='head'; pass adapt='head'")
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
        self.adapt_mode = adapt if isinstance(adapt, str) else "names"
        self.check_inputs = check_inputs
        self.allow_unused = bool(allow_unused)
        self.expected_iterations = (None if expected_iterations is None else
                                    positive_int(expected_iterations, "BatchedMAML: expected_iterations"))
        if adapt == "head":
            self.head_name, self.head = model_facts.resolve_head(model, head)
            prefix = self.head_name + "."
            self._adaptable = [prefix + n for n, _ in self.head.named_parameters()]
        else:
            self.head_name, self.head = None, None
            self._adaptable = [n for n in named if self.adapt_mode == "all" or n in adapt]
        if not self.adapt_names:
            raise ValueError("BatchedMAML: every parameter that would adapt is frozen (requires_grad=False)")
        self.meta_sgd = bool(meta_sgd)
        self.inner_lrs = (
            nn.ParameterList([nn.Parameter(torch.full_like(named[n].detach(), self.inner_lr)) for n in self._adaptable])
            if meta_sgd else None
        )
        ref = named[self._adaptable[0]]
        self.step_lrs = (
            nn.ParameterList([nn.Parameter(torch.full((self.inner_steps,), self.inner_lr, dtype=ref.dtype,
                                                      device=ref.device)) for _ in self._adaptable])
            if per_step_rates else None
        )
        self.step_weights = None  # the current call's MSL weights (set by forward)
        self._warned = False
        self._output_shapes: dict = {}
        self._values_checked_on_cuda = False
        self._call_memo: dict | None = None  # facts of the model valid for the current call only
        self.backend_used: str | None = None

    # ----------------------------------------------------------- what adapts
    @property
    def adapt_names(self) -> list[str]:
        """The parameters that adapt now: the adaptable ones that require grad."""
        return self.adapted_parameters()[0]

    def adapted_parameters(self) -> tuple[list[str], list[torch.Tensor]]:
        """(adapt_names, those parameters), in one walk of the model; within one
        call of forward or adapt, walked once (nothing changes them mid-call)."""
        memo = getattr(self, "_call_memo", None)  # absent on a model pickled before it existed
        if memo is not None and "adapted" in memo:
            return memo["adapted"]
        named = dict(self.model.named_parameters())
        names = [n for n in self._adaptable if named[n].requires_grad]
        found = (names, [named[n] for n in names])
        if memo is not None:
            memo["adapted"] = found
        return found

    def rates(self, names, step: int = 0) -> list[torch.Tensor] | None:
        """The inner rates of ``names`` at inner step ``step``: Meta-SGD's per-element
        rates, MAML++'s per-step rates, or None (the scalar inner_lr)."""
        if self.step_lrs is not None:
            by_name = dict(zip(self._adaptable, self.step_lrs))
            if step >= self.inner_steps:
                raise ValueError(f"BatchedMAML: per_step_rates were learned for {self.inner_steps} steps; step "
                                 f"{step + 1} has no rate")
            return [by_name[n][step] for n in names]
        if self.inner_lrs is None:
            return None
        by_name = dict(zip(self._adaptable, self.inner_lrs))
        return [by_name[n] for n in names]

    def _check_step_weights(self, w):
        """MSL weights: [inner_steps] finite non-negative numbers, as a tensor of the model's dtype."""
        if w is None:
            return None
        ref = self.model_tensor()
        w = torch.as_tensor(w, dtype=ref.dtype, device=ref.device)
        if w.shape != (self.inner_steps,):
            raise ValueError(f"BatchedMAML: step_weights must hold one weight per inner step ({self.inner_steps}), "
                             f"got shape {tuple(w.shape)}")
        if w.requires_grad:
            raise ValueError("BatchedMAML: step_weights are a schedule, not differentiated; detach them")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(f"BatchedMAML: step_weights must be finite and non-negative, got {w.tolist()}")
        return w

    def used_gradients(self, names, grads) -> list[int]:
        """Indices of the parameters with a gradient; an unused one is an error
        unless allow_unused (then it keeps its value)."""
        unused = [n for n, g in zip(names, grads) if g is None]
        if unused and not self.allow_unused:
            raise ValueError(f"BatchedMAML: the support loss does not use {', '.join(unused[:4])}; pass "
                             "allow_unused=True to leave unused parameters as they are")
        return [i for i, g in enumerate(grads) if g is not None]

    def model_tensor(self) -> torch.Tensor:
        return model_facts.first_floating(self.model)

    # ----------------------------------------------------------------- losses
    def _require_tensor_output(self, output) -> None:
        if self.loss_name is not None and not isinstance(output, torch.Tensor):
            raise TypeError(f"BatchedMAML: the model returned a {type(output).__name__}, but loss={self.loss_name!r} "
                            "needs a tensor; make forward return the prediction, or pass a loss callable")

    def support_loss(self, output, y, w=None) -> torch.Tensor:
        """One task's support loss: the plain mean, or weighted by w [K]."""
        self._require_tensor_output(output)
        return self.loss_fn(output, y) if w is None else weighted_loss(self.loss_name, output, y, w)

    def mean_query_loss(self, query_output, query_y) -> torch.Tensor:
        """The mean over tasks of each task's query loss, from batched outputs [T, Q, ...]."""
        self._require_tensor_output(query_output)
        if self.loss_name is not None:  # exactly the shape the loss needs: never broadcast
            batched_checks.check_target(self, "query_y", query_y, query_output.shape[1:])
        if self.loss_name is not None and query_output.dim() == 3:
            return task_losses(query_output, query_y, self.loss_name).mean()  # no vmap overhead
        return vmap(self.loss_fn)(query_output, query_y).mean()

    # -------------------------------------------------------------- backends
    def _select_backend(self, support_x, steps: int):
        if self.backend != "auto":
            backend = BACKENDS[self.backend]
            reason = backend.unavailable(self, support_x, steps)
            if reason is not None:
                raise ValueError(f"BatchedMAML(backend={self.backend!r}) cannot serve this call: {reason}")
            return backend
        reasons = []
        for name in auto_order(self, support_x):
            backend = BACKENDS[name]
            reason = backend.unavailable(self, support_x, steps)
            if reason is None and hasattr(backend, "slower_reason"):
                reason = backend.slower_reason(self, support_x)
            if reason is None:
                if reasons and not self._warned:
                    warnings.warn(f"BatchedMAML: using the {name} backend: " + "; ".join(reasons), RuntimeWarning,
                                  stacklevel=3)
                    self._warned = True
                return backend
            reasons.append(f"not {backend.name}: {reason}")
        raise ValueError("BatchedMAML: no backend can serve this call: " + "; ".join(reasons))

    # -------------------------------------------------------------------- API
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None,
              support_weights: torch.Tensor | None = None) -> dict:
        """Adapted parameters, batched over tasks: {name: [T, *shape]} (adapted ones only).
        ``support_weights`` [T, K]: as in ``forward``."""
        steps = self.inner_steps if steps is None else positive_int(steps, "BatchedMAML.adapt: steps")
        batched_checks.check_call(self, support_x, support_y, support_weights=support_weights)
        self._call_memo = {}
        try:
            backend = self._select_backend(support_x, steps)
            self.backend_used = backend.name
            return backend.adapt(self, support_x, support_y, steps, support_weights)[0]
        finally:
            self._call_memo = None

    def predict(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """Apply per-task parameters (from ``adapt``) to inputs x [T, N, ...]."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError("BatchedMAML.predict: x must be a tensor [tasks, examples, ...]")
        ref = self.model_tensor()
        if x.dtype != ref.dtype or x.device != ref.device:
            raise TypeError(f"BatchedMAML.predict: x is {x.dtype} on {x.device} but the model is {ref.dtype} on "
                            f"{ref.device}")
        batched_checks.check_features("x", x, self.model)
        batched_checks.check_params(self, params, x)
        vmap_backend = BACKENDS["torch"]
        if vmap_backend.unavailable(self, x, 1) is None and not (
                not x.is_cuda and model_facts.has_convolution(self.model)):
            return vmap_backend.predict(self, params, x)
        return BACKENDS["loop"].predict(self, params, x)

    def forward(self, support_x, support_y, query_x, query_y, support_weights=None,
                step_weights=None) -> MetaOutput:
        """The meta-batch's query loss after adaptation. ``support_weights``
        [T, K] (optional) weighs each support example's inner loss: a task's
        support loss is Σ_k w_k·ℓ_k / K (all ones: the plain mean; 0 masks a
        padded example; negative allowed). Data, not differentiated.
        ``step_weights`` [inner_steps] (MAML++'s multi-step loss): the loss is
        Σ_s w_s·(mean query loss after step s); ``query_output`` is the last step's."""
        batched_checks.check_call(self, support_x, support_y, query_x, query_y, support_weights)
        self.step_weights = self._check_step_weights(step_weights)
        self._call_memo = {}
        try:
            backend = self._select_backend(support_x, self.inner_steps)
            self.backend_used = backend.name
            support_losses, query_output, loss = backend.run(self, support_x, support_y, query_x, query_y,
                                                             support_weights)
        finally:
            self.step_weights = None
            self._call_memo = None
        accuracy = None
        if self.loss_name == "cross_entropy":
            accuracy = (query_output.detach().argmax(-1) == query_y).float().mean()
        return MetaOutput(loss, query_output, support_losses, accuracy)
