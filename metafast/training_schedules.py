"""MAML++'s training schedules (Antoniou et al., 2019; the authors' code).

msl_weights: the multi-step loss's per-step importance, uniform at first and
annealed towards the last step over ``anneal_epochs`` epochs (non-final steps
keep at least 0.03 / steps). cosine_meta_lr: the meta learning rate's cosine
annealing. first_order_at: derivative-order annealing.
"""
from __future__ import annotations

import math

import torch


def msl_weights(steps: int, epoch: float, anneal_epochs: int, dtype=torch.float64) -> torch.Tensor:
    """The importance of each step's query loss at ``epoch`` (sums to 1)."""
    weights = torch.full((steps,), 1.0 / steps, dtype=dtype)
    decay = 1.0 / steps / anneal_epochs
    floor = 0.03 / steps
    weights[:-1] = torch.clamp(weights[:-1] - epoch * decay, min=floor)
    weights[-1] = min(1.0 / steps + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return weights


def cosine_meta_lr(iteration: int, total: int, start: float = 1e-3, end: float = 1e-5) -> float:
    """The meta learning rate after ``iteration`` of ``total`` (cosine from start to end)."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(iteration, total) / total))


def first_order_at(epoch: int, first_order_epochs: int) -> bool:
    """Derivative-order annealing: first order for the first ``first_order_epochs`` epochs."""
    return epoch < first_order_epochs
