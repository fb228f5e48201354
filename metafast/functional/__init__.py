"""Pure-torch building blocks every algorithm and backend shares."""
from __future__ import annotations

from typing import Iterable

import torch


def flat(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """One flat vector of the tensors' elements, in order (differentiable)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def sgd_step(p: torch.Tensor, g: torch.Tensor, rate) -> torch.Tensor:
    """p − rate·g. For a number it is written p + (−rate)·g: bit-identical, and an
    add's backward passes the gradient through where a subtraction's negates
    it (a node fewer in every backward through the step). A tensor rate (Meta-SGD,
    MAML++, a learnable scalar) stays differentiable."""
    return p - rate * g if isinstance(rate, torch.Tensor) else p + (-rate) * g
