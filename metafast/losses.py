"""Inner/outer loss resolution. Convention: every loss is a mean over the
examples of a task (MSE: over every output element), so inner rates match
torch.nn.MSELoss() / CrossEntropyLoss() defaults, not the MAML code's sums."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LOSS_NAMES = ("mse", "cross_entropy")


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if output.shape != target.shape:
        raise ValueError(f"mse loss: output shape {tuple(output.shape)} and target shape {tuple(target.shape)} "
                         "differ (no broadcasting)")
    return F.mse_loss(output, target)


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dtype.is_floating_point:
        raise ValueError(f"cross_entropy loss: targets must be integer class indices, got {target.dtype}")
    if output.shape[:-1] != target.shape:
        raise ValueError(f"cross_entropy loss: output {tuple(output.shape)} needs targets of shape "
                         f"{tuple(output.shape[:-1])}, got {tuple(target.shape)}")
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def per_example(name: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each example's loss [N] for one task's output [N, ...] (MSE: the mean over
    the example's outputs): what per-example weights multiply."""
    (mse if name == "mse" else cross_entropy)(output, target)  # the same shape and dtype checks
    if name == "mse":
        return ((output - target) ** 2).reshape(output.shape[0], -1).mean(1)
    per = F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1), reduction="none")
    return per.reshape(output.shape[0], -1).mean(1)


def weighted_loss(name: str, output: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k·ℓ_k / N over one task's N examples: the plain mean when every weight is 1."""
    return (weights * per_example(name, output, target)).mean()


def resolve_loss(loss) -> tuple[str | None, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """(name or None for a callable, function(output, target) -> scalar mean loss)."""
    if callable(loss):
        return None, loss
    if loss == "mse":
        return "mse", mse
    if loss == "cross_entropy":
        return "cross_entropy", cross_entropy
    raise ValueError(f"unknown loss {loss!r}: expected 'mse', 'cross_entropy' or a callable(output, target)")
