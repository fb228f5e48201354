"""Per-inner-step layers (MAML++'s BNWB / BNRS) and the step index they read.

MAML++ (Antoniou et al., 2019) gives batch norm one set of weights and biases
(BNWB) and of running statistics (BNRS) per inner step. A backend says which
step a forward belongs to with ``inner_step(s)``: the support forward of step
s and the query forward after step s both use index s (the authors' code).
Outside any ``inner_step`` block the index is 0. The index is process-wide
state (not per thread), read at trace time by torch.compile.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

_CURRENT_STEP = [0]


@contextlib.contextmanager
def inner_step(step: int):
    """Forwards inside the block belong to inner step ``step``."""
    previous = _CURRENT_STEP[0]
    _CURRENT_STEP[0] = step
    try:
        yield
    finally:
        _CURRENT_STEP[0] = previous


def current_step() -> int:
    return _CURRENT_STEP[0]


def has_per_step_layers(model: nn.Module) -> bool:
    return any(isinstance(m, PerStepBatchNorm2d) for m in model.modules())


class PerStepBatchNorm2d(nn.Module):
    """Batch norm with weights and biases per inner step (``per_step_affine``,
    MAML++'s BNWB) and optionally running statistics per step
    (``track_running_stats``, BNRS: updated in training mode, used in eval
    mode). Without running statistics it normalises with the batch's
    statistics in training and evaluation alike, as metafast.nn.Conv4 does."""

    def __init__(self, num_features: int, steps: int, eps: float = 1e-5, momentum: float = 0.1,
                 per_step_affine: bool = True, track_running_stats: bool = False):
        super().__init__()
        if steps < 1 or num_features < 1:
            raise ValueError("PerStepBatchNorm2d: num_features and steps must be positive")
        self.num_features, self.steps, self.eps, self.momentum = num_features, steps, eps, momentum
        self.track_running_stats = track_running_stats
        shape = (steps, num_features) if per_step_affine else (num_features,)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(steps, num_features))
            self.register_buffer("running_var", torch.ones(steps, num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = current_step()
        if not 0 <= step < self.steps:
            raise ValueError(f"PerStepBatchNorm2d: inner step {step} but the layer has {self.steps} steps "
                             "(build the model with as many steps as the inner loop runs)")
        weight = self.weight[step] if self.weight.dim() == 2 else self.weight
        bias = self.bias[step] if self.bias.dim() == 2 else self.bias
        if not self.track_running_stats:
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        return F.batch_norm(x, self.running_mean[step], self.running_var[step], weight, bias, self.training,
                            self.momentum, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, steps={self.steps}, per_step_affine={self.weight.dim() == 2}, "
                f"track_running_stats={self.track_running_stats}")
